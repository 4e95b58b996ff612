//! The runtime value model and the per-value semantics of every operator and function.
//!
//! IoT Hub values are dynamically typed (body and twin values carry their JSON type) and use a
//! three-valued logic where `undefined` is distinct from `null`. A [`Val`] is one such value; strings
//! borrow from the batch or the parsed JSON (`Cow::Borrowed`). Batches are evaluated by DataFusion
//! (`physical.rs`); these functions define the semantics where no DataFusion kernel has them, run
//! row by row inside our scalar functions (`udf.rs`), and they are what the typed fast paths are
//! checked against by the golden suite.
//!
//! Semantics (Edge engine, `Bool.cs`, `ComparisonOperators.cs`, `Undefined.cs`):
//! * any operation with an `undefined` operand is `undefined`; `NaN` results are `undefined`;
//! * no implicit conversion: comparing values of different JSON types is `=` false, `!=` true and
//!   ordering `undefined`; objects and arrays compare as `undefined`; `null = null` is true;
//! * strings compare ordinally (by code point), case-sensitively.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::parser::BinaryOp;

/// The JSON type of a value. Its code (`Kind as u8`) is what a dynamic Arrow value stores per row
/// (`repr.rs`), so the discriminants are part of that layout.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Undefined = 0,
    Null = 1,
    Bool = 2,
    Number = 3,
    String = 4,
    Object = 5,
    Array = 6,
}

impl Kind {
    /// Every kind, indexed by its code.
    const ALL: [Self; 7] = [
        Self::Undefined,
        Self::Null,
        Self::Bool,
        Self::Number,
        Self::String,
        Self::Object,
        Self::Array,
    ];

    /// The kind stored as `code`. Codes are only ever written from a [`Kind`]; anything else reads
    /// as `undefined`.
    pub(crate) fn from_code(code: u8) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(Self::Undefined)
    }

    /// The code stored in a dynamic Arrow value.
    pub(crate) const fn code(self) -> u8 {
        self as u8
    }
}

/// A set of [`Kind`]s, one bit per kind code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KindSet(u8);

impl KindSet {
    /// Every kind but `undefined`: what `is_defined` tests.
    pub(crate) const DEFINED: Self = Self::of(&[
        Kind::Null,
        Kind::Bool,
        Kind::Number,
        Kind::String,
        Kind::Object,
        Kind::Array,
    ]);
    /// `null`, booleans, numbers and strings: what `is_primitive` tests, and the kinds a value can
    /// be compared with a literal as.
    pub(crate) const PRIMITIVE: Self =
        Self::of(&[Kind::Null, Kind::Bool, Kind::Number, Kind::String]);

    /// The set of `kinds`.
    pub(crate) const fn of(kinds: &[Kind]) -> Self {
        let mut bits = 0;
        let mut index = 0;
        while index < kinds.len() {
            bits |= 1 << kinds[index].code();
            index += 1;
        }
        Self(bits)
    }

    /// Whether the set holds the kind stored as `code` (the per-row test over dynamic arrays).
    pub(crate) fn contains_code(self, code: u8) -> bool {
        1_u8.checked_shl(u32::from(code))
            .is_some_and(|bit| self.0 & bit != 0)
    }

    pub(crate) fn contains(self, kind: Kind) -> bool {
        self.contains_code(kind.code())
    }
}

/// One IoT Hub runtime value.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum Val<'a> {
    #[default]
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    Str(Cow<'a, str>),
    /// A JSON object (only `is_object`/`is_defined` can see it).
    Object,
    /// A JSON array (only `is_array`/`is_defined` can see it).
    Array,
}

impl Val<'_> {
    /// A number, with `NaN` mapped to `undefined`.
    pub(crate) fn number(n: f64) -> Self {
        if n.is_nan() {
            Self::Undefined
        } else {
            Self::Number(n)
        }
    }

    fn as_number(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The JSON type.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Self::Undefined => Kind::Undefined,
            Self::Null => Kind::Null,
            Self::Bool(_) => Kind::Bool,
            Self::Number(_) => Kind::Number,
            Self::Str(_) => Kind::String,
            Self::Object => Kind::Object,
            Self::Array => Kind::Array,
        }
    }
}

