//! How IoT Hub runtime values are laid out in Arrow arrays, so DataFusion can evaluate them.
//!
//! A statically typed value uses a plain Arrow type with SQL `NULL` standing for `undefined`
//! (statically typed values are never IoT Hub `null`): [`Repr::Truth`] (`Boolean`, the result of
//! comparisons, logic and predicates), [`Repr::Number`] (`Float64`) and [`Repr::Str`] (`Utf8`).
//! With that mapping DataFusion's Kleene `AND`/`OR`/`NOT` and its null-propagating comparisons and
//! arithmetic are exactly IoT Hub's.
//!
//! A dynamically typed value (a body or twin path, `??` over different types) keeps its JSON type
//! and the `null`-versus-`undefined` distinction in [`Repr::Dynamic`]: a struct of a `kind` per row
//! (the code of a [`Kind`], never null) and `number`, `string` and `boolean` children, each valid
//! exactly where `kind` says the value has that type. A typed view of a dynamic value is therefore
//! a zero-copy child, and `$body.temperature > 30` is a plain `Float64` comparison.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, StringArray, StringBuilder, StructArray,
    UInt8Array,
};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{DataType, Field, Fields, Float64Type, UInt8Type};
use datafusion_common::{DataFusionError, ScalarValue};
use datafusion_expr::ColumnarValue;

use crate::value::{Kind, KindSet, Val};

/// Child indexes of the dynamic struct.
const KIND: usize = 0;
const NUMBER_CHILD: usize = 1;
const STRING_CHILD: usize = 2;
const BOOLEAN_CHILD: usize = 3;

static DYNAMIC_FIELDS: LazyLock<Fields> = LazyLock::new(|| {
    Fields::from(vec![
        Field::new("kind", DataType::UInt8, false),
        Field::new("number", DataType::Float64, true),
        Field::new("string", DataType::Utf8, true),
        Field::new("boolean", DataType::Boolean, true),
    ])
});

/// The Arrow layout of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Repr {
    Truth,
    Number,
    Str,
    Dynamic,
}

impl Repr {
    pub(crate) fn data_type(self) -> DataType {
        match self {
            Self::Truth => DataType::Boolean,
            Self::Number => DataType::Float64,
            Self::Str => DataType::Utf8,
            Self::Dynamic => DataType::Struct(DYNAMIC_FIELDS.clone()),
        }
    }

    /// The kind a typed layout's values have (`None` for a dynamic value: any kind).
    pub(crate) fn kind(self) -> Option<Kind> {
        match self {
            Self::Truth => Some(Kind::Bool),
            Self::Number => Some(Kind::Number),
            Self::Str => Some(Kind::String),
            Self::Dynamic => None,
        }
    }

    pub(crate) fn of(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Boolean => Some(Self::Truth),
            DataType::Float64 => Some(Self::Number),
            DataType::Utf8 => Some(Self::Str),
            DataType::Struct(fields) if *fields == *DYNAMIC_FIELDS => Some(Self::Dynamic),
            _ => None,
        }
    }
}

/// Builds a dynamic struct array row by row.
///
/// Numbers and booleans go into plain vectors (a placeholder where the row is of another kind);
/// their validity is derived from the kinds once, at the end.
#[derive(Debug)]
pub(crate) struct DynamicBuilder {
    kinds: Vec<u8>,
    numbers: Vec<f64>,
    strings: StringBuilder,
    booleans: Vec<bool>,
}

impl DynamicBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            kinds: Vec::with_capacity(rows),
            numbers: Vec::with_capacity(rows),
            strings: StringBuilder::with_capacity(rows, rows * 8),
            booleans: Vec::with_capacity(rows),
        }
    }

    /// Appends a value.
    pub(crate) fn push(&mut self, value: &Val<'_>) {
        self.kinds.push(value.kind().code());
        self.numbers
            .push(if let Val::Number(n) = value { *n } else { 0.0 });
        self.booleans.push(matches!(value, Val::Bool(true)));
        match value {
            Val::Str(s) => self.strings.append_value(s),
            _ => self.strings.append_null(),
        }
    }

    pub(crate) fn finish(mut self) -> StructArray {
        let kinds = &self.kinds;
        let valid_where = |kind: Kind| {
            let valid = BooleanBuffer::collect_bool(kinds.len(), |row| kinds[row] == kind.code());
            Some(NullBuffer::new(valid))
        };
        let numbers = Float64Array::new(self.numbers.into(), valid_where(Kind::Number));
        let booleans =
            BooleanArray::new(BooleanBuffer::from(self.booleans), valid_where(Kind::Bool));
        let children: Vec<ArrayRef> = vec![
            Arc::new(numbers),
            Arc::new(self.strings.finish()),
            Arc::new(booleans),
        ];
        let kinds: ArrayRef = Arc::new(UInt8Array::from(self.kinds));
        let children = std::iter::once(kinds).chain(children).collect();
        StructArray::new(DYNAMIC_FIELDS.clone(), children, None)
    }
}

