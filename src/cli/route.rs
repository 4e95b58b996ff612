//! `hubroute route ...`: evaluate route conditions by hand, like `az iot hub message-route test`.
//!
//! `route test` builds a one-message batch and runs the same evaluator the engine runs, so what it
//! prints is exactly what routing would do. The route comes from `--condition` (prints the truth
//! value) or from a whole configuration with `--config` and `--message FILE` (prints the routes and
//! endpoints the message reaches, fallback included, and the application properties each endpoint's
//! enrichments add, through the engine's own routing table). `--message` also takes one IoT Hub
//! storage JSON record or one `az iot hub monitor-events` event.
//!
//! With `--config` and `--input FILE…` it backtests the configuration on archived messages
//! (`hubroute_migrate::backtest`: IoT Hub storage Avro and JSON, hubroute Parquet, monitor-events
//! captures), batch by batch through the same routing table, and prints matches per route.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use arrow::record_batch::RecordBatch;
use hubroute_engine::config::LoadedConfig;
use hubroute_engine::routing::{Explanation, RoutingTable};
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, SystemProperties};

/// `hubroute route` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RouteCommand {
    /// Evaluate one condition against one message (prints `true`, `false` or `undefined`), a
    /// whole configuration (prints the matching routes and the endpoints reached), or backtest a
    /// configuration on archived messages (`--config F --input FILE…`: matches per route).
    ///
    /// Exits 0 after printing the result, 2 if the condition or configuration is invalid.
    Test(TestArgs),
}

/// Arguments of `hubroute route test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    #[command(flatten)]
    route: RouteSource,
    #[command(flatten)]
    message: MessageArgs,
    #[command(flatten)]
    backtest: BacktestArgs,
}

/// Backtesting a configuration on archived messages.
#[derive(Debug, clap::Args)]
struct BacktestArgs {
    /// Archived messages to route with `--config`: IoT Hub storage Avro or JSON files, hubroute
    /// Parquet files, or the saved output of `az iot hub monitor-events --properties all --output
    /// json`. The format is recognised from the content.
    #[arg(long, value_name = "FILE", num_args = 1.., requires = "config",
          conflicts_with_all = ["message_file", "body", "app_properties", "system_properties", "twin"])]
    input: Vec<PathBuf>,
    /// Twins for `$twin` conditions: the output of `az iot hub query --hub-name <hub>
    /// --query-command "SELECT * FROM devices" --output json` (and of `… FROM devices.modules`,
    /// concatenated). Without it archived messages have no twins and `$twin` is undefined.
    #[arg(long, value_name = "FILE", requires = "input")]
    twins: Option<PathBuf>,
    /// Print the backtest as JSON.
    #[arg(long, requires = "input")]
    json: bool,
    /// Example message ids kept per route and outcome.
    #[arg(long, default_value_t = 3, requires = "input")]
    examples: usize,
}

/// Where the condition under test comes from (exactly one).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct RouteSource {
    /// The route condition, e.g. `$body.temperature > 30 AND severity = 'high'`; it may start with
    /// `-` (`-5 < $body.x`).
    #[arg(long, allow_hyphen_values = true)]
    condition: Option<String>,
    /// A configuration file: test every route, the fallback and enrichments of it, on `--message`
    /// or on `--input` files.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The message to evaluate against.
#[derive(Debug, clap::Args)]
struct MessageArgs {
    /// Message body (raw text, usually JSON). Body queries also need contentType
    /// `application/json` and contentEncoding `utf-8` in `--system-properties`.
    #[arg(long, default_value = "")]
    body: String,
    /// Application properties as a JSON object; non-string values keep their AMQP type
    /// (conditions see their canonical string).
    #[arg(long, value_name = "JSON_OBJECT")]
    app_properties: Option<String>,
    /// System properties as a JSON object, each named by its query keyword (`$contentType`,
    /// `$enqueuedTime`, ...) or as IoT Hub names them in storage (`contentType`, `enqueuedTime`,
    /// ...): messageId, correlationId, userId (text or an array of bytes), contentType, contentEncoding,
    /// enqueuedTime (also iothubEnqueuedTime), connectionDeviceId, connectionModuleId,
    /// connectionAuthMethod, connectionDeviceGenerationId, dt-dataschema, dt-subject,
    /// messageSource.
    #[arg(long, value_name = "JSON_OBJECT")]
    system_properties: Option<String>,
    /// Device or module twin as JSON, for `$twin` queries.
    #[arg(long, value_name = "JSON")]
    twin: Option<String>,
    /// The message as a JSON file: `{"body": ..., "appProperties": {...}, "systemProperties":
    /// {...}, "twin": {...}}` (a string body is taken as is, any other JSON value as its text),
    /// one IoT Hub storage JSON record (`{"EnqueuedTimeUtc", "Properties", "SystemProperties",
    /// "Body"}`), or one event as `az iot hub monitor-events --properties all --output json`
    /// prints it (`{"event": {...}}`).
    #[arg(long = "message", value_name = "FILE", conflicts_with_all = ["body", "app_properties", "system_properties", "twin"])]
    message_file: Option<PathBuf>,
}

