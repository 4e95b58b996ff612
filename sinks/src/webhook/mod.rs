//! The webhook sink: batches messages into JSON (or CloudEvents batch) POST requests, bounded by
//! count, bytes and linger, with a fixed number of requests in flight.
//!
//! Each request is sent by its own task holding one of `max_in_flight` permits; `write` waits for a
//! permit before dispatching a full batch, so a slow or failing server makes `write` wait (bounded
//! memory: at most `max_in_flight` bodies plus the batch being filled). A request is retried with
//! capped exponential backoff and jitter on 5xx, 408, 429 (honouring `Retry-After`, in seconds or as
//! an HTTP date), timeouts and connection errors, without limit; any other status fails the request's
//! rows permanently (they are listed in `Ack::failed` with `HTTP <status>: <body start>`). A row is
//! committed when the server answered 2xx. Retried requests resend the same body, so a server that
//! timed out after storing a batch sees it again: the sink is not idempotent, and receivers should
//! dedupe on `eventHub`/`partition`/`sequenceNumber` (the CloudEvents `id`).
//!
//! Ordering: events within a request keep the written order. With `max_in_flight > 1` two requests
//! can complete in either order; set `max_in_flight = 1` when the receiver needs per-partition order.

mod config;
mod encode;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use hubroute_message::MessageColumns;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sha2::Sha256;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use config::{SignatureConfig, WebhookFormat, WebhookSinkConfig};

use crate::error::http_status_is_retryable;
use crate::sink::background;
use crate::{AckLedger, AckSender, Error, FailedRow, FlushReason, Result, Sink, SinkBatch, Ticket};

/// The batch being filled.
#[derive(Debug)]
struct PendingRequest {
    /// `[` followed by the events so far, comma-separated.
    body: Vec<u8>,
    events: usize,
    /// Which rows of which tickets the request carries, tickets in first-seen order.
    rows: Vec<(Ticket, Vec<usize>)>,
    started: Instant,
}

impl PendingRequest {
    fn new() -> Self {
        Self {
            body: vec![b'['],
            events: 0,
            rows: Vec::new(),
            started: Instant::now(),
        }
    }
}

/// What one request task needs.
#[derive(Debug)]
struct Delivery {
    shared: Arc<Shared>,
    body: Bytes,
    rows: Vec<(Ticket, Vec<usize>)>,
    /// Held until the request settles: bounds requests in flight.
    _slot: OwnedSemaphorePermit,
}

/// Settings every request task reads.
#[derive(Debug)]
struct Shared {
    config: WebhookSinkConfig,
    client: reqwest::Client,
    headers: HeaderMap,
    ledger: AckLedger,
}

/// Posts routed messages to an HTTP endpoint. See the module documentation.
#[derive(Debug)]
pub struct WebhookSink {
    shared: Arc<Shared>,
    source: String,
    pending: Option<PendingRequest>,
    requests: JoinSet<Result<()>>,
    slots: Arc<Semaphore>,
}

