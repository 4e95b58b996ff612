//! Table-driven tests of the twin store: attaching twins to rows, applying twin events in stream
//! order with `version`, replays after a snapshot, and merging a full query.

use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder};
use serde_json::json;

use super::*;

fn id(device: &str, module: Option<&str>) -> TwinId {
    TwinId {
        device: device.to_owned(),
        module: module.map(str::to_owned),
    }
}

fn twin(value: &Value) -> Twin {
    Twin::from_value(value)
}

/// A store holding `dev-1` (version 3, site a), `dev-2` (version 1, site b) and module
/// `dev-1/filter` (version 2, role edge).
fn store() -> TwinStore {
    let mut state = TwinStore::default();
    state.insert(
        &id("dev-1", None),
        twin(&json!({"deviceId": "dev-1", "version": 3, "tags": {"site": "a"}, "properties": {"desired": {"$version": 2}, "reported": {"$version": 1}}})),
    );
    state.insert(
        &id("dev-2", None),
        twin(&json!({"deviceId": "dev-2", "version": 1, "tags": {"site": "b"}})),
    );
    state.insert(
        &id("dev-1", Some("filter")),
        twin(&json!({"deviceId": "dev-1", "moduleId": "filter", "version": 2, "tags": {"role": "edge"}})),
    );
    state
}

fn telemetry(sequence_number: i64, device: Option<&str>, module: Option<&str>) -> Message {
    let mut m = Message::telemetry("{}");
    m.sequence_number = sequence_number;
    m.system.connection_device_id = device.map(str::to_owned);
    m.system.connection_module_id = module.map(str::to_owned);
    m
}

fn event(
    sequence_number: i64,
    source: &str,
    op: &str,
    device: &str,
    module: Option<&str>,
    body: &Value,
) -> Message {
    let mut m = telemetry(sequence_number, Some(device), module);
    m.system.message_source = Some(source.to_owned());
    m.system.content_type = Some("application/json".to_owned());
    m.system.content_encoding = Some("utf-8".to_owned());
    m.application_properties = vec![
        ("deviceId".to_owned(), AppPropertyValue::from(device)),
        ("opType".to_owned(), AppPropertyValue::from(op)),
    ];
    m.body = body.to_string().into();
    m
}

fn update(sequence_number: i64, device: &str, module: Option<&str>, body: &Value) -> Message {
    event(
        sequence_number,
        "twinChangeEvents",
        "updateTwin",
        device,
        module,
        body,
    )
}

/// Attaches and returns, per row, the `tags` the row saw (`None`: no twin) and what was applied.
fn attach(
    state: &mut TwinStore,
    messages: &[Message],
) -> (Vec<Option<Value>>, Applied, Vec<TwinId>) {
    let batch = MessageBatchBuilder::batch_of(messages).unwrap();
    let (batch, applied, missing) = state.attach(&batch).unwrap();
    let columns = MessageColumns::try_new(&batch).unwrap();
    let tags = (0..batch.num_rows())
        .map(|row| {
            columns.twin.get(row).map(|text| {
                let value: Value = serde_json::from_str(text).unwrap();
                value["tags"].clone()
            })
        })
        .collect();
    (tags, applied, missing)
}

#[test]
fn rows_see_their_device_or_module_twin_and_share_dictionary_values() {
    let mut state = store();
    let messages = [
        telemetry(0, Some("dev-1"), None),
        telemetry(1, Some("dev-1"), Some("filter")),
        telemetry(2, Some("dev-2"), None),
        telemetry(3, Some("dev-1"), None),
        telemetry(4, Some("unknown"), None),
        telemetry(5, None, None),
        telemetry(6, Some("dev-2"), Some("no-such-module")),
    ];
    let batch = MessageBatchBuilder::batch_of(&messages).unwrap();
    let (attached, applied, _) = state.attach(&batch).unwrap();
    assert_eq!(applied, Applied::default());
    let columns = MessageColumns::try_new(&attached).unwrap();
    assert_eq!(columns.twin.values().len(), 3, "one text per distinct twin");
    assert_eq!(columns.twin.key(0), columns.twin.key(3));
    let (tags, _, _) = attach(&mut store(), &messages);
    assert_eq!(
        tags,
        [
            Some(json!({"site": "a"})),
            Some(json!({"role": "edge"})),
            Some(json!({"site": "b"})),
            Some(json!({"site": "a"})),
            None,
            None,
            None,
        ]
    );
    assert_eq!(state.positions().get("0"), Some(&6));
}

