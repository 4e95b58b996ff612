//! Type checking of the AST into an evaluation tree ([`Node`]) over shared input slots.
//!
//! IoT Hub rejects statically ill-typed conditions when a route is saved; so do we, with a positioned
//! message and a suggestion. Application and system properties are statically strings, literals have
//! their own type, and body/twin values are `Dynamic` (checked at run time, never converted).
//!
//! Every property, body path and twin path a condition reads becomes a [`Slot`] interned in the
//! [`UniqueInputs`] shared by all conditions of a route set, so each is extracted once per batch
//! however many routes use it.

use std::ops::RangeInclusive;

use crate::error::{Diagnostic, Error, Result};
use crate::parser::{BinaryOp, Expr, ExprKind, Literal, NameForm};
use crate::value::{Function, Val};

/// A static type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Bool,
    Number,
    String,
    Null,
    Undefined,
    Dynamic,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Self::Bool => "boolean",
            Self::Number => "number",
            Self::String => "string",
            Self::Null => "null",
            Self::Undefined => "undefined",
            Self::Dynamic => "dynamic",
        }
    }

    /// Whether a value of this static type may be a `wanted` at run time.
    fn may_be(self, wanted: Self) -> bool {
        self == wanted || matches!(self, Self::Dynamic | Self::Undefined)
    }
}

/// A system property column of the message schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SystemProperty {
    MessageId,
    CorrelationId,
    UserId,
    ContentType,
    ContentEncoding,
    EnqueuedTime,
    ConnectionDeviceId,
    ConnectionModuleId,
    ConnectionAuthMethod,
    ConnectionDeviceGenerationId,
    DtDataschema,
    DtSubject,
}

const SYSTEM_PROPERTIES: [(&str, SystemProperty); 12] = [
    ("messageId", SystemProperty::MessageId),
    ("correlationId", SystemProperty::CorrelationId),
    ("userId", SystemProperty::UserId),
    ("contentType", SystemProperty::ContentType),
    ("contentEncoding", SystemProperty::ContentEncoding),
    ("enqueuedTime", SystemProperty::EnqueuedTime),
    ("connectionDeviceId", SystemProperty::ConnectionDeviceId),
    ("connectionModuleId", SystemProperty::ConnectionModuleId),
    ("connectionAuthMethod", SystemProperty::ConnectionAuthMethod),
    (
        "connectionDeviceGenerationId",
        SystemProperty::ConnectionDeviceGenerationId,
    ),
    ("dt-dataschema", SystemProperty::DtDataschema),
    ("dt-subject", SystemProperty::DtSubject),
];

/// One step of a body or twin path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PathStep {
    Key(String),
    Index(usize),
}

/// An input read from the batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// Application property (name lower-cased), matched case-insensitively.
    App(String),
    System(SystemProperty),
    Body(Vec<PathStep>),
    /// Twin path; keys match case-insensitively.
    Twin(Vec<PathStep>),
    /// `$name`: the application property `app` (slot index) if the message has it, else `then`.
    AppOr {
        app: usize,
        then: usize,
    },
}

/// The inputs of a set of conditions, each once: a [`Node::Input`] is an index into `slots`.
#[derive(Debug, Default)]
pub(crate) struct UniqueInputs {
    pub(crate) slots: Vec<Slot>,
}

impl UniqueInputs {
    fn intern(&mut self, slot: Slot) -> usize {
        if let Some(i) = self.slots.iter().position(|s| *s == slot) {
            return i;
        }
        self.slots.push(slot);
        self.slots.len() - 1
    }
}

/// A type-checked expression.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Const(Val<'static>),
    Input(usize),
    Negate(Box<Node>),
    Not(Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    Call(Function, Vec<Node>),
}

/// What a function's arguments must be.
#[derive(Debug, Clone, Copy)]
enum Params {
    Numbers,
    Strings,
    /// `as_number`: a number passes through, anything else must be a string.
    StringOrNumber,
    /// `substring(s, start[, length])`.
    StringThenNumbers,
    Any,
}

/// A built-in function: its name, how many arguments it takes, of what type, and its result type.
#[derive(Debug)]
struct Builtin {
    name: &'static str,
    function: Function,
    arity: RangeInclusive<usize>,
    params: Params,
    result: Type,
}

