//! Reads the inputs of a [`Plan`] out of a message batch, once per batch for all routes.
//!
//! Bodies are read only when some condition reads `$body`, and only for rows whose `contentType` is
//! `application/json` and whose `contentEncoding` is `utf-8`, `utf-16` or `utf-32` (case-insensitive;
//! UTF-16/32 are little-endian as .NET's `Encoding.Unicode`/`UTF32`, a leading BOM is skipped). Other
//! rows read `undefined` for every body path. All referenced paths of a body are located in one lazy
//! pass (`sonic_rs::get_many`, which skips unneeded values without building a DOM) and strings borrow
//! from the body; only a path that pass does not find costs a full parse of that body.
//!
//! Path resolution: a missing key or index, or a step into a primitive, yields `undefined`; an
//! explicit JSON `null` yields `null`. This follows the documented cloud behaviour (reference §1.12
//! #13: `is_defined($body.properties.desired.x)` is true iff the key is in a twin patch; users observe
//! that `$twin.x = null` never matches) rather than the Edge engine, which returns `null` for missing
//! body paths. Body keys match case-sensitively, twin keys case-insensitively (IoT Hub docs).
//! Property names match case-insensitively; an application property whose value is AMQP `null`
//! counts as absent.

use std::borrow::Cow;
use std::collections::HashMap;

use arrow::array::{Array, MapArray, StringArray};
use hubroute_message::MessageColumns;
use sonic_rs::{
    JsonContainerTrait, JsonType, JsonValueTrait, LazyValue, PointerNode, PointerTree, Value,
};

use crate::compile::{PathStep, Plan, Slot, SystemProperty};
use crate::value::{Column, Val};

/// The JSON documents of one batch (`None` where the row's body or twin is not queryable): bodies
/// decoded to UTF-8 but not parsed (paths are read lazily), twins parsed.
#[derive(Debug, Default)]
pub(crate) struct Documents<'b> {
    bodies: Vec<Option<Cow<'b, [u8]>>>,
    twins: Vec<Option<Value>>,
}

/// Decodes a body to UTF-8 per its content type and encoding, `None` if not queryable.
fn decode_body<'b>(
    content_type: Option<&str>,
    encoding: Option<&str>,
    body: &'b [u8],
) -> Option<Cow<'b, [u8]>> {
    if !content_type?.eq_ignore_ascii_case("application/json") {
        return None;
    }
    let encoding = encoding?;
    if encoding.eq_ignore_ascii_case("utf-8") {
        return Some(Cow::Borrowed(
            body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body),
        ));
    }
    let text: String = if encoding.eq_ignore_ascii_case("utf-16") {
        if !body.len().is_multiple_of(2) {
            return None;
        }
        let units = body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        char::decode_utf16(units).collect::<Result<_, _>>().ok()?
    } else if encoding.eq_ignore_ascii_case("utf-32") {
        if !body.len().is_multiple_of(4) {
            return None;
        }
        body.chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<_>>()?
    } else {
        return None;
    };
    let text = text
        .strip_prefix('\u{feff}')
        .map(str::to_owned)
        .unwrap_or(text);
    Some(Cow::Owned(text.into_bytes()))
}

/// Parses the bodies and twins the plan needs.
pub(crate) fn parse_documents<'b>(columns: &MessageColumns<'b>, plan: &Plan) -> Documents<'b> {
    let needs_body = plan.slots.iter().any(|s| matches!(s, Slot::Body(_)));
    let needs_twin = plan.slots.iter().any(|s| matches!(s, Slot::Twin(_)));
    let rows = columns.len();
    let mut documents = Documents::default();
    if needs_body {
        documents.bodies = (0..rows)
            .map(|row| {
                fn text(a: &StringArray, row: usize) -> Option<&str> {
                    a.is_valid(row).then(|| a.value(row))
                }
                decode_body(
                    text(columns.content_type, row),
                    text(columns.content_encoding, row),
                    columns.body.value(row),
                )
            })
            .collect();
    }
    if needs_twin {
        documents.twins = (0..rows)
            .map(|row| {
                let twin = columns.twin;
                twin.is_valid(row)
                    .then(|| sonic_rs::from_str(twin.value(row)).ok())
                    .flatten()
            })
            .collect();
    }
    documents
}

/// Case-insensitive name comparison (ASCII fast path, simple case folding otherwise).
pub(crate) fn names_match(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

fn json_value(value: &Value) -> Val<'_> {
    if let Some(s) = value.as_str() {
        Val::Str(Cow::Borrowed(s))
    } else if let Some(n) = value.as_f64() {
        Val::number(n)
    } else if let Some(b) = value.as_bool() {
        Val::Bool(b)
    } else if value.is_object() {
        Val::Object
    } else if value.is_array() {
        Val::Array
    } else {
        Val::Null
    }
}