#[test]
fn events_apply_in_stream_order_and_honour_version() {
    // (case, events and messages in one batch, tags each row sees, applied, stale, unknown)
    type Case = (
        &'static str,
        Vec<Message>,
        Vec<Option<Value>>,
        u64,
        u64,
        u64,
    );
    let cases: Vec<Case> = vec![
        (
            "a newer patch changes routing from the event onward",
            vec![
                telemetry(10, Some("dev-1"), None),
                update(
                    11,
                    "dev-1",
                    None,
                    &json!({"version": 4, "tags": {"site": "c"}}),
                ),
                telemetry(12, Some("dev-1"), None),
            ],
            vec![
                Some(json!({"site": "a"})),
                Some(json!({"site": "c"})),
                Some(json!({"site": "c"})),
            ],
            1,
            0,
            0,
        ),
        (
            "an older or equal version is skipped as stale",
            vec![
                update(
                    10,
                    "dev-1",
                    None,
                    &json!({"version": 3, "tags": {"site": "old"}}),
                ),
                update(
                    11,
                    "dev-1",
                    None,
                    &json!({"version": 2, "tags": {"site": "older"}}),
                ),
                telemetry(12, Some("dev-1"), None),
            ],
            vec![
                Some(json!({"site": "a"})),
                Some(json!({"site": "a"})),
                Some(json!({"site": "a"})),
            ],
            0,
            2,
            0,
        ),
        (
            "null removes a key, other keys stay (JSON merge)",
            vec![update(
                10,
                "dev-1",
                None,
                &json!({"version": 5, "tags": {"site": null, "line": "l1"}}),
            )],
            vec![Some(json!({"line": "l1"}))],
            1,
            0,
            0,
        ),
        (
            "a module patch changes only the module twin",
            vec![
                update(
                    10,
                    "dev-1",
                    Some("filter"),
                    &json!({"version": 3, "tags": {"role": "gate"}}),
                ),
                telemetry(11, Some("dev-1"), Some("filter")),
                telemetry(12, Some("dev-1"), None),
            ],
            vec![
                Some(json!({"role": "gate"})),
                Some(json!({"role": "gate"})),
                Some(json!({"site": "a"})),
            ],
            1,
            0,
            0,
        ),
        (
            "a patch for a twin not held is counted and asked for",
            vec![update(
                10,
                "ghost",
                None,
                &json!({"version": 9, "tags": {"x": 1}}),
            )],
            vec![None],
            0,
            0,
            1,
        ),
        (
            "a replaced twin is taken whole",
            vec![event(
                10,
                "twinChangeEvents",
                "replaceTwin",
                "dev-2",
                None,
                &json!({"deviceId": "dev-2", "version": 2, "tags": {"fresh": true}}),
            )],
            vec![Some(json!({"fresh": true}))],
            1,
            0,
            0,
        ),
        (
            "a created device gets its twin, a deleted one loses it and its modules",
            vec![
                event(
                    10,
                    "deviceLifecycleEvents",
                    "createDeviceIdentity",
                    "dev-3",
                    None,
                    &json!({"deviceId": "dev-3", "version": 1, "tags": {"new": 1}}),
                ),
                telemetry(11, Some("dev-3"), None),
                event(
                    12,
                    "deviceLifecycleEvents",
                    "deleteDeviceIdentity",
                    "dev-1",
                    None,
                    &json!({"deviceId": "dev-1", "version": 3}),
                ),
                telemetry(13, Some("dev-1"), None),
                telemetry(14, Some("dev-1"), Some("filter")),
            ],
            vec![
                Some(json!({"new": 1})),
                Some(json!({"new": 1})),
                None,
                None,
                None,
            ],
            2,
            0,
            0,
        ),
        (
            "a deleted module loses its twin, its device keeps its own",
            vec![
                event(
                    10,
                    "deviceLifecycleEvents",
                    "deleteDeviceIdentity",
                    "dev-1",
                    Some("filter"),
                    &json!({"deviceId": "dev-1", "moduleId": "filter", "version": 2}),
                ),
                telemetry(11, Some("dev-1"), Some("filter")),
                telemetry(12, Some("dev-1"), None),
            ],
            vec![None, None, Some(json!({"site": "a"}))],
            1,
            0,
            0,
        ),
        (
            "module lifecycle events of the older documentation revision are understood",
            vec![
                event(
                    10,
                    "moduleLifecycleEvents",
                    "createModuleIdentity",
                    "dev-2",
                    Some("m"),
                    &json!({"version": 1, "tags": {"mod": 1}}),
                ),
                telemetry(11, Some("dev-2"), Some("m")),
            ],
            vec![Some(json!({"mod": 1})), Some(json!({"mod": 1}))],
            1,
            0,
            0,
        ),
    ];
    for (name, messages, expected, applied, stale, unknown) in cases {
        let mut state = store();
        let (tags, outcome, missing) = attach(&mut state, &messages);
        assert_eq!(tags, expected, "{name}");
        assert_eq!(
            (outcome.applied, outcome.stale, outcome.unknown),
            (applied, stale, unknown),
            "{name}"
        );
        assert_eq!(missing.len() as u64, unknown, "{name}");
    }
}

