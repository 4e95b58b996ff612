//! A webhook endpoint to route to on one machine: the quick start's stand-in for the HTTP service a
//! user would point a `webhook` endpoint at.
//!
//! It accepts `POST /alerts` with a JSON array (the webhook sink's default format), appends each
//! element as one line to a file and counts them. A body that is not a JSON array is answered 400.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use tokio::io::AsyncWriteExt as _;

use crate::{Error, Result};

/// A running webhook receiver on a free loopback port.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

impl WebhookReceiver {
    /// Serves `POST /alerts` on `127.0.0.1:0`, appending the messages it receives to `path`
    /// (created or truncated). Runs until the runtime stops.
    pub async fn start(path: PathBuf) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| io("binding the webhook receiver to 127.0.0.1", source))?;
        let addr = listener
            .local_addr()
            .map_err(|source| io("reading the webhook receiver's address", source))?;
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|source| io(&format!("creating {}", path.display()), source))?;
        let file = Arc::new(tokio::sync::Mutex::new(file));
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |body: axum::body::Bytes| {
                let file = Arc::clone(&file);
                let counter = Arc::clone(&counter);
                async move {
                    let Ok(events) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let mut lines = Vec::new();
                    for event in &events {
                        lines.extend_from_slice(event.to_string().as_bytes());
                        lines.push(b'\n');
                    }
                    if file.lock().await.write_all(&lines).await.is_err() {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    counter.fetch_add(events.len() as u64, Ordering::Relaxed);
                    StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "the webhook receiver stopped");
            }
        });
        Ok(Self { addr, received })
    }

    /// The address it listens on; the endpoint's URL is `http://{addr}/alerts`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

fn io(context: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: context.to_owned(),
        source,
    }
}