/// The JSON file of `--message`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessageFile {
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    app_properties: Option<serde_json::Value>,
    #[serde(default)]
    system_properties: Option<serde_json::Value>,
    #[serde(default)]
    twin: Option<serde_json::Value>,
}

impl MessageArgs {
    /// The message as a one-row message batch.
    fn batch(&self) -> anyhow::Result<RecordBatch> {
        if let Some(path) = &self.message_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the message file {}", path.display()))?;
            if let Some(batch) =
                hubroute_migrate::single_message(&path.display().to_string(), &text)?
            {
                return Ok(batch);
            }
        }
        Ok(MessageBatchBuilder::batch_of(&[self.message()?])?)
    }

    fn message(&self) -> anyhow::Result<Message> {
        if let Some(path) = &self.message_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the message file {}", path.display()))?;
            let file: MessageFile = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a message file (hubroute's, an IoT Hub storage JSON record or \
                         a monitor-events event)",
                    path.display()
                )
            })?;
            let text_of = |value: Option<serde_json::Value>| {
                value.map(|v| match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                })
            };
            return Self {
                body: text_of(file.body).unwrap_or_default(),
                app_properties: text_of(file.app_properties),
                system_properties: text_of(file.system_properties),
                twin: text_of(file.twin),
                message_file: None,
            }
            .message();
        }
        let mut message = Message::telemetry(self.body.clone().into_bytes());
        if let Some(json) = &self.system_properties {
            message.system = serde_json::from_str::<SystemProperties>(json)
                .context("--system-properties must be a JSON object of system properties")?;
        }
        if let Some(json) = &self.app_properties {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(json).context("--app-properties must be a JSON object")?;
            message.application_properties = object
                .iter()
                .map(|(name, value)| (name.clone(), AppPropertyValue::from_json(value)))
                .collect();
        }
        message.twin.clone_from(&self.twin);
        Ok(message)
    }
}

pub(crate) fn run(command: RouteCommand) -> anyhow::Result<ExitCode> {
    match command {
        RouteCommand::Test(args) => test(&args),
    }
}

/// The condition's truth for the message, or why the condition does not compile.
fn outcome(
    args: &TestArgs,
) -> anyhow::Result<Result<hubroute_queries::Truth, hubroute_queries::Error>> {
    let batch = args.message.batch()?;
    let condition = args.route.condition.as_deref().unwrap_or_default();
    let compiled = match hubroute_queries::compile(condition) {
        Ok(compiled) => compiled,
        Err(error) => return Ok(Err(error)),
    };
    let truth = compiled
        .evaluate(&batch)
        .context("evaluating the condition")?
        .first()
        .copied()
        .unwrap_or(hubroute_queries::Truth::Undefined);
    Ok(Ok(truth))
}

/// The compiled configuration at `path`, or the error printed.
fn compile_config(path: &std::path::Path) -> Option<(LoadedConfig, RoutingTable)> {
    match LoadedConfig::load(path)
        .and_then(|loaded| RoutingTable::compile(&loaded).map(|table| (loaded, table)))
    {
        Ok(compiled) => Some(compiled),
        Err(error) => {
            eprintln!("error: {error}");
            None
        }
    }
}

/// Which routes and endpoints the message reaches under the configuration at `path`.
fn explain(path: &std::path::Path, batch: &RecordBatch) -> anyhow::Result<ExitCode> {
    let Some((_, table)) = compile_config(path) else {
        return Ok(ExitCode::from(2));
    };
    let explanation = table
        .explain_batch(batch)
        .context("evaluating the routes")?;
    print!("{}", render(&explanation));
    Ok(ExitCode::SUCCESS)
}

