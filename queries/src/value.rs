//! The runtime value model and the column-at-a-time kernels of every operator and function.
//!
//! IoT Hub values are dynamically typed (body and twin values carry their JSON type) and use a
//! three-valued logic where `undefined` is distinct from `null`. A [`Val`] is one such value; strings
//! borrow from the batch or the parsed JSON (`Cow::Borrowed`) so extraction and comparison allocate
//! nothing per row. A [`Column`] is either a scalar (a literal, broadcast lazily) or one value per row,
//! and every operator is a tight loop over two columns: no per-row dispatch on the expression tree.
//!
//! Semantics (Edge engine, `Bool.cs`, `ComparisonOperators.cs`, `Undefined.cs`):
//! * any operation with an `undefined` operand is `undefined`; `NaN` results are `undefined`;
//! * no implicit conversion: comparing values of different JSON types is `=` false, `!=` true and
//!   ordering `undefined`; objects and arrays compare as `undefined`; `null = null` is true;
//! * `AND`/`OR` follow Kleene logic with `undefined` as unknown; non-boolean operands count as unknown;
//! * strings compare ordinally (by code point), case-sensitively.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::parser::BinaryOp;

/// One IoT Hub runtime value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val<'a> {
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

    fn truth(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn type_rank(&self) -> u8 {
        match self {
            Self::Undefined => 0,
            Self::Null => 1,
            Self::Bool(_) => 2,
            Self::Number(_) => 3,
            Self::Str(_) => 4,
            Self::Object => 5,
            Self::Array => 6,
        }
    }
}

