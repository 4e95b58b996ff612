//! An encoded AMQP message (part 3, section 3.2) read in place: which sections it has, where each
//! one is, and borrowed views of the ones a router needs (annotations, properties, application
//! properties, body).
//!
//! [`MessageView::parse`] makes one pass over the section headers and skips section contents, so its
//! cost does not depend on the body size; the annotation and property maps are walked only by the
//! caller that wants them. [`stamp_annotations`] rewrites the message-annotations section and copies
//! every other section verbatim, which is how an Event Hubs-compatible server stamps `x-opt-*`
//! annotations without decoding and re-encoding the message.

use std::ops::Range;

use crate::codec::{self, Compound, Descriptor, Fields, Reader, Value, code};
use crate::{Error, Result};

/// Section descriptor codes.
pub mod section {
    #![allow(missing_docs)]
    pub const HEADER: u64 = 0x70;
    pub const DELIVERY_ANNOTATIONS: u64 = 0x71;
    pub const MESSAGE_ANNOTATIONS: u64 = 0x72;
    pub const PROPERTIES: u64 = 0x73;
    pub const APPLICATION_PROPERTIES: u64 = 0x74;
    pub const DATA: u64 = 0x75;
    pub const AMQP_SEQUENCE: u64 = 0x76;
    pub const AMQP_VALUE: u64 = 0x77;
    pub const FOOTER: u64 = 0x78;
}

fn section_code(descriptor: Descriptor<'_>) -> Option<u64> {
    match descriptor {
        Descriptor::Code(code) => Some(code),
        Descriptor::Symbol(name) => Some(match name {
            "amqp:header:list" => section::HEADER,
            "amqp:delivery-annotations:map" => section::DELIVERY_ANNOTATIONS,
            "amqp:message-annotations:map" => section::MESSAGE_ANNOTATIONS,
            "amqp:properties:list" => section::PROPERTIES,
            "amqp:application-properties:map" => section::APPLICATION_PROPERTIES,
            "amqp:data:binary" => section::DATA,
            "amqp:amqp-sequence:list" => section::AMQP_SEQUENCE,
            "amqp:amqp-value:*" => section::AMQP_VALUE,
            "amqp:footer:map" => section::FOOTER,
            _ => return None,
        }),
    }
}

/// The body of a message.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// No body section.
    Empty,
    /// One or more data sections: their binaries in order.
    Data(Sections<'a>),
    /// One or more amqp-sequence sections: each one's encoded list in order.
    Sequence(Sections<'a>),
    /// One amqp-value section.
    Value {
        /// The value.
        value: Value<'a>,
        /// Its encoding.
        encoded: &'a [u8],
    },
}

/// Consecutive body sections of one kind, still encoded.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> Sections<'a> {
    /// Number of sections.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is no section (never true for a parsed body).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The binary of each data section, or the encoded list of each amqp-sequence section.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut reader = Reader::new(self.bytes);
        std::iter::from_fn(move || {
            if reader.is_empty() {
                return None;
            }
            // Validated by `MessageView::parse`.
            let Ok(Value::Described(_, value)) = reader.read_value() else {
                return None;
            };
            match Reader::new(value).read_value() {
                Ok(Value::Binary(data)) => Some(data),
                _ => Some(value),
            }
        })
    }
}

/// Where each section of a message lies, and views of the sections.
#[derive(Debug, Clone)]
pub struct MessageView<'a> {
    /// The message-annotations map.
    pub message_annotations: Option<Compound<'a>>,
    /// The properties list.
    pub properties: Option<Compound<'a>>,
    /// The application-properties map.
    pub application_properties: Option<Compound<'a>>,
    /// The body.
    pub body: Body<'a>,
    /// Byte range of the message-annotations section, if any.
    pub message_annotations_range: Option<Range<usize>>,
    /// Where the sections after the header, delivery- and message-annotations begin: the bare
    /// message (properties onwards) and the footer.
    pub bare_start: usize,
    /// Where a leading header section ends (0 without one).
    pub header_end: usize,
}

