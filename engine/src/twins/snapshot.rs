//! The twin snapshot beside the checkpoints: every twin plus the stream position it is valid at, so
//! a restart resumes without querying every twin again.
//!
//! Format: JSON lines. A header (`format`, `hub`, when it was written, when the last full query
//! completed, and per partition the sequence number of the last event applied), one line per twin
//! (`{"d": device, "m": module, "v": version, "t": twin}`, the twin copied verbatim), and a trailer
//! with the twin count and the SHA-256 of every line before it. The file is written to a temporary
//! name, synced and renamed, so a crash leaves the old snapshot or the new one; a torn, truncated or
//! edited file fails the checksum and is reported as corrupt, never half-loaded.
//!
//! Writing every twin is expensive, and the stream position moves with every batch while twins
//! rarely change. So a small sidecar (`….positions.json`) records positions the snapshot is valid at
//! while no twin changed since it was written: same `generation` as the snapshot, later positions.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::store::{Twin, TwinId, TwinStore};

/// The `format` of the header.
const FORMAT: &str = "hubroute-twin-snapshot/1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    hub: String,
    generation: String,
    written_at_ms: i64,
    queried_at_ms: i64,
    positions: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    d: String,
    m: Option<String>,
    v: i64,
    #[serde(borrow)]
    t: &'a RawValue,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: bool,
    twins: usize,
    sha256: String,
}

/// The position sidecar: later positions at which snapshot `generation` is still valid.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    generation: String,
    positions: BTreeMap<String, i64>,
}

/// A loaded snapshot.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Identifies this snapshot for its position sidecar.
    pub(crate) generation: String,
    /// When the last full query before the snapshot completed (Unix ms).
    pub(crate) queried_at_ms: i64,
    /// Per partition, the sequence number of the last event the twins reflect.
    pub(crate) positions: BTreeMap<String, i64>,
    /// Every twin.
    pub(crate) twins: Vec<(TwinId, Twin)>,
}

/// Where the snapshot of `hub`'s twins for one consumer group lives under the checkpoint directory.
pub(crate) fn path(
    checkpoint_dir: &Path,
    hub: &str,
    event_hub: &str,
    consumer_group: &str,
) -> PathBuf {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    checkpoint_dir.join("twins").join(format!(
        "{}.{}.{}.jsonl",
        safe(hub),
        safe(event_hub),
        safe(consumer_group)
    ))
}

/// The sidecar of the snapshot at `path`.
pub(crate) fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("positions.json")
}

/// Serialises the sidecar saying snapshot `generation` is valid at `positions`.
pub(crate) fn encode_positions(generation: &str, positions: &BTreeMap<String, i64>) -> Vec<u8> {
    serde_json::to_vec(&Sidecar {
        generation: generation.to_owned(),
        positions: positions.clone(),
    })
    .expect("a sidecar serialises")
}

/// Serialises the state as snapshot `generation` (call under the store's lock: it copies bytes and
/// does no I/O).
pub(crate) fn encode(
    hub: &str,
    generation: &str,
    queried_at_ms: i64,
    state: &TwinStore,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(state.estimated_bytes() + 4096);
    let header = Header {
        format: FORMAT.to_owned(),
        hub: hub.to_owned(),
        generation: generation.to_owned(),
        written_at_ms: chrono::Utc::now().timestamp_millis(),
        queried_at_ms,
        positions: state.positions().clone(),
    };
    serde_json::to_writer(&mut out, &header).expect("a header serialises");
    out.push(b'\n');
    let mut count = 0;
    for (id, twin) in state.iter() {
        out.extend_from_slice(b"{\"d\":");
        serde_json::to_writer(&mut out, &id.device).expect("a string serialises");
        out.extend_from_slice(b",\"m\":");
        serde_json::to_writer(&mut out, &id.module).expect("a string serialises");
        out.extend_from_slice(format!(",\"v\":{},\"t\":", twin.version).as_bytes());
        out.extend_from_slice(twin.json.as_bytes());
        out.extend_from_slice(b"}\n");
        count += 1;
    }
    let trailer = Trailer {
        end: true,
        twins: count,
        sha256: hex(&Sha256::digest(&out)),
    };
    serde_json::to_writer(&mut out, &trailer).expect("a trailer serialises");
    out.push(b'\n');
    out
}

