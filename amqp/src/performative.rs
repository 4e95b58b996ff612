//! The nine AMQP performatives and the SASL frames: decoded from a frame body, encoded into a frame.
//!
//! Control performatives (open, begin, attach, detach, end, close, disposition, flow) are rare, so
//! they go through `fe2o3-amqp-types` and `serde_amqp`, which define every field and its encoding.
//! Transfers are the data path: [`Transfer`] is read by hand from the frame, its delivery tag and
//! payload are slices of the frame's buffer, and [`put_transfer`] writes one without building any
//! structure. Transfers and flows are written with all their fields, because the Python SDK's AMQP
//! stack reads performatives by position and rejects omitted trailing fields.

use bytes::Bytes;
use fe2o3_amqp_types::performatives::{Attach, Begin, Close, Detach, Disposition, End, Flow, Open};
use fe2o3_amqp_types::sasl::{SaslChallenge, SaslInit, SaslMechanisms, SaslOutcome, SaslResponse};
use serde::Serialize;

use crate::codec::{self, Fields, Reader, Value, code};
use crate::frame::{Frame, FrameKind, put_frame};
use crate::{Error, Result};

/// Descriptor codes of the performatives (part 2, section 2.7) and SASL frames (part 5, 5.3.3).
pub mod descriptor {
    #![allow(missing_docs)]
    pub const OPEN: u64 = 0x10;
    pub const BEGIN: u64 = 0x11;
    pub const ATTACH: u64 = 0x12;
    pub const FLOW: u64 = 0x13;
    pub const TRANSFER: u64 = 0x14;
    pub const DISPOSITION: u64 = 0x15;
    pub const DETACH: u64 = 0x16;
    pub const END: u64 = 0x17;
    pub const CLOSE: u64 = 0x18;
    pub const SASL_MECHANISMS: u64 = 0x40;
    pub const SASL_INIT: u64 = 0x41;
    pub const SASL_CHALLENGE: u64 = 0x42;
    pub const SASL_RESPONSE: u64 = 0x43;
    pub const SASL_OUTCOME: u64 = 0x44;
}

/// The message format of an Event Hubs batch: a body of data sections, each one encoded message.
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;

/// A transfer frame: the performative's fields and the payload that follows them.
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// The sender's link handle.
    pub handle: u32,
    /// Required on the first frame of a delivery.
    pub delivery_id: Option<u32>,
    /// Required on the first frame of a delivery.
    pub delivery_tag: Option<Bytes>,
    /// `0` for a plain message, [`BATCH_MESSAGE_FORMAT`] for a batch.
    pub message_format: Option<u32>,
    /// Pre-settled by the sender.
    pub settled: Option<bool>,
    /// More frames of this delivery follow.
    pub more: bool,
    /// The delivery carries a state (only when resuming links, which nothing here does).
    pub has_state: bool,
    /// A resumed delivery.
    pub resume: bool,
    /// The sender gave up on this delivery; its frames are discarded.
    pub aborted: bool,
    /// The payload: the encoded message, or this frame's part of it.
    pub payload: Bytes,
}

/// A decoded AMQP frame.
#[derive(Debug)]
pub enum Performative {
    /// Opens the connection.
    Open(Box<Open>),
    /// Begins a session.
    Begin(Begin),
    /// Attaches a link.
    Attach(Box<Attach>),
    /// Flow control state.
    Flow(Flow),
    /// A message or a part of one.
    Transfer(Transfer),
    /// Delivery outcomes.
    Disposition(Disposition),
    /// Detaches or closes a link.
    Detach(Detach),
    /// Ends a session.
    End(End),
    /// Closes the connection.
    Close(Close),
    /// An empty frame: a heartbeat.
    Heartbeat,
}

/// A decoded SASL frame.
#[derive(Debug)]
pub enum Sasl {
    /// The server's mechanisms.
    Mechanisms(SaslMechanisms),
    /// The client's choice.
    Init(SaslInit),
    /// A challenge (no mechanism used here sends one).
    Challenge(SaslChallenge),
    /// A response to a challenge.
    Response(SaslResponse),
    /// The result.
    Outcome(SaslOutcome),
}

fn descriptor_of(reader: &mut Reader<'_>) -> Result<u64> {
    if reader.peek_code()? != code::DESCRIBED {
        return Err(Error::Malformed(
            "a frame body must start with a described performative".to_owned(),
        ));
    }
    reader.read_value().and_then(|value| match value {
        Value::Described(codec::Descriptor::Code(code), _) => Ok(code),
        other => Err(Error::Malformed(format!(
            "unexpected performative descriptor {other:?}"
        ))),
    })
}

