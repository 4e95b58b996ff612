//! JSON paths into message bodies, as the Parquet sink's typed columns and the database sinks'
//! mapped columns write them: `$`, then one or more `.name` and `[index]` steps (`$.a.b[0]`).
//!
//! One grammar and one error message for every sink, documented in `docs/configuration.md` ("JSON
//! paths"). The leading `$` is required: it is what tells a path from a message field name in a
//! database column's `source`.

use serde_json::Value;

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// `.name`: a member of an object.
    Key(String),
    /// `[index]`: an element of an array.
    Index(usize),
}

/// A parsed JSON path such as `$.a.b[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonPath(Vec<Step>);

impl JsonPath {
    /// Parses `path`; the error says what a path looks like.
    pub(crate) fn parse(path: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "`{path}` is not a JSON path: write `$` then `.name` and `[index]` steps, such as \
                 `$.temperature` or `$.readings[0].value`"
            )
        };
        let mut rest = path.strip_prefix('$').ok_or_else(invalid)?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                if end == 0 {
                    return Err(invalid());
                }
                steps.push(Step::Key(after[..end].to_owned()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(invalid)?;
                let index = after[..end].parse().map_err(|_| invalid())?;
                steps.push(Step::Index(index));
                rest = &after[end + 1..];
            } else {
                return Err(invalid());
            }
        }
        if steps.is_empty() {
            return Err(invalid());
        }
        Ok(Self(steps))
    }

    /// The value at this path in `value`, if every step exists.
    pub(crate) fn get<'v>(&self, mut value: &'v Value) -> Option<&'v Value> {
        for step in &self.0 {
            value = match step {
                Step::Key(key) => value.get(key)?,
                Step::Index(index) => value.get(index)?,
            };
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_parse_into_steps() {
        let key = |k: &str| Step::Key(k.into());
        let cases = [
            ("$.a", Some(vec![key("a")])),
            ("$.a.b", Some(vec![key("a"), key("b")])),
            ("$.a[2].c", Some(vec![key("a"), Step::Index(2), key("c")])),
            ("$[0]", Some(vec![Step::Index(0)])),
            ("$", None),
            ("$.", None),
            ("$.a..b", None),
            ("$.a[x]", None),
            ("$.a[1", None),
            ("$a", None),
            ("a.b", None),
            ("", None),
        ];
        for (path, expected) in cases {
            assert_eq!(JsonPath::parse(path).ok().map(|p| p.0), expected, "{path}");
        }
    }

    #[test]
    fn the_error_names_the_path_and_shows_the_grammar() {
        let error = JsonPath::parse("temperature").unwrap_err();
        assert!(
            error.starts_with("`temperature` is not a JSON path"),
            "{error}"
        );
        assert!(error.contains("$.temperature"), "{error}");
    }

    #[test]
    fn a_path_reads_nested_members_and_elements() {
        let body = json!({"a": {"list": [1, {"b": "x"}]}});
        let get = |path: &str| JsonPath::parse(path).unwrap().get(&body).cloned();
        assert_eq!(get("$.a.list[1].b"), Some(json!("x")));
        assert_eq!(get("$.a.list[0]"), Some(json!(1)));
        assert_eq!(get("$.a.list[2]"), None);
        assert_eq!(get("$.a.missing"), None);
        assert_eq!(get("$.a.list.b"), None);
    }
}
