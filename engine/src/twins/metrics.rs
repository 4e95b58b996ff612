//! The twin store's Prometheus metrics, registered into the engine's registry by
//! `pipeline::metrics`. Handles are cheap clones sharing one value, so the store, its background
//! task and the exposition all see the same series.
//!
//! The last resync's time and age are computed at each scrape from one stored instant, and are
//! absent until a full query completed or a snapshot was restored: a gauge left at 0 would claim
//! a resync in 1970 (an age of decades), and an age updated by the background task would stop
//! growing while that task waits on a failing query, just when it matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every twin metric.
#[derive(Debug, Clone, Default)]
pub(crate) struct TwinMetrics {
    held: Gauge,
    bytes: Gauge,
    loaded: Gauge,
    last_resync: ResyncClock,
    resyncs: Family<Labels, Counter>,
    patches_applied: Counter,
    patches_stale: Counter,
    patches_unknown: Counter,
    requests: Family<Labels, Counter>,
}

impl TwinMetrics {
    /// Registers every series under the registry's prefix (`hubroute_`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "twins_held",
            "Device and module twins held by the twin store",
            self.held.clone(),
        );
        registry.register(
            "twins_bytes",
            "Estimated memory of the twin store (twin JSON, keys and per-entry overhead)",
            self.bytes.clone(),
        );
        registry.register(
            "twins_loaded",
            "1 once every twin is loaded (routing waits for it unless start_without_twins); 0 while \
             routing runs without twins",
            self.loaded.clone(),
        );
        registry.register_collector(Box::new(self.last_resync.clone()));
        registry.register(
            "twins_resyncs",
            "Full twin queries by outcome (ok, failed)",
            self.resyncs.clone(),
        );
        for outcome in ["ok", "failed"] {
            let _ = self
                .resyncs
                .get_or_create(&vec![("outcome", outcome.to_owned())]);
        }
        registry.register(
            "twin_patches_applied",
            "Twin change and lifecycle events applied to the twin store",
            self.patches_applied.clone(),
        );
        registry.register(
            "twin_patches_stale",
            "Twin events skipped because the stored twin's version was as new or newer",
            self.patches_stale.clone(),
        );
        registry.register(
            "twin_patches_unknown",
            "Twin patches for a twin the store did not hold (the twin is then read from the service)",
            self.patches_unknown.clone(),
        );
        registry.register(
            "twin_service_requests",
            "Requests to IoT Hub's service API by operation and HTTP status (`unreachable` when no \
             answer came)",
            self.requests.clone(),
        );
    }

    pub(crate) fn set_held(&self, twins: usize, bytes: usize) {
        self.held.set(i64::try_from(twins).unwrap_or(i64::MAX));
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_loaded(&self, loaded: bool) {
        self.loaded.set(i64::from(loaded));
    }

    /// A full query that started at `unix_ms` completed.
    pub(crate) fn resync_done(&self, unix_ms: i64) {
        self.last_resync.set(unix_ms);
        self.resyncs
            .get_or_create(&vec![("outcome", "ok".to_owned())])
            .inc();
    }

    /// A snapshot was restored whose last full query started at `unix_ms` (not a query itself).
    pub(crate) fn restored(&self, unix_ms: i64) {
        self.last_resync.set(unix_ms);
    }

    pub(crate) fn resync_failed(&self) {
        self.resyncs
            .get_or_create(&vec![("outcome", "failed".to_owned())])
            .inc();
    }

    pub(crate) fn patches(&self, applied: u64, stale: u64, unknown: u64) {
        self.patches_applied.inc_by(applied);
        self.patches_stale.inc_by(stale);
        self.patches_unknown.inc_by(unknown);
    }

    pub(crate) fn request(&self, operation: &'static str, status: &str) {
        self.requests
            .get_or_create(&vec![
                ("operation", operation.to_owned()),
                ("status", status.to_owned()),
            ])
            .inc();
    }

    /// Twins held.
    pub(crate) fn held(&self) -> i64 {
        self.held.get()
    }
}

/// When the twins were last queried in full (Unix ms; 0: never), exposed as
/// `twins_last_resync_timestamp_seconds` and `twins_resync_age_seconds`.
#[derive(Debug, Clone, Default)]
struct ResyncClock(Arc<AtomicI64>);

impl ResyncClock {
    fn set(&self, unix_ms: i64) {
        self.0.store(unix_ms, Ordering::Relaxed);
    }
}

impl Collector for ResyncClock {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let at_ms = self.0.load(Ordering::Relaxed);
        if at_ms <= 0 {
            return Ok(());
        }
        #[expect(clippy::cast_precision_loss, reason = "times in seconds")]
        let (at, age) = (
            at_ms as f64 / 1000.0,
            (chrono::Utc::now().timestamp_millis() - at_ms).max(0) as f64 / 1000.0,
        );
        for (name, help, value) in [
            (
                "twins_last_resync_timestamp_seconds",
                "Unix time at which the last completed full twin query started (absent until one \
                 completed or a snapshot was restored)",
                at,
            ),
            (
                "twins_resync_age_seconds",
                "Seconds since the last completed full twin query started (absent until one \
                 completed or a snapshot was restored)",
                age,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &TwinMetrics) -> String {
        let mut registry = Registry::with_prefix("hubroute");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn resync_time_and_age_appear_once_known_and_age_at_each_scrape() {
        let metrics = TwinMetrics::default();
        let text = exposition(&metrics);
        assert!(
            !text.contains("resync_age"),
            "nothing to report before a query:\n{text}"
        );
        assert!(!text.contains("last_resync"), "{text}");
        assert_eq!(
            value(&text, "hubroute_twins_resyncs_total{outcome=\"ok\"}"),
            Some(0.0)
        );

        let ten_minutes_ago = chrono::Utc::now().timestamp_millis() - 600_000;
        metrics.restored(ten_minutes_ago);
        let text = exposition(&metrics);
        #[expect(clippy::cast_precision_loss, reason = "a time in seconds")]
        let at = ten_minutes_ago as f64 / 1000.0;
        assert_eq!(
            value(&text, "hubroute_twins_last_resync_timestamp_seconds"),
            Some(at)
        );
        let age = value(&text, "hubroute_twins_resync_age_seconds").unwrap();
        assert!(
            (600.0..610.0).contains(&age),
            "computed when scraped: {age}"
        );
        assert_eq!(
            value(&text, "hubroute_twins_resyncs_total{outcome=\"ok\"}"),
            Some(0.0),
            "a restored snapshot is not a query"
        );

        metrics.resync_done(chrono::Utc::now().timestamp_millis());
        let text = exposition(&metrics);
        assert!(value(&text, "hubroute_twins_resync_age_seconds").unwrap() < 10.0);
        assert_eq!(
            value(&text, "hubroute_twins_resyncs_total{outcome=\"ok\"}"),
            Some(1.0)
        );
    }
}
