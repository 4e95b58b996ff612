//! `route_eval`: events/s through `RouteSet::evaluate` for 1, 10 and 100 routes over batches of
//! ~500-byte telemetry JSON, each route reading body paths and application properties. Shared
//! extraction means the JSON is parsed once per message whatever the route count, so the ratio of
//! the 100-route to the 1-route figure is the cost of the conditions themselves.

use std::hint::black_box;

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, SystemProperties};
use hubroute_queries::RouteSet;

const BATCH_ROWS: usize = 4_096;

fn batch() -> RecordBatch {
    let messages: Vec<Message> = (0..BATCH_ROWS)
        .map(|n| {
            let mut m = Message::telemetry(format!(
                r#"{{"deviceId":"pump-{}","temperature":{}.5,"humidity":{},"status":{{"state":"{}","code":{}}},"pad":"{:0>380}"}}"#,
                n % 100,
                n % 40,
                n % 90,
                if n % 3 == 0 { "ok" } else { "alarm" },
                n % 7,
                n
            ));
            m.system = SystemProperties {
                content_type: Some("application/json".to_owned()),
                content_encoding: Some("utf-8".to_owned()),
                connection_device_id: Some(format!("pump-{}", n % 100)),
                ..SystemProperties::default()
            };
            m.application_properties = vec![
                ("severity".to_owned(), AppPropertyValue::String((n % 5).to_string())),
                ("site".to_owned(), AppPropertyValue::String(format!("site-{}", n % 8))),
            ];
            m
        })
        .collect();
    MessageBatchBuilder::batch_of(&messages).expect("batch builds")
}

/// `count` distinct conditions in the shapes real hubs use.
fn conditions(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 4 {
            0 => format!(
                "$body.temperature > {} AND $body.status.state = 'alarm'",
                i % 40
            ),
            1 => format!(
                "as_number(severity) >= {} OR site = 'site-{}'",
                i % 5,
                i % 8
            ),
            2 => format!(
                "$connectionDeviceId = 'pump-{}' AND $body.humidity < {}",
                i % 100,
                i % 90
            ),
            _ => format!(
                "is_defined($body.status.code) AND $body.status.code = {}",
                i % 7
            ),
        })
        .collect()
}

fn route_eval(c: &mut Criterion) {
    let batch = batch();
    let mut group = c.benchmark_group("route_eval");
    group.throughput(Throughput::Elements(BATCH_ROWS as u64));
    for routes in [1, 10, 100] {
        let conditions = conditions(routes);
        let set = RouteSet::compile(conditions.iter().map(String::as_str)).expect("compiles");
        group.bench_function(format!("{routes}_routes"), |b| {
            b.iter(|| black_box(set.evaluate(black_box(&batch)).expect("evaluates")));
        });
    }
    group.finish();
}

criterion_group!(benches, route_eval);
criterion_main!(benches);
