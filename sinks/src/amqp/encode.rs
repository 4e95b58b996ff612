//! One routed row as the AMQP message IoT Hub would publish to a custom endpoint.
//!
//! | row | Event Hubs (`eventhubs`) | Service Bus (`servicebus`) |
//! |---|---|---|
//! | body | one data section, bytes as they are | same |
//! | `message_id`, `correlation_id` | `message-id`, `correlation-id` properties (strings) | same (`MessageId`, `CorrelationId`) |
//! | `user_id` | `user-id` property (binary) | same (`UserId`); not sent to plain brokers by default |
//! | `content_type`, `content_encoding` | `content-type`, `content-encoding` properties | same (`ContentType`; `ContentEncoding` stays the AMQP property) |
//! | device, module, auth method, auth generation id | `iothub-connection-device-id`, `iothub-connection-module-id`, `iothub-connection-auth-method`, `iothub-connection-auth-generation-id` | same names |
//! | `iothub_enqueued_time` | `iothub-enqueuedtime` (timestamp) | not sent (IoT Hub sends no enqueued time to Service Bus) |
//! | `message_source` | `iothub-message-source` | not sent |
//! | `dt_dataschema`, `dt_subject` | `dt-dataschema`, `dt-subject` | same |
//! | application properties, enrichments | application properties, wire types restored | same |
//! | partition key | `x-opt-partition-key` annotation | same (partitioned entities) |
//!
//! The `iothub-*` and `dt-*` names go where [`SystemPropertyPlacement`] says: message annotations
//! (default for Event Hubs, the built-in endpoint's layout) or application properties (default for
//! Service Bus, as users see behind IoT Hub). Values absent from the row are not sent. The source's
//! own `x-opt-*` positions are not forwarded: the target assigns its own.
//!
//! In batch mode each message is encoded here, on the caller's task, into the bytes of one data
//! section of a batch delivery (`0x80013700`); the publisher only packs bytes.

use arrow::array::{Array, StringArray, TimestampMillisecondArray};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::__private::Serializable;
use fe2o3_amqp_types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp_types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use hubroute_message::{AppPropertyValue, MessageColumns};
use hubroute_protocol::annotations;

use super::config::{Flavor, PartitionKey, SystemPropertyPlacement, Target};

/// How rows become messages: the parts of [`Target`] encoding reads.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub(crate) flavor: Flavor,
    pub(crate) placement: SystemPropertyPlacement,
    pub(crate) partition_key: PartitionKey,
    pub(crate) send_user_id: bool,
}

impl Mapping {
    pub(crate) fn of(target: &Target) -> Self {
        Self {
            flavor: target.flavor,
            placement: target.system_properties,
            partition_key: target.partition_key.clone(),
            send_user_id: target.send_user_id,
        }
    }
}

fn text(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}

fn millis(array: &TimestampMillisecondArray, row: usize) -> Option<i64> {
    array.is_valid(row).then(|| array.value(row))
}

/// The AMQP application property value of a row's property.
fn simple_value(value: AppPropertyValue) -> SimpleValue {
    match value {
        AppPropertyValue::String(s) => SimpleValue::String(s),
        AppPropertyValue::Bool(b) => SimpleValue::Bool(b),
        AppPropertyValue::Long(v) => SimpleValue::Long(v),
        AppPropertyValue::ULong(v) => SimpleValue::Ulong(v),
        AppPropertyValue::Double(v) => SimpleValue::Double(v.into()),
        AppPropertyValue::Timestamp(ms) => SimpleValue::Timestamp(Timestamp::from_milliseconds(ms)),
        AppPropertyValue::Uuid(bytes) => SimpleValue::Uuid(bytes.into()),
        AppPropertyValue::Binary(bytes) => SimpleValue::Binary(Binary::from(bytes)),
        AppPropertyValue::Null => SimpleValue::Null,
        AppPropertyValue::Other { rendered, .. } => SimpleValue::String(rendered),
    }
}

impl Mapping {
    /// The partition key of row `row`, if any.
    pub(crate) fn partition_key(&self, view: &MessageColumns<'_>, row: usize) -> Option<String> {
        match &self.partition_key {
            PartitionKey::None => None,
            PartitionKey::DeviceId => text(view.connection_device_id, row).map(str::to_owned),
            PartitionKey::AppProperty(name) => view
                .application_properties_of(row)
                .find(|(property, _)| property == name)
                .and_then(|(_, value)| value.map(str::to_owned)),
        }
    }