fn ordering_holds(op: BinaryOp, ordering: Ordering) -> bool {
    match op {
        BinaryOp::Eq => ordering == Ordering::Equal,
        BinaryOp::NotEq => ordering != Ordering::Equal,
        BinaryOp::Lt => ordering == Ordering::Less,
        BinaryOp::LtEq => ordering != Ordering::Greater,
        BinaryOp::Gt => ordering == Ordering::Greater,
        BinaryOp::GtEq => ordering != Ordering::Less,
        _ => false,
    }
}

/// `=`, `!=`, `<`, `<=`, `>`, `>=`.
pub(crate) fn compare<'a>(op: BinaryOp, left: &Val<'_>, right: &Val<'_>) -> Val<'a> {
    let equality = matches!(op, BinaryOp::Eq | BinaryOp::NotEq);
    match (left, right) {
        (Val::Undefined, _) | (_, Val::Undefined) => Val::Undefined,
        (Val::Object | Val::Array, _) | (_, Val::Object | Val::Array) => Val::Undefined,
        (Val::Number(a), Val::Number(b)) => match a.partial_cmp(b) {
            Some(ordering) => Val::Bool(ordering_holds(op, ordering)),
            None => Val::Undefined,
        },
        (Val::Str(a), Val::Str(b)) => Val::Bool(ordering_holds(op, a.as_ref().cmp(b.as_ref()))),
        (Val::Bool(a), Val::Bool(b)) if equality => Val::Bool(ordering_holds(op, a.cmp(b))),
        (Val::Null, Val::Null) if equality => Val::Bool(op == BinaryOp::Eq),
        (a, b) if equality && a.kind() != b.kind() => Val::Bool(op == BinaryOp::NotEq),
        _ => Val::Undefined,
    }
}

/// `??`: the left value unless it is `undefined`.
pub(crate) fn coalesce<'a>(left: &Val<'a>, right: &Val<'a>) -> Val<'a> {
    if *left == Val::Undefined {
        right.clone()
    } else {
        left.clone()
    }
}

/// The built-in functions of route conditions (names are case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Function {
    Abs,
    Exp,
    Power,
    Square,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
    AsNumber,
    IsArray,
    IsBool,
    IsDefined,
    IsNull,
    IsNumber,
    IsObject,
    IsPrimitive,
    IsString,
    Concat,
    Length,
    Lower,
    Upper,
    Substring,
    IndexOf,
    StartsWith,
    EndsWith,
    Contains,
}

/// `as_number`: numbers pass through, numeric strings parse, anything else is `undefined`.
fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    let numeric = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    if numeric { text.parse().ok() } else { None }
}

/// `SUBSTRING(s, start[, length])`, 0-based in characters; out of range is `undefined` (as .NET throws).
fn substring_of<'a>(text: &str, start: f64, length: Option<f64>) -> Val<'a> {
    #[expect(
        clippy::cast_precision_loss,
        reason = "string lengths are far below 2^52"
    )]
    let total = text.chars().count() as f64;
    let start = start.trunc();
    let length = length.map_or(total - start, f64::trunc);
    if start < 0.0 || start > total || length < 0.0 || start + length > total {
        return Val::Undefined;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked to be within 0..=total above"
    )]
    let (start, length) = (start as usize, length as usize);
    Val::Str(Cow::Owned(text.chars().skip(start).take(length).collect()))
}

/// `AS_NUMBER`.
pub(crate) fn as_number<'a>(value: &Val<'_>) -> Val<'a> {
    match value {
        Val::Number(n) => Val::Number(*n),
        Val::Str(s) => parse_number(s).map_or(Val::Undefined, Val::number),
        _ => Val::Undefined,
    }
}

/// `SQRT`: `undefined` for a negative number (`NaN`).
pub(crate) fn sqrt<'a>(value: &Val<'_>) -> Val<'a> {
    value
        .as_number()
        .map_or(Val::Undefined, |n| Val::number(n.sqrt()))
}

