//! The operator's view of a running engine, computed from its last scrapes of `/metrics` (and,
//! when available, its `/routes` summary): one row per route, endpoint and partition with rates,
//! totals, health and commit latency quantiles.
//!
//! Metrics the view does not know are never dropped. A series named `hubroute_<route|endpoint|
//! partition>_<what>` whose only label is that entity's becomes an extra column of the entity's row
//! (`hubroute_endpoint_replayed_rows_total{endpoint="x"}` shows as `replayed_rows` on endpoint
//! `x`); anything else is listed as it is among the other series. So a metric added to the engine shows up in `top` and
//! on the status page without a change here.
//!
//! Rates compare the newest scrape with the one before it; latency quantiles use the histogram's
//! growth over the whole window (30 s by default), which keeps them steady at low rates.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::exposition::{MetricType, Sample, Scrape};
use crate::routes::RoutesInfo;

/// The metric names the view reads by name. The end-to-end tests check every one against a live
/// engine's `/metrics`, so a renamed metric fails them.
pub mod names {
    /// Events read and routed.
    pub const EVENTS_ROUTED: &str = "hubroute_events_routed_total";
    /// Device messages the fallback route delivered.
    pub const FALLBACK_MATCHED: &str = "hubroute_fallback_matched_total";
    /// Receiver reconnects since start.
    pub const SOURCE_RECONNECTS: &str = "hubroute_source_reconnects";
    /// Messages a route matched, by `route`.
    pub const ROUTE_MATCHED: &str = "hubroute_route_matched_total";
    /// Messages for which a route's condition was undefined, by `route`.
    pub const ROUTE_UNDEFINED: &str = "hubroute_route_undefined_total";
    /// Messages an endpoint committed, by `endpoint`.
    pub const ENDPOINT_DELIVERED: &str = "hubroute_endpoint_delivered_total";
    /// Messages an endpoint rejected permanently, by `endpoint`.
    pub const ENDPOINT_FAILED: &str = "hubroute_endpoint_failed_total";
    /// Messages dead-lettered for an endpoint, by `endpoint`.
    pub const ENDPOINT_DEAD_LETTERED: &str = "hubroute_endpoint_dead_lettered_total";
    /// Messages of a dead endpoint parked in the dead-letter store for replay, by `endpoint`.
    pub const ENDPOINT_PARKED: &str = "hubroute_endpoint_parked_rows_total";
    /// Batches waiting in an endpoint's queue, by `endpoint`.
    pub const ENDPOINT_QUEUE_DEPTH: &str = "hubroute_endpoint_queue_depth";
    /// 1 for an endpoint's current health, by `endpoint` and `status`.
    pub const ENDPOINT_HEALTH: &str = "hubroute_endpoint_health";
    /// Commit latency histogram family, by `endpoint`.
    pub const ENDPOINT_COMMIT_LATENCY: &str = "hubroute_endpoint_commit_latency_seconds";
    /// Its buckets, by `endpoint` and `le`.
    pub const ENDPOINT_COMMIT_LATENCY_BUCKET: &str =
        "hubroute_endpoint_commit_latency_seconds_bucket";
    /// Events read from a partition, by `partition`.
    pub const PARTITION_EVENTS: &str = "hubroute_partition_events_total";
    /// Batches routed and not yet committed everywhere, by `partition`.
    pub const PARTITION_UNCOMMITTED: &str = "hubroute_partition_uncommitted_batches";
    /// Lag in events, by `partition`.
    pub const PARTITION_LAG_EVENTS: &str = "hubroute_partition_lag_events";
    /// Lag in seconds, by `partition`.
    pub const PARTITION_LAG_SECONDS: &str = "hubroute_partition_lag_seconds";
    /// Sequence number of the last checkpoint, by `partition`.
    pub const PARTITION_CHECKPOINT: &str = "hubroute_partition_checkpoint_sequence_number";

    /// Every sample name above with the labels it is read by.
    pub const READ: &[(&str, &[&str])] = &[
        (EVENTS_ROUTED, &[]),
        (FALLBACK_MATCHED, &[]),
        (SOURCE_RECONNECTS, &[]),
        (ROUTE_MATCHED, &["route"]),
        (ROUTE_UNDEFINED, &["route"]),
        (ENDPOINT_DELIVERED, &["endpoint"]),
        (ENDPOINT_FAILED, &["endpoint"]),
        (ENDPOINT_DEAD_LETTERED, &["endpoint"]),
        (ENDPOINT_PARKED, &["endpoint"]),
        (ENDPOINT_QUEUE_DEPTH, &["endpoint"]),
        (ENDPOINT_HEALTH, &["endpoint", "status"]),
        (ENDPOINT_COMMIT_LATENCY_BUCKET, &["endpoint", "le"]),
        (PARTITION_EVENTS, &["partition"]),
        (PARTITION_UNCOMMITTED, &["partition"]),
        (PARTITION_LAG_EVENTS, &["partition"]),
        (PARTITION_LAG_SECONDS, &["partition"]),
        (PARTITION_CHECKPOINT, &["partition"]),
    ];
}

