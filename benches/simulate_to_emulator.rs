//! `simulate_to_emulator`: events/s the device simulator pushes into the in-process emulator over AMQP
//! (SASL ANONYMOUS + CBS, one sender link to `hub`, partitioned by device id, 256 unsettled transfers
//! in flight), with ~500-byte telemetry JSON from 100 devices. Each iteration opens a new connection,
//! so connect and attach time is included; the emulator keeps growing, as a real one does.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubroute_emulator::simulate::{
    Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
};
use hubroute_emulator::{Emulator, EmulatorConfig};
use hubroute_protocol::ConnectionString;

const EVENTS: u64 = 20_000;

fn simulate_to_emulator(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let emulator = runtime.block_on(async {
        let config = EmulatorConfig {
            amqp_listen: "127.0.0.1:0".parse().expect("valid address"),
            ..EmulatorConfig::default()
        };
        Emulator::start(config).await.expect("emulator starts")
    });
    let connection_string = ConnectionString::parse(&emulator.connection_string("hub"))
        .expect("valid connection string");
    let mut config = SimulationConfig::new(SimulationTarget::Amqp {
        connection_string,
        partition: None,
    });
    config.rate = Rate::Max;
    config.stop = StopAfter::Events(EVENTS);

    let mut group = c.benchmark_group("simulate_to_emulator");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("amqp_100_devices_500b_json", |b| {
        b.to_async(&runtime).iter(|| async {
            let report = Simulation::new(config.clone())
                .run()
                .await
                .expect("simulation runs");
            assert_eq!(report.sent, EVENTS, "every event acknowledged");
        });
    });
    group.finish();
    runtime
        .block_on(emulator.shutdown())
        .expect("emulator stops");
}

criterion_group!(benches, simulate_to_emulator);
criterion_main!(benches);
