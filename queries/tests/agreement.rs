//! Property test: random well-typed conditions over random messages, evaluated by the batch evaluator,
//! must agree with a small per-message reference interpreter written here from reference §1.7.
//!
//! The generator builds a typed expression tree, renders it fully parenthesised (precedence is the
//! golden suite's job) and the interpreter walks the same tree, so parser, type checker, extraction
//! and kernels are all checked against an independent statement of the semantics.

use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, SystemProperties};
use hubroute_queries::{RouteSet, Truth};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Reference values: `undefined` and `null` are distinct.
#[derive(Debug, Clone, PartialEq)]
enum R {
    Undefined,
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Object,
}

#[derive(Debug, Clone)]
enum E {
    Bool(bool),
    Undefined,
    Num(f64),
    Str(&'static str),
    App(&'static str),
    Body(&'static str),
    AsNumber(Box<E>),
    Lower(Box<E>),
    Concat(Box<E>, Box<E>),
    IsDefined(Box<E>),
    IsNull(Box<E>),
    Arith(&'static str, Box<E>, Box<E>),
    Cmp(&'static str, Box<E>, Box<E>),
    Logic(&'static str, Box<E>, Box<E>),
    Not(Box<E>),
    Coalesce(Box<E>, Box<E>),
}

fn render(e: &E) -> String {
    match e {
        E::Bool(b) => b.to_string(),
        E::Undefined => "undefined".to_owned(),
        E::Num(n) => format!("{n}"),
        E::Str(s) => format!("'{s}'"),
        E::App(name) => (*name).to_owned(),
        E::Body(key) => format!("$body.{key}"),
        E::AsNumber(x) => format!("as_number({})", render(x)),
        E::Lower(x) => format!("LOWER({})", render(x)),
        E::Concat(a, b) => format!("concat({}, {})", render(a), render(b)),
        E::IsDefined(x) => format!("is_defined({})", render(x)),
        E::IsNull(x) => format!("IS_NULL({})", render(x)),
        E::Arith(op, a, b) | E::Cmp(op, a, b) | E::Logic(op, a, b) => {
            format!("({} {op} {})", render(a), render(b))
        }
        E::Not(x) => format!("NOT ({})", render(x)),
        E::Coalesce(a, b) => format!("({} ?? {})", render(a), render(b)),
    }
}

fn eval(e: &E, m: &Msg) -> R {
    let truth = |r: R| match r {
        R::Bool(b) => Some(b),
        _ => None,
    };
    match e {
        E::Bool(b) => R::Bool(*b),
        E::Undefined => R::Undefined,
        E::Num(n) => R::Num(*n),
        E::Str(s) => R::Str((*s).to_owned()),
        E::App(name) => m
            .app
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or(R::Undefined, |(_, v)| R::Str(v.clone())),
        E::Body(path) => {
            if !m.json_body {
                return R::Undefined;
            }
            // Paths are `k1`, `k1.x` or `k1[0]`.
            let (key, rest) = path.split_at(path.find(['.', '[']).unwrap_or(path.len()));
            let mut value = m.body.get(key);
            if let Some(sub) = rest.strip_prefix('.') {
                value = value.and_then(|v| v.as_object()).and_then(|o| o.get(sub));
            } else if let Some(index) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                let index: usize = index.parse().expect("generated index");
                value = value.and_then(|v| v.as_array()).and_then(|a| a.get(index));
            }
            match value {
                None => R::Undefined,
                Some(Value::Null) => R::Null,
                Some(Value::Bool(b)) => R::Bool(*b),
                Some(Value::Number(n)) => R::Num(n.as_f64().unwrap_or(f64::NAN)),
                Some(Value::String(s)) => R::Str(s.clone()),
                Some(_) => R::Object,
            }
        }
        E::AsNumber(x) => match eval(x, m) {
            R::Num(n) => R::Num(n),
            R::Str(s) => s.trim().parse::<f64>().map_or(R::Undefined, R::Num),
            _ => R::Undefined,
        },
        E::Lower(x) => match eval(x, m) {
            R::Str(s) => R::Str(s.to_lowercase()),
            _ => R::Undefined,
        },
        E::Concat(a, b) => match (eval(a, m), eval(b, m)) {
            (R::Str(a), R::Str(b)) => R::Str(a + &b),
            _ => R::Undefined,
        },
        E::IsDefined(x) => R::Bool(eval(x, m) != R::Undefined),
        E::IsNull(x) => R::Bool(eval(x, m) == R::Null),
        E::Arith(op, a, b) => match (eval(a, m), eval(b, m)) {
            (R::Num(a), R::Num(b)) => {
                let n = match *op {
                    "+" => a + b,
                    "-" => a - b,
                    _ => a * b,
                };
                if n.is_nan() { R::Undefined } else { R::Num(n) }
            }
            _ => R::Undefined,
        },
        E::Cmp(op, a, b) => {
            let (a, b) = (eval(a, m), eval(b, m));
            let eq = matches!(*op, "=" | "!=");
            let ord = match (&a, &b) {
                (R::Undefined, _) | (_, R::Undefined) | (R::Object, _) | (_, R::Object) => {
                    return R::Undefined;
                }
                (R::Num(x), R::Num(y)) => x.partial_cmp(y),
                (R::Str(x), R::Str(y)) => Some(x.cmp(y)),
                (R::Bool(x), R::Bool(y)) if eq => Some(x.cmp(y)),
                (R::Null, R::Null) if eq => Some(std::cmp::Ordering::Equal),
                (x, y) if eq && std::mem::discriminant(x) != std::mem::discriminant(y) => {
                    return R::Bool(*op == "!=");
                }
                _ => None,
            };
            let Some(ord) = ord else { return R::Undefined };
            R::Bool(match *op {
                "=" => ord.is_eq(),
                "!=" => ord.is_ne(),
                "<" => ord.is_lt(),
                "<=" => ord.is_le(),
                ">" => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        E::Logic(op, a, b) => {
            let (a, b) = (truth(eval(a, m)), truth(eval(b, m)));
            let dominant = *op == "OR";
            if a == Some(dominant) || b == Some(dominant) {
                R::Bool(dominant)
            } else if a.is_some() && b.is_some() {
                R::Bool(!dominant)
            } else {
                R::Undefined
            }
        }
        E::Not(x) => truth(eval(x, m)).map_or(R::Undefined, |b| R::Bool(!b)),
        E::Coalesce(a, b) => match eval(a, m) {
            R::Undefined => eval(b, m),
            other => other,
        },
    }
}

#[derive(Debug, Clone)]
struct Msg {
    app: Vec<(String, String)>,
    json_body: bool,
    body: Value,
}

impl Msg {
    fn message(&self) -> Message {
        let mut message = Message::telemetry(self.body.to_string().into_bytes());
        message.system = SystemProperties {
            content_type: Some(
                if self.json_body {
                    "application/json"
                } else {
                    "text/plain"
                }
                .to_owned(),
            ),
            content_encoding: Some("utf-8".to_owned()),
            ..SystemProperties::default()
        };
        message.application_properties = self
            .app
            .iter()
            .map(|(k, v)| (k.clone(), AppPropertyValue::String(v.clone())))
            .collect();
        message
    }
}

fn json_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        any::<bool>().prop_map(|b| Some(json!(b))),
        (-3i32..4).prop_map(|n| Some(json!(n))),
        prop::sample::select(vec!["1", "a", "A", ""]).prop_map(|s| Some(json!(s))),
        Just(Some(json!({"x": 1}))),
        Just(Some(json!({"x": "a\\\"b", "y": null}))),
        Just(Some(json!([1, "a", null, [2]]))),
    ]
}

fn message() -> impl Strategy<Value = Msg> {
    let app_value = prop::option::of(prop::sample::select(vec!["1", "2", " 3", "x", "X", "-1.5"]));
    (
        app_value.clone(),
        app_value,
        any::<bool>(),
        json_value(),
        json_value(),
    )
        .prop_map(|(a, b, json_body, k1, k2)| {
            let mut app = Vec::new();
            if let Some(a) = a {
                app.push(("a".to_owned(), a.to_owned()));
            }
            if let Some(b) = b {
                app.push(("B".to_owned(), b.to_owned()));
            }
            let mut body = serde_json::Map::new();
            for (key, value) in [("k1", k1), ("k2", k2)] {
                if let Some(value) = value {
                    body.insert(key.to_owned(), value);
                }
            }
            Msg {
                app,
                json_body,
                body: Value::Object(body),
            }
        })
}

fn dynamic() -> impl Strategy<Value = E> {
    prop::sample::select(vec![
        "k1", "k2", "k1.x", "k2.y", "k1[0]", "k1[1]", "k2[2]", "k2[3]",
    ])
    .prop_map(E::Body)
}

fn string_expr() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["1", "x", "X", ""]).prop_map(E::Str),
        prop::sample::select(vec!["a", "b"]).prop_map(E::App),
        dynamic(),
    ];
    leaf.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|x| E::Lower(Box::new(x))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| E::Concat(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| E::Coalesce(Box::new(a), Box::new(b))),
        ]
    })
}

