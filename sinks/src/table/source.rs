//! Where a column's value comes from: a message field, an application property, or a JSON path into
//! the body, and how it is read out of a message batch as a [`Datum`] (before type conversion).
//!
//! JSON paths are [`JsonPath`]s, the grammar every sink shares.

use std::borrow::Cow;

use arrow::array::{Array, AsArray, StringArray, TimestampMillisecondArray};
use arrow::datatypes::ArrowNativeType;
use base64::Engine as _;
use hubroute_message::{MessageColumns, columns as col};
use serde_json::{Map, Value};

use super::value::Datum;
use crate::json_path::JsonPath;

/// A parsed column source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A column of the message schema, or one of the derived fields.
    Field(Field),
    /// `app:<name>`: one application property.
    AppProperty(String),
    /// `$.a.b[0]`: a JSON path into the body.
    BodyPath(JsonPath),
}

/// Message fields a column can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// A nullable string column of the message schema, by name.
    Text(&'static str),
    SequenceNumber,
    EnqueuedTime,
    IothubEnqueuedTime,
    UserId,
    /// The raw body bytes.
    Body,
    /// The body as JSON text when it is JSON, else null.
    BodyJson,
    /// The body bytes when it is not JSON, else null.
    BodyBytes,
    /// JSON object of the non-null system properties.
    SystemProperties,
    /// JSON object of the application properties.
    ApplicationProperties,
}

const TEXT_FIELDS: [&str; 16] = [
    col::EVENT_HUB,
    col::PARTITION,
    col::OFFSET,
    col::PARTITION_KEY,
    col::MESSAGE_ID,
    col::CORRELATION_ID,
    col::CONTENT_TYPE,
    col::CONTENT_ENCODING,
    col::CONNECTION_DEVICE_ID,
    col::CONNECTION_MODULE_ID,
    col::CONNECTION_AUTH_METHOD,
    col::CONNECTION_AUTH_GENERATION_ID,
    col::MESSAGE_SOURCE,
    col::DT_DATASCHEMA,
    col::DT_SUBJECT,
    col::TWIN,
];

/// System properties in `system_properties`, in this order (strings), plus `user_id` and
/// `iothub_enqueued_time`.
const SYSTEM_TEXT_FIELDS: [&str; 11] = [
    col::MESSAGE_ID,
    col::CORRELATION_ID,
    col::CONTENT_TYPE,
    col::CONTENT_ENCODING,
    col::CONNECTION_DEVICE_ID,
    col::CONNECTION_MODULE_ID,
    col::CONNECTION_AUTH_METHOD,
    col::CONNECTION_AUTH_GENERATION_ID,
    col::MESSAGE_SOURCE,
    col::DT_DATASCHEMA,
    col::DT_SUBJECT,
];

impl Source {
    /// Parses a source as written in the configuration; the error says what is wrong.
    pub(crate) fn parse(source: &str) -> Result<Self, String> {
        if let Some(name) = source.strip_prefix("app:") {
            return Ok(Self::AppProperty(name.to_owned()));
        }
        if source.starts_with('$') {
            return JsonPath::parse(source).map(Self::BodyPath);
        }
        let field = match source {
            col::SEQUENCE_NUMBER => Field::SequenceNumber,
            col::ENQUEUED_TIME => Field::EnqueuedTime,
            col::IOTHUB_ENQUEUED_TIME => Field::IothubEnqueuedTime,
            col::USER_ID => Field::UserId,
            col::BODY => Field::Body,
            "body_json" => Field::BodyJson,
            "body_bytes" => Field::BodyBytes,
            "system_properties" => Field::SystemProperties,
            col::APPLICATION_PROPERTIES => Field::ApplicationProperties,
            other => match TEXT_FIELDS.iter().find(|f| **f == other) {
                Some(name) => Field::Text(name),
                None => {
                    return Err(format!(
                        "unknown message field `{other}`; use a message column name, \
                         system_properties, application_properties, body_json, body_bytes, \
                         `app:<property>` or a JSON path such as `$.temperature`"
                    ));
                }
            },
        };
        Ok(Self::Field(field))
    }

    /// Reads this source for row `row`; `body` is the parsed body when some column needs it.
    pub(crate) fn read<'a>(
        &self,
        view: &MessageColumns<'a>,
        row: usize,
        body: Option<&'a Value>,
    ) -> Datum<'a> {
        match self {
            Self::Field(field) => read_field(*field, view, row),
            Self::AppProperty(name) => view
                .application_properties_of(row)
                .find(|(key, _)| key == name)
                .and_then(|(_, value)| value)
                .map_or(Datum::Null, |value| {
                    app_property_json(value, app_property_type(view, row, name))
                        .map_or(Datum::Text(Cow::Borrowed(value)), |json| {
                            Datum::Json(Cow::Owned(json))
                        })
                }),
            Self::BodyPath(path) => {
                body.and_then(|body| path.get(body))
                    .map_or(Datum::Null, |value| match value {
                        Value::Null => Datum::Null,
                        other => Datum::Json(Cow::Borrowed(other)),
                    })
            }
        }
    }
}

