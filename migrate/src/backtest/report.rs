//! What a backtest found, and its two renderings: a table for people and JSON for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use hubroute_engine::routing::{Decisions, RoutingTable};
use serde_json::json;

/// A count and a few example message ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages with this outcome.
    pub count: usize,
    /// The first message ids (or `file#record` for messages without one).
    pub examples: Vec<String>,
}

impl Outcome {
    fn add(&mut self, rows: &[u32], limit: usize, id: &impl Fn(usize) -> String) {
        self.count += rows.len();
        for &row in rows.iter().take(limit.saturating_sub(self.examples.len())) {
            self.examples.push(id(row as usize));
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"count": self.count, "examples": self.examples})
    }
}

/// One route's outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOutcome {
    /// The route name.
    pub name: String,
    /// Its endpoint.
    pub endpoint: String,
    /// Whether it is enabled (a disabled route matches nothing).
    pub enabled: bool,
    /// Messages it matched.
    pub matched: Outcome,
    /// Messages of its source whose condition was `undefined`.
    pub undefined: Outcome,
}

/// The result of a backtest.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every input: file, format, messages read.
    pub files: Vec<(String, &'static str, usize)>,
    /// Messages read in all.
    pub messages: usize,
    /// Per route, in configuration order.
    pub routes: Vec<RouteOutcome>,
    /// The fallback route's messages, if the configuration has an enabled one.
    pub fallback: Option<Outcome>,
    /// Messages that reached no endpoint.
    pub unmatched: Outcome,
    /// Wall time of the whole backtest (reading, decoding, routing).
    pub elapsed: Duration,
    /// Time spent in the routing table alone.
    pub routing: Duration,
    examples: usize,
}

impl Report {
    pub(super) fn new(table: &RoutingTable, examples: usize) -> Self {
        Self {
            files: Vec::new(),
            messages: 0,
            routes: table
                .routes()
                .map(|(name, endpoint, enabled)| RouteOutcome {
                    name: name.to_owned(),
                    endpoint: endpoint.to_owned(),
                    enabled,
                    matched: Outcome::default(),
                    undefined: Outcome::default(),
                })
                .collect(),
            fallback: table.has_fallback().then(Outcome::default),
            unmatched: Outcome::default(),
            elapsed: Duration::ZERO,
            routing: Duration::ZERO,
            examples,
        }
    }

    pub(super) fn add(&mut self, decisions: &Decisions, rows: usize, id: impl Fn(usize) -> String) {
        self.messages += rows;
        for (route, (matched, undefined)) in self
            .routes
            .iter_mut()
            .zip(decisions.matched.iter().zip(&decisions.undefined))
        {
            route.matched.add(matched, self.examples, &id);
            route.undefined.add(undefined, self.examples, &id);
        }
        if let Some(fallback) = &mut self.fallback {
            fallback.add(&decisions.fallback, self.examples, &id);
        }
        self.unmatched.add(&decisions.unmatched, self.examples, &id);
    }

    /// Messages per second over the whole backtest.
    pub fn rows_per_second(&self) -> f64 {
        rate(self.messages, self.elapsed)
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (file, format, messages) in &self.files {
            let _ = writeln!(out, "{file}: {messages} messages ({format})");
        }
        let mut rows: Vec<[String; 5]> = vec![[
            "route".into(),
            "endpoint".into(),
            "matched".into(),
            "undefined".into(),
            "examples (matched; undefined)".into(),
        ]];
        let examples = |o: &Outcome| {
            if o.examples.is_empty() {
                "-".to_owned()
            } else {
                o.examples.join(" ")
            }
        };
        for route in &self.routes {
            let name = if route.enabled {
                route.name.clone()
            } else {
                format!("{} (disabled)", route.name)
            };
            rows.push([
                name,
                route.endpoint.clone(),
                route.matched.count.to_string(),
                route.undefined.count.to_string(),
                format!(
                    "{}; {}",
                    examples(&route.matched),
                    examples(&route.undefined)
                ),
            ]);
        }
        match &self.fallback {
            Some(fallback) => rows.push([
                "(fallback)".into(),
                String::new(),
                fallback.count.to_string(),
                String::new(),
                examples(fallback),
            ]),
            None => rows.push([
                "(fallback)".into(),
                "none".into(),
                String::new(),
                String::new(),
                String::new(),
            ]),
        }
        rows.push([
            "(unmatched)".into(),
            String::new(),
            self.unmatched.count.to_string(),
            String::new(),
            examples(&self.unmatched),
        ]);
        let widths: Vec<usize> = (0..5)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if (2..4).contains(&c) {
                    let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
                } else if c == 4 {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let _ = writeln!(
            out,
            "{} messages in {:.3} s ({:.0} messages/s; routing alone {:.3} s, {:.0} messages/s)",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.rows_per_second(),
            self.routing.as_secs_f64(),
            rate(self.messages, self.routing),
        );
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "files": self.files.iter().map(|(file, format, messages)| json!({
                "file": file, "format": format, "messages": messages
            })).collect::<Vec<_>>(),
            "messages": self.messages,
            "routes": self.routes.iter().map(|r| json!({
                "name": r.name,
                "endpoint": r.endpoint,
                "enabled": r.enabled,
                "matched": r.matched.json(),
                "undefined": r.undefined.json(),
            })).collect::<Vec<_>>(),
            "fallback": self.fallback.as_ref().map(Outcome::json),
            "unmatched": self.unmatched.json(),
            "seconds": self.elapsed.as_secs_f64(),
            "routing_seconds": self.routing.as_secs_f64(),
            "messages_per_second": self.rows_per_second(),
        })
    }
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        messages as f64 / seconds
    } else {
        0.0
    }
}
