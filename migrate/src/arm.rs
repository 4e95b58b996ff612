//! Reading `Microsoft.Devices/IotHubs` resources out of the JSON a user has: an ARM template (also
//! what `az bicep build` writes), a single resource's JSON, or `az iot hub show` / `az iot hub list`
//! output.
//!
//! Templates write values as template expressions (`"[variables('storageEndpoint')]"`). The
//! importer needs the ones that are fixed at authoring time (endpoint and route names, containers,
//! file name formats), so [`Template::evaluate`] evaluates the pure subset of the expression
//! language: string literals, numbers, `parameters()` (their `defaultValue`), `variables()`,
//! `concat`, `format`, `toLower`, `toUpper` and property or index access on their results.
//! Everything that depends on the deployment (`uniqueString(resourceGroup().id)`, `listKeys(…)`,
//! `reference(…)`, `environment()`) stays [`Unresolved`]: the importer then writes an environment
//! variable reference or a comment, never a guess.

use serde_json::Value;

/// An expression that depends on the deployment, with the reason (for a comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unresolved {
    /// The expression as written.
    pub(crate) expression: String,
    /// Why it cannot be evaluated before deployment, e.g. "uniqueString() depends on the deployment".
    pub(crate) reason: String,
}

/// One IoT hub resource found in the input.
#[derive(Debug, Clone)]
pub(crate) struct HubResource<'a> {
    /// The resource's `name` (possibly a template expression).
    pub(crate) name: &'a Value,
    /// The resource's `properties`.
    pub(crate) properties: &'a Value,
}

/// The template (or plain JSON) the resources were found in: the scope of `parameters()` and
/// `variables()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Template<'a> {
    parameters: Option<&'a serde_json::Map<String, Value>>,
    variables: Option<&'a serde_json::Map<String, Value>>,
}

const IOT_HUB_TYPE: &str = "Microsoft.Devices/IotHubs";

/// Deepest `variables()` chain followed before giving up (a cycle in a broken template).
const MAX_DEPTH: usize = 16;

impl<'a> Template<'a> {
    /// The template scope of `document` (empty for `az` output, which has no expressions).
    pub(crate) fn of(document: &'a Value) -> Self {
        Self {
            parameters: document.get("parameters").and_then(Value::as_object),
            variables: document.get("variables").and_then(Value::as_object),
        }
    }

    /// Every IoT hub resource in `document`: the document itself, the elements of an array
    /// (`az iot hub list`), the `resources` of a template (an array, or an object of symbolic
    /// names in language version 2.0), child resources, and nested deployments' templates.
    pub(crate) fn hubs(document: &'a Value) -> Vec<HubResource<'a>> {
        let mut found = Vec::new();
        collect_hubs(document, &mut found);
        found
    }

    /// The value of `value` after evaluating it if it is a template expression (`"[…]"`; a
    /// leading `[[` escapes a literal `[`). Objects and arrays are returned as they are.
    pub(crate) fn evaluate(&self, value: &Value) -> Result<Value, Unresolved> {
        self.evaluate_at(value, 0)
    }

    /// [`Self::evaluate`] for a value that must be a string (names, formats).
    pub(crate) fn string(&self, value: &Value) -> Result<String, Unresolved> {
        match self.evaluate(value)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(Unresolved {
                expression: value.to_string(),
                reason: format!("expected a string, found {other}"),
            }),
        }
    }