fn serde<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_amqp::from_slice(body).map_err(|error| Error::Malformed(format!("{what}: {error}")))
}

impl Performative {
    /// Decodes an AMQP frame.
    pub fn decode(frame: &Frame) -> Result<Self> {
        if frame.kind != FrameKind::Amqp {
            return Err(Error::Framing(
                "a SASL frame after the SASL exchange".to_owned(),
            ));
        }
        let body = &frame.body;
        if body.is_empty() {
            return Ok(Performative::Heartbeat);
        }
        let mut probe = Reader::new(body);
        Ok(match descriptor_of(&mut probe)? {
            descriptor::TRANSFER => Performative::Transfer(decode_transfer(body)?),
            descriptor::OPEN => Performative::Open(Box::new(serde(body, "open")?)),
            descriptor::BEGIN => Performative::Begin(serde(body, "begin")?),
            descriptor::ATTACH => Performative::Attach(Box::new(serde(body, "attach")?)),
            descriptor::FLOW => Performative::Flow(serde(body, "flow")?),
            descriptor::DISPOSITION => Performative::Disposition(serde(body, "disposition")?),
            descriptor::DETACH => Performative::Detach(serde(body, "detach")?),
            descriptor::END => Performative::End(serde(body, "end")?),
            descriptor::CLOSE => Performative::Close(serde(body, "close")?),
            other => {
                return Err(Error::Malformed(format!("unknown performative {other:#x}")));
            }
        })
    }
}

impl Sasl {
    /// Decodes a SASL frame.
    pub fn decode(frame: &Frame) -> Result<Self> {
        if frame.kind != FrameKind::Sasl {
            return Err(Error::Framing(
                "an AMQP frame during the SASL exchange".to_owned(),
            ));
        }
        let body = &frame.body;
        let mut probe = Reader::new(body);
        Ok(match descriptor_of(&mut probe)? {
            descriptor::SASL_MECHANISMS => Sasl::Mechanisms(serde(body, "sasl-mechanisms")?),
            descriptor::SASL_INIT => Sasl::Init(serde(body, "sasl-init")?),
            descriptor::SASL_CHALLENGE => Sasl::Challenge(serde(body, "sasl-challenge")?),
            descriptor::SASL_RESPONSE => Sasl::Response(serde(body, "sasl-response")?),
            descriptor::SASL_OUTCOME => Sasl::Outcome(serde(body, "sasl-outcome")?),
            other => return Err(Error::Malformed(format!("unknown SASL frame {other:#x}"))),
        })
    }
}

fn decode_transfer(body: &Bytes) -> Result<Transfer> {
    let mut reader = Reader::new(body);
    let Value::Described(_, list) = reader.read_value()? else {
        return Err(Error::Malformed("transfer is not described".to_owned()));
    };
    let payload_start = reader.position();
    let list = Reader::new(list).read_list()?;
    let mut fields = Fields::new(list);
    let handle = fields
        .uint("transfer handle")?
        .ok_or_else(|| Error::Malformed("a transfer without a handle".to_owned()))?;
    let delivery_id = fields.uint("delivery-id")?;
    let delivery_tag = fields
        .binary("delivery-tag")?
        .map(|tag| body.slice_ref(tag));
    let message_format = fields.uint("message-format")?;
    let settled = match fields.next_value()? {
        Value::Null => None,
        Value::Bool(settled) => Some(settled),
        other => {
            return Err(Error::Malformed(format!(
                "settled must be a boolean, not {other:?}"
            )));
        }
    };
    let more = fields.boolean("more", false)?;
    fields.ubyte("rcv-settle-mode")?;
    let has_state = !fields.next_value()?.is_null();
    let resume = fields.boolean("resume", false)?;
    let aborted = fields.boolean("aborted", false)?;
    fields.boolean("batchable", false)?;
    Ok(Transfer {
        handle,
        delivery_id,
        delivery_tag,
        message_format,
        settled,
        more,
        has_state,
        resume,
        aborted,
        payload: body.slice(payload_start..),
    })
}

/// Appends a frame carrying a control performative encoded by `serde_amqp`.
pub fn put_performative(out: &mut Vec<u8>, channel: u16, performative: &impl Serialize) {
    let body =
        serde_amqp::to_vec(performative).expect("fe2o3-amqp-types performatives always serialise");
    put_frame(out, FrameKind::Amqp, channel, &body, &[]);
}

