//! Tests of the twin store's life cycle live end to end in `tests/e2e/twins.rs`, against the
//! emulator's IoT Hub service API; this file covers what needs no service.

use super::*;

#[test]
fn without_a_twins_section_batches_pass_unchanged() {
    let twins = Twins::default();
    let batch =
        hubroute_message::MessageBatchBuilder::batch_of(&[hubroute_message::Message::telemetry(
            "{}",
        )])
        .unwrap();
    let attached = twins.attach(batch.clone()).unwrap();
    assert_eq!(attached, batch);
}
