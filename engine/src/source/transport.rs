//! Opening the byte stream to an endpoint: TCP (directly, or through an HTTP CONNECT proxy), then
//! TLS unless the endpoint is a development emulator (Event Hubs speaks TLS from the first byte on
//! 5671), then, for `transport = "amqp_websockets"`, the AMQP WebSocket binding on port 443.
//!
//! The data plane, the control plane and the IoT hub's redirect all connect through here, so there
//! is one TLS configuration (rustls with the `ring` provider, trusting the public web roots plus an
//! optional extra CA, `tls_ca_file`) for every transport.

use std::path::Path;
use std::sync::Arc;

use hubroute_amqp::{Stream, websocket};
use hubroute_protocol::ConnectionString;
use hubroute_protocol::connection_string::{AMQP_PORT, AMQPS_PORT};
use hubroute_protocol::iothub_amqp::{
    EVENT_HUBS_WEBSOCKET_PATH, WEBSOCKET_PORT, WEBSOCKET_SUBPROTOCOL,
};
use tokio::net::TcpStream;

use super::SourceConfig;
use super::config::Transport;
use super::credentials::connect_error;
use crate::Result;

/// Where to connect: a host, the port if one was given, TLS or not, and the WebSocket path its
/// kind of service uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
    pub(crate) tls: bool,
    pub(crate) websocket_path: &'static str,
}

impl Endpoint<'_> {
    /// The port for `transport`: the given one, else 5671 (TLS) or 5672 for AMQP and 443 for
    /// WebSockets.
    pub(crate) fn port(&self, transport: Transport) -> u16 {
        match (self.port, transport, self.tls) {
            (Some(port), _, _) => port,
            (None, Transport::AmqpWebsockets, _) => WEBSOCKET_PORT,
            (None, Transport::Amqp, true) => AMQPS_PORT,
            (None, Transport::Amqp, false) => AMQP_PORT,
        }
    }

    /// The endpoint of an Event Hubs connection string.
    pub(crate) fn of(connection_string: &ConnectionString) -> Endpoint<'_> {
        Endpoint {
            host: &connection_string.host,
            port: connection_string.port,
            tls: connection_string.uses_tls(),
            websocket_path: EVENT_HUBS_WEBSOCKET_PATH,
        }
    }
}

/// A TLS connector trusting the public web roots plus the certificates of `extra_ca` (PEM).
fn tls_connector(extra_ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let shown = path.display();
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read tls_ca_file {shown}: {e}"))?;
        let mut added = 0;
        for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
            let certificate =
                certificate.map_err(|e| format!("tls_ca_file {shown} is not valid PEM: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("tls_ca_file {shown}: a certificate is unusable: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("tls_ca_file {shown} holds no PEM certificate"));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Connects to `endpoint` with `config`'s transport, proxy and extra CA. The error says which step
/// failed (proxy, TCP, TLS, WebSocket handshake), never a secret.
pub(crate) async fn connect(
    endpoint: Endpoint<'_>,
    config: &SourceConfig,
) -> Result<Stream, String> {
    let host = endpoint.host;
    let port = endpoint.port(config.transport);
    let proxy = config.proxy_for(host).map_err(|error| error.to_string())?;
    let stream = match &proxy {
        Some(proxy) => proxy.tunnel(host, port).await?,
        None => TcpStream::connect((host, port))
            .await
            .map_err(|error| format!("TCP connect failed: {error}"))?,
    };
    stream
        .set_nodelay(true)
        .map_err(|error| error.to_string())?;
    let stream = if endpoint.tls {
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|error| format!("`{host}` is not a valid TLS server name: {error}"))?;
        let connector = tls_connector(config.tls_ca_file.as_deref())
            .map_err(|error| format!("TLS setup failed: {error}"))?;
        let tls = connector
            .connect(server_name, stream)
            .await
            .map_err(|error| format!("TLS handshake failed: {error}"))?;
        Stream::from(tls)
    } else {
        Stream::from(stream)
    };
    if config.transport == Transport::Amqp {
        return Ok(stream);
    }
    let scheme = if endpoint.tls { "wss" } else { "ws" };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let url = format!("{scheme}://{authority}{}", endpoint.websocket_path);
    let through = proxy
        .map(|proxy| format!(" through {proxy}"))
        .unwrap_or_default();
    websocket::connect(stream, &url, WEBSOCKET_SUBPROTOCOL)
        .await
        .map_err(|error| format!("{error}{through}"))
}

/// Connects to the endpoint of `connection_string` (an event hub); a failure is a retryable
/// [`crate::Error::Connect`].
pub(crate) async fn open_stream(
    connection_string: &ConnectionString,
    config: &SourceConfig,
) -> Result<Stream> {
    connect(Endpoint::of(connection_string), config)
        .await
        .map_err(|problem| connect_error(config, problem))
}
