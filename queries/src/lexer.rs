//! Tokeniser reproducing IoT Hub's (ANTLR, Edge engine) lexer, longest match first.
//!
//! The lexer is deliberately faithful rather than friendly: identifiers may contain `.`, `-`, `+`, `*`,
//! `%`, `!`, `|`, `'` and `$`, so `temp-1` and `a+b` are single application property names and
//! `5-3` lexes as `5` `-3`. Every rule is tried at each position and the longest match wins; ties go
//! to the earlier rule (operators, keywords and literals, strings, numbers, `$` names, identifiers).
//! Keywords `AND`/`OR`/`NOT` are case-insensitive, `true`/`false`/`null`/`undefined` lower-case only.
//! An identifier never starts with a digit (nor a quote), which is what makes `5-3` lex as `5` `-3`
//! as the reference describes, rather than as one identifier.

use crate::error::{Diagnostic, Error, Result};

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Concat,
    Coalesce,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
    Not,
    True,
    False,
    Null,
    Undefined,
    Str(String),
    Number(f64),
    /// `$name`, including body and twin paths; the text after `$`.
    SysProp(String),
    /// Application property or function name.
    Ident(String),
    Eof,
}

/// A token and its byte span in the source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// Characters that end an identifier (ANTLR `ID`).
fn is_id_char(c: char) -> bool {
    !matches!(
        c,
        '(' | ')'
            | '<'
            | '>'
            | '@'
            | ','
            | ';'
            | ':'
            | '\\'
            | '"'
            | '/'
            | '['
            | ']'
            | '?'
            | '='
            | '{'
            | '}'
            | ' '
            | '\t'
            | '\r'
            | '\n'
    )
}

/// Characters allowed after `$` (ANTLR `SYS_PROP`: like `ID` but `[` and `]` are allowed).
fn is_sys_prop_char(c: char) -> bool {
    c == '[' || c == ']' || is_id_char(c)
}

fn run_len(text: &str, pred: impl Fn(char) -> bool) -> usize {
    text.char_indices()
        .find(|&(_, c)| !pred(c))
        .map_or(text.len(), |(i, _)| i)
}

const OPERATORS: [(&str, TokenKind); 19] = [
    ("<=", TokenKind::LtEq),
    (">=", TokenKind::GtEq),
    ("<>", TokenKind::NotEq),
    ("!=", TokenKind::NotEq),
    ("||", TokenKind::Concat),
    ("??", TokenKind::Coalesce),
    ("(", TokenKind::LParen),
    (")", TokenKind::RParen),
    ("{", TokenKind::LBrace),
    ("}", TokenKind::RBrace),
    (",", TokenKind::Comma),
    ("+", TokenKind::Plus),
    ("-", TokenKind::Minus),
    ("*", TokenKind::Star),
    ("/", TokenKind::Slash),
    ("%", TokenKind::Percent),
    ("=", TokenKind::Eq),
    ("<", TokenKind::Lt),
    (">", TokenKind::Gt),
];

const WORDS: [(&str, TokenKind, bool); 7] = [
    ("and", TokenKind::And, true),
    ("or", TokenKind::Or, true),
    ("not", TokenKind::Not, true),
    ("true", TokenKind::True, false),
    ("false", TokenKind::False, false),
    ("null", TokenKind::Null, false),
    ("undefined", TokenKind::Undefined, false),
];

