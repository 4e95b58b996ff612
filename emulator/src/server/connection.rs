//! One client connection: SASL, sessions, and routing each attached link to the node or entity its
//! address names. Links that cannot be served are attached and then closed with the Event Hubs error
//! condition, which is how the service refuses them too.

use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::{
    LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SessionAcceptor,
    SupportedReceiverSettleModes, SupportedSenderSettleModes,
};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp_types::definitions::Fields;
use fe2o3_amqp_types::definitions::{ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp_types::messaging::{FilterSet, TargetArchetype};
use fe2o3_amqp_types::performatives::Attach;
use fe2o3_amqp_types::primitives::{Symbol, Value};
use hubroute_protocol::address::EntityAddress;
use hubroute_protocol::{EventPosition, conditions, link};

use super::Shared;
use super::auth::ConnectionAuth;
use super::consumer::{ConsumerLink, link_error};
use super::nodes::{Node, NodeContext, ReplyLinks};
use super::producer::ProducerLink;

/// What a connection shares between its sessions.
pub(crate) struct ConnectionState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) auth: Arc<Mutex<ConnectionAuth>>,
    pub(crate) replies: Arc<ReplyLinks>,
}

impl ConnectionState {
    fn nodes(&self) -> NodeContext {
        NodeContext {
            namespace: Arc::clone(&self.shared.namespace),
            key: self.shared.key.clone(),
            auth: Arc::clone(&self.auth),
            replies: Arc::clone(&self.replies),
        }
    }

    fn authorized(&self, address: &EntityAddress) -> bool {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .authorizes(&address.to_string(), chrono::Utc::now().timestamp())
    }
}

/// Accepts sessions until the connection ends.
pub(crate) async fn serve_sessions(
    mut connection: fe2o3_amqp::acceptor::ListenerConnectionHandle,
    state: Arc<ConnectionState>,
) {
    let acceptor = SessionAcceptor::builder()
        .handle_max(1024u32)
        .add_offered_capabilities("com.microsoft:hubroute-emulator")
        .add_desired_capabilities("com.microsoft:hubroute-emulator")
        .properties(super::product_properties())
        .build();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = acceptor.accept(&mut connection) => match accepted {
                Ok(session) => {
                    sessions.spawn(serve_links(session, Arc::clone(&state)));
                }
                Err(error) => {
                    tracing::debug!(%error, "connection ended");
                    break;
                }
            },
            _ = state.shared.stopping.cancelled() => break,
        }
    }
    sessions.abort_all();
    let _ = connection.close().await;
}

fn source_address(attach: &Attach) -> Option<String> {
    attach
        .source
        .as_ref()
        .and_then(|source| source.address.as_ref())
        .map(ToString::to_string)
}

fn target_address(attach: &Attach) -> Option<String> {
    match attach.target.as_deref() {
        Some(TargetArchetype::Target(target)) => target.address.as_ref().map(ToString::to_string),
        _ => None,
    }
}

fn epoch_of(properties: Option<&Fields>) -> Option<i64> {
    match properties?.get(&Symbol::from(link::EPOCH))? {
        Value::Long(epoch) => Some(*epoch),
        Value::Int(epoch) => Some(i64::from(*epoch)),
        _ => None,
    }
}

/// The start position from the selector filter; no filter means the start of the stream.
fn position_of(filter: Option<&FilterSet>) -> Result<EventPosition, String> {
    let Some(value) =
        filter.and_then(|filter| filter.get(&Symbol::from(link::SELECTOR_FILTER_KEY)))
    else {
        return Ok(EventPosition::earliest());
    };
    let expression = match value {
        Value::Described(described) => match &described.value {
            Value::String(expression) => expression.clone(),
            other => {
                return Err(format!(
                    "the selector filter value must be a string, not {other:?}"
                ));
            }
        },
        Value::String(expression) => expression.clone(),
        other => {
            return Err(format!(
                "the selector filter must be a described string, not {other:?}"
            ));
        }
    };
    EventPosition::parse_filter_expression(&expression).map_err(|error| error.to_string())
}

async fn refuse_sender(sender: Sender, condition: &str, description: String) {
    tracing::debug!(condition, %description, "refusing consumer link");
    let _ = sender
        .close_with_error(link_error(condition, description))
        .await;
}

async fn refuse_receiver(receiver: Receiver, condition: &str, description: String) {
    tracing::debug!(condition, %description, "refusing producer link");
    let _ = receiver
        .close_with_error(link_error(condition, description))
        .await;
}

/// Accepts links on one session and spawns a task per link.
async fn serve_links(mut session: ListenerSessionHandle, state: Arc<ConnectionState>) {
    // Event Hubs settles deliveries it receives at once (receiver-settle-mode first) even when a
    // client asks for `second`; the Python SDK's producer asks for `second` and waits forever on the
    // unsettled dispositions that mode produces.
    // Event Hubs sends events pre-settled (the .NET SDK asks for settle-on-send; the Python SDK does
    // not settle at all), so consumer links always use sender-settle-mode `settled`.
    let acceptor = LinkAcceptor::builder()
        .supported_sender_settle_modes(SupportedSenderSettleModes::Settled)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        // Advertised as Event Hubs does (1 MiB on Standard): producers size their batches by it.
        .max_message_size(state.shared.max_message_bytes as u64)
        .add_offered_capabilities("com.microsoft:hubroute-emulator")
        .add_desired_capabilities("com.microsoft:hubroute-emulator")
        .properties(super::product_properties())
        .build();
    let mut links = tokio::task::JoinSet::new();
    while let Some(attach) = session.next_incoming_attach().await {
        let source = source_address(&attach);
        let target = target_address(&attach);
        let epoch = epoch_of(attach.properties.as_ref());
        let filter = attach
            .source
            .as_ref()
            .and_then(|source| source.filter.clone());
        let endpoint = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::debug!(%error, "link attach failed");
                continue;
            }
        };
        let state = Arc::clone(&state);
        match endpoint {
            LinkEndpoint::Receiver(receiver) => {
                links.spawn(serve_incoming(receiver, target.unwrap_or_default(), state));
            }
            LinkEndpoint::Sender(sender) => {
                links.spawn(serve_outgoing(
                    sender,
                    source.unwrap_or_default(),
                    target,
                    epoch,
                    filter,
                    state,
                ));
            }
        }
    }
    links.abort_all();
    let _ = session.end().await;
}

