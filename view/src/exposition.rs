//! The Prometheus text exposition format (and OpenMetrics, which the engine serves) read into a flat
//! list of samples.
//!
//! We read the format ourselves rather than pull in a Prometheus client: the view needs only names,
//! labels and values, and it must accept what any version of the engine prints, including metrics it
//! has never heard of. `# TYPE` lines are kept so that counters can be told from gauges; `# HELP`,
//! `# UNIT`, timestamps and exemplars are read past.

use std::collections::HashMap;

use crate::{Error, Result};

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name, with its suffix (`_total`, `_bucket`, …).
    pub name: String,
    /// Labels in the order they were printed.
    pub labels: Vec<(String, String)>,
    /// The value; `+Inf`, `-Inf` and `NaN` are read as such.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The kind of a metric family as its `# TYPE` line declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (resets when the process restarts): shown as a rate.
    Counter,
    /// Goes up and down: shown as it is.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
    /// Anything else (`summary`, `info`, `stateset`, `unknown`, …).
    Other,
}

/// Every sample of one scrape of `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Samples in the order they were printed.
    pub samples: Vec<Sample>,
    /// Declared types by family name (without `_total`, `_bucket`, … suffixes).
    types: HashMap<String, MetricType>,
}

impl Scrape {
    /// Reads a whole exposition. A malformed line is an error naming its line number: a view built
    /// from half a scrape would show wrong numbers.
    pub fn parse(text: &str) -> Result<Self> {
        let mut scrape = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let at = |problem: String| Error::Exposition {
                line: index + 1,
                problem,
            };
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                        return Err(at(format!("a TYPE line needs a name and a type: {line}")));
                    };
                    let kind = match kind {
                        "counter" => MetricType::Counter,
                        "gauge" => MetricType::Gauge,
                        "histogram" => MetricType::Histogram,
                        _ => MetricType::Other,
                    };
                    scrape.types.insert(family.to_owned(), kind);
                }
                continue;
            }
            scrape.samples.push(parse_sample(line).map_err(at)?);
        }
        Ok(scrape)
    }

    /// The value of the sample called `name` whose labels are exactly `labels` (in any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && same_labels(&s.labels, labels))
            .map(|s| s.value)
    }

    /// The samples called `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The declared type of the family that sample `name` belongs to. Without a `# TYPE` line a
    /// `_total` sample is a counter and anything else a gauge, as Prometheus's conventions go.
    pub fn type_of(&self, name: &str) -> MetricType {
        if let Some(kind) = self.types.get(name) {
            return *kind;
        }
        for suffix in ["_total", "_bucket", "_count", "_sum", "_created"] {
            if let Some(family) = name.strip_suffix(suffix)
                && let Some(kind) = self.types.get(family)
            {
                return *kind;
            }
        }
        if name.ends_with("_total") {
            MetricType::Counter
        } else {
            MetricType::Gauge
        }
    }
}

fn same_labels(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(n, v)| have.iter().any(|(hn, hv)| hn == n && hv == v))
}