/// Length of a number literal (INTEGER, HEX or REAL) at the start of `text`, and its value.
fn number(text: &str) -> Option<(usize, f64)> {
    let bytes = text.as_bytes();
    if bytes.len() > 2 && bytes[0] == b'0' && (bytes[1] | 0x20) == b'x' {
        let digits = run_len(&text[2..], |c| c.is_ascii_hexdigit());
        if digits > 0 {
            let mut value = 0f64;
            for c in text[2..2 + digits].chars() {
                value = value * 16.0 + f64::from(c.to_digit(16).unwrap_or(0));
            }
            return Some((2 + digits, value));
        }
    }
    let sign = usize::from(bytes.first() == Some(&b'-'));
    let int = run_len(&text[sign..], |c| c.is_ascii_digit());
    let mut len = sign + int;
    let mut fraction = 0;
    if text[len..].starts_with('.') {
        fraction = run_len(&text[len + 1..], |c| c.is_ascii_digit());
        if fraction > 0 {
            len += 1 + fraction;
        }
    }
    if int == 0 && fraction == 0 {
        return None;
    }
    if matches!(bytes.get(len), Some(b'e' | b'E')) {
        let mut exp = len + 1;
        if matches!(bytes.get(exp), Some(b'+' | b'-')) {
            exp += 1;
        }
        let digits = run_len(&text[exp..], |c| c.is_ascii_digit());
        if digits > 0 {
            len = exp + digits;
        }
    }
    text[..len].parse().ok().map(|value| (len, value))
}

/// A string literal at the start of `text` (which starts with a quote): its length and value.
fn string(source: &str, offset: usize) -> Result<(usize, String)> {
    let text = &source[offset..];
    let quote = text.chars().next().unwrap_or('\'');
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((i + 1, value)),
            '\\' => {
                let Some((j, escaped)) = chars.next() else {
                    break;
                };
                match escaped {
                    '\'' | '"' | '\\' => value.push(escaped),
                    'u' => {
                        let hex = text.get(j + 1..j + 5).unwrap_or("");
                        let decoded = (hex.len() == 4
                            && hex.chars().all(|h| h.is_ascii_hexdigit()))
                        .then(|| u32::from_str_radix(hex, 16).ok())
                        .flatten()
                        .and_then(char::from_u32);
                        let Some(decoded) = decoded else {
                            return Err(Error::Syntax(
                                Diagnostic::at(
                                    source,
                                    offset + i,
                                    offset + j + 1,
                                    "invalid \\u escape in string",
                                )
                                .with_suggestion("write exactly four hex digits, e.g. \\u00e9"),
                            ));
                        };
                        value.push(decoded);
                        for _ in 0..4 {
                            chars.next();
                        }
                    }
                    _ => {
                        return Err(Error::Syntax(
                            Diagnostic::at(
                                source,
                                offset + i,
                                offset + j + escaped.len_utf8(),
                                format!("unsupported escape `\\{escaped}` in string"),
                            )
                            .with_suggestion("only \\' \\\" \\\\ and \\uXXXX escapes are allowed"),
                        ));
                    }
                }
            }
            c => value.push(c),
        }
    }
    Err(Error::Syntax(
        Diagnostic::at(source, offset, source.len(), "unterminated string literal")
            .with_suggestion(format!("close the string with {quote}")),
    ))
}

/// Splits `source` into tokens, ending with [`TokenKind::Eof`].
pub(crate) fn tokenize(source: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < source.len() {
        let rest = &source[pos..];
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_whitespace() {
            pos += c.len_utf8();
            continue;
        }
        if let Some(comment) = rest.strip_prefix("/*") {
            let Some(end) = comment.find("*/") else {
                return Err(Error::Syntax(
                    Diagnostic::at(source, pos, pos + 2, "unterminated comment")
                        .with_suggestion("close the comment with */"),
                ));
            };
            pos += end + 4;
            continue;
        }
        let (len, kind) = longest_token(source, pos)?;
        tokens.push(Token {
            kind,
            start: pos,
            end: pos + len,
        });
        pos += len;
    }
    tokens.push(Token {
        kind: TokenKind::Eof,
        start: source.len(),
        end: source.len(),
    });
    Ok(tokens)
}

