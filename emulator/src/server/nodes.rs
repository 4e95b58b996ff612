//! The request/response nodes `$cbs` (token put) and `$management` (runtime information).
//!
//! A client attaches a sender link to the node and a receiver link from it; each request carries a
//! `reply-to` naming the client's receiver (its target address) and gets one response correlated by
//! message id. Requests are rare, so they are decoded into fe2o3-amqp's owned message types; the
//! connection routes each encoded response to the reply link the request names.

use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp_types::primitives::{OrderedMap, SimpleValue, Timestamp, Value};
use hubroute_protocol::{cbs, management};

use super::auth::{ConnectionAuth, verify_token};
use super::iothub::IotHubFace;
use crate::store::Namespace;

/// Which node a link belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Node {
    Cbs,
    Management,
}

/// A response ready to send: the client's reply address and the encoded message.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) reply_to: Option<String>,
    pub(crate) message: Vec<u8>,
}

fn app_property<'a>(message: &'a Message<Body<Value>>, name: &str) -> Option<&'a SimpleValue> {
    message.application_properties.as_ref()?.0.get(name)
}

fn app_string(message: &Message<Body<Value>>, name: &str) -> Option<String> {
    match app_property(message, name)? {
        SimpleValue::String(value) => Some(value.clone()),
        SimpleValue::Symbol(value) => Some(value.to_string()),
        _ => None,
    }
}

fn response(
    request: &Message<Body<Value>>,
    status: i32,
    description: &str,
    body: Value,
) -> Message<Body<Value>> {
    let correlation_id = request
        .properties
        .as_ref()
        .and_then(|p| p.message_id.clone())
        .or_else(|| {
            request
                .properties
                .as_ref()
                .and_then(|p| p.correlation_id.clone())
        });
    let application_properties = ApplicationProperties::builder()
        .insert(management::STATUS_CODE, SimpleValue::Int(status))
        .insert(
            management::STATUS_DESCRIPTION,
            SimpleValue::String(description.to_owned()),
        )
        .build();
    Message::builder()
        .properties(Properties {
            correlation_id,
            message_id: Some(MessageId::String(uuid::Uuid::new_v4().to_string())),
            ..Properties::default()
        })
        .application_properties(application_properties)
        .body(Body::Value(AmqpValue(body)))
        .build()
}

/// The connection-scoped services the request nodes act on.
pub(crate) struct NodeContext<'a> {
    pub(crate) namespace: &'a Namespace,
    pub(crate) key: &'a hubroute_protocol::SasKey,
    pub(crate) iot_hub: Option<&'a IotHubFace>,
    pub(crate) auth: &'a mut ConnectionAuth,
}

