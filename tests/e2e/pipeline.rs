//! End-to-end tests of the routing engine's configuration through the real binary: `hubroute
//! check` accepts the shipped example and points a bad condition at its line and column.

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
        .position(|l| l == "condition = \"level = 'critical'\"")
        .expect("example has the critical route")
        + 1;
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("level = 'critical'", "level = = 1")).expect("write");
    let (ok, _, stderr) = check(&bad);
    assert!(!ok);
    let expected = format!("bad.toml:{line}:13: route `critical`: the condition does not compile");
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
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