use names::*;

/// A counter: its total and its rate over the last interval (none before the second scrape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counter {
    /// The value of the newest scrape.
    pub total: f64,
    /// Per second since the scrape before.
    pub per_second: Option<f64>,
}

/// A series the view does not know, shown as a column of its entity's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Extra {
    /// The metric name without `hubroute_<entity>_` and `_total`, e.g. `replayed_rows`.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Per second, for counters.
    pub per_second: Option<f64>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteRow {
    /// The route's name.
    pub name: String,
    /// Its endpoint, from `/routes`.
    pub endpoint: Option<String>,
    /// Whether it is enabled, from `/routes`.
    pub enabled: Option<bool>,
    /// Messages it matched.
    pub matched: Counter,
    /// Messages for which its condition was undefined.
    pub undefined: Counter,
    /// Series the view does not know.
    pub extra: Vec<Extra>,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointRow {
    /// The endpoint's name.
    pub name: String,
    /// Its sink type, from `/routes`.
    pub kind: Option<String>,
    /// Its health status (`healthy`, `degraded`, `unhealthy`, `dead`, `unknown`, or any other the
    /// engine reports).
    pub health: Option<String>,
    /// Messages committed.
    pub delivered: Counter,
    /// Messages rejected permanently.
    pub failed: Counter,
    /// Messages dead-lettered.
    pub dead_lettered: Counter,
    /// Messages parked while the endpoint was dead (replayed once it is back).
    pub parked: Counter,
    /// Batches waiting in its queue.
    pub queue_depth: Option<f64>,
    /// Median commit latency over the window, seconds.
    pub p50_seconds: Option<f64>,
    /// 99th percentile commit latency over the window, seconds.
    pub p99_seconds: Option<f64>,
    /// Series the view does not know.
    pub extra: Vec<Extra>,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionRow {
    /// The partition id.
    pub id: String,
    /// Events read.
    pub events: Counter,
    /// Events enqueued and not yet committed everywhere.
    pub lag_events: Option<f64>,
    /// Age of the newest event when it was routed, seconds.
    pub lag_seconds: Option<f64>,
    /// Sequence number of the last checkpoint.
    pub checkpoint: Option<f64>,
    /// Batches routed and not yet committed everywhere.
    pub uncommitted_batches: Option<f64>,
    /// Series the view does not know.
    pub extra: Vec<Extra>,
}

/// A series that belongs to no row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtherSeries {
    /// `name{label="value",…}`.
    pub series: String,
    /// Its value.
    pub value: f64,
    /// Per second, for counters.
    pub per_second: Option<f64>,
}

/// Everything `top` and the status page show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// `hub_name`, from `/routes`.
    pub hub_name: Option<String>,
    /// The event hub, from `/routes`.
    pub event_hub: Option<String>,
    /// Events routed.
    pub events_routed: Counter,
    /// Device messages the fallback route delivered.
    pub fallback_matched: Counter,
    /// Receiver reconnects since start.
    pub reconnects: Option<f64>,
    /// Routes: configuration order, then routes only the metrics know.
    pub routes: Vec<RouteRow>,
    /// Endpoints: configuration order, then endpoints only the metrics know.
    pub endpoints: Vec<EndpointRow>,
    /// Partitions in id order (numeric ids numerically).
    pub partitions: Vec<PartitionRow>,
    /// Series of no route, endpoint or partition.
    pub other: Vec<OtherSeries>,
}

/// The last scrapes of one service, with the times they were taken.
#[derive(Debug, Clone)]
pub struct ScrapeWindow {
    scrapes: VecDeque<(f64, Scrape)>,
    span: f64,
}

impl Default for ScrapeWindow {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl ScrapeWindow {
    /// A window whose latency quantiles cover `span`.
    pub fn new(span: Duration) -> Self {
        Self {
            scrapes: VecDeque::new(),
            span: span.as_secs_f64(),
        }
    }

