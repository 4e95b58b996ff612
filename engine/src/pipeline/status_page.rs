//! The status page at `GET /`: a small self-contained HTML page showing what `hubroute top`
//! shows, with charts of the last ten minutes.
//!
//! The page, its script and its stylesheet are compiled into the binary (`include_str!`) and load
//! nothing from elsewhere, so the page works offline and behind any firewall; its
//! Content-Security-Policy allows only this origin. It is read-only: every route is a `GET`, and
//! what it shows (names, counts, health, latencies) is already public on `/metrics`; no
//! connection string, URL, DSN or error text reaches it.
//!
//! The page's numbers are `hubroute_view`'s model of the engine's own `/metrics` text, the same
//! model `top` builds over HTTP, so the page and `top` agree and a metric added later appears on
//! both. A sampler reads the registry once a second into a ten-minute history, so a page opened
//! now already has the last minutes to chart; the page then asks only for samples newer than the
//! last it has.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hubroute_view::{History, RoutesInfo, Scrape, ScrapeWindow, Status};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::lock;

/// How often the history takes a sample (and how often the page asks for one).
pub(super) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How far back the charts reach.
const HISTORY_SPAN: Duration = Duration::from_secs(600);

const INDEX_HTML: &str = include_str!("status_page/index.html");
const STATUS_JS: &str = include_str!("status_page/status.js");
const STATUS_CSS: &str = include_str!("status_page/status.css");

/// Only this origin, no inline script or style, no forms, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The newest status and the history of the charts.
#[derive(Debug)]
pub(super) struct StatusBoard {
    inner: Mutex<Board>,
    started: Instant,
}

#[derive(Debug)]
struct Board {
    window: ScrapeWindow,
    history: History,
    status: Option<Status>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Board {
                window: ScrapeWindow::default(),
                history: History::new(HISTORY_SPAN, SAMPLE_INTERVAL),
                status: None,
            }),
            started: Instant::now(),
        }
    }
}

impl StatusBoard {
    /// Reads the engine's metrics into the board once.
    fn sample(&self, shared: &Shared, routes: serde_json::Value) {
        let text = shared.metrics.encode();
        let scrape = match Scrape::parse(&text) {
            Ok(scrape) => scrape,
            Err(error) => {
                // Our own exposition is always readable; if it is not, say so once a second.
                tracing::warn!(%error, "the status page cannot read the engine's metrics");
                return;
            }
        };
        let routes = RoutesInfo::from_value(routes).ok();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut board = lock(&self.inner);
        board
            .window
            .push(self.started.elapsed().as_secs_f64(), scrape);
        let status = board.window.status(routes.as_ref());
        if let Some(status) = &status {
            board.history.record(now_ms, status);
        }
        board.status = status;
    }
}

/// Samples every [`SAMPLE_INTERVAL`] until `shutdown`.
pub(super) async fn sample(
    board: Arc<StatusBoard>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            // Queue depths and health are refreshed by the engine's housekeeping every second.
            _ = tick.tick() => {
                let routes = super::http::routes_summary(&shared);
                board.sample(&shared, routes);
            }
        }
    }
}

/// `GET /`.
pub(super) async fn index() -> Response {
    page(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /assets/status.js`.
pub(super) async fn script() -> Response {
    page(STATUS_JS, "text/javascript; charset=utf-8")
}

/// `GET /assets/status.css`.
pub(super) async fn stylesheet() -> Response {
    page(STATUS_CSS, "text/css; charset=utf-8")
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Query of `GET /status`.
#[derive(Debug, Deserialize)]
pub(super) struct Since {
    /// Only history samples after this time (ms since the epoch).
    since: Option<u64>,
}

/// `GET /status`: the newest status and the history samples after `since`.
pub(super) async fn status(
    State(board): State<Arc<StatusBoard>>,
    Query(Since { since }): Query<Since>,
) -> Response {
    let board = lock(&board.inner);
    let body = json!({
        "status": board.status,
        "history": board.history.since(since),
        "history_seconds": HISTORY_SPAN.as_secs(),
        "interval_seconds": SAMPLE_INTERVAL.as_secs_f64(),
    });
    drop(board);
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("status.js", STATUS_JS),
            ("status.css", STATUS_CSS),
        ] {
            for banned in [
                "http://",
                "https://",
                "//cdn",
                "@import",
                "eval(",
                "innerHTML",
            ] {
                // The SVG namespace is an identifier, not a fetch.
                let allowed = "http://www.w3.org/2000/svg";
                let text = text.replace(allowed, "");
                assert!(!text.contains(banned), "{name} contains `{banned}`");
            }
        }
        for asset in ["/assets/status.js", "/assets/status.css"] {
            assert!(
                INDEX_HTML.contains(asset),
                "index.html does not load {asset}"
            );
        }
        assert!(!INDEX_HTML.contains("<form"), "the page is read-only");
    }
}