/// Writes `bytes` to `path` atomically (temporary file, sync, rename, directory sync).
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(directory)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let temporary = PathBuf::from(temporary);
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Reads the snapshot at `path`; `Ok(None)` when there is none, `Err` (a sentence for the log) when
/// it is unreadable, corrupt or of another hub.
pub(crate) fn read(path: &Path, hub: &str) -> Result<Option<Snapshot>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot open it: {error}")),
    };
    let mut reader = BufReader::new(file);
    let mut hasher = Sha256::new();
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<bool, String> {
        line.clear();
        reader
            .read_line(line)
            .map(|n| n > 0)
            .map_err(|e| format!("cannot read it: {e}"))
    };
    if !read_line(&mut line)? {
        return Err("it is empty".to_owned());
    }
    let header: Header =
        serde_json::from_str(&line).map_err(|e| format!("its header is corrupt: {e}"))?;
    if header.format != FORMAT {
        return Err(format!("it has format `{}`, not `{FORMAT}`", header.format));
    }
    if !header.hub.eq_ignore_ascii_case(hub) {
        return Err(format!(
            "it holds the twins of hub `{}`, not `{hub}`",
            header.hub
        ));
    }
    hasher.update(line.as_bytes());
    let mut twins = Vec::new();
    loop {
        if !read_line(&mut line)? {
            return Err("it is truncated (no trailer)".to_owned());
        }
        if line.starts_with("{\"end\"") {
            let trailer: Trailer =
                serde_json::from_str(&line).map_err(|e| format!("its trailer is corrupt: {e}"))?;
            if trailer.twins != twins.len() {
                return Err(format!(
                    "its trailer counts {} twins but it holds {}",
                    trailer.twins,
                    twins.len()
                ));
            }
            if trailer.sha256 != hex(&hasher.finalize()) {
                return Err("its checksum does not match its content".to_owned());
            }
            break;
        }
        hasher.update(line.as_bytes());
        let entry: Line<'_> = serde_json::from_str(line.trim_end())
            .map_err(|e| format!("line {} is corrupt: {e}", twins.len() + 2))?;
        twins.push((
            TwinId {
                device: entry.d,
                module: entry.m,
            },
            Twin {
                version: entry.v,
                json: entry.t.get().into(),
            },
        ));
    }
    // The sidecar is only an optimisation: unreadable or of another generation, it is ignored.
    let positions = std::fs::read(sidecar_path(path))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Sidecar>(&bytes).ok())
        .filter(|sidecar| sidecar.generation == header.generation)
        .map_or(header.positions, |sidecar| sidecar.positions);
    Ok(Some(Snapshot {
        generation: header.generation,
        queried_at_ms: header.queried_at_ms,
        positions,
        twins,
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TwinStore {
        let mut state = TwinStore::default();
        for (device, module, json) in [
            (
                "dev-1",
                None,
                r#"{"deviceId":"dev-1","version":3,"tags":{"site":"a"}}"#,
            ),
            (
                "dev-1",
                Some("filter"),
                r#"{"deviceId":"dev-1","moduleId":"filter","version":1}"#,
            ),
            (
                "dev\"2",
                None,
                r#"{"deviceId":"dev\"2","version":9,"tags":{"x":"ü"}}"#,
            ),
        ] {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            state.insert(
                &TwinId {
                    device: device.to_owned(),
                    module: module.map(str::to_owned),
                },
                Twin::from_value(&value),
            );
        }
        state.restore(
            state.iter().map(|(id, t)| (id, t.clone())).collect(),
            BTreeMap::from([("0".to_owned(), 41), ("3".to_owned(), 7)]),
        );
        state
    }

    #[test]
    fn a_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path(), "Hub.azure-devices.net", "hub", "$Default");
        assert!(path.ends_with("twins/hub.azure-devices.net.hub._default.jsonl"));
        let state = state();
        write(&path, &encode("hub.azure-devices.net", "g1", 1234, &state)).unwrap();
        let snapshot = read(&path, "HUB.azure-devices.net").unwrap().unwrap();
        assert_eq!(snapshot.queried_at_ms, 1234);
        assert_eq!(&snapshot.positions, state.positions());
        // A sidecar of the same generation moves the positions on; another generation's does not.
        let later = BTreeMap::from([("0".to_owned(), 90), ("3".to_owned(), 7)]);
        write(&sidecar_path(&path), &encode_positions("g0", &later)).unwrap();
        let snapshot = read(&path, "hub.azure-devices.net").unwrap().unwrap();
        assert_eq!(&snapshot.positions, state.positions());
        write(&sidecar_path(&path), &encode_positions("g1", &later)).unwrap();
        let snapshot = read(&path, "hub.azure-devices.net").unwrap().unwrap();
        assert_eq!(snapshot.positions, later);
        let mut expected: Vec<(TwinId, Twin)> =
            state.iter().map(|(id, t)| (id, t.clone())).collect();
        let mut got = snapshot.twins;
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, expected);
    }

    #[test]
    fn a_damaged_or_foreign_snapshot_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let good = encode("hub", "g", 1, &state());
        let text = String::from_utf8(good.clone()).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "cut mid-line",
                good[..good.len() / 2].to_vec(),
                "is corrupt",
            ),
            (
                "truncated",
                {
                    let lines: Vec<&str> = text.lines().collect();
                    (lines[..lines.len() - 1].join("\n") + "\n").into_bytes()
                },
                "truncated",
            ),
            (
                "edited",
                text.replacen("\"site\":\"a\"", "\"site\":\"b\"", 1)
                    .into_bytes(),
                "checksum",
            ),
            ("garbage", b"not json\n".to_vec(), "header is corrupt"),
            ("empty", Vec::new(), "empty"),
            (
                "a line dropped",
                {
                    let lines: Vec<&str> = text.lines().collect();
                    let mut kept = vec![lines[0]];
                    kept.extend(&lines[2..]);
                    (kept.join("\n") + "\n").into_bytes()
                },
                "counts 3 twins but it holds 2",
            ),
        ];
        for (name, bytes, expected) in cases {
            std::fs::write(&path, bytes).unwrap();
            let error = read(&path, "hub").unwrap_err();
            assert!(error.contains(expected), "{name}: {error}");
        }
        std::fs::write(&path, &good).unwrap();
        assert!(read(&path, "other").unwrap_err().contains("not `other`"));
        assert!(read(&dir.path().join("absent"), "hub").unwrap().is_none());
    }
}
