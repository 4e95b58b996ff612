//! Fuzzes the route condition front end and evaluator: any input must either compile or produce a
//! positioned error (never panic), and whatever compiles must evaluate over a batch without panicking
//! and agree with single-message evaluation.

#![no_main]

use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, SystemProperties};
use libfuzzer_sys::fuzz_target;

fn message() -> Message {
    let mut message = Message::telemetry(
        r#"{"a":{"b":[1,"x",null,{"c":true}]},"n":-2.5,"s":"héllo"}"#
            .as_bytes()
            .to_vec(),
    );
    message.system = SystemProperties {
        content_type: Some("application/json".to_owned()),
        content_encoding: Some("utf-8".to_owned()),
        ..SystemProperties::default()
    };
    message.application_properties = vec![
        ("p".to_owned(), AppPropertyValue::String("1".to_owned())),
        (
            "$contentType".to_owned(),
            AppPropertyValue::String("x".to_owned()),
        ),
    ];
    message.twin = Some(r#"{"tags":{"t":"v"}}"#.to_owned());
    message
}

fuzz_target!(|data: &[u8]| {
    let Ok(condition) = std::str::from_utf8(data) else {
        return;
    };
    match hubroute_queries::compile(condition) {
        Ok(compiled) => {
            let message = message();
            let single = compiled.evaluate_message(&message).expect("evaluates");
            let batch = MessageBatchBuilder::batch_of(&[message.clone(), message]).expect("batch");
            let rows = compiled.evaluate(&batch).expect("evaluates");
            assert_eq!(rows, vec![single, single]);
        }
        Err(error) => {
            let diagnostic = error.diagnostic().expect("compile errors are positioned");
            assert!(diagnostic.line >= 1 && diagnostic.column >= 1);
        }
    }
});