/// Resolves a path in a document; anything that does not lead to a value is `undefined`.
fn resolve<'d>(root: &'d Value, steps: &[PathStep], case_insensitive: bool) -> Val<'d> {
    let mut current = root;
    for step in steps {
        let next = match step {
            PathStep::Key(key) => match current.as_object() {
                Some(object) if case_insensitive => object
                    .iter()
                    .find(|(k, _)| names_match(k, key))
                    .map(|(_, v)| v),
                Some(object) => object.get(key),
                None => None,
            },
            PathStep::Index(index) => match current.as_array() {
                Some(array) => array.get(*index),
                None => None,
            },
        };
        match next {
            Some(value) => current = value,
            None => return Val::Undefined,
        }
    }
    json_value(current)
}

/// A lazily located JSON value as a [`Val`], borrowing unescaped strings from the body.
fn lazy_value<'d>(value: &LazyValue<'d>) -> Val<'d> {
    match value.get_type() {
        JsonType::String => match value.as_raw_cow() {
            Cow::Borrowed(raw) if !raw.contains('\\') && raw.len() >= 2 => {
                Val::Str(Cow::Borrowed(&raw[1..raw.len() - 1]))
            }
            _ => value
                .as_str()
                .map_or(Val::Undefined, |s| Val::Str(Cow::Owned(s.to_owned()))),
        },
        JsonType::Number => value.as_f64().map_or(Val::Undefined, Val::number),
        JsonType::Boolean => value.as_bool().map_or(Val::Undefined, Val::Bool),
        JsonType::Null => Val::Null,
        JsonType::Object => Val::Object,
        JsonType::Array => Val::Array,
    }
}

fn into_owned(value: Val<'_>) -> Val<'static> {
    match value {
        Val::Str(s) => Val::Str(Cow::Owned(s.into_owned())),
        Val::Undefined => Val::Undefined,
        Val::Null => Val::Null,
        Val::Bool(b) => Val::Bool(b),
        Val::Number(n) => Val::Number(n),
        Val::Object => Val::Object,
        Val::Array => Val::Array,
    }
}

/// Reads every body path of every row with one lazy pass over each body (`sonic_rs::get_many`).
///
/// A path the lazy pass does not find is resolved again on a full parse of that body, which alone
/// distinguishes the cases (missing key, step into a primitive) and keeps one definition of the
/// semantics in [`resolve`]. Unlike a full parse, the lazy pass does not look at the body past the
/// last value it needs, so trailing garbage after those values goes unnoticed.
fn body_paths<'d>(
    bodies: &'d [Option<Cow<'_, [u8]>>],
    paths: &[&[PathStep]],
    rows: usize,
) -> Vec<Vec<Val<'d>>> {
    // sonic's pointer tree cannot hold a key step and an index step under the same node (it panics),
    // so a path that would need both goes to the full-parse route only.
    let mut tree = PointerTree::new();
    let mut child_is_index: HashMap<&[PathStep], bool> = HashMap::new();
    let mut tree_order: Vec<Option<usize>> = Vec::with_capacity(paths.len());
    for steps in paths {
        let compatible = steps.iter().enumerate().all(|(depth, step)| {
            let is_index = matches!(step, PathStep::Index(_));
            *child_is_index.entry(&steps[..depth]).or_insert(is_index) == is_index
        });
        if !compatible {
            tree_order.push(None);
            continue;
        }
        let nodes: Vec<PointerNode> = steps
            .iter()
            .map(|step| match step {
                PathStep::Key(key) => PointerNode::Key(key.clone().into()),
                PathStep::Index(index) => PointerNode::Index(*index),
            })
            .collect();
        tree_order.push(Some(tree.size()));
        tree.add_path(nodes);
    }
    let mut out: Vec<Vec<Val<'d>>> = paths.iter().map(|_| Vec::with_capacity(rows)).collect();
    for row in 0..rows {
        let Some(Some(body)) = bodies.get(row) else {
            out.iter_mut()
                .for_each(|column| column.push(Val::Undefined));
            continue;
        };
        let found = sonic_rs::get_many(body.as_ref(), &tree).unwrap_or_default();
        let mut document: Option<Option<Value>> = None;
        for (i, column) in out.iter_mut().enumerate() {
            let value = match tree_order[i].and_then(|order| found.get(order)) {
                Some(Some(lazy)) => lazy_value(lazy),
                _ => {
                    let document =
                        document.get_or_insert_with(|| sonic_rs::from_slice(body.as_ref()).ok());
                    document.as_ref().map_or(Val::Undefined, |doc| {
                        into_owned(resolve(doc, paths[i], false))
                    })
                }
            };
            column.push(value);
        }
    }
    out
}

