//! `hubroute import`: an IoT hub's routing (`properties.routing` of a `Microsoft.Devices/IotHubs`
//! resource) as a commented hubroute configuration.
//!
//! The importer maps what has a hubroute equivalent and writes everything else as comments, never
//! as a guess: each route, the fallback and each enrichment keep their names, sources, conditions
//! and enabled flags; storage containers, Event Hubs and Service Bus queues and topics become the
//! matching sinks with IoT Hub's settings; a Cosmos DB endpoint becomes a commented-out PostgreSQL
//! endpoint; routes to the built-in endpoint `events` are explained, not mapped (hubroute *reads*
//! that endpoint). Secrets are never copied: every key or connection string becomes a `${NAME}`
//! reference with a name derived from the endpoint, listed at the end with where to find it.
//! Whatever could not be mapped is both commented in the file and returned as a [`Warning`].
//!
//! Conditions are compiled with hubroute's route language while importing, so a condition the
//! engine would reject is commented out with the reason instead of failing `hubroute check` later.

mod endpoints;
mod toml_text;

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::arm::{HubResource, Template, member};
use crate::{Error, Result};
use endpoints::{Endpoint, EndpointTarget};
use toml_text::{TomlText, TomlValue};

/// IoT Hub's limits that a template could exceed (ARM and IoT Hub's quota documentation); the
/// engine enforces the same ones.
mod limits {
    /// Routes per hub.
    pub(super) const ROUTES: usize = 100;
    /// Enrichments per hub.
    pub(super) const ENRICHMENTS: usize = 10;
    /// Characters in a route condition.
    pub(super) const CONDITION_CHARS: usize = 1024;
    /// Characters in an enrichment key.
    pub(super) const ENRICHMENT_KEY_CHARS: usize = 128;
    /// Characters in an enrichment value.
    pub(super) const ENRICHMENT_VALUE_CHARS: usize = 512;
}

/// The route sources hubroute routes, as ARM's `RoutingSource` spells them.
const ROUTE_SOURCES: [&str; 6] = [
    "DeviceMessages",
    "TwinChangeEvents",
    "DeviceLifecycleEvents",
    "DeviceJobLifecycleEvents",
    "DigitalTwinChangeEvents",
    "DeviceConnectionStateEvents",
];

/// The environment variable that holds the hub's service connection string.
const SERVICE_CONNECTION_STRING: &str = "IOTHUB_SERVICE_CONNECTION_STRING";

/// The environment variable that holds the hub's name when the template computes it at deployment.
const HUB_NAME: &str = "IOTHUB_NAME";

/// What could not be imported as it was, as printed by `hubroute import` (and commented in the
/// file at the place it concerns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An environment variable the imported configuration reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentVariable {
    /// Its name, as `${NAME}` in the file.
    pub name: String,
    /// What it holds and where to find the value.
    pub description: String,
    /// Whether only a commented-out block reads it.
    pub commented_out: bool,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Import {
    /// The configuration file's text.
    pub toml: String,
    /// What could not be mapped as it was.
    pub warnings: Vec<Warning>,
    /// The environment variables the file reads.
    pub environment: Vec<EnvironmentVariable>,
    /// Counts for a summary line: endpoints, routes, enrichments written live (not commented out).
    pub counts: Counts,
}

/// How much of the hub's routing the configuration carries live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Endpoints written live.
    pub endpoints: usize,
    /// Routes written live.
    pub routes: usize,
    /// Routes the input has.
    pub routes_in_input: usize,
    /// Enrichments written live.
    pub enrichments: usize,
    /// Whether a `[fallback]` section is live.
    pub fallback: bool,
}

