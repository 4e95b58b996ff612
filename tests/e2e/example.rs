//! The shipped `examples/routing.toml` routes what `hubroute simulate` sends: every enabled route over
//! device messages matches some of the simulator's telemetry, built as the simulator sends it.

use std::num::NonZeroU32;

use hubroute_emulator::simulate::{DeviceMessage, TelemetryGenerator};
use hubroute_engine::config::{LoadedConfig, RouteSource};
use hubroute_engine::routing::RoutingTable;
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder};

use crate::support::workspace_root;

/// A simulated message as the simulator's AMQP producer sends it: JSON in UTF-8, the message id,
/// and the `deviceId` and telemetry application properties.
fn as_sent(device: DeviceMessage) -> Message {
    let mut message = Message::telemetry(device.body);
    message.system.message_id = Some(device.message_id);
    message.system.content_type = Some("application/json".to_owned());
    message.system.content_encoding = Some("utf-8".to_owned());
    message.application_properties = std::iter::once(("deviceId", device.device_id))
        .chain(device.properties)
        .map(|(name, value)| (name.to_owned(), AppPropertyValue::String(value)))
        .collect();
    message
}

#[test]
fn every_device_message_route_of_the_example_matches_simulated_telemetry() {
    const EVENTS: usize = 1000;
    let loaded = LoadedConfig::load(&workspace_root().join("examples/routing.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let table = RoutingTable::compile(&loaded).unwrap_or_else(|e| panic!("{e}"));
    let mut generator = TelemetryGenerator::new(0, NonZeroU32::new(100).expect("non-zero"));
    let messages: Vec<Message> = (0..EVENTS)
        .map(|_| as_sent(generator.next_message()))
        .collect();
    let batch = MessageBatchBuilder::batch_of(&messages).expect("a message batch");
    let routed = table.route(&batch).expect("routing");
    let device_routes = loaded
        .config
        .routes
        .iter()
        .zip(&routed.matched)
        .filter(|(route, _)| route.enabled && route.source == RouteSource::DeviceMessages);
    for (route, &matched) in device_routes {
        assert!(
            matched > 0,
            "route `{}` ({}) matches none of {EVENTS} simulated messages",
            route.name,
            route.condition.get_ref()
        );
    }
}
