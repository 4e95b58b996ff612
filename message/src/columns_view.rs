//! A typed view over the columns of a message batch, checked once, so that readers (queries, sinks)
//! index typed arrays instead of downcasting per access.

use arrow::array::{
    Array, AsArray, BinaryArray, DictionaryArray, Int64Array, MapArray, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{Int32Type, TimestampMillisecondType};
use chrono::DateTime;

use crate::builder::app_property_from_parts;
use crate::{AppPropertyValue, Error, Message, Result, SystemProperties, columns};

/// Typed references to every column of a message batch.
#[derive(Debug, Clone, Copy)]
#[expect(
    missing_docs,
    reason = "each field is the column of the same name in `columns`"
)]
pub struct MessageColumns<'a> {
    pub event_hub: &'a StringArray,
    pub partition: &'a StringArray,
    pub sequence_number: &'a Int64Array,
    pub offset: &'a StringArray,
    pub enqueued_time: &'a TimestampMillisecondArray,
    pub partition_key: &'a StringArray,
    pub message_id: &'a StringArray,
    pub correlation_id: &'a StringArray,
    pub user_id: &'a BinaryArray,
    pub content_type: &'a StringArray,
    pub content_encoding: &'a StringArray,
    pub iothub_enqueued_time: &'a TimestampMillisecondArray,
    pub connection_device_id: &'a StringArray,
    pub connection_module_id: &'a StringArray,
    pub connection_auth_method: &'a StringArray,
    pub connection_auth_generation_id: &'a StringArray,
    pub message_source: &'a StringArray,
    pub dt_dataschema: &'a StringArray,
    pub dt_subject: &'a StringArray,
    pub application_properties: &'a MapArray,
    pub application_property_types: &'a MapArray,
    pub body: &'a BinaryArray,
    pub twin: TwinColumn<'a>,
}

/// The dictionary-encoded `twin` column: per row a key into the batch's distinct twin texts.
#[derive(Debug, Clone, Copy)]
pub struct TwinColumn<'a> {
    keys: &'a DictionaryArray<Int32Type>,
    values: &'a StringArray,
}

impl<'a> TwinColumn<'a> {
    /// Whether row `row` has a twin.
    pub fn is_valid(&self, row: usize) -> bool {
        self.keys.is_valid(row)
    }

    /// The dictionary index of row `row`'s twin (`None` without one): rows with the same index
    /// share one twin text.
    pub fn key(&self, row: usize) -> Option<usize> {
        self.keys
            .is_valid(row)
            .then(|| self.keys.keys().value(row))
            .and_then(|key| usize::try_from(key).ok())
    }

    /// The twin JSON of row `row`; call [`is_valid`](Self::is_valid) first.
    pub fn value(&self, row: usize) -> &'a str {
        self.key(row).map_or("", |key| self.values.value(key))
    }

    /// The twin JSON of row `row`, if it has one.
    pub fn get(&self, row: usize) -> Option<&'a str> {
        self.key(row).map(|key| self.values.value(key))
    }

    /// The distinct twin texts of the batch, indexed by [`key`](Self::key).
    pub fn values(&self) -> &'a StringArray {
        self.values
    }
}

fn twin_column<'a>(batch: &'a RecordBatch) -> Result<TwinColumn<'a>> {
    let array = column(batch, columns::TWIN)?;
    let wrong = || Error::NotAMessageBatch {
        column: columns::TWIN,
        problem: format!("has type {}", array.data_type()),
    };
    let keys = array
        .as_any()
        .downcast_ref::<DictionaryArray<Int32Type>>()
        .ok_or_else(wrong)?;
    let values = keys.values().as_string_opt::<i32>().ok_or_else(wrong)?;
    Ok(TwinColumn { keys, values })
}

fn column<'a>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(AsRef::as_ref)
        .ok_or(Error::NotAMessageBatch {
            column: name,
            problem: "is missing".to_owned(),
        })
}

fn typed<'a, T: 'static>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a T> {
    let array = column(batch, name)?;
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| Error::NotAMessageBatch {
            column: name,
            problem: format!("has type {}", array.data_type()),
        })
}

