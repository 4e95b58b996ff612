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
//! Each message is encoded here, on the caller's task, with `hubroute-amqp`'s writers straight from
//! the batch's columns (no owned message per row): in batch mode those bytes are one data section
//! of a batch delivery (`0x80013700`) and the publisher only packs them; a link without the batch
//! format (a plain broker) gets them decoded into the owned message fe2o3-amqp's sender takes.

use arrow::array::{Array, StringArray};
use fe2o3_amqp_types::messaging::message::__private::Deserializable;
use fe2o3_amqp_types::messaging::{Data, Message};
use hubroute_amqp::codec::{
    put_binary, put_bool, put_descriptor, put_double, put_list, put_long, put_map, put_null,
    put_string, put_symbol, put_timestamp, put_ulong, put_uuid,
};
use hubroute_amqp::message::section;
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

/// A system property value: the `iothub-*` and `dt-*` values are strings but for the enqueued time.
#[derive(Debug, Clone, Copy)]
enum SystemValue<'a> {
    String(&'a str),
    Timestamp(i64),
}

impl SystemValue<'_> {
    fn put(self, out: &mut Vec<u8>) {
        match self {
            Self::String(s) => put_string(out, s),
            Self::Timestamp(ms) => put_timestamp(out, ms),
        }
    }
}

/// Appends an application property value with its wire type.
fn put_property(out: &mut Vec<u8>, value: &AppPropertyValue) {
    match value {
        AppPropertyValue::String(s) | AppPropertyValue::Other { rendered: s, .. } => {
            put_string(out, s);
        }
        AppPropertyValue::Bool(b) => put_bool(out, *b),
        AppPropertyValue::Long(v) => put_long(out, *v),
        AppPropertyValue::ULong(v) => put_ulong(out, *v),
        AppPropertyValue::Double(v) => put_double(out, *v),
        AppPropertyValue::Timestamp(ms) => put_timestamp(out, *ms),
        AppPropertyValue::Uuid(bytes) => put_uuid(out, bytes),
        AppPropertyValue::Binary(bytes) => put_binary(out, bytes),
        AppPropertyValue::Null => put_null(out),
    }
}

/// Encodes rows into messages with `hubroute-amqp`'s writers, straight from the columns: no owned
/// message per row. One per writer; its scratch buffer (a section's entries before their map or
/// list header) is reused across rows.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    scratch: Vec<u8>,
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

    /// The system properties of row `row` this mapping sends, in a fixed order.
    fn system_properties<'a>(
        &self,
        view: &MessageColumns<'a>,
        row: usize,
    ) -> impl Iterator<Item = (&'static str, SystemValue<'a>)> {
        let event_hubs = self.flavor == Flavor::EventHubs;
        let strings = [
            (annotations::CONNECTION_DEVICE_ID, view.connection_device_id),
            (annotations::CONNECTION_MODULE_ID, view.connection_module_id),
            (
                annotations::CONNECTION_AUTH_METHOD,
                view.connection_auth_method,
            ),
            (
                annotations::CONNECTION_AUTH_GENERATION_ID,
                view.connection_auth_generation_id,
            ),
            (annotations::MESSAGE_SOURCE, view.message_source),
            (annotations::DT_DATASCHEMA, view.dt_dataschema),
            (annotations::DT_SUBJECT, view.dt_subject),
        ];
        let enqueued_time = view.iothub_enqueued_time;
        strings
            .into_iter()
            .filter(move |(name, _)| event_hubs || *name != annotations::MESSAGE_SOURCE)
            .filter_map(move |(name, array)| {
                text(array, row).map(|v| (name, SystemValue::String(v)))
            })
            .chain((event_hubs && enqueued_time.is_valid(row)).then(|| {
                (
                    annotations::IOTHUB_ENQUEUED_TIME,
                    SystemValue::Timestamp(enqueued_time.value(row)),
                )
            }))
    }

    /// Appends the encoded message of row `row`, stamped with `key` as `x-opt-partition-key`: the
    /// bytes of one data section of a batch delivery, or of a delivery of its own. Sections:
    /// message annotations (when any), properties, application properties (when any), one data
    /// section with the body.
    pub(crate) fn encode(
        &self,
        encoder: &mut Encoder,
        view: &MessageColumns<'_>,
        row: usize,
        key: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        let scratch = &mut encoder.scratch;
        let in_annotations = self.placement == SystemPropertyPlacement::MessageAnnotations;

        scratch.clear();
        let mut count = 0;
        if in_annotations {
            for (name, value) in self.system_properties(view, row) {
                put_symbol(scratch, name);
                value.put(scratch);
                count += 2;
            }
        }
        if let Some(key) = key {
            put_symbol(scratch, annotations::PARTITION_KEY);
            put_string(scratch, key);
            count += 2;
        }
        if count > 0 {
            put_descriptor(out, section::MESSAGE_ANNOTATIONS);
            put_map(out, count, scratch);
        }

        // Properties: message-id, user-id, to, subject, reply-to, correlation-id, content-type,
        // content-encoding; trailing absent fields are left out, as the list's encoding allows.
        scratch.clear();
        let user_id =
            (self.send_user_id && view.user_id.is_valid(row)).then(|| view.user_id.value(row));
        let string = |array| text(array, row).map_or(Field::Absent, Field::String);
        let symbol = |array| text(array, row).map_or(Field::Absent, Field::Symbol);
        let fields = [
            string(view.message_id),
            user_id.map_or(Field::Absent, Field::Binary),
            Field::Absent,
            Field::Absent,
            Field::Absent,
            string(view.correlation_id),
            symbol(view.content_type),
            symbol(view.content_encoding),
        ];
        let present = fields
            .iter()
            .rposition(|field| !matches!(field, Field::Absent))
            .map_or(0, |last| last + 1);
        for field in &fields[..present] {
            match *field {
                Field::Absent => put_null(scratch),
                Field::String(s) => put_string(scratch, s),
                Field::Symbol(s) => put_symbol(scratch, s),
                Field::Binary(b) => put_binary(scratch, b),
            }
        }
        put_descriptor(out, section::PROPERTIES);
        put_list(out, present as u32, scratch);

        scratch.clear();
        let mut count = 0;
        let system: Vec<(&'static str, SystemValue<'_>)> = if in_annotations {
            Vec::new()
        } else {
            self.system_properties(view, row).collect()
        };
        let types = view.application_property_types;
        let typed = types.value_offsets()[row] != types.value_offsets()[row + 1];
        if typed {
            for (name, value) in view.typed_application_properties_of(row) {
                if system.iter().all(|(system_name, _)| *system_name != name) {
                    put_string(scratch, name);
                    put_property(scratch, &value);
                    count += 2;
                }
            }
        } else {
            for (name, value) in view.application_properties_of(row) {
                if system.iter().all(|(system_name, _)| *system_name != name) {
                    put_string(scratch, name);
                    match value {
                        Some(value) => put_string(scratch, value),
                        None => put_null(scratch),
                    }
                    count += 2;
                }
            }
        }
        for (name, value) in system {
            put_string(scratch, name);
            value.put(scratch);
            count += 2;
        }
        if count > 0 {
            put_descriptor(out, section::APPLICATION_PROPERTIES);
            put_map(out, count, scratch);
        }

        put_descriptor(out, section::DATA);
        put_binary(out, view.body.value(row));
    }
}

