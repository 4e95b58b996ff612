//! Tests of the registry's twin semantics: versions, etags, `$metadata`, merge and replace.

use chrono::TimeZone as _;
use serde_json::json;

use super::*;

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, second).unwrap()
}

fn registry_with(device: &str) -> Registry {
    let mut registry = Registry::default();
    let mut n = 0;
    registry
        .put_identity(
            device,
            None,
            &json!({}),
            None,
            || {
                n += 1;
                format!("a2V5LXtufQ{n}==")
            },
            at(0),
        )
        .unwrap();
    registry
}

#[test]
fn a_new_device_has_a_fresh_twin_and_generated_keys() {
    let registry = registry_with("dev-1");
    let device = registry.get_identity("dev-1", None).unwrap();
    assert_eq!(device["status"], "enabled");
    assert_ne!(
        device["authentication"]["symmetricKey"]["primaryKey"],
        device["authentication"]["symmetricKey"]["secondaryKey"]
    );
    let twin = registry.twin("dev-1", None).unwrap();
    assert_eq!(twin["version"], 1);
    assert_eq!(twin["properties"]["desired"]["$version"], 1);
    assert_eq!(
        twin["properties"]["reported"]["$metadata"]["$lastUpdated"],
        NEVER
    );
    assert!(twin.get("tags").is_none(), "no tags until some are set");
}

#[test]
fn patches_merge_bump_versions_and_keep_metadata_at_every_level() {
    let mut registry = registry_with("dev-1");
    let etag_before = registry.twin("dev-1", None).unwrap()["etag"].clone();
    let (twin, change) = registry
        .update_twin(
            "dev-1",
            None,
            &json!({"tags": {"site": "a", "loc": {"floor": 1}}, "properties": {"desired": {"cfg": {"rate": 5}}}}),
            None,
            false,
            at(1),
        )
        .unwrap();
    assert_eq!(twin["version"], 2);
    assert_ne!(twin["etag"], etag_before);
    assert_eq!(twin["tags"], json!({"site": "a", "loc": {"floor": 1}}));
    let desired = &twin["properties"]["desired"];
    assert_eq!(desired["$version"], 2);
    assert_eq!(
        desired["$metadata"]["cfg"]["rate"]["$lastUpdatedVersion"],
        2
    );
    assert_eq!(
        desired["$metadata"]["cfg"]["$lastUpdated"],
        "2024-05-01T10:00:01.0000000Z"
    );
    assert_eq!(
        change,
        Change::Updated {
            device: "dev-1".to_owned(),
            module: None,
            patch: json!({
                "version": 2,
                "tags": {"site": "a", "loc": {"floor": 1}},
                "properties": {"desired": {
                    "cfg": {"rate": 5},
                    "$metadata": {
                        "$lastUpdated": "2024-05-01T10:00:01.0000000Z",
                        "$lastUpdatedVersion": 2,
                        "cfg": {"$lastUpdated": "2024-05-01T10:00:01.0000000Z", "$lastUpdatedVersion": 2,
                                "rate": {"$lastUpdated": "2024-05-01T10:00:01.0000000Z", "$lastUpdatedVersion": 2}}
                    },
                    "$version": 2
                }}
            }),
        }
    );
    // A nested merge keeps siblings; null removes.
    let (twin, _) = registry
        .update_twin(
            "dev-1",
            None,
            &json!({"tags": {"loc": {"room": 7}, "site": null}, "properties": {"desired": {"cfg": {"mode": "x"}}}}),
            None,
            false,
            at(2),
        )
        .unwrap();
    assert_eq!(twin["tags"], json!({"loc": {"floor": 1, "room": 7}}));
    assert_eq!(
        twin["properties"]["desired"]["cfg"],
        json!({"rate": 5, "mode": "x"})
    );
    assert_eq!(twin["version"], 3);
    // Reported properties change the twin version and their own `$version`, not desired's.
    let (twin, change) = registry
        .update_reported("dev-1", None, &json!({"fw": "1.0"}), at(3))
        .unwrap();
    assert_eq!(twin["version"], 4);
    assert_eq!(twin["properties"]["reported"]["$version"], 2);
    assert_eq!(twin["properties"]["desired"]["$version"], 3);
    let Change::Updated { patch, .. } = change else {
        panic!("{change:?}");
    };
    assert_eq!(patch["properties"]["reported"]["fw"], "1.0");
    assert!(patch.get("tags").is_none());
}

