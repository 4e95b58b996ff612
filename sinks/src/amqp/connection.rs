//! One AMQP connection of a publishing sink: transport (TCP, TLS through rustls with the ring
//! provider, as the source uses), SASL (ANONYMOUS plus a CBS `put-token` for Event Hubs and Service
//! Bus, PLAIN or ANONYMOUS for a plain broker), one session and one sender link to the target.
//!
//! Failures are classified here, once: [`Failure::Fatal`] for what retrying cannot fix while
//! opening (wrong key or password, unknown entity, untrusted certificate), [`Failure::Transient`]
//! for everything else. A connection that was working and is lost is always transient: the reconnect
//! decides whether the cause persists. Token text and passwords are never logged.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::link::{
    DetachError, LinkStateError, SendError, SenderAttachError, SessionStopReason,
};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Sender, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_management::error::Error as ManagementError;
use fe2o3_amqp_types::definitions::{self, ErrorCondition};
use fe2o3_amqp_types::primitives::{Symbol, Timestamp};
use hubroute_protocol::{SasToken, cbs, conditions};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::{Auth, Target};

/// How long opening the transport, SASL, the session, CBS and the link may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing may take before the connection is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a probe waits for the peer to detach a link it has just attached.
const PROBE_DETACH_GRACE: Duration = Duration::from_secs(1);
/// The least wait after `com.microsoft:server-busy`, as the SDKs do.
pub(crate) const SERVER_BUSY_BACKOFF: Duration = Duration::from_secs(4);

/// A classified failure.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Retry after a backoff of at least `min_delay`.
    Transient {
        problem: String,
        min_delay: Duration,
    },
    /// Stop the sink: `operation` failed in a way retries cannot fix.
    Fatal {
        operation: &'static str,
        problem: String,
    },
}

impl Failure {
    fn transient(problem: impl Into<String>) -> Self {
        Self::Transient {
            problem: problem.into(),
            min_delay: Duration::ZERO,
        }
    }
}

/// The name of an AMQP error condition, e.g. `amqp:not-found`.
pub(crate) fn condition_name(condition: &ErrorCondition) -> String {
    let symbol = match condition {
        ErrorCondition::AmqpError(e) => Symbol::from(e),
        ErrorCondition::ConnectionError(e) => Symbol::from(e),
        ErrorCondition::SessionError(e) => Symbol::from(e),
        ErrorCondition::LinkError(e) => Symbol::from(e),
        ErrorCondition::Custom(symbol) => symbol.clone(),
    };
    symbol.as_str().to_owned()
}

/// `condition: description` of an AMQP error.
pub(crate) fn describe_error(error: &definitions::Error) -> String {
    match &error.description {
        Some(description) => format!("{}: {description}", condition_name(&error.condition)),
        None => condition_name(&error.condition),
    }
}

/// Conditions that mean the entity or the credentials are wrong: fatal while opening.
fn refuses_access(condition: &str) -> bool {
    matches!(
        condition,
        conditions::UNAUTHORIZED_ACCESS
            | conditions::AUTH_FAILED
            | conditions::NOT_FOUND
            | "com.microsoft:entity-disabled"
            | "amqp:not-allowed"
    )
}

/// Classifies an error the peer sent while the link was being opened.
fn opening_refused(operation: &'static str, error: &definitions::Error) -> Failure {
    let condition = condition_name(&error.condition);
    if refuses_access(&condition) {
        return Failure::Fatal {
            operation,
            problem: describe_error(error),
        };
    }
    Failure::Transient {
        problem: format!("{operation}: {}", describe_error(error)),
        min_delay: if condition == conditions::SERVER_BUSY {
            SERVER_BUSY_BACKOFF
        } else {
            Duration::ZERO
        },
    }
}

fn session_stopped(operation: &'static str, reason: &SessionStopReason) -> Failure {
    use fe2o3_amqp::connection::ConnectionStopReason;
    match reason {
        SessionStopReason::RemoteEndedWithError(error)
        | SessionStopReason::ConnectionStopped(ConnectionStopReason::RemoteClosedWithError(
            error,
        )) => opening_refused(operation, error),
        other => Failure::transient(format!("{operation}: the session stopped ({other:?})")),
    }
}