    fn evaluate_at(&self, value: &Value, depth: usize) -> Result<Value, Unresolved> {
        let Value::String(text) = value else {
            return Ok(value.clone());
        };
        if text.starts_with("[[") {
            return Ok(Value::String(text[1..].to_owned()));
        }
        let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
            return Ok(value.clone());
        };
        let unresolved = |reason: String| Unresolved {
            expression: text.clone(),
            reason,
        };
        if depth > MAX_DEPTH {
            return Err(unresolved(
                "variables refer to each other in a cycle".to_owned(),
            ));
        }
        let mut parser = Parser {
            text: inner,
            position: 0,
        };
        let expression = parser.expression().map_err(&unresolved)?;
        parser.skip_space();
        if parser.position != inner.len() {
            return Err(unresolved(format!(
                "unexpected `{}`",
                &inner[parser.position..]
            )));
        }
        self.value_of(&expression, depth).map_err(unresolved)
    }

    fn value_of(&self, expression: &Expression, depth: usize) -> Result<Value, String> {
        match expression {
            Expression::Literal(value) => Ok(value.clone()),
            Expression::Member(target, name) => {
                let target = self.value_of(target, depth)?;
                target
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("the value has no property `{name}`"))
            }
            Expression::Index(target, index) => {
                let target = self.value_of(target, depth)?;
                let index = self.value_of(index, depth)?;
                match (&target, &index) {
                    (Value::Array(items), Value::Number(n)) => n
                        .as_u64()
                        .and_then(|i| items.get(usize::try_from(i).ok()?))
                        .cloned()
                        .ok_or_else(|| format!("index {n} is out of range")),
                    (Value::Object(_), Value::String(key)) => target
                        .get(key)
                        .cloned()
                        .ok_or_else(|| format!("the value has no property `{key}`")),
                    _ => Err(format!("cannot index {target} with {index}")),
                }
            }
            Expression::Call(function, arguments) => {
                let name = function.to_ascii_lowercase();
                let args = || {
                    arguments
                        .iter()
                        .map(|a| self.value_of(a, depth))
                        .collect::<Result<Vec<_>, _>>()
                };
                match name.as_str() {
                    "parameters" => {
                        let key = single_string(function, &args()?)?;
                        let parameter = self
                            .parameters
                            .and_then(|p| p.get(&key))
                            .ok_or_else(|| format!("parameter `{key}` is not declared"))?;
                        let default = parameter.get("defaultValue").ok_or_else(|| {
                            format!(
                                "parameter `{key}` has no defaultValue: it is given at deployment"
                            )
                        })?;
                        self.evaluate_at(default, depth + 1).map_err(|u| u.reason)
                    }
                    "variables" => {
                        let key = single_string(function, &args()?)?;
                        let variable = self
                            .variables
                            .and_then(|v| v.get(&key))
                            .ok_or_else(|| format!("variable `{key}` is not declared"))?;
                        self.evaluate_at(variable, depth + 1).map_err(|u| u.reason)
                    }
                    "concat" => {
                        let values = args()?;
                        let mut text = String::new();
                        for value in &values {
                            text.push_str(&plain_text(value)?);
                        }
                        Ok(Value::String(text))
                    }
                    "format" => {
                        let values = args()?;
                        let (pattern, rest) = values
                            .split_first()
                            .ok_or_else(|| "format() needs a format string".to_owned())?;
                        let pattern = plain_text(pattern)?;
                        format_composite(&pattern, rest).map(Value::String)
                    }
                    "tolower" => Ok(Value::String(
                        single_string(function, &args()?)?.to_lowercase(),
                    )),
                    "toupper" => Ok(Value::String(
                        single_string(function, &args()?)?.to_uppercase(),
                    )),
                    "string" => {
                        Ok(Value::String(plain_text(args()?.first().ok_or_else(
                            || "string() needs an argument".to_owned(),
                        )?)?))
                    }
                    _ => Err(format!("{function}() depends on the deployment")),
                }
            }
        }
    }
}

/// The member `key` of `value`, its name compared case-insensitively, as ARM compares property
/// names (`az` output writes `cosmosDbSqlContainers` where templates write `cosmosDBSqlContainers`).
pub(crate) fn member<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    let object = value.as_object()?;
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn collect_hubs<'a>(value: &'a Value, found: &mut Vec<HubResource<'a>>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| collect_hubs(item, found)),
        Value::Object(object) => {
            let is_hub = object
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case(IOT_HUB_TYPE));
            if is_hub
                && let (Some(name), Some(properties)) =
                    (member(value, "name"), member(value, "properties"))
            {
                found.push(HubResource { name, properties });
            }
            if let Some(resources) = object.get("resources") {
                match resources {
                    Value::Array(_) => collect_hubs(resources, found),
                    Value::Object(symbolic) => {
                        symbolic.values().for_each(|r| collect_hubs(r, found));
                    }
                    _ => {}
                }
            }
            // A nested deployment (`Microsoft.Resources/deployments`) carries its own template.
            if let Some(template) = object.get("properties").and_then(|p| p.get("template")) {
                collect_hubs(template, found);
            }
        }
        _ => {}
    }
}

fn single_string(function: &str, values: &[Value]) -> Result<String, String> {
    match values {
        [value] => plain_text(value),
        _ => Err(format!("{function}() takes one argument")),
    }
}

/// The text of a scalar as `concat` and `format` write it.
fn plain_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("cannot use {other} as text")),
    }
}

/// .NET composite formatting as ARM's `format()` does it: `{0}`, `{1}`, …, with `{{` and `}}` for
/// braces. Format specifiers (`{0:N2}`) are not supported.
fn format_composite(pattern: &str, values: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut digits = String::new();
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                    digits.push(d);
                }
                let index: usize = digits
                    .parse()
                    .map_err(|_| format!("format() placeholder `{{{digits}}}` is not supported"))?;
                let value = values
                    .get(index)
                    .ok_or_else(|| format!("format() has no argument {index}"))?;
                out.push_str(&plain_text(value)?);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A parsed template expression.
#[derive(Debug)]
enum Expression {
    Literal(Value),
    Call(String, Vec<Expression>),
    Member(Box<Expression>, String),
    Index(Box<Expression>, Box<Expression>),
}