/// The client sends on this link: requests to a node, or events to an entity.
async fn serve_incoming(receiver: Receiver, address: String, state: Arc<ConnectionState>) {
    let Some(entity) = EntityAddress::parse(&address) else {
        return refuse_receiver(
            receiver,
            conditions::NOT_FOUND,
            format!("unknown address `{address}`"),
        )
        .await;
    };
    match entity {
        EntityAddress::Cbs => state.nodes().serve_requests(Node::Cbs, receiver).await,
        EntityAddress::Management => {
            state
                .nodes()
                .serve_requests(Node::Management, receiver)
                .await;
        }
        EntityAddress::ConsumerPartition { .. } => {
            refuse_receiver(
                receiver,
                conditions::NOT_FOUND,
                format!("`{address}` cannot be sent to"),
            )
            .await;
        }
        EntityAddress::EventHub { ref hub } | EntityAddress::Partition { ref hub, .. } => {
            if !state.authorized(&entity) {
                return refuse_receiver(
                    receiver,
                    conditions::UNAUTHORIZED_ACCESS,
                    format!("unauthorized access to `{address}`: put a SAS token on $cbs or use SASL PLAIN"),
                )
                .await;
            }
            let hub = match state.shared.namespace.hub(hub) {
                Ok(hub) => Arc::clone(hub),
                Err(error) => {
                    return refuse_receiver(receiver, conditions::NOT_FOUND, error.to_string())
                        .await;
                }
            };
            let partition = match &entity {
                EntityAddress::Partition { partition, .. } => match hub.partition(partition) {
                    Ok(partition) => Some(Arc::clone(partition)),
                    Err(error) => {
                        return refuse_receiver(receiver, conditions::NOT_FOUND, error.to_string())
                            .await;
                    }
                },
                _ => None,
            };
            ProducerLink {
                hub,
                partition,
                max_message_bytes: state.shared.max_message_bytes,
                auth: Arc::clone(&state.auth),
                entity: entity.to_string(),
            }
            .run(receiver)
            .await;
        }
    }
}

/// The client receives on this link: replies from a node, or events from a partition.
async fn serve_outgoing(
    sender: Sender,
    address: String,
    reply_address: Option<String>,
    epoch: Option<i64>,
    filter: Option<FilterSet>,
    state: Arc<ConnectionState>,
) {
    let Some(entity) = EntityAddress::parse(&address) else {
        return refuse_sender(
            sender,
            conditions::NOT_FOUND,
            format!("unknown address `{address}`"),
        )
        .await;
    };
    let node = match entity {
        EntityAddress::Cbs => Some(Node::Cbs),
        EntityAddress::Management => Some(Node::Management),
        _ => None,
    };
    if let Some(node) = node {
        let replies = Arc::clone(&state.replies);
        return replies
            .serve(node, reply_address.unwrap_or_default(), sender)
            .await;
    }
    let EntityAddress::ConsumerPartition {
        hub,
        consumer_group,
        partition,
    } = &entity
    else {
        return refuse_sender(
            sender,
            conditions::NOT_FOUND,
            format!("`{address}` cannot be received from"),
        )
        .await;
    };
    if !state.authorized(&entity) {
        return refuse_sender(
            sender,
            conditions::UNAUTHORIZED_ACCESS,
            format!(
                "unauthorized access to `{address}`: put a SAS token on $cbs or use SASL PLAIN"
            ),
        )
        .await;
    }
    let hub = match state.shared.namespace.hub(hub) {
        Ok(hub) => Arc::clone(hub),
        Err(error) => return refuse_sender(sender, conditions::NOT_FOUND, error.to_string()).await,
    };
    if !hub.config.has_consumer_group(consumer_group) {
        return refuse_sender(
            sender,
            conditions::NOT_FOUND,
            format!(
                "consumer group `{consumer_group}` does not exist in event hub `{}`",
                hub.config.name
            ),
        )
        .await;
    }
    let partition = match hub.partition(partition) {
        Ok(partition) => Arc::clone(partition),
        Err(error) => return refuse_sender(sender, conditions::NOT_FOUND, error.to_string()).await,
    };
    let position = match position_of(filter.as_ref()) {
        Ok(position) => position,
        Err(problem) => return refuse_sender(sender, conditions::ARGUMENT_ERROR, problem).await,
    };
    ConsumerLink {
        hub,
        partition,
        consumer_group: consumer_group.clone(),
        position,
        epoch,
        auth: Arc::clone(&state.auth),
        entity: entity.to_string(),
    }
    .run(sender)
    .await;
}
