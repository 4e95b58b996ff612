//! The last minutes of a service, one sample per refresh, for the status page's charts: events/s
//! per route (matched) and per endpoint (delivered), and lag per partition.
//!
//! Samples are kept by name, not by position, so routes added by a reload, or endpoints that first
//! report late, simply start their line where they appear.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::status::Status;

/// One point of every chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistorySample {
    /// When it was taken, milliseconds since the Unix epoch.
    pub t: u64,
    /// Events routed per second.
    pub routed_per_second: Option<f64>,
    /// Messages matched per second, by route.
    pub routes: BTreeMap<String, f64>,
    /// Messages delivered per second, by endpoint.
    pub endpoints: BTreeMap<String, f64>,
    /// Lag in events, by partition.
    pub lag_events: BTreeMap<String, f64>,
    /// Lag in seconds, by partition.
    pub lag_seconds: BTreeMap<String, f64>,
}

/// A bounded ring of samples.
#[derive(Debug, Clone)]
pub struct History {
    samples: VecDeque<HistorySample>,
    capacity: usize,
}

impl History {
    /// A history of `span` at one sample per `interval`.
    pub fn new(span: Duration, interval: Duration) -> Self {
        let capacity = (span.as_secs_f64() / interval.as_secs_f64().max(0.001)).ceil() as usize;
        Self {
            samples: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// Records `status` as the sample at `t` (ms since the epoch), forgetting the oldest when full.
    /// A status without rates yet (the first scrape) records no rates.
    pub fn record(&mut self, t: u64, status: &Status) {
        let rates = |pairs: Vec<(&String, Option<f64>)>| -> BTreeMap<String, f64> {
            pairs
                .into_iter()
                .filter_map(|(name, value)| Some((name.clone(), value?)))
                .collect()
        };
        let sample = HistorySample {
            t,
            routed_per_second: status.events_routed.per_second,
            routes: rates(
                status
                    .routes
                    .iter()
                    .map(|r| (&r.name, r.matched.per_second))
                    .collect(),
            ),
            endpoints: rates(
                status
                    .endpoints
                    .iter()
                    .map(|e| (&e.name, e.delivered.per_second))
                    .collect(),
            ),
            lag_events: rates(
                status
                    .partitions
                    .iter()
                    .map(|p| (&p.id, p.lag_events))
                    .collect(),
            ),
            lag_seconds: rates(
                status
                    .partitions
                    .iter()
                    .map(|p| (&p.id, p.lag_seconds))
                    .collect(),
            ),
        };
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Samples taken after `t` (all of them for `None`), oldest first.
    pub fn since(&self, t: Option<u64>) -> Vec<HistorySample> {
        self.samples
            .iter()
            .filter(|s| t.is_none_or(|t| s.t > t))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::Scrape;

    #[test]
    fn keeps_the_span_and_answers_since_a_time() {
        let text = |n: u32| {
            format!(
                "hubroute_route_matched_total{{route=\"a\"}} {n}\n\
                 hubroute_partition_lag_events{{partition=\"0\"}} 3\n"
            )
        };
        let mut history = History::new(Duration::from_secs(3), Duration::from_secs(1));
        let first = Status::compute(&Scrape::parse(&text(0)).unwrap(), None, None, None);
        history.record(1000, &first);
        assert!(history.since(None)[0].routes.is_empty());
        assert_eq!(history.since(None)[0].lag_events["0"], 3.0);
        let mut previous = Scrape::parse(&text(0)).unwrap();
        for second in 2..=5_u32 {
            let current = Scrape::parse(&text(second * 10)).unwrap();
            let status = Status::compute(&current, Some((1.0, &previous)), None, None);
            history.record(u64::from(second) * 1000, &status);
            previous = current;
        }
        let all = history.since(None);
        assert_eq!(
            all.iter().map(|s| s.t).collect::<Vec<_>>(),
            [3000, 4000, 5000]
        );
        assert_eq!(all[0].routes["a"], 10.0);
        let newer = history.since(Some(4000));
        assert_eq!(newer.len(), 1);
        assert_eq!(newer[0].t, 5000);
    }
}
