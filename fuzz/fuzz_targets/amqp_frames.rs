//! Fuzzes the wire layer a peer controls: frames cut from an arbitrary byte stream, each decoded as
//! a performative (hand-decoded transfers included) and every transfer payload walked as a message.
//! Nothing may panic, loop or allocate beyond what the input holds.

#![no_main]

use hubroute_amqp::frame::{FrameBuffer, FrameKind};
use hubroute_amqp::message::{MessageView, Properties, entries};
use hubroute_amqp::performative::{Performative, Sasl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frames = FrameBuffer::new(1 << 20);
    frames.read_buffer().extend_from_slice(data);
    while let Ok(Some(frame)) = frames.next_frame() {
        match frame.kind {
            FrameKind::Sasl => {
                let _ = Sasl::decode(&frame);
            }
            FrameKind::Amqp => {
                if let Ok(Performative::Transfer(transfer)) = Performative::decode(&frame)
                    && let Ok(view) = MessageView::parse(&transfer.payload)
                {
                    if let Some(properties) = view.properties {
                        let _ = Properties::read(properties);
                    }
                    for map in [view.message_annotations, view.application_properties]
                        .into_iter()
                        .flatten()
                    {
                        for entry in entries(map) {
                            if entry.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
});
