//! The twin store's Prometheus metrics, registered into the engine's registry by
//! `pipeline::metrics`. Handles are cheap clones sharing one value, so the store, its background
//! task and the exposition all see the same series.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every twin metric.
#[derive(Debug, Clone, Default)]
pub(crate) struct TwinMetrics {
    held: Gauge,
    bytes: Gauge,
    loaded: Gauge,
    last_resync: Gauge<f64, AtomicU64>,
    resync_age: Gauge<f64, AtomicU64>,
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
        registry.register(
            "twins_last_resync_timestamp_seconds",
            "Unix time of the last completed full twin query",
            self.last_resync.clone(),
        );
        registry.register(
            "twins_resync_age_seconds",
            "Seconds since the last completed full twin query",
            self.resync_age.clone(),
        );
        registry.register(
            "twins_resyncs",
            "Full twin queries by outcome (ok, failed)",
            self.resyncs.clone(),
        );
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

    pub(crate) fn resync_done(&self, unix_seconds: f64) {
        self.last_resync.set(unix_seconds);
        self.resync_age.set(0.0);
        self.resyncs
            .get_or_create(&vec![("outcome", "ok".to_owned())])
            .inc();
    }

    pub(crate) fn resync_failed(&self) {
        self.resyncs
            .get_or_create(&vec![("outcome", "failed".to_owned())])
            .inc();
    }

    pub(crate) fn set_resync_age(&self, seconds: f64) {
        self.resync_age.set(seconds);
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