fn strings<'a>(array: &'a StringArray, rows: usize) -> Vec<Val<'a>> {
    (0..rows)
        .map(|row| {
            if array.is_valid(row) {
                Val::Str(Cow::Borrowed(array.value(row)))
            } else {
                Val::Undefined
            }
        })
        .collect()
}

fn system<'a>(columns: &MessageColumns<'a>, property: SystemProperty) -> Vec<Val<'a>> {
    let rows = columns.len();
    match property {
        SystemProperty::MessageId => strings(columns.message_id, rows),
        SystemProperty::CorrelationId => strings(columns.correlation_id, rows),
        SystemProperty::ContentType => strings(columns.content_type, rows),
        SystemProperty::ContentEncoding => strings(columns.content_encoding, rows),
        SystemProperty::ConnectionDeviceId => strings(columns.connection_device_id, rows),
        SystemProperty::ConnectionModuleId => strings(columns.connection_module_id, rows),
        SystemProperty::ConnectionAuthMethod => strings(columns.connection_auth_method, rows),
        SystemProperty::ConnectionDeviceGenerationId => {
            strings(columns.connection_auth_generation_id, rows)
        }
        SystemProperty::DtDataschema => strings(columns.dt_dataschema, rows),
        SystemProperty::DtSubject => strings(columns.dt_subject, rows),
        SystemProperty::UserId => (0..rows)
            .map(|row| {
                let ids = columns.user_id;
                if ids.is_valid(row) {
                    Val::Str(String::from_utf8_lossy(ids.value(row)))
                } else {
                    Val::Undefined
                }
            })
            .collect(),
        SystemProperty::EnqueuedTime => (0..rows)
            .map(|row| {
                let times = columns.iothub_enqueued_time;
                times
                    .is_valid(row)
                    .then(|| chrono::DateTime::from_timestamp_millis(times.value(row)))
                    .flatten()
                    .map_or(Val::Undefined, |t| {
                        Val::Str(Cow::Owned(
                            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        ))
                    })
            })
            .collect(),
    }
}

/// Reads every requested application property in one pass over each row's map.
fn app_properties<'a>(map: &'a MapArray, names: &[&str], rows: usize) -> Vec<Vec<Val<'a>>> {
    let mut out: Vec<Vec<Val<'a>>> = names.iter().map(|_| Vec::with_capacity(rows)).collect();
    let keys = map.keys().as_any().downcast_ref::<StringArray>();
    let values = map.values().as_any().downcast_ref::<StringArray>();
    let (Some(keys), Some(values)) = (keys, values) else {
        return names.iter().map(|_| vec![Val::Undefined; rows]).collect();
    };
    let offsets = map.value_offsets();
    for row in 0..rows {
        #[expect(clippy::cast_sign_loss, reason = "Arrow offsets are non-negative")]
        let range = offsets[row] as usize..offsets[row + 1] as usize;
        for (name, column) in names.iter().zip(out.iter_mut()) {
            let found = range
                .clone()
                .find(|&entry| names_match(keys.value(entry), name));
            column.push(match found {
                Some(entry) if values.is_valid(entry) => {
                    Val::Str(Cow::Borrowed(values.value(entry)))
                }
                _ => Val::Undefined,
            });
        }
    }
    out
}

/// One column per slot of the plan.
pub(crate) fn extract<'a>(
    columns: &MessageColumns<'a>,
    documents: &'a Documents<'_>,
    plan: &Plan,
) -> Vec<Column<'a>> {
    let rows = columns.len();
    let app_names: Vec<&str> = plan
        .slots
        .iter()
        .filter_map(|s| match s {
            Slot::App(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut apps = app_properties(columns.application_properties, &app_names, rows).into_iter();
    let body_steps: Vec<&[PathStep]> = plan
        .slots
        .iter()
        .filter_map(|s| match s {
            Slot::Body(steps) => Some(steps.as_slice()),
            _ => None,
        })
        .collect();
    let mut bodies = if body_steps.is_empty() {
        Vec::new()
    } else {
        body_paths(&documents.bodies, &body_steps, rows)
    }
    .into_iter();
    let mut out: Vec<Column<'a>> = Vec::with_capacity(plan.slots.len());
    for slot in &plan.slots {
        let values = match slot {
            Slot::App(_) => apps.next().unwrap_or_default(),
            Slot::System(property) => system(columns, *property),
            Slot::Body(_) => bodies.next().unwrap_or_default(),
            Slot::Twin(steps) => (0..rows)
                .map(|row| match documents.twins.get(row) {
                    Some(Some(doc)) => resolve(doc, steps, true),
                    _ => Val::Undefined,
                })
                .collect(),
            Slot::AppOr { app, then } => (0..rows)
                .map(|row| match out[*app].get(row) {
                    Val::Undefined => out[*then].get(row).clone(),
                    found => found.clone(),
                })
                .collect(),
        };
        out.push(Column::Rows(values));
    }
    out
}
