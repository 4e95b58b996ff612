//! The engine's Prometheus metrics: one registry, the metric families the pipeline updates, and the
//! text exposition served at `/metrics`.
//!
//! Names follow Prometheus conventions (`_total` counters, base units in the name). Labels are the
//! configuration's own names (route, endpoint, partition), so a dashboard reads like the config file.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::ownership::OwnershipMetrics;
use crate::twins::TwinMetrics;

/// Label set of one metric series: (label name, value) pairs.
pub(crate) type Labels = Vec<(&'static str, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn commit_latency_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the engine exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) route_matched: Family<Labels, Counter>,
    pub(crate) route_undefined: Family<Labels, Counter>,
    pub(crate) fallback_matched: Counter,
    pub(crate) events_routed: Counter,
    pub(crate) endpoint_delivered: Family<Labels, Counter>,
    pub(crate) endpoint_failed: Family<Labels, Counter>,
    pub(crate) endpoint_dead_lettered: Family<Labels, Counter>,
    pub(crate) endpoint_queue_depth: Family<Labels, Gauge>,
    pub(crate) endpoint_health: Family<Labels, Gauge>,
    pub(crate) endpoint_commit_latency: HistogramFamily,
    pub(crate) endpoint_parked_rows: Family<Labels, Counter>,
    pub(crate) endpoint_parked_bytes: Family<Labels, Counter>,
    pub(crate) endpoint_replayed_rows: Family<Labels, Counter>,
    pub(crate) endpoint_parked_objects: Family<Labels, Gauge>,
    pub(crate) endpoint_probes: Family<Labels, Counter>,
    pub(crate) endpoint_state_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    pub(crate) partition_events: Family<Labels, Counter>,
    pub(crate) partition_uncommitted_batches: Family<Labels, Gauge>,
    pub(crate) partition_lag_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    pub(crate) partition_lag_events: Family<Labels, Gauge>,
    pub(crate) partition_checkpoint_sequence_number: Family<Labels, Gauge>,
    pub(crate) config_reloads: Family<Labels, Counter>,
    pub(crate) source_reconnects: Gauge,
    pub(crate) source_buffered_bytes: Gauge,
    pub(crate) twins: TwinMetrics,
    ownership: OwnershipMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("hubroute"),
            route_matched: Family::default(),
            route_undefined: Family::default(),
            fallback_matched: Counter::default(),
            events_routed: Counter::default(),
            endpoint_delivered: Family::default(),
            endpoint_failed: Family::default(),
            endpoint_dead_lettered: Family::default(),
            endpoint_queue_depth: Family::default(),
            endpoint_health: Family::default(),
            endpoint_commit_latency: Family::new_with_constructor(commit_latency_histogram),
            endpoint_parked_rows: Family::default(),
            endpoint_parked_bytes: Family::default(),
            endpoint_replayed_rows: Family::default(),
            endpoint_parked_objects: Family::default(),
            endpoint_probes: Family::default(),
            endpoint_state_seconds: Family::default(),
            partition_events: Family::default(),
            partition_uncommitted_batches: Family::default(),
            partition_lag_seconds: Family::default(),
            partition_lag_events: Family::default(),
            partition_checkpoint_sequence_number: Family::default(),
            config_reloads: Family::default(),
            source_reconnects: Gauge::default(),
            source_buffered_bytes: Gauge::default(),
            twins: TwinMetrics::default(),
            ownership: OwnershipMetrics::default(),
        };
        metrics.registry.register(
            "route_matched",
            "Messages a route matched (its condition was true)",
            metrics.route_matched.clone(),
        );
        metrics.registry.register(
            "route_undefined",
            "Messages for which a route's condition was undefined (IoT Hub treats them as not matched)",
            metrics.route_undefined.clone(),
        );
        metrics.registry.register(
            "fallback_matched",
            "Device messages delivered by the fallback route",
            metrics.fallback_matched.clone(),
        );
        metrics.registry.register(
            "events_routed",
            "Events read from the source and routed",
            metrics.events_routed.clone(),
        );
        metrics.registry.register(
            "endpoint_delivered",
            "Messages an endpoint committed",
            metrics.endpoint_delivered.clone(),
        );
        metrics.registry.register(
            "endpoint_failed",
            "Messages an endpoint rejected permanently",
            metrics.endpoint_failed.clone(),
        );
        metrics.registry.register(
            "endpoint_dead_lettered",
            "Messages written to the dead-letter store for an endpoint",
            metrics.endpoint_dead_lettered.clone(),
        );
        metrics.registry.register(
            "endpoint_queue_depth",
            "Batches waiting in an endpoint's queue",
            metrics.endpoint_queue_depth.clone(),
        );
        metrics.registry.register(
            "endpoint_health",
            "1 for an endpoint's current health status (unknown, healthy, degraded, unhealthy, dead)",
            metrics.endpoint_health.clone(),
        );
        metrics.registry.register(
            "endpoint_commit_latency_seconds",
            "Time from a message's enqueued time to its commit by an endpoint",
            metrics.endpoint_commit_latency.clone(),
        );
        metrics.registry.register(
            "endpoint_parked_rows",
            "Messages of a dead endpoint parked in the dead-letter store for automatic replay",
            metrics.endpoint_parked_rows.clone(),
        );
        metrics.registry.register(
            "endpoint_parked_bytes",
            "Body bytes of the messages parked for an endpoint",
            metrics.endpoint_parked_bytes.clone(),
        );
        metrics.registry.register(
            "endpoint_replayed_rows",
            "Parked messages replayed to an endpoint after it recovered",
            metrics.endpoint_replayed_rows.clone(),
        );
        metrics.registry.register(
            "endpoint_parked_objects",
            "Parked dead-letter objects of an endpoint still to replay (replay progress)",
            metrics.endpoint_parked_objects.clone(),
        );
        metrics.registry.register(
            "endpoint_probes",
            "Health probes of a parked endpoint by outcome (up: its parked rows are replayed next; \
             down: probed again after a backoff)",
            metrics.endpoint_probes.clone(),
        );
        metrics.registry.register(
            "endpoint_state_seconds",
            "Time an endpoint spent in each delivery state (live, parked)",
            metrics.endpoint_state_seconds.clone(),
        );
        metrics.registry.register(
            "partition_events",
            "Events read from a partition",
            metrics.partition_events.clone(),
        );
        metrics.registry.register(
            "partition_uncommitted_batches",
            "Batches of a partition routed but not yet committed by every endpoint",
            metrics.partition_uncommitted_batches.clone(),
        );
        metrics.registry.register(
            "partition_lag_seconds",
            "Age of the newest event read from a partition when it was routed",
            metrics.partition_lag_seconds.clone(),
        );
        metrics.registry.register(
            "partition_lag_events",
            "Events enqueued in a partition and not yet committed by every endpoint (before the \
             first commit: every retained event)",
            metrics.partition_lag_events.clone(),
        );
        metrics.registry.register(
            "partition_checkpoint_sequence_number",
            "Sequence number of a partition's last written checkpoint",
            metrics.partition_checkpoint_sequence_number.clone(),
        );
        metrics.registry.register(
            "source_reconnects",
            "Reconnects of the partition receivers after transient faults since start",
            metrics.source_reconnects.clone(),
        );
        metrics.registry.register(
            "source_buffered_bytes",
            "Bytes of [source] max_buffered_bytes held by batches being built or routed and by body buffers kept for reuse",
            metrics.source_buffered_bytes.clone(),
        );
        metrics.registry.register(
            "config_reloads",
            "Configuration reloads by outcome (applied, rejected)",
            metrics.config_reloads.clone(),
        );
        metrics.twins.register(&mut metrics.registry);
        metrics.ownership.register(&mut metrics.registry);
        metrics
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Messages route `route` has matched so far.
    pub fn route_matched(&self, route: &str) -> u64 {
        self.route_matched.get_or_create(&route_labels(route)).get()
    }

    /// Messages endpoint `endpoint` has committed so far.
    pub fn endpoint_delivered(&self, endpoint: &str) -> u64 {
        self.endpoint_delivered
            .get_or_create(&endpoint_labels(endpoint))
            .get()
    }

    /// Events routed so far.
    pub fn events_routed(&self) -> u64 {
        self.events_routed.get()
    }

    /// Creates the per-route, per-endpoint and per-partition counters that dashboards and alerts
    /// read (matches, deliveries, failures, dead letters, parked rows, events) at zero, so that
    /// they see `0` rather than no series before the first match, failure or event (a series
    /// that appears only with its first failure hides that failure from `rate()`).
    pub(crate) fn initialise_series<'a>(
        &self,
        routes: impl IntoIterator<Item = &'a str>,
        endpoints: impl IntoIterator<Item = &'a str>,
        partitions: impl IntoIterator<Item = &'a str>,
    ) {
        for route in routes {
            let labels = route_labels(route);
            let _ = self.route_matched.get_or_create(&labels);
            let _ = self.route_undefined.get_or_create(&labels);
        }
        for endpoint in endpoints {
            let labels = endpoint_labels(endpoint);
            let _ = self.endpoint_delivered.get_or_create(&labels);
            let _ = self.endpoint_failed.get_or_create(&labels);
            let _ = self.endpoint_dead_lettered.get_or_create(&labels);
            // Any endpoint is parked once it is dead. (Its bytes, replays and probes appear with
            // the first park: `top` and the status page show them as extra columns only then.)
            let _ = self.endpoint_parked_rows.get_or_create(&labels);
        }
        for partition in partitions {
            let labels = partition_labels(partition);
            let _ = self.partition_events.get_or_create(&labels);
        }
    }

    /// The twin store's metrics.
    pub(crate) fn twins(&self) -> &TwinMetrics {
        &self.twins
    }

    /// Partition ownership's metrics.
    pub(crate) fn ownership(&self) -> &OwnershipMetrics {
        &self.ownership
    }
}

pub(crate) fn route_labels(route: &str) -> Labels {
    vec![("route", route.to_owned())]
}

pub(crate) fn endpoint_labels(endpoint: &str) -> Labels {
    vec![("endpoint", endpoint.to_owned())]
}

pub(crate) fn partition_labels(partition: &str) -> Labels {
    vec![("partition", partition.to_owned())]
}