fn number_expr() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![
        (-2i32..3).prop_map(|n| E::Num(f64::from(n))),
        prop::sample::select(vec!["a", "b"]).prop_map(|n| E::AsNumber(Box::new(E::App(n)))),
        dynamic(),
    ];
    leaf.prop_recursive(2, 6, 2, |inner| {
        (
            prop::sample::select(vec!["+", "-", "*"]),
            inner.clone(),
            inner,
        )
            .prop_map(|(op, a, b)| E::Arith(op, Box::new(a), Box::new(b)))
    })
}

/// A literal of every JSON type a dynamic value can be compared with.
fn literal() -> impl Strategy<Value = E> {
    prop_oneof![
        (-3i32..4).prop_map(|n| E::Num(f64::from(n))),
        prop::sample::select(vec!["1", "a", "A", ""]).prop_map(E::Str),
        any::<bool>().prop_map(E::Bool),
    ]
}

fn bool_expr() -> impl Strategy<Value = E> {
    let ops = prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">="]);
    let leaf = prop_oneof![
        any::<bool>().prop_map(E::Bool),
        Just(E::Undefined),
        dynamic(),
        (ops.clone(), number_expr(), number_expr()).prop_map(|(op, a, b)| E::Cmp(
            op,
            Box::new(a),
            Box::new(b)
        )),
        (ops.clone(), string_expr(), string_expr()).prop_map(|(op, a, b)| E::Cmp(
            op,
            Box::new(a),
            Box::new(b)
        )),
        (ops.clone(), dynamic(), dynamic()).prop_map(|(op, a, b)| E::Cmp(
            op,
            Box::new(a),
            Box::new(b)
        )),
        (ops, dynamic(), literal(), any::<bool>()).prop_map(|(op, d, l, flip)| {
            let (a, b) = if flip { (l, d) } else { (d, l) };
            E::Cmp(op, Box::new(a), Box::new(b))
        }),
        string_expr().prop_map(|x| E::IsDefined(Box::new(x))),
        dynamic().prop_map(|x| E::IsNull(Box::new(x))),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (
                prop::sample::select(vec!["AND", "OR"]),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, a, b)| E::Logic(op, Box::new(a), Box::new(b))),
            inner.clone().prop_map(|x| E::Not(Box::new(x))),
            (inner.clone(), inner).prop_map(|(a, b)| E::Coalesce(Box::new(a), Box::new(b))),
        ]
    })
}

