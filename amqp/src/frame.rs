//! Frames on the wire (part 2, section 2.3): protocol headers, the 8-byte frame header, and a read
//! buffer that cuts frames out of a byte stream without copying them.
//!
//! [`FrameBuffer`] owns one growable buffer per connection. Socket reads append to it and
//! [`FrameBuffer::next_frame`] splits complete frames off its front as [`Bytes`] that share the
//! allocation, so a transfer's payload reaches the decoder in place. Once every handed-out frame is
//! dropped the buffer reuses its memory, so steady-state reading allocates nothing.
//!
//! Writers append frames to a `Vec<u8>` with [`put_frame`]; a connection flushes that buffer with
//! one write for many frames, which is what keeps the per-message system call cost small.

use bytes::{Buf, Bytes, BytesMut};

use crate::{Error, Result};

/// The header that opens an AMQP connection (protocol id 0).
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// The header that opens a SASL layer (protocol id 3).
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// The header that asks for TLS (protocol id 2); Event Hubs does not use it.
pub const TLS_HEADER: [u8; 8] = *b"AMQP\x02\x01\x00\x00";
/// The smallest `max-frame-size` a peer may announce (part 2, section 2.7.1).
pub const MIN_MAX_FRAME_SIZE: u32 = 512;
/// The frame header length with no extended header.
pub const HEADER_LEN: usize = 8;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An AMQP performative (type 0).
    Amqp,
    /// A SASL frame (type 1).
    Sasl,
}

/// One frame cut from the stream.
#[derive(Debug, Clone)]
pub struct Frame {
    /// AMQP or SASL.
    pub kind: FrameKind,
    /// The channel (AMQP frames only).
    pub channel: u16,
    /// The performative and any payload, after the extended header. Empty for a heartbeat.
    pub body: Bytes,
}

/// Accumulates bytes read from a connection and splits them into frames.
#[derive(Debug)]
pub struct FrameBuffer {
    buffer: BytesMut,
    max_frame_size: u32,
}

impl FrameBuffer {
    /// A buffer accepting frames up to `max_frame_size` bytes (what this side announced in Open).
    pub fn new(max_frame_size: u32) -> Self {
        Self {
            buffer: BytesMut::with_capacity(64 * 1024),
            max_frame_size,
        }
    }

    /// Changes the largest accepted frame (after Open).
    pub fn set_max_frame_size(&mut self, max_frame_size: u32) {
        self.max_frame_size = max_frame_size;
    }

    /// The buffer to read into; reserves room for at least one more read.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        if self.buffer.capacity() - self.buffer.len() < 16 * 1024 {
            self.buffer.reserve(64 * 1024);
        }
        &mut self.buffer
    }

    /// Bytes read but not yet cut into frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Takes an 8-byte protocol header off the front, if one is complete.
    pub fn next_protocol_header(&mut self) -> Option<[u8; 8]> {
        if self.buffer.len() < 8 {
            return None;
        }
        let mut header = [0; 8];
        header.copy_from_slice(&self.buffer[..8]);
        self.buffer.advance(8);
        Some(header)
    }

    /// Cuts the next complete frame off the front, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let size = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]);
        let doff = usize::from(self.buffer[4]) * 4;
        if (size as usize) < HEADER_LEN || doff < HEADER_LEN || doff > size as usize {
            return Err(Error::Framing(format!(
                "a frame of {size} bytes with data offset {doff}"
            )));
        }
        if size > self.max_frame_size {
            return Err(Error::Framing(format!(
                "a frame of {size} bytes exceeds the max-frame-size of {}",
                self.max_frame_size
            )));
        }
        if self.buffer.len() < size as usize {
            self.buffer.reserve(size as usize - self.buffer.len());
            return Ok(None);
        }
        let kind = match self.buffer[5] {
            0 => FrameKind::Amqp,
            1 => FrameKind::Sasl,
            other => return Err(Error::Framing(format!("unknown frame type {other}"))),
        };
        let channel = u16::from_be_bytes([self.buffer[6], self.buffer[7]]);
        let mut frame = self.buffer.split_to(size as usize);
        frame.advance(doff);
        Ok(Some(Frame {
            kind,
            channel,
            body: frame.freeze(),
        }))
    }
}

/// Appends one frame: header, `body` (a performative) and `payload`.
pub fn put_frame(out: &mut Vec<u8>, kind: FrameKind, channel: u16, body: &[u8], payload: &[u8]) {
    let size = (HEADER_LEN + body.len() + payload.len()) as u32;
    out.extend_from_slice(&size.to_be_bytes());
    out.push(2);
    out.push(match kind {
        FrameKind::Amqp => 0,
        FrameKind::Sasl => 1,
    });
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(payload);
}

/// Appends an empty frame, the heartbeat that keeps an idle connection open.
pub fn put_heartbeat(out: &mut Vec<u8>) {
    put_frame(out, FrameKind::Amqp, 0, &[], &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_come_out_whole_and_in_order() {
        let mut wire = Vec::new();
        put_frame(&mut wire, FrameKind::Sasl, 0, b"sasl", &[]);
        put_frame(&mut wire, FrameKind::Amqp, 3, b"perf", b"payload");
        put_heartbeat(&mut wire);
        let mut buffer = FrameBuffer::new(1024);
        let mut frames = Vec::new();
        for byte in wire {
            buffer.read_buffer().extend_from_slice(&[byte]);
            while let Some(frame) = buffer.next_frame().expect("valid frames") {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(
            (frames[0].kind, &frames[0].body[..]),
            (FrameKind::Sasl, &b"sasl"[..])
        );
        assert_eq!(
            (frames[1].channel, &frames[1].body[..]),
            (3, &b"perfpayload"[..])
        );
        assert!(frames[2].body.is_empty());
        assert_eq!(buffer.buffered(), 0);
    }

    #[test]
    fn extended_headers_are_skipped() {
        let mut wire = vec![0, 0, 0, 16, 3, 0, 0, 1, 9, 9, 9, 9];
        wire.extend_from_slice(b"body");
        let mut buffer = FrameBuffer::new(1024);
        buffer.read_buffer().extend_from_slice(&wire);
        let frame = buffer.next_frame().expect("valid").expect("complete");
        assert_eq!(&frame.body[..], b"body");
    }

    #[test]
    fn bad_headers_and_oversize_frames_are_framing_errors() {
        for wire in [
            vec![0, 0, 0, 4, 2, 0, 0, 0],
            vec![0, 0, 0, 8, 1, 0, 0, 0],
            vec![0, 0, 0, 8, 3, 0, 0, 0],
            vec![0, 0, 0, 8, 2, 7, 0, 0],
            vec![0, 1, 0, 0, 2, 0, 0, 0],
        ] {
            let mut buffer = FrameBuffer::new(1024);
            buffer.read_buffer().extend_from_slice(&wire);
            assert!(buffer.next_frame().is_err(), "{wire:?}");
        }
    }
}