    /// Adds a scrape taken at `at` (seconds on any monotonic clock) and forgets those no longer
    /// needed.
    pub fn push(&mut self, at: f64, scrape: Scrape) {
        self.scrapes.push_back((at, scrape));
        // Keep the newest scrape at least `span` old, so the window covers the whole span.
        while self.scrapes.len() > 2 && at - self.scrapes[1].0 >= self.span {
            self.scrapes.pop_front();
        }
    }

    /// Forgets every scrape (after the service went away: its counters may restart).
    pub fn clear(&mut self) {
        self.scrapes.clear();
    }

    /// The newest scrape.
    pub fn latest(&self) -> Option<&Scrape> {
        self.scrapes.back().map(|(_, s)| s)
    }

    /// The view of the newest scrape; `None` before the first.
    pub fn status(&self, routes: Option<&RoutesInfo>) -> Option<Status> {
        let (at, current) = self.scrapes.back()?;
        let previous = self
            .scrapes
            .len()
            .checked_sub(2)
            .map(|i| (at - self.scrapes[i].0, &self.scrapes[i].1));
        let base = (self.scrapes.len() > 1).then(|| &self.scrapes[0].1);
        Some(Status::compute(current, previous, base, routes))
    }
}

/// The three kinds of row, and how their series are named.
struct Entity {
    prefix: &'static str,
    label: &'static str,
}

const ROUTE: Entity = Entity {
    prefix: "hubroute_route_",
    label: "route",
};
const ENDPOINT: Entity = Entity {
    prefix: "hubroute_endpoint_",
    label: "endpoint",
};
const PARTITION: Entity = Entity {
    prefix: "hubroute_partition_",
    label: "partition",
};

/// Reads one scrape against the one before it.
struct Reader<'a> {
    current: &'a Scrape,
    previous: Option<(f64, &'a Scrape)>,
    /// Samples read by name, so that everything else can be shown as extra or other.
    consumed: HashSet<&'static str>,
}

impl Reader<'_> {
    fn counter(&mut self, name: &'static str, labels: &[(&str, &str)]) -> Counter {
        self.consumed.insert(name);
        let total = self.current.value(name, labels).unwrap_or(0.0);
        Counter {
            total,
            per_second: self.rate(name, labels, total),
        }
    }

    fn rate(&self, name: &str, labels: &[(&str, &str)], total: f64) -> Option<f64> {
        let (elapsed, previous) = self.previous?;
        if elapsed <= 0.0 {
            return None;
        }
        let before = previous.value(name, labels).unwrap_or(0.0);
        // A counter that went down was reset by a restart: it counted `total` since then.
        let delta = if total >= before {
            total - before
        } else {
            total
        };
        Some(delta / elapsed)
    }

    fn gauge(&mut self, name: &'static str, labels: &[(&str, &str)]) -> Option<f64> {
        self.consumed.insert(name);
        self.current.value(name, labels)
    }

    /// Label values of `label` over the samples named `names`, in first-seen order.
    fn label_values(&self, names: &[&str], label: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for sample in &self.current.samples {
            if names.contains(&sample.name.as_str())
                && let Some(value) = sample.label(label)
                && !seen.iter().any(|s| s == value)
            {
                seen.push(value.to_owned());
            }
        }
        seen
    }

    fn is_known(&self, name: &str) -> bool {
        self.consumed.contains(name)
            || name.starts_with(ENDPOINT_COMMIT_LATENCY)
            || name == ENDPOINT_HEALTH
    }

    /// Whether `sample` is an extra column of `entity`: its only label is the entity's.
    fn is_extra(&self, entity: &Entity, sample: &Sample) -> bool {
        sample.name.starts_with(entity.prefix)
            && sample.labels.len() == 1
            && sample.labels[0].0 == entity.label
            && !self.is_known(&sample.name)
            && self.current.type_of(&sample.name) != MetricType::Histogram
    }

    fn extras(&self, entity: &Entity, key: &str) -> Vec<Extra> {
        self.current
            .samples
            .iter()
            .filter(|s| self.is_extra(entity, s) && s.labels[0].1 == key)
            .map(|s| Extra {
                name: extra_name(entity, &s.name),
                value: s.value,
                per_second: self.counter_rate(s),
            })
            .collect()
    }

    fn counter_rate(&self, sample: &Sample) -> Option<f64> {
        if self.current.type_of(&sample.name) != MetricType::Counter {
            return None;
        }
        let labels: Vec<(&str, &str)> = sample
            .labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.rate(&sample.name, &labels, sample.value)
    }
}

fn extra_name(entity: &Entity, name: &str) -> String {
    let short = &name[entity.prefix.len()..];
    short.strip_suffix("_total").unwrap_or(short).to_owned()
}

