//! Configuration of the webhook sink.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::{RetryPolicy, Secret};

/// An HTTP endpoint receiving batches of messages by POST.
///
/// ```toml
/// type = "webhook"
/// name = "alerts"
/// url = "https://example.com/ingest"
/// format = "cloudevents"
/// headers = { "x-functions-key" = "${FUNCTIONS_KEY}" }
/// signature = { secret = "${WEBHOOK_SECRET}" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// The endpoint name.
    pub name: String,
    /// The URL posted to.
    pub url: String,
    /// Body format (default `json_array`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Most events in one request (default 500).
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Most body bytes in one request (default 1 MiB); a single larger event is sent alone.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long a partly filled batch waits for more events (default 50 ms).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Requests in flight at once; `write` waits when all are busy (default 4).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Extra request headers; values are secrets (they often carry keys).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Sign each body with HMAC-SHA256.
    #[serde(default)]
    pub signature: Option<SignatureConfig>,
    /// Timeout of one request attempt (default 30 s); a timeout is retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Backoff for retryable failures (5xx, 408, 429, timeouts, connection errors).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// CloudEvents `source` attribute (default `/hubroute/<name>`).
    #[serde(default)]
    pub cloudevents_source: Option<String>,
}

/// How a batch is put in the request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `application/json`: a JSON array of messages.
    #[default]
    JsonArray,
    /// `application/cloudevents-batch+json`: a JSON array of CloudEvents 1.0 whose `data` is the
    /// message.
    Cloudevents,
}

/// HMAC-SHA256 request signing: header value `sha256=<lower-case hex of HMAC(secret, body)>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureConfig {
    /// The shared key.
    pub secret: Secret,
    /// Header name (default `X-Hubroute-Signature-256`).
    #[serde(default = "default_signature_header")]
    pub header: String,
}

fn default_max_batch_events() -> usize {
    500
}

fn default_max_batch_bytes() -> usize {
    1024 * 1024
}

fn default_linger() -> Duration {
    Duration::from_millis(50)
}

fn default_max_in_flight() -> usize {
    4
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_signature_header() -> String {
    "X-Hubroute-Signature-256".to_owned()
}

impl WebhookSinkConfig {
    /// A configuration with every default, posting to `url`.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            format: WebhookFormat::default(),
            max_batch_events: default_max_batch_events(),
            max_batch_bytes: default_max_batch_bytes(),
            linger: default_linger(),
            max_in_flight: default_max_in_flight(),
            headers: BTreeMap::new(),
            signature: None,
            timeout: default_timeout(),
            retry: RetryPolicy::default(),
            cloudevents_source: None,
        }
    }
}
