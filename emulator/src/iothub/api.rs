//! The emulator's HTTP API, as IoT Hub serves it on its host name: the service REST API (identity
//! registry, twins, the twin query) for back ends and the official service SDKs, and the device side
//! (telemetry from `ingress.rs`, reported properties) for devices.
//!
//! Service API (SAS of a shared access policy; reference §1): `GET /devices`, `PUT/GET/DELETE
//! /devices/{id}`, `GET /devices/{id}/modules`, `PUT/GET/DELETE /devices/{id}/modules/{mid}`,
//! `GET/PATCH/PUT /twins/{id}` and `/twins/{id}/modules/{mid}` (etags via `If-Match`), and
//! `POST /devices/query` with `SELECT * FROM devices` or `SELECT * FROM devices.modules`, paged by
//! `x-ms-max-item-count` and `x-ms-continuation`.
//!
//! Device API (SAS of the device's key): `POST /devices/{id}[/modules/{mid}]/messages/events` and
//! `PATCH /twins/{id}[/modules/{mid}]/properties/reported`. IoT Hub itself takes reported
//! properties only over MQTT or AMQP; this HTTP form is the emulator's own, so that devices
//! (`hubroute simulate`) can report without an MQTT stack.
//!
//! The same router is served over plain HTTP and, given a certificate, over HTTPS: the official
//! service SDKs only speak HTTPS (`https://{HostName}`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use hubroute_protocol::iothub::{CONTINUATION_HEADER, ITEM_TYPE_HEADER, MAX_ITEM_COUNT_HEADER};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use super::{IotHub, Permission, RegistryError};
use crate::config::TlsFiles;
use crate::{Error, MAX_D2C_MESSAGE_BYTES, Result};

/// Twins per query page when the client asks for none.
const DEFAULT_PAGE: usize = 100;
/// The most twins per query page.
const MAX_PAGE: usize = 1000;
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the IoT hub's HTTP API (device ingress, reported properties, service API) on `listener`
/// until `shutdown` completes; over HTTPS when `tls` is given. The listener's address becomes one of
/// the hub's host names (`HostName` of connection strings, audience of tokens).
pub async fn serve_http(
    listener: TcpListener,
    hub: Arc<IotHub>,
    tls: Option<TlsFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let address = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the HTTP listener address".to_owned(),
        source,
    })?;
    hub.add_host(address.to_string(), tls.is_some());
    let app = router(hub);
    let stopped = |source: std::io::Error| Error::Ingress {
        problem: format!("the IoT Hub HTTP API on {address} stopped: {source}"),
    };
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(stopped),
        Some(files) => {
            let acceptor = crate::server::tls_acceptor(&files)?;
            axum::serve(TlsListener { listener, acceptor }, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(stopped)
        }
    }
}

/// A TCP listener that completes a TLS handshake before handing a connection to axum.
struct TlsListener {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accepting an HTTPS connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(stream)) => return (stream, peer),
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

fn router(hub: Arc<IotHub>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/devices", get(list_devices))
        .route("/devices/query", post(query))
        .route(
            "/devices/{id}",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route("/devices/{id}/modules", get(list_modules))
        .route(
            "/devices/{id}/modules/{mid}",
            get(get_module).put(put_module).delete(delete_module),
        )
        .route(
            "/twins/{id}",
            get(get_twin).patch(patch_twin).put(replace_twin),
        )
        .route(
            "/twins/{id}/modules/{mid}",
            get(get_module_twin)
                .patch(patch_module_twin)
                .put(replace_module_twin),
        )
        .route("/twins/{id}/properties/reported", patch(report))
        .route(
            "/twins/{id}/modules/{mid}/properties/reported",
            patch(report_module),
        )
        .merge(crate::ingress::routes())
        .layer(DefaultBodyLimit::max(MAX_D2C_MESSAGE_BYTES))
        .with_state(hub)
}

/// An error in IoT Hub's shape: `{"Message": "ErrorCode:<code>;<text>", "ExceptionMessage": …}`.
pub(crate) fn error_response(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(serde_json::json!({
            "Message": format!("ErrorCode:{code};{message}"),
            "ExceptionMessage": format!("Tracking ID:{}-G:0-TimeStamp:{}", uuid::Uuid::new_v4().simple(), chrono::Utc::now().format("%m/%d/%Y %H:%M:%S")),
        })),
    )
        .into_response()
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Authorizes a service request, answering injected faults first.
/// A refused request's response (boxed: responses are large and refusals rare).
type Refusal = Box<Response>;

fn service(hub: &IotHub, headers: &HeaderMap, permission: Permission) -> Result<(), Refusal> {
    if let Some((status, retry_after)) = hub.fault() {
        let mut response = error_response(
            status,
            if status == 429 {
                "ThrottlingException"
            } else {
                "ServiceUnavailable"
            },
            "injected fault: the service is busy; retry later",
        );
        if let Some(seconds) = retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Err(Box::new(response));
    }
    hub.authorize_service(header_text(headers, header::AUTHORIZATION), permission)
        .map_err(|error| Box::new(error.into_response()))
}

fn json_with_etag(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, axum::Json(value)).into_response();
    if let Some(etag) = value.get("etag").and_then(Value::as_str)
        && let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\""))
    {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn parse_body(body: &Bytes) -> Result<Value, Refusal> {
    if body.is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error_response(
            400,
            "ArgumentInvalid",
            &format!("the body is not JSON: {e}"),
        ))
    })
}

