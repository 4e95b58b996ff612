//! Finds the values at a set of paths in a JSON document in one forward pass, with no DOM.
//!
//! Route conditions read a handful of body paths (`$body.temperature`, `$body.status.code`) out
//! of every message, so the scan only descends into the keys and indexes some path goes through and
//! skips everything else; it stops as soon as every path has been found, so trailing content after
//! the last needed value is not looked at (as a lazy JSON reader does). Keys are compared as bytes
//! against a short list per level rather than hashed. Strings without escapes are borrowed from
//! the document; escaped strings and keys are decoded by `sonic-rs`.
//!
//! A path that does not lead to a value (missing key or index, a step into a primitive) is
//! `undefined`; JSON `null` is `null`. If a key occurs twice in an object the first occurrence is
//! used. A document that is not well-formed up to the point where the scan stops yields `None`;
//! like any lazy reader, the scan checks what it reads (the values it returns are valid JSON and
//! UTF-8) and only the structure of what it skips.

use std::borrow::Cow;

use memchr::{memchr2, memchr3};

use crate::check::PathStep;
use crate::value::Val;

/// The paths to find, as a tree of the keys and indexes they go through.
#[derive(Debug, Default)]
pub(crate) struct PathTree {
    root: Level,
    /// Number of paths asked for (the length of a scan's result).
    paths: usize,
    /// Number of those the tree can find (all but empty paths).
    findable: usize,
}

/// The keys and indexes wanted inside one object or array.
#[derive(Debug, Default)]
struct Level {
    keys: Vec<(Box<[u8]>, Target)>,
    indexes: Vec<(usize, Target)>,
}

/// What a key or index leads to: the end of a path, deeper steps of other paths, or both.
#[derive(Debug, Default)]
struct Target {
    /// The paths that end here (more than one when a path is listed twice).
    ends: Vec<usize>,
    inner: Level,
}

impl PathTree {
    /// A tree of `paths`; a scan reports values index-aligned with it.
    pub(crate) fn new(paths: &[&[PathStep]]) -> Self {
        let mut root = Level::default();
        let mut findable = 0;
        for (index, steps) in paths.iter().enumerate() {
            if !steps.is_empty() {
                root.walk(steps).ends.push(index);
                findable += 1;
            }
        }
        Self {
            root,
            paths: paths.len(),
            findable,
        }
    }

    /// Fills `found` with the value at every path of the tree in `document` (`undefined` where a
    /// path leads nowhere); `None` if the document is not well-formed JSON.
    pub(crate) fn scan<'d>(&self, document: &'d [u8], found: &mut Vec<Val<'d>>) -> Option<()> {
        found.clear();
        found.resize(self.paths, Val::Undefined);
        let mut scanner = Scanner {
            bytes: document,
            pos: 0,
            remaining: self.findable,
        };
        scanner.value(Some(&self.root), found).ok().map(|_| ())
    }
}

impl Level {
    fn child(&mut self, step: &PathStep) -> &mut Target {
        /// The target under `key`, added if new.
        fn entry<K: PartialEq>(targets: &mut Vec<(K, Target)>, key: K) -> &mut Target {
            let position = match targets.iter().position(|(k, _)| *k == key) {
                Some(position) => position,
                None => {
                    targets.push((key, Target::default()));
                    targets.len() - 1
                }
            };
            &mut targets[position].1
        }
        match step {
            PathStep::Key(key) => entry(&mut self.keys, key.as_bytes().into()),
            PathStep::Index(index) => entry(&mut self.indexes, *index),
        }
    }

