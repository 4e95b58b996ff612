//! The request/response nodes `$cbs` (token put) and `$management` (runtime information).
//!
//! A client attaches a sender link to the node and a receiver link from it; each request carries a
//! `reply-to` naming the client's receiver (its target address) and gets one response correlated by
//! message id. Replies are routed through the connection's table of reply links.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp_types::primitives::{OrderedMap, SimpleValue, Timestamp, Value};
use hubroute_protocol::{cbs, management};
use tokio::sync::mpsc;

use super::auth::{ConnectionAuth, verify_token};
use crate::store::Namespace;

/// Which node a link belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Node {
    Cbs,
    Management,
}

/// Where responses for one reply link are queued.
type Outbox = mpsc::Sender<Message<Body<Value>>>;

/// One attached reply link: its id within the connection, the client's target address and its outbox.
#[derive(Debug)]
struct ReplyLink {
    id: u64,
    address: String,
    outbox: Outbox,
}

/// How long a request waits for the reply link its `reply-to` names: a client attaches it
/// concurrently with its request link, so a request can arrive first.
const REPLY_LINK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reply links of one connection, by node.
#[derive(Debug, Default)]
pub(crate) struct ReplyLinks {
    next_id: std::sync::atomic::AtomicU64,
    links: Mutex<HashMap<Node, Vec<ReplyLink>>>,
    /// Signalled whenever a reply link is registered.
    registered: tokio::sync::Notify,
}

impl ReplyLinks {
    /// The outbox of the reply link whose address is `reply_to` (`exact`), or else of the newest
    /// reply link of `node`.
    fn find(&self, node: Node, reply_to: Option<&str>, exact: bool) -> Option<Outbox> {
        let links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let candidates = links.get(&node)?;
        let matching = candidates
            .iter()
            .find(|link| Some(link.address.as_str()) == reply_to);
        if exact {
            matching.map(|link| link.outbox.clone())
        } else {
            matching
                .or_else(|| candidates.last())
                .map(|link| link.outbox.clone())
        }
    }

    /// Where to send the response to a request with `reply_to`: the reply link of that address,
    /// waiting up to [`REPLY_LINK_WAIT`] for it to attach, then the newest reply link of the node
    /// (clients that name their reply link differently).
    async fn outbox(&self, node: Node, reply_to: Option<&str>) -> Option<Outbox> {
        let deadline = tokio::time::Instant::now() + REPLY_LINK_WAIT;
        while reply_to.is_some() {
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            if let Some(outbox) = self.find(node, reply_to, true) {
                return Some(outbox);
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                break;
            }
        }
        self.find(node, reply_to, false)
    }

    /// Registers a reply link of `node` at `address`; responses for it arrive on the receiver.
    fn register(&self, node: Node, address: String) -> (u64, mpsc::Receiver<Message<Body<Value>>>) {
        let (outbox, responses) = mpsc::channel(64);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(node)
            .or_default()
            .push(ReplyLink {
                id,
                address,
                outbox,
            });
        self.registered.notify_waiters();
        (id, responses)
    }

    /// Serves a reply link: forwards responses for `node` to the client until it detaches.
    pub(crate) async fn serve(self: Arc<Self>, node: Node, address: String, mut sender: Sender) {
        let (id, mut responses) = self.register(node, address);
        // `send_batchable` marks transfers batchable, which makes fe2o3-amqp encode every Transfer field;
        // the Python SDK indexes the payload after the eleventh field and fails on a shortened frame.
        // Watching for the client's detach ends the link at once; otherwise a detached reply link
        // would linger until the next response and block a re-attach under the same name.
        loop {
            let response = tokio::select! {
                response = responses.recv() => response,
                _ = sender.on_detach() => None,
            };
            let Some(response) = response else { break };
            let delivered = match sender.send_batchable(response).await {
                Ok(outcome) => outcome.await.is_ok(),
                Err(_) => false,
            };
            if !delivered {
                break;
            }
        }
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(node)
            .or_default()
            .retain(|link| link.id != id);
        let _ = sender.close().await;
    }
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
pub(crate) struct NodeContext {
    pub(crate) namespace: Arc<Namespace>,
    pub(crate) key: hubroute_protocol::SasKey,
    pub(crate) auth: Arc<Mutex<ConnectionAuth>>,
    pub(crate) replies: Arc<ReplyLinks>,
}

impl NodeContext {
    fn put_token(&self, request: &Message<Body<Value>>) -> (i32, String) {
        let token_type = app_string(request, "type").unwrap_or_default();
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
        match verify_token(&self.key, &token, chrono::Utc::now().timestamp()) {
            Ok(token) => {
                self.auth
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .add_token(&token);
                (202, "Accepted".to_owned())
            }
            Err(rejection) => rejection,
        }
    }

    fn management_authorized(&self, request: &Message<Body<Value>>, entity: &str) -> bool {
        let now = chrono::Utc::now().timestamp();
        if let Some(token) = app_string(request, management::SECURITY_TOKEN)
            && let Ok(token) = verify_token(&self.key, &token, now)
        {
            self.auth
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add_token(&token);
        }
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .authorizes(entity, now)
    }

    fn read(&self, request: &Message<Body<Value>>) -> (i32, String, Value) {
        let operation = app_string(request, "operation").unwrap_or_default();
        let entity_type = app_string(request, "type").unwrap_or_default();
        let name = app_string(request, "name").unwrap_or_default();
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

    /// Serves the request link of `node` until the client detaches.
    pub(crate) async fn serve_requests(self, node: Node, mut receiver: Receiver) {
        loop {
            let Ok(delivery) = receiver.recv::<Body<Value>>().await else {
                break;
            };
            let request = delivery.message();
            let (status, description, body) = match node {
                Node::Cbs => {
                    let (status, description) = self.put_token(request);
                    (status, description, Value::Null)
                }
                Node::Management => self.read(request),
            };
            let reply_to = request
                .properties
                .as_ref()
                .and_then(|p| p.reply_to.as_ref())
                .map(ToString::to_string);
            let answer = response(request, status, &description, body);
            if receiver.accept(&delivery).await.is_err() {
                break;
            }
            match self.replies.outbox(node, reply_to.as_deref()).await {
                Some(outbox) => {
                    let _ = outbox.send(answer).await;
                }
                None => tracing::debug!(?node, "request without a reply link; response dropped"),
            }
        }
        let _ = receiver.close().await;
    }
}

#[cfg(test)]
mod reply_link_tests {
    use super::*;

    #[tokio::test]
    async fn a_request_waits_for_the_reply_link_it_names() {
        let links = Arc::new(ReplyLinks::default());
        let waiting = tokio::spawn({
            let links = Arc::clone(&links);
            async move { links.outbox(Node::Management, Some("client-b")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (_, mut other) = links.register(Node::Management, "client-a".to_owned());
        let (_, mut named) = links.register(Node::Management, "client-b".to_owned());
        let outbox = waiting.await.unwrap().expect("the named link is found");
        outbox
            .send(response(
                &Message::builder()
                    .body(Body::Value(AmqpValue(Value::Null)))
                    .build(),
                200,
                "OK",
                Value::Null,
            ))
            .await
            .unwrap();
        assert!(
            named.try_recv().is_ok(),
            "the response reaches the named link"
        );
        assert!(other.try_recv().is_err(), "and not the newest other link");
    }
}
