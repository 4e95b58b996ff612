//! The commented TOML the importer writes, line by line.
//!
//! The output is meant to be read and edited, so it is written by hand rather than serialised:
//! comments sit above what they explain, tables are expanded (`[endpoints.sink]`), and a block
//! that cannot be used as is (a Cosmos DB endpoint, a route to the built-in endpoint) is written
//! commented out, ready to uncomment. Values are quoted by the `toml` crate, so conditions with
//! quotes and backslashes round-trip.

use std::fmt::Write as _;

/// Width comments are wrapped to.
const WIDTH: usize = 100;

/// A TOML document under construction.
#[derive(Debug, Default)]
pub(crate) struct TomlText {
    text: String,
    /// Write key lines commented out (a block the user must complete before it can be used).
    disabled: bool,
}

/// A TOML value as the importer writes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TomlValue {
    String(String),
    Integer(i64),
    Bool(bool),
    Strings(Vec<String>),
}

impl TomlValue {
    fn render(&self) -> String {
        match self {
            Self::String(s) => quote(s),
            Self::Integer(i) => i.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Strings(items) => {
                let items: Vec<String> = items.iter().map(|s| quote(s)).collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
}

/// `s` as a TOML string (basic or literal, whichever the `toml` crate prefers).
pub(crate) fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl TomlText {
    /// Writes the lines that follow commented out (`true`) or live (`false`).
    pub(crate) fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
    }

    /// A blank line.
    pub(crate) fn blank(&mut self) {
        self.text.push('\n');
    }

    /// A comment, wrapped at the page width; `\n` in `text` starts a new line.
    pub(crate) fn comment(&mut self, text: &str) {
        for paragraph in text.split('\n') {
            let mut line = String::new();
            for word in paragraph.split(' ') {
                if !line.is_empty() && line.len() + 1 + word.len() > WIDTH - 2 {
                    let _ = writeln!(self.text, "# {line}");
                    line.clear();
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(word);
            }
            if line.is_empty() {
                self.text.push_str("#\n");
            } else {
                let _ = writeln!(self.text, "# {line}");
            }
        }
    }

    /// A table header, `[name]` or `[[name]]`.
    pub(crate) fn header(&mut self, header: &str) {
        let prefix = if self.disabled { "# " } else { "" };
        let _ = writeln!(self.text, "{prefix}{header}");
    }

    /// `key = value`, with an optional trailing comment.
    pub(crate) fn key(&mut self, key: &str, value: &TomlValue, note: Option<&str>) {
        let prefix = if self.disabled { "# " } else { "" };
        let _ = write!(self.text, "{prefix}{key} = {}", value.render());
        if let Some(note) = note {
            let _ = write!(self.text, "  # {note}");
        }
        self.text.push('\n');
    }

    /// The document.
    pub(crate) fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_blocks_and_wrapped_comments() {
        let mut text = TomlText::default();
        text.comment(&"word ".repeat(30));
        text.set_disabled(true);
        text.header("[[routes]]");
        text.key(
            "condition",
            &TomlValue::String(r#"a = "b" AND c = 'd'"#.to_owned()),
            Some("note"),
        );
        text.set_disabled(false);
        text.key("enabled", &TomlValue::Bool(false), None);
        let out = text.finish();
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].len() <= WIDTH && lines[1].starts_with("# word"),
            "{out}"
        );
        assert_eq!(lines[2], "# [[routes]]");
        assert!(lines[3].starts_with("# condition = ") && lines[3].ends_with("  # note"));
        assert_eq!(lines[4], "enabled = false");
        let parsed: toml::Table = toml::from_str(
            lines[3]
                .trim_start_matches("# ")
                .split("  #")
                .next()
                .unwrap(),
        )
        .expect("valid TOML");
        assert_eq!(parsed["condition"].as_str(), Some(r#"a = "b" AND c = 'd'"#));
    }
}