const fn builtin(
    name: &'static str,
    function: Function,
    arity: RangeInclusive<usize>,
    params: Params,
    result: Type,
) -> Builtin {
    Builtin {
        name,
        function,
        arity,
        params,
        result,
    }
}

/// Every function of the route language (names match case-insensitively). Laid out by hand, one
/// line per function, so the table reads as one.
#[rustfmt::skip]
const FUNCTIONS: [Builtin; 26] = [
    builtin("abs", Function::Abs, 1..=1, Params::Numbers, Type::Number),
    builtin("exp", Function::Exp, 1..=1, Params::Numbers, Type::Number),
    builtin("power", Function::Power, 2..=2, Params::Numbers, Type::Number),
    builtin("square", Function::Square, 1..=1, Params::Numbers, Type::Number),
    builtin("ceiling", Function::Ceiling, 1..=1, Params::Numbers, Type::Number),
    builtin("floor", Function::Floor, 1..=1, Params::Numbers, Type::Number),
    builtin("sign", Function::Sign, 1..=1, Params::Numbers, Type::Number),
    builtin("sqrt", Function::Sqrt, 1..=1, Params::Numbers, Type::Number),
    builtin("as_number", Function::AsNumber, 1..=1, Params::StringOrNumber, Type::Number),
    builtin("is_array", Function::IsArray, 1..=1, Params::Any, Type::Bool),
    builtin("is_bool", Function::IsBool, 1..=1, Params::Any, Type::Bool),
    builtin("is_defined", Function::IsDefined, 1..=1, Params::Any, Type::Bool),
    builtin("is_null", Function::IsNull, 1..=1, Params::Any, Type::Bool),
    builtin("is_number", Function::IsNumber, 1..=1, Params::Any, Type::Bool),
    builtin("is_object", Function::IsObject, 1..=1, Params::Any, Type::Bool),
    builtin("is_primitive", Function::IsPrimitive, 1..=1, Params::Any, Type::Bool),
    builtin("is_string", Function::IsString, 1..=1, Params::Any, Type::Bool),
    builtin("concat", Function::Concat, 2..=usize::MAX, Params::Strings, Type::String),
    builtin("length", Function::Length, 1..=1, Params::Strings, Type::Number),
    builtin("lower", Function::Lower, 1..=1, Params::Strings, Type::String),
    builtin("upper", Function::Upper, 1..=1, Params::Strings, Type::String),
    builtin("substring", Function::Substring, 2..=3, Params::StringThenNumbers, Type::String),
    builtin("index_of", Function::IndexOf, 2..=2, Params::Strings, Type::Number),
    builtin("starts_with", Function::StartsWith, 2..=2, Params::Strings, Type::Bool),
    builtin("ends_with", Function::EndsWith, 2..=2, Params::Strings, Type::Bool),
    builtin("contains", Function::Contains, 2..=2, Params::Strings, Type::Bool),
];

/// Type-checks `expr` (the text of `source`), interning the inputs it reads into `inputs`.
pub(crate) fn check(source: &str, expr: &Expr, inputs: &mut UniqueInputs) -> Result<Node> {
    Checker { source, inputs }.check(expr).map(|(node, _)| node)
}

struct Checker<'s, 'i> {
    source: &'s str,
    inputs: &'i mut UniqueInputs,
}

impl Checker<'_, '_> {
    fn text(&self, expr: &Expr) -> &str {
        &self.source[expr.start..expr.end]
    }

    fn error(&self, expr: &Expr, message: String, suggestion: Option<String>) -> Error {
        let diagnostic = Diagnostic::at(self.source, expr.start, expr.end, message);
        Error::Type(match suggestion {
            Some(s) => diagnostic.with_suggestion(s),
            None => diagnostic,
        })
    }