/// Appends a SASL frame.
pub fn put_sasl(out: &mut Vec<u8>, frame: &impl Serialize) {
    let body = serde_amqp::to_vec(frame).expect("fe2o3-amqp-types SASL frames always serialise");
    put_frame(out, FrameKind::Sasl, 0, &body, &[]);
}

/// The fields of an outgoing transfer frame.
#[derive(Debug, Clone, Copy)]
pub struct TransferHeader<'a> {
    /// The sending link's handle.
    pub handle: u32,
    /// The delivery id (session scoped).
    pub delivery_id: u32,
    /// The delivery tag (link scoped).
    pub delivery_tag: &'a [u8],
    /// `0` or [`BATCH_MESSAGE_FORMAT`].
    pub message_format: u32,
    /// Send pre-settled.
    pub settled: bool,
    /// More frames of this delivery follow.
    pub more: bool,
}

/// Appends a transfer frame with `payload`, all eleven fields present.
pub fn put_transfer(out: &mut Vec<u8>, channel: u16, header: TransferHeader<'_>, payload: &[u8]) {
    let mut fields = Vec::with_capacity(32 + header.delivery_tag.len());
    codec::put_uint(&mut fields, header.handle);
    codec::put_uint(&mut fields, header.delivery_id);
    codec::put_binary(&mut fields, header.delivery_tag);
    codec::put_uint(&mut fields, header.message_format);
    codec::put_bool(&mut fields, header.settled);
    codec::put_bool(&mut fields, header.more);
    fields.extend_from_slice(&[code::NULL, code::NULL]); // rcv-settle-mode, state
    codec::put_bool(&mut fields, false); // resume
    codec::put_bool(&mut fields, false); // aborted
    codec::put_bool(&mut fields, true); // batchable
    let mut body = Vec::with_capacity(fields.len() + 8);
    codec::put_descriptor(&mut body, descriptor::TRANSFER);
    codec::put_list(&mut body, 11, &fields);
    put_frame(out, FrameKind::Amqp, channel, &body, payload);
}

/// The fields of an outgoing flow frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowState {
    /// The next transfer id this side expects (`None` before the peer's begin arrived).
    pub next_incoming_id: Option<u32>,
    /// Transfers this side accepts before the next flow.
    pub incoming_window: u32,
    /// The id of this side's next outgoing transfer.
    pub next_outgoing_id: u32,
    /// Transfers this side may send before the next flow.
    pub outgoing_window: u32,
    /// The link, for a link flow.
    pub handle: Option<u32>,
    /// The link's delivery count.
    pub delivery_count: Option<u32>,
    /// The link credit granted (receiver) or held (sender).
    pub link_credit: Option<u32>,
    /// Deliveries the sender has available.
    pub available: Option<u32>,
    /// Drain the credit.
    pub drain: bool,
    /// Ask the peer to answer with its own flow.
    pub echo: bool,
}