impl WebhookSink {
    /// Checks `config` without connecting (what `hubroute check` runs) and returns the headers
    /// every request carries.
    pub(crate) fn validate(config: &WebhookSinkConfig) -> Result<HeaderMap> {
        let config_error = |problem: String| Error::Config {
            sink: config.name.clone(),
            problem,
        };
        reqwest::Url::parse(&config.url)
            .map_err(|e| config_error(format!("url `{}` is invalid: {e}", config.url)))?;
        if config.max_in_flight == 0 || config.max_batch_events == 0 || config.max_batch_bytes == 0
        {
            return Err(config_error(
                "max_in_flight, max_batch_events and max_batch_bytes must be at least 1".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        let content_type = match config.format {
            WebhookFormat::JsonArray => "application/json",
            WebhookFormat::Cloudevents => "application/cloudevents-batch+json",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| config_error(format!("header name `{name}` is invalid: {e}")))?;
            let mut value = HeaderValue::try_from(value.expose())
                .map_err(|_| config_error(format!("the value of header `{name}` is invalid")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(signature) = &config.signature {
            HeaderName::try_from(signature.header.as_str()).map_err(|e| {
                config_error(format!(
                    "signature header `{}` is invalid: {e}",
                    signature.header
                ))
            })?;
        }
        Ok(headers)
    }

    /// Whether the endpoint answers: one `HEAD` request to `url` with the configured headers,
    /// within `timeout` (see [`crate::probe`]). HEAD is safe by definition, so no receiver acts
    /// on it, and it carries no body to sign. A connection failure, a timeout, a 5xx or a 429 mean
    /// down; any other status means up, because the server answered: a receiver that accepts only
    /// POST answers 405, one behind a gateway that checks a key 401, and such answers say nothing
    /// about whether a POST would be taken (a delivery finds that out).
    pub(crate) async fn probe(config: &WebhookSinkConfig) -> Result<()> {
        let headers = Self::validate(config)?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::Config {
                sink: config.name.clone(),
                problem: format!("cannot build the HTTP client: {e}"),
            })?;
        let response = client
            .head(&config.url)
            .headers(headers)
            .send()
            .await
            .map_err(|source| Error::Http {
                sink: config.name.clone(),
                url: config.url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        if status >= 500 || status == 429 {
            return Err(Error::HttpStatus {
                sink: config.name.clone(),
                url: config.url.clone(),
                status,
                body: "a HEAD probe got a server error or throttling answer; the endpoint is not \
                       ready to take deliveries"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// Builds the sink; fails on an invalid URL, header or limit.
    pub fn new(config: WebhookSinkConfig, acks: AckSender) -> Result<Self> {
        let headers = Self::validate(&config)?;
        let config_error = |problem: String| Error::Config {
            sink: config.name.clone(),
            problem,
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_in_flight)
            .build()
            .map_err(|e| config_error(format!("cannot build the HTTP client: {e}")))?;
        let source = config
            .cloudevents_source
            .clone()
            .unwrap_or_else(|| format!("/hubroute/{}", config.name));
        Ok(Self {
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            shared: Arc::new(Shared {
                ledger: AckLedger::new(&config.name, acks),
                config,
                client,
                headers,
            }),
            source,
            pending: None,
            requests: JoinSet::new(),
        })
    }

    /// Sends the pending batch, waiting for a free request slot.
    async fn dispatch(&mut self) -> Result<()> {
        let Some(mut pending) = self.pending.take() else {
            return Ok(());
        };
        pending.body.push(b']');
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.requests.spawn(
            Delivery {
                shared: Arc::clone(&self.shared),
                body: Bytes::from(pending.body),
                rows: pending.rows,
                _slot: slot,
            }
            .run(),
        );
        self.reap()
    }

    fn reap(&mut self) -> Result<()> {
        while let Some(done) = self.requests.try_join_next() {
            background::finished(done)?;
        }
        Ok(())
    }
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
fn signature(secret: &[u8], body: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        write!(out, "{byte:02x}").expect("writing to a String");
    }
    out
}

impl Delivery {
    async fn run(self) -> Result<()> {
        let shared = &self.shared;
        let config = &shared.config;
        let mut headers = shared.headers.clone();
        if let Some(signing) = &config.signature {
            let name = HeaderName::try_from(signing.header.as_str()).expect("checked in new");
            let value = signature(signing.secret.expose().as_bytes(), &self.body);
            headers.insert(
                name,
                HeaderValue::try_from(value).expect("hex is a valid header value"),
            );
        }
        let mut attempt = 0;
        let permanent = loop {
            let sent = shared
                .client
                .post(&config.url)
                .headers(headers.clone())
                .body(self.body.clone())
                .send()
                .await;
            let (error, wait) = match sent {
                Ok(response) if response.status().is_success() => break None,
                Ok(response) => {
                    let status = response.status().as_u16();
                    let wait = retry_after(response.headers());
                    let text = response.text().await.unwrap_or_default();
                    let error = Error::HttpStatus {
                        sink: config.name.clone(),
                        url: config.url.clone(),
                        status,
                        body: text.chars().take(200).collect(),
                    };
                    if !http_status_is_retryable(status) {
                        break Some(format!(
                            "HTTP {status}: {}",
                            text.chars().take(200).collect::<String>()
                        ));
                    }
                    (error, wait)
                }
                Err(source) => (
                    Error::Http {
                        sink: config.name.clone(),
                        url: config.url.clone(),
                        source,
                    },
                    None,
                ),
            };
            let delay = config.retry.delay(attempt, wait);
            tracing::warn!(sink = %config.name, %error, ?delay, "webhook request failed; retrying");
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        };
        for (ticket, rows) in self.rows {
            let failed = match &permanent {
                None => Vec::new(),
                Some(error) => rows
                    .into_iter()
                    .map(|row| FailedRow {
                        row,
                        error: error.clone(),
                    })
                    .collect(),
            };
            shared.ledger.settle(ticket, failed).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.shared.config.name
    }

    fn idempotent(&self) -> bool {
        false
    }

    async fn write(&mut self, batch: SinkBatch) -> Result<()> {
        let SinkBatch { ticket, batch } = batch;
        let ledger = self.shared.ledger.clone();
        ledger.open(ticket);
        let view = MessageColumns::try_new(&batch)?;
        let (max_events, max_bytes) = (
            self.shared.config.max_batch_events,
            self.shared.config.max_batch_bytes,
        );
        let mut event = Vec::new();
        for row in 0..view.len() {
            event.clear();
            match self.shared.config.format {
                WebhookFormat::JsonArray => encode::message(&mut event, &view, row),
                WebhookFormat::Cloudevents => {
                    encode::cloud_event(&mut event, &view, row, &self.source);
                }
            }
            let full = self
                .pending
                .as_ref()
                .is_some_and(|p| p.events > 0 && p.body.len() + event.len() + 2 > max_bytes);
            if full {
                self.dispatch().await?;
            }
            let pending = self.pending.get_or_insert_with(PendingRequest::new);
            if pending.events > 0 {
                pending.body.push(b',');
            }
            pending.body.extend_from_slice(&event);
            pending.events += 1;
            match pending.rows.last_mut() {
                Some((last, rows)) if *last == ticket => rows.push(row),
                _ => {
                    ledger.add_part(ticket);
                    pending.rows.push((ticket, vec![row]));
                }
            }
            if pending.events >= max_events {
                self.dispatch().await?;
            }
        }
        ledger.settle(ticket, Vec::new()).await?;
        self.reap()
    }

    fn flush_deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|p| p.started + self.shared.config.linger)
    }

    async fn flush(&mut self, reason: FlushReason) -> Result<()> {
        let due = self.flush_deadline().is_some_and(|d| d <= Instant::now());
        if due || reason == FlushReason::Shutdown {
            self.dispatch().await?;
        }
        if reason == FlushReason::Shutdown {
            while let Some(done) = self.requests.join_next().await {
                background::finished(done)?;
            }
        }
        self.reap()
    }

    async fn stopped(&mut self) -> Error {
        background::first_failure(&mut self.requests).await
    }
}

#[cfg(test)]
mod tests;