impl<'a> MessageView<'a> {
    /// Finds the sections of `message`; fails on anything that is not a well-formed AMQP message.
    pub fn parse(message: &'a [u8]) -> Result<Self> {
        let mut reader = Reader::new(message);
        let mut view = MessageView {
            message_annotations: None,
            properties: None,
            application_properties: None,
            body: Body::Empty,
            message_annotations_range: None,
            bare_start: 0,
            header_end: 0,
        };
        let mut last = 0u64;
        let mut body_range: Option<Range<usize>> = None;
        let mut body_kind = None;
        let mut body_count = 0;
        while !reader.is_empty() {
            let start = reader.position();
            if reader.peek_code()? != code::DESCRIBED {
                return Err(Error::Malformed(format!(
                    "byte {start} of the message is not the start of a section"
                )));
            }
            let Value::Described(descriptor, value) = reader.read_value()? else {
                return Err(Error::Malformed("a section is not described".to_owned()));
            };
            let end = reader.position();
            let code = section_code(descriptor)
                .filter(|code| (section::HEADER..=section::FOOTER).contains(code))
                .ok_or_else(|| {
                    Error::Malformed(format!("unknown message section {descriptor:?}"))
                })?;
            let repeats_body =
                code == last && (code == section::DATA || code == section::AMQP_SEQUENCE);
            if code < last || (code == last && !repeats_body) {
                return Err(Error::Malformed(format!(
                    "message section {code:#x} out of order (after {last:#x})"
                )));
            }
            if (section::DATA..=section::AMQP_VALUE).contains(&code)
                && body_range.is_some()
                && !repeats_body
            {
                return Err(Error::Malformed(
                    "a message with more than one kind of body section".to_owned(),
                ));
            }
            last = code;
            let mut inner = Reader::new(value);
            match code {
                section::HEADER | section::DELIVERY_ANNOTATIONS => {
                    inner.skip()?;
                    view.bare_start = end;
                    if code == section::HEADER {
                        view.header_end = end;
                    }
                }
                section::MESSAGE_ANNOTATIONS => {
                    view.message_annotations = Some(inner.read_map()?);
                    view.message_annotations_range = Some(start..end);
                    view.bare_start = end;
                }
                section::PROPERTIES => view.properties = Some(inner.read_list()?),
                section::APPLICATION_PROPERTIES => {
                    view.application_properties = Some(inner.read_map()?);
                }
                section::DATA => {
                    if !matches!(inner.read_value()?, Value::Binary(_)) {
                        return Err(Error::Malformed(
                            "a data section that does not hold binary".to_owned(),
                        ));
                    }
                }
                section::AMQP_SEQUENCE => {
                    inner.read_list()?;
                }
                section::AMQP_VALUE => {
                    view.body = Body::Value {
                        value: inner.read_value()?,
                        encoded: value,
                    };
                }
                _ => {
                    inner.read_map()?;
                }
            }
            if (section::DATA..=section::AMQP_VALUE).contains(&code) {
                body_kind = Some(code);
            }
            if code == section::DATA || code == section::AMQP_SEQUENCE {
                body_count += 1;
                body_range = Some(body_range.map_or(start..end, |range| range.start..end));
            } else if code == section::AMQP_VALUE {
                body_range = Some(start..end);
            }
            if !inner.is_empty() {
                return Err(Error::Malformed(format!(
                    "section {code:#x} has bytes after its value"
                )));
            }
        }
        if let Some(range) = body_range {
            let sections = Sections {
                bytes: &message[range],
                count: body_count,
            };
            match body_kind {
                Some(section::DATA) => view.body = Body::Data(sections),
                Some(section::AMQP_SEQUENCE) => view.body = Body::Sequence(sections),
                _ => {}
            }
        }
        Ok(view)
    }
}

/// The fields of a properties section a router reads (the others are skipped unread).
#[derive(Debug, Clone, Copy, Default)]
pub struct Properties<'a> {
    /// `message-id`: ulong, uuid, binary or string.
    pub message_id: Option<Value<'a>>,
    /// `user-id`.
    pub user_id: Option<&'a [u8]>,
    /// `correlation-id`: ulong, uuid, binary or string.
    pub correlation_id: Option<Value<'a>>,
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// `content-encoding`.
    pub content_encoding: Option<&'a str>,
}

fn optional<'a>(value: Value<'a>) -> Option<Value<'a>> {
    (!value.is_null()).then_some(value)
}

fn text<'a>(value: Value<'a>, name: &str) -> Result<Option<&'a str>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) | Value::Symbol(s) => Ok(Some(s)),
        other => Err(Error::Malformed(format!(
            "property {name} must be text, not {other:?}"
        ))),
    }
}

impl<'a> Properties<'a> {
    /// Reads a properties list: `message-id`, `user-id`, (`to`, `subject`, `reply-to` skipped),
    /// `correlation-id`, `content-type`, `content-encoding`; the rest is not read.
    pub fn read(list: Compound<'a>) -> Result<Self> {
        let mut fields = Fields::new(list);
        let message_id = optional(fields.next_value()?);
        let user_id = fields.binary("user-id")?;
        for _ in 0..3 {
            fields.skip_next()?;
        }
        Ok(Properties {
            message_id,
            user_id,
            correlation_id: optional(fields.next_value()?),
            content_type: text(fields.next_value()?, "content-type")?,
            content_encoding: text(fields.next_value()?, "content-encoding")?,
        })
    }
}