    /// The message of row `row`, stamped with `key` as `x-opt-partition-key`.
    pub(crate) fn message(
        &self,
        view: &MessageColumns<'_>,
        row: usize,
        key: Option<&str>,
    ) -> Message<Data> {
        let properties = Properties {
            message_id: text(view.message_id, row).map(|id| MessageId::String(id.to_owned())),
            user_id: (self.send_user_id && view.user_id.is_valid(row))
                .then(|| Binary::from(view.user_id.value(row).to_vec())),
            correlation_id: text(view.correlation_id, row)
                .map(|id| MessageId::String(id.to_owned())),
            content_type: text(view.content_type, row).map(Symbol::from),
            content_encoding: text(view.content_encoding, row).map(Symbol::from),
            ..Properties::default()
        };

        let mut system: Vec<(&'static str, Value)> = Vec::with_capacity(8);
        let mut string = |name: &'static str, array: &StringArray| {
            if let Some(value) = text(array, row) {
                system.push((name, Value::String(value.to_owned())));
            }
        };
        string(annotations::CONNECTION_DEVICE_ID, view.connection_device_id);
        string(annotations::CONNECTION_MODULE_ID, view.connection_module_id);
        string(
            annotations::CONNECTION_AUTH_METHOD,
            view.connection_auth_method,
        );
        string(
            annotations::CONNECTION_AUTH_GENERATION_ID,
            view.connection_auth_generation_id,
        );
        if self.flavor == Flavor::EventHubs {
            string(annotations::MESSAGE_SOURCE, view.message_source);
        }
        string(annotations::DT_DATASCHEMA, view.dt_dataschema);
        string(annotations::DT_SUBJECT, view.dt_subject);
        if self.flavor == Flavor::EventHubs
            && let Some(ms) = millis(view.iothub_enqueued_time, row)
        {
            system.push((
                annotations::IOTHUB_ENQUEUED_TIME,
                Value::Timestamp(Timestamp::from_milliseconds(ms)),
            ));
        }

        let mut annotations_map: OrderedMap<OwnedKey, Value> = OrderedMap::new();
        let mut application: OrderedMap<String, SimpleValue> = view
            .typed_application_properties_of(row)
            .map(|(name, value)| (name.to_owned(), simple_value(value)))
            .collect();
        for (name, value) in system {
            match self.placement {
                SystemPropertyPlacement::MessageAnnotations => {
                    annotations_map.insert(OwnedKey::Symbol(Symbol::from(name)), value);
                }
                SystemPropertyPlacement::ApplicationProperties => {
                    if let Ok(value) = SimpleValue::try_from(value) {
                        application.insert(name.to_owned(), value);
                    }
                }
            }
        }
        if let Some(key) = key {
            annotations_map.insert(
                OwnedKey::Symbol(Symbol::from(annotations::PARTITION_KEY)),
                Value::String(key.to_owned()),
            );
        }
        Message {
            header: None,
            delivery_annotations: None,
            message_annotations: (!annotations_map.is_empty())
                .then_some(MessageAnnotations(annotations_map)),
            properties: Some(properties),
            application_properties: (!application.is_empty())
                .then_some(ApplicationProperties(application)),
            body: Data(Binary::from(view.body.value(row).to_vec())),
            footer: None,
        }
    }
}

