//! End-to-end tests of the configuration through the real binary: `hubroute check` accepts the
//! shipped examples, points a bad condition at its line and column, and rejects storage settings
//! outside IoT Hub's ranges.

use std::process::Command;

fn check(config: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_hubroute"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run hubroute check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_and_locates_a_bad_condition() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/routing.toml");
    let (ok, stdout, stderr) = check(&example);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ok: 2 endpoints, 3 routes, fallback enabled, 2 enrichments"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&example).expect("read example");
    let line = text
        .lines()
        .position(|l| l == "condition = \"severity = 'high'\"")
        .expect("example has the high-severity route")
        + 1;
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("severity = 'high'", "severity = = 1")).expect("write");
    let (ok, _, stderr) = check(&bad);
    assert!(!ok);
    let expected =
        format!("bad.toml:{line}:13: route `high-severity`: the condition does not compile");
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
}

#[test]
fn check_accepts_the_storage_example_and_rejects_iot_hub_out_of_range_settings() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/storage.toml");
    let text = std::fs::read_to_string(&example).expect("read example");
    let dir = tempfile::tempdir().expect("tempdir");
    // The example reads the database password from the environment; `check` needs it set.
    let with_password = text.replace("${PGPASSWORD}", "not-a-secret");
    let good = dir.path().join("storage.toml");
    std::fs::write(&good, &with_password).expect("write");
    let (ok, stdout, stderr) = check(&good);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok: 2 endpoints, 2 routes"), "{stdout}");

    let line_of = |needle: &str| {
        with_password
            .lines()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("the example has `{needle}`"))
            + 1
    };
    let cases = [
        (
            "batch_frequency = 300",
            "batch_frequency = 30",
            "batch_frequency must be a whole number of seconds from 60 to 720",
        ),
        (
            "max_chunk_bytes = 314572800",
            "max_chunk_bytes = 1024",
            "max_chunk_bytes must be from 10485760",
        ),
        (
            "file_name_format = ",
            "file_name_format = \"{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}\"",
            "lacks {partition}",
        ),
        (
            "encoding = ",
            "encoding = \"parquet\"",
            "unknown variant `parquet`",
        ),
        (
            "sslmode = ",
            "sslmode = \"verify\"",
            "unknown variant `verify`",
        ),
        (
            "sslrootcert = ",
            "sslrootcert = \"/nonexistent/ca.pem\"",
            "sslrootcert `/nonexistent/ca.pem` is not a file",
        ),
    ];
    for (setting, replacement, expected) in cases {
        let line = line_of(setting);
        let bad_text: String = with_password
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i + 1 == line {
                    replacement.to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, bad_text).expect("write");
        let (ok, _, stderr) = check(&bad);
        assert!(!ok, "{replacement} was accepted");
        // Sinks are tagged by `type`, so serde reports errors inside one at its table.
        let table = with_password.lines().take(line).collect::<Vec<_>>();
        let table_line = table
            .iter()
            .rposition(|l| *l == "[endpoints.sink]")
            .expect("the setting is in a sink table")
            + 1;
        assert!(
            stderr.contains(&format!("bad.toml:{table_line}:")) && stderr.contains(expected),
            "{replacement}: {expected:?} at line {table_line} not in {stderr}"
        );
    }
}

#[test]
fn check_accepts_the_forwarding_example_without_connecting() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/forward-to-event-hub.toml");
    let (ok, stdout, stderr) = check(&example);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ok: 1 endpoints, 1 routes, fallback disabled, 1 enrichments"),
        "{stdout}"
    );
}

/// Sink settings `run` refuses when it builds the sink: `check` refuses them too, without
/// connecting (each passed `check` before it validated sink settings beyond AMQP's).
#[test]
fn check_refuses_every_sink_setting_run_would_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            r#"{ type = "webhook", name = "e", url = "not a url" }"#,
            "url `not a url` is invalid",
        ),
        (
            r#"{ type = "webhook", name = "e", url = "http://127.0.0.1:1/", headers = { "bad header" = "x" } }"#,
            "header name `bad header` is invalid",
        ),
        (
            r#"{ type = "webhook", name = "e", url = "http://127.0.0.1:1/", max_in_flight = 0 }"#,
            "max_in_flight, max_batch_events and max_batch_bytes must be at least 1",
        ),
        (
            r#"{ type = "parquet", name = "e", path_template = "{partition" }"#,
            "has an unclosed `{`",
        ),
        (
            r#"{ type = "postgres", name = "e", table = { name = "a.b.c" } }"#,
            "must be `table` or `schema.table`",
        ),
        (
            r#"{ type = "sqlite", name = "e", path = "x.db", table = { name = "t", columns = [{ name = "event_hub", source = "message_id", type = "text" }] } }"#,
            "column `event_hub` is mapped twice",
        ),
    ];
    for (sink, expected) in cases {
        let config = dir.path().join("sink.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nconnection_string = \"Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;EntityPath=hub\"\n\n\
                 [[endpoints]]\nsink = {sink}\n\n[[routes]]\nname = \"r\"\ncondition = \"true\"\nendpoint = \"e\"\n"
            ),
        )
        .expect("write");
        let (ok, _, stderr) = check(&config);
        assert!(!ok, "{sink} was accepted");
        assert!(
            stderr.contains(expected),
            "{sink}: {expected:?} not in {stderr}"
        );
    }
}
