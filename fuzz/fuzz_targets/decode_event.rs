//! Fuzzes the receive path's decoding of a transfer payload: any bytes must either become exactly one
//! row or come back as a malformed event with a reason, never panic, and a malformed event must leave
//! the batch being built untouched (the next good event still decodes into a consistent batch).

#![no_main]

use bytes::Bytes;
use hubroute_amqp::codec;
use hubroute_amqp::message::section;
use hubroute_engine::source::MessageDecoder;
use libfuzzer_sys::fuzz_target;

/// A well-formed event: the position annotations and one data section.
fn good() -> Bytes {
    let mut annotations = Vec::new();
    codec::put_symbol(&mut annotations, "x-opt-sequence-number");
    codec::put_long(&mut annotations, 7);
    codec::put_symbol(&mut annotations, "x-opt-offset");
    codec::put_string(&mut annotations, "9");
    codec::put_symbol(&mut annotations, "x-opt-enqueued-time");
    codec::put_timestamp(&mut annotations, 1);
    let mut event = Vec::new();
    codec::put_descriptor(&mut event, section::MESSAGE_ANNOTATIONS);
    codec::put_map(&mut event, 6, &annotations);
    codec::put_descriptor(&mut event, section::DATA);
    codec::put_binary(&mut event, b"{}");
    Bytes::from(event)
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = MessageDecoder::new("hub", "0");
    let appended = decoder.append(&Bytes::copy_from_slice(data)).is_ok();
    assert_eq!(decoder.len(), usize::from(appended));
    decoder
        .append(&good())
        .expect("a well-formed event decodes after any other input");
    let batch = decoder.finish().expect("the batch stays consistent");
    assert_eq!(batch.num_rows(), usize::from(appended) + 1);
});
