//! The control plane: a short-lived fe2o3-amqp connection for `$management` READs of the event hub
//! (partition ids) and of its partitions (retained sequence numbers, for lag).
//!
//! These requests are few and fe2o3-amqp's management and CBS clients implement them fully, so the
//! control plane keeps them; the data plane (reading partitions) is `link::PartitionLink`. Token
//! text is never logged.

use std::marker::PhantomData;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_management::client::MgmtClient;
use fe2o3_amqp_management::error::Error as ManagementError;
use fe2o3_amqp_management::{Request, Response};
use fe2o3_amqp_types::messaging::{ApplicationProperties, Message};
use fe2o3_amqp_types::primitives::{OrderedMap, SimpleValue, Timestamp, Value};
use hubroute_protocol::{ConnectionString, cbs, management};

use super::credentials::{Credentials, connect_error};
use crate::{Error, Result};

/// How long opening the transport, SASL and the AMQP handshake may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing a connection may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An open, authenticated connection with one session.
#[derive(Debug)]
pub(crate) struct HubConnection {
    connection: ConnectionHandle<()>,
    pub(crate) session: SessionHandle<()>,
    cbs: CbsClient,
    credentials: Credentials,
    audience: String,
}

async fn open_transport(
    connection_string: &ConnectionString,
    config: &super::SourceConfig,
) -> Result<ConnectionHandle<()>> {
    let stream = super::transport::open_stream(connection_string, config).await?;
    Connection::builder()
        .container_id(format!("hubroute-{}", uuid::Uuid::new_v4()))
        .hostname(connection_string.host.as_str())
        .scheme("amqp")
        .sasl_profile(SaslProfile::Anonymous)
        .open_with_stream(stream)
        .await
        .map_err(|error| connect_error(config, format!("AMQP open failed: {error}")))
}

impl HubConnection {
    /// Connects to the endpoint of `config` and authorises the connection for `event_hub`.
    pub(crate) async fn open(config: &super::SourceConfig, event_hub: &str) -> Result<Self> {
        let connection_string = config.event_hubs()?;
        let credentials = Credentials::new(config)?;
        let opening = async {
            let mut connection = open_transport(connection_string, config).await?;
            let mut session = Session::begin(&mut connection)
                .await
                .map_err(|error| connect_error(config, format!("AMQP begin failed: {error}")))?;
            let cbs = CbsClient::attach(&mut session).await.map_err(|error| {
                connect_error(config, format!("attaching $cbs failed: {error}"))
            })?;
            Ok::<_, Error>((connection, session, cbs))
        };
        let (connection, session, cbs) = tokio::time::timeout(OPEN_TIMEOUT, opening)
            .await
            .map_err(|_| {
                connect_error(config, format!("no AMQP handshake within {OPEN_TIMEOUT:?}"))
            })??;
        let mut hub = Self {
            connection,
            session,
            cbs,
            credentials,
            audience: connection_string.audience(event_hub),
        };
        hub.put_token(config).await?;
        Ok(hub)
    }

    /// Sends the token on `$cbs`.
    async fn put_token(&mut self, config: &super::SourceConfig) -> Result<()> {
        let (token, _) = self.credentials.token(&self.audience)?;
        let expiry = Timestamp::from_milliseconds(token.expiry.saturating_mul(1000));
        let cbs_token = CbsToken::new(token.as_str(), cbs::SAS_TOKEN_TYPE, Some(expiry));
        match self.cbs.put_token(self.audience.as_str(), cbs_token).await {
            Ok(()) => Ok(()),
            Err(ManagementError::Status(status)) => Err(Error::Unauthorized {
                audience: self.audience.clone(),
                problem: format!(
                    "put-token returned status {}{}",
                    status.code.0,
                    status
                        .description
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
            }),
            Err(error) => Err(connect_error(config, format!("put-token failed: {error}"))),
        }
    }

    /// Partition ids of `event_hub`, from a `$management` READ of `com.microsoft:eventhub`.
    pub(crate) async fn partition_ids(&mut self, event_hub: &str) -> Result<Vec<String>> {
        let (token, _) = self.credentials.token(&self.audience)?;
        let request = Read::<EventHubInfo>::new(
            management::EVENT_HUB_TYPE,
            vec![("name", event_hub.to_owned())],
            token.as_str(),
        );
        Ok(self.management(event_hub, request).await?.partition_ids)
    }

    /// The first retained and the last enqueued sequence numbers of `partition` (`None` while it
    /// is empty), from a `$management` READ of `com.microsoft:partition`.
    pub(crate) async fn retained_sequence_numbers(
        &mut self,
        event_hub: &str,
        partition: &str,
    ) -> Result<Option<(i64, i64)>> {
        let (token, _) = self.credentials.token(&self.audience)?;
        let request = Read::<PartitionInfo>::new(
            management::PARTITION_TYPE,
            vec![
                ("name", event_hub.to_owned()),
                ("partition", partition.to_owned()),
            ],
            token.as_str(),
        );
        let info = self.management(event_hub, request).await?;
        Ok((!info.is_empty).then_some((
            info.begin_sequence_number,
            info.last_enqueued_sequence_number,
        )))
    }

    /// One `$management` request/response on a fresh client link pair.
    async fn management<R: Request>(&mut self, event_hub: &str, request: R) -> Result<R::Response>
    where
        R::Response: Response<Body = Value, Error = ManagementError>,
    {
        let failure = |problem: String| Error::Management {
            event_hub: event_hub.to_owned(),
            problem,
        };
        let mut client = MgmtClient::builder()
            .client_node_addr(format!("hubroute-mgmt-{}", uuid::Uuid::new_v4().simple()))
            .attach(&mut self.session)
            .await
            .map_err(|error| failure(format!("attaching $management failed: {error}")))?;
        let response = tokio::time::timeout(OPEN_TIMEOUT, client.call(request)).await;
        let _ = tokio::time::timeout(OPEN_TIMEOUT, client.close()).await;
        let Ok(response) = response else {
            return Err(failure(format!(
                "no $management response within {OPEN_TIMEOUT:?}"
            )));
        };
        match response {
            Ok(response) => Ok(response),
            Err(ManagementError::Status(status)) if matches!(status.code.0.get(), 401 | 403) => {
                Err(Error::Unauthorized {
                    audience: self.audience.clone(),
                    problem: format!("$management returned {}", status.code.0),
                })
            }
            Err(error) => Err(failure(error.to_string())),
        }
    }

    /// Closes the connection politely, giving up after a while: errors are irrelevant at that point
    /// and a dead peer must not stall a reconnect.
    ///
    /// The connection is closed with its session still open (a `close` ends its sessions). Ending
    /// the session first closes fe2o3-amqp's channel of outgoing session frames, and its connection
    /// loop (0.18) then polls that closed channel without pause until the peer's `close` arrives:
    /// under load, one core spun for as long as the emulator took to answer, after every lag poll.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close()).await;
    }
}

