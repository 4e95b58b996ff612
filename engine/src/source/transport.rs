//! Opening the byte stream to an Event Hubs endpoint: TCP, then TLS when the connection string
//! asks for it (Event Hubs speaks TLS from the first byte on 5671), trusting the public web roots
//! plus an optional extra CA (`tls_ca_file`). Both the data plane and the control plane connect
//! through here, so there is one TLS configuration (rustls with the `ring` provider).

use std::path::Path;
use std::sync::Arc;

use hubroute_amqp::Stream;
use hubroute_protocol::ConnectionString;
use tokio::net::TcpStream;

use super::credentials::connect_error;
use crate::Result;

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

/// Connects to the endpoint of `connection_string`, with TLS unless it targets a development
/// emulator.
pub(crate) async fn open_stream(
    connection_string: &ConnectionString,
    tls_ca_file: Option<&Path>,
) -> Result<Stream> {
    let host = connection_string.host.as_str();
    let fail = |problem: String| connect_error(connection_string, problem);
    let stream = TcpStream::connect((host, connection_string.effective_port()))
        .await
        .map_err(|error| fail(format!("TCP connect failed: {error}")))?;
    stream
        .set_nodelay(true)
        .map_err(|error| fail(error.to_string()))?;
    if !connection_string.uses_tls() {
        return Ok(Stream::from(stream));
    }
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|error| fail(format!("`{host}` is not a valid TLS server name: {error}")))?;
    let connector =
        tls_connector(tls_ca_file).map_err(|error| fail(format!("TLS setup failed: {error}")))?;
    let tls = connector
        .connect(server_name, stream)
        .await
        .map_err(|error| fail(format!("TLS handshake failed: {error}")))?;
    Ok(Stream::from(tls))
}