    /// The target of a non-empty path, created as needed.
    fn walk(&mut self, steps: &[PathStep]) -> &mut Target {
        let target = self.child(&steps[0]);
        if steps.len() == 1 {
            target
        } else {
            target.inner.walk(&steps[1..])
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.indexes.is_empty()
    }

    /// The target under the document's `key`, if some path goes through it. Lengths and first
    /// bytes are compared before whole keys: telemetry keys are short and many share a length
    /// (`humidity`, `pressure`, `location`), and calling `memcmp` for each such pair cost more
    /// than the rest of the lookup.
    fn target_of(&self, key: &[u8]) -> Option<&Target> {
        let first = key.first();
        self.keys
            .iter()
            .find(|(wanted, _)| {
                wanted.len() == key.len() && wanted.first() == first && **wanted == *key
            })
            .map(|(_, target)| target)
    }
}

/// The document is not well-formed JSON.
#[derive(Debug)]
struct Malformed;

/// Whether the scan should go on or every path has been found.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Done,
}

struct Scanner<'d> {
    bytes: &'d [u8],
    pos: usize,
    /// Paths not found yet.
    remaining: usize,
}

impl<'d> Scanner<'d> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Result<u8, Malformed> {
        self.skip_whitespace();
        self.bytes.get(self.pos).copied().ok_or(Malformed)
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.peek()? == byte {
            self.pos += 1;
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// Reads the value at the cursor; records it when `level` is a target's and descends into it
    /// when some path goes deeper.
    fn value(&mut self, level: Option<&Level>, found: &mut [Val<'d>]) -> Result<Flow, Malformed> {
        match (self.peek()?, level) {
            (b'{', Some(level)) if !level.keys.is_empty() => self.object(level, found),
            (b'[', Some(level)) if !level.indexes.is_empty() => self.array(level, found),
            _ => {
                self.skip_value()?;
                Ok(Flow::Continue)
            }
        }
    }

    /// Reads the value for `target`: records it if a path ends here, descends if paths go on.
    fn target(&mut self, target: &Target, found: &mut [Val<'d>]) -> Result<Flow, Malformed> {
        // A path is recorded at its first occurrence only (duplicate keys).
        if target
            .ends
            .first()
            .is_some_and(|&p| found[p] == Val::Undefined)
        {
            let start = self.pos;
            let value = self.read_value()?;
            for &path in &target.ends {
                found[path] = value.clone();
            }
            self.remaining -= target.ends.len();
            if self.remaining == 0 {
                return Ok(Flow::Done);
            }
            if target.inner.is_empty() {
                return Ok(Flow::Continue);
            }
            self.pos = start;
        }
        if target.inner.is_empty() {
            self.skip_value()?;
            return Ok(Flow::Continue);
        }
        self.value(Some(&target.inner), found)
    }

    fn object(&mut self, level: &Level, found: &mut [Val<'d>]) -> Result<Flow, Malformed> {
        self.members(b'{', b'}', found, |scanner| {
            scanner.skip_whitespace();
            let key = scanner.key()?;
            scanner.expect(b':')?;
            Ok(level.target_of(&key))
        })
    }

    fn array<'l>(&mut self, level: &'l Level, found: &mut [Val<'d>]) -> Result<Flow, Malformed> {
        let mut index = 0;
        self.members(b'[', b']', found, |_| {
            let wanted = level.indexes.iter().find(|(i, _)| *i == index);
            index += 1;
            Ok(wanted.map(|(_, t)| t))
        })
    }

    /// Walks the members of the container at the cursor (`open` … `close`); `member` reads what
    /// precedes a member's value (an object's key) and names the target the value is wanted for.
    fn members<'l>(
        &mut self,
        open: u8,
        close: u8,
        found: &mut [Val<'d>],
        mut member: impl FnMut(&mut Self) -> Result<Option<&'l Target>, Malformed>,
    ) -> Result<Flow, Malformed> {
        self.expect(open)?;
        if self.peek()? == close {
            self.pos += 1;
            return Ok(Flow::Continue);
        }
        loop {
            let flow = match member(self)? {
                Some(target) => self.target(target, found)?,
                None => {
                    self.skip_value()?;
                    Flow::Continue
                }
            };
            if flow == Flow::Done {
                return Ok(Flow::Done);
            }
            match self.peek()? {
                b',' => self.pos += 1,
                byte if byte == close => {
                    self.pos += 1;
                    return Ok(Flow::Continue);
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// The key at the cursor as bytes to compare with wanted keys: raw unless it has escapes.
    fn key(&mut self) -> Result<Cow<'d, [u8]>, Malformed> {
        let start = self.pos;
        if self.skip_string()? {
            let decoded = sonic_rs::from_slice::<String>(&self.bytes[start..self.pos]);
            decoded
                .map(|k| Cow::Owned(k.into_bytes()))
                .map_err(|_| Malformed)
        } else {
            Ok(Cow::Borrowed(&self.bytes[start + 1..self.pos - 1]))
        }
    }

    /// The string at the cursor, unescaped.
    fn string(&mut self) -> Result<Cow<'d, str>, Malformed> {
        let start = self.pos;
        let escaped = self.skip_string()?;
        let quoted = &self.bytes[start..self.pos];
        if escaped {
            sonic_rs::from_slice::<String>(quoted)
                .map(Cow::Owned)
                .map_err(|_| Malformed)
        } else {
            std::str::from_utf8(&quoted[1..quoted.len() - 1])
                .map(Cow::Borrowed)
                .map_err(|_| Malformed)
        }
    }

    /// Moves past the string at the cursor; reports whether it contains escapes.
    fn skip_string(&mut self) -> Result<bool, Malformed> {
        if self.bytes.get(self.pos) != Some(&b'"') {
            return Err(Malformed);
        }
        self.pos += 1;
        let mut escaped = false;
        loop {
            let offset = memchr2(b'"', b'\\', &self.bytes[self.pos..]).ok_or(Malformed)?;
            self.pos += offset;
            if self.bytes[self.pos] == b'"' {
                self.pos += 1;
                return Ok(escaped);
            }
            escaped = true;
            self.pos += 2;
            if self.pos > self.bytes.len() {
                return Err(Malformed);
            }
        }
    }

    /// The literal token (number, `true`, `false`, `null`) at the cursor.
    fn token(&mut self) -> &'d [u8] {
        let start = self.pos;
        while let Some(b) = self.bytes.get(self.pos) {
            if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.pos += 1;
        }
        &self.bytes[start..self.pos]
    }

    /// Reads the value at the cursor as a [`Val`] (objects and arrays are skipped).
    fn read_value(&mut self) -> Result<Val<'d>, Malformed> {
        Ok(match self.peek()? {
            b'"' => Val::Str(self.string()?),
            b'{' => {
                self.skip_value()?;
                Val::Object
            }
            b'[' => {
                self.skip_value()?;
                Val::Array
            }
            // Inside a container a token ends at a delimiter; at the end of the input it may
            // have been cut short.
            _ => match self.token() {
                _ if self.pos == self.bytes.len() => return Err(Malformed),
                b"true" => Val::Bool(true),
                b"false" => Val::Bool(false),
                b"null" => Val::Null,
                number if is_json_number(number) => short_decimal(number)
                    .or_else(|| std::str::from_utf8(number).ok()?.parse().ok())
                    .map_or(Val::Undefined, Val::number),
                _ => return Err(Malformed),
            },
        })
    }

    /// Moves past the value at the cursor, checking only the nesting of its own kind of bracket.
    fn skip_value(&mut self) -> Result<(), Malformed> {
        match self.peek()? {
            b'"' => self.skip_string().map(|_| ()),
            open @ (b'{' | b'[') => {
                // Brackets of the other kind balance inside a well-formed container, so counting
                // one kind (and skipping strings) finds its end with one SIMD search per step.
                let close = if open == b'{' { b'}' } else { b']' };
                let mut depth = 0_usize;
                loop {
                    let offset =
                        memchr3(b'"', open, close, &self.bytes[self.pos..]).ok_or(Malformed)?;
                    self.pos += offset;
                    match self.bytes[self.pos] {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        byte if byte == open => depth += 1,
                        _ => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Ok(());
                            }
                        }
                    }
                    self.pos += 1;
                }
            }
            _ => match self.token() {
                b"true" | b"false" | b"null" => Ok(()),
                number if is_json_number(number) => Ok(()),
                _ => Err(Malformed),
            },
        }
    }
}

/// A JSON number of the form `-?digits(.digits)?` with at most 15 digits, the shape of most
/// telemetry. Its digits as an integer and the power of ten to divide by are both exact in an `f64`,
/// so the one division is correctly rounded (Clinger's fast path): the same value as a full parse.
fn short_decimal(text: &[u8]) -> Option<f64> {
    const POWERS_OF_TEN: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0;
    let mut decimals = None;
    for (index, &byte) in digits.iter().enumerate() {
        match byte {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                count += 1;
            }
            b'.' if decimals.is_none() => decimals = Some(digits.len() - index - 1),
            _ => return None,
        }
    }
    if count == 0 || count > 15 {
        return None;
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "at most 15 digits: below 2^53, exact"
    )]
    let magnitude = mantissa as f64 / POWERS_OF_TEN[decimals.unwrap_or(0)];
    Some(if negative { -magnitude } else { magnitude })
}