    fn expect(&self, expr: &Expr, actual: Type, wanted: Type, context: &str) -> Result<()> {
        if actual.may_be(wanted) {
            return Ok(());
        }
        let text = self.text(expr);
        let suggestion = match (wanted, actual) {
            (Type::Number, Type::String)
                if context == "`+`" && matches!(expr.kind, ExprKind::Literal(_)) =>
            {
                Some("use `||` or concat() to join strings".to_owned())
            }
            (Type::Number, Type::String) => Some(format!("use as_number({text})")),
            (Type::String, Type::Null) => {
                Some("null is not a string; test it with is_null() or is_defined()".to_owned())
            }
            (Type::Bool, Type::Number | Type::String) if context.starts_with("NOT") => {
                Some("NOT binds tighter than comparisons: write NOT (a = b)".to_owned())
            }
            _ => None,
        };
        Err(self.error(
            expr,
            format!(
                "{context} expects a {}, but `{text}` is a {}",
                wanted.name(),
                actual.name()
            ),
            suggestion,
        ))
    }

    fn check(&mut self, expr: &Expr) -> Result<(Node, Type)> {
        match &expr.kind {
            ExprKind::Literal(literal) => Ok(match literal {
                Literal::Bool(b) => (Node::Const(Val::Bool(*b)), Type::Bool),
                Literal::Number(n) => (Node::Const(Val::number(*n)), Type::Number),
                Literal::Str(s) => (Node::Const(Val::Str(s.clone().into())), Type::String),
                Literal::Null => (Node::Const(Val::Null), Type::Null),
                Literal::Undefined => (Node::Const(Val::Undefined), Type::Undefined),
            }),
            ExprKind::Name { form, name } => self.name(expr, *form, name),
            ExprKind::Negate(operand) => {
                let (node, ty) = self.check(operand)?;
                self.expect(operand, ty, Type::Number, "unary -")?;
                Ok((Node::Negate(Box::new(node)), Type::Number))
            }
            ExprKind::Not(operand) => {
                let (node, ty) = self.check(operand)?;
                if !(ty.may_be(Type::Bool) || ty == Type::Null) {
                    self.expect(operand, ty, Type::Bool, "NOT")?;
                }
                Ok((Node::Not(Box::new(node)), Type::Bool))
            }
            ExprKind::Binary { op, left, right } => self.binary(*op, left, right),
            ExprKind::Call { name, args } => self.call(expr, name, args),
        }
    }