/// `POWER`, as .NET's `Math.Pow` (`power(0, -1)` is infinity).
pub(crate) fn power<'a>(x: &Val<'_>, y: &Val<'_>) -> Val<'a> {
    match (x.as_number(), y.as_number()) {
        (Some(x), Some(y)) => Val::number(x.powf(y)),
        _ => Val::Undefined,
    }
}

/// `SUBSTRING(s, start[, length])`.
pub(crate) fn substring<'a>(args: &[Val<'_>]) -> Val<'a> {
    let text = args.first().and_then(Val::as_str);
    let start = args.get(1).and_then(Val::as_number);
    match (text, start, args.get(2)) {
        (Some(s), Some(start), None) => substring_of(s, start, None),
        (Some(s), Some(start), Some(length)) => {
            length.as_number().map_or(Val::Undefined, |length| {
                substring_of(s, start, Some(length))
            })
        }
        _ => Val::Undefined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Val<'_> {
        Val::Str(Cow::Borrowed(text))
    }

    #[test]
    fn comparisons_never_convert_types() {
        let cases = [
            (BinaryOp::Eq, Val::Number(50.0), s("50"), Val::Bool(false)),
            (BinaryOp::NotEq, Val::Number(50.0), s("50"), Val::Bool(true)),
            (BinaryOp::Lt, Val::Number(50.0), s("50"), Val::Undefined),
            (BinaryOp::Eq, Val::Null, Val::Null, Val::Bool(true)),
            (BinaryOp::Eq, Val::Null, Val::Number(1.0), Val::Bool(false)),
            (BinaryOp::Eq, Val::Object, Val::Object, Val::Undefined),
            (BinaryOp::Lt, s("B"), s("a"), Val::Bool(true)),
            (BinaryOp::Eq, Val::Undefined, Val::Undefined, Val::Undefined),
            (
                BinaryOp::Lt,
                Val::Bool(false),
                Val::Bool(true),
                Val::Undefined,
            ),
        ];
        for (op, a, b, expected) in cases {
            assert_eq!(compare(op, &a, &b), expected, "{a:?} {op:?} {b:?}");
        }
    }

    #[test]
    fn kind_codes_round_trip_and_kind_sets_hold_their_kinds() {
        for (code, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(kind.code()), code, "{kind:?}");
            assert_eq!(Kind::from_code(kind.code()), kind);
        }
        assert_eq!(Kind::from_code(200), Kind::Undefined);
        let members = |set: KindSet| -> Vec<Kind> {
            Kind::ALL.into_iter().filter(|&k| set.contains(k)).collect()
        };
        assert_eq!(
            members(KindSet::PRIMITIVE),
            [Kind::Null, Kind::Bool, Kind::Number, Kind::String]
        );
        assert_eq!(members(KindSet::DEFINED), Kind::ALL[1..]);
        assert_eq!(members(KindSet::of(&[Kind::Array])), [Kind::Array]);
        assert!(!KindSet::DEFINED.contains_code(200));
    }

    #[test]
    fn row_functions_follow_the_documented_semantics() {
        assert_eq!(as_number(&s(" 12.5 ")), Val::Number(12.5));
        assert_eq!(as_number(&s("NaN")), Val::Undefined);
        assert_eq!(as_number(&s("inf")), Val::Undefined);
        assert_eq!(as_number(&Val::Bool(true)), Val::Undefined);
        assert_eq!(sqrt(&Val::Number(-1.0)), Val::Undefined);
        assert_eq!(
            power(&Val::Number(0.0), &Val::Number(-1.0)),
            Val::Number(f64::INFINITY)
        );
        assert_eq!(
            substring(&[s("héllo"), Val::Number(1.0), Val::Number(3.0)]),
            s("éll")
        );
        assert_eq!(substring(&[s("abc"), Val::Number(4.0)]), Val::Undefined);
        assert_eq!(
            substring(&[s("abc"), Val::Number(1.0), s("2")]),
            Val::Undefined
        );
    }
}
