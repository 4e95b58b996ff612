//! TLS for the PostgreSQL sink: libpq's `sslmode` and `sslrootcert` on rustls with the `ring`
//! provider, plugged into tokio-postgres as its `MakeTlsConnect`.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (default, as libpq) | when the server offers TLS | no |
//! | `require` | yes | no; with `sslrootcert` set, the chain is checked as for `verify-ca` (libpq does the same) |
//! | `verify-ca` | yes | chain to a root of `sslrootcert` |
//! | `verify-full` | yes | chain, and the host name (or IP) the sink connects to |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the operating system's trust
//! store (libpq's spelling); without it, verification uses the system's trust store, which holds
//! the roots Azure Database for PostgreSQL chains to.
//!
//! The provider is chosen explicitly (`ring`), never the process default: the workspace's rustls
//! may be compiled with a second provider by other crates, and then has no unambiguous default.
//!
//! The stream reports `tls-server-end-point` channel binding (RFC 5929: a hash of the server's
//! certificate with the hash of its signature algorithm), so SCRAM authentication uses
//! `SCRAM-SHA-256-PLUS` and a man in the middle cannot relay it.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Deserialize;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    #[default]
    Prefer,
    /// Always TLS; the certificate is checked only when `sslrootcert` is set (then as `verify-ca`).
    Require,
    /// Always TLS, with a certificate chaining to a trusted root.
    VerifyCa,
    /// Always TLS, with a certificate chaining to a trusted root and issued for the host.
    VerifyFull,
}

impl SslMode {
    /// What tokio-postgres negotiates for this mode.
    pub(crate) fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// The value of `sslrootcert` meaning the operating system's trust store.
pub(crate) const SYSTEM_ROOTS: &str = "system";

/// Reads the roots `sslrootcert` names (`None`: the system's trust store). The error says which
/// file and what is wrong with it.
pub(crate) fn load_roots(sslrootcert: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match sslrootcert {
        None | Some(SYSTEM_ROOTS) => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(format!(
                    "the system's trust store has no usable certificate ({}); install the CA \
                     certificates package or set sslrootcert to a PEM file",
                    loaded
                        .errors
                        .first()
                        .map_or_else(|| "it is empty".to_owned(), ToString::to_string)
                ));
            }
        }
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("sslrootcert `{path}` cannot be read: {e}"))?;
            for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
                let certificate = certificate
                    .map_err(|e| format!("sslrootcert `{path}` is not valid PEM: {e}"))?;
                roots.add(certificate).map_err(|e| {
                    format!("sslrootcert `{path}` holds a certificate rustls refuses: {e}")
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert `{path}` holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
                ));
            }
        }
    }
    Ok(roots)
}

/// Checks `sslrootcert` without connecting (for configuration files).
pub(crate) fn check_sslrootcert(sslrootcert: &str) -> Result<(), String> {
    if sslrootcert == SYSTEM_ROOTS || Path::new(sslrootcert).is_file() {
        return load_roots(Some(sslrootcert)).map(drop);
    }
    Err(format!(
        "sslrootcert `{sslrootcert}` is not a file; name a PEM file of CA certificates or write \
         \"system\" for the operating system's trust store"
    ))
}

/// What a failed connection says about TLS, when TLS is why it failed: the server refused TLS, or
/// its certificate was refused. These are configuration problems, never retried. `host` and
/// `sslrootcert` are the sink's, for the advice.
pub(crate) fn describe_failure(
    error: &tokio_postgres::Error,
    host: &str,
    sslrootcert: Option<&str>,
) -> Option<String> {
    if error.to_string().contains("server does not support TLS") {
        return Some(format!(
            "the server at `{host}` does not accept TLS connections; enable `ssl` on the server or \
             set sslmode = \"prefer\" or \"disable\""
        ));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        let tls = current.downcast_ref::<rustls::Error>().or_else(|| {
            current
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            let roots = match sslrootcert {
                None | Some(SYSTEM_ROOTS) => "the system's trust store".to_owned(),
                Some(path) => format!("the CA certificates in sslrootcert `{path}`"),
            };
            return Some(match tls {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                    "the server's TLS certificate is not signed by a CA in {roots} (wrong CA); \
                     set sslrootcert to the CA certificate that issued the server's certificate"
                ),
                rustls::Error::InvalidCertificate(
                    reason @ (CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. }),
                ) => format!(
                    "the server's TLS certificate is not issued for host `{host}` ({reason}); \
                     connect by a name the certificate lists, or use sslmode = \"verify-ca\" to \
                     check only the CA"
                ),
                rustls::Error::InvalidCertificate(reason) => {
                    format!("the server's TLS certificate was refused: {reason}")
                }
                other => format!("the TLS handshake with `{host}` failed: {other}"),
            });
        }
        cause = current.source();
    }
    None
}

/// Makes rustls connections for tokio-postgres, configured once per sink.
#[derive(Clone)]
pub(crate) struct RustlsConnector {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for RustlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RustlsConnector")
    }
}