    fn binary(&mut self, op: BinaryOp, left: &Expr, right: &Expr) -> Result<(Node, Type)> {
        let (l, lt) = self.check(left)?;
        let (r, rt) = self.check(right)?;
        let context = format!("`{}`", op.symbol());
        let ty = match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
                self.expect(left, lt, Type::Number, &context)?;
                self.expect(right, rt, Type::Number, &context)?;
                Type::Number
            }
            BinaryOp::Concat => {
                self.expect(left, lt, Type::String, &context)?;
                self.expect(right, rt, Type::String, &context)?;
                Type::String
            }
            BinaryOp::And | BinaryOp::Or => {
                for (e, t) in [(left, lt), (right, rt)] {
                    if !(t.may_be(Type::Bool) || t == Type::Null) {
                        self.expect(e, t, Type::Bool, &context)?;
                    }
                }
                Type::Bool
            }
            BinaryOp::Coalesce => {
                if lt == rt {
                    lt
                } else if lt == Type::Undefined {
                    rt
                } else {
                    Type::Dynamic
                }
            }
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Lt
            | BinaryOp::LtEq
            | BinaryOp::Gt
            | BinaryOp::GtEq => {
                self.comparison(op, (left, lt), (right, rt))?;
                Type::Bool
            }
        };
        Ok((Node::Binary(op, Box::new(l), Box::new(r)), ty))
    }

    fn comparison(&self, op: BinaryOp, left: (&Expr, Type), right: (&Expr, Type)) -> Result<()> {
        let flexible = |t: Type| matches!(t, Type::Dynamic | Type::Undefined);
        if flexible(left.1) || flexible(right.1) {
            return Ok(());
        }
        let ordering = !matches!(op, BinaryOp::Eq | BinaryOp::NotEq);
        for (side, other) in [(left, right), (right, left)] {
            if side.1 == Type::Null && other.1 != Type::Null {
                return Err(self.error(
                    side.0,
                    format!(
                        "a {} (`{}`) is never compared with null",
                        other.1.name(),
                        self.text(other.0)
                    ),
                    Some(format!(
                        "use is_null({0}) or NOT is_defined({0})",
                        self.text(other.0)
                    )),
                ));
            }
        }
        if left.1 != right.1 {
            let (string_side, _) = if left.1 == Type::String { left } else { right };
            let suggestion = (matches!(left.1, Type::String | Type::Number)
                && matches!(right.1, Type::String | Type::Number))
            .then(|| format!("use as_number({})", self.text(string_side)));
            return Err(self.error(
                right.0,
                format!(
                    "cannot compare a {} (`{}`) with a {} (`{}`) using `{}`: IoT Hub never converts types",
                    left.1.name(),
                    self.text(left.0),
                    right.1.name(),
                    self.text(right.0),
                    op.symbol()
                ),
                suggestion,
            ));
        }
        if ordering && matches!(left.1, Type::Bool | Type::Null) {
            return Err(self.error(
                left.0,
                format!(
                    "`{}` orders numbers and strings only, not {}s",
                    op.symbol(),
                    left.1.name()
                ),
                Some("compare booleans with = or !=".to_owned()),
            ));
        }
        Ok(())
    }

    fn call(&mut self, expr: &Expr, name: &str, args: &[Expr]) -> Result<(Node, Type)> {
        let Some(builtin) = FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name)) else {
            let known: Vec<&str> = FUNCTIONS.iter().map(|f| f.name).collect();
            return Err(self.error(
                expr,
                format!("unknown function `{name}`"),
                Some(format!("route conditions support: {}", known.join(", "))),
            ));
        };
        let canonical = builtin.name;
        if !builtin.arity.contains(&args.len()) {
            let expected = match (*builtin.arity.start(), *builtin.arity.end()) {
                (min, max) if min == max => format!("{min}"),
                (min, usize::MAX) => format!("at least {min}"),
                (min, max) => format!("{min} to {max}"),
            };
            return Err(self.error(
                expr,
                format!(
                    "{canonical}() takes {expected} argument(s), got {}",
                    args.len()
                ),
                None,
            ));
        }
        let mut nodes = Vec::with_capacity(args.len());
        for (i, arg) in args.iter().enumerate() {
            let (node, ty) = self.check(arg)?;
            let wanted = match (builtin.params, i) {
                (Params::Numbers, _) | (Params::StringThenNumbers, 1..) => Some(Type::Number),
                (Params::Strings | Params::StringThenNumbers, _) => Some(Type::String),
                (Params::StringOrNumber, _) if ty == Type::Number => None,
                (Params::StringOrNumber, _) => Some(Type::String),
                (Params::Any, _) => None,
            };
            if let Some(wanted) = wanted {
                self.expect(arg, ty, wanted, &format!("{canonical}()"))?;
            }
            nodes.push(node);
        }
        Ok((Node::Call(builtin.function, nodes), builtin.result))
    }

    fn name(&mut self, expr: &Expr, form: NameForm, name: &str) -> Result<(Node, Type)> {
        if form == NameForm::App {
            let slot = self.inputs.intern(Slot::App(name.to_lowercase()));
            return Ok((Node::Input(slot), Type::String));
        }
        let system = if let Some(path) = strip_root(name, "body") {
            match self.path(expr, path)? {
                Some(steps) => Some((Slot::Body(steps), Type::Dynamic)),
                None => return Ok((Node::Const(Val::Undefined), Type::Dynamic)),
            }
        } else if let Some(path) = strip_root(name, "twin") {
            match self.path(expr, path)? {
                Some(steps) => Some((Slot::Twin(steps), Type::Dynamic)),
                None => return Ok((Node::Const(Val::Undefined), Type::Dynamic)),
            }
        } else {
            SYSTEM_PROPERTIES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, p)| (Slot::System(*p), Type::String))
        };
        match (form, system) {
            (NameForm::Braced, Some((slot, ty))) => Ok((Node::Input(self.inputs.intern(slot)), ty)),
            (NameForm::Braced, None) => {
                let known: Vec<String> = SYSTEM_PROPERTIES
                    .iter()
                    .map(|(n, _)| format!("${n}"))
                    .collect();
                Err(self.error(
                    expr,
                    format!("unknown system property `${name}`"),
                    Some(format!(
                        "system properties are {}, $body.<path> and $twin.<path>",
                        known.join(", ")
                    )),
                ))
            }
            (_, Some((slot, ty))) => {
                let app = self
                    .inputs
                    .intern(Slot::App(format!("${}", name.to_lowercase())));
                let then = self.inputs.intern(slot);
                Ok((
                    Node::Input(self.inputs.intern(Slot::AppOr { app, then })),
                    ty,
                ))
            }
            (_, None) => {
                let slot = self
                    .inputs
                    .intern(Slot::App(format!("${}", name.to_lowercase())));
                Ok((Node::Input(slot), Type::String))
            }
        }
    }

    /// Parses the path after `$body`/`$twin`; `None` when it addresses the whole document or starts
    /// with an index (unsupported: `undefined`).
    fn path(&self, expr: &Expr, path: &str) -> Result<Option<Vec<PathStep>>> {
        if path.is_empty() || path.starts_with('[') {
            return Ok(None);
        }
        let invalid = |why: &str| {
            self.error(
                expr,
                format!("invalid path `{}`: {why}", self.text(expr)),
                Some(
                    "write paths as $body.a.b[0].c (keys containing `.` cannot be addressed)"
                        .to_owned(),
                ),
            )
        };
        let mut steps = Vec::new();
        let mut rest = path;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[', ']']).unwrap_or(after.len());
                if end == 0 {
                    return Err(invalid("empty key"));
                }
                steps.push(PathStep::Key(after[..end].to_owned()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| invalid("missing `]`"))?;
                let index = after[..end]
                    .parse()
                    .map_err(|_| invalid("array indexes are non-negative integers"))?;
                steps.push(PathStep::Index(index));
                rest = &after[end + 1..];
            } else {
                return Err(invalid("expected `.` or `[`"));
            }
        }
        Ok(Some(steps))
    }
}