/// Routes every message of the `--input` files through the configuration at `path`.
fn backtest(path: &std::path::Path, args: &BacktestArgs) -> anyhow::Result<ExitCode> {
    let Some((loaded, table)) = compile_config(path) else {
        return Ok(ExitCode::from(2));
    };
    let twins = match &args.twins {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the twins file {}", path.display()))?;
            match hubroute_migrate::TwinSet::parse(&path.display().to_string(), &text) {
                Ok(twins) => Some(twins),
                Err(error) => {
                    eprintln!("error: {error}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        None => {
            for reader in loaded.config.twin_readers() {
                eprintln!(
                    "warning: {reader} reads $twin; archived messages carry no twins, so it sees \
                     undefined (give the hub's twins with --twins)"
                );
            }
            None
        }
    };
    let report =
        match hubroute_migrate::backtest(&table, &args.input, twins.as_ref(), args.examples) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("error: {error}");
                return Ok(ExitCode::from(2));
            }
        };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

/// The routes, fallback, endpoints and enrichments of an explanation, one line each (one line per
/// enriched endpoint, values quoted as JSON strings).
fn render(explanation: &Explanation) -> String {
    use std::fmt::Write as _;
    let list = |names: &[String]| {
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(", ")
        }
    };
    let fallback = if explanation.fallback { "yes" } else { "no" };
    let mut text = format!(
        "routes: {}\nfallback: {fallback}\nendpoints: {}\n",
        list(&explanation.routes),
        list(&explanation.endpoints)
    );
    if explanation.enrichments.is_empty() {
        text.push_str("enrichments: (none)\n");
    } else {
        text.push_str("enrichments:\n");
        for (endpoint, added) in &explanation.enrichments {
            let added: Vec<String> = added
                .iter()
                .map(|(key, value)| format!("{key}={}", serde_json::Value::from(value.as_str())))
                .collect();
            let _ = writeln!(text, "  {endpoint}: {}", added.join(", "));
        }
    }
    text
}

fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    if let Some(config) = &args.route.config {
        if !args.backtest.input.is_empty() {
            return backtest(config, &args.backtest);
        }
        if args.message.message_file.is_none() {
            eprintln!(
                "error: --config needs --message FILE (one message) or --input FILE… (a backtest)"
            );
            return Ok(ExitCode::from(2));
        }
        return explain(config, &args.message.batch()?);
    }
    match outcome(args)? {
        Ok(truth) => {
            println!("{truth}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: invalid route condition: {error}");
            Ok(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Harness {
        #[command(subcommand)]
        command: RouteCommand,
    }

    fn run_args(args: &[&str]) -> String {
        let harness =
            Harness::try_parse_from(["route", "test"].iter().chain(args)).expect("arguments parse");
        let RouteCommand::Test(args) = harness.command;
        match outcome(&args).expect("message arguments are valid") {
            Ok(truth) => truth.to_string(),
            Err(error) => format!("error: {}", error.to_string().lines().next().unwrap_or("")),
        }
    }

    #[test]
    fn route_test_prints_the_evaluators_verdict() {
        let json = r#"{"contentType":"application/json","contentEncoding":"utf-8"}"#;
        let cases: [(&[&str], &str); 11] = [
            (&["--condition", "true"], "true"),
            (&["--condition", "-5 < 3"], "true"),
            (&["--condition", ""], "true"),
            (&["--condition", "missing = 'x'"], "undefined"),
            (
                &[
                    "--condition",
                    "$body.t > 30",
                    "--body",
                    r#"{"t":31}"#,
                    "--system-properties",
                    json,
                ],
                "true",
            ),
            (
                &["--condition", "$body.t > 30", "--body", r#"{"t":31}"#],
                "undefined",
            ),
            (
                &[
                    "--condition",
                    "as_number(severity) <= 2",
                    "--app-properties",
                    r#"{"severity":"3"}"#,
                ],
                "false",
            ),
            (
                &[
                    "--condition",
                    "$enqueuedTime > '2022-06-06T22:56:06Z' AND $connectionDeviceId = 'd1'",
                    "--system-properties",
                    r#"{"$enqueuedTime":"2022-06-06T22:56:07Z","$connectionDeviceId":"d1"}"#,
                ],
                "true",
            ),
            (
                &[
                    "--condition",
                    "$enqueuedTime > '2022-06-06T22:56:06Z' AND $connectionDeviceId = 'd1'",
                    "--system-properties",
                    r#"{"enqueuedTime":"2022-06-06T22:56:07Z","connectionDeviceId":"d1"}"#,
                ],
                "true",
            ),
            (
                &[
                    "--condition",
                    "$enqueuedTime > '2022-06-06T22:56:06Z'",
                    "--system-properties",
                    r#"{"iothubEnqueuedTime":"2022-06-06T22:56:05Z"}"#,
                ],
                "false",
            ),
            (
                &["--condition", "severity <= 2"],
                "error: line 1, column 13: cannot compare a string (`severity`) with a number (`2`) using `<=`: IoT Hub never converts types",
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(run_args(args), expected, "{args:?}");
        }
    }

    #[test]
    fn twin_queries_read_the_twin_argument() {
        let args = [
            "--condition",
            "$twin.tags.floor = '1'",
            "--twin",
            r#"{"tags":{"Floor":"1"}}"#,
        ];
        assert_eq!(run_args(&args), "true");
    }
}
