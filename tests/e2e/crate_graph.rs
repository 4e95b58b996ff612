//! Architecture invariants checked mechanically from `cargo metadata` (as DataFusion's CI does): the layer
//! crates depend on each other only in the directions ARCHITECTURE.md allows.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Workspace crates each may depend on (normal and build dependencies; dev-dependencies may use more).
const ALLOWED: &[(&str, &[&str])] = &[
    ("hubroute-message", &[]),
    ("hubroute-protocol", &[]),
    ("hubroute-amqp", &[]),
    ("hubroute-view", &[]),
    ("hubroute-queries", &["hubroute-message"]),
    (
        "hubroute-sinks",
        &["hubroute-amqp", "hubroute-message", "hubroute-protocol"],
    ),
    (
        "hubroute-emulator",
        &["hubroute-amqp", "hubroute-protocol", "hubroute-message"],
    ),
    (
        "hubroute-engine",
        &[
            "hubroute-amqp",
            "hubroute-message",
            "hubroute-protocol",
            "hubroute-queries",
            "hubroute-sinks",
            "hubroute-view",
        ],
    ),
    // Migration tools sit beside the binary: they read templates and archived messages and call
    // the engine's routing table; nothing depends on them but the binary.
    (
        "hubroute-migrate",
        &[
            "hubroute-engine",
            "hubroute-message",
            "hubroute-queries",
            "hubroute-sinks",
        ],
    ),
];

fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let ours: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .filter(|name| ours.contains(name))
                .collect();
            (package["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn layer_crates_only_depend_downwards() {
    let graph = workspace_dependencies();
    for (krate, allowed) in ALLOWED {
        let actual = graph
            .get(*krate)
            .unwrap_or_else(|| panic!("{krate} is not in the workspace"));
        let allowed: BTreeSet<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        let forbidden: Vec<&String> = actual.difference(&allowed).collect();
        assert!(
            forbidden.is_empty(),
            "{krate} depends on {forbidden:?}; ARCHITECTURE.md allows only {allowed:?}"
        );
    }
}

/// Queries does no I/O; sinks publish over AMQP (the eventhubs and servicebus endpoints) but never
/// see route conditions; the message schema knows no protocol at all.
#[test]
fn layers_do_not_link_what_they_must_not_know() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for (krate, banned) in [
        (
            "hubroute-queries",
            &["fe2o3-amqp", "tokio-postgres", "rusqlite", "reqwest"][..],
        ),
        (
            "hubroute-sinks",
            &[
                "datafusion-physical-expr",
                "datafusion-expr",
                "hubroute-queries",
            ][..],
        ),
        (
            "hubroute-message",
            &["fe2o3-amqp", "tokio", "datafusion-common"][..],
        ),
        (
            "hubroute-amqp",
            &["fe2o3-amqp", "arrow-array", "datafusion-common"][..],
        ),
        // The engine serves the status page from the view's model, not its terminal UI.
        ("hubroute-engine", &["ratatui", "crossterm"][..]),
    ] {
        let output = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                krate,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tree = String::from_utf8_lossy(&output.stdout);
        for name in banned {
            assert!(
                !tree
                    .lines()
                    .any(|line| line.starts_with(&format!("{name} v"))),
                "{krate} must not depend on {name}, even transitively"
            );
        }
    }
}

/// The workspace lints deny `unsafe_code` instead of forbidding it so that `src/allocator.rs` can
/// call glibc's `mallopt`; no other file may opt out.
#[test]
fn only_the_allocator_settings_use_unsafe() {
    fn visit(directory: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(directory).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !matches!(name, "target" | "node_modules" | ".git" | ".venv" | "fuzz") {
                    visit(&path, found);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).expect("readable source");
                if text.contains("unsafe_code") || text.contains("unsafe {") {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    visit(root, &mut found);
    let this_file = root.join(file!());
    found.retain(|path| std::path::Path::new(path) != this_file);
    assert_eq!(
        found,
        [root.join("src/allocator.rs").display().to_string()],
        "`unsafe` outside src/allocator.rs"
    );
}