/// A value per row, one value for all rows, or a compact truth per row.
///
/// Comparisons, logic and predicates only ever yield `true`, `false` or `undefined`, so they produce
/// [`Column::Truths`]: one byte per row instead of a 32-byte [`Val`], which keeps a hundred routes'
/// intermediate results in cache and lets `AND`/`OR`/`NOT` run as table lookups.
#[derive(Debug, Clone)]
pub(crate) enum Column<'a> {
    Scalar(Val<'a>),
    Rows(Vec<Val<'a>>),
    /// [`FALSE`], [`TRUE`] or [`UNKNOWN`] per row.
    Truths(Vec<u8>),
}

/// Truth byte: `false`.
pub(crate) const FALSE: u8 = 0;
/// Truth byte: `true`.
pub(crate) const TRUE: u8 = 1;
/// Truth byte: `undefined` (also any non-boolean operand of a logical operator).
pub(crate) const UNKNOWN: u8 = 2;

static TRUTH_VALUES: [Val<'static>; 3] = [Val::Bool(false), Val::Bool(true), Val::Undefined];

/// Kleene `AND`/`OR`/`NOT` as lookup tables indexed by truth bytes (`a * 3 + b`).
const AND_TABLE: [u8; 9] = [
    FALSE, FALSE, FALSE, FALSE, TRUE, UNKNOWN, FALSE, UNKNOWN, UNKNOWN,
];
const OR_TABLE: [u8; 9] = [
    FALSE, TRUE, UNKNOWN, TRUE, TRUE, TRUE, UNKNOWN, TRUE, UNKNOWN,
];
const NOT_TABLE: [u8; 3] = [TRUE, FALSE, UNKNOWN];

/// The truth byte of a value: booleans as themselves, anything else unknown.
pub(crate) fn truth_byte(value: &Val<'_>) -> u8 {
    match value {
        Val::Bool(false) => FALSE,
        Val::Bool(true) => TRUE,
        _ => UNKNOWN,
    }
}

impl<'a> Column<'a> {
    pub(crate) fn get(&self, row: usize) -> &Val<'a> {
        match self {
            Self::Scalar(v) => v,
            Self::Rows(rows) => &rows[row],
            Self::Truths(truths) => &TRUTH_VALUES[usize::from(truths[row])],
        }
    }

    /// Applies `f` to every row (or once for a scalar).
    pub(crate) fn map(&self, rows: usize, f: impl Fn(&Val<'a>) -> Val<'a>) -> Self {
        match self {
            Self::Scalar(v) => Self::Scalar(f(v)),
            Self::Rows(values) => Self::Rows(values[..rows].iter().map(f).collect()),
            Self::Truths(_) => Self::Rows((0..rows).map(|row| f(self.get(row))).collect()),
        }
    }

    /// Applies `f` to every pair of rows.
    pub(crate) fn zip(
        &self,
        other: &Self,
        rows: usize,
        f: impl Fn(&Val<'a>, &Val<'a>) -> Val<'a>,
    ) -> Self {
        match (self, other) {
            (Self::Scalar(a), Self::Scalar(b)) => Self::Scalar(f(a, b)),
            _ => Self::Rows(
                (0..rows)
                    .map(|row| f(self.get(row), other.get(row)))
                    .collect(),
            ),
        }
    }

    /// Applies a predicate to every pair of rows, producing truth bytes.
    pub(crate) fn zip_truths(
        &self,
        other: &Self,
        rows: usize,
        f: impl Fn(&Val<'a>, &Val<'a>) -> Val<'a>,
    ) -> Self {
        match (self, other) {
            (Self::Scalar(a), Self::Scalar(b)) => Self::Scalar(f(a, b)),
            (Self::Rows(a), Self::Scalar(b)) => {
                Self::Truths(a[..rows].iter().map(|a| truth_byte(&f(a, b))).collect())
            }
            _ => Self::Truths(
                (0..rows)
                    .map(|row| truth_byte(&f(self.get(row), other.get(row))))
                    .collect(),
            ),
        }
    }

    /// Truth bytes of every row (borrowed when already a truth column).
    fn truths(&self, rows: usize) -> Cow<'_, [u8]> {
        match self {
            Self::Truths(truths) => Cow::Borrowed(&truths[..rows]),
            Self::Scalar(v) => Cow::Owned(vec![truth_byte(v); rows]),
            Self::Rows(values) => Cow::Owned(values[..rows].iter().map(truth_byte).collect()),
        }
    }

    /// Kleene `AND` (`or == false`) or `OR` (`or == true`) of two columns.
    pub(crate) fn logic(&self, other: &Self, rows: usize, or: bool) -> Self {
        if let (Self::Scalar(a), Self::Scalar(b)) = (self, other) {
            return Self::Scalar(if or { self::or(a, b) } else { and(a, b) });
        }
        let table = if or { &OR_TABLE } else { &AND_TABLE };
        let (a, b) = (self.truths(rows), other.truths(rows));
        Self::Truths(
            a.iter()
                .zip(b.iter())
                .map(|(&a, &b)| table[usize::from(a * 3 + b)])
                .collect(),
        )
    }

    /// Kleene `NOT` of a column.
    pub(crate) fn not(&self, rows: usize) -> Self {
        match self {
            Self::Scalar(v) => Self::Scalar(not(v)),
            _ => Self::Truths(
                self.truths(rows)
                    .iter()
                    .map(|&t| NOT_TABLE[usize::from(t)])
                    .collect(),
            ),
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
        (a, b) if equality && a.type_rank() != b.type_rank() => Val::Bool(op == BinaryOp::NotEq),
        _ => Val::Undefined,
    }
}

/// `+ - * / %` on numbers; anything else is `undefined`.
pub(crate) fn arithmetic<'a>(op: BinaryOp, left: &Val<'_>, right: &Val<'_>) -> Val<'a> {
    let (Some(a), Some(b)) = (left.as_number(), right.as_number()) else {
        return Val::Undefined;
    };
    Val::number(match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        _ => a % b,
    })
}

/// `||` on strings.
pub(crate) fn concat<'a>(left: &Val<'_>, right: &Val<'_>) -> Val<'a> {
    match (left.as_str(), right.as_str()) {
        (Some(a), Some(b)) => Val::Str(Cow::Owned([a, b].concat())),
        _ => Val::Undefined,
    }
}

/// Kleene `AND`.
pub(crate) fn and<'a>(left: &Val<'_>, right: &Val<'_>) -> Val<'a> {
    match (left.truth(), right.truth()) {
        (Some(false), _) | (_, Some(false)) => Val::Bool(false),
        (Some(true), Some(true)) => Val::Bool(true),
        _ => Val::Undefined,
    }
}

/// Kleene `OR`.
pub(crate) fn or<'a>(left: &Val<'_>, right: &Val<'_>) -> Val<'a> {
    match (left.truth(), right.truth()) {
        (Some(true), _) | (_, Some(true)) => Val::Bool(true),
        (Some(false), Some(false)) => Val::Bool(false),
        _ => Val::Undefined,
    }
}

/// Kleene `NOT`.
pub(crate) fn not<'a>(value: &Val<'_>) -> Val<'a> {
    value.truth().map_or(Val::Undefined, |b| Val::Bool(!b))
}