/// Imports the IoT hub in `document` (the JSON of `source`, named in messages). With several hubs
/// in the document, `hub` picks one by name.
pub fn import(document: &Value, source: &str, hub: Option<&str>) -> Result<Import> {
    let template = Template::of(document);
    let hubs = Template::hubs(document);
    let named = |h: &HubResource<'_>| template.string(h.name).unwrap_or_else(|u| u.expression);
    let chosen = match (hubs.as_slice(), hub) {
        ([], _) => {
            return Err(Error::NoIotHub {
                file: source.to_owned(),
            });
        }
        (hubs, Some(wanted)) => {
            hubs.iter()
                .find(|h| named(h) == wanted)
                .ok_or_else(|| Error::HubNotFound {
                    file: source.to_owned(),
                    wanted: wanted.to_owned(),
                    found: hubs.iter().map(named).collect(),
                })?
        }
        ([only], None) => only,
        (hubs, None) => {
            return Err(Error::SeveralIotHubs {
                file: source.to_owned(),
                found: hubs.iter().map(named).collect(),
            });
        }
    };
    Ok(Importer::new(template, source).run(chosen))
}

/// One import in progress.
struct Importer<'a> {
    template: Template<'a>,
    source: &'a str,
    warnings: Vec<Warning>,
    environment: BTreeMap<String, EnvironmentVariable>,
    counts: Counts,
}

/// A route as the importer decided to write it.
struct PlannedRoute {
    name: String,
    source: String,
    condition: String,
    endpoint: String,
    enabled: bool,
    /// Why the route is written commented out, if it is.
    unusable: Option<String>,
    /// Notes written above it.
    notes: Vec<String>,
}

impl<'a> Importer<'a> {
    fn new(template: Template<'a>, source: &'a str) -> Self {
        Self {
            template,
            source,
            warnings: Vec::new(),
            environment: BTreeMap::new(),
            counts: Counts::default(),
        }
    }

    fn warn(&mut self, text: String) {
        self.warnings.push(Warning(text));
    }

    /// Records an environment variable the file reads and returns its `${NAME}` reference.
    fn variable(&mut self, name: &str, description: String, commented_out: bool) -> String {
        let entry =
            self.environment
                .entry(name.to_owned())
                .or_insert_with(|| EnvironmentVariable {
                    name: name.to_owned(),
                    description,
                    commented_out,
                });
        entry.commented_out &= commented_out;
        format!("${{{name}}}")
    }

    fn run(mut self, hub: &HubResource<'_>) -> Import {
        let mut out = TomlText::default();
        let hub_name = match self.template.string(hub.name) {
            Ok(name) => Some(name),
            Err(unresolved) => {
                self.warn(format!(
                    "the hub's name `{}` is computed at deployment ({}): the file reads it from ${{{HUB_NAME}}}",
                    unresolved.expression, unresolved.reason
                ));
                None
            }
        };
        let routing = member(hub.properties, "routing").unwrap_or(&Value::Null);
        let endpoint_specs = member(routing, "endpoints").unwrap_or(&Value::Null);
        let hub_value = match &hub_name {
            Some(name) => name.clone(),
            None => self.variable(
                HUB_NAME,
                "The IoT hub's name (`az iot hub list --query [].name`).".to_owned(),
                false,
            ),
        };
        let endpoints = endpoints::plan(self.template, endpoint_specs, &hub_value);
        for endpoint in &endpoints {
            for warning in &endpoint.warnings {
                self.warn(format!("endpoint `{}`: {warning}", endpoint.name));
            }
        }
        let targets: BTreeMap<String, EndpointTarget> = endpoints
            .iter()
            .map(|e| (e.key.clone(), e.target()))
            .collect();
        let routes = self.plan_routes(member(routing, "routes"), &targets);
        let mut fallback = self.plan_fallback(member(routing, "fallbackRoute"), &targets);
        if let Some(fallback) = fallback
            .as_mut()
            .filter(|f| f.unusable.is_none() && f.enabled)
        {
            let diverted: Vec<&str> = routes
                .iter()
                .filter(|r| r.unusable.is_some() && r.enabled && r.source == "DeviceMessages")
                .map(|r| r.name.as_str())
                .collect();
            if !diverted.is_empty() {
                let text = format!(
                    "the fallback route now also takes device messages of the commented-out routes \
                     {}: in IoT Hub a message they match skips the fallback",
                    diverted.join(", ")
                );
                fallback.notes.push(format!("WARNING: {text}."));
                self.warn(text);
            }
        }
        let enrichments = self.plan_enrichments(member(routing, "enrichments"), &targets);

        let reads_twin = |text: &str| text.to_ascii_lowercase().contains("$twin");
        let needs_twins = routes
            .iter()
            .filter(|r| r.unusable.is_none())
            .any(|r| reads_twin(&r.condition))
            || fallback
                .as_ref()
                .is_some_and(|f| f.unusable.is_none() && reads_twin(&f.condition))
            || enrichments
                .iter()
                .any(|e| e.unusable.is_none() && reads_twin(&e.value));

        self.header(&mut out, hub_name.as_deref(), &routes, fallback.as_ref());
        out.key(
            "hub_name",
            &TomlValue::String(hub_value),
            Some("the value of `$iothubname` enrichments"),
        );
        out.blank();
        self.source_section(&mut out, needs_twins);
        for endpoint in &endpoints {
            self.write_endpoint(&mut out, endpoint);
        }
        self.write_routes(&mut out, &routes);
        self.write_fallback(&mut out, fallback.as_ref());
        self.write_enrichments(&mut out, &enrichments);
        self.footer(&mut out);
        Import {
            toml: out.finish(),
            warnings: self.warnings,
            environment: self.environment.into_values().collect(),
            counts: self.counts,
        }
    }