/// Appends a flow frame with all eleven fields present.
pub fn put_flow(out: &mut Vec<u8>, channel: u16, flow: &FlowState) {
    let mut fields = Vec::with_capacity(48);
    let optional = |fields: &mut Vec<u8>, value: Option<u32>| match value {
        Some(value) => codec::put_uint(fields, value),
        None => fields.push(code::NULL),
    };
    optional(&mut fields, flow.next_incoming_id);
    codec::put_uint(&mut fields, flow.incoming_window);
    codec::put_uint(&mut fields, flow.next_outgoing_id);
    codec::put_uint(&mut fields, flow.outgoing_window);
    optional(&mut fields, flow.handle);
    optional(&mut fields, flow.delivery_count);
    optional(&mut fields, flow.link_credit);
    optional(&mut fields, flow.available);
    codec::put_bool(&mut fields, flow.drain);
    codec::put_bool(&mut fields, flow.echo);
    fields.push(code::NULL); // properties
    let mut body = Vec::with_capacity(fields.len() + 8);
    codec::put_descriptor(&mut body, descriptor::FLOW);
    codec::put_list(&mut body, 11, &fields);
    put_frame(out, FrameKind::Amqp, channel, &body, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameBuffer;
    use fe2o3_amqp_types::definitions::Role;

    fn frames(wire: &[u8]) -> Vec<Frame> {
        let mut buffer = FrameBuffer::new(1 << 20);
        buffer.read_buffer().extend_from_slice(wire);
        let mut out = Vec::new();
        while let Some(frame) = buffer.next_frame().expect("valid") {
            out.push(frame);
        }
        out
    }

    #[test]
    fn a_hand_written_transfer_decodes_with_serde_and_by_hand() {
        let mut wire = Vec::new();
        let header = TransferHeader {
            handle: 3,
            delivery_id: 70_000,
            delivery_tag: b"tag-1",
            message_format: BATCH_MESSAGE_FORMAT,
            settled: true,
            more: false,
        };
        put_transfer(&mut wire, 5, header, b"the payload");
        let frame = &frames(&wire)[0];
        assert_eq!(frame.channel, 5);
        let Performative::Transfer(transfer) = Performative::decode(frame).expect("decodes") else {
            panic!("not a transfer");
        };
        assert_eq!(transfer.handle, 3);
        assert_eq!(transfer.delivery_id, Some(70_000));
        assert_eq!(transfer.delivery_tag.as_deref(), Some(&b"tag-1"[..]));
        assert_eq!(transfer.message_format, Some(BATCH_MESSAGE_FORMAT));
        assert_eq!(transfer.settled, Some(true));
        assert!(!transfer.more && !transfer.aborted && !transfer.has_state);
        assert_eq!(&transfer.payload[..], b"the payload");

        let list_len = frame.body.len() - b"the payload".len();
        let by_serde: fe2o3_amqp_types::performatives::Transfer =
            serde_amqp::from_slice(&frame.body[..list_len]).expect("serde reads it");
        assert_eq!(by_serde.handle.0, 3);
        assert_eq!(by_serde.delivery_id, Some(70_000));
        assert!(by_serde.batchable);
    }

    #[test]
    fn a_transfer_written_by_serde_decodes_by_hand() {
        let transfer = fe2o3_amqp_types::performatives::Transfer {
            handle: 9.into(),
            delivery_id: None,
            delivery_tag: None,
            message_format: None,
            settled: None,
            more: true,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let body = serde_amqp::to_vec(&transfer).expect("encodes");
        let mut wire = Vec::new();
        put_frame(&mut wire, FrameKind::Amqp, 0, &body, b"part");
        let Performative::Transfer(decoded) =
            Performative::decode(&frames(&wire)[0]).expect("decodes")
        else {
            panic!("not a transfer");
        };
        assert_eq!(decoded.handle, 9);
        assert!(decoded.more);
        assert_eq!(decoded.delivery_id, None);
        assert_eq!(&decoded.payload[..], b"part");
    }

    #[test]
    fn a_hand_written_flow_reads_back_through_serde() {
        let mut wire = Vec::new();
        let flow = FlowState {
            next_incoming_id: Some(12),
            incoming_window: 65_536,
            next_outgoing_id: 1,
            outgoing_window: 100,
            handle: Some(2),
            delivery_count: Some(300),
            link_credit: Some(1000),
            available: None,
            drain: false,
            echo: true,
        };
        put_flow(&mut wire, 1, &flow);
        let Performative::Flow(decoded) = Performative::decode(&frames(&wire)[0]).expect("decodes")
        else {
            panic!("not a flow");
        };
        assert_eq!(decoded.next_incoming_id, Some(12));
        assert_eq!(decoded.incoming_window, 65_536);
        assert_eq!(decoded.handle.map(|h| h.0), Some(2));
        assert_eq!(decoded.delivery_count, Some(300));
        assert_eq!(decoded.link_credit, Some(1000));
        assert!(decoded.echo && !decoded.drain);
    }

    #[test]
    fn control_performatives_round_trip() {
        let attach = Attach {
            name: "link".to_owned(),
            handle: 4.into(),
            role: Role::Receiver,
            snd_settle_mode: Default::default(),
            rcv_settle_mode: Default::default(),
            source: None,
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: None,
            max_message_size: Some(1 << 20),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let mut wire = Vec::new();
        put_performative(&mut wire, 7, &attach);
        let frame = &frames(&wire)[0];
        assert_eq!(frame.channel, 7);
        let Performative::Attach(decoded) = Performative::decode(frame).expect("decodes") else {
            panic!("not an attach");
        };
        assert_eq!(decoded.name, "link");
        assert_eq!(decoded.max_message_size, Some(1 << 20));
    }

    #[test]
    fn garbage_bodies_are_errors() {
        for body in [
            &[0x41][..],
            &[0x00, 0x53, 0x14, 0x45],
            &[0x00, 0x53, 0x99, 0x45],
            &[0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0xa1],
        ] {
            let mut wire = Vec::new();
            put_frame(&mut wire, FrameKind::Amqp, 0, body, &[]);
            assert!(Performative::decode(&frames(&wire)[0]).is_err(), "{body:?}");
        }
    }
}