#[test]
fn replace_rewrites_tags_and_desired_and_reports_the_whole_twin() {
    let mut registry = registry_with("dev-1");
    registry
        .update_twin(
            "dev-1",
            None,
            &json!({"tags": {"a": 1, "b": 2}, "properties": {"desired": {"x": 1}}}),
            None,
            false,
            at(1),
        )
        .unwrap();
    let (twin, change) = registry
        .update_twin(
            "dev-1",
            None,
            &json!({"tags": {"c": 3}, "properties": {"desired": {"y": 2}}}),
            None,
            true,
            at(2),
        )
        .unwrap();
    assert_eq!(twin["tags"], json!({"c": 3}));
    assert!(twin["properties"]["desired"].get("x").is_none());
    assert_eq!(twin["properties"]["desired"]["y"], 2);
    assert!(matches!(change, Change::Replaced { twin: whole, .. } if whole == twin));
}

#[test]
fn etags_guard_updates_and_deletes() {
    let mut registry = registry_with("dev-1");
    let twin_etag = registry.twin("dev-1", None).unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    let stale = registry.update_twin(
        "dev-1",
        None,
        &json!({"tags": {"a": 1}}),
        Some("\"AAAAAAAAAAA=\""),
        false,
        at(1),
    );
    assert_eq!(stale.unwrap_err().status, 412);
    registry
        .update_twin(
            "dev-1",
            None,
            &json!({"tags": {"a": 1}}),
            Some(&format!("\"{twin_etag}\"")),
            false,
            at(1),
        )
        .unwrap();
    let again = registry.put_identity("dev-1", None, &json!({}), None, String::new, at(2));
    assert_eq!(again.unwrap_err().status, 409);
    let device_etag = registry.get_identity("dev-1", None).unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        registry
            .delete_identity("dev-1", None, Some("W/\"nope\""))
            .unwrap_err()
            .status,
        412
    );
    assert!(matches!(
        registry.delete_identity("dev-1", None, Some(&device_etag)),
        Ok(Change::Deleted { .. })
    ));
    assert_eq!(registry.twin("dev-1", None).unwrap_err().status, 404);
}

#[test]
fn the_service_cannot_write_reported_properties_nor_malformed_twins() {
    let mut registry = registry_with("dev-1");
    for (body, expected) in [
        (
            json!({"properties": {"reported": {"x": 1}}}),
            "written by the device",
        ),
        (json!({"tags": "flat"}), "tags must be a JSON object"),
        (json!([1]), "must be a JSON object"),
    ] {
        let error = registry
            .update_twin("dev-1", None, &body, None, false, at(1))
            .unwrap_err();
        assert!(
            error.message.contains(expected),
            "{body}: {}",
            error.message
        );
    }
    let error = registry
        .update_reported("dev-1", None, &json!({"$version": 9}), at(1))
        .unwrap_err();
    assert!(error.message.contains("read-only"), "{}", error.message);
}

#[test]
fn query_pages_follow_id_order_and_continue_after_the_last_twin() {
    let mut registry = Registry::default();
    // `a-b` sorts before `a/…` byte-wise but after `a` as a device: pages must not skip it.
    for device in ["a", "a-b", "b"] {
        registry
            .put_identity(device, None, &json!({}), None, || "a2V5".to_owned(), at(0))
            .unwrap();
        registry
            .put_identity(
                device,
                Some("m"),
                &json!({}),
                None,
                || "a2V5".to_owned(),
                at(0),
            )
            .unwrap();
    }
    for modules in [false, true] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = registry.query_page(modules, after.as_deref(), 1).unwrap();
            seen.extend(
                page.iter()
                    .map(|t| t["deviceId"].as_str().unwrap().to_owned()),
            );
            if modules {
                assert!(page.iter().all(|t| t["moduleId"] == "m"));
            }
            match next {
                Some(token) => after = Some(token),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "a-b", "b"], "modules: {modules}");
    }
    assert!(registry.query_page(false, Some("not a token"), 10).is_err());
}