/// A `$management` `READ` of an entity (`com.microsoft:eventhub`, `com.microsoft:partition`),
/// decoded as `R`.
struct Read<R> {
    entity_type: &'static str,
    /// Application properties naming the entity (`name`, `partition`) and the security token.
    properties: Vec<(&'static str, String)>,
    response: PhantomData<R>,
}

impl<R> Read<R> {
    fn new(
        entity_type: &'static str,
        mut properties: Vec<(&'static str, String)>,
        token: &str,
    ) -> Self {
        properties.push((management::SECURITY_TOKEN, token.to_owned()));
        Self {
            entity_type,
            properties,
            response: PhantomData,
        }
    }
}

impl<R: Response<Body = Value, Error = ManagementError>> Request for Read<R> {
    const OPERATION: &'static str = management::READ;
    type Response = R;
    type Body = Value;

    fn manageable_entity_type(&mut self) -> Option<String> {
        Some(self.entity_type.to_owned())
    }

    fn encode_application_properties(&mut self) -> Option<ApplicationProperties> {
        let builder = std::mem::take(&mut self.properties)
            .into_iter()
            .fold(ApplicationProperties::builder(), |builder, (key, value)| {
                builder.insert(key, SimpleValue::String(value))
            });
        Some(builder.build())
    }

    fn encode_body(self) -> Self::Body {
        Value::Null
    }
}

/// The part of the event hub description the source needs.
struct EventHubInfo {
    partition_ids: Vec<String>,
}

impl Response for EventHubInfo {
    const STATUS_CODE: u16 = 200;
    type Body = Value;
    type Error = ManagementError;

    fn decode_message(message: Message<Self::Body>) -> Result<Self, Self::Error> {
        let Value::Map(map) = message.body else {
            return Err(ManagementError::DecodeError(None));
        };
        let ids = body_field(&map, "partition_ids");
        let items: Vec<&Value> = match ids {
            Some(Value::Array(array)) => array.0.iter().collect(),
            Some(Value::List(list)) => list.iter().collect(),
            _ => return Err(ManagementError::DecodeError(None)),
        };
        let partition_ids = items
            .into_iter()
            .map(|item| match item {
                Value::String(id) => Some(id.clone()),
                Value::Symbol(id) => Some(id.as_str().to_owned()),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or(ManagementError::DecodeError(None))?;
        Ok(Self { partition_ids })
    }
}

/// The part of the partition description the engine needs.
struct PartitionInfo {
    begin_sequence_number: i64,
    last_enqueued_sequence_number: i64,
    is_empty: bool,
}

impl Response for PartitionInfo {
    const STATUS_CODE: u16 = 200;
    type Body = Value;
    type Error = ManagementError;

    fn decode_message(message: Message<Self::Body>) -> Result<Self, Self::Error> {
        let Value::Map(map) = message.body else {
            return Err(ManagementError::DecodeError(None));
        };
        let field = |name: &str| body_field(&map, name);
        let number = |name: &str| match field(name) {
            Some(Value::Long(n)) => Ok(*n),
            Some(Value::Int(n)) => Ok(i64::from(*n)),
            _ => Err(ManagementError::DecodeError(None)),
        };
        Ok(Self {
            begin_sequence_number: number("begin_sequence_number")?,
            last_enqueued_sequence_number: number("last_enqueued_sequence_number")?,
            is_empty: matches!(field("is_partition_empty"), Some(Value::Bool(true))),
        })
    }
}

/// A field of a `$management` response body, keyed by string or symbol.
fn body_field<'a>(map: &'a OrderedMap<Value, Value>, name: &str) -> Option<&'a Value> {
    map.get(&Value::String(name.to_owned()))
        .or_else(|| map.get(&Value::Symbol(name.into())))
}