/// Recursive descent over the expression language: `f(a, b).p[0]`, `'it''s'`, numbers.
struct Parser<'t> {
    text: &'t str,
    position: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.position..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.position = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.rest().starts_with(c) {
            self.position += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expression(&mut self) -> Result<Expression, String> {
        self.skip_space();
        let mut expression = self.primary()?;
        loop {
            if self.eat('.') {
                let name = self.identifier()?;
                expression = Expression::Member(Box::new(expression), name);
            } else if self.eat('[') {
                let index = self.expression()?;
                if !self.eat(']') {
                    return Err("`[` without `]`".to_owned());
                }
                expression = Expression::Index(Box::new(expression), Box::new(index));
            } else {
                return Ok(expression);
            }
        }
    }

    fn primary(&mut self) -> Result<Expression, String> {
        let rest = self.rest();
        if rest.starts_with('\'') {
            return self.string().map(|s| Expression::Literal(Value::String(s)));
        }
        if rest.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            let end = rest[1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len(), |i| i + 1);
            let number: i64 = rest[..end]
                .parse()
                .map_err(|_| format!("`{}` is not a number", &rest[..end]))?;
            self.position += end;
            return Ok(Expression::Literal(Value::from(number)));
        }
        let name = self.identifier()?;
        if !self.eat('(') {
            return Err(format!("`{name}` is not a function call"));
        }
        let mut arguments = Vec::new();
        if !self.eat(')') {
            loop {
                arguments.push(self.expression()?);
                if self.eat(')') {
                    break;
                }
                if !self.eat(',') {
                    return Err(format!("expected `,` or `)` in the arguments of {name}()"));
                }
            }
        }
        Ok(Expression::Call(name, arguments))
    }

    fn identifier(&mut self) -> Result<String, String> {
        self.skip_space();
        let rest = self.rest();
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(format!("unexpected `{rest}`"));
        }
        let identifier = rest[..end].to_owned();
        self.position += end;
        Ok(identifier)
    }

    /// A single-quoted string; `''` is a quote.
    fn string(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1).peekable();
        while let Some((index, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, c)| *c) == Some('\'') {
                    chars.next();
                    out.push('\'');
                    continue;
                }
                self.position += index + 1;
                return Ok(out);
            }
            out.push(c);
        }
        Err("a string is not closed with `'`".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn evaluates_the_pure_subset_and_names_what_depends_on_the_deployment() {
        let document = json!({
            "parameters": {
                "projectName": {"type": "string", "defaultValue": "Contoso"},
                "location": {"type": "string"},
                "sku": {"type": "object", "defaultValue": {"name": "S1", "units": [1, 2]}}
            },
            "variables": {
                "endpoint": "[format('{0}StorageEndpoint', parameters('projectName'))]",
                "container": "[concat(toLower(parameters('projectName')), 'results')]",
                "hub": "[format('{0}Hub{1}', parameters('projectName'), uniqueString(resourceGroup().id))]",
                "loop": "[variables('loop')]"
            }
        });
        let template = Template::of(&document);
        let cases = [
            (
                "[variables('endpoint')]",
                Ok(json!("ContosoStorageEndpoint")),
            ),
            ("[variables('container')]", Ok(json!("contosoresults"))),
            ("[parameters('sku').name]", Ok(json!("S1"))),
            ("[parameters('sku').units[1]]", Ok(json!(2))),
            ("[concat('it''s', ' ', 42)]", Ok(json!("it's 42"))),
            ("[format('{{{0}}}', 'x')]", Ok(json!("{x}"))),
            ("[[not an expression]", Ok(json!("[not an expression]"))),
            ("plain", Ok(json!("plain"))),
            (
                "[variables('hub')]",
                Err("uniqueString() depends on the deployment"),
            ),
            ("[parameters('location')]", Err("has no defaultValue")),
            (
                "[variables('missing')]",
                Err("variable `missing` is not declared"),
            ),
            ("[variables('loop')]", Err("cycle")),
            ("[concat('a',]", Err("unexpected")),
        ];
        for (expression, expected) in cases {
            let got = template.evaluate(&json!(expression));
            match (got, expected) {
                (Ok(value), Ok(wanted)) => assert_eq!(value, wanted, "{expression}"),
                (Err(unresolved), Err(reason)) => {
                    assert!(
                        unresolved.reason.contains(reason),
                        "{expression}: {unresolved:?}"
                    );
                }
                (got, expected) => panic!("{expression}: {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn finds_hubs_in_templates_symbolic_resources_nested_deployments_and_az_output() {
        let hub = json!({"type": "Microsoft.Devices/IotHubs", "name": "h", "properties": {}});
        let documents = [
            json!({"resources": [{"type": "Microsoft.Storage/storageAccounts", "name": "s"}, hub]}),
            json!({"languageVersion": "2.0", "resources": {"hub": hub}}),
            json!({"resources": [{"type": "Microsoft.Resources/deployments", "name": "d",
                "properties": {"template": {"resources": [hub]}}}]}),
            json!({"type": "microsoft.devices/iothubs", "name": "h", "properties": {}}),
            json!([hub, hub]),
        ];
        let counts: Vec<usize> = documents.iter().map(|d| Template::hubs(d).len()).collect();
        assert_eq!(counts, [1, 1, 1, 1, 2]);
    }
}
