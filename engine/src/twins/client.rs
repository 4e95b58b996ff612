//! A client of IoT Hub's service REST API, just what the twin store needs: the twin query
//! (`POST /devices/query`, paged by `x-ms-continuation`) and single twin reads (`GET /twins/{id}`,
//! `GET /twins/{id}/modules/{mid}`).
//!
//! Requests are signed as the service SDKs sign them: `Authorization: SharedAccessSignature
//! sr={HostName}&sig=…&se=…&skn={policy}`, HMAC-SHA256 keyed with the base64-decoded policy key
//! (`hubroute_protocol::iothub`). A token is signed per request (one HMAC; no renewal state to get
//! wrong). Failures are classified: throttling (429, with the `Retry-After` the service sent),
//! server errors and network failures are retryable; 401/403/400 are not, and say what to fix.

use std::time::Duration;

use hubroute_protocol::IotHubConnectionString;
use hubroute_protocol::iothub::{
    API_VERSION, CONTINUATION_HEADER, MAX_ITEM_COUNT_HEADER, QUERY_DEVICE_TWINS, QUERY_MODULE_TWINS,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::metrics::TwinMetrics;
use super::store::{Twin, TwinId};
use crate::config::TwinsConfig;
use crate::{Error, Result};

/// Lifetime of the tokens the client signs.
const TOKEN_LIFETIME_SECS: i64 = 3600;

/// Characters `encodeURIComponent` keeps; ids are path segments and may hold `# ? % $ '` etc.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Why a request failed, and whether trying again can help.
#[derive(Debug)]
pub(crate) struct RequestFailure {
    /// What failed, for the log and the error.
    pub(crate) problem: String,
    /// Retry (after `retry_after` when the service said so).
    pub(crate) retryable: bool,
    /// The service's `Retry-After`.
    pub(crate) retry_after: Option<Duration>,
    /// The HTTP status, when the service answered.
    pub(crate) status: Option<u16>,
}

impl RequestFailure {
    pub(crate) fn into_error(self, host: &str) -> Error {
        Error::TwinService {
            host: host.to_owned(),
            problem: self.problem,
        }
    }
}

/// The service API of one IoT hub.
#[derive(Debug, Clone)]
pub(crate) struct ServiceClient {
    http: reqwest::Client,
    connection: IotHubConnectionString,
    base_url: String,
    page_size: u32,
    metrics: TwinMetrics,
}

impl ServiceClient {
    /// A client for `config`'s hub; fails only on an unreadable CA file.
    pub(crate) fn new(config: &TwinsConfig, metrics: TwinMetrics) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!("hubroute/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.tls_ca_file {
            let invalid = |problem: String| Error::TwinService {
                host: config.service_connection_string.host_name.clone(),
                problem: format!("twins.tls_ca_file {}: {problem}", path.display()),
            };
            let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(|e| Error::TwinService {
            host: config.service_connection_string.host_name.clone(),
            problem: format!("building the HTTP client: {e}"),
        })?;
        Ok(Self {
            http,
            base_url: config.service_connection_string.base_url(),
            connection: config.service_connection_string.clone(),
            page_size: config.page_size,
            metrics,
        })
    }

    /// The hub's host name, for messages.
    pub(crate) fn host(&self) -> &str {
        &self.connection.host_name
    }

    fn authorization(&self) -> std::result::Result<String, RequestFailure> {
        let expiry = chrono::Utc::now().timestamp() + TOKEN_LIFETIME_SECS;
        self.connection.token(expiry).map_err(|e| RequestFailure {
            problem: e.to_string(),
            retryable: false,
            retry_after: None,
            status: None,
        })
    }

    /// One page of `query`; returns the items and the continuation token of the next page.
    pub(crate) async fn query_page(
        &self,
        query: &str,
        continuation: Option<&str>,
    ) -> std::result::Result<(Vec<Value>, Option<String>), RequestFailure> {
        let mut request = self
            .http
            .post(format!("{}/devices/query", self.base_url))
            .query(&[("api-version", API_VERSION)])
            .header(reqwest::header::AUTHORIZATION, self.authorization()?)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .header(MAX_ITEM_COUNT_HEADER, self.page_size.to_string())
            .body(serde_json::json!({ "query": query }).to_string());
        if let Some(token) = continuation {
            request = request.header(CONTINUATION_HEADER, token);
        }
        let response = self.send("query", request).await?;
        let next = response
            .headers()
            .get(CONTINUATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let items: Vec<Value> = response.json().await.map_err(|e| RequestFailure {
            problem: format!("the twin query answered something other than a JSON array: {e}"),
            retryable: true,
            retry_after: None,
            status: None,
        })?;
        Ok((items, next))
    }

    /// Every twin `query` returns, page after page. A failure of any page fails the whole query
    /// (a partial twin set would drop twins that exist).
    pub(crate) async fn query_all(
        &self,
        query: &str,
    ) -> std::result::Result<Vec<(TwinId, Twin)>, RequestFailure> {
        let mut twins = Vec::new();
        let mut continuation = None;
        loop {
            let (items, next) = self.query_page(query, continuation.as_deref()).await?;
            for item in &items {
                match TwinId::of(item) {
                    Some(id) => twins.push((id, Twin::from_value(item))),
                    None => tracing::warn!(query, "a twin query item has no deviceId; ignored"),
                }
            }
            match next {
                Some(token)
                    if !items.is_empty() || continuation.as_deref() != Some(token.as_str()) =>
                {
                    continuation = Some(token);
                }
                _ => return Ok(twins),
            }
        }
    }

    /// Every device twin and, if `modules`, every module twin.
    pub(crate) async fn all_twins(
        &self,
        modules: bool,
    ) -> std::result::Result<Vec<(TwinId, Twin)>, RequestFailure> {
        let mut twins = self.query_all(QUERY_DEVICE_TWINS).await?;
        if modules {
            twins.extend(self.query_all(QUERY_MODULE_TWINS).await?);
        }
        Ok(twins)
    }

    /// One twin; `None` when the device or module does not exist.
    pub(crate) async fn twin(
        &self,
        id: &TwinId,
    ) -> std::result::Result<Option<Twin>, RequestFailure> {
        let device = utf8_percent_encode(&id.device, PATH_SEGMENT);
        let url = match &id.module {
            Some(module) => format!(
                "{}/twins/{device}/modules/{}",
                self.base_url,
                utf8_percent_encode(module, PATH_SEGMENT)
            ),
            None => format!("{}/twins/{device}", self.base_url),
        };
        let request = self
            .http
            .get(url)
            .query(&[("api-version", API_VERSION)])
            .header(reqwest::header::AUTHORIZATION, self.authorization()?);
        match self.send("get_twin", request).await {
            Ok(response) => {
                let value: Value = response.json().await.map_err(|e| RequestFailure {
                    problem: format!("GET twin answered something other than JSON: {e}"),
                    retryable: true,
                    retry_after: None,
                    status: None,
                })?;
                Ok(Some(Twin::from_value(&value)))
            }
            Err(failure) if failure.status == Some(404) => Ok(None),
            Err(failure) => Err(failure),
        }
    }

    async fn send(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<reqwest::Response, RequestFailure> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                self.metrics.request(operation, "unreachable");
                return Err(RequestFailure {
                    problem: format!(
                        "cannot reach {}: {error}; check HostName and that the hub (or `hubroute \
                         emulator`) is running",
                        self.base_url
                    ),
                    retryable: true,
                    retry_after: None,
                    status: None,
                });
            }
        };
        let status = response.status();
        self.metrics.request(operation, status.as_str());
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.text().await.unwrap_or_default();
        let detail: String = body.chars().take(300).collect();
        let (retryable, hint) = match status.as_u16() {
            429 => (true, "throttled; waiting as the service asks"),
            500..=599 | 408 => (true, "the service failed; retrying"),
            401 | 403 => (
                false,
                "the service refused the credentials: the policy needs ServiceConnect (use the \
                 `service` or `iothubowner` connection string) and its key must be current",
            ),
            404 => (false, "not found"),
            _ => (false, "the request was refused"),
        };
        Err(RequestFailure {
            problem: format!("{} {operation}: {hint}: {detail}", status.as_u16()),
            retryable,
            retry_after,
            status: Some(status.as_u16()),
        })
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