#[test]
fn desired_and_reported_patches_merge_with_their_metadata() {
    let mut state = store();
    let patch = json!({
        "version": 4,
        "properties": {"desired": {"rate": 5, "$metadata": {"$lastUpdated": "2024-01-01T00:00:00Z", "rate": {"$lastUpdated": "2024-01-01T00:00:00Z"}}, "$version": 3}}
    });
    attach(&mut state, &[update(1, "dev-1", None, &patch)]);
    let stored: Value = serde_json::from_str(&state.get("dev-1", None).unwrap().json).unwrap();
    assert_eq!(stored["version"], 4);
    assert_eq!(stored["properties"]["desired"]["rate"], 5);
    assert_eq!(stored["properties"]["desired"]["$version"], 3);
    assert_eq!(
        stored["properties"]["desired"]["$metadata"]["rate"]["$lastUpdated"],
        "2024-01-01T00:00:00Z"
    );
    assert_eq!(
        stored["properties"]["reported"]["$version"], 1,
        "untouched section kept"
    );
    assert_eq!(stored["tags"]["site"], "a");
}

#[test]
fn update_events_merge_as_patches_or_replace_tags_and_desired_as_whole_sections() {
    // dev-1 holds tags {site: a, line: 1}, desired {rate: 1, mode: eco} and reported {fw: 1.0}; the
    // event names the new tags and desired properties and the changed reported one.
    let event = json!({
        "version": 4,
        "tags": {"site": "b"},
        "properties": {"desired": {"rate": 5, "$version": 3}, "reported": {"fw": "2.0"}}
    });
    let cases = [
        (
            TwinUpdateEvents::Patch,
            json!({"site": "b", "line": 1}),
            json!({"rate": 5, "mode": "eco", "$version": 3}),
        ),
        (
            TwinUpdateEvents::Sections,
            json!({"site": "b"}),
            json!({"rate": 5, "$version": 3}),
        ),
    ];
    for (reading, tags, desired) in cases {
        let mut state = TwinStore::reading_updates_as(reading);
        state.insert(
            &id("dev-1", None),
            twin(
                &json!({"deviceId": "dev-1", "version": 3, "tags": {"site": "a", "line": 1},
                "properties": {"desired": {"rate": 1, "mode": "eco", "$version": 2},
                               "reported": {"fw": "1.0", "battery": 80, "$version": 7}}}),
            ),
        );
        attach(&mut state, &[update(1, "dev-1", None, &event)]);
        let stored: Value = serde_json::from_str(&state.get("dev-1", None).unwrap().json).unwrap();
        assert_eq!(stored["tags"], tags, "{reading:?}");
        assert_eq!(stored["properties"]["desired"], desired, "{reading:?}");
        assert_eq!(
            stored["properties"]["reported"],
            json!({"fw": "2.0", "battery": 80, "$version": 7}),
            "{reading:?}: reported changes are patches under either reading"
        );
    }
}

#[test]
fn events_at_or_before_the_applied_position_are_not_applied_again() {
    let mut state = store();
    state.restore(
        state.iter().map(|(id, t)| (id, t.clone())).collect(),
        BTreeMap::from([("0".to_owned(), 20)]),
    );
    // A replay after a restart: the snapshot already reflects event 20 (site "z" would be its
    // effect); event 21 is new.
    let (tags, outcome, _) = attach(
        &mut state,
        &[
            event(
                20,
                "deviceLifecycleEvents",
                "deleteDeviceIdentity",
                "dev-1",
                None,
                &json!({}),
            ),
            telemetry(20, Some("dev-1"), None),
            update(
                21,
                "dev-1",
                None,
                &json!({"version": 9, "tags": {"site": "new"}}),
            ),
        ],
    );
    assert_eq!(
        tags[1],
        Some(json!({"site": "a"})),
        "the replayed delete was not applied"
    );
    assert_eq!(tags[2], Some(json!({"site": "new"})));
    assert_eq!(outcome.applied, 1);
    assert_eq!(state.positions().get("0"), Some(&21));
}