fn parse_sample(line: &str) -> std::result::Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| format!("a sample needs a value: {line}"))?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("`{name}` is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    // The value, then an optional timestamp and an optional OpenMetrics exemplar (`# {…} v`).
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("`{name}` has no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a number"))?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads `name="value",…}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut text: &'a str,
    labels: &mut Vec<(String, String)>,
) -> std::result::Result<&'a str, String> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = text
            .find('=')
            .ok_or_else(|| format!("a label needs `=\"value\"`: {text}"))?;
        let name = text[..eq].trim();
        if !is_metric_name(name) || name.contains(':') {
            return Err(format!("`{name}` is not a label name"));
        }
        let quoted = text[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label `{name}` must be quoted"))?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("label `{name}` ends inside an escape")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("the value of label `{name}` is not closed")),
            }
        };
        labels.push((name.to_owned(), value));
        text = quoted[end + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A line, and the name, labels and value it reads as.
    type SampleCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64);

    #[test]
    fn sample_lines_read_as_name_labels_and_value() {
        let cases: &[SampleCase<'_>] = &[
            ("plain 1", "plain", &[], 1.0),
            ("with_ts 2.5 1700000000000", "with_ts", &[], 2.5),
            (
                "a_total{route=\"archive\"} 901",
                "a_total",
                &[("route", "archive")],
                901.0,
            ),
            (
                "b_bucket{le=\"0.001\",endpoint=\"lake\"} 0",
                "b_bucket",
                &[("le", "0.001"), ("endpoint", "lake")],
                0.0,
            ),
            (
                "c_bucket{le=\"+Inf\"} 7",
                "c_bucket",
                &[("le", "+Inf")],
                7.0,
            ),
            ("d{x=\"a,b} c\"} -3", "d", &[("x", "a,b} c")], -3.0),
            (
                "e{x=\"q\\\"uote\\\\ and\\nline\"} 1e3",
                "e",
                &[("x", "q\"uote\\ and\nline")],
                1000.0,
            ),
            ("f{x=\"1\",} 4", "f", &[("x", "1")], 4.0),
            (
                "g{ x = \"1\" , y=\"2\" } 5",
                "g",
                &[("x", "1"), ("y", "2")],
                5.0,
            ),
            ("h{} +Inf", "h", &[], f64::INFINITY),
            ("i -Inf", "i", &[], f64::NEG_INFINITY),
            (
                "j_total{a=\"b\"} 3 # {trace_id=\"x\"} 1 1700000000",
                "j_total",
                &[("a", "b")],
                3.0,
            ),
            ("ns:rule_name 6", "ns:rule_name", &[], 6.0),
            ("k{x=\"ünïcødé\"} 0.25", "k", &[("x", "ünïcødé")], 0.25),
        ];
        for (line, name, want_labels, value) in cases {
            let sample = parse_sample(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(sample.name, *name, "{line}");
            assert_eq!(sample.labels, labels(want_labels), "{line}");
            assert!(
                sample.value == *value || (sample.value.is_nan() && value.is_nan()),
                "{line}: {}",
                sample.value
            );
        }
        assert!(parse_sample("nan NaN").unwrap().value.is_nan());
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let cases: &[(&str, &str)] = &[
            ("no_value", "needs a value"),
            ("x{a=\"1\"}", "has no value"),
            ("x abc", "not a number"),
            ("x{a=1} 2", "must be quoted"),
            ("x{a=\"1} 2", "not closed"),
            ("x{a} 2", "needs `=\"value\"`"),
            ("1x 2", "not a metric name"),
            ("x{1a=\"v\"} 2", "not a label name"),
            ("# TYPE onlyname", "needs a name and a type"),
        ];
        for (line, problem) in cases {
            let text = format!("ok 1\n{line}\n");
            let error = Scrape::parse(&text).expect_err(line).to_string();
            assert!(error.contains("line 2"), "{line}: {error}");
            assert!(error.contains(problem), "{line}: {error}");
        }
    }

    #[test]
    fn types_come_from_type_lines_or_the_total_suffix() {
        let text = "# HELP hubroute_route_matched Messages a route matched.\n\
                    # TYPE hubroute_route_matched counter\n\
                    hubroute_route_matched_total{route=\"a\"} 3\n\
                    # TYPE hubroute_endpoint_commit_latency_seconds histogram\n\
                    hubroute_endpoint_commit_latency_seconds_bucket{le=\"1\"} 1\n\
                    # TYPE hubroute_source_reconnects gauge\n\
                    hubroute_source_reconnects 2\n\
                    untyped_total 1\n\
                    untyped 1\n\
                    # EOF\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.samples.len(), 5);
        let cases = [
            ("hubroute_route_matched_total", MetricType::Counter),
            (
                "hubroute_endpoint_commit_latency_seconds_bucket",
                MetricType::Histogram,
            ),
            ("hubroute_source_reconnects", MetricType::Gauge),
            ("untyped_total", MetricType::Counter),
            ("untyped", MetricType::Gauge),
        ];
        for (name, kind) in cases {
            assert_eq!(scrape.type_of(name), kind, "{name}");
        }
        assert_eq!(
            scrape.value("hubroute_route_matched_total", &[("route", "a")]),
            Some(3.0)
        );
        assert_eq!(
            scrape.value("hubroute_route_matched_total", &[("route", "b")]),
            None
        );
    }
}