    fn header(
        &mut self,
        out: &mut TomlText,
        hub_name: Option<&str>,
        routes: &[PlannedRoute],
        fallback: Option<&PlannedRoute>,
    ) {
        let hub = hub_name.map_or_else(
            || "whose name is computed at deployment".to_owned(),
            |name| format!("`{name}`"),
        );
        out.comment(&format!(
            "hubroute configuration imported from {} (the IoT hub {hub}) by `hubroute import`.\n\
             Review it, set the environment variables listed at the end, then run `hubroute check \
             --config <this file>`.",
            self.source,
        ));
        out.comment("");
        // Which sources reach the built-in endpoint decides what hubroute, reading it, sees.
        let mut reaching: Vec<String> = routes
            .iter()
            .filter(|r| r.endpoint.eq_ignore_ascii_case("events") && r.enabled)
            .map(|r| format!("{} (route `{}`)", r.source, r.name))
            .collect();
        if fallback.is_some_and(|f| f.endpoint.eq_ignore_ascii_case("events") && f.enabled) {
            reaching.push("DeviceMessages that match no route (the fallback)".to_owned());
        }
        let reaching = if reaching.is_empty() {
            "nothing: no enabled route or fallback of this hub goes to `events`, so hubroute would \
             read no messages until one does"
                .to_owned()
        } else {
            reaching.join("; ")
        };
        out.comment(&format!(
            "hubroute reads the hub's built-in endpoint (`events`), through the hub's service \
             connection string below, and routes what it reads. It sees only what IoT Hub delivers \
             there: with this template, {reaching}. To route every device message with hubroute, \
             give the hub a route `DeviceMessages` → `events` with condition `true` (or enable its \
             fallback to `events`), and one per other source you route."
        ));
        out.blank();
    }