#[test]
fn a_full_query_merges_by_version_and_keeps_twins_created_while_it_ran() {
    let mut state = store();
    state.begin_resync();
    // While the query runs, the stream creates dev-9 and moves dev-2 to version 5.
    attach(
        &mut state,
        &[
            event(
                1,
                "deviceLifecycleEvents",
                "createDeviceIdentity",
                "dev-9",
                None,
                &json!({"version": 1, "tags": {"n": 9}}),
            ),
            event(
                2,
                "twinChangeEvents",
                "replaceTwin",
                "dev-2",
                None,
                &json!({"deviceId": "dev-2", "version": 5, "tags": {"site": "stream"}}),
            ),
        ],
    );
    // The query saw dev-1 (newer), dev-2 (older than the stream's) and not dev-1/filter or dev-9.
    state.finish_resync(vec![
        (
            id("dev-1", None),
            twin(&json!({"deviceId": "dev-1", "version": 7, "tags": {"site": "q"}})),
        ),
        (
            id("dev-2", None),
            twin(&json!({"deviceId": "dev-2", "version": 4, "tags": {"site": "q"}})),
        ),
    ]);
    let tags = |device: &str, module: Option<&str>| {
        state.get(device, module).map(|t| {
            let value: Value = serde_json::from_str(&t.json).unwrap();
            value["tags"].clone()
        })
    };
    assert_eq!(
        tags("dev-1", None),
        Some(json!({"site": "q"})),
        "newer from the query"
    );
    assert_eq!(
        tags("dev-2", None),
        Some(json!({"site": "stream"})),
        "the stream's is newer"
    );
    assert_eq!(
        tags("dev-9", None),
        Some(json!({"n": 9})),
        "created while the query ran"
    );
    assert_eq!(tags("dev-1", Some("filter")), None, "gone from the hub");
    assert_eq!(state.len(), 3);
}

#[test]
fn a_full_query_does_not_undo_deletions_and_recreations_that_raced_it() {
    let mut state = store();
    state.begin_resync();
    // While the query runs, the stream deletes dev-2; deletes dev-1 (and so its module) and
    // creates it again, its version starting over at 1; and deletes dev-7, which the store does
    // not hold yet (it was created after the last query).
    let delete = |sequence_number: i64, device: &str| {
        event(
            sequence_number,
            "deviceLifecycleEvents",
            "deleteDeviceIdentity",
            device,
            None,
            &json!({"deviceId": device}),
        )
    };
    let (_, applied, _) = attach(
        &mut state,
        &[
            delete(1, "dev-2"),
            delete(2, "dev-1"),
            event(
                3,
                "deviceLifecycleEvents",
                "createDeviceIdentity",
                "dev-1",
                None,
                &json!({"deviceId": "dev-1", "version": 1, "tags": {"fresh": true}}),
            ),
            delete(4, "dev-7"),
        ],
    );
    assert_eq!((applied.applied, applied.stale), (3, 0));
    // The query read every twin before those events.
    state.finish_resync(vec![
        (
            id("dev-1", None),
            twin(&json!({"deviceId": "dev-1", "version": 3, "tags": {"site": "a"}})),
        ),
        (
            id("dev-1", Some("filter")),
            twin(&json!({"deviceId": "dev-1", "moduleId": "filter", "version": 2})),
        ),
        (
            id("dev-2", None),
            twin(&json!({"deviceId": "dev-2", "version": 1, "tags": {"site": "b"}})),
        ),
        (
            id("dev-7", None),
            twin(&json!({"deviceId": "dev-7", "version": 4})),
        ),
        (
            id("dev-7", Some("m")),
            twin(&json!({"deviceId": "dev-7", "moduleId": "m", "version": 1})),
        ),
    ]);
    let dev_1: Value = serde_json::from_str(&state.get("dev-1", None).unwrap().json).unwrap();
    assert_eq!(
        (&dev_1["tags"], dev_1["version"].as_i64()),
        (&json!({"fresh": true}), Some(1)),
        "the re-created device keeps its new twin, not the old one's higher version"
    );
    assert_eq!(
        state.get("dev-1", Some("filter")),
        None,
        "gone with its device"
    );
    assert_eq!(
        state.get("dev-2", None),
        None,
        "deleted while the query ran"
    );
    assert_eq!(state.get("dev-7", None), None, "deleted before it was held");
    assert_eq!(state.get("dev-7", Some("m")), None, "gone with its device");
    assert_eq!(state.len(), 1);
    // Once the query is merged, the next one is again the authority.
    state.begin_resync();
    state.finish_resync(vec![(
        id("dev-2", None),
        twin(&json!({"deviceId": "dev-2", "version": 1})),
    )]);
    assert!(state.get("dev-2", None).is_some() && state.get("dev-1", None).is_none());
}

#[test]
fn counts_and_text_bytes_follow_inserts_and_removals() {
    let mut state = store();
    assert_eq!(state.len(), 3);
    let text: usize = state
        .iter()
        .map(|(id, t)| t.json.len() + id.module.as_ref().map_or(0, String::len))
        .sum::<usize>()
        + "dev-1".len()
        + "dev-2".len();
    assert_eq!(state.text_bytes, text);
    assert!(state.remove(&id("dev-1", None)));
    assert_eq!(state.len(), 1);
    assert!(!state.remove(&id("dev-1", Some("filter"))));
    assert!(state.remove(&id("dev-2", None)));
    assert_eq!((state.len(), state.text_bytes), (0, 0));
}
