//! `amqp_decode`: events/s from encoded AMQP messages (transfer payloads as they come off the wire)
//! into Arrow message batches (`MessageDecoder`, 8192-row batches), with IoT Hub-shaped 500-byte JSON
//! telemetry: the usual annotations, message id, content type/encoding and two application
//! properties.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use hubroute_engine::source::MessageDecoder;

const EVENTS: usize = 16_384;
const BATCH_ROWS: usize = 8_192;

fn messages() -> Vec<Bytes> {
    (0..EVENTS)
        .map(|n| {
            let sequence_number = i64::try_from(n).expect("small");
            let body = format!(
                r#"{{"deviceId":"pump-{}","temperature":{}.5,"pad":"{:0>440}"}}"#,
                n % 100,
                n % 40,
                n
            );
            let annotations = MessageAnnotations::builder()
                .insert(
                    Symbol::from("x-opt-sequence-number"),
                    Value::Long(sequence_number),
                )
                .insert(
                    Symbol::from("x-opt-offset"),
                    Value::String((sequence_number * 600).to_string()),
                )
                .insert(
                    Symbol::from("x-opt-enqueued-time"),
                    Value::Timestamp(Timestamp::from_milliseconds(
                        1_700_000_000_000 + sequence_number,
                    )),
                )
                .insert(
                    Symbol::from("iothub-connection-device-id"),
                    Value::String(format!("pump-{}", n % 100)),
                )
                .insert(
                    Symbol::from("iothub-message-source"),
                    Value::String("Telemetry".to_owned()),
                )
                .insert(
                    Symbol::from("iothub-enqueuedtime"),
                    Value::Timestamp(Timestamp::from_milliseconds(
                        1_700_000_000_000 + sequence_number,
                    )),
                )
                .build();
            let properties = Properties {
                message_id: Some(MessageId::String(format!("msg-{n}"))),
                content_type: Some(Symbol::from("application/json")),
                content_encoding: Some(Symbol::from("utf-8")),
                ..Properties::default()
            };
            let application_properties = ApplicationProperties::builder()
                .insert(
                    "alert",
                    SimpleValue::String(if n % 10 == 0 { "true" } else { "false" }.to_owned()),
                )
                .insert(
                    "level",
                    SimpleValue::Int(i32::try_from(n % 5).expect("small")),
                )
                .build();
            let message: Message<Body<Value>> = Message::builder()
                .message_annotations(annotations)
                .properties(properties)
                .application_properties(application_properties)
                .body(Body::Data(
                    vec![Data(Binary::from(body.into_bytes()))].into(),
                ))
                .build();
            Bytes::from(serde_amqp::to_vec(&Serializable(message)).expect("encodes"))
        })
        .collect()
}

fn amqp_decode(c: &mut Criterion) {
    let input = messages();
    let mut group = c.benchmark_group("amqp_decode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("iothub_500b_json", |b| {
        let mut decoder = MessageDecoder::new("hub", "0");
        b.iter(|| {
            for chunk in input.chunks(BATCH_ROWS) {
                for message in chunk {
                    decoder.append(message).expect("valid event");
                }
                black_box(decoder.finish().expect("valid batch"));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, amqp_decode);
criterion_main!(benches);