impl NodeContext<'_> {
    fn put_token(&mut self, request: &Message<Body<Value>>) -> (i32, String) {
        let token_type = app_string(request, management::TYPE).unwrap_or_default();
        if token_type != cbs::SAS_TOKEN_TYPE {
            return (
                400,
                format!(
                    "token type `{token_type}` is not supported; use {}",
                    cbs::SAS_TOKEN_TYPE
                ),
            );
        }
        let token = match &request.body {
            Body::Value(AmqpValue(Value::String(token))) => token.clone(),
            _ => {
                return (
                    400,
                    "the token must be an AMQP string in an amqp-value body".to_owned(),
                );
            }
        };
        match verify_token(
            self.key,
            self.iot_hub,
            &token,
            chrono::Utc::now().timestamp(),
        ) {
            Ok(token) => {
                self.auth.add_token(&token);
                (202, "Accepted".to_owned())
            }
            Err(rejection) => rejection,
        }
    }

    fn management_authorized(&mut self, request: &Message<Body<Value>>, entity: &str) -> bool {
        let now = chrono::Utc::now().timestamp();
        if let Some(token) = app_string(request, management::SECURITY_TOKEN)
            && let Ok(token) = verify_token(self.key, self.iot_hub, &token, now)
        {
            self.auth.add_token(&token);
        }
        self.auth.authorizes(entity, now)
    }

    fn read(&mut self, request: &Message<Body<Value>>) -> (i32, String, Value) {
        let operation = app_string(request, management::OPERATION).unwrap_or_default();
        let entity_type = app_string(request, management::TYPE).unwrap_or_default();
        let name = app_string(request, management::NAME).unwrap_or_default();
        if operation != management::READ {
            return (
                400,
                format!("operation `{operation}` is not supported; use READ"),
                Value::Null,
            );
        }
        if !self.management_authorized(request, &name) {
            return (
                401,
                format!("no valid token for `{name}`; put a token on $cbs first"),
                Value::Null,
            );
        }
        let hub = match self.namespace.hub(&name) {
            Ok(hub) => hub,
            Err(error) => return (404, error.to_string(), Value::Null),
        };
        let mut map = OrderedMap::new();
        let mut put = |key: &str, value: Value| {
            map.insert(Value::String(key.to_owned()), value);
        };
        match entity_type.as_str() {
            management::EVENT_HUB_TYPE => {
                put("name", Value::String(hub.config.name.clone()));
                put(
                    "created_at",
                    Value::Timestamp(Timestamp::from_milliseconds(hub.created_at_ms)),
                );
                put("partition_count", Value::Int(hub.partitions.len() as i32));
                put(
                    "partition_ids",
                    Value::Array(
                        hub.partitions
                            .iter()
                            .map(|p| Value::String(p.id.clone()))
                            .collect::<Vec<_>>()
                            .into(),
                    ),
                );
            }
            management::PARTITION_TYPE => {
                let id = app_string(request, "partition").unwrap_or_default();
                let partition = match hub.partition(&id) {
                    Ok(partition) => partition,
                    Err(error) => return (404, error.to_string(), Value::Null),
                };
                let info = partition.info();
                put("name", Value::String(hub.config.name.clone()));
                put("partition", Value::String(id));
                put("type", Value::String(management::PARTITION_TYPE.to_owned()));
                put(
                    "begin_sequence_number",
                    Value::Long(info.begin_sequence_number),
                );
                put(
                    "last_enqueued_sequence_number",
                    Value::Long(info.last_sequence_number),
                );
                put(
                    "last_enqueued_offset",
                    Value::String(info.last_offset.to_string()),
                );
                put(
                    "last_enqueued_time_utc",
                    Value::Timestamp(Timestamp::from_milliseconds(info.last_enqueued_time_ms)),
                );
                put("is_partition_empty", Value::Bool(info.is_empty));
                put("last_enqueued_sequence_number_epoch", Value::Long(0));
            }
            other => {
                return (
                    400,
                    format!(
                        "type `{other}` is not supported; use {} or {}",
                        management::EVENT_HUB_TYPE,
                        management::PARTITION_TYPE
                    ),
                    Value::Null,
                );
            }
        }
        (200, "OK".to_owned(), Value::Map(map))
    }

    /// Answers one encoded request to `node`.
    pub(crate) fn answer(&mut self, node: Node, request: &[u8]) -> Result<Answer, String> {
        let Deserializable(request): Deserializable<Message<Body<Value>>> =
            serde_amqp::from_slice(request)
                .map_err(|error| format!("the request is not an AMQP message: {error}"))?;
        let (status, description, body) = match node {
            Node::Cbs => {
                let (status, description) = self.put_token(&request);
                (status, description, Value::Null)
            }
            Node::Management => self.read(&request),
        };
        let reply_to = request
            .properties
            .as_ref()
            .and_then(|p| p.reply_to.as_ref())
            .map(ToString::to_string);
        let message = serde_amqp::to_vec(&Serializable(response(
            &request,
            status,
            &description,
            body,
        )))
        .map_err(|error| format!("the response does not encode: {error}"))?;
        Ok(Answer { reply_to, message })
    }
}
