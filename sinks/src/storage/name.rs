//! IoT Hub's `fileNameFormat`: blob names of storage-endpoint files.
//!
//! IoT Hub's rule is "all parameters are mandatory but can be reordered": each of `{iothub}`
//! `{partition}` `{YYYY}` `{MM}` `{DD}` `{HH}` `{mm}` must appear; literal text may surround them.
//! The name is the format with the tokens substituted and nothing appended (IoT Hub's default names
//! have no extension; a format that wants one writes it, e.g. `….avro`).
//!
//! Two files can fall in the same minute of one partition: a chunk that reached `max_chunk_bytes`
//! and the next one, or a restart within the minute. IoT Hub does not document what it does then;
//! we never overwrite an object. The first file takes the plain name; a later one in the same
//! minute takes the name with `_1`, `_2`, ... inserted after the last token (before a trailing
//! literal such as `.avro`), so every such name still matches a reader's pattern.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use object_store::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    IotHub,
    Partition,
    Year,
    Month,
    Day,
    Hour,
    Minute,
}

const TOKENS: [(&str, Token); 7] = [
    ("iothub", Token::IotHub),
    ("partition", Token::Partition),
    ("YYYY", Token::Year),
    ("MM", Token::Month),
    ("DD", Token::Day),
    ("HH", Token::Hour),
    ("mm", Token::Minute),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Token(Token),
}

/// A parsed, validated `fileNameFormat`.
#[derive(Debug, Clone)]
pub(crate) struct FileNameFormat {
    pieces: Vec<Piece>,
    /// Where the collision counter goes: after the last token.
    counter_at: usize,
}

/// What one file's name is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileName<'a> {
    pub(crate) iothub: &'a str,
    pub(crate) partition: &'a str,
    /// The UTC start of the file's window.
    pub(crate) window: DateTime<Utc>,
}

impl FileNameFormat {
    /// Parses `format`; the error says what is wrong and how to fix it.
    pub(crate) fn parse(format: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = format;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("file_name_format `{format}` has an unclosed `{{`"))?
                + open;
            let name = &rest[open + 1..close];
            let token = TOKENS
                .iter()
                .find(|(spelling, _)| *spelling == name)
                .map(|(_, token)| *token)
                .ok_or_else(|| {
                    format!(
                        "file_name_format has the unknown token `{{{name}}}`; IoT Hub's tokens are \
                         {{iothub}} {{partition}} {{YYYY}} {{MM}} {{DD}} {{HH}} {{mm}}"
                    )
                })?;
            pieces.push(Piece::Token(token));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        let missing: Vec<String> = TOKENS
            .iter()
            .filter(|(_, token)| !pieces.contains(&Piece::Token(*token)))
            .map(|(spelling, _)| format!("{{{spelling}}}"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "file_name_format `{format}` lacks {}; IoT Hub requires all of {{iothub}} \
                 {{partition}} {{YYYY}} {{MM}} {{DD}} {{HH}} {{mm}} (in any order)",
                missing.join(" ")
            ));
        }
        let counter_at = pieces
            .iter()
            .rposition(|p| matches!(p, Piece::Token(_)))
            .expect("every token is present")
            + 1;
        let parsed = Self { pieces, counter_at };
        let sample = FileName {
            iothub: "hub",
            partition: "0",
            window: DateTime::UNIX_EPOCH,
        };
        Path::parse(parsed.render(&sample, 0)).map_err(|e| {
            format!("file_name_format `{format}` does not give a valid blob name: {e}")
        })?;
        Ok(parsed)
    }

    /// The blob name of `name`; `collision` > 0 inserts `_{collision}` after the last token.
    pub(crate) fn render(&self, name: &FileName<'_>, collision: u32) -> String {
        let mut out = String::new();
        let t = name.window;
        for (i, piece) in self.pieces.iter().enumerate() {
            if i == self.counter_at && collision > 0 {
                write!(out, "_{collision}").expect("writing to a String");
            }
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Token(Token::IotHub) => out.push_str(name.iothub),
                Piece::Token(Token::Partition) => out.push_str(name.partition),
                Piece::Token(Token::Year) => {
                    write!(out, "{:04}", t.year()).expect("writing to a String");
                }
                Piece::Token(Token::Month) => {
                    write!(out, "{:02}", t.month()).expect("writing to a String");
                }
                Piece::Token(Token::Day) => {
                    write!(out, "{:02}", t.day()).expect("writing to a String");
                }
                Piece::Token(Token::Hour) => {
                    write!(out, "{:02}", t.hour()).expect("writing to a String");
                }
                Piece::Token(Token::Minute) => {
                    write!(out, "{:02}", t.minute()).expect("writing to a String");
                }
            }
        }
        if self.counter_at == self.pieces.len() && collision > 0 {
            write!(out, "_{collision}").expect("writing to a String");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn names_are_the_format_with_tokens_substituted_and_collisions_numbered() {
        let window = Utc.with_ymd_and_hms(2026, 3, 7, 9, 5, 59).unwrap();
        let name = FileName {
            iothub: "myhub",
            partition: "3",
            window,
        };
        let cases = [
            (
                "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}",
                0,
                "myhub/3/2026/03/07/09/05",
            ),
            (
                "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}",
                2,
                "myhub/3/2026/03/07/09/05_2",
            ),
            (
                "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.avro",
                0,
                "myhub/3/2026/03/07/09/05.avro",
            ),
            (
                "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.avro",
                1,
                "myhub/3/2026/03/07/09/05_1.avro",
            ),
            (
                "archive/{YYYY}{MM}{DD}/{HH}{mm}/{partition}-{iothub}.json",
                0,
                "archive/20260307/0905/3-myhub.json",
            ),
        ];
        for (format, collision, expected) in cases {
            let parsed = FileNameFormat::parse(format).unwrap();
            assert_eq!(parsed.render(&name, collision), expected, "{format}");
        }
    }

    #[test]
    fn formats_breaking_iot_hubs_rules_are_rejected_with_the_reason() {
        let cases = [
            ("{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}", "lacks {mm}"),
            ("{partition}/{YYYY}/{MM}/{DD}", "lacks {iothub} {HH} {mm}"),
            (
                "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}/{endpoint}",
                "unknown token `{endpoint}`",
            ),
            ("{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm", "unclosed"),
            (
                "{iothub}//{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}",
                "valid blob name",
            ),
        ];
        for (format, expected) in cases {
            let error = FileNameFormat::parse(format).unwrap_err();
            assert!(error.contains(expected), "{format}: {error}");
        }
    }
}
