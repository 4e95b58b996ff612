//! Renders IoT Hub's blob name template into object paths.
//!
//! The template is parsed once into literal and token pieces, so an unknown token is a configuration
//! error at start-up rather than a strange path at the first roll.

use chrono::{DateTime, Datelike, Timelike, Utc};
use object_store::path::Path;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    IotHub,
    Partition,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Endpoint,
}

/// A parsed path template.
#[derive(Debug, Clone)]
pub(crate) struct PathTemplate {
    pieces: Vec<Piece>,
}

/// What one file's path is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileName<'a> {
    pub(crate) iothub: &'a str,
    pub(crate) partition: &'a str,
    pub(crate) opened: DateTime<Utc>,
    pub(crate) endpoint: &'a str,
    /// The file's first sequence number; `None` for an empty file (`write_empty_files`). Only a
    /// template naming `{partition}` puts it in the name: in a shared file it is one partition's.
    pub(crate) first_sequence_number: Option<i64>,
    pub(crate) unique: &'a str,
}

impl PathTemplate {
    pub(crate) fn parse(sink: &str, template: &str) -> Result<Self> {
        let error = |problem: String| Error::Config {
            sink: sink.to_owned(),
            problem,
        };
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| error(format!("path_template `{template}` has an unclosed `{{`")))?
                + open;
            pieces.push(match &rest[open + 1..close] {
                "iothub" => Piece::IotHub,
                "partition" => Piece::Partition,
                "YYYY" => Piece::Year,
                "MM" => Piece::Month,
                "DD" => Piece::Day,
                "HH" => Piece::Hour,
                "mm" => Piece::Minute,
                "endpoint" => Piece::Endpoint,
                other => {
                    return Err(error(format!(
                        "path_template has unknown token `{{{other}}}`; use {{iothub}} {{partition}} {{YYYY}} {{MM}} {{DD}} {{HH}} {{mm}} {{endpoint}}"
                    )));
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        let parsed = Self { pieces };
        let sample = FileName {
            iothub: "hub",
            partition: "0",
            opened: DateTime::UNIX_EPOCH,
            endpoint: "endpoint",
            first_sequence_number: Some(0),
            unique: "0",
        };
        Path::parse(parsed.render_string(&sample)).map_err(|e| {
            error(format!(
                "path_template `{template}` does not give a valid object path: {e}"
            ))
        })?;
        Ok(parsed)
    }

    fn render_string(&self, name: &FileName<'_>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let t = name.opened;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::IotHub => out.push_str(name.iothub),
                Piece::Partition => out.push_str(name.partition),
                Piece::Year => write!(out, "{:04}", t.year()).expect("writing to a String"),
                Piece::Month => write!(out, "{:02}", t.month()).expect("writing to a String"),
                Piece::Day => write!(out, "{:02}", t.day()).expect("writing to a String"),
                Piece::Hour => write!(out, "{:02}", t.hour()).expect("writing to a String"),
                Piece::Minute => write!(out, "{:02}", t.minute()).expect("writing to a String"),
                Piece::Endpoint => out.push_str(name.endpoint),
            }
        }
        match name.first_sequence_number {
            None => write!(out, "-empty-{}.parquet", name.unique),
            Some(sequence_number) if self.per_partition() => {
                write!(out, "-{sequence_number}-{}.parquet", name.unique)
            }
            Some(_) => write!(out, "-{}.parquet", name.unique),
        }
        .expect("writing to a String");
        out
    }

    /// Whether the template names the partition: then every partition has its own files;
    /// otherwise one file holds the rows of every partition.
    pub(crate) fn per_partition(&self) -> bool {
        self.pieces.contains(&Piece::Partition)
    }

    /// The object path of one file. Event hub and partition names are Event Hubs entity names, so
    /// the result is a valid path whenever the sample rendered at parse time was.
    pub(crate) fn render(&self, name: &FileName<'_>) -> Result<Path> {
        let rendered = self.render_string(name);
        Path::parse(&rendered).map_err(|e| Error::Config {
            sink: name.endpoint.to_owned(),
            problem: format!("rendered file path `{rendered}` is invalid: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn templates_render_iot_hub_tokens() {
        let opened = Utc.with_ymd_and_hms(2026, 3, 7, 9, 5, 59).unwrap();
        let cases = [
            (
                "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}",
                Some(42),
                "myhub/3/2026/03/07/09/05-42-u.parquet",
            ),
            (
                "{endpoint}/{YYYY}{MM}{DD}/p{partition}",
                Some(1),
                "lake/20260307/p3-1-u.parquet",
            ),
            ("x/{partition}", None, "x/3-empty-u.parquet"),
            (
                "{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}",
                Some(42),
                "myhub/2026/03/07/09/05-u.parquet",
            ),
            ("{iothub}/{YYYY}", None, "myhub/2026-empty-u.parquet"),
        ];
        for (template, first, expected) in cases {
            let parsed = PathTemplate::parse("lake", template).unwrap();
            assert_eq!(
                parsed.per_partition(),
                template.contains("{partition}"),
                "{template}"
            );
            let path = parsed
                .render(&FileName {
                    iothub: "myhub",
                    partition: "3",
                    opened,
                    endpoint: "lake",
                    first_sequence_number: first,
                    unique: "u",
                })
                .unwrap();
            assert_eq!(path.as_ref(), expected, "{template}");
        }
    }

    #[test]
    fn bad_templates_are_rejected_with_the_reason() {
        let cases = [
            ("{iothub}/{hour}", "unknown token `{hour}`"),
            ("{iothub}/{partition", "unclosed"),
            ("{iothub}//{partition}", "valid object path"),
        ];
        for (template, expected) in cases {
            let error = PathTemplate::parse("lake", template)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{template}: {error}");
        }
    }
}