fn expected_truth(value: &R) -> Truth {
    match value {
        R::Bool(true) => Truth::True,
        R::Undefined | R::Null => Truth::Undefined,
        _ => Truth::False,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn batch_evaluator_agrees_with_reference_interpreter(
        conditions in prop::collection::vec(bool_expr(), 1..6),
        messages in prop::collection::vec(message(), 1..12),
    ) {
        let texts: Vec<String> = conditions.iter().map(render).collect();
        let set = RouteSet::compile(texts.iter().map(String::as_str)).expect("generated conditions are well typed");
        let owned: Vec<Message> = messages.iter().map(Msg::message).collect();
        let batch = MessageBatchBuilder::batch_of(&owned).expect("batch builds");
        let truths = set.truths(&batch).expect("evaluates");
        for (route, condition) in conditions.iter().enumerate() {
            for (row, message) in messages.iter().enumerate() {
                let expected = expected_truth(&eval(condition, message));
                prop_assert_eq!(truths[route][row], expected, "`{}` on {:?}", texts[route], message);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any text either compiles and evaluates, or fails with a positioned diagnostic; never panics.
    #[test]
    fn any_text_compiles_or_fails_with_a_position(
        text in "[a-zA-Z$._\\[\\]0-9'\"(){}<>=!|?+*/%, \\-\\\\é]{0,40}",
    ) {
        match hubroute_queries::compile(&text) {
            Ok(compiled) => {
                let message = Msg { app: vec![("a".to_owned(), "1".to_owned())], json_body: true, body: json!({"k1": [1]}) };
                compiled.evaluate_message(&message.message()).expect("evaluates");
            }
            Err(error) => {
                let diagnostic = error.diagnostic().expect("compile errors carry a position");
                prop_assert!(diagnostic.line >= 1 && diagnostic.column >= 1);
                let prefix = format!("line {}, column {}:", diagnostic.line, diagnostic.column);
                prop_assert!(error.to_string().starts_with(&prefix), "{}", error);
            }
        }
    }
}
