//! IoT Hub routing semantics over one batch (reference §2): which rows go to which endpoint.
//!
//! A [`RoutingTable`] is compiled once per configuration (every condition compiled together in one
//! [`RouteSet`], the fallback condition last) and swapped whole on reload, so a batch is never routed
//! by a half-applied configuration. Routing a batch is pure CPU work on Arrow arrays: callers run it
//! off the I/O runtime. A row reaches an endpoint once even if several routes point there; a route
//! sees only rows of its source, and its `undefined` count covers only those rows; the fallback sees
//! device messages that matched no enabled route.
//!
//! Enrichments rewrite only the application property columns of the rows bound for an endpoint; a
//! `$twin.` value is resolved once per distinct twin of the batch (the `twin` column is
//! dictionary-encoded), never once per row.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, MapArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use hubroute_message::{Message, MessageBatchBuilder, MessageColumns, columns as col};
use hubroute_queries::RouteSet;

use crate::Result;
use crate::config::{LoadedConfig, RouteSource};

#[derive(Debug)]
struct CompiledRoute {
    name: String,
    source: RouteSource,
    endpoint: usize,
    enabled: bool,
}

#[derive(Debug)]
struct Enrichment {
    key: String,
    value: EnrichmentValue,
    endpoints: Vec<usize>,
}

#[derive(Debug)]
enum EnrichmentValue {
    Static(String),
    /// A `$twin.` path, split on `.` (keys match case-insensitively, as in conditions); the
    /// literal is used when the twin lacks it.
    Twin {
        path: Vec<String>,
        literal: String,
    },
}

/// A compiled routing configuration.
#[derive(Debug)]
pub struct RoutingTable {
    endpoints: Vec<String>,
    routes: Vec<CompiledRoute>,
    /// Endpoint of the enabled fallback route; its condition is the last of `conditions`.
    fallback: Option<usize>,
    conditions: RouteSet,
    enrichments: Vec<Enrichment>,
}

/// The routing decision for one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedBatch {
    /// Per endpoint (index-aligned with [`RoutingTable::endpoints`]): the rows it receives, ascending.
    pub rows: Vec<Vec<u32>>,
    /// Per route: rows that matched (of the route's source; 0 for disabled routes).
    pub matched: Vec<usize>,
    /// Per route: rows of the route's source whose condition was undefined (IoT Hub logs these).
    pub(crate) undefined: Vec<usize>,
    /// Rows delivered by the fallback route.
    pub(crate) fallback: usize,
}

/// One row's decision, as [`RoutingTable::evaluate_rows`] hands it out (buffers reused per row).
#[derive(Debug, Default)]
struct RowOutcome {
    /// Enabled routes of the row's source whose condition is true.
    matched: Vec<usize>,
    /// Enabled routes of the row's source whose condition is undefined.
    undefined: Vec<usize>,
    /// Whether the fallback route takes the row.
    fallback: bool,
}

/// Per-row routing decisions for one batch ([`RoutingTable::decide`]): row indices, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    /// Per route (configuration order): rows it matched.
    pub matched: Vec<Vec<u32>>,
    /// Per route: rows of its source whose condition was `undefined`.
    pub undefined: Vec<Vec<u32>>,
    /// Rows the fallback route took.
    pub fallback: Vec<u32>,
    /// Rows no route matched and the fallback did not take: they reach no endpoint.
    pub unmatched: Vec<u32>,
}

/// Which routes and endpoints one message reaches (`hubroute route test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Names of the matching routes.
    pub routes: Vec<String>,
    /// Whether the fallback route took the message.
    pub fallback: bool,
    /// Endpoints the message is delivered to, each once, in configuration order.
    pub endpoints: Vec<String>,
    /// The application properties enrichments add, per endpoint of `endpoints` that has any (in
    /// the same order): `(endpoint, [(key, value), …])`, keys in configuration order.
    pub enrichments: Vec<(String, Vec<(String, String)>)>,
}