impl Status {
    /// The view of `current`; rates against `previous` (seconds between them, and the scrape),
    /// latency quantiles against `latency_base` (else since the service started).
    pub fn compute(
        current: &Scrape,
        previous: Option<(f64, &Scrape)>,
        latency_base: Option<&Scrape>,
        routes: Option<&RoutesInfo>,
    ) -> Self {
        let mut reader = Reader {
            current,
            previous,
            consumed: HashSet::new(),
        };
        let events_routed = reader.counter(EVENTS_ROUTED, &[]);
        let fallback_matched = reader.counter(FALLBACK_MATCHED, &[]);
        let reconnects = reader.gauge(SOURCE_RECONNECTS, &[]);

        let mut route_names: Vec<String> = routes
            .map(|r| r.routes.iter().map(|r| r.name.clone()).collect())
            .unwrap_or_default();
        merge(
            &mut route_names,
            reader.label_values(&[ROUTE_MATCHED, ROUTE_UNDEFINED], "route"),
        );
        let route_rows = route_names
            .into_iter()
            .map(|name| {
                let labels = [("route", name.as_str())];
                let info = routes.and_then(|r| r.routes.iter().find(|r| r.name == name));
                RouteRow {
                    endpoint: info.and_then(|i| i.endpoint.clone()),
                    enabled: info.and_then(|i| i.enabled),
                    matched: reader.counter(ROUTE_MATCHED, &labels),
                    undefined: reader.counter(ROUTE_UNDEFINED, &labels),
                    extra: Vec::new(),
                    name,
                }
            })
            .collect::<Vec<_>>();

        let mut endpoint_names: Vec<String> = routes
            .map(|r| r.endpoints.iter().map(|e| e.name.clone()).collect())
            .unwrap_or_default();
        merge(
            &mut endpoint_names,
            reader.label_values(
                &[
                    ENDPOINT_DELIVERED,
                    ENDPOINT_FAILED,
                    ENDPOINT_DEAD_LETTERED,
                    ENDPOINT_PARKED,
                    ENDPOINT_QUEUE_DEPTH,
                    ENDPOINT_HEALTH,
                    ENDPOINT_COMMIT_LATENCY_BUCKET,
                ],
                "endpoint",
            ),
        );
        let endpoint_rows = endpoint_names
            .into_iter()
            .map(|name| {
                let labels = [("endpoint", name.as_str())];
                let latency = latency_buckets(current, latency_base, &name);
                EndpointRow {
                    kind: routes
                        .and_then(|r| r.endpoints.iter().find(|e| e.name == name))
                        .and_then(|e| e.kind.clone()),
                    health: current
                        .named(ENDPOINT_HEALTH)
                        .find(|s| s.label("endpoint") == Some(&name) && s.value == 1.0)
                        .and_then(|s| s.label("status"))
                        .map(str::to_owned),
                    delivered: reader.counter(ENDPOINT_DELIVERED, &labels),
                    failed: reader.counter(ENDPOINT_FAILED, &labels),
                    dead_lettered: reader.counter(ENDPOINT_DEAD_LETTERED, &labels),
                    parked: reader.counter(ENDPOINT_PARKED, &labels),
                    queue_depth: reader.gauge(ENDPOINT_QUEUE_DEPTH, &labels),
                    p50_seconds: histogram_quantile(0.5, &latency),
                    p99_seconds: histogram_quantile(0.99, &latency),
                    extra: Vec::new(),
                    name,
                }
            })
            .collect::<Vec<_>>();

        let mut partition_ids: Vec<String> =
            routes.map(|r| r.partitions.clone()).unwrap_or_default();
        merge(
            &mut partition_ids,
            reader.label_values(
                &[
                    PARTITION_EVENTS,
                    PARTITION_LAG_EVENTS,
                    PARTITION_LAG_SECONDS,
                    PARTITION_CHECKPOINT,
                    PARTITION_UNCOMMITTED,
                ],
                "partition",
            ),
        );
        partition_ids.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            _ => a.cmp(b),
        });
        let partition_rows = partition_ids
            .into_iter()
            .map(|id| {
                let labels = [("partition", id.as_str())];
                PartitionRow {
                    events: reader.counter(PARTITION_EVENTS, &labels),
                    lag_events: reader.gauge(PARTITION_LAG_EVENTS, &labels),
                    lag_seconds: reader.gauge(PARTITION_LAG_SECONDS, &labels),
                    checkpoint: reader.gauge(PARTITION_CHECKPOINT, &labels),
                    uncommitted_batches: reader.gauge(PARTITION_UNCOMMITTED, &labels),
                    extra: Vec::new(),
                    id,
                }
            })
            .collect::<Vec<_>>();

        let mut status = Self {
            hub_name: routes.and_then(|r| r.hub_name.clone()),
            event_hub: routes.and_then(|r| r.event_hub.clone()),
            events_routed,
            fallback_matched,
            reconnects,
            routes: route_rows,
            endpoints: endpoint_rows,
            partitions: partition_rows,
            other: Vec::new(),
        };
        status.add_unknown_series(&reader);
        status
    }

    /// Extra columns for series the view does not know, rows for entities only they mention, and
    /// the other series.
    fn add_unknown_series(&mut self, reader: &Reader<'_>) {
        for sample in &reader.current.samples {
            let key = sample.labels.first().map(|(_, v)| v.clone());
            if reader.is_extra(&ROUTE, sample) {
                let key = key.unwrap_or_default();
                if !self.routes.iter().any(|r| r.name == key) {
                    self.routes.push(RouteRow {
                        name: key,
                        endpoint: None,
                        enabled: None,
                        matched: Counter::default(),
                        undefined: Counter::default(),
                        extra: Vec::new(),
                    });
                }
            } else if reader.is_extra(&ENDPOINT, sample) {
                let key = key.unwrap_or_default();
                if !self.endpoints.iter().any(|e| e.name == key) {
                    self.endpoints.push(EndpointRow {
                        name: key,
                        kind: None,
                        health: None,
                        delivered: Counter::default(),
                        failed: Counter::default(),
                        dead_lettered: Counter::default(),
                        parked: Counter::default(),
                        queue_depth: None,
                        p50_seconds: None,
                        p99_seconds: None,
                        extra: Vec::new(),
                    });
                }
            } else if reader.is_extra(&PARTITION, sample) {
                let key = key.unwrap_or_default();
                if !self.partitions.iter().any(|p| p.id == key) {
                    self.partitions.push(PartitionRow {
                        id: key,
                        events: Counter::default(),
                        lag_events: None,
                        lag_seconds: None,
                        checkpoint: None,
                        uncommitted_batches: None,
                        extra: Vec::new(),
                    });
                }
            } else if !reader.is_known(&sample.name)
                && !sample.name.ends_with("_bucket")
                && !sample.name.ends_with("_created")
            {
                self.other.push(OtherSeries {
                    series: series_name(sample),
                    value: sample.value,
                    per_second: reader.counter_rate(sample),
                });
            }
        }
        for row in &mut self.routes {
            row.extra = reader.extras(&ROUTE, &row.name);
        }
        for row in &mut self.endpoints {
            row.extra = reader.extras(&ENDPOINT, &row.name);
        }
        for row in &mut self.partitions {
            row.extra = reader.extras(&PARTITION, &row.id);
        }
    }

    /// Lag in events over all partitions that report it.
    pub fn total_lag_events(&self) -> Option<f64> {
        let lags: Vec<f64> = self
            .partitions
            .iter()
            .filter_map(|p| p.lag_events)
            .collect();
        (!lags.is_empty()).then(|| lags.iter().sum())
    }

    /// One line for a log or a pipe: routed, matches per route, endpoint health and deliveries,
    /// partition lag.
    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "routed {} ({}/s)",
            crate::format::count(self.events_routed.total),
            crate::format::rate(self.events_routed.per_second)
        );
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|r| format!("{} {}", r.name, crate::format::count(r.matched.total)))
                .collect();
            let _ = write!(line, " | matched: {}", routes.join(", "));
        }
        if !self.endpoints.is_empty() {
            let endpoints: Vec<String> = self
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e.name,
                        e.health.as_deref().unwrap_or("unknown"),
                        crate::format::count(e.delivered.total)
                    )
                })
                .collect();
            let _ = write!(line, " | delivered: {}", endpoints.join(", "));
        }
        if let Some(lag) = self.total_lag_events() {
            let _ = write!(line, " | lag {} events", crate::format::count(lag));
        }
        line
    }
}

