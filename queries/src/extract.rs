//! Reads [`UniqueInputs`] out of a message batch, once per batch for all routes.
//!
//! Bodies are read only when some condition reads `$body`, and only for rows whose `contentType` is
//! `application/json` and whose `contentEncoding` is `utf-8`, `utf-16` or `utf-32` (case-insensitive;
//! UTF-16/32 are little-endian as .NET's `Encoding.Unicode`/`UTF32`, a leading BOM is skipped). Other
//! rows read `undefined` for every body path, as do bodies that are not JSON. All referenced paths of a
//! body are located in one forward scan that skips unneeded values without building a DOM
//! (`scan.rs`); twins, which are small, are parsed with `sonic-rs`.
//!
//! Path resolution: a missing key or index, or a step into a primitive, yields `undefined`; an
//! explicit JSON `null` yields `null`. This follows the documented cloud behaviour (reference §1.12
//! #13: `is_defined($body.properties.desired.x)` is true iff the key is in a twin patch; users observe
//! that `$twin.x = null` never matches) rather than the Edge engine, which returns `null` for missing
//! body paths. Body keys match case-sensitively, twin keys case-insensitively (IoT Hub docs).
//! Property names match case-insensitively; an application property whose value is AMQP `null`
//! counts as absent.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, MapArray, StringArray, new_null_array};
use arrow::datatypes::DataType;
use hubroute_message::MessageColumns;
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

use crate::check::{PathStep, Slot, SystemProperty, UniqueInputs};
use crate::repr::{self, DynamicBuilder, Repr, Values};
use crate::scan::PathTree;
use crate::value::Val;

/// The JSON documents of one batch (`None` where the row's body or twin is not queryable): bodies
/// decoded to UTF-8 but not parsed (paths are read lazily), one per row; twins parsed, one per
/// distinct twin of the batch (the `twin` column is dictionary-encoded, so a device's twin is parsed
/// once however many of its messages the batch holds).
#[derive(Debug, Default)]
pub(crate) struct Documents<'b> {
    bodies: Vec<Option<Cow<'b, [u8]>>>,
    /// Indexed by the `twin` column's dictionary key.
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

/// Parses the bodies and twins the inputs need.
pub(crate) fn parse_documents<'b>(
    columns: &MessageColumns<'b>,
    inputs: &UniqueInputs,
) -> Documents<'b> {
    let needs_body = inputs.slots.iter().any(|s| matches!(s, Slot::Body(_)));
    let needs_twin = inputs.slots.iter().any(|s| matches!(s, Slot::Twin(_)));
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
        let texts = columns.twin.values();
        documents.twins = (0..texts.len())
            .map(|key| {
                texts
                    .is_valid(key)
                    .then(|| sonic_rs::from_str(texts.value(key)).ok())
                    .flatten()
            })
            .collect();
    }
    documents
}

/// Case-insensitive name comparison (ASCII fast path, simple case folding otherwise).
pub(crate) fn names_match(a: &str, b: &str) -> bool {
    names_match_knowing_ascii(a, a.is_ascii(), b, b.is_ascii())
}