impl RustlsConnector {
    /// The connector for `mode`; roots are read now, so a bad `sslrootcert` fails at start-up.
    pub(crate) fn new(mode: SslMode, sslrootcert: Option<&str>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("rustls refuses the ring provider: {e}"))?;
        let verify = |check_name: bool| -> Result<Arc<dyn ServerCertVerifier>, String> {
            let roots = Arc::new(load_roots(sslrootcert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("cannot verify with these roots: {e}"))?;
            Ok(Arc::new(Verifier {
                webpki,
                check_name,
                algorithms: provider.signature_verification_algorithms,
            }))
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, sslrootcert) {
            (SslMode::VerifyFull, _) => verify(true)?,
            (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => verify(false)?,
            (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) => {
                Arc::new(AnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                })
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// WebPKI chain verification, with or without the host name check.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The name is checked after the chain: a name error means the chain is trusted.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `prefer` and `require` without roots: any certificate, but the handshake signature must be
/// made with its key (the connection is encrypted to whoever holds it).
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let server_name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host `{domain}` is not a valid TLS server name: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            config: Arc::clone(&self.config),
            server_name,
        })
    }
}

/// One TLS handshake.
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let stream = connector.connect(self.server_name, stream).await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.0.get_ref();
        connection
            .peer_certificates()
            .and_then(|certificates| certificates.first())
            .and_then(|certificate| tls_server_end_point(certificate))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature's hash function,
/// SHA-256 for MD5 and SHA-1; `None` for algorithms without a single hash (RSA-PSS, EdDSA), as
/// PostgreSQL's server then offers no channel binding either.
fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    // Object identifiers of signature algorithms (DER contents), by hash.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_algorithm(certificate)?;
    let hash = |h: &[u8]| h.to_vec();
    match oid {
        [prefix @ .., 0x04 | 0x05 | 0x0b] if prefix == RSA => {
            Some(hash(&sha2::Sha256::digest(certificate)))
        }
        [prefix @ .., 0x0c] if prefix == RSA => Some(hash(&sha2::Sha384::digest(certificate))),
        [prefix @ .., 0x0d] if prefix == RSA => Some(hash(&sha2::Sha512::digest(certificate))),
        [prefix @ .., 0x0e] if prefix == RSA => Some(hash(&sha2::Sha224::digest(certificate))),
        _ if oid == ECDSA_SHA1 => Some(hash(&sha2::Sha256::digest(certificate))),
        [prefix @ .., 0x01] if prefix == ECDSA_SHA2 => {
            Some(hash(&sha2::Sha224::digest(certificate)))
        }
        [prefix @ .., 0x02] if prefix == ECDSA_SHA2 => {
            Some(hash(&sha2::Sha256::digest(certificate)))
        }
        [prefix @ .., 0x03] if prefix == ECDSA_SHA2 => {
            Some(hash(&sha2::Sha384::digest(certificate)))
        }
        [prefix @ .., 0x04] if prefix == ECDSA_SHA2 => {
            Some(hash(&sha2::Sha512::digest(certificate)))
        }
        _ => None,
    }
}

/// The signature algorithm OID of a DER certificate: `Certificate ::= SEQUENCE { tbsCertificate,
/// signatureAlgorithm SEQUENCE { algorithm OID, ... }, signature }`.
fn signature_algorithm(certificate: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(certificate, 0x30)?;
    let (_tbs, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element with tag `tag` at the start of `input`: `(contents, rest)`.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > size_of::<usize>() {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(octets)?;
        let length = bytes
            .iter()
            .fold(0_usize, |length, &b| (length << 8) | usize::from(b));
        (length, rest)
    };
    rest.split_at_checked(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_hashes_with_the_certificates_signature_hash() {
        type Digest = fn(&[u8]) -> Vec<u8>;
        let cases: [(&rcgen::SignatureAlgorithm, Digest); 2] = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, |c| {
                sha2::Sha256::digest(c).to_vec()
            }),
            (&rcgen::PKCS_ECDSA_P384_SHA384, |c| {
                sha2::Sha384::digest(c).to_vec()
            }),
        ];
        for (algorithm, digest) in cases {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let certificate = rcgen::CertificateParams::new(vec!["db.example".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let der = certificate.der();
            assert_eq!(
                tls_server_end_point(der),
                Some(digest(der)),
                "{algorithm:?}"
            );
        }
        assert_eq!(tls_server_end_point(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(tls_server_end_point(b""), None);
    }

    #[test]
    fn sslrootcert_must_name_a_pem_file_of_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.path().join("missing.pem");
        let cases = [
            (not_pem.display().to_string(), "holds no certificate"),
            (missing.display().to_string(), "is not a file"),
        ];
        for (path, expected) in cases {
            let error = check_sslrootcert(&path).unwrap_err();
            assert!(error.contains(expected) && error.contains(&path), "{error}");
        }
    }
}