/// Whether `text` follows JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(text: &[u8]) -> bool {
    let digits = |text: &[u8]| text.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = text.strip_prefix(b"-").unwrap_or(text);
    match rest.first() {
        Some(b'0') => rest = &rest[1..],
        Some(b'1'..=b'9') => rest = &rest[digits(rest)..],
        _ => return false,
    }
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = digits(fraction);
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    if let Some(exponent) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exponent = exponent
            .strip_prefix(b"+")
            .or_else(|| exponent.strip_prefix(b"-"))
            .unwrap_or(exponent);
        let n = digits(exponent);
        if n == 0 {
            return false;
        }
        rest = &exponent[n..];
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// The reference: the value at `steps` in a fully parsed document.
    fn resolve<'v>(document: &'v Value, steps: &[PathStep]) -> Val<'v> {
        let mut current = document;
        for step in steps {
            let next = match step {
                PathStep::Key(key) => current.as_object().and_then(|o| o.get(key)),
                PathStep::Index(index) => current.as_array().and_then(|a| a.get(*index)),
            };
            match next {
                Some(value) => current = value,
                None => return Val::Undefined,
            }
        }
        match current {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => n.as_f64().map_or(Val::Undefined, Val::number),
            Value::String(s) => Val::Str(s.as_str().into()),
            Value::Array(_) => Val::Array,
            Value::Object(_) => Val::Object,
        }
    }

    fn key(name: &str) -> PathStep {
        PathStep::Key(name.to_owned())
    }

    fn scan_all<'d>(paths: &[Vec<PathStep>], document: &'d [u8]) -> Option<Vec<Val<'d>>> {
        let paths: Vec<&[PathStep]> = paths.iter().map(Vec::as_slice).collect();
        let mut found = Vec::new();
        PathTree::new(&paths).scan(document, &mut found)?;
        Some(found)
    }

    #[test]
    fn finds_nested_keys_indexes_and_prefixes() {
        let document =
            br#" { "a" : {"b": [10, {"c": "x\"y"}]}, "s": "plain", "n": null, "e": -1.5e2 } "#;
        let paths = vec![
            vec![key("a"), key("b"), PathStep::Index(0)],
            vec![key("a"), key("b"), PathStep::Index(1), key("c")],
            vec![key("a"), key("b")],
            vec![key("s")],
            vec![key("n")],
            vec![key("e")],
            vec![key("missing")],
            vec![key("s"), key("deeper")],
        ];
        let found = scan_all(&paths, document).expect("well-formed");
        assert_eq!(
            found,
            vec![
                Val::Number(10.0),
                Val::Str("x\"y".into()),
                Val::Array,
                Val::Str("plain".into()),
                Val::Null,
                Val::Number(-150.0),
                Val::Undefined,
                Val::Undefined,
            ]
        );
        assert!(
            matches!(found[3], Val::Str(Cow::Borrowed(_))),
            "unescaped strings are borrowed"
        );
    }

    #[test]
    fn malformed_documents_are_rejected_up_to_the_last_needed_value() {
        let paths = vec![vec![key("a")], vec![key("z")]];
        for document in [
            &br#"{"a": 1, "b": 01, "z": 2}"#[..],
            br#"{"a": 1, "b": tru, "z": 2}"#,
            br#"{"a": 1 "z": 2}"#,
            br#"{"a": "unterminated}"#,
            br#"{"a": 1, "b": +1, "z": 2}"#,
            br#"{"a": 1, "b": 1., "z": 2}"#,
            br#"{"a": 1, "b": NaN, "z": 2}"#,
            b"",
        ] {
            assert_eq!(
                scan_all(&paths, document),
                None,
                "{}",
                String::from_utf8_lossy(document)
            );
        }
        // Once every path is found the rest is not read, as with a lazy JSON reader.
        assert!(scan_all(&paths, br#"{"a": 1, "z": 2 garbage"#).is_some());
    }

    #[test]
    fn short_decimals_parse_exactly_as_a_full_parse() {
        for text in [
            "0",
            "-0",
            "7",
            "-12",
            "23.5",
            "0.1",
            "-0.3",
            "123456789012345",
            "1.23456789012345",
            "0.00000000000001",
            "99999999999999.9",
        ] {
            let expected: f64 = text.parse().expect("a number");
            let fast = short_decimal(text.as_bytes()).expect("short");
            assert_eq!(fast.to_bits(), expected.to_bits(), "{text}");
        }
        for text in ["1234567890123456", "1e5", "1.5E-3", ""] {
            assert_eq!(short_decimal(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn the_first_of_duplicate_keys_wins() {
        let found = scan_all(&[vec![key("a")]], br#"{"a": 1, "a": 2}"#).expect("well-formed");
        assert_eq!(found, vec![Val::Number(1.0)]);
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1000i64..1000).prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|n| json!(n)),
            (any::<i64>(), 0u32..16).prop_map(|(n, scale)| {
                let text = format!("{}", n % 10i64.pow(15));
                let value: f64 = format!("{}e-{scale}", text).parse().expect("a number");
                json!(value)
            }),
            prop::sample::select(vec!["", "a", "é", "q\"uote", "back\\slash", "{[,]}"])
                .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Object keys of the generated documents and paths: an empty one, one with an escape, and
    /// keys of equal length that differ in their first or only in a later byte.
    const KEYS: [&str; 7] = ["", "a", "b", "c", "ab", "ac", "d\"q"];

    fn path() -> impl Strategy<Value = Vec<PathStep>> {
        let step = prop_oneof![
            prop::sample::select(KEYS.to_vec()).prop_map(key),
            (0usize..3).prop_map(PathStep::Index),
        ];
        prop::collection::vec(step, 1..4)
    }

    proptest! {
        #[test]
        fn short_decimals_agree_with_the_standard_parser(
            negative in any::<bool>(),
            digits in "[0-9]{1,15}",
            point in any::<prop::sample::Index>(),
        ) {
            let point = point.index(digits.len());
            let text = format!(
                "{}{}{}{}",
                if negative { "-" } else { "" },
                &digits[..=point],
                if point + 1 < digits.len() { "." } else { "" },
                &digits[point + 1..],
            );
            let expected: f64 = text.parse().expect("a number");
            let fast = short_decimal(text.as_bytes());
            prop_assert_eq!(fast.map(f64::to_bits), Some(expected.to_bits()), "{}", text);
        }

        #[test]
        fn scan_agrees_with_a_full_parse(
            document in json(),
            paths in prop::collection::vec(path(), 1..5),
            pretty in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&document)
            } else {
                serde_json::to_string(&document)
            }
            .expect("serialises");
            let expected: Vec<Val<'_>> = paths.iter().map(|p| resolve(&document, p)).collect();
            prop_assert_eq!(scan_all(&paths, text.as_bytes()), Some(expected.clone()));
            // A truncated document either fails or, when every value lies before the cut, agrees.
            let truncated = &text.as_bytes()[..cut.index(text.len())];
            if let Some(found) = scan_all(&paths, truncated) {
                prop_assert_eq!(found, expected);
            }
        }
    }
}