/// Classifies a lost link or connection reported by a send or an outcome. On a link that has had a
/// delivery accepted (`proven`) it is transient: the reconnect finds out whether the cause persists.
/// On a fresh link, a refusal of the entity or the credentials is how a peer refuses the attach
/// (Event Hubs attaches and then detaches with the condition), so it is fatal.
pub(crate) fn lost(error: &SendError, proven: bool) -> Failure {
    use fe2o3_amqp::connection::ConnectionStopReason;
    let remote = match error {
        SendError::LinkStateError(
            LinkStateError::RemoteClosedWithError(error)
            | LinkStateError::RemoteDetachedWithError(error)
            | LinkStateError::SessionStopped(
                SessionStopReason::RemoteEndedWithError(error)
                | SessionStopReason::ConnectionStopped(ConnectionStopReason::RemoteClosedWithError(
                    error,
                )),
            ),
        ) => Some(error),
        _ => None,
    };
    match remote {
        Some(error) if !proven && refuses_access(&condition_name(&error.condition)) => {
            Failure::Fatal {
                operation: "attaching the sender",
                problem: describe_error(error),
            }
        }
        Some(error) => Failure::Transient {
            problem: format!("the link was closed: {}", describe_error(error)),
            min_delay: if condition_name(&error.condition) == conditions::SERVER_BUSY {
                SERVER_BUSY_BACKOFF
            } else {
                Duration::ZERO
            },
        },
        None => Failure::transient(format!("the link was lost: {error}")),
    }
}

/// Where a token comes from.
#[derive(Debug)]
enum Credentials {
    /// Signed from the key, renewed before expiry.
    Key,
    /// Given in the connection string; it cannot be renewed.
    Signature(SasToken),
}