    fn source_section(&mut self, out: &mut TomlText, needs_twins: bool) {
        let reference = self.variable(
            SERVICE_CONNECTION_STRING,
            "The hub's service connection string, of a policy with ServiceConnect: \
             `az iot hub connection-string show --hub-name <hub> --policy-name service` \
             (portal: IoT hub → Security settings → Shared access policies → service)."
                .to_owned(),
            false,
        );
        out.header("[source]");
        out.comment(
            "The IoT hub's own service connection string: hubroute follows the hub's redirect to \
             its built-in endpoint. Give hubroute its own consumer group (`az iot hub \
             consumer-group create --hub-name <hub> --name hubroute`) so that it does not compete \
             with other readers of `$Default`.",
        );
        out.key(
            "connection_string",
            &TomlValue::String(reference.clone()),
            None,
        );
        out.key(
            "consumer_group",
            &TomlValue::String("$Default".to_owned()),
            None,
        );
        out.blank();
        if needs_twins {
            out.header("[twins]");
            out.comment(
                "Routes or enrichments read `$twin`: the engine loads every twin through the \
                 hub's service API with the same policy, and keeps them current from twin change \
                 and lifecycle events routed to `events`.",
            );
            out.key(
                "service_connection_string",
                &TomlValue::String(reference),
                None,
            );
            out.blank();
        }
    }

    fn write_endpoint(&mut self, out: &mut TomlText, endpoint: &Endpoint) {
        for variable in &endpoint.variables {
            self.variable(
                &variable.name,
                variable.description.clone(),
                !endpoint.usable,
            );
        }
        for note in &endpoint.notes {
            out.comment(note);
        }
        for warning in &endpoint.warnings {
            out.comment(&format!("WARNING: {warning}"));
        }
        if endpoint.sink.is_empty() {
            out.blank();
            return;
        }
        out.set_disabled(!endpoint.usable);
        out.header("[[endpoints]]");
        let mut table = String::new();
        for (path, key, value, note) in &endpoint.sink {
            let wanted = if path.is_empty() {
                "[endpoints.sink]".to_owned()
            } else {
                format!("[endpoints.sink.{path}]")
            };
            if wanted != table {
                out.header(&wanted);
                table = wanted;
            }
            out.key(key, value, note.as_deref());
        }
        out.set_disabled(false);
        if endpoint.usable {
            self.counts.endpoints += 1;
        }
        out.blank();
    }