/// Iterates the entries of a map: `(key, value)` pairs.
pub fn entries<'a>(map: Compound<'a>) -> impl Iterator<Item = Result<(Value<'a>, Value<'a>)>> {
    let mut elements = map.iter();
    std::iter::from_fn(move || {
        let key = elements.next()?;
        let value = elements
            .next()
            .unwrap_or_else(|| Err(Error::Malformed("a map entry without a value".to_owned())));
        Some(key.and_then(|key| value.map(|value| (key, value))))
    })
}

/// A value to stamp into the message annotations.
#[derive(Debug, Clone, Copy)]
pub enum Annotation<'a> {
    /// A `long`.
    Long(i64),
    /// A `string`.
    String(&'a str),
    /// A `timestamp` (ms since the epoch).
    Timestamp(i64),
}

/// Re-encodes `message` (whose sections `view` found, so it is not parsed again) with `stamps` set
/// in its message annotations (replacing entries with the same symbol keys, keeping the others in
/// order) and every other section copied as it is. A delivery-annotations section is dropped: it is
/// hop-by-hop and never forwarded.
pub fn stamp_annotations(
    message: &[u8],
    view: &MessageView<'_>,
    stamps: &[(&str, Annotation<'_>)],
) -> Result<Vec<u8>> {
    let mut entries = Vec::with_capacity(128);
    let mut count = 0u32;
    if let Some(annotations) = view.message_annotations {
        let mut reader = annotations.reader();
        for _ in 0..annotations.count / 2 {
            let start = reader.position();
            let key = reader.read_value()?;
            reader.skip()?;
            let stamped =
                matches!(key, Value::Symbol(name) if stamps.iter().any(|(k, _)| *k == name));
            if !stamped {
                entries.extend_from_slice(&annotations.body[start..reader.position()]);
                count += 2;
            }
        }
    }
    for (key, value) in stamps {
        codec::put_symbol(&mut entries, key);
        match *value {
            Annotation::Long(n) => codec::put_long(&mut entries, n),
            Annotation::String(s) => codec::put_string(&mut entries, s),
            Annotation::Timestamp(t) => codec::put_timestamp(&mut entries, t),
        }
        count += 2;
    }
    let mut out = Vec::with_capacity(message.len() + entries.len() + 16);
    // A header section, if present, stays first.
    out.extend_from_slice(&message[..view.header_end]);
    codec::put_descriptor(&mut out, section::MESSAGE_ANNOTATIONS);
    codec::put_map(&mut out, count, &entries);
    out.extend_from_slice(&message[view.bare_start.max(view.header_end)..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::messaging::annotations::OwnedKey;
    use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
    use fe2o3_amqp_types::messaging::{
        AmqpSequence, AmqpValue, ApplicationProperties, Body as OwnedBody, Data, Header, Message,
        MessageAnnotations, MessageId, Properties as OwnedProperties,
    };
    use fe2o3_amqp_types::primitives::{Binary, Symbol, Timestamp};
    use serde_amqp::Value as Owned;

    fn encode(message: Message<OwnedBody<Owned>>) -> Vec<u8> {
        serde_amqp::to_vec(&Serializable(message)).expect("encodes")
    }

    fn full_message(body: OwnedBody<Owned>) -> Message<OwnedBody<Owned>> {
        Message {
            header: Some(Header {
                durable: true,
                ..Header::default()
            }),
            delivery_annotations: None,
            message_annotations: Some(MessageAnnotations(
                [(
                    OwnedKey::Symbol(Symbol::from("x-opt-partition-key")),
                    Owned::String("dev-1".into()),
                )]
                .into_iter()
                .collect(),
            )),
            properties: Some(OwnedProperties {
                message_id: Some(MessageId::String("m-1".into())),
                content_type: Some(Symbol::from("application/json")),
                content_encoding: Some(Symbol::from("utf-8")),
                creation_time: Some(Timestamp::from_milliseconds(7)),
                ..OwnedProperties::default()
            }),
            application_properties: Some(
                ApplicationProperties::builder()
                    .insert("level", "high")
                    .insert("n", 3i64)
                    .build(),
            ),
            body,
            footer: None,
        }
    }

    #[test]
    fn finds_every_section_of_a_full_message() {
        let bytes = encode(full_message(OwnedBody::Data(
            vec![
                Data(Binary::from(b"{\"a\":".to_vec())),
                Data(Binary::from(b"1}".to_vec())),
            ]
            .into(),
        )));
        let view = MessageView::parse(&bytes).expect("parses");
        let properties = Properties::read(view.properties.expect("properties")).expect("reads");
        assert_eq!(properties.message_id, Some(Value::String("m-1")));
        assert_eq!(properties.content_type, Some("application/json"));
        assert_eq!(properties.content_encoding, Some("utf-8"));
        let app: Vec<_> = entries(view.application_properties.expect("app"))
            .collect::<Result<_>>()
            .expect("entries");
        assert_eq!(
            app,
            vec![
                (Value::String("level"), Value::String("high")),
                (Value::String("n"), Value::Long(3)),
            ]
        );
        let Body::Data(sections) = view.body else {
            panic!("not data");
        };
        assert_eq!(
            sections.iter().collect::<Vec<_>>(),
            vec![&b"{\"a\":"[..], &b"1}"[..]]
        );
    }

    #[test]
    fn reads_value_and_sequence_bodies_and_an_empty_one() {
        let bytes = encode(full_message(OwnedBody::Value(AmqpValue(Owned::String(
            "text".into(),
        )))));
        let view = MessageView::parse(&bytes).expect("parses");
        assert!(matches!(
            view.body,
            Body::Value {
                value: Value::String("text"),
                ..
            }
        ));

        let bytes = encode(full_message(OwnedBody::Sequence(
            vec![AmqpSequence(vec![Owned::Int(1)])].into(),
        )));
        let Body::Sequence(sections) = MessageView::parse(&bytes).expect("parses").body else {
            panic!("not a sequence");
        };
        let lists: Vec<&[u8]> = sections.iter().collect();
        assert_eq!(lists.len(), 1);
        assert!(matches!(Reader::new(lists[0]).read_value(), Ok(Value::List(l)) if l.count == 1));

        let view = MessageView::parse(&[]).expect("an empty message parses");
        assert!(matches!(view.body, Body::Empty));
    }

    #[test]
    fn stamping_keeps_every_other_section_and_serde_reads_the_result() {
        let original = full_message(OwnedBody::Data(
            vec![Data(Binary::from(b"body".to_vec()))].into(),
        ));
        let bytes = encode(original.clone());
        let stamped = stamp_annotations(
            &bytes,
            &MessageView::parse(&bytes).expect("parses"),
            &[
                ("x-opt-sequence-number", Annotation::Long(42)),
                ("x-opt-offset", Annotation::String("4096")),
                ("x-opt-enqueued-time", Annotation::Timestamp(1_000)),
                ("x-opt-partition-key", Annotation::String("dev-2")),
            ],
        )
        .expect("stamps");
        let Deserializable(decoded): Deserializable<Message<OwnedBody<Owned>>> =
            serde_amqp::from_slice(&stamped).expect("serde decodes the stamped message");
        assert_eq!(decoded.header, original.header);
        assert_eq!(decoded.properties, original.properties);
        assert_eq!(
            decoded.application_properties,
            original.application_properties
        );
        assert_eq!(decoded.body, original.body);
        let annotations = decoded.message_annotations.expect("annotations").0;
        let get = |key: &str| {
            annotations
                .get(&OwnedKey::Symbol(Symbol::from(key)))
                .cloned()
        };
        assert_eq!(get("x-opt-sequence-number"), Some(Owned::Long(42)));
        assert_eq!(get("x-opt-offset"), Some(Owned::String("4096".into())));
        assert_eq!(
            get("x-opt-enqueued-time"),
            Some(Owned::Timestamp(Timestamp::from_milliseconds(1_000)))
        );
        assert_eq!(
            get("x-opt-partition-key"),
            Some(Owned::String("dev-2".into()))
        );
        assert_eq!(annotations.len(), 4);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = encode(full_message(OwnedBody::Data(
            vec![Data(Binary::from(b"b".to_vec()))].into(),
        )));
        let mut out_of_order = Vec::new();
        codec::put_descriptor(&mut out_of_order, section::DATA);
        codec::put_binary(&mut out_of_order, b"x");
        codec::put_descriptor(&mut out_of_order, section::PROPERTIES);
        codec::put_list(&mut out_of_order, 0, &[]);
        let mut mixed = Vec::new();
        codec::put_descriptor(&mut mixed, section::DATA);
        codec::put_binary(&mut mixed, b"x");
        codec::put_descriptor(&mut mixed, section::AMQP_VALUE);
        mixed.push(code::NULL);
        let mut not_binary = Vec::new();
        codec::put_descriptor(&mut not_binary, section::DATA);
        codec::put_string(&mut not_binary, "x");
        for (name, bytes) in [
            ("truncated", good[..good.len() - 1].to_vec()),
            ("not described", vec![code::NULL]),
            ("out of order", out_of_order),
            ("mixed body", mixed),
            ("data not binary", not_binary),
            ("unknown section", vec![0x00, 0x53, 0x7f, 0x40]),
        ] {
            assert!(MessageView::parse(&bytes).is_err(), "{name}");
        }
    }
}