/// `Some(rest)` when `name` is `root` (case-insensitive) followed by nothing, `.` or `[`.
fn strip_root<'n>(name: &'n str, root: &str) -> Option<&'n str> {
    let head = name.get(..root.len())?;
    let rest = &name[root.len()..];
    (head.eq_ignore_ascii_case(root) && (rest.is_empty() || rest.starts_with(['.', '['])))
        .then_some(rest)
}

#[cfg(test)]
mod tests {
    use crate::parser::parse;

    use super::*;

    fn suggestion(source: &str) -> Option<String> {
        let expr = parse(source).expect("parses").expect("not empty");
        let error = check(source, &expr, &mut UniqueInputs::default()).expect_err("ill-typed");
        error.diagnostic().and_then(|d| d.suggestion.clone())
    }

    #[test]
    fn type_errors_suggest_the_fix() {
        let cases = [
            ("severity <= 2", Some("use as_number(severity)")),
            ("as_number(x) + y = 1", Some("use as_number(y)")),
            (
                "'a' + 'b' = 'ab'",
                Some("use `||` or concat() to join strings"),
            ),
            (
                "NOT Status = 'x'",
                Some("NOT binds tighter than comparisons: write NOT (a = b)"),
            ),
            (
                "Status = null",
                Some("use is_null(Status) or NOT is_defined(Status)"),
            ),
            ("true < false", Some("compare booleans with = or !=")),
            (
                "concat('a', null) = 'a'",
                Some("null is not a string; test it with is_null() or is_defined()"),
            ),
            ("length(1) = 1", None),
        ];
        for (source, expected) in cases {
            assert_eq!(suggestion(source).as_deref(), expected, "{source}");
        }
        assert!(suggestion("round(1) = 1").is_some_and(|s| s.contains("as_number")));
    }

    #[test]
    fn inputs_are_interned_once_across_conditions() {
        let mut inputs = UniqueInputs::default();
        for source in [
            "$body.a = 1 AND p = 'x'",
            "$body.a > 2 OR P = 'y'",
            "$body.b = 1",
        ] {
            let expr = parse(source).expect("parses").expect("not empty");
            check(source, &expr, &mut inputs).expect("well typed");
        }
        let bodies = inputs
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Body(_)))
            .count();
        assert_eq!(bodies, 2, "{:?}", inputs.slots);
        let p = inputs
            .slots
            .iter()
            .filter(|s| **s == Slot::App("p".to_owned()));
        assert_eq!(
            p.count(),
            1,
            "application property names are case-insensitive"
        );
    }
}