/// An open connection with its sender link.
#[derive(Debug)]
pub(crate) struct Link {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    pub(crate) sender: Sender,
    /// The `$cbs` client of token-authenticated connections, kept for renewals.
    cbs: Option<(CbsClient, Credentials)>,
    /// When the token must be renewed; `None` when it cannot or need not be.
    pub(crate) renew_at: Option<Instant>,
    /// The link's `max-message-size` (`None`: no limit).
    pub(crate) max_message_size: Option<u64>,
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

/// Whether a failed TLS handshake is the server's certificate (fatal) rather than the network.
fn certificate_rejected(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|error| {
            matches!(
                error,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

async fn open_connection(target: &Target) -> Result<ConnectionHandle<()>, Failure> {
    let host = target.host.as_str();
    let stream = TcpStream::connect((host, target.port))
        .await
        .map_err(|error| Failure::transient(format!("TCP connect failed: {error}")))?;
    stream
        .set_nodelay(true)
        .map_err(|error| Failure::transient(error.to_string()))?;
    let sasl = match &target.auth {
        Auth::Cbs { .. } | Auth::Anonymous => SaslProfile::Anonymous,
        Auth::Plain { username, password } => SaslProfile::Plain {
            username: username.clone(),
            password: password.expose().to_owned(),
        },
    };
    let builder = Connection::builder()
        .container_id(format!("hubroute-{}-{}", target.sink, uuid::Uuid::new_v4()))
        .hostname(host)
        .scheme("amqp")
        .sasl_profile(sasl);
    let opened = if target.tls {
        let server_name =
            rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|error| {
                Failure::Fatal {
                    operation: "TLS setup",
                    problem: format!("`{host}` is not a valid TLS server name: {error}"),
                }
            })?;
        let connector =
            tls_connector(target.tls_ca_file.as_deref()).map_err(|problem| Failure::Fatal {
                operation: "TLS setup",
                problem,
            })?;
        let tls = connector
            .connect(server_name, stream)
            .await
            .map_err(|error| {
                if certificate_rejected(&error) {
                    Failure::Fatal {
                        operation: "TLS handshake",
                        problem: format!(
                            "{error}; trust the server's CA with `tls_ca_file` if it is private"
                        ),
                    }
                } else {
                    Failure::transient(format!("TLS handshake failed: {error}"))
                }
            })?;
        builder.open_with_stream(tls).await
    } else {
        builder.open_with_stream(stream).await
    };
    opened.map_err(|error| match error {
        OpenError::SaslError { code, .. } => Failure::Fatal {
            operation: "SASL authentication",
            problem: format!(
                "the server refused the credentials ({code:?}); check username and password"
            ),
        },
        other => Failure::transient(format!("AMQP open failed: {other}")),
    })
}

impl Link {
    /// Connects, authenticates and attaches the sender to the target address.
    pub(crate) async fn open(target: &Target) -> Result<Self, Failure> {
        tokio::time::timeout(OPEN_TIMEOUT, Self::open_inner(target))
            .await
            .map_err(|_| Failure::transient(format!("not open within {OPEN_TIMEOUT:?}")))?
    }

    async fn open_inner(target: &Target) -> Result<Self, Failure> {
        let mut connection = open_connection(target).await?;
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|error| Failure::transient(format!("AMQP begin failed: {error}")))?;
        let (cbs, renew_at) = match &target.auth {
            Auth::Cbs {
                connection_string, ..
            } => {
                let credentials = match &connection_string.shared_access_signature {
                    Some(signature) => {
                        Credentials::Signature(SasToken::parse(signature).map_err(|error| {
                            Failure::Fatal {
                                operation: "authorization",
                                problem: error.to_string(),
                            }
                        })?)
                    }
                    None => Credentials::Key,
                };
                let mut client = CbsClient::attach(&mut session).await.map_err(|error| {
                    Failure::transient(format!("attaching $cbs failed: {error}"))
                })?;
                let renew_at = put_token(&mut client, &credentials, target).await?;
                (Some((client, credentials)), renew_at)
            }
            Auth::Plain { .. } | Auth::Anonymous => (None, None),
        };
        let sender = Sender::builder()
            .name(format!("hubroute-{}-{}", target.sink, uuid::Uuid::new_v4()))
            .target(target.address.as_str())
            .attach(&mut session)
            .await
            .map_err(|error| match error {
                SenderAttachError::RemoteClosedWithError(error) => {
                    opening_refused("attaching the sender", &error)
                }
                SenderAttachError::SessionStopped(reason) => {
                    session_stopped("attaching the sender", &reason)
                }
                other => Failure::transient(format!("attaching the sender failed: {other}")),
            })?;
        Ok(Self {
            max_message_size: sender.max_message_size(),
            connection,
            session,
            sender,
            cbs,
            renew_at,
        })
    }

    /// Opens a link to `target` as [`Link::open`] does, waits [`PROBE_DETACH_GRACE`] for the
    /// peer to detach it (Event Hubs refuses an unknown entity by attaching and then detaching
    /// with the condition) and closes it: the health probe. Nothing is sent.
    pub(crate) async fn probe(target: &Target) -> Result<(), Failure> {
        let mut link = Self::open(target).await?;
        let refused = tokio::time::timeout(PROBE_DETACH_GRACE, link.sender.on_detach()).await;
        link.close().await;
        match refused {
            Err(_elapsed) => Ok(()),
            Ok(
                DetachError::RemoteDetachedWithError(error)
                | DetachError::RemoteClosedWithError(error),
            ) => Err(opening_refused("attaching the sender", &error)),
            Ok(DetachError::SessionStopped(reason)) => {
                Err(session_stopped("attaching the sender", &reason))
            }
            Ok(other) => Err(Failure::transient(format!(
                "the peer detached the sender right after attaching it: {other}"
            ))),
        }
    }

    /// Renews the token on `$cbs` (a no-op without one).
    pub(crate) async fn renew_token(&mut self, target: &Target) -> Result<(), Failure> {
        if let Some((client, credentials)) = self.cbs.as_mut() {
            self.renew_at = put_token(client, credentials, target).await?;
        }
        Ok(())
    }

    /// Closes politely, giving up after a while: a dead peer must not stall a reconnect.
    pub(crate) async fn close(mut self) {
        let closing = async {
            let _ = self.sender.close().await;
            if let Some((client, _)) = self.cbs.take() {
                let _ = client.close().await;
            }
            let _ = self.session.end().await;
            let _ = self.connection.close().await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

/// Puts a token for the target's audience on `$cbs`; returns when to renew it.
async fn put_token(
    client: &mut CbsClient,
    credentials: &Credentials,
    target: &Target,
) -> Result<Option<Instant>, Failure> {
    let Auth::Cbs {
        connection_string,
        audience,
        token_lifetime,
    } = &target.auth
    else {
        return Ok(None);
    };
    let (token, renew_at) = match credentials {
        Credentials::Signature(token) => (token.clone(), None),
        Credentials::Key => {
            let key = connection_string
                .key
                .as_ref()
                .ok_or_else(|| Failure::Fatal {
                    operation: "authorization",
                    problem: "the connection string has no SharedAccessKey".to_owned(),
                })?;
            let seconds = i64::try_from(token_lifetime.as_secs()).unwrap_or(i64::MAX);
            let expiry = chrono::Utc::now().timestamp().saturating_add(seconds);
            (
                key.sign(audience, expiry),
                Some(Instant::now() + token_lifetime.mul_f64(0.8)),
            )
        }
    };
    let expiry = Timestamp::from_milliseconds(token.expiry.saturating_mul(1000));
    let cbs_token = CbsToken::new(token.as_str(), cbs::SAS_TOKEN_TYPE, Some(expiry));
    match client.put_token(audience.as_str(), cbs_token).await {
        Ok(()) => Ok(renew_at),
        Err(ManagementError::Status(status)) => Err(Failure::Fatal {
            operation: "authorization (CBS put-token)",
            problem: format!(
                "status {}{}; check the connection string's key and its Send right for `{audience}`",
                status.code.0,
                status
                    .description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        }),
        Err(error) => Err(Failure::transient(format!("put-token failed: {error}"))),
    }
}