/// Unary `-`.
pub(crate) fn negate<'a>(value: &Val<'_>) -> Val<'a> {
    value
        .as_number()
        .map_or(Val::Undefined, |n| Val::number(-n))
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl Function {
    /// Whether the function only ever yields `true`, `false` or `undefined`.
    pub(crate) fn is_predicate(self) -> bool {
        matches!(
            self,
            Self::IsArray
                | Self::IsBool
                | Self::IsDefined
                | Self::IsNull
                | Self::IsNumber
                | Self::IsObject
                | Self::IsPrimitive
                | Self::IsString
                | Self::StartsWith
                | Self::EndsWith
                | Self::Contains
        )
    }
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

/// Character index of `needle` in `haystack`, as `INDEX_OF` counts.
fn char_index_of(haystack: &str, needle: &str) -> f64 {
    haystack.find(needle).map_or(-1.0, |byte| {
        #[expect(
            clippy::cast_precision_loss,
            reason = "string lengths are far below 2^52"
        )]
        let index = haystack[..byte].chars().count() as f64;
        index
    })
}

/// `SUBSTRING(s, start[, length])`, 0-based in characters; out of range is `undefined` (as .NET throws).
fn substring<'a>(text: &str, start: f64, length: Option<f64>) -> Val<'a> {
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

fn math(f: Function, n: f64) -> f64 {
    match f {
        Function::Abs => n.abs(),
        Function::Exp => n.exp(),
        Function::Square => n * n,
        Function::Ceiling => n.ceil(),
        Function::Floor => n.floor(),
        Function::Sign => {
            if n > 0.0 {
                1.0
            } else if n < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        _ => n.sqrt(),
    }
}

/// Applies a function to one row's arguments.
pub(crate) fn call<'a>(f: Function, args: &[&Val<'a>]) -> Val<'a> {
    let num = |i: usize| args.get(i).and_then(|v| v.as_number());
    let text = |i: usize| args.get(i).and_then(|v| v.as_str());
    let arg = args.first().copied().unwrap_or(&Val::Undefined);
    let test = |holds: bool| Val::Bool(holds);
    match f {
        Function::Abs
        | Function::Exp
        | Function::Square
        | Function::Ceiling
        | Function::Floor
        | Function::Sign
        | Function::Sqrt => num(0).map_or(Val::Undefined, |n| Val::number(math(f, n))),
        Function::Power => match (num(0), num(1)) {
            (Some(x), Some(y)) => Val::number(x.powf(y)),
            _ => Val::Undefined,
        },
        Function::AsNumber => match arg {
            Val::Number(n) => Val::Number(*n),
            Val::Str(s) => parse_number(s).map_or(Val::Undefined, Val::number),
            _ => Val::Undefined,
        },
        Function::IsArray => test(matches!(arg, Val::Array)),
        Function::IsBool => test(matches!(arg, Val::Bool(_))),
        Function::IsDefined => test(!matches!(arg, Val::Undefined)),
        Function::IsNull => test(matches!(arg, Val::Null)),
        Function::IsNumber => test(matches!(arg, Val::Number(_))),
        Function::IsObject => test(matches!(arg, Val::Object)),
        Function::IsPrimitive => test(matches!(
            arg,
            Val::Null | Val::Bool(_) | Val::Number(_) | Val::Str(_)
        )),
        Function::IsString => test(matches!(arg, Val::Str(_))),
        Function::Concat => {
            let mut out = String::new();
            for value in args {
                match value.as_str() {
                    Some(s) => out.push_str(s),
                    None => return Val::Undefined,
                }
            }
            Val::Str(Cow::Owned(out))
        }
        Function::Length => text(0).map_or(Val::Undefined, |s| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "string lengths are far below 2^52"
            )]
            let length = s.chars().count() as f64;
            Val::Number(length)
        }),
        Function::Lower => {
            text(0).map_or(Val::Undefined, |s| Val::Str(Cow::Owned(s.to_lowercase())))
        }
        Function::Upper => {
            text(0).map_or(Val::Undefined, |s| Val::Str(Cow::Owned(s.to_uppercase())))
        }
        Function::Substring => match (text(0), num(1)) {
            (Some(s), Some(start)) if args.len() == 2 => substring(s, start, None),
            (Some(s), Some(start)) => {
                num(2).map_or(Val::Undefined, |len| substring(s, start, Some(len)))
            }
            _ => Val::Undefined,
        },
        Function::IndexOf => match (text(0), text(1)) {
            (Some(s), Some(needle)) => Val::Number(char_index_of(s, needle)),
            _ => Val::Undefined,
        },
        Function::StartsWith | Function::EndsWith | Function::Contains => {
            match (text(0), text(1)) {
                (Some(s), Some(needle)) => Val::Bool(match f {
                    Function::StartsWith => s.starts_with(needle),
                    Function::EndsWith => s.ends_with(needle),
                    _ => s.contains(needle),
                }),
                _ => Val::Undefined,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Val<'_> {
        Val::Str(Cow::Borrowed(text))
    }

    #[test]
    fn three_valued_logic_truth_tables() {
        use Val::{Bool, Undefined};
        let (t, f, u) = (Bool(true), Bool(false), Undefined);
        let cases = [
            (&t, &u, u.clone(), t.clone()),
            (&f, &u, f.clone(), u.clone()),
            (&u, &u, u.clone(), u.clone()),
            (&t, &f, f.clone(), t.clone()),
            (&t, &t, t.clone(), t.clone()),
            (&f, &f, f.clone(), f.clone()),
        ];
        for (a, b, expected_and, expected_or) in cases {
            assert_eq!(and(a, b), expected_and, "{a:?} AND {b:?}");
            assert_eq!(and(b, a), expected_and, "{b:?} AND {a:?}");
            assert_eq!(or(a, b), expected_or, "{a:?} OR {b:?}");
            assert_eq!(or(b, a), expected_or, "{b:?} OR {a:?}");
        }
        assert_eq!(not(&u), u);
        assert_eq!(not(&Val::Null), u);
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
    fn functions_follow_the_documented_semantics() {
        let cases: Vec<(Function, Vec<Val<'_>>, Val<'_>)> = vec![
            (Function::AsNumber, vec![s(" 12.5 ")], Val::Number(12.5)),
            (Function::AsNumber, vec![s("NaN")], Val::Undefined),
            (Function::AsNumber, vec![s("inf")], Val::Undefined),
            (Function::Sqrt, vec![Val::Number(-1.0)], Val::Undefined),
            (Function::Sign, vec![Val::Number(-0.0)], Val::Number(0.0)),
            (
                Function::Substring,
                vec![s("héllo"), Val::Number(1.0), Val::Number(3.0)],
                s("éll"),
            ),
            (
                Function::Substring,
                vec![s("abc"), Val::Number(4.0)],
                Val::Undefined,
            ),
            (Function::IndexOf, vec![s("aéb"), s("b")], Val::Number(2.0)),
            (Function::Length, vec![s("日本")], Val::Number(2.0)),
            (Function::IsDefined, vec![Val::Null], Val::Bool(true)),
            (Function::IsNull, vec![Val::Undefined], Val::Bool(false)),
        ];
        for (f, args, expected) in cases {
            let refs: Vec<&Val<'_>> = args.iter().collect();
            assert_eq!(call(f, &refs), expected, "{f:?}({args:?})");
        }
    }

    #[test]
    fn truth_byte_kernels_match_the_value_logic() {
        let values = [
            Val::Bool(false),
            Val::Bool(true),
            Val::Undefined,
            Val::Null,
            s("x"),
        ];
        let rows = values.len() * values.len();
        let left = Column::Rows(
            (0..rows)
                .map(|i| values[i / values.len()].clone())
                .collect(),
        );
        let right = Column::Rows(
            (0..rows)
                .map(|i| values[i % values.len()].clone())
                .collect(),
        );
        let anded = left.logic(&right, rows, false);
        let ored = left.logic(&right, rows, true);
        let negated = left.not(rows);
        for row in 0..rows {
            let (a, b) = (left.get(row), right.get(row));
            assert_eq!(*anded.get(row), and(a, b), "{a:?} AND {b:?}");
            assert_eq!(*ored.get(row), or(a, b), "{a:?} OR {b:?}");
            assert_eq!(*negated.get(row), not(a), "NOT {a:?}");
        }
    }
}