    fn plan_routes(
        &mut self,
        routes: Option<&Value>,
        targets: &BTreeMap<String, EndpointTarget>,
    ) -> Vec<PlannedRoute> {
        let Some(routes) = routes.and_then(Value::as_array) else {
            return Vec::new();
        };
        self.counts.routes_in_input = routes.len();
        let mut planned = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let label = format!("routes[{index}]");
            let mut plan = self.plan_route(route, &label, targets, false);
            if index >= limits::ROUTES && plan.unusable.is_none() {
                plan.unusable = Some(format!(
                    "IoT Hub and hubroute allow at most {} routes; this is route {}",
                    limits::ROUTES,
                    index + 1
                ));
            }
            if let Some(reason) = &plan.unusable {
                self.warn(format!("route `{}` is commented out: {reason}", plan.name));
            }
            planned.push(plan);
        }
        planned
    }

    /// A route (or, with `fallback`, the fallback route) of the template.
    fn plan_route(
        &mut self,
        route: &Value,
        label: &str,
        targets: &BTreeMap<String, EndpointTarget>,
        fallback: bool,
    ) -> PlannedRoute {
        let mut notes = Vec::new();
        let mut problems = Vec::new();
        let name = match member(route, "name").map(|n| self.template.string(n)) {
            Some(Ok(name)) => name,
            Some(Err(u)) => {
                problems.push(format!(
                    "its name `{}` is computed at deployment ({})",
                    u.expression, u.reason
                ));
                label.to_owned()
            }
            None => label.to_owned(),
        };
        if !fallback && !valid_name(&name) {
            problems.push(format!(
                "the name `{name}` is not 1 to 64 letters, digits, `-`, `.` or `_`"
            ));
        }
        let source = match member(route, "source").map(|s| self.template.string(s)) {
            Some(Ok(source)) => match ROUTE_SOURCES
                .iter()
                .find(|known| known.eq_ignore_ascii_case(&source))
            {
                Some(known) => (*known).to_owned(),
                None => {
                    problems.push(format!(
                        "hubroute has no route source `{source}` (it routes {})",
                        ROUTE_SOURCES.join(", ")
                    ));
                    source
                }
            },
            Some(Err(u)) => {
                problems.push(format!(
                    "its source is computed at deployment ({})",
                    u.reason
                ));
                "DeviceMessages".to_owned()
            }
            None => "DeviceMessages".to_owned(),
        };
        if fallback && source != "DeviceMessages" {
            problems.push(format!(
                "a fallback route takes device messages only, not `{source}`"
            ));
        }
        let condition = match member(route, "condition").map(|c| self.template.string(c)) {
            Some(Ok(condition)) => condition,
            Some(Err(u)) => {
                problems.push(format!(
                    "its condition is computed at deployment ({})",
                    u.reason
                ));
                u.expression
            }
            None => "true".to_owned(),
        };
        let chars = condition.chars().count();
        if chars > limits::CONDITION_CHARS {
            problems.push(format!(
                "its condition has {chars} characters; IoT Hub and hubroute allow {}",
                limits::CONDITION_CHARS
            ));
        } else if let Err(error) = hubroute_queries::compile(&condition) {
            let first = error.to_string();
            problems.push(format!(
                "hubroute does not accept its condition: {}",
                first.lines().next().unwrap_or_default()
            ));
        }
        let enabled = match member(route, "isEnabled").map(|e| self.template.evaluate(e)) {
            Some(Ok(Value::Bool(enabled))) => enabled,
            Some(Ok(other)) => {
                problems.push(format!("isEnabled is {other}, not a boolean"));
                false
            }
            Some(Err(u)) => {
                notes.push(format!(
                    "isEnabled is computed at deployment ({}); imported as disabled",
                    u.reason
                ));
                false
            }
            None => {
                notes.push(
                    "the template sets no isEnabled (required by ARM); imported as disabled"
                        .to_owned(),
                );
                false
            }
        };
        let endpoint_names: Vec<String> = member(route, "endpointNames")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .map(|n| self.template.string(n).unwrap_or_else(|u| u.expression))
                    .collect()
            })
            .unwrap_or_default();
        let endpoint = match endpoint_names.as_slice() {
            [one] => match targets.get(one) {
                Some(EndpointTarget::Mapped(name)) => name.clone(),
                Some(EndpointTarget::Unusable(name, why)) => {
                    problems.push(format!("its endpoint `{name}` {why}"));
                    name.clone()
                }
                None if one.eq_ignore_ascii_case("events") => {
                    problems.push(
                        "it sends to the built-in endpoint `events`, which is where hubroute \
                             reads from: hubroute has nothing to deliver there. Keep the route in \
                             IoT Hub if hubroute should see these messages"
                            .to_owned(),
                    );
                    "events".to_owned()
                }
                None => {
                    problems.push(format!(
                        "its endpoint `{one}` is not defined in the template"
                    ));
                    one.clone()
                }
            },
            [] => {
                problems.push("it names no endpoint".to_owned());
                String::new()
            }
            many => {
                problems.push(format!(
                    "it names {} endpoints ({}); IoT Hub and hubroute take exactly one per route",
                    many.len(),
                    many.join(", ")
                ));
                many[0].clone()
            }
        };
        PlannedRoute {
            name,
            source,
            condition,
            endpoint,
            enabled,
            unusable: (!problems.is_empty()).then(|| problems.join("; ")),
            notes,
        }
    }

    fn write_routes(&mut self, out: &mut TomlText, routes: &[PlannedRoute]) {
        if routes.is_empty() {
            out.comment("The hub has no routes.");
            out.blank();
        }
        for route in routes {
            for note in &route.notes {
                out.comment(note);
            }
            if let Some(reason) = &route.unusable {
                out.comment(&format!("Commented out: {reason}."));
            }
            if !route.enabled {
                out.comment("Disabled in the hub (isEnabled = false): kept, never matches.");
            }
            out.set_disabled(route.unusable.is_some());
            out.header("[[routes]]");
            out.key("name", &TomlValue::String(route.name.clone()), None);
            out.key("source", &TomlValue::String(route.source.clone()), None);
            out.key(
                "condition",
                &TomlValue::String(route.condition.clone()),
                None,
            );
            out.key("endpoint", &TomlValue::String(route.endpoint.clone()), None);
            out.key("enabled", &TomlValue::Bool(route.enabled), None);
            out.set_disabled(false);
            if route.unusable.is_none() {
                self.counts.routes += 1;
            }
            out.blank();
        }
    }

    fn plan_fallback(
        &mut self,
        fallback: Option<&Value>,
        targets: &BTreeMap<String, EndpointTarget>,
    ) -> Option<PlannedRoute> {
        let fallback = fallback?;
        let plan = self.plan_route(fallback, "fallback", targets, true);
        if let Some(reason) = &plan.unusable {
            self.warn(format!("the fallback route is commented out: {reason}"));
        }
        Some(plan)
    }

    fn write_fallback(&mut self, out: &mut TomlText, fallback: Option<&PlannedRoute>) {
        let Some(fallback) = fallback else {
            out.comment(
                "The template has no fallbackRoute. An IoT hub deployed from an ARM template without \
                 one has its fallback route disabled (unlike one created in the portal or with the \
                 Azure CLI, where it is on and sends to `events`), so device messages that match no \
                 route are dropped. hubroute without a [fallback] section does the same. To keep \
                 them, add:\n[fallback]\nendpoint = \"<an endpoint above>\"",
            );
            out.blank();
            return;
        };
        for note in &fallback.notes {
            out.comment(note);
        }
        out.comment(
            "The fallback route, as the template sets it: device messages that match no enabled \
             route go here when it is enabled.",
        );
        if let Some(reason) = &fallback.unusable {
            out.comment(&format!("Commented out: {reason}."));
        }
        out.set_disabled(fallback.unusable.is_some());
        out.header("[fallback]");
        out.key(
            "endpoint",
            &TomlValue::String(fallback.endpoint.clone()),
            None,
        );
        out.key(
            "condition",
            &TomlValue::String(fallback.condition.clone()),
            None,
        );
        out.key("enabled", &TomlValue::Bool(fallback.enabled), None);
        out.set_disabled(false);
        self.counts.fallback = fallback.unusable.is_none() && fallback.enabled;
        out.blank();
    }

    fn plan_enrichments(
        &mut self,
        enrichments: Option<&Value>,
        targets: &BTreeMap<String, EndpointTarget>,
    ) -> Vec<PlannedEnrichment> {
        let Some(enrichments) = enrichments.and_then(Value::as_array) else {
            return Vec::new();
        };
        let mut keys = HashSet::new();
        let mut planned = Vec::new();
        for (index, enrichment) in enrichments.iter().enumerate() {
            let mut problems = Vec::new();
            let mut notes = Vec::new();
            let mut text =
                |field: &str| match member(enrichment, field).map(|v| self.template.string(v)) {
                    Some(Ok(text)) => text,
                    Some(Err(u)) => {
                        problems.push(format!(
                            "its {field} is computed at deployment ({})",
                            u.reason
                        ));
                        u.expression
                    }
                    None => {
                        problems.push(format!("it has no {field}"));
                        String::new()
                    }
                };
            let key = text("key");
            let value = text("value");
            if key.is_empty() || key.chars().count() > limits::ENRICHMENT_KEY_CHARS {
                problems.push(format!(
                    "its key must have 1 to {} characters",
                    limits::ENRICHMENT_KEY_CHARS
                ));
            }
            if value.chars().count() > limits::ENRICHMENT_VALUE_CHARS {
                problems.push(format!(
                    "its value exceeds {} characters",
                    limits::ENRICHMENT_VALUE_CHARS
                ));
            }
            if !keys.insert(key.clone()) {
                problems.push("another enrichment has the same key".to_owned());
            }
            if index >= limits::ENRICHMENTS {
                problems.push(format!(
                    "IoT Hub and hubroute allow at most {} enrichments; this is enrichment {}",
                    limits::ENRICHMENTS,
                    index + 1
                ));
            }
            let mut endpoints = Vec::new();
            let mut named = Vec::new();
            for name in member(enrichment, "endpointNames")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = self.template.string(name).unwrap_or_else(|u| u.expression);
                named.push(name.clone());
                match targets.get(&name) {
                    Some(EndpointTarget::Mapped(mapped)) => endpoints.push(mapped.clone()),
                    Some(EndpointTarget::Unusable(mapped, why)) => {
                        notes.push(format!("IoT Hub also adds it to `{mapped}`, which {why}"));
                    }
                    None if name.eq_ignore_ascii_case("events") => notes.push(
                        "IoT Hub also adds it to messages on the built-in endpoint `events`; \
                         hubroute reads that endpoint and enriches only what it delivers"
                            .to_owned(),
                    ),
                    None => notes.push(format!(
                        "its endpoint `{name}` is not defined in the template"
                    )),
                }
            }
            if endpoints.is_empty() {
                problems.push("none of its endpoints is one hubroute delivers to".to_owned());
            }
            for note in &notes {
                self.warn(format!("enrichment `{key}`: {note}"));
            }
            let unusable = (!problems.is_empty()).then(|| problems.join("; "));
            if let Some(reason) = &unusable {
                self.warn(format!("enrichment `{key}` is commented out: {reason}"));
            }
            // A commented-out enrichment keeps the template's endpoint names, to be edited.
            let endpoints = if unusable.is_some() { named } else { endpoints };
            planned.push(PlannedEnrichment {
                key,
                value,
                endpoints,
                unusable,
                notes,
            });
        }
        planned
    }

    fn write_enrichments(&mut self, out: &mut TomlText, enrichments: &[PlannedEnrichment]) {
        for enrichment in enrichments {
            for note in &enrichment.notes {
                out.comment(&format!("Note: {note}."));
            }
            if let Some(reason) = &enrichment.unusable {
                out.comment(&format!("Commented out: {reason}."));
            }
            out.set_disabled(enrichment.unusable.is_some());
            out.header("[[enrichments]]");
            out.key("key", &TomlValue::String(enrichment.key.clone()), None);
            out.key("value", &TomlValue::String(enrichment.value.clone()), None);
            out.key(
                "endpoints",
                &TomlValue::Strings(enrichment.endpoints.clone()),
                None,
            );
            out.set_disabled(false);
            if enrichment.unusable.is_none() {
                self.counts.enrichments += 1;
            }
            out.blank();
        }
    }

    fn footer(&mut self, out: &mut TomlText) {
        out.comment("Environment variables this file reads (`hubroute check` and `hubroute run` need them set):");
        for variable in self.environment.values() {
            let only = if variable.commented_out {
                " (only once you uncomment the block that uses it)"
            } else {
                ""
            };
            out.comment(&format!(
                "  {}{only}: {}",
                variable.name, variable.description
            ));
        }
        if !self.warnings.is_empty() {
            out.comment("");
            out.comment("Not imported as it was (each is also commented where it applies):");
            for warning in &self.warnings {
                out.comment(&format!("  - {warning}"));
            }
        }
    }
}

/// An enrichment as the importer decided to write it.
struct PlannedEnrichment {
    key: String,
    value: String,
    endpoints: Vec<String>,
    unusable: Option<String>,
    notes: Vec<String>,
}

/// IoT Hub's (and hubroute's) rule for route and endpoint names: `^[A-Za-z0-9-._]{1,64}$`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}
