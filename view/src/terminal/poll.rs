//! Reads a running service over HTTP, once per refresh: `/metrics` (required) and `/routes`
//! (optional: a service without it is still shown, with fewer columns).
//!
//! A failed scrape never ends the view. The poller turns it into [`Connection::Disconnected`],
//! keeps the last status to show (dimmed) and forgets its scrape window, so that the rates after
//! the service comes back are not computed against counters of a previous process.

use std::time::{Duration, Instant};

use crate::exposition::Scrape;
use crate::routes::RoutesInfo;
use crate::status::{ScrapeWindow, Status};
use crate::terminal::render::Connection;
use crate::{Error, Result};

/// How long one request may take; a slower service counts as disconnected for that refresh.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls one service.
#[derive(Debug)]
pub struct Poller {
    client: reqwest::Client,
    base: String,
    started: Instant,
    window: ScrapeWindow,
    routes: Option<RoutesInfo>,
    status: Option<Status>,
    connection: Connection,
    disconnected_since: Option<Instant>,
}

impl Poller {
    /// A poller of the service at `base` (e.g. `http://127.0.0.1:9464`).
    pub fn new(base: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Fetch {
                url: base.to_owned(),
                problem: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            started: Instant::now(),
            window: ScrapeWindow::default(),
            routes: None,
            status: None,
            connection: Connection::Connecting,
            disconnected_since: None,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Scrapes once and updates the status and the connection state.
    pub async fn poll(&mut self) {
        match self.fetch("/metrics").await.and_then(|t| Scrape::parse(&t)) {
            Ok(scrape) => {
                // `/routes` changes only on a reload; an error there keeps the last summary.
                if let Ok(routes) = self
                    .fetch("/routes")
                    .await
                    .and_then(|t| RoutesInfo::parse(&t))
                {
                    self.routes = Some(routes);
                }
                self.window
                    .push(self.started.elapsed().as_secs_f64(), scrape);
                self.status = self.window.status(self.routes.as_ref());
                self.connection = Connection::Connected;
                self.disconnected_since = None;
            }
            Err(error) => {
                self.window.clear();
                let since = *self.disconnected_since.get_or_insert_with(Instant::now);
                self.connection = Connection::Disconnected {
                    problem: error.to_string(),
                    for_seconds: since.elapsed().as_secs_f64(),
                };
            }
        }
    }

    /// The newest status (the last one seen while disconnected).
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// The connection state after the last poll.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    async fn fetch(&self, path: &str) -> Result<String> {
        let url = format!("{}{path}", self.base);
        let fail = |problem: String| Error::Fetch {
            url: url.clone(),
            problem,
        };
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| fail(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        response.text().await.map_err(|e| fail(describe(&e)))
    }
}

/// reqwest's error with its causes, which name what actually failed (refused, timed out, …).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A stand-in service on a real socket: `/metrics` counts up by 10 per request.
    async fn serve(listener: tokio::net::TcpListener, counter: Arc<AtomicU64>) {
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let n = counter.fetch_add(10, Ordering::SeqCst) + 10;
                    async move { format!("hubroute_events_routed_total {n}\n") }
                }),
            )
            .route(
                "/routes",
                axum::routing::get(|| async { r#"{"hub_name":"h","partitions":["0"]}"# }),
            );
        axum::serve(listener, app).await.unwrap();
    }

    #[tokio::test]
    async fn a_service_that_goes_away_shows_disconnected_and_is_picked_up_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let server = tokio::spawn(serve(listener, Arc::clone(&counter)));
        let mut poller = Poller::new(&format!("http://{addr}/")).unwrap();
        assert_eq!(poller.connection(), &Connection::Connecting);
        poller.poll().await;
        assert_eq!(poller.connection(), &Connection::Connected);
        assert_eq!(poller.status().unwrap().hub_name.as_deref(), Some("h"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        poller.poll().await;
        let status = poller.status().unwrap();
        assert_eq!(status.events_routed.total, 20.0);
        assert!(status.events_routed.per_second.is_some_and(|r| r > 0.0));

        server.abort();
        let _ = server.await;
        poller.poll().await;
        let Connection::Disconnected { problem, .. } = poller.connection() else {
            panic!("{:?}", poller.connection());
        };
        assert!(
            problem.contains(&format!("http://{addr}/metrics")),
            "{problem}"
        );
        // The last status stays on screen.
        assert_eq!(poller.status().unwrap().events_routed.total, 20.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        poller.poll().await;
        let Connection::Disconnected { for_seconds, .. } = poller.connection() else {
            panic!("{:?}", poller.connection());
        };
        assert!(*for_seconds > 0.0);

        // The service comes back on the same address, restarted from zero.
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        counter.store(0, Ordering::SeqCst);
        let server = tokio::spawn(serve(listener, counter));
        poller.poll().await;
        assert_eq!(poller.connection(), &Connection::Connected);
        let status = poller.status().unwrap();
        assert_eq!(status.events_routed.total, 10.0);
        // No rate against the previous process's counters.
        assert_eq!(status.events_routed.per_second, None);
        server.abort();
    }

    #[tokio::test]
    async fn a_non_metrics_answer_is_a_disconnection_naming_the_problem() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { "<html>not metrics</html>" }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut poller = Poller::new(&format!("http://{addr}")).unwrap();
        poller.poll().await;
        let Connection::Disconnected { problem, .. } = poller.connection() else {
            panic!("{:?}", poller.connection());
        };
        assert!(problem.contains("line 1 of the metrics text"), "{problem}");
        server.abort();
    }
}
