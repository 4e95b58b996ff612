//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (200 while no endpoint
//! is dead, the engine runs and a shared checkpoint store was reached within the ownership expiry,
//! whatever the number of partitions owned; 503 otherwise), `/routes` (JSON summary of routes,
//! endpoints and owned partitions),
//! and the status page (`/`, its assets and its data at `/status`; see `status_page`).
//! Every route is a `GET`: nothing here changes the engine.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::status_page::{self, StatusBoard};
use super::{Shared, lock, now};
use crate::health::HealthStatus;

/// Serves until `shutdown` is cancelled.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    // Every configured route, endpoint and partition has its counters from the start, at 0.
    {
        let config = shared.routes.config();
        shared.metrics.initialise_series(
            config.config.routes.iter().map(|r| r.name.as_str()),
            shared.endpoints.iter().map(|e| e.name.as_str()),
            shared.partitions.iter().map(|p| p.id.as_str()),
        );
    }
    let board = Arc::new(StatusBoard::default());
    tokio::spawn(status_page::sample(
        Arc::clone(&board),
        Arc::clone(&shared),
        shutdown.clone(),
    ));
    let page = Router::new()
        .route("/", get(status_page::index))
        .route("/assets/status.js", get(status_page::script))
        .route("/assets/status.css", get(status_page::stylesheet))
        .route("/status", get(status_page::status))
        .with_state(board);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/routes", get(routes))
        .with_state(shared)
        .merge(page);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the /metrics server stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.refresh_endpoints();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

fn endpoint_summaries(shared: &Shared) -> Vec<serde_json::Value> {
    let now = now();
    let ago =
        |t: Option<std::time::Instant>| t.map(|t| now.saturating_duration_since(t).as_secs_f64());
    shared
        .endpoints
        .iter()
        .map(|e| {
            let health = lock(&e.health);
            json!({
                "name": e.name,
                "type": e.kind,
                "status": health.status(now).as_str(),
                "last_error": health.last_error(),
                "seconds_since_success": ago(health.last_success()),
                "seconds_since_failure": ago(health.last_failure()),
                "delivered": shared.metrics.endpoint_delivered(&e.name),
            })
        })
        .collect()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let now = now();
    let fatal = lock(&shared.fatal).as_ref().map(ToString::to_string);
    let dead: Vec<String> = shared
        .endpoints
        .iter()
        .filter(|e| lock(&e.health).status(now) == HealthStatus::Dead)
        .map(|e| e.name.clone())
        .collect();
    let ownership = shared.ownership.status();
    let healthy = fatal.is_none() && dead.is_empty() && ownership.healthy;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if healthy { "ok" } else { "failing" },
        "fatal_error": fatal,
        "dead_endpoints": dead,
        "checkpoint_store_reachable": ownership.healthy,
        "ownership": ownership_summary(&shared),
        "endpoints": endpoint_summaries(&shared),
    });
    (status, axum::Json(body)).into_response()
}

/// The partitions this instance owns and, with a shared store, its owner id and when it last read
/// the store.
fn ownership_summary(shared: &Shared) -> serde_json::Value {
    let status = shared.ownership.status();
    json!({
        "owner_id": status.owner_id,
        "owned_partitions": status.owned,
        "seconds_since_store_read": status.seconds_since_store_read,
    })
}

async fn routes(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(routes_summary(&shared)).into_response()
}

/// The `/routes` document (the status page reads its route and endpoint names from it too).
pub(super) fn routes_summary(shared: &Shared) -> serde_json::Value {
    let loaded = shared.routes.config();
    let config = &loaded.config;
    let routes: Vec<_> = config
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "source": r.source.message_source(),
                "condition": r.condition.get_ref(),
                "endpoint": r.endpoint,
                "enabled": r.enabled,
                "matched": shared.metrics.route_matched(&r.name),
            })
        })
        .collect();
    let fallback = config.fallback.as_ref().map(|f| {
        json!({
            "enabled": f.enabled,
            "condition": f.condition.get_ref(),
            "endpoint": f.endpoint,
            "matched": shared.metrics.fallback_matched.get(),
        })
    });
    json!({
        "hub_name": shared.hub_name,
        "event_hub": shared.source.event_hub(),
        "partitions": shared.partitions.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        "ownership": ownership_summary(shared),
        "routes": routes,
        "fallback": fallback,
        "endpoints": endpoint_summaries(shared),
        "events_routed": shared.metrics.events_routed(),
    })
}