fn text(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}

fn time(array: &TimestampMillisecondArray, row: usize) -> Datum<'static> {
    if array.is_valid(row) {
        Datum::TimeMs(array.value(row))
    } else {
        Datum::Null
    }
}

/// The text of column `name` at `row`: a plain string column, or the dictionary-encoded twin.
fn text_of<'a>(view: &MessageColumns<'a>, name: &str, row: usize) -> Option<&'a str> {
    let array = match name {
        col::EVENT_HUB => view.event_hub,
        col::PARTITION => view.partition,
        col::OFFSET => view.offset,
        col::PARTITION_KEY => view.partition_key,
        col::MESSAGE_ID => view.message_id,
        col::CORRELATION_ID => view.correlation_id,
        col::CONTENT_TYPE => view.content_type,
        col::CONTENT_ENCODING => view.content_encoding,
        col::CONNECTION_DEVICE_ID => view.connection_device_id,
        col::CONNECTION_MODULE_ID => view.connection_module_id,
        col::CONNECTION_AUTH_METHOD => view.connection_auth_method,
        col::CONNECTION_AUTH_GENERATION_ID => view.connection_auth_generation_id,
        col::MESSAGE_SOURCE => view.message_source,
        col::DT_DATASCHEMA => view.dt_dataschema,
        col::DT_SUBJECT => view.dt_subject,
        col::TWIN => return view.twin.get(row),
        _ => return None,
    };
    text(array, row)
}

fn read_field<'a>(field: Field, view: &MessageColumns<'a>, row: usize) -> Datum<'a> {
    match field {
        Field::Text(name) => {
            text_of(view, name, row).map_or(Datum::Null, |s| Datum::Text(s.into()))
        }
        Field::SequenceNumber => Datum::Int(view.sequence_number.value(row)),
        Field::EnqueuedTime => time(view.enqueued_time, row),
        Field::IothubEnqueuedTime => time(view.iothub_enqueued_time, row),
        Field::UserId => {
            if view.user_id.is_valid(row) {
                Datum::Bytes(view.user_id.value(row))
            } else {
                Datum::Null
            }
        }
        Field::Body => Datum::Bytes(view.body.value(row)),
        Field::BodyJson | Field::BodyBytes => {
            let body = view.body.value(row);
            let is_json = std::str::from_utf8(body)
                .ok()
                .filter(|s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok());
            match (field, is_json) {
                (Field::BodyJson, Some(json)) => Datum::JsonText(json.into()),
                (Field::BodyBytes, None) => Datum::Bytes(body),
                _ => Datum::Null,
            }
        }
        Field::SystemProperties => {
            let mut object = Map::new();
            for name in SYSTEM_TEXT_FIELDS {
                if let Some(value) = text_of(view, name, row) {
                    object.insert(name.to_owned(), Value::String(value.to_owned()));
                }
            }
            if view.user_id.is_valid(row) {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(view.user_id.value(row));
                object.insert(col::USER_ID.to_owned(), Value::String(encoded));
            }
            if let Datum::TimeMs(ms) = time(view.iothub_enqueued_time, row) {
                object.insert(
                    col::IOTHUB_ENQUEUED_TIME.to_owned(),
                    Value::String(super::value::rfc3339(ms)),
                );
            }
            Datum::Json(Cow::Owned(Value::Object(object)))
        }
        Field::ApplicationProperties => {
            let mut object = Map::new();
            for (name, value) in view.application_properties_of(row) {
                let json = value.map_or(Value::Null, |value| {
                    app_property_json(value, app_property_type(view, row, name))
                        .unwrap_or_else(|| Value::String(value.to_owned()))
                });
                object.insert(name.to_owned(), json);
            }
            Datum::Json(Cow::Owned(Value::Object(object)))
        }
    }
}

/// The AMQP type name of application property `name`, when it was not a string.
fn app_property_type<'a>(view: &MessageColumns<'a>, row: usize, name: &str) -> Option<&'a str> {
    let types = view.application_property_types;
    let offsets = types.value_offsets();
    let (start, end) = (offsets[row].as_usize(), offsets[row + 1].as_usize());
    let keys = types.keys().as_string::<i32>();
    let values = types.values().as_string::<i32>();
    (start..end)
        .find(|&i| keys.value(i) == name)
        .and_then(|i| text(values, i))
}

/// Numbers and booleans keep their JSON type; everything else stays a string (`None`).
fn app_property_json(value: &str, type_name: Option<&str>) -> Option<Value> {
    match type_name? {
        "long" | "ulong" | "double" | "boolean" => serde_json::from_str(value).ok(),
        _ => None,
    }
}