/// [`names_match`] with whether each side is ASCII already known (hot loops know it once per name).
fn names_match_knowing_ascii(a: &str, a_is_ascii: bool, b: &str, b_is_ascii: bool) -> bool {
    if a_is_ascii && b_is_ascii {
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

/// Resolves a path in a twin, keys matching case-insensitively; anything that does not lead to a
/// value is `undefined`.
fn resolve_in_twin<'d>(root: &'d Value, steps: &[PathStep]) -> Val<'d> {
    let mut current = root;
    for step in steps {
        let next = match step {
            PathStep::Key(key) => current.as_object().and_then(|object| {
                object
                    .iter()
                    .find(|(k, _)| names_match(k, key))
                    .map(|(_, v)| v)
            }),
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

/// Reads every body path of every row with one forward scan of each body (`scan.rs`).
fn body_paths(
    bodies: &[Option<Cow<'_, [u8]>>],
    paths: &[&[PathStep]],
    rows: usize,
) -> Vec<ArrayRef> {
    let tree = PathTree::new(paths);
    let mut out: Vec<DynamicBuilder> = paths
        .iter()
        .map(|_| DynamicBuilder::with_capacity(rows))
        .collect();
    let mut found = Vec::with_capacity(paths.len());
    for row in 0..rows {
        let values = match bodies.get(row) {
            Some(Some(body)) => tree.scan(body, &mut found).map(|()| found.as_slice()),
            _ => None,
        };
        match values {
            Some(values) => out
                .iter_mut()
                .zip(values)
                .for_each(|(column, value)| column.push(value)),
            None => out
                .iter_mut()
                .for_each(|column| column.push(&Val::Undefined)),
        }
    }
    out.into_iter()
        .map(|builder| Arc::new(builder.finish()) as ArrayRef)
        .collect()
}

/// A system property column as a route input: the batch's own column, zero-copy.
fn strings(array: &StringArray) -> ArrayRef {
    Arc::new(array.clone())
}

fn system(columns: &MessageColumns<'_>, property: SystemProperty) -> ArrayRef {
    let rows = columns.len();
    match property {
        SystemProperty::MessageId => strings(columns.message_id),
        SystemProperty::CorrelationId => strings(columns.correlation_id),
        SystemProperty::ContentType => strings(columns.content_type),
        SystemProperty::ContentEncoding => strings(columns.content_encoding),
        SystemProperty::ConnectionDeviceId => strings(columns.connection_device_id),
        SystemProperty::ConnectionModuleId => strings(columns.connection_module_id),
        SystemProperty::ConnectionAuthMethod => strings(columns.connection_auth_method),
        SystemProperty::ConnectionDeviceGenerationId => {
            strings(columns.connection_auth_generation_id)
        }
        SystemProperty::DtDataschema => strings(columns.dt_dataschema),
        SystemProperty::DtSubject => strings(columns.dt_subject),
        SystemProperty::UserId => {
            let ids = columns.user_id;
            let values = (0..rows).map(|row| {
                if ids.is_valid(row) {
                    Val::Str(String::from_utf8_lossy(ids.value(row)))
                } else {
                    Val::Undefined
                }
            });
            repr::build(Repr::Str, rows, values)
        }
        SystemProperty::EnqueuedTime => {
            let times = columns.iothub_enqueued_time;
            let values = (0..rows).map(|row| {
                times
                    .is_valid(row)
                    .then(|| chrono::DateTime::from_timestamp_millis(times.value(row)))
                    .flatten()
                    .map_or(Val::Undefined, |t| {
                        Val::Str(Cow::Owned(
                            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        ))
                    })
            });
            repr::build(Repr::Str, rows, values)
        }
    }
}

/// Reads every requested application property in one pass over each row's map.
fn app_properties(map: &MapArray, names: &[&str], rows: usize) -> Vec<ArrayRef> {
    let undefined = || new_null_array(&DataType::Utf8, rows);
    let keys = map.keys().as_string_opt::<i32>();
    let values = map.values().as_string_opt::<i32>();
    let (Some(keys), Some(values)) = (keys, values) else {
        return names.iter().map(|_| undefined()).collect();
    };
    let names: Vec<(&str, bool)> = names.iter().map(|n| (*n, n.is_ascii())).collect();
    // Per name, the map entry holding it in each row; most names (`$body.x` read as an
    // application property first) are in no message, and their column is all `undefined`.
    let mut found: Vec<Vec<Option<usize>>> = names.iter().map(|_| vec![None; rows]).collect();
    let mut any = vec![false; names.len()];
    let offsets = map.value_offsets();
    for row in 0..rows {
        #[expect(clippy::cast_sign_loss, reason = "Arrow offsets are non-negative")]
        let range = offsets[row] as usize..offsets[row + 1] as usize;
        for entry in range {
            let key = keys.value(entry);
            let key_is_ascii = key.is_ascii();
            for (name_index, &(name, name_is_ascii)) in names.iter().enumerate() {
                let matches = names_match_knowing_ascii(key, key_is_ascii, name, name_is_ascii);
                let slot = &mut found[name_index][row];
                if matches && slot.is_none() {
                    *slot = Some(entry);
                    any[name_index] |= values.is_valid(entry);
                }
            }
        }
    }
    found
        .into_iter()
        .zip(any)
        .map(|(entries, any)| {
            if any {
                let strings: StringArray = entries
                    .into_iter()
                    .map(|entry| {
                        entry
                            .filter(|&e| values.is_valid(e))
                            .map(|e| values.value(e))
                    })
                    .collect();
                Arc::new(strings) as ArrayRef
            } else {
                undefined()
            }
        })
        .collect()
}

/// The layout of a slot's column.
pub(crate) fn slot_repr(inputs: &UniqueInputs, slot: usize) -> Repr {
    match &inputs.slots[slot] {
        Slot::App(_) | Slot::System(_) => Repr::Str,
        Slot::Body(_) | Slot::Twin(_) => Repr::Dynamic,
        Slot::AppOr { then, .. } => slot_repr(inputs, *then),
    }
}

/// `$name`: the application property where the message has one, else the system property (or
/// body/twin path) in `then`.
fn app_or(app: &ArrayRef, then: &ArrayRef, repr: Repr) -> ArrayRef {
    if app.null_count() == app.len() {
        return Arc::clone(then);
    }
    let rows = app.len();
    let app = app.as_string::<i32>();
    let Ok(then) = Values::of_array(then.as_ref()) else {
        return Arc::clone(then);
    };
    let values = (0..rows).map(|row| {
        if app.is_valid(row) {
            Val::Str(app.value(row).into())
        } else {
            then.get(row)
        }
    });
    repr::build(repr, rows, values)
}

/// One column per input slot, in the layout of [`slot_repr`].
pub(crate) fn extract(
    columns: &MessageColumns<'_>,
    documents: &Documents<'_>,
    inputs: &UniqueInputs,
) -> Vec<ArrayRef> {
    let rows = columns.len();
    let app_names: Vec<&str> = inputs
        .slots
        .iter()
        .filter_map(|s| match s {
            Slot::App(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut apps = app_properties(columns.application_properties, &app_names, rows).into_iter();
    let body_steps: Vec<&[PathStep]> = inputs
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
    let mut out: Vec<ArrayRef> = Vec::with_capacity(inputs.slots.len());
    for (index, slot) in inputs.slots.iter().enumerate() {
        let column = match slot {
            Slot::App(_) => apps.next(),
            Slot::System(property) => Some(system(columns, *property)),
            Slot::Body(_) => bodies.next(),
            Slot::Twin(steps) => {
                let resolved: Vec<Val<'_>> = documents
                    .twins
                    .iter()
                    .map(|doc| {
                        doc.as_ref()
                            .map_or(Val::Undefined, |d| resolve_in_twin(d, steps))
                    })
                    .collect();
                let values = (0..rows).map(|row| {
                    columns
                        .twin
                        .key(row)
                        .and_then(|key| resolved.get(key))
                        .cloned()
                        .unwrap_or(Val::Undefined)
                });
                Some(repr::build(Repr::Dynamic, rows, values))
            }
            Slot::AppOr { app, then } => {
                Some(app_or(&out[*app], &out[*then], slot_repr(inputs, index)))
            }
        };
        out.push(column.unwrap_or_else(|| {
            let undefined = std::iter::repeat_n(Val::Undefined, rows);
            repr::build(slot_repr(inputs, index), rows, undefined)
        }));
    }
    out
}
