//! Golden suite for the route query language, in the spirit of DataFusion's sqllogictest files.
//!
//! Each `tests/golden/*.txt` file holds named message fixtures and cases:
//!
//! ```text
//! message sample                      (fixture: lines until `end`)
//! system {"contentType": "application/json", "contentEncoding": "UTF-8"}
//! app {"processingPath": "hot"}       (JSON object; non-string values keep their AMQP type)
//! body {"Weather": {"Temperature": 50}}   (also body-utf16 / body-utf32 / body-text)
//! twin {"tags": {"floor": "1"}}
//! end
//!
//! query sample                        (condition lines until `----`, then the expected result)
//! $body.Weather.Temperature = 50
//! ----
//! true
//! ```
//!
//! Expected results are `true`, `false`, `undefined` or `error: <first line of the error>`. Every
//! case is evaluated twice, alone (one-message batch) and as one row of a batch holding every case's
//! message evaluated by one `RouteSet` of every condition; both must agree with the file.
//! `UPDATE_GOLDEN=1 cargo test -p hubroute-queries --test golden` rewrites the expected lines.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::Array;
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, SystemProperties};
use hubroute_queries::{RouteSet, Truth, compile};

struct Case {
    file: usize,
    /// Line index of the expected result in its file.
    expected_line: usize,
    message: String,
    condition: String,
    expected: String,
}

fn encode(text: &str, encoding: &str) -> Vec<u8> {
    match encoding {
        "utf16" => text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        "utf32" => text
            .chars()
            .flat_map(|c| u32::from(c).to_le_bytes())
            .collect(),
        _ => text.as_bytes().to_vec(),
    }
}

fn parse_message(lines: &[&str], at: &str) -> Message {
    let mut message = Message::telemetry(Vec::new());
    for line in lines {
        let (directive, json) = line.split_once(' ').unwrap_or((line, ""));
        match directive {
            "system" => {
                message.system = serde_json::from_str::<SystemProperties>(json)
                    .unwrap_or_else(|e| panic!("{at}: bad system properties: {e}"));
            }
            "app" => {
                let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("{at}: bad app properties: {e}"));
                message.application_properties = object
                    .iter()
                    .map(|(k, v)| (k.clone(), AppPropertyValue::from_json(v)))
                    .collect();
            }
            "body" | "body-text" => message.body = json.as_bytes().to_vec().into(),
            "body-utf16" => message.body = encode(json, "utf16").into(),
            "body-utf32" => message.body = encode(json, "utf32").into(),
            "twin" => message.twin = Some(json.to_owned()),
            other => panic!("{at}: unknown fixture directive `{other}`"),
        }
    }
    message
}

fn load(files: &[(String, String)]) -> (HashMap<String, Message>, Vec<Case>) {
    let mut messages = HashMap::new();
    let mut cases = Vec::new();
    for (file, (name, text)) in files.iter().enumerate() {
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let at = format!("{name}:{}", i + 1);
            if let Some(fixture) = line.strip_prefix("message ") {
                let end = (i..lines.len())
                    .find(|&j| lines[j] == "end")
                    .unwrap_or_else(|| panic!("{at}: fixture without `end`"));
                messages.insert(
                    fixture.trim().to_owned(),
                    parse_message(&lines[i + 1..end], &at),
                );
                i = end + 1;
            } else if let Some(message) = line.strip_prefix("query ") {
                let separator = (i..lines.len())
                    .find(|&j| lines[j] == "----")
                    .unwrap_or_else(|| panic!("{at}: query without `----`"));
                assert!(
                    separator + 1 < lines.len(),
                    "{at}: query without an expected result"
                );
                cases.push(Case {
                    file,
                    expected_line: separator + 1,
                    message: message.trim().to_owned(),
                    condition: lines[i + 1..separator].join("\n"),
                    expected: lines[separator + 1].to_owned(),
                });
                i = separator + 2;
            } else {
                assert!(
                    line.is_empty() || line.starts_with('#'),
                    "{at}: unexpected line `{line}`"
                );
                i += 1;
            }
        }
    }
    (messages, cases)
}

fn single(condition: &str, message: &Message) -> String {
    match compile(condition) {
        Ok(compiled) => compiled
            .evaluate_message(message)
            .expect("evaluates")
            .to_string(),
        Err(error) => format!(
            "error: {}",
            error.to_string().lines().next().unwrap_or_default()
        ),
    }
}

#[test]
fn golden_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(p).expect("readable"),
            )
        })
        .collect();
    let (messages, cases) = load(&files);
    assert!(
        cases.len() >= 300,
        "the golden suite must keep at least 300 cases, has {}",
        cases.len()
    );

    let fixture = |case: &Case| {
        messages
            .get(&case.message)
            .unwrap_or_else(|| panic!("unknown message fixture `{}`", case.message))
    };
    let actual: Vec<String> = cases
        .iter()
        .map(|c| single(&c.condition, fixture(c)))
        .collect();

    // Batch agreement: every case's message is a row, every compiling condition a route of one set.
    let rows: Vec<Message> = cases.iter().map(|c| fixture(c).clone()).collect();
    let batch = MessageBatchBuilder::batch_of(&rows).expect("batch builds");
    let compiling: Vec<usize> = (0..cases.len())
        .filter(|&i| !actual[i].starts_with("error:"))
        .collect();
    let set = RouteSet::compile(compiling.iter().map(|&i| cases[i].condition.as_str()))
        .expect("compiles");
    let truths = set.truths(&batch).expect("evaluates");
    let outcome = set.evaluate(&batch).expect("evaluates");
    for (route, &case) in compiling.iter().enumerate() {
        let in_batch = truths[route][case];
        assert_eq!(
            in_batch.to_string(),
            actual[case],
            "batch and single evaluation disagree on `{}`",
            cases[case].condition
        );
        let matched = &outcome.matched[route];
        assert_eq!(matched.null_count(), 0);
        for (row, truth) in truths[route].iter().enumerate() {
            assert_eq!(matched.value(row), *truth == Truth::True);
        }
        let undefined = truths[route]
            .iter()
            .filter(|t| **t == Truth::Undefined)
            .count();
        assert_eq!(outcome.undefined[route], undefined);
    }

    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        for (file, (path, text)) in files.iter().enumerate() {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            for (case, result) in cases.iter().zip(&actual).filter(|(c, _)| c.file == file) {
                lines[case.expected_line] = result.clone();
            }
            std::fs::write(path, lines.join("\n") + "\n").expect("writable");
        }
        return;
    }
    let failures: Vec<String> = cases
        .iter()
        .zip(&actual)
        .filter(|(c, a)| c.expected != **a)
        .map(|(c, a)| {
            format!(
                "{}:{}: `{}` on {}: expected `{}`, got `{a}`",
                files[c.file].0,
                c.expected_line + 1,
                c.condition,
                c.message,
                c.expected
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} golden case(s) failed (UPDATE_GOLDEN=1 regenerates):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
