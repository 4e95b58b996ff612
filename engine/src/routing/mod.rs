//! IoT Hub routing semantics over one batch (reference §2): which rows go to which endpoint.
//!
//! A [`RoutingTable`] is compiled once per configuration (every condition compiled together in one
//! [`RouteSet`], the fallback condition last) and swapped whole on reload, so a batch is never routed
//! by a half-applied configuration. Routing a batch is pure CPU work on Arrow arrays: callers run it
//! off the I/O runtime. A row reaches an endpoint once even if several routes point there; a route
//! sees only rows of its source; the fallback sees device messages that matched no enabled route.

use std::collections::HashMap;

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use hubroute_message::{AppPropertyValue, Message, MessageBatchBuilder, MessageColumns};
use hubroute_queries::RouteSet;

use crate::Result;
use crate::config::{LoadedConfig, RouteSource};

#[derive(Debug)]
struct CompiledRoute {
    name: String,
    message_source: &'static str,
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
    /// A `$twin.` path, split on `.`; the literal is used when the twin lacks it.
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
    /// Per route: rows whose condition was undefined (IoT Hub logs these).
    pub undefined: Vec<usize>,
    /// Rows delivered by the fallback route.
    pub fallback: usize,
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
                message_source: route.source.message_source(),
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

    /// Decides, for every row of `batch`, which endpoints receive it.
    pub fn route(&self, batch: &RecordBatch) -> Result<RoutedBatch> {
        let outcome = self.conditions.evaluate(batch)?;
        let columns = MessageColumns::try_new(batch)?;
        let sources = columns.message_source;
        let rows = batch.num_rows();
        let mut per_endpoint = vec![Vec::new(); self.endpoints.len()];
        let mut matched = vec![0; self.routes.len()];
        let mut undefined = vec![0; self.routes.len()];
        let mut fallback = 0;
        let mut reached = vec![false; self.endpoints.len()];
        for row in 0..rows {
            let source = if sources.is_null(row) {
                "Telemetry"
            } else {
                sources.value(row)
            };
            reached.iter_mut().for_each(|r| *r = false);
            let mut any = false;
            for (i, route) in self.routes.iter().enumerate() {
                if route.enabled && route.message_source == source && outcome.matched[i].value(row)
                {
                    matched[i] += 1;
                    reached[route.endpoint] = true;
                    any = true;
                }
            }
            if let Some(endpoint) = self.fallback {
                let condition = &outcome.matched[self.routes.len()];
                if !any
                    && source == RouteSource::DeviceMessages.message_source()
                    && condition.value(row)
                {
                    fallback += 1;
                    reached[endpoint] = true;
                }
            }
            for (endpoint, _) in reached.iter().enumerate().filter(|(_, r)| **r) {
                per_endpoint[endpoint].push(u32::try_from(row).unwrap_or(u32::MAX));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.enabled {
                undefined[i] = outcome.undefined[i];
            }
        }
        Ok(RoutedBatch {
            rows: per_endpoint,
            matched,
            undefined,
            fallback,
        })
    }

    /// Which routes and endpoints `message` reaches, and what enrichments each endpoint adds.
    pub fn explain(&self, message: &Message) -> Result<Explanation> {
        let batch = MessageBatchBuilder::batch_of(std::slice::from_ref(message))?;
        let routed = self.route(&batch)?;
        let reached: Vec<usize> = (0..self.endpoints.len())
            .filter(|&endpoint| !routed.rows[endpoint].is_empty())
            .collect();
        let twin = message.twin.as_deref();
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
            enrichments: reached
                .iter()
                .filter_map(|&endpoint| {
                    let added: Vec<(String, String)> = self
                        .enrichments_of(endpoint)
                        .map(|e| (e.key.clone(), e.value.resolve(twin)))
                        .collect();
                    (!added.is_empty()).then(|| (self.endpoints[endpoint].clone(), added))
                })
                .collect(),
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
        let indices = UInt32Array::from(rows.to_vec());
        let taken = take_record_batch(batch, &indices).map_err(hubroute_message::Error::from)?;
        let enrichments: Vec<&Enrichment> = self.enrichments_of(endpoint).collect();
        if enrichments.is_empty() {
            return Ok(taken);
        }
        let columns = MessageColumns::try_new(&taken)?;
        let mut messages: Vec<Message> =
            (0..taken.num_rows()).map(|r| columns.message(r)).collect();
        for message in &mut messages {
            for e in &enrichments {
                let value = e.value.resolve(message.twin.as_deref());
                message.application_properties.retain(|(k, _)| *k != e.key);
                message
                    .application_properties
                    .push((e.key.clone(), AppPropertyValue::String(value)));
            }
        }
        Ok(MessageBatchBuilder::batch_of(&messages)?)
    }
}

impl EnrichmentValue {
    fn resolve(&self, twin: Option<&str>) -> String {
        match self {
            Self::Static(value) => value.clone(),
            Self::Twin { path, literal } => twin
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .and_then(|twin| {
                    let found = path.iter().try_fold(&twin, |node, key| node.get(key))?;
                    Some(match found {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                })
                .unwrap_or_else(|| literal.clone()),
        }
    }
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