/// The longest token at `pos`; ties resolved by rule order.
fn longest_token(source: &str, pos: usize) -> Result<(usize, TokenKind)> {
    let rest = &source[pos..];
    let mut best: Option<(usize, TokenKind)> = None;
    let mut offer = |len: usize, kind: TokenKind| {
        if len > 0 && best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, kind));
        }
    };
    if let Some((op, kind)) = OPERATORS.iter().find(|(op, _)| rest.starts_with(op)) {
        offer(op.len(), kind.clone());
    }
    for (word, kind, case_insensitive) in &WORDS {
        let matches = rest.get(..word.len()).is_some_and(|prefix| {
            if *case_insensitive {
                prefix.eq_ignore_ascii_case(word)
            } else {
                prefix == *word
            }
        });
        if matches {
            offer(word.len(), kind.clone());
        }
    }
    if rest.starts_with('\'') || rest.starts_with('"') {
        let (len, value) = string(source, pos)?;
        offer(len, TokenKind::Str(value));
    }
    if let Some((len, value)) = number(rest) {
        offer(len, TokenKind::Number(value));
    }
    if let Some(name) = rest.strip_prefix('$') {
        let len = run_len(name, is_sys_prop_char);
        if len > 0 {
            offer(1 + len, TokenKind::SysProp(name[..len].to_owned()));
        }
    }
    let len = run_len(rest, is_id_char);
    if len > 0 && !rest.starts_with(|c: char| c == '\'' || c.is_ascii_digit()) {
        offer(len, TokenKind::Ident(rest[..len].to_owned()));
    }
    best.ok_or_else(|| {
        let c = rest.chars().next().unwrap_or(' ');
        let mut diagnostic = Diagnostic::at(
            source,
            pos,
            pos + c.len_utf8(),
            format!("unexpected character `{c}`"),
        );
        if c == '[' {
            diagnostic = diagnostic.with_suggestion(
                "IoT Hub has no [name] escaping; use {$name} for system properties",
            );
        }
        Error::Syntax(diagnostic)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<TokenKind> {
        tokenize(source)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn tokenisation_follows_longest_match() {
        use TokenKind::*;
        let id = |s: &str| Ident(s.to_owned());
        let cases: Vec<(&str, Vec<TokenKind>)> = vec![
            ("temp-1", vec![id("temp-1"), Eof]),
            ("a+b = 1", vec![id("a+b"), Eq, Number(1.0), Eof]),
            ("5-3", vec![Number(5.0), Number(-3.0), Eof]),
            ("x!=1", vec![id("x!"), Eq, Number(1.0), Eof]),
            ("x != 1", vec![id("x"), NotEq, Number(1.0), Eof]),
            ("and AND android", vec![And, And, id("android"), Eof]),
            ("TRUE true", vec![id("TRUE"), True, Eof]),
            (
                "0x1F 1.5e2 .5",
                vec![Number(31.0), Number(150.0), Number(0.5), Eof],
            ),
            ("1.2.3", vec![Number(1.2), Number(0.3), Eof]),
            ("5abc", vec![Number(5.0), id("abc"), Eof]),
            ("$body.a[0].b", vec![SysProp("body.a[0].b".to_owned()), Eof]),
            ("{$x}", vec![LBrace, SysProp("x".to_owned()), RBrace, Eof]),
            (
                "'a\\'b' \"c\"",
                vec![Str("a'b".to_owned()), Str("c".to_owned()), Eof],
            ),
            ("'\\u00e9'", vec![Str("é".to_owned()), Eof]),
            ("a /* c */ ?? b", vec![id("a"), Coalesce, id("b"), Eof]),
            ("a || b", vec![id("a"), Concat, id("b"), Eof]),
        ];
        for (source, expected) in cases {
            assert_eq!(kinds(source), expected, "{source}");
        }
    }

    #[test]
    fn lexical_errors_are_positioned() {
        let cases = [
            ("'abc", "line 1, column 1: unterminated string literal"),
            ("a = [b]", "line 1, column 5: unexpected character `[`"),
            ("a\n = @", "line 2, column 4: unexpected character `@`"),
            (
                "'\\n'",
                "line 1, column 2: unsupported escape `\\n` in string",
            ),
            ("/* x", "line 1, column 1: unterminated comment"),
        ];
        for (source, expected) in cases {
            let error = tokenize(source).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{source}: {error}");
        }
    }
}