/// The encoded bytes of `message`, as one data section of a batch delivery holds them.
pub(crate) fn encode(message: &Message<Data>) -> Vec<u8> {
    serde_amqp::to_vec(&Serializable(message)).expect("an AMQP message always encodes")
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp_types::messaging::Body;
    use fe2o3_amqp_types::messaging::message::__private::Deserializable;
    use hubroute_message::{Message as Row, MessageBatchBuilder};

    use super::*;

    fn row() -> Row {
        let mut m = Row::telemetry(r#"{"t":1}"#);
        m.system.message_id = Some("m-1".into());
        m.system.correlation_id = Some("c-1".into());
        m.system.user_id = Some(b"hub".to_vec());
        m.system.content_type = Some("application/json".into());
        m.system.content_encoding = Some("utf-8".into());
        m.system.connection_device_id = Some("pump-7".into());
        m.system.connection_device_generation_id = Some("6370".into());
        m.system.iothub_enqueued_time = chrono::DateTime::from_timestamp_millis(1_700_000_000_123);
        m.system.dt_dataschema = Some("dtmi:x;1".into());
        m.application_properties = vec![
            ("level".into(), AppPropertyValue::from("hi")),
            ("count".into(), AppPropertyValue::Long(7)),
            ("zone".into(), AppPropertyValue::from("eu")),
        ];
        m
    }

    fn mapping(flavor: Flavor, placement: SystemPropertyPlacement, key: PartitionKey) -> Mapping {
        Mapping {
            flavor,
            placement,
            partition_key: key,
            send_user_id: true,
        }
    }

    /// Encodes and decodes again, as a consumer would see it.
    fn published(mapping: &Mapping) -> (Option<String>, Message<Body<Value>>) {
        let batch = MessageBatchBuilder::batch_of(&[row()]).unwrap();
        let view = MessageColumns::try_new(&batch).unwrap();
        let key = mapping.partition_key(&view, 0);
        let bytes = encode(&mapping.message(&view, 0, key.as_deref()));
        let Deserializable(message) =
            serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&bytes).unwrap();
        (key, message)
    }

    fn annotation(message: &Message<Body<Value>>, name: &str) -> Option<Value> {
        message
            .message_annotations
            .as_ref()?
            .0
            .get(&OwnedKey::Symbol(Symbol::from(name)))
            .cloned()
    }

    fn property(message: &Message<Body<Value>>, name: &str) -> Option<SimpleValue> {
        message
            .application_properties
            .as_ref()?
            .0
            .get(name)
            .cloned()
    }

    #[test]
    fn event_hubs_messages_carry_the_built_in_endpoint_layout() {
        let m = mapping(
            Flavor::EventHubs,
            SystemPropertyPlacement::MessageAnnotations,
            PartitionKey::DeviceId,
        );
        let (key, message) = published(&m);
        assert_eq!(key.as_deref(), Some("pump-7"));
        let properties = message.properties.as_ref().unwrap();
        assert_eq!(properties.message_id, Some(MessageId::String("m-1".into())));
        assert_eq!(
            properties.correlation_id,
            Some(MessageId::String("c-1".into()))
        );
        assert_eq!(
            properties.user_id.as_deref().map(Vec::as_slice),
            Some(&b"hub"[..])
        );
        assert_eq!(
            properties.content_type,
            Some(Symbol::from("application/json"))
        );
        assert_eq!(properties.content_encoding, Some(Symbol::from("utf-8")));
        let cases = [
            (
                "iothub-connection-device-id",
                Value::String("pump-7".into()),
            ),
            (
                "iothub-connection-auth-generation-id",
                Value::String("6370".into()),
            ),
            (
                "iothub-enqueuedtime",
                Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_123)),
            ),
            ("iothub-message-source", Value::String("Telemetry".into())),
            ("dt-dataschema", Value::String("dtmi:x;1".into())),
            ("x-opt-partition-key", Value::String("pump-7".into())),
        ];
        for (name, expected) in cases {
            assert_eq!(annotation(&message, name), Some(expected), "{name}");
        }
        assert_eq!(annotation(&message, "iothub-connection-module-id"), None);
        assert_eq!(
            property(&message, "count"),
            Some(SimpleValue::Long(7)),
            "wire types are restored"
        );
        assert_eq!(property(&message, "iothub-connection-device-id"), None);
        let Body::Data(sections) = message.body else {
            panic!("a data body")
        };
        assert_eq!(sections.into_inner()[0].0.as_slice(), br#"{"t":1}"#);
    }

    #[test]
    fn service_bus_messages_follow_its_mapping() {
        let m = mapping(
            Flavor::ServiceBus,
            SystemPropertyPlacement::ApplicationProperties,
            PartitionKey::AppProperty("zone".into()),
        );
        let (key, message) = published(&m);
        assert_eq!(key.as_deref(), Some("eu"));
        assert_eq!(
            property(&message, "iothub-connection-device-id"),
            Some(SimpleValue::String("pump-7".into()))
        );
        assert_eq!(
            property(&message, "iothub-enqueuedtime"),
            None,
            "no enqueued time"
        );
        assert_eq!(property(&message, "iothub-message-source"), None);
        assert_eq!(
            annotation(&message, "iothub-connection-device-id"),
            None,
            "system properties are application properties here"
        );
        assert_eq!(
            annotation(&message, "x-opt-partition-key"),
            Some(Value::String("eu".into()))
        );
        assert_eq!(
            message.properties.as_ref().unwrap().message_id,
            Some(MessageId::String("m-1".into()))
        );
    }

    #[test]
    fn partition_keys_come_from_the_configured_value() {
        let batch = MessageBatchBuilder::batch_of(&[row(), Row::telemetry("x")]).unwrap();
        let view = MessageColumns::try_new(&batch).unwrap();
        let cases = [
            (PartitionKey::None, [None, None]),
            (PartitionKey::DeviceId, [Some("pump-7"), None]),
            (PartitionKey::AppProperty("zone".into()), [Some("eu"), None]),
            (PartitionKey::AppProperty("absent".into()), [None, None]),
        ];
        for (key, expected) in cases {
            let m = mapping(
                Flavor::EventHubs,
                SystemPropertyPlacement::MessageAnnotations,
                key.clone(),
            );
            let actual: Vec<Option<String>> = (0..2).map(|r| m.partition_key(&view, r)).collect();
            let expected: Vec<Option<String>> =
                expected.iter().map(|k| k.map(str::to_owned)).collect();
            assert_eq!(actual, expected, "{key:?}");
        }
    }
}