/// A field of the properties list.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Absent,
    String(&'a str),
    Symbol(&'a str),
    Binary(&'a [u8]),
}

/// The message an encoding holds, for a link that sends each message as a delivery of its own
/// (through fe2o3-amqp, whose sender takes owned messages).
pub(crate) fn decode(encoded: &[u8]) -> Message<Data> {
    let Deserializable(message) = serde_amqp::from_slice::<Deserializable<Message<Data>>>(encoded)
        .expect("an encoding of ours always decodes");
    message
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp_types::messaging::annotations::OwnedKey;
    use fe2o3_amqp_types::messaging::{Body, MessageId};
    use fe2o3_amqp_types::primitives::{SimpleValue, Symbol, Timestamp, Value};
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
        let mut bytes = Vec::new();
        mapping.encode(
            &mut Encoder::default(),
            &view,
            0,
            key.as_deref(),
            &mut bytes,
        );
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
    fn string_only_properties_and_single_messages_encode_the_same_message() {
        let mut m = Row::telemetry("plain");
        m.system.message_id = Some("m-2".into());
        m.application_properties = vec![
            ("a".into(), AppPropertyValue::from("1")),
            ("gone".into(), AppPropertyValue::Null),
            ("b".into(), AppPropertyValue::from("")),
        ];
        let batch = MessageBatchBuilder::batch_of(&[m]).unwrap();
        let view = MessageColumns::try_new(&batch).unwrap();
        let mapping = mapping(
            Flavor::ServiceBus,
            SystemPropertyPlacement::ApplicationProperties,
            PartitionKey::None,
        );
        let mut bytes = Vec::new();
        mapping.encode(&mut Encoder::default(), &view, 0, None, &mut bytes);
        let message = decode(&bytes);
        assert_eq!(message.message_annotations, None, "no key, no annotations");
        let properties = message.properties.as_ref().unwrap();
        assert_eq!(properties.message_id, Some(MessageId::String("m-2".into())));
        assert_eq!(properties.content_type, None);
        let application = &message.application_properties.as_ref().unwrap().0;
        assert_eq!(application.get("a"), Some(&SimpleValue::String("1".into())));
        assert_eq!(application.get("gone"), Some(&SimpleValue::Null));
        assert_eq!(
            application.get("b"),
            Some(&SimpleValue::String(String::new()))
        );
        assert_eq!(
            application.get("iothub-message-source"),
            None,
            "not sent to Service Bus"
        );
        assert_eq!(message.body.0.as_slice(), b"plain");
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