impl RoutingTable {
    /// Compiles every route of `loaded`; a condition error points at the condition in the file.
    pub fn compile(loaded: &LoadedConfig) -> Result<Self> {
        let config = &loaded.config;
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| e.name().to_owned())
            .collect();
        let index: HashMap<&str, usize> = endpoints
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let endpoint_of = |name: &str| {
            index
                .get(name)
                .copied()
                .ok_or_else(|| loaded.error_at(0, format!("endpoint `{name}` is not defined")))
        };
        let mut conditions = Vec::new();
        let mut routes = Vec::new();
        for route in &config.routes {
            compile_one(loaded, &format!("route `{}`", route.name), &route.condition)?;
            conditions.push(route.condition.get_ref().as_str());
            routes.push(CompiledRoute {
                name: route.name.clone(),
                source: route.source,
                endpoint: endpoint_of(&route.endpoint)?,
                enabled: route.enabled,
            });
        }
        let mut fallback = None;
        if let Some(f) = config.fallback.as_ref().filter(|f| f.enabled) {
            compile_one(loaded, "the fallback route", &f.condition)?;
            conditions.push(f.condition.get_ref().as_str());
            fallback = Some(endpoint_of(&f.endpoint)?);
        }
        let conditions = RouteSet::compile(conditions)?;
        let mut enrichments = Vec::new();
        for e in &config.enrichments {
            let value = if e.value.eq_ignore_ascii_case("$iothubname") {
                EnrichmentValue::Static(config.hub_name.clone())
            } else if let Some(path) = e.value.strip_prefix("$twin.") {
                EnrichmentValue::Twin {
                    path: path.split('.').map(str::to_owned).collect(),
                    literal: e.value.clone(),
                }
            } else {
                EnrichmentValue::Static(e.value.clone())
            };
            let endpoints = e
                .endpoints
                .iter()
                .map(|n| endpoint_of(n))
                .collect::<Result<_>>()?;
            enrichments.push(Enrichment {
                key: e.key.clone(),
                value,
                endpoints,
            });
        }
        Ok(Self {
            endpoints,
            routes,
            fallback,
            conditions,
            enrichments,
        })
    }

    /// Endpoint names, in configuration order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Route names, in configuration order.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.name.as_str())
    }

    /// Route names with their endpoint and whether they are enabled, in configuration order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.routes.iter().map(|r| {
            (
                r.name.as_str(),
                self.endpoints[r.endpoint].as_str(),
                r.enabled,
            )
        })
    }

    /// Whether the configuration has an enabled fallback route.
    pub fn has_fallback(&self) -> bool {
        self.fallback.is_some()
    }

    /// IoT Hub's decision for every row of `batch`, handed to `visit` row by row (in row order)
    /// after every condition has been evaluated over the whole batch. The one place routing
    /// semantics live: [`Self::route`] and [`Self::decide`] only collect what it hands out.
    fn evaluate_rows(
        &self,
        batch: &RecordBatch,
        mut visit: impl FnMut(usize, &RowOutcome),
    ) -> Result<()> {
        let outcome = self.conditions.evaluate(batch)?;
        let columns = MessageColumns::try_new(batch)?;
        let sources = columns.message_source;
        let mut row_outcome = RowOutcome::default();
        for row in 0..batch.num_rows() {
            row_outcome.matched.clear();
            row_outcome.undefined.clear();
            row_outcome.fallback = false;
            let source = RouteSource::of_message(sources.is_valid(row).then(|| sources.value(row)));
            for (i, route) in self.routes.iter().enumerate() {
                if !route.enabled || Some(route.source) != source {
                    continue;
                }
                if outcome.matched[i].value(row) {
                    row_outcome.matched.push(i);
                } else if outcome.defined[i].is_null(row) {
                    row_outcome.undefined.push(i);
                }
            }
            if self.fallback.is_some() {
                let condition = &outcome.matched[self.routes.len()];
                row_outcome.fallback = row_outcome.matched.is_empty()
                    && source == Some(RouteSource::DeviceMessages)
                    && condition.value(row);
            }
            visit(row, &row_outcome);
        }
        Ok(())
    }

    /// Decides, for every row of `batch`, which endpoints receive it.
    pub fn route(&self, batch: &RecordBatch) -> Result<RoutedBatch> {
        let mut per_endpoint = vec![Vec::new(); self.endpoints.len()];
        let mut matched = vec![0; self.routes.len()];
        let mut undefined = vec![0; self.routes.len()];
        let mut fallback = 0;
        let mut reached = vec![false; self.endpoints.len()];
        self.evaluate_rows(batch, |row, outcome| {
            reached.iter_mut().for_each(|r| *r = false);
            for &i in &outcome.matched {
                matched[i] += 1;
                reached[self.routes[i].endpoint] = true;
            }
            for &i in &outcome.undefined {
                undefined[i] += 1;
            }
            if outcome.fallback
                && let Some(endpoint) = self.fallback
            {
                fallback += 1;
                reached[endpoint] = true;
            }
            for (endpoint, _) in reached.iter().enumerate().filter(|(_, r)| **r) {
                per_endpoint[endpoint].push(u32::try_from(row).unwrap_or(u32::MAX));
            }
        })?;
        Ok(RoutedBatch {
            rows: per_endpoint,
            matched,
            undefined,
            fallback,
        })
    }

    /// Which rows of `batch` each route matched or found `undefined`, which the fallback took and
    /// which reached no endpoint: what `hubroute route test --input` counts over archived
    /// messages, batch by batch.
    pub fn decide(&self, batch: &RecordBatch) -> Result<Decisions> {
        let mut decisions = Decisions {
            matched: vec![Vec::new(); self.routes.len()],
            undefined: vec![Vec::new(); self.routes.len()],
            fallback: Vec::new(),
            unmatched: Vec::new(),
        };
        self.evaluate_rows(batch, |row, outcome| {
            let row = u32::try_from(row).unwrap_or(u32::MAX);
            for &i in &outcome.matched {
                decisions.matched[i].push(row);
            }
            for &i in &outcome.undefined {
                decisions.undefined[i].push(row);
            }
            if outcome.fallback {
                decisions.fallback.push(row);
            } else if outcome.matched.is_empty() {
                decisions.unmatched.push(row);
            }
        })?;
        Ok(decisions)
    }

    /// Which routes and endpoints `message` reaches, and what enrichments each endpoint adds.
    pub fn explain(&self, message: &Message) -> Result<Explanation> {
        let batch = MessageBatchBuilder::batch_of(std::slice::from_ref(message))?;
        self.explain_batch(&batch)
    }

    /// [`Self::explain`] for a one-row message batch (a message read from an archive file).
    pub fn explain_batch(&self, batch: &RecordBatch) -> Result<Explanation> {
        let batch = batch.slice(0, batch.num_rows().min(1));
        let routed = self.route(&batch)?;
        let reached: Vec<usize> = (0..self.endpoints.len())
            .filter(|&endpoint| !routed.rows[endpoint].is_empty())
            .collect();
        let mut enrichments = Vec::new();
        for &endpoint in &reached {
            let keys: Vec<&str> = self
                .enrichments_of(endpoint)
                .map(|e| e.key.as_str())
                .collect();
            if keys.is_empty() {
                continue;
            }
            // The enrichments as `rows_for` applies them, so the explanation cannot drift from
            // what an endpoint receives.
            let rows = self.rows_for(endpoint, &batch, &[0])?;
            let columns = MessageColumns::try_new(&rows)?;
            let added = columns
                .application_properties_of(0)
                .filter(|(name, _)| keys.contains(name))
                .map(|(name, value)| (name.to_owned(), value.unwrap_or_default().to_owned()))
                .collect();
            enrichments.push((self.endpoints[endpoint].clone(), added));
        }
        Ok(Explanation {
            routes: self
                .routes
                .iter()
                .zip(&routed.matched)
                .filter(|(_, m)| **m > 0)
                .map(|(r, _)| r.name.clone())
                .collect(),
            fallback: routed.fallback > 0,
            endpoints: reached
                .iter()
                .map(|&endpoint| self.endpoints[endpoint].clone())
                .collect(),
            enrichments,
        })
    }

    /// The enrichments of `endpoint`, in configuration order.
    fn enrichments_of(&self, endpoint: usize) -> impl Iterator<Item = &Enrichment> {
        self.enrichments
            .iter()
            .filter(move |e| e.endpoints.contains(&endpoint))
    }

    /// The rows of `batch` bound for `endpoint`, with that endpoint's enrichments added as
    /// application properties (an existing property of the same key is replaced, as IoT Hub does).
    pub fn rows_for(
        &self,
        endpoint: usize,
        batch: &RecordBatch,
        rows: &[u32],
    ) -> Result<RecordBatch> {
        // An endpoint that takes every row (a `true` route, a catch-all lake) shares the batch's
        // buffers instead of copying them.
        let every_row = rows.len() == batch.num_rows()
            && rows
                .iter()
                .enumerate()
                .all(|(index, &row)| index == row as usize);
        let taken = if every_row {
            batch.clone()
        } else {
            let indices = UInt32Array::from(rows.to_vec());
            take_record_batch(batch, &indices).map_err(hubroute_message::Error::from)?
        };
        let enrichments: Vec<&Enrichment> = self.enrichments_of(endpoint).collect();
        if enrichments.is_empty() {
            return Ok(taken);
        }
        enrich(&taken, &enrichments)
    }
}