fn timestamps<'a>(
    batch: &'a RecordBatch,
    name: &'static str,
) -> Result<&'a TimestampMillisecondArray> {
    let array = column(batch, name)?;
    array
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| Error::NotAMessageBatch {
            column: name,
            problem: format!("has type {}", array.data_type()),
        })
}

impl<'a> MessageColumns<'a> {
    /// Checks that `batch` has the message schema's columns and types.
    pub fn try_new(batch: &'a RecordBatch) -> Result<Self> {
        use columns::*;
        Ok(Self {
            event_hub: typed(batch, EVENT_HUB)?,
            partition: typed(batch, PARTITION)?,
            sequence_number: typed(batch, SEQUENCE_NUMBER)?,
            offset: typed(batch, OFFSET)?,
            enqueued_time: timestamps(batch, ENQUEUED_TIME)?,
            partition_key: typed(batch, PARTITION_KEY)?,
            message_id: typed(batch, MESSAGE_ID)?,
            correlation_id: typed(batch, CORRELATION_ID)?,
            user_id: typed(batch, USER_ID)?,
            content_type: typed(batch, CONTENT_TYPE)?,
            content_encoding: typed(batch, CONTENT_ENCODING)?,
            iothub_enqueued_time: timestamps(batch, IOTHUB_ENQUEUED_TIME)?,
            connection_device_id: typed(batch, CONNECTION_DEVICE_ID)?,
            connection_module_id: typed(batch, CONNECTION_MODULE_ID)?,
            connection_auth_method: typed(batch, CONNECTION_AUTH_METHOD)?,
            connection_auth_generation_id: typed(batch, CONNECTION_AUTH_GENERATION_ID)?,
            message_source: typed(batch, MESSAGE_SOURCE)?,
            dt_dataschema: typed(batch, DT_DATASCHEMA)?,
            dt_subject: typed(batch, DT_SUBJECT)?,
            application_properties: typed(batch, APPLICATION_PROPERTIES)?,
            application_property_types: typed(batch, APPLICATION_PROPERTY_TYPES)?,
            body: typed(batch, BODY)?,
            twin: twin_column(batch)?,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.sequence_number.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Application properties of row `row` as `(name, canonical value)` pairs, in wire order.
    pub fn application_properties_of(
        &self,
        row: usize,
    ) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        string_map_row(self.application_properties, row)
    }

    /// Application properties of row `row` with their wire types restored (see
    /// [`AppPropertyValue`]), in wire order: what a sink that re-publishes over AMQP sends.
    pub fn typed_application_properties_of(
        &self,
        row: usize,
    ) -> impl Iterator<Item = (&'a str, AppPropertyValue)> {
        let types: Vec<(&str, Option<&str>)> =
            string_map_row(self.application_property_types, row).collect();
        self.application_properties_of(row)
            .map(move |(name, value)| {
                let type_name = types
                    .iter()
                    .find(|(typed_name, _)| *typed_name == name)
                    .and_then(|(_, type_name)| *type_name);
                (name, app_property_from_parts(value, type_name))
            })
    }

    /// Rebuilds the owned [`Message`] of row `row` (for row-oriented consumers and tests).
    pub fn message(&self, row: usize) -> Message {
        let text = |array: &StringArray| array.is_valid(row).then(|| array.value(row).to_owned());
        let time = |array: &TimestampMillisecondArray| {
            array
                .is_valid(row)
                .then(|| DateTime::from_timestamp_millis(array.value(row)))
                .flatten()
        };
        let application_properties = self
            .typed_application_properties_of(row)
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        Message {
            event_hub: self.event_hub.value(row).to_owned(),
            partition: self.partition.value(row).to_owned(),
            sequence_number: self.sequence_number.value(row),
            offset: self.offset.value(row).to_owned(),
            enqueued_time: time(self.enqueued_time).unwrap_or_default(),
            partition_key: text(self.partition_key),
            system: SystemProperties {
                message_id: text(self.message_id),
                correlation_id: text(self.correlation_id),
                user_id: self
                    .user_id
                    .is_valid(row)
                    .then(|| self.user_id.value(row).to_vec()),
                content_type: text(self.content_type),
                content_encoding: text(self.content_encoding),
                iothub_enqueued_time: time(self.iothub_enqueued_time),
                connection_device_id: text(self.connection_device_id),
                connection_module_id: text(self.connection_module_id),
                connection_auth_method: text(self.connection_auth_method),
                connection_device_generation_id: text(self.connection_auth_generation_id),
                message_source: text(self.message_source),
                dt_dataschema: text(self.dt_dataschema),
                dt_subject: text(self.dt_subject),
            },
            application_properties,
            body: bytes::Bytes::copy_from_slice(self.body.value(row)),
            twin: self.twin.get(row).map(str::to_owned),
        }
    }
}

fn string_map_row(map: &MapArray, row: usize) -> impl Iterator<Item = (&str, Option<&str>)> {
    let offsets = map.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = map.keys().as_string::<i32>();
    let values = map.values().as_string::<i32>();
    (start..end).map(move |i| (keys.value(i), values.is_valid(i).then(|| values.value(i))))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::{AppPropertyValue, MessageBatchBuilder};

    fn sample() -> Message {
        Message {
            event_hub: "hub".into(),
            partition: "3".into(),
            sequence_number: 42,
            offset: "4096".into(),
            enqueued_time: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            partition_key: Some("pump-7".into()),
            system: SystemProperties {
                message_id: Some("m-1".into()),
                correlation_id: None,
                user_id: Some(b"hub".to_vec()),
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                iothub_enqueued_time: Some(Utc.timestamp_millis_opt(1_700_000_000_100).unwrap()),
                connection_device_id: Some("pump-7".into()),
                connection_module_id: None,
                connection_auth_method: Some("{\"scope\":\"device\"}".into()),
                connection_device_generation_id: Some("6370".into()),
                message_source: Some("Telemetry".into()),
                dt_dataschema: Some("dtmi:com:example;1".into()),
                dt_subject: Some("thermostat1".into()),
            },
            application_properties: vec![
                ("severity".into(), AppPropertyValue::from("3")),
                ("count".into(), AppPropertyValue::Long(7)),
                ("ok".into(), AppPropertyValue::Bool(true)),
                ("missing".into(), AppPropertyValue::Null),
            ],
            body: bytes::Bytes::from_static(br#"{"temperature":31.5}"#),
            twin: None,
        }
    }

    #[test]
    fn a_message_round_trips_through_a_batch() {
        let messages = vec![sample(), Message::telemetry("x")];
        let batch = MessageBatchBuilder::batch_of(&messages).unwrap();
        assert_eq!(batch.schema(), crate::message_schema());
        let view = MessageColumns::try_new(&batch).unwrap();
        assert_eq!(view.len(), 2);
        let mut second = messages[1].clone();
        second.enqueued_time =
            DateTime::from_timestamp_millis(second.enqueued_time.timestamp_millis()).unwrap();
        assert_eq!(view.message(0), messages[0]);
        assert_eq!(view.message(1), second);
    }

    #[test]
    fn rows_with_the_same_twin_share_one_dictionary_value() {
        let twin = |json: Option<&str>| {
            let mut message = Message::telemetry("{}");
            message.twin = json.map(str::to_owned);
            message
        };
        let a = r#"{"tags":{"site":"a"}}"#;
        let b = r#"{"tags":{"site":"b"}}"#;
        let batch = MessageBatchBuilder::batch_of(&[
            twin(Some(a)),
            twin(None),
            twin(Some(b)),
            twin(Some(a)),
        ])
        .unwrap();
        let view = MessageColumns::try_new(&batch).unwrap();
        assert_eq!(view.twin.values().len(), 2);
        assert_eq!(view.twin.key(0), view.twin.key(3));
        assert_eq!(view.twin.key(1), None);
        assert_eq!(
            (0..4).map(|row| view.twin.get(row)).collect::<Vec<_>>(),
            [Some(a), None, Some(b), Some(a)]
        );
        assert_eq!(view.message(2).twin.as_deref(), Some(b));
    }

    #[test]
    fn a_batch_without_the_schema_is_rejected_with_the_column_named() {
        let batch = RecordBatch::try_from_iter([(
            "body",
            std::sync::Arc::new(StringArray::from(vec!["x"])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let error = MessageColumns::try_new(&batch).unwrap_err().to_string();
        assert!(error.contains("`event_hub` is missing"), "{error}");
    }
}
