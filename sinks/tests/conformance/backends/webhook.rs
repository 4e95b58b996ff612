//! The webhook sink against a real HTTP/1.1 server on 127.0.0.1:0.
//!
//! The server is written on a raw `TcpListener` rather than a framework so that it can misbehave
//! the way real endpoints do: hang without answering, or close the connection mid-request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hubroute_sinks::{AckSender, Sink, WebhookSink, WebhookSinkConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::quick_retry;
use crate::contract::{Harness, RowKey, conformance};
use crate::faults::Backend;

/// A scripted answer of the test server.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Status(u16),
    RetryAfter(u16, u64),
    Hang,
    Close,
}

/// One request the server accepted with 2xx.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) raw: Vec<u8>,
    pub(crate) body: Value,
    pub(crate) at: Instant,
}

#[derive(Debug, Default)]
struct ServerState {
    /// Answers for the next requests, in order; then 200 (or the backend's fault).
    script: Vec<Answer>,
    accepted: Vec<Received>,
    attempts: usize,
}

pub(crate) struct TestServer {
    pub(crate) url: String,
    state: Arc<Mutex<ServerState>>,
    backend: Arc<Backend>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ingest", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ServerState::default()));
        let backend = Backend::new();
        let (s, b) = (Arc::clone(&state), Arc::clone(&backend));
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(socket, Arc::clone(&s), Arc::clone(&b)));
            }
        });
        Self {
            url,
            state,
            backend,
        }
    }

    pub(crate) fn script(&self, answers: Vec<Answer>) {
        self.state.lock().unwrap().script = answers;
    }

    pub(crate) fn accepted(&self) -> Vec<Received> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub(crate) fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts
    }
}

async fn serve(socket: TcpStream, state: Arc<Mutex<ServerState>>, backend: Arc<Backend>) {
    let mut reader = BufReader::new(socket);
    loop {
        let mut headers = BTreeMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').unwrap();
            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        }
        let length: usize = headers["content-length"].parse().unwrap();
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        let scripted = {
            let mut state = state.lock().unwrap();
            state.attempts += 1;
            (!state.script.is_empty()).then(|| state.script.remove(0))
        };
        let answer = match scripted {
            Some(answer) => answer,
            None if backend.before_operation().await => Answer::Status(503),
            None => Answer::Status(200),
        };
        let (status, extra) = match answer {
            Answer::Close => return,
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Answer::Status(status) => (status, String::new()),
            Answer::RetryAfter(status, seconds) => (status, format!("retry-after: {seconds}\r\n")),
        };
        if (200..300).contains(&status) {
            state.lock().unwrap().accepted.push(Received {
                headers: headers.clone(),
                body: serde_json::from_slice(&body).unwrap(),
                raw: body.clone(),
                at: Instant::now(),
            });
        }
        let text = format!("status {status}");
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n{text}",
            text.len()
        );
        if reader
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

pub(crate) fn quick_config(url: &str) -> WebhookSinkConfig {
    let mut config = WebhookSinkConfig::new("hook", url);
    config.linger = Duration::from_secs(600);
    config.max_batch_events = 10;
    config.max_in_flight = 2;
    config.timeout = Duration::from_millis(500);
    config.retry = quick_retry();
    config
}

pub(crate) fn row_keys(body: &Value) -> Vec<RowKey> {
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let m = e.get("data").unwrap_or(e);
            (
                m["eventHub"].as_str().unwrap().to_owned(),
                m["partition"].as_str().unwrap().to_owned(),
                m["sequenceNumber"].as_i64().unwrap(),
            )
        })
        .collect()
}

struct WebhookHarness {
    server: TestServer,
}

#[async_trait]
impl Harness for WebhookHarness {
    async fn build(&mut self, acks: AckSender) -> Box<dyn Sink> {
        let mut config = quick_config(&self.server.url);
        config.max_in_flight = 1;
        // A stalled request waits for the release rather than timing out and being sent twice.
        config.timeout = Duration::from_secs(30);
        Box::new(WebhookSink::new(config, acks).unwrap())
    }

    async fn stored(&mut self) -> Vec<RowKey> {
        self.server
            .accepted()
            .iter()
            .flat_map(|r| row_keys(&r.body))
            .collect()
    }

    fn backend(&self) -> Arc<Backend> {
        Arc::clone(&self.server.backend)
    }
}

#[tokio::test]
async fn the_webhook_sink_conforms() {
    conformance(async || WebhookHarness {
        server: TestServer::start().await,
    })
    .await;
}