/// Rewrites the application property columns of `batch` with `enrichments` added to every row
/// (but digital twin change events, which IoT Hub never enriches).
fn enrich(batch: &RecordBatch, enrichments: &[&Enrichment]) -> Result<RecordBatch> {
    let columns = MessageColumns::try_new(batch)?;
    // Per enrichment, its value for each distinct twin of the batch (`None`: the literal).
    let twins = columns.twin.values();
    let per_twin: Vec<Vec<Option<String>>> = enrichments
        .iter()
        .map(|e| match &e.value {
            EnrichmentValue::Static(_) => Vec::new(),
            EnrichmentValue::Twin { path, .. } => (0..twins.len())
                .map(|key| {
                    twins
                        .is_valid(key)
                        .then(|| resolve_twin_path(twins.value(key), path))
                        .flatten()
                })
                .collect(),
        })
        .collect();
    let sources = columns.message_source;
    let mut properties = hubroute_message::string_map_builder();
    let mut types = hubroute_message::string_map_builder();
    for row in 0..batch.num_rows() {
        // IoT Hub does not enrich digital twin change events (reference §2.4).
        let enriched = !(sources.is_valid(row)
            && RouteSource::DigitalTwinChangeEvents
                .message_sources()
                .contains(&sources.value(row)));
        let is_replaced = |name: &str| enriched && enrichments.iter().any(|e| e.key == name);
        for (name, value) in columns.application_properties_of(row) {
            if !is_replaced(name) {
                properties.keys().append_value(name);
                properties.values().append_option(value);
            }
        }
        for (name, type_name) in map_row(columns.application_property_types, row) {
            if !is_replaced(name) {
                types.keys().append_value(name);
                types.values().append_option(type_name);
            }
        }
        let twin = columns.twin.key(row);
        for (e, resolved) in enrichments.iter().zip(&per_twin).filter(|_| enriched) {
            let value = match &e.value {
                EnrichmentValue::Static(value) => value.as_str(),
                EnrichmentValue::Twin { literal, .. } => twin
                    .and_then(|key| resolved.get(key))
                    .and_then(Option::as_deref)
                    .unwrap_or(literal),
            };
            properties.keys().append_value(&e.key);
            properties.values().append_value(value);
        }
        properties
            .append(true)
            .map_err(hubroute_message::Error::from)?;
        types.append(true).map_err(hubroute_message::Error::from)?;
    }
    let mut replaced: Vec<ArrayRef> = batch.columns().to_vec();
    let schema = batch.schema();
    for (name, array) in [
        (col::APPLICATION_PROPERTIES, properties.finish()),
        (col::APPLICATION_PROPERTY_TYPES, types.finish()),
    ] {
        let index = schema
            .index_of(name)
            .map_err(hubroute_message::Error::from)?;
        replaced[index] = Arc::new(array);
    }
    Ok(RecordBatch::try_new(schema, replaced).map_err(hubroute_message::Error::from)?)
}

/// `(name, value)` pairs of row `row` of a string map column.
fn map_row(map: &MapArray, row: usize) -> impl Iterator<Item = (&str, Option<&str>)> {
    let offsets = map.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = map.keys().as_string::<i32>();
    let values = map.values().as_string::<i32>();
    (start..end).map(move |i| (keys.value(i), values.is_valid(i).then(|| values.value(i))))
}

/// The value at `path` of a twin's JSON as an enrichment stamps it (strings as they are, other
/// values as JSON); keys match exactly, else case-insensitively, as twin paths do in conditions.
fn resolve_twin_path(twin: &str, path: &[String]) -> Option<String> {
    let twin: serde_json::Value = serde_json::from_str(twin).ok()?;
    let found = path.iter().try_fold(&twin, |node, key| {
        let object = node.as_object()?;
        object.get(key).or_else(|| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
    })?;
    Some(match found {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn compile_one(loaded: &LoadedConfig, user: &str, condition: &toml::Spanned<String>) -> Result<()> {
    hubroute_queries::compile(condition.get_ref())
        .map(drop)
        .map_err(|e| {
            loaded.error_at(
                condition.span().start,
                format!("{user}: the condition does not compile: {e}"),
            )
        })
}

#[cfg(test)]
mod tests;