fn random_key() -> String {
    hubroute_protocol::iothub::generate_key(rand::random())
}

#[derive(Debug, serde::Deserialize)]
struct Top {
    top: Option<usize>,
}

async fn list_devices(
    State(hub): State<Arc<IotHub>>,
    headers: HeaderMap,
    Query(top): Query<Top>,
) -> Response {
    if let Err(response) = service(&hub, &headers, Permission::RegistryRead) {
        return *response;
    }
    let top = top.top.unwrap_or(1000).min(1000);
    axum::Json(hub.read(|r| r.devices(top))).into_response()
}

async fn put_identity(
    hub: &IotHub,
    headers: &HeaderMap,
    device: &str,
    module: Option<&str>,
    body: &Bytes,
) -> Response {
    if let Err(response) = service(hub, headers, Permission::RegistryWrite) {
        return *response;
    }
    let body = match parse_body(body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let if_match = header_text(headers, header::IF_MATCH);
    let now = chrono::Utc::now();
    match hub.change(|registry| {
        let (rendered, created, change) =
            registry.put_identity(device, module, &body, if_match, random_key, now)?;
        Ok(((rendered, created), change))
    }) {
        // IoT Hub answers 200 for devices (the SDKs accept nothing else) and 201 for a new module.
        Ok((rendered, created)) => {
            let status = if created && module.is_some() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_with_etag(status, &rendered)
        }
        Err(error) => error.into_response(),
    }
}

async fn delete_identity(
    hub: &IotHub,
    headers: &HeaderMap,
    device: &str,
    module: Option<&str>,
) -> Response {
    if let Err(response) = service(hub, headers, Permission::RegistryWrite) {
        return *response;
    }
    let if_match = header_text(headers, header::IF_MATCH);
    match hub.change(|registry| {
        let change = registry.delete_identity(device, module, if_match)?;
        Ok(((), Some(change)))
    }) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn get_identity(
    hub: &IotHub,
    headers: &HeaderMap,
    device: &str,
    module: Option<&str>,
) -> Response {
    if let Err(response) = service(hub, headers, Permission::RegistryRead) {
        return *response;
    }
    match hub.read(|r| r.get_identity(device, module)) {
        Ok(value) => json_with_etag(StatusCode::OK, &value),
        Err(error) => error.into_response(),
    }
}

async fn put_device(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    put_identity(&hub, &headers, &id, None, &body).await
}

async fn get_device(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    get_identity(&hub, &headers, &id, None).await
}

async fn delete_device(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    delete_identity(&hub, &headers, &id, None).await
}

async fn list_modules(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = service(&hub, &headers, Permission::RegistryRead) {
        return *response;
    }
    match hub.read(|r| r.modules_of(&id)) {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn put_module(
    State(hub): State<Arc<IotHub>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    put_identity(&hub, &headers, &id, Some(&mid), &body).await
}

async fn get_module(
    State(hub): State<Arc<IotHub>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_identity(&hub, &headers, &id, Some(&mid)).await
}

async fn delete_module(
    State(hub): State<Arc<IotHub>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete_identity(&hub, &headers, &id, Some(&mid)).await
}

async fn read_twin(
    hub: &IotHub,
    headers: &HeaderMap,
    device: &str,
    module: Option<&str>,
) -> Response {
    if let Err(response) = service(hub, headers, Permission::ServiceConnect) {
        return *response;
    }
    match hub.read(|r| r.twin(device, module)) {
        Ok(value) => json_with_etag(StatusCode::OK, &value),
        Err(error) => error.into_response(),
    }
}

async fn write_twin(
    hub: &IotHub,
    headers: &HeaderMap,
    device: &str,
    module: Option<&str>,
    body: &Bytes,
    replace: bool,
) -> Response {
    if let Err(response) = service(hub, headers, Permission::ServiceConnect) {
        return *response;
    }
    let body = match parse_body(body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let if_match = header_text(headers, header::IF_MATCH);
    let now = chrono::Utc::now();
    match hub.change(|registry| {
        let (twin, change) = registry.update_twin(device, module, &body, if_match, replace, now)?;
        Ok((twin, Some(change)))
    }) {
        Ok(twin) => json_with_etag(StatusCode::OK, &twin),
        Err(error) => error.into_response(),
    }
}

async fn get_twin(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    read_twin(&hub, &headers, &id, None).await
}

async fn patch_twin(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_twin(&hub, &headers, &id, None, &body, false).await
}

async fn replace_twin(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_twin(&hub, &headers, &id, None, &body, true).await
}

async fn get_module_twin(
    State(hub): State<Arc<IotHub>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    read_twin(&hub, &headers, &id, Some(&mid)).await
}

async fn patch_module_twin(
    State(hub): State<Arc<IotHub>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_twin(&hub, &headers, &id, Some(&mid), &body, false).await
}

async fn replace_module_twin(
    State(hub): State<Arc<IotHub>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_twin(&hub, &headers, &id, Some(&mid), &body, true).await
}

/// The twin queries the emulator answers, normalised (case and spacing do not matter).
fn parse_query(text: &str) -> Option<bool> {
    let normalised = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if normalised.eq_ignore_ascii_case("SELECT * FROM devices") {
        Some(false)
    } else if normalised.eq_ignore_ascii_case("SELECT * FROM devices.modules") {
        Some(true)
    } else {
        None
    }
}

async fn query(State(hub): State<Arc<IotHub>>, headers: HeaderMap, body: Bytes) -> Response {
    hub.count_query();
    if let Err(response) = service(&hub, &headers, Permission::ServiceConnect) {
        return *response;
    }
    let body = match parse_body(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let Some(text) = body.get("query").and_then(Value::as_str) else {
        return error_response(
            400,
            "ArgumentInvalid",
            "the body must be {\"query\": \"SELECT …\"}",
        );
    };
    let Some(modules) = parse_query(text) else {
        return error_response(
            400,
            "ArgumentInvalid",
            &format!(
                "the emulator answers `SELECT * FROM devices` and `SELECT * FROM devices.modules`, not `{text}`"
            ),
        );
    };
    let limit = header_text(&headers, MAX_ITEM_COUNT_HEADER)
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_PAGE)
        .min(MAX_PAGE);
    let after = header_text(&headers, CONTINUATION_HEADER).filter(|t| !t.is_empty());
    match hub.read(|r| r.query_page(modules, after, limit)) {
        Ok((items, continuation)) => {
            let mut response = axum::Json(Value::Array(items)).into_response();
            let headers = response.headers_mut();
            headers.insert(ITEM_TYPE_HEADER, HeaderValue::from_static("twin"));
            // Always present (empty on the last page): the Python SDK reads it unconditionally.
            if let Ok(value) = HeaderValue::from_str(continuation.as_deref().unwrap_or("")) {
                headers.insert(CONTINUATION_HEADER, value);
            }
            response
        }
        Err(error) => error.into_response(),
    }
}

async fn reported(
    hub: &IotHub,
    headers: &HeaderMap,
    device: &str,
    module: Option<&str>,
    body: &Bytes,
) -> Response {
    if let Err(error) =
        hub.authenticate_device(header_text(headers, header::AUTHORIZATION), device, module)
    {
        return error.into_response();
    }
    let body = match parse_body(body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let now = chrono::Utc::now();
    match hub.change(|registry| {
        let (twin, change) = registry.update_reported(device, module, &body, now)?;
        Ok((twin, Some(change)))
    }) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn report(
    State(hub): State<Arc<IotHub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reported(&hub, &headers, &id, None, &body).await
}

async fn report_module(
    State(hub): State<Arc<IotHub>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    reported(&hub, &headers, &id, Some(&mid), &body).await
}