/// Appends the names of `more` not yet in `names`.
fn merge(names: &mut Vec<String>, more: Vec<String>) {
    for name in more {
        if !names.contains(&name) {
            names.push(name);
        }
    }
}

fn series_name(sample: &Sample) -> String {
    if sample.labels.is_empty() {
        return sample.name.clone();
    }
    let labels: Vec<String> = sample
        .labels
        .iter()
        .map(|(n, v)| format!("{n}=\"{v}\""))
        .collect();
    format!("{}{{{}}}", sample.name, labels.join(","))
}

/// The commit latency buckets of `endpoint` (upper bound, cumulative count), as grown since
/// `base`, sorted by bound.
fn latency_buckets(current: &Scrape, base: Option<&Scrape>, endpoint: &str) -> Vec<(f64, f64)> {
    let buckets = |scrape: &Scrape| -> BTreeMap<String, (f64, f64)> {
        scrape
            .named(ENDPOINT_COMMIT_LATENCY_BUCKET)
            .filter(|s| s.label("endpoint") == Some(endpoint))
            .filter_map(|s| {
                let le = s.label("le")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le.to_owned(), (bound, s.value)))
            })
            .collect()
    };
    let now = buckets(current);
    let before = base.map(buckets).unwrap_or_default();
    let mut grown: Vec<(f64, f64)> = now
        .iter()
        .map(|(le, (bound, count))| {
            let earlier = before.get(le).map_or(0.0, |(_, c)| *c);
            // After a restart the histogram started again: count it from zero.
            let delta = if *count >= earlier {
                count - earlier
            } else {
                *count
            };
            (*bound, delta)
        })
        .collect();
    grown.sort_by(|a, b| a.0.total_cmp(&b.0));
    grown
}