/// Builds an array of layout `repr` from one value per row.
pub(crate) fn build<'a>(
    repr: Repr,
    rows: usize,
    values: impl Iterator<Item = Val<'a>>,
) -> ArrayRef {
    match repr {
        Repr::Truth => Arc::new(
            values
                .map(|v| match v {
                    Val::Bool(b) => Some(b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        Repr::Number => Arc::new(
            values
                .map(|v| match v {
                    Val::Number(n) => Some(n),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        Repr::Str => {
            let mut builder = StringBuilder::with_capacity(rows, rows * 8);
            for value in values {
                match value {
                    Val::Str(s) => builder.append_value(s),
                    _ => builder.append_null(),
                }
            }
            Arc::new(builder.finish())
        }
        Repr::Dynamic => {
            let mut builder = DynamicBuilder::with_capacity(rows);
            values.for_each(|v| builder.push(&v));
            Arc::new(builder.finish())
        }
    }
}

/// A one-row literal of a value in its natural layout (dynamic for `null`, `undefined`, …).
pub(crate) fn scalar(value: &Val<'_>) -> (ScalarValue, Repr) {
    match value {
        Val::Bool(b) => (ScalarValue::Boolean(Some(*b)), Repr::Truth),
        Val::Number(n) => (ScalarValue::Float64(Some(*n)), Repr::Number),
        Val::Str(s) => (ScalarValue::Utf8(Some(s.to_string())), Repr::Str),
        other @ (Val::Undefined | Val::Null | Val::Object | Val::Array) => {
            let mut builder = DynamicBuilder::with_capacity(1);
            builder.push(other);
            (
                ScalarValue::Struct(Arc::new(builder.finish())),
                Repr::Dynamic,
            )
        }
    }
}

/// The `undefined` literal of a typed layout (a typed SQL `NULL`).
pub(crate) fn undefined(repr: Repr) -> ScalarValue {
    match repr {
        Repr::Truth => ScalarValue::Boolean(None),
        Repr::Number => ScalarValue::Float64(None),
        Repr::Str => ScalarValue::Utf8(None),
        Repr::Dynamic => scalar(&Val::Undefined).0,
    }
}

/// The typed child of a dynamic array for `repr` (`Truth`, `Number` or `Str`): valid exactly where
/// the value has that type. Zero-copy.
pub(crate) fn child(array: &StructArray, repr: Repr) -> ArrayRef {
    let index = match repr {
        Repr::Number => NUMBER_CHILD,
        Repr::Str => STRING_CHILD,
        Repr::Truth => BOOLEAN_CHILD,
        Repr::Dynamic => unreachable!("a dynamic array has no dynamic child"),
    };
    Arc::clone(array.column(index))
}

/// The kind code ([`Kind::code`]) of every row of a dynamic array.
pub(crate) fn kinds(array: &StructArray) -> &[u8] {
    array.column(KIND).as_primitive::<UInt8Type>().values()
}

/// A read-only view of an evaluated argument that yields one [`Val`] per row.
#[derive(Debug)]
pub(crate) enum Values<'a> {
    Scalar(Val<'a>),
    Truth(&'a BooleanArray),
    Number(&'a Float64Array),
    Str(&'a StringArray),
    Dynamic {
        kinds: &'a [u8],
        numbers: &'a Float64Array,
        strings: &'a StringArray,
        booleans: &'a BooleanArray,
    },
}

fn unsupported(data_type: &DataType) -> DataFusionError {
    DataFusionError::Internal(format!(
        "a route condition operand has the unsupported Arrow type {data_type}"
    ))
}

impl<'a> Values<'a> {
    pub(crate) fn of(value: &'a ColumnarValue) -> Result<Self, DataFusionError> {
        match value {
            ColumnarValue::Array(array) => Self::of_array(array.as_ref()),
            ColumnarValue::Scalar(scalar) => Ok(Self::Scalar(match scalar {
                ScalarValue::Boolean(Some(b)) => Val::Bool(*b),
                ScalarValue::Float64(Some(n)) => Val::Number(*n),
                ScalarValue::Utf8(Some(s)) => Val::Str(s.as_str().into()),
                ScalarValue::Boolean(None)
                | ScalarValue::Float64(None)
                | ScalarValue::Utf8(None) => Val::Undefined,
                ScalarValue::Struct(array) if array.is_empty() => Val::Undefined,
                ScalarValue::Struct(array) => Self::of_array(array.as_ref())?.get(0),
                other => return Err(unsupported(&other.data_type())),
            })),
        }
    }

    pub(crate) fn of_array(array: &'a dyn Array) -> Result<Self, DataFusionError> {
        match Repr::of(array.data_type()) {
            Some(Repr::Truth) => Ok(Self::Truth(array.as_boolean())),
            Some(Repr::Number) => Ok(Self::Number(array.as_primitive::<Float64Type>())),
            Some(Repr::Str) => Ok(Self::Str(array.as_string::<i32>())),
            Some(Repr::Dynamic) => {
                let array = array.as_struct();
                Ok(Self::Dynamic {
                    kinds: kinds(array),
                    numbers: array.column(NUMBER_CHILD).as_primitive::<Float64Type>(),
                    strings: array.column(STRING_CHILD).as_string::<i32>(),
                    booleans: array.column(BOOLEAN_CHILD).as_boolean(),
                })
            }
            None => Err(unsupported(array.data_type())),
        }
    }

    /// The value of row `row`.
    pub(crate) fn get(&self, row: usize) -> Val<'a> {
        match self {
            Self::Scalar(value) => value.clone(),
            Self::Truth(a) if a.is_valid(row) => Val::Bool(a.value(row)),
            Self::Number(a) if a.is_valid(row) => Val::Number(a.value(row)),
            Self::Str(a) if a.is_valid(row) => Val::Str(a.value(row).into()),
            Self::Truth(_) | Self::Number(_) | Self::Str(_) => Val::Undefined,
            Self::Dynamic {
                kinds,
                numbers,
                strings,
                booleans,
            } => match Kind::from_code(kinds[row]) {
                Kind::Undefined => Val::Undefined,
                Kind::Null => Val::Null,
                Kind::Bool => Val::Bool(booleans.value(row)),
                Kind::Number => Val::Number(numbers.value(row)),
                Kind::String => Val::Str(strings.value(row).into()),
                Kind::Object => Val::Object,
                Kind::Array => Val::Array,
            },
        }
    }
}

/// IoT Hub's verdict on a route condition's value, per row: `matched` where it is `true`,
/// `undefined` where it is `undefined` or `null`; any other value is `false`.
pub(crate) fn verdicts(
    value: &ColumnarValue,
    rows: usize,
) -> Result<(BooleanBuffer, NullBuffer), DataFusionError> {
    let array = value.to_array(rows)?;
    let all_defined = || NullBuffer::new_valid(rows);
    Ok(match Repr::of(array.data_type()) {
        Some(Repr::Truth) => {
            let truths = array.as_boolean();
            let defined = truths.logical_nulls().unwrap_or_else(all_defined);
            (truths.values() & defined.inner(), defined)
        }
        Some(Repr::Number | Repr::Str) => (
            BooleanBuffer::new_unset(rows),
            array.logical_nulls().unwrap_or_else(all_defined),
        ),
        Some(Repr::Dynamic) => {
            let array = array.as_struct();
            let kinds = kinds(array);
            let booleans = array.column(BOOLEAN_CHILD).as_boolean();
            let matched = BooleanBuffer::collect_bool(rows, |row| {
                kinds[row] == Kind::Bool.code() && booleans.value(row)
            });
            let undefined = KindSet::of(&[Kind::Undefined, Kind::Null]);
            let defined =
                BooleanBuffer::collect_bool(rows, |row| !undefined.contains_code(kinds[row]));
            (matched, NullBuffer::new(defined))
        }
        None => return Err(unsupported(array.data_type())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Val<'static>> {
        vec![
            Val::Undefined,
            Val::Null,
            Val::Bool(true),
            Val::Number(-2.5),
            Val::Str("é".into()),
            Val::Object,
            Val::Array,
        ]
    }

    #[test]
    fn dynamic_arrays_round_trip_every_kind() {
        let values = every_kind();
        let array = build(Repr::Dynamic, values.len(), values.iter().cloned());
        let view = Values::of_array(array.as_ref()).expect("a dynamic array");
        for (row, value) in values.iter().enumerate() {
            assert_eq!(view.get(row), *value);
            assert_eq!(
                kinds(array.as_struct())[row],
                value.kind().code(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn verdicts_follow_iot_hub_truth() {
        let values = every_kind();
        let array = build(Repr::Dynamic, values.len(), values.iter().cloned());
        let (matched, defined) =
            verdicts(&ColumnarValue::Array(array), values.len()).expect("a dynamic array");
        let matched: Vec<bool> = matched.iter().collect();
        let defined: Vec<bool> = defined.iter().collect();
        assert_eq!(matched, [false, false, true, false, false, false, false]);
        assert_eq!(defined, [false, false, true, true, true, true, true]);
    }
}
