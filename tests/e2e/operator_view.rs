//! End-to-end tests of what an operator sees: the status page in a real headless Chromium, the
//! Grafana dashboard's queries against a live engine's `/metrics`, `hubroute top` on a pipe
//! (including when the engine goes away), and the quick start's live view: its progress lines on
//! a pipe, and its block redrawn in place on a terminal (a pseudo-terminal rendered by pyte, a
//! VT100 emulator, in `python/terminal_block.py`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hubroute_emulator::simulate::{
    Rate, Simulation, SimulationConfig, SimulationTarget, StopAfter,
};
use hubroute_emulator::{Emulator, EmulatorConfig, RunningEmulator};
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::pipeline::RunningEngine;
use hubroute_protocol::ConnectionString;
use serde_json::Value;

use crate::browser::Browser;

const EVENTS: u64 = 2000;

/// An engine that has routed [`EVENTS`] simulated events to a Parquet and an SQLite endpoint,
/// through three routes (one of them always undefined), and is idle.
struct LiveEngine {
    engine: RunningEngine,
    /// The source's connection string in the engine's configuration, key and all.
    connection_string: String,
    _emulator: RunningEmulator,
    _dir: tempfile::TempDir,
}

impl LiveEngine {
    async fn start() -> Self {
        let emulator = Emulator::start(EmulatorConfig {
            amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..EmulatorConfig::default()
        })
        .await
        .expect("the emulator starts");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hubroute.toml");
        let connection_string = emulator.connection_string("hub");
        std::fs::write(&path, config(dir.path(), &connection_string)).unwrap();
        let engine = RunningEngine::start(LoadedConfig::load(&path).unwrap())
            .await
            .expect("the engine starts");
        let report = Simulation::new(SimulationConfig {
            target: SimulationTarget::Amqp {
                connection_string: ConnectionString::parse(&emulator.connection_string("hub"))
                    .unwrap(),
                partition: None,
            },
            devices: NonZeroU32::new(20).unwrap(),
            rate: Rate::PerSecond(NonZeroU32::new(1000).unwrap()),
            stop: StopAfter::Events(EVENTS),
            seed: 3,
            max_in_flight: 64,
            mix: Default::default(),
        })
        .run()
        .await
        .expect("the simulation runs");
        assert_eq!(report.sent, EVENTS);
        let live = Self {
            engine,
            connection_string,
            _emulator: emulator,
            _dir: dir,
        };
        // Idle: everything routed, committed, checkpointed, and the lag read since.
        let started = Instant::now();
        loop {
            let metrics = live.metrics().await;
            let done = value(&metrics, "hubroute_events_routed_total") == Some(EVENTS as f64)
                && value(
                    &metrics,
                    "hubroute_endpoint_delivered_total{endpoint=\"lake\"}",
                ) == Some(EVENTS as f64)
                && (0..4).all(|p| {
                    value(
                        &metrics,
                        &format!("hubroute_partition_lag_events{{partition=\"{p}\"}}"),
                    ) == Some(0.0)
                        && value(
                            &metrics,
                            &format!(
                                "hubroute_partition_checkpoint_sequence_number{{partition=\"{p}\"}}"
                            ),
                        )
                        .is_some()
                });
            if done {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the engine did not settle within 60 s:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        live
    }

    fn url(&self) -> String {
        format!("http://{}", self.engine.http_addr())
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn config(dir: &std::path::Path, connection_string: &str) -> String {
    let dir = dir.display();
    format!(
        r#"hub_name = "operator-view"

[source]
connection_string = "{connection_string}"
batch_linger = "5ms"

[checkpoint]
dir = "{dir}/checkpoints"
interval = "200ms"

[dead_letters]
store = {{ kind = "local", root = "{dir}" }}

[service]
listen = "127.0.0.1:0"
lag_interval = "300ms"

[[endpoints]]
sink = {{ type = "parquet", name = "lake", store = {{ kind = "local", root = "{dir}/lake" }}, max_file_age = "200ms" }}

[[endpoints]]
sink = {{ type = "sqlite", name = "alerts-db", path = "{dir}/alerts.db", table = {{ name = "hot" }}, linger = "10ms" }}

[[routes]]
name = "archive"
endpoint = "lake"

[[routes]]
name = "hot-temperature"
condition = "$body.temperature > 30"
endpoint = "alerts-db"

[[routes]]
name = "never-defined"
condition = "$body.no_such_field = 1"
endpoint = "alerts-db"
"#
    )
}

/// The value of the series printed exactly as `series` (name and labels) in Prometheus text.
/// Read here line by line, independently of the view's own parser.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

/// The one status label of `endpoint` whose health series is 1.
fn health(metrics: &str, endpoint: &str) -> Option<String> {
    metrics.lines().find_map(|line| {
        let labels = line.strip_prefix("hubroute_endpoint_health{")?;
        let (labels, value) = labels.split_once("} ")?;
        (labels.contains(&format!("endpoint=\"{endpoint}\"")) && value == "1").then(|| {
            labels
                .split("status=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_default()
                .to_owned()
        })
    })
}

/// Every cell value of the page's tables: (table, row, field) → data-value.
async fn page_values(browser: &Browser) -> BTreeMap<(String, String, String), String> {
    let cells = browser
        .eval(
            "const out = [];
             for (const table of ['routes', 'endpoints', 'partitions']) {
               for (const row of document.querySelectorAll('#' + table + ' tbody tr')) {
                 for (const cell of row.querySelectorAll('td[data-value]')) {
                   out.push([table, row.dataset.name, cell.dataset.field, cell.dataset.value]);
                 }
               }
             }
             for (const fact of document.querySelectorAll('#totals .fact[data-value]')) {
               out.push(['totals', '', fact.dataset.field, fact.dataset.value]);
             }
             return out;",
        )
        .await;
    cells
        .as_array()
        .expect("an array of cells")
        .iter()
        .map(|cell| {
            let text = |i: usize| cell[i].as_str().unwrap_or_default().to_owned();
            ((text(0), text(1), text(2)), text(3))
        })
        .collect()
}

/// What the page must show, computed from `/metrics`; a series missing there is expected as
/// `<series> is not in /metrics`, which the page never shows.
fn expected_values(metrics: &str) -> BTreeMap<(String, String, String), String> {
    let mut expected = BTreeMap::new();
    let mut put = |table: &str, row: &str, field: &str, series: String| {
        let value = value(metrics, &series)
            .map_or_else(|| format!("{series} is not in /metrics"), format_number);
        expected.insert((table.to_owned(), row.to_owned(), field.to_owned()), value);
    };
    for route in ["archive", "hot-temperature", "never-defined"] {
        put(
            "routes",
            route,
            "matched",
            format!("hubroute_route_matched_total{{route=\"{route}\"}}"),
        );
        put(
            "routes",
            route,
            "undefined",
            format!("hubroute_route_undefined_total{{route=\"{route}\"}}"),
        );
    }
    for endpoint in ["lake", "alerts-db"] {
        let labels = format!("{{endpoint=\"{endpoint}\"}}");
        put(
            "endpoints",
            endpoint,
            "delivered",
            format!("hubroute_endpoint_delivered_total{labels}"),
        );
        put(
            "endpoints",
            endpoint,
            "failed",
            format!("hubroute_endpoint_failed_total{labels}"),
        );
        put(
            "endpoints",
            endpoint,
            "dead_lettered",
            format!("hubroute_endpoint_dead_lettered_total{labels}"),
        );
        put(
            "endpoints",
            endpoint,
            "parked",
            format!("hubroute_endpoint_parked_rows_total{labels}"),
        );
        put(
            "endpoints",
            endpoint,
            "queue_depth",
            format!("hubroute_endpoint_queue_depth{labels}"),
        );
    }
    for partition in 0..4 {
        let labels = format!("{{partition=\"{partition}\"}}");
        let row = partition.to_string();
        put(
            "partitions",
            &row,
            "events",
            format!("hubroute_partition_events_total{labels}"),
        );
        put(
            "partitions",
            &row,
            "lag_events",
            format!("hubroute_partition_lag_events{labels}"),
        );
        put(
            "partitions",
            &row,
            "checkpoint",
            format!("hubroute_partition_checkpoint_sequence_number{labels}"),
        );
    }
    put(
        "totals",
        "",
        "events_routed",
        "hubroute_events_routed_total".to_owned(),
    );
    put(
        "totals",
        "",
        "fallback_matched",
        "hubroute_fallback_matched_total".to_owned(),
    );
    put(
        "totals",
        "",
        "reconnects",
        "hubroute_source_reconnects".to_owned(),
    );
    let mut with_health = expected;
    for endpoint in ["lake", "alerts-db"] {
        with_health.insert(
            (
                "endpoints".to_owned(),
                endpoint.to_owned(),
                "health".to_owned(),
            ),
            health(metrics, endpoint)
                .unwrap_or_else(|| format!("the health of {endpoint} is not in /metrics")),
        );
    }
    with_health
}

/// Numbers as JavaScript's `String(number)` writes them (the page's data-value).
fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e21 {
        format!("{value:.0}")
    } else {
        value.to_string()
    }
}

/// What must never be served: the source connection string's key, and the key's name in any
/// connection string (`SharedAccessKey=`, `SharedAccessKeyName=`, any case).
fn secrets_in(text: &str, connection_string: &str) -> Vec<String> {
    let key = connection_string
        .split(';')
        .find_map(|part| part.strip_prefix("SharedAccessKey="))
        .expect("the test's connection string has a key");
    let mut found = Vec::new();
    if text.contains(key) {
        found.push("the connection string's key".to_owned());
    }
    if text.to_lowercase().contains("sharedaccesskey") {
        found.push("`SharedAccessKey`".to_owned());
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_draws_its_charts_and_shows_the_numbers_of_metrics_in_chromium() {
    let live = LiveEngine::start().await;
    let url = live.url();

    // Read-only and self-contained, as served.
    let client = reqwest::Client::new();
    let index = client.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let policy = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    for path in ["/", "/status", "/metrics"] {
        let post = client.post(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(post.status(), 405, "POST {path} must be refused");
    }
    // No secret in what the page is made of, the data it fetches, or the pages it links to.
    for path in [
        "/",
        "/assets/status.js",
        "/assets/status.css",
        "/status",
        "/routes",
        "/healthz",
        "/metrics",
    ] {
        let body = client
            .get(format!("{url}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let secrets = secrets_in(&body, &live.connection_string);
        assert!(secrets.is_empty(), "GET {path} shows {secrets:?}:\n{body}");
    }

    let browser = Browser::start(1400, 1500).await;
    browser.goto(&format!("{url}/")).await;
    let drawn = browser
        .poll_until(
            Duration::from_secs(30),
            "const n = (id) => { const s = document.querySelector('#' + id + ' svg');
                                  return [Number(s.dataset.series || 0), Number(s.dataset.points || 0),
                                          s.querySelectorAll('path.series').length]; };
             const [r, e, l] = [n('chart-routes'), n('chart-endpoints'), n('chart-lag')];
             return r[0] === 3 && r[1] > 3 && r[2] === 3 && e[0] === 2 && e[1] > 2 && e[2] === 2
                 && l[0] === 4 && l[1] > 4 && l[2] === 4
                 && document.getElementById('connection').textContent === '● live';",
        )
        .await;

    // The engine is idle, so the page converges on /metrics; compare once both agree or fail
    // with the difference.
    let started = Instant::now();
    let (expected, shown) = loop {
        let expected = expected_values(&live.metrics().await);
        let shown = page_values(&browser).await;
        let agree = expected
            .iter()
            .all(|(key, value)| shown.get(key) == Some(value));
        if agree || started.elapsed() > Duration::from_secs(20) {
            break (expected, shown);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The page as drawn: its text and its whole document, data attributes included.
    let rendered = browser
        .eval("return document.body.innerText + '\\n' + document.documentElement.outerHTML;")
        .await;
    let rendered = rendered.as_str().expect("the page's text").to_owned();

    // The screenshot before any check, so that a failing run leaves it too.
    let png = browser.screenshot().await;
    let artefact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&artefact, &png).unwrap();
    eprintln!("status page screenshot: {}", artefact.display());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the screenshot is a PNG");

    assert!(
        drawn,
        "the three charts did not draw lines for every route, endpoint and partition within \
         30 s (see {})",
        artefact.display()
    );
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(key, value)| shown.get(*key) != Some(*value))
        .map(|(key, value)| format!("{key:?}: /metrics {value}, page {:?}", shown.get(key)))
        .collect();
    assert!(
        wrong.is_empty(),
        "the page disagrees with /metrics (see {}):\n{}",
        artefact.display(),
        wrong.join("\n")
    );
    assert_eq!(
        expected[&(
            "routes".to_owned(),
            "never-defined".to_owned(),
            "undefined".to_owned()
        )],
        EVENTS.to_string()
    );
    let secrets = secrets_in(&rendered, &live.connection_string);
    assert!(
        secrets.is_empty(),
        "the page shows {secrets:?}:\n{rendered}"
    );
    // Latency quantiles are drawn from the histogram for endpoints that committed.
    let p99 = browser
        .eval("return document.querySelector('#endpoints tr[data-name=\"lake\"] td[data-field=\"p99_seconds\"]').textContent;")
        .await;
    assert_ne!(p99, Value::String("–".to_owned()), "no p99 for lake");

    // The page says so when the service goes away, and keeps the last numbers.
    let LiveEngine { engine, .. } = live;
    engine.shutdown().await.unwrap();
    browser
        .wait_for(
            "the page shows the service as disconnected",
            Duration::from_secs(15),
            "return document.getElementById('connection').textContent === 'disconnected, retrying'
                 && !document.getElementById('problem').hidden
                 && document.querySelectorAll('#routes tbody tr').length === 3;",
        )
        .await;
}

/// Metric names and label names an expression of the dashboard reads: identifiers starting with
/// `hubroute_`, labels inside `{…}` selectors, `by (…)`/`without (…)` lists and the second argument
/// of `label_values(…)`.
fn queried(expression: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let chars: Vec<char> = expression.chars().collect();
    let mut i = 0;
    let mut in_braces = false;
    let mut in_quotes = false;
    let mut list_depth: Option<usize> = None;
    let mut parens = 0_usize;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if in_quotes {
            if c == '\\' {
                i += 1;
            } else if c == '"' {
                in_quotes = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '{' => in_braces = true,
            '}' => in_braces = false,
            '(' => {
                parens += 1;
                if last_word == "by" || last_word == "without" {
                    list_depth = Some(parens);
                }
            }
            ')' => {
                if list_depth == Some(parens) {
                    list_depth = None;
                }
                parens = parens.saturating_sub(1);
            }
            c if is_ident(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if in_braces || list_depth.is_some() {
                    labels.insert(word.clone());
                } else if word.starts_with("hubroute_") {
                    metrics.insert(word.clone());
                }
                last_word = word;
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    if let Some(arguments) = expression.strip_prefix("label_values(")
        && let Some((_, label)) = arguments.trim_end_matches(')').rsplit_once(',')
    {
        labels.insert(label.trim().to_owned());
    }
    (metrics, labels)
}

/// Every PromQL expression of the dashboard: panel targets (rows nest panels) and variables.
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(
                    target["expr"]
                        .as_str()
                        .expect("a target with expr")
                        .to_owned(),
                );
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            out.push(variable["definition"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// Labels Prometheus adds to every scraped series; they are not in `/metrics` itself.
const TARGET_LABELS: &[&str] = &["instance", "job"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_and_the_view_query_only_series_a_live_engine_exports() {
    let live = LiveEngine::start().await;
    // A reload makes the reload counter appear too.
    live.engine.reloader().reload().unwrap();
    let metrics = live.metrics().await;
    // Series name → every label name it carries.
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap();
        let labels = exported.entry(line[..name_end].to_owned()).or_default();
        if let Some(inside) = line[name_end..].strip_prefix('{') {
            for pair in inside.split("\",") {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.trim_start_matches(',').to_owned());
                }
            }
        }
    }

    let path = crate::support::workspace_root().join("deploy/grafana/hubroute.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    // Importable as it is: a title, a uid, no fixed id, and every panel on the datasource variable.
    assert_eq!(dashboard["uid"], "hubroute");
    assert!(dashboard["id"].is_null());
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus")
    );
    let expressions = dashboard_expressions(&dashboard);
    assert!(expressions.len() >= 15, "{expressions:?}");

    let mut problems = Vec::new();
    let mut covered = BTreeSet::new();
    for expression in &expressions {
        let (names, labels) = queried(expression);
        assert!(!names.is_empty(), "no hubroute metric in `{expression}`");
        for name in &names {
            if exported.contains_key(name) {
                covered.insert(name.clone());
            } else {
                problems.push(format!("`{name}` (in `{expression}`) is not in /metrics"));
            }
        }
        for label in labels
            .iter()
            .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
        {
            if !names
                .iter()
                .any(|n| exported.get(n).is_some_and(|l| l.contains(label)))
            {
                problems.push(format!(
                    "label `{label}` of `{expression}` is on none of {names:?}"
                ));
            }
        }
    }
    // `top` and the status page read these names: the same check.
    for (name, labels) in hubroute_view::status::names::READ {
        match exported.get(*name) {
            None => problems.push(format!("the view reads `{name}`, which is not in /metrics")),
            Some(have) => {
                for label in *labels {
                    if !have.contains(*label) {
                        problems.push(format!(
                            "the view reads `{name}` by `{label}`, which it lacks"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\n/metrics:\n{metrics}",
        problems.join("\n")
    );
    // The dashboard covers what the issue asks for.
    for needed in [
        "hubroute_route_matched_total",
        "hubroute_endpoint_delivered_total",
        "hubroute_endpoint_health",
        "hubroute_endpoint_commit_latency_seconds_bucket",
        "hubroute_partition_lag_events",
        "hubroute_partition_lag_seconds",
        "hubroute_source_reconnects",
    ] {
        assert!(
            covered.contains(needed),
            "the dashboard does not chart {needed}"
        );
    }
}

#[test]
fn dashboard_expressions_are_read_for_names_and_labels() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "sum by (route) (rate(hubroute_route_matched_total{instance=~\"$instance\", route=~\"a,b\"}[$__rate_interval]))",
            &["hubroute_route_matched_total"],
            &["instance", "route"],
        ),
        (
            "histogram_quantile(0.99, sum by (endpoint, le) (rate(hubroute_endpoint_commit_latency_seconds_bucket[5m])))",
            &["hubroute_endpoint_commit_latency_seconds_bucket"],
            &["endpoint", "le"],
        ),
        (
            "label_values(hubroute_partition_events_total{instance=~\"$instance\"}, partition)",
            &["hubroute_partition_events_total"],
            &["instance", "partition"],
        ),
        (
            "(hubroute_endpoint_health{status=\"dead\"} == 1) * 4 or vector(0)",
            &["hubroute_endpoint_health"],
            &["status"],
        ),
    ];
    for (expression, names, labels) in cases {
        let (got_names, got_labels) = queried(expression);
        let want = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(got_names, want(names), "{expression}");
        assert_eq!(got_labels, want(labels), "{expression}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_on_a_pipe_prints_the_service_and_says_disconnected_when_it_stops() {
    let live = LiveEngine::start().await;
    let mut child = crate::support::hubroute()
        .args(["top", "--interval", "200ms", "--url", &live.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning `hubroute top`");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_matching = |what: &str, wanted: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "`hubroute top` printed no line with {what}; it printed:\n{}",
            seen.join("\n")
        );
    };
    let line = next_matching("every event routed", &|l| {
        l.starts_with(&format!("routed {EVENTS} "))
    });
    assert!(
        line.contains(&format!("matched: archive {EVENTS}, hot-temperature "))
            && line.contains(&format!("delivered: lake healthy {EVENTS}"))
            && line.ends_with("| lag 0 events"),
        "{line}"
    );

    let LiveEngine { engine, .. } = live;
    let url = format!("http://{}", engine.http_addr());
    engine.shutdown().await.unwrap();
    let line = next_matching("the disconnection", &|l| {
        l.starts_with("disconnected, retrying")
    });
    assert!(
        line.starts_with(&format!("disconnected, retrying: {url}/metrics: ")),
        "{line}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "`top` must keep retrying, not exit"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_quickstart_never_shows_more_events_routed_than_sent() {
    let dir = tempfile::tempdir().unwrap();
    let output = crate::support::hubroute()
        .args(["quickstart", "--events", "6000", "--rate", "1000", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let number_after = |line: &str, word: &str| -> u64 {
        line.split(word)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(',').parse().ok())
            .unwrap_or_else(|| panic!("no `{word}` number in {line}"))
    };
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with("sent ")).collect();
    // One line every five seconds while it runs (about six seconds here), and a last one.
    assert!(progress.len() >= 2, "{stderr}");
    for line in &progress {
        let (sent, routed) = (number_after(line, "sent "), number_after(line, "routed "));
        assert!(sent >= routed, "routed more than sent: {line}");
        assert!(line.contains("| matched: archive "), "{line}");
    }
    let last = progress.last().unwrap();
    // Every device message was routed (the archive takes them all), and by the end everything
    // sent (device messages and the hub's own twin change and lifecycle events) was routed.
    assert_eq!(number_after(last, "matched: archive "), 6000, "{last}");
    assert_eq!(
        number_after(last, "routed "),
        number_after(last, "sent "),
        "{last}"
    );
}

/// Device messages of the quick start under a terminal: about three seconds of sending, so the
/// block is redrawn several times before the lake's last file closes.
const TERMINAL_EVENTS: u64 = 3000;

#[test]
fn the_quickstart_redraws_one_status_block_in_place_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("terminal.raw");
    let quickstart = dir.path().join("quickstart");
    let events = TERMINAL_EVENTS.to_string();
    let output = crate::support::run_python(
        "terminal_block.py",
        &[
            "120",
            "40",
            "60",
            transcript.to_str().unwrap(),
            "--",
            // As a user runs it: the quick start's own log filter, a common terminal.
            "env",
            "-u",
            "RUST_LOG",
            "TERM=xterm-256color",
            env!("CARGO_BIN_EXE_hubroute"),
            "quickstart",
            "--events",
            &events,
            "--rate",
            "1000",
            "--dir",
            quickstart.to_str().unwrap(),
        ],
    );
    let terminal: Value = serde_json::from_str(&output).unwrap();
    let strings = |key: &str| -> Vec<String> {
        terminal[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect()
    };
    let history = strings("history");
    // Scrollback, then the screen: everything the user can see or scroll back to, top to bottom.
    let lines: Vec<String> = history.iter().cloned().chain(strings("screen")).collect();
    let text = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{i:3} {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let context = format!("terminal (raw bytes in {}):\n{text}", transcript.display());
    assert_eq!(terminal["status"], 0, "the quick start failed; {context}");
    let only = |what: &str, matches: &dyn Fn(&str) -> bool| -> usize {
        let found: Vec<usize> = (0..lines.len()).filter(|&i| matches(&lines[i])).collect();
        assert_eq!(
            found.len(),
            1,
            "{what} on lines {found:?}, not once: the block must be redrawn in place; {context}"
        );
        found[0]
    };

    // One block, drawn once: its title, totals, table titles and column headers each appear on
    // one line of the screen and its scrollback.
    let started = only("the start-up line", &|l| {
        l.starts_with("hubroute quickstart: emulator at ")
    });
    let title = only("the block's title", &|l| {
        l.starts_with("hubroute · quickstart · hub quickstart-hub") && l.ends_with("● connected")
    });
    let totals = only("the totals", &|l| l.starts_with("sent "));
    let routes = only("the routes' title", &|l| l == "ROUTES 6");
    only("the routes' header", &|l| l.starts_with("route  "));
    let endpoints = only("the endpoints' title", &|l| l == "ENDPOINTS 4");
    only("the endpoints' header", &|l| l.starts_with("endpoint  "));
    let partitions = only("the partitions' title", &|l| l == "PARTITIONS 4");
    only("the partitions' header", &|l| l.starts_with("partition  "));
    assert!(started < title, "{context}");
    assert_eq!(
        [totals, routes, endpoints, partitions],
        [title + 1, title + 2, title + 10, title + 16],
        "{context}"
    );
    // The last partition row ends the block.
    let end = partitions + 5;
    assert!(
        lines[end - 3..=end].iter().all(|l| l
            .split_whitespace()
            .next()
            .is_some_and(|p| p.parse::<u8>().is_ok())),
        "{context}"
    );

    // The block left on screen shows the final counts.
    let number_after = |line: &str, word: &str| -> u64 {
        line.split(word)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{word}` number in `{line}`; {context}"))
    };
    let archive: Vec<&str> = lines[routes + 2..endpoints]
        .iter()
        .find(|l| l.starts_with("archive "))
        .unwrap_or_else(|| panic!("no archive row; {context}"))
        .split_whitespace()
        .collect();
    // route, endpoint, matched/s, undefined/s, matched, undefined
    assert_eq!(
        (archive[1], archive[4]),
        ("lake", events.as_str()),
        "{context}"
    );
    let (sent, routed) = (
        number_after(&lines[totals], "sent "),
        number_after(&lines[totals], "routed "),
    );
    assert!(
        sent >= routed && routed >= TERMINAL_EVENTS,
        "sent {sent}, routed {routed}; {context}"
    );

    // The cursor ends below the block: the summary follows it, and the cursor follows that.
    let summary = only("the summary", &|l| {
        l.starts_with(&format!("routed {TERMINAL_EVENTS} device messages and "))
    });
    let last = only("the summary's last line", &|l| {
        l.starts_with("run the same routes against your own hub")
    });
    assert_eq!(summary, end + 1, "{context}");
    let cursor = history.len() + terminal["cursor"][1].as_u64().unwrap() as usize;
    assert!(
        cursor > last && lines[cursor..].iter().all(String::is_empty),
        "the cursor is on line {cursor}; {context}"
    );
}