/// The `q` quantile of a histogram (cumulative counts by upper bound, sorted), interpolated
/// linearly within the bucket that holds it, as PromQL's `histogram_quantile` does. `None` when
/// the histogram is empty. A quantile in the `+Inf` bucket is the highest finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = cumulative - lower.1;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(lower.0 + (bound - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (bound, cumulative);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGINE_TEXT: &str = r#"# HELP hubroute_route_matched Messages a route matched (its condition was true).
# TYPE hubroute_route_matched counter
hubroute_route_matched_total{route="archive"} 900
hubroute_route_matched_total{route="hot"} 90
# TYPE hubroute_route_undefined counter
hubroute_route_undefined_total{route="archive"} 0
hubroute_route_undefined_total{route="hot"} 10
# TYPE hubroute_fallback_matched counter
hubroute_fallback_matched_total 0
# TYPE hubroute_events_routed counter
hubroute_events_routed_total 900
# TYPE hubroute_endpoint_delivered counter
hubroute_endpoint_delivered_total{endpoint="lake"} 800
# TYPE hubroute_endpoint_failed counter
hubroute_endpoint_failed_total{endpoint="lake"} 2
# TYPE hubroute_endpoint_dead_lettered counter
hubroute_endpoint_dead_lettered_total{endpoint="lake"} 2
# TYPE hubroute_endpoint_parked_rows counter
hubroute_endpoint_parked_rows_total{endpoint="lake"} 5
# TYPE hubroute_endpoint_queue_depth gauge
hubroute_endpoint_queue_depth{endpoint="lake"} 3
# TYPE hubroute_endpoint_health gauge
hubroute_endpoint_health{endpoint="lake",status="unknown"} 0
hubroute_endpoint_health{endpoint="lake",status="healthy"} 0
hubroute_endpoint_health{endpoint="lake",status="degraded"} 1
# TYPE hubroute_endpoint_commit_latency_seconds histogram
hubroute_endpoint_commit_latency_seconds_sum{endpoint="lake"} 50.0
hubroute_endpoint_commit_latency_seconds_count{endpoint="lake"} 100
hubroute_endpoint_commit_latency_seconds_bucket{le="0.1",endpoint="lake"} 50
hubroute_endpoint_commit_latency_seconds_bucket{le="0.2",endpoint="lake"} 90
hubroute_endpoint_commit_latency_seconds_bucket{le="0.4",endpoint="lake"} 100
hubroute_endpoint_commit_latency_seconds_bucket{le="+Inf",endpoint="lake"} 100
# TYPE hubroute_partition_events counter
hubroute_partition_events_total{partition="10"} 400
hubroute_partition_events_total{partition="2"} 500
# TYPE hubroute_partition_lag_events gauge
hubroute_partition_lag_events{partition="2"} 7
hubroute_partition_lag_events{partition="10"} 5
# TYPE hubroute_partition_lag_seconds gauge
hubroute_partition_lag_seconds{partition="2"} 0.5
# TYPE hubroute_partition_checkpoint_sequence_number gauge
hubroute_partition_checkpoint_sequence_number{partition="2"} 480
# TYPE hubroute_source_reconnects gauge
hubroute_source_reconnects 1
# TYPE hubroute_config_reloads counter
hubroute_config_reloads_total{outcome="applied"} 2
# EOF
"#;

    fn scrape(text: &str) -> Scrape {
        Scrape::parse(text).unwrap()
    }

    #[test]
    fn one_scrape_gives_totals_health_quantiles_and_no_rates() {
        let status = Status::compute(&scrape(ENGINE_TEXT), None, None, None);
        assert_eq!(status.events_routed.total, 900.0);
        assert_eq!(status.events_routed.per_second, None);
        assert_eq!(status.reconnects, Some(1.0));
        let routes: Vec<_> = status
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.matched.total, r.undefined.total))
            .collect();
        assert_eq!(routes, [("archive", 900.0, 0.0), ("hot", 90.0, 10.0)]);
        let lake = &status.endpoints[0];
        assert_eq!(lake.health.as_deref(), Some("degraded"));
        assert_eq!(
            (
                lake.delivered.total,
                lake.failed.total,
                lake.dead_lettered.total,
                lake.parked.total
            ),
            (800.0, 2.0, 2.0, 5.0)
        );
        // Parked rows are a column of their own, not an unknown series.
        assert!(lake.extra.is_empty(), "{:?}", lake.extra);
        assert_eq!(lake.queue_depth, Some(3.0));
        assert_eq!(lake.p50_seconds, Some(0.1));
        let p99 = lake.p99_seconds.unwrap();
        assert!((p99 - 0.38).abs() < 1e-9, "{p99}");
        let partitions: Vec<_> = status
            .partitions
            .iter()
            .map(|p| (p.id.as_str(), p.lag_events, p.checkpoint))
            .collect();
        assert_eq!(
            partitions,
            [("2", Some(7.0), Some(480.0)), ("10", Some(5.0), None)]
        );
        assert_eq!(status.total_lag_events(), Some(12.0));
        assert_eq!(
            status.other,
            [OtherSeries {
                series: "hubroute_config_reloads_total{outcome=\"applied\"}".to_owned(),
                value: 2.0,
                per_second: None,
            }]
        );
    }

    #[test]
    fn rates_compare_with_the_scrape_before_and_survive_a_restart() {
        let before = scrape(
            "hubroute_events_routed_total 400\nhubroute_route_matched_total{route=\"a\"} 100\n\
             hubroute_endpoint_delivered_total{endpoint=\"x\"} 5000\n",
        );
        let after = scrape(
            "hubroute_events_routed_total 600\nhubroute_route_matched_total{route=\"a\"} 100\n\
             hubroute_route_matched_total{route=\"b\"} 30\n\
             hubroute_endpoint_delivered_total{endpoint=\"x\"} 20\n",
        );
        let status = Status::compute(&after, Some((2.0, &before)), None, None);
        assert_eq!(status.events_routed.per_second, Some(100.0));
        let rates: Vec<_> = status
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.matched.per_second))
            .collect();
        assert_eq!(rates, [("a", Some(0.0)), ("b", Some(15.0))]);
        // The counter went down: the service restarted and delivered 20 since.
        assert_eq!(status.endpoints[0].delivered.per_second, Some(10.0));
    }

    #[test]
    fn routes_info_orders_rows_and_fills_in_rows_before_any_metric() {
        let info = RoutesInfo::parse(
            r#"{"hub_name":"h","event_hub":"e","partitions":["0","1"],
                "routes":[{"name":"hot","endpoint":"db","enabled":false},{"name":"archive","endpoint":"lake"}],
                "endpoints":[{"name":"db","type":"sqlite"},{"name":"lake","type":"parquet"}]}"#,
        )
        .unwrap();
        let status = Status::compute(&scrape(ENGINE_TEXT), None, None, Some(&info));
        let routes: Vec<_> = status
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.endpoint.as_deref(), r.enabled))
            .collect();
        assert_eq!(
            routes,
            [
                ("hot", Some("db"), Some(false)),
                ("archive", Some("lake"), None)
            ]
        );
        let endpoints: Vec<_> = status
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.kind.as_deref(), e.delivered.total))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("db", Some("sqlite"), 0.0),
                ("lake", Some("parquet"), 800.0)
            ]
        );
        let ids: Vec<_> = status.partitions.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2", "10"]);
        assert_eq!(status.hub_name.as_deref(), Some("h"));
    }

    #[test]
    fn unknown_series_become_extra_columns_or_other_series() {
        let text = format!(
            "{ENGINE_TEXT}\
             # TYPE hubroute_endpoint_replayed_rows counter\n\
             hubroute_endpoint_replayed_rows_total{{endpoint=\"lake\"}} 4\n\
             hubroute_endpoint_replayed_rows_total{{endpoint=\"ghost\"}} 1\n\
             # TYPE hubroute_partition_owned gauge\n\
             hubroute_partition_owned{{partition=\"2\"}} 1\n\
             hubroute_partition_owner{{partition=\"2\",instance=\"a\"}} 1\n\
             # TYPE hubroute_endpoint_flush_seconds histogram\n\
             hubroute_endpoint_flush_seconds_bucket{{endpoint=\"lake\",le=\"1\"}} 1\n\
             hubroute_endpoint_flush_seconds_count{{endpoint=\"lake\"}} 1\n\
             process_open_fds 12\n"
        );
        let before = text.replace(
            "_replayed_rows_total{endpoint=\"lake\"} 4",
            "_replayed_rows_total{endpoint=\"lake\"} 2",
        );
        let status = Status::compute(&scrape(&text), Some((1.0, &scrape(&before))), None, None);
        let lake = status.endpoints.iter().find(|e| e.name == "lake").unwrap();
        assert_eq!(
            lake.extra,
            [Extra {
                name: "replayed_rows".to_owned(),
                value: 4.0,
                per_second: Some(2.0)
            }]
        );
        let ghost = status.endpoints.iter().find(|e| e.name == "ghost").unwrap();
        assert_eq!(ghost.extra[0].value, 1.0);
        let p2 = status.partitions.iter().find(|p| p.id == "2").unwrap();
        assert_eq!(p2.extra[0].name, "owned");
        assert_eq!(p2.extra[0].per_second, None);
        let other: Vec<&str> = status.other.iter().map(|o| o.series.as_str()).collect();
        assert_eq!(
            other,
            [
                "hubroute_config_reloads_total{outcome=\"applied\"}",
                "hubroute_partition_owner{partition=\"2\",instance=\"a\"}",
                "hubroute_endpoint_flush_seconds_count{endpoint=\"lake\"}",
                "process_open_fds",
            ]
        );
    }

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let buckets = [
            (0.1, 50.0),
            (0.2, 90.0),
            (0.4, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let cases = [
            (0.0, Some(0.0)),
            (0.25, Some(0.05)),
            (0.5, Some(0.1)),
            (0.7, Some(0.15)),
            (0.95, Some(0.3)),
            (1.0, Some(0.4)),
        ];
        for (q, want) in cases {
            let got = histogram_quantile(q, &buckets);
            assert!(
                got.zip(want).is_some_and(|(g, w)| (g - w).abs() < 1e-9),
                "q={q}: {got:?} != {want:?}"
            );
        }
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(histogram_quantile(0.5, &[]), None);
        // Everything above the highest finite bound: that bound is all we know.
        assert_eq!(
            histogram_quantile(0.99, &[(1.0, 1.0), (2.0, 1.0), (f64::INFINITY, 100.0)]),
            Some(2.0)
        );
    }

    #[test]
    fn the_window_keeps_its_span_and_quantiles_use_its_oldest_scrape() {
        let text = |slow: u32| {
            format!(
                "hubroute_endpoint_commit_latency_seconds_bucket{{endpoint=\"x\",le=\"1\"}} 100\n\
                 hubroute_endpoint_commit_latency_seconds_bucket{{endpoint=\"x\",le=\"10\"}} {}\n\
                 hubroute_endpoint_commit_latency_seconds_bucket{{endpoint=\"x\",le=\"+Inf\"}} {}\n",
                100 + slow,
                100 + slow
            )
        };
        let mut window = ScrapeWindow::new(Duration::from_secs(10));
        assert!(window.status(None).is_none());
        window.push(0.0, scrape(&text(0)));
        // Since start: all 100 commits were fast.
        assert_eq!(
            window.status(None).unwrap().endpoints[0].p99_seconds,
            Some(0.99)
        );
        for second in 1..=20 {
            window.push(f64::from(second), scrape(&text(second * 10)));
        }
        assert!(window.scrapes.len() <= 12, "{}", window.scrapes.len());
        assert!(window.scrapes[0].0 <= 10.0);
        // Over the last 10 s only slow commits happened.
        let p50 = window.status(None).unwrap().endpoints[0]
            .p50_seconds
            .unwrap();
        assert!(p50 > 1.0, "{p50}");
        window.clear();
        assert!(window.latest().is_none());
    }

    #[test]
    fn the_summary_line_names_routes_endpoints_and_lag() {
        let status = Status::compute(&scrape(ENGINE_TEXT), None, None, None);
        assert_eq!(
            status.summary_line(),
            "routed 900 (–/s) | matched: archive 900, hot 90 | delivered: lake degraded 800 | lag 12 events"
        );
    }
}
