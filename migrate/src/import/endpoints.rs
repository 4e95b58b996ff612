//! IoT Hub's custom endpoints (`properties.routing.endpoints`) as hubroute sinks.
//!
//! | IoT Hub | hubroute |
//! |---|---|
//! | `storageContainers` | `type = "storage"` on an Azure store, with the same encoding, file name format, batch frequency and chunk size |
//! | `eventHubs` | `type = "eventhubs"` |
//! | `serviceBusQueues`, `serviceBusTopics` | `type = "servicebus"` |
//! | `cosmosDBSqlContainers` (`cosmosDBSqlCollections` before 2022) | a commented-out `type = "postgres"` endpoint: hubroute has no Cosmos DB sink |
//! | anything else (`eventStreams`, …) | a comment: no sink |
//!
//! Only values that are not secret are taken from the template (account, namespace and entity
//! names, read from a literal connection string or endpoint URI); keys become `${NAME}` references
//! named after the endpoint. Identity-based endpoints are mapped with a warning, because the AMQP
//! sinks authenticate with SAS only, and the storage sink with whatever Azure credential its
//! environment provides.

use std::collections::HashSet;

use serde_json::Value;

use super::toml_text::TomlValue;
use crate::arm::{Template, member};

/// What a route's endpoint name stands for in the output.
#[derive(Debug, Clone)]
pub(super) enum EndpointTarget {
    /// A live endpoint of this name.
    Mapped(String),
    /// An endpoint written commented out (or only as a comment), and why, as "…, which {why}".
    Unusable(String, String),
}

/// An environment variable an endpoint reads.
#[derive(Debug, Clone)]
pub(super) struct Variable {
    pub(super) name: String,
    pub(super) description: String,
}

/// One endpoint of the output: its sink's keys and the comments around it.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// The name routes use for it in the template (evaluated, else the expression as written).
    pub(super) key: String,
    /// The name written.
    pub(super) name: String,
    /// Whether the block is live (else written commented out).
    pub(super) usable: bool,
    /// Why not, for routes and enrichments that name it.
    unusable_reason: Option<String>,
    /// `(sub-table of the sink, key, value, trailing comment)`, in writing order.
    pub(super) sink: Vec<(String, String, TomlValue, Option<String>)>,
    /// Comments above the block.
    pub(super) notes: Vec<String>,
    /// What could not be mapped as it was.
    pub(super) warnings: Vec<String>,
    /// Environment variables the block reads.
    pub(super) variables: Vec<Variable>,
}

impl Endpoint {
    pub(super) fn target(&self) -> EndpointTarget {
        match &self.unusable_reason {
            None => EndpointTarget::Mapped(self.name.clone()),
            Some(reason) => EndpointTarget::Unusable(self.name.clone(), reason.clone()),
        }
    }

    fn new(key: String, name: String) -> Self {
        Self {
            key,
            name,
            usable: true,
            unusable_reason: None,
            sink: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
            variables: Vec::new(),
        }
    }

    fn set(&mut self, key: &str, value: TomlValue, note: Option<String>) {
        self.sink.push((String::new(), key.to_owned(), value, note));
    }

    fn set_in(&mut self, table: &str, key: &str, value: TomlValue, note: Option<String>) {
        self.sink
            .push((table.to_owned(), key.to_owned(), value, note));
    }

    fn variable(&mut self, name: String, description: String) -> TomlValue {
        let reference = format!("${{{name}}}");
        self.variables.push(Variable { name, description });
        TomlValue::String(reference)
    }

    fn unusable(&mut self, reason: String) {
        self.usable = false;
        self.unusable_reason = Some(reason);
    }
}

/// The endpoint kinds of `properties.routing.endpoints`, as ARM names them.
const STORAGE: &str = "storageContainers";
const EVENT_HUBS: &str = "eventHubs";
const SERVICE_BUS_QUEUES: &str = "serviceBusQueues";
const SERVICE_BUS_TOPICS: &str = "serviceBusTopics";
const COSMOS_CONTAINERS: &str = "cosmosDBSqlContainers";
const COSMOS_COLLECTIONS: &str = "cosmosDBSqlCollections";

const KINDS: [&str; 6] = [
    STORAGE,
    EVENT_HUBS,
    SERVICE_BUS_QUEUES,
    SERVICE_BUS_TOPICS,
    COSMOS_CONTAINERS,
    COSMOS_COLLECTIONS,
];

/// IoT Hub's storage ranges (`batchFrequencyInSeconds`, `maxChunkSizeInBytes`), as the storage
/// sink checks them.
const BATCH_FREQUENCY: std::ops::RangeInclusive<i64> = 60..=720;
const MAX_CHUNK_BYTES: std::ops::RangeInclusive<i64> = 10_485_760..=524_288_000;
const FILE_NAME_TOKENS: [&str; 7] = [
    "{iothub}",
    "{partition}",
    "{YYYY}",
    "{MM}",
    "{DD}",
    "{HH}",
    "{mm}",
];

/// Every endpoint of `endpoints` (the `routing.endpoints` object), kinds in ARM's order.
pub(super) fn plan(template: Template<'_>, endpoints: &Value, hub_name: &str) -> Vec<Endpoint> {
    let mut planner = Planner {
        template,
        hub_name,
        prefixes: HashSet::new(),
        names: HashSet::new(),
    };
    let Some(kinds) = endpoints.as_object() else {
        return Vec::new();
    };
    // Known kinds in ARM's order, then the others as the input lists them.
    let rank = |kind: &str| {
        KINDS
            .iter()
            .position(|known| known.eq_ignore_ascii_case(kind))
            .unwrap_or(KINDS.len())
    };
    let mut kinds: Vec<(&String, &Value)> = kinds.iter().collect();
    kinds.sort_by_key(|(kind, _)| rank(kind));
    let mut planned = Vec::new();
    for (kind, list) in kinds {
        let kind = KINDS.get(rank(kind)).copied().unwrap_or(kind.as_str());
        for (index, spec) in list.as_array().into_iter().flatten().enumerate() {
            planned.push(planner.endpoint(kind, index, spec));
        }
    }
    planned
}

struct Planner<'a> {
    template: Template<'a>,
    hub_name: &'a str,
    /// Environment variable prefixes handed out, so two endpoints never share a variable.
    prefixes: HashSet<String>,
    /// Endpoint names written, so that two placeholder names never collide.
    names: HashSet<String>,
}

impl Planner<'_> {
    /// The evaluated string at `field` of `spec`; `Err` with the reason when it depends on the
    /// deployment, `Ok(None)` when absent.
    fn text(&self, spec: &Value, field: &str) -> Result<Option<String>, String> {
        match member(spec, field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => self
                .template
                .string(value)
                .map(Some)
                .map_err(|u| format!("`{}` ({})", u.expression, u.reason)),
        }
    }

    fn endpoint(&mut self, kind: &str, index: usize, spec: &Value) -> Endpoint {
        let (key, name, name_problem) = match self.text(spec, "name") {
            Ok(Some(name)) if super::valid_name(&name) => (name.clone(), name, None),
            Ok(Some(name)) => (
                name.clone(),
                format!("{kind}-{index}"),
                Some(format!("its name `{name}` is not a valid endpoint name")),
            ),
            Ok(None) => (
                String::new(),
                format!("{kind}-{index}"),
                Some("it has no name".to_owned()),
            ),
            Err(why) => {
                let expression = member(spec, "name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (
                    expression,
                    format!("{kind}-{index}"),
                    Some(format!("its name is computed at deployment: {why}")),
                )
            }
        };
        let mut name = name;
        while !self.names.insert(name.clone()) {
            name.push('_');
        }
        let mut endpoint = Endpoint::new(key, name);
        if let Some(problem) = name_problem {
            endpoint.warnings.push(format!(
                "{problem}; written as `{}`: rename it and its routes",
                endpoint.name
            ));
        }
        let prefix = self.prefix(&endpoint.name);
        let identity = self
            .text(spec, "authenticationType")
            .ok()
            .flatten()
            .is_some_and(|a| a.eq_ignore_ascii_case("identityBased"));
        match kind {
            STORAGE => self.storage(&mut endpoint, spec, &prefix, identity),
            EVENT_HUBS => self.event_hub(&mut endpoint, spec, &prefix, identity),
            SERVICE_BUS_QUEUES => {
                self.service_bus(&mut endpoint, spec, &prefix, identity, "queue");
            }
            SERVICE_BUS_TOPICS => {
                self.service_bus(&mut endpoint, spec, &prefix, identity, "topic");
            }
            COSMOS_CONTAINERS | COSMOS_COLLECTIONS => self.cosmos(&mut endpoint, spec, &prefix),
            other => {
                endpoint.notes.push(format!(
                    "IoT Hub endpoint `{}` of kind `{other}`: hubroute has no sink for it (it \
                     delivers to storage, parquet, postgres, sqlite, webhook, eventhubs and \
                     servicebus endpoints). Routes to it are commented out below.",
                    endpoint.name
                ));
                endpoint.warnings.push(format!(
                    "the endpoint kind `{other}` has no hubroute sink; routes to it are commented out"
                ));
                endpoint.unusable(format!("is of kind `{other}`, without a hubroute sink"));
            }
        }
        endpoint
    }

    /// An environment variable prefix for `name`: `contosoStorage-1` → `CONTOSO_STORAGE_1`.
    fn prefix(&mut self, name: &str) -> String {
        let mut prefix = String::new();
        let mut previous_lower = false;
        for c in name.chars() {
            if c.is_ascii_alphanumeric() {
                if c.is_ascii_uppercase() && previous_lower {
                    prefix.push('_');
                }
                prefix.push(c.to_ascii_uppercase());
                previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            } else {
                if !prefix.ends_with('_') {
                    prefix.push('_');
                }
                previous_lower = false;
            }
        }
        let mut prefix = prefix.trim_matches('_').to_owned();
        if !prefix.starts_with(|c: char| c.is_ascii_alphabetic()) {
            prefix.insert_str(0, "ENDPOINT_");
        }
        let base = prefix.clone();
        let mut n = 2;
        while !self.prefixes.insert(prefix.clone()) {
            prefix = format!("{base}_{n}");
            n += 1;
        }
        prefix
    }

    /// The fields of a literal connection string (`az iot hub show` masks the key but keeps the
    /// rest); nothing for an expression or an absent one.
    fn connection_fields(&self, spec: &Value) -> Vec<(String, String)> {
        let Ok(Some(text)) = self.text(spec, "connectionString") else {
            return Vec::new();
        };
        text.split(';')
            .filter_map(|part| part.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect()
    }

    fn resource_group(&self, spec: &Value) -> String {
        self.text(spec, "resourceGroup")
            .ok()
            .flatten()
            .unwrap_or_else(|| "<resource group>".to_owned())
    }

    fn storage(&self, endpoint: &mut Endpoint, spec: &Value, prefix: &str, identity: bool) {
        let fields = self.connection_fields(spec);
        let field = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let uri = self.text(spec, "endpointUri").ok().flatten();
        let uri_host = uri.as_deref().and_then(host_of);
        let account = field("accountname").or_else(|| {
            uri_host
                .as_deref()
                .and_then(|h| h.split_once(".blob."))
                .map(|(account, _)| account.to_owned())
        });
        let container = self.text(spec, "containerName");
        endpoint.notes.push(format!(
            "IoT Hub storage endpoint `{}`: the same files (record schema, encoding, blob names, \
             batching) in the same container.",
            endpoint.name
        ));
        endpoint.set("type", TomlValue::String("storage".to_owned()), None);
        endpoint.set("name", TomlValue::String(endpoint.name.clone()), None);
        let encoding = match self.text(spec, "encoding") {
            Ok(None) => Some(("avro", "IoT Hub's default".to_owned())),
            Ok(Some(e)) => match e.to_ascii_lowercase().as_str() {
                "avro" => Some(("avro", format!("IoT Hub: {e}"))),
                "avrodeflate" => Some(("avro_deflate", format!("IoT Hub: {e}"))),
                "json" => Some(("json", format!("IoT Hub: {e}"))),
                _ => {
                    endpoint
                        .warnings
                        .push(format!("encoding `{e}` is not Avro, AvroDeflate or JSON; hubroute's default (Avro) is used"));
                    None
                }
            },
            Err(why) => {
                endpoint.warnings.push(format!(
                    "the encoding is computed at deployment {why}; hubroute's default (Avro) is used"
                ));
                None
            }
        };
        if let Some((encoding, note)) = encoding {
            endpoint.set(
                "encoding",
                TomlValue::String(encoding.to_owned()),
                Some(note),
            );
        }
        match self.text(spec, "fileNameFormat") {
            Ok(Some(format)) => {
                let missing: Vec<&str> = FILE_NAME_TOKENS
                    .iter()
                    .copied()
                    .filter(|t| !format.contains(t))
                    .collect();
                if missing.is_empty() {
                    endpoint.set("file_name_format", TomlValue::String(format), None);
                } else {
                    endpoint.warnings.push(format!(
                        "fileNameFormat `{format}` lacks {}; IoT Hub's default format is used",
                        missing.join(" ")
                    ));
                }
            }
            Ok(None) => {}
            Err(why) => endpoint.warnings.push(format!(
                "fileNameFormat is computed at deployment {why}; IoT Hub's default format is used"
            )),
        }
        endpoint.set(
            "iothub",
            TomlValue::String(self.hub_name.to_owned()),
            Some("`{iothub}` in blob names: the hub's name, so names continue".to_owned()),
        );
        self.bounded(
            endpoint,
            spec,
            "batchFrequencyInSeconds",
            "batch_frequency",
            &BATCH_FREQUENCY,
        );
        self.bounded(
            endpoint,
            spec,
            "maxChunkSizeInBytes",
            "max_chunk_bytes",
            &MAX_CHUNK_BYTES,
        );
        endpoint.set_in("store", "kind", TomlValue::String("azure".to_owned()), None);
        let account_value = match &account {
            Some(account) => TomlValue::String(account.clone()),
            None => endpoint.variable(
                format!("{prefix}_STORAGE_ACCOUNT"),
                format!(
                    "The storage account of endpoint `{}` (the template computes it at \
                     deployment): `az iot hub routing-endpoint show --hub-name <hub> \
                     --endpoint-name {} --query connectionString` shows `AccountName=`.",
                    endpoint.name, endpoint.name
                ),
            ),
        };
        endpoint.set_in("store", "account", account_value, None);
        let container_value = match container {
            Ok(Some(container)) => TomlValue::String(container),
            Ok(None) | Err(_) => {
                endpoint.warnings.push(
                    "the container name is not known before deployment; it is read from the environment"
                        .to_owned(),
                );
                endpoint.variable(
                    format!("{prefix}_CONTAINER"),
                    format!("The blob container of endpoint `{}`.", endpoint.name),
                )
            }
        };
        endpoint.set_in("store", "container", container_value, None);
        if let Some(blob_endpoint) = field("blobendpoint").or_else(|| {
            uri.clone().filter(|_| {
                !uri_host
                    .as_deref()
                    .is_some_and(|h| h.ends_with(".blob.core.windows.net"))
            })
        }) {
            endpoint.set_in(
                "store",
                "endpoint",
                TomlValue::String(blob_endpoint.trim_end_matches('/').to_owned()),
                None,
            );
        }
        if identity {
            endpoint.warnings.push(
                "IoT Hub writes with a managed identity (identityBased); hubroute's storage sink \
                 signs in with the Azure credential of its environment (managed identity, \
                 AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or the Azure CLI's login): \
                 give that identity the Storage Blob Data Contributor role on the container"
                    .to_owned(),
            );
        } else {
            let account = account.as_deref().unwrap_or("<account>");
            let key = endpoint.variable(
                format!("{prefix}_STORAGE_ACCOUNT_KEY"),
                format!(
                    "An access key of the storage account of endpoint `{}`: `az storage account \
                     keys list --account-name {account} --query [0].value -o tsv` (portal: \
                     storage account → Access keys).",
                    endpoint.name
                ),
            );
            endpoint.set_in("store", "access_key", key, None);
        }
    }

    /// An integer setting within IoT Hub's range; out of range (or computed at deployment) it is
    /// left to hubroute's default with a warning.
    fn bounded(
        &self,
        endpoint: &mut Endpoint,
        spec: &Value,
        field: &str,
        key: &str,
        range: &std::ops::RangeInclusive<i64>,
    ) {
        let Some(value) = member(spec, field) else {
            return;
        };
        match self.template.evaluate(value) {
            Ok(value) => match value.as_i64() {
                Some(n) if range.contains(&n) => {
                    endpoint.set(key, TomlValue::Integer(n), Some(format!("IoT Hub: {field}")));
                }
                _ => endpoint.warnings.push(format!(
                    "{field} = {value} is outside IoT Hub's range {}..={}; hubroute's default is used",
                    range.start(),
                    range.end()
                )),
            },
            Err(u) => endpoint.warnings.push(format!(
                "{field} is computed at deployment ({}); hubroute's default is used",
                u.reason
            )),
        }
    }

    /// Namespace host and entity of an Event Hubs or Service Bus endpoint, from `endpointUri`,
    /// `entityPath` or a literal connection string.
    fn namespace_and_entity(
        &self,
        spec: &Value,
    ) -> (Option<String>, Option<String>, Option<String>) {
        let fields = self.connection_fields(spec);
        let field = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let namespace = self
            .text(spec, "endpointUri")
            .ok()
            .flatten()
            .or_else(|| field("endpoint"))
            .as_deref()
            .and_then(host_of);
        let entity = self
            .text(spec, "entityPath")
            .ok()
            .flatten()
            .or_else(|| field("entitypath"));
        (namespace, entity, field("sharedaccesskeyname"))
    }

    fn event_hub(&self, endpoint: &mut Endpoint, spec: &Value, prefix: &str, identity: bool) {
        let (namespace, entity, policy) = self.namespace_and_entity(spec);
        endpoint.notes.push(format!(
            "IoT Hub Event Hubs endpoint `{}`: each message as IoT Hub sends it (body as is, system \
             properties as message annotations), partitioned by device id.",
            endpoint.name
        ));
        endpoint.set("type", TomlValue::String("eventhubs".to_owned()), None);
        endpoint.set("name", TomlValue::String(endpoint.name.clone()), None);
        let description = format!(
            "The connection string of a Send policy of event hub `{}` in namespace `{}` (endpoint \
             `{}`): `az eventhubs eventhub authorization-rule keys list --resource-group {} \
             --namespace-name {} --eventhub-name {} --name {} --query primaryConnectionString -o tsv`.",
            entity.as_deref().unwrap_or("<event hub>"),
            namespace.as_deref().unwrap_or("<namespace>"),
            endpoint.name,
            self.resource_group(spec),
            namespace
                .as_deref()
                .map_or("<namespace>", |n| n.split('.').next().unwrap_or(n)),
            entity.as_deref().unwrap_or("<event hub>"),
            policy.as_deref().unwrap_or("<policy>"),
        );
        let reference = endpoint.variable(format!("{prefix}_CONNECTION_STRING"), description);
        endpoint.set("connection_string", reference, None);
        match entity {
            Some(entity) => endpoint.set("event_hub", TomlValue::String(entity), None),
            None => endpoint.notes.push(
                "The template names no event hub: the connection string must carry \
                 `EntityPath=<event hub>` (an event hub's own policy does)."
                    .to_owned(),
            ),
        }
        if identity {
            endpoint.warnings.push(
                "IoT Hub sends with a managed identity (identityBased); hubroute's eventhubs sink \
                 authenticates with a shared access policy only: create one with Send on the event \
                 hub and give its connection string"
                    .to_owned(),
            );
        }
    }

    fn service_bus(
        &self,
        endpoint: &mut Endpoint,
        spec: &Value,
        prefix: &str,
        identity: bool,
        entity_kind: &str,
    ) {
        let (namespace, entity, policy) = self.namespace_and_entity(spec);
        endpoint.notes.push(format!(
            "IoT Hub Service Bus {entity_kind} endpoint `{}`: each message as IoT Hub sends it \
             (MessageId, ContentType, … as broker properties; iothub-* as application properties). \
             The {entity_kind} must not use sessions or duplicate detection, as in IoT Hub.",
            endpoint.name
        ));
        endpoint.set("type", TomlValue::String("servicebus".to_owned()), None);
        endpoint.set("name", TomlValue::String(endpoint.name.clone()), None);
        let description = format!(
            "The connection string of a Send policy of Service Bus {entity_kind} `{}` in namespace \
             `{}` (endpoint `{}`): `az servicebus {entity_kind} authorization-rule keys list \
             --resource-group {} --namespace-name {} --{entity_kind}-name {} --name {} --query \
             primaryConnectionString -o tsv`.",
            entity.as_deref().unwrap_or("<name>"),
            namespace.as_deref().unwrap_or("<namespace>"),
            endpoint.name,
            self.resource_group(spec),
            namespace
                .as_deref()
                .map_or("<namespace>", |n| n.split('.').next().unwrap_or(n)),
            entity.as_deref().unwrap_or("<name>"),
            policy.as_deref().unwrap_or("<policy>"),
        );
        let reference = endpoint.variable(format!("{prefix}_CONNECTION_STRING"), description);
        endpoint.set("connection_string", reference, None);
        match entity {
            Some(entity) => endpoint.set("entity", TomlValue::String(entity), None),
            None => endpoint.notes.push(format!(
                "The template names no {entity_kind}: the connection string must carry \
                 `EntityPath=<{entity_kind}>` (the {entity_kind}'s own policy does)."
            )),
        }
        if identity {
            endpoint.warnings.push(format!(
                "IoT Hub sends with a managed identity (identityBased); hubroute's servicebus sink \
                 authenticates with a shared access policy only: create one with Send on the \
                 {entity_kind} and give its connection string"
            ));
        }
    }

    fn cosmos(&self, endpoint: &mut Endpoint, spec: &Value, prefix: &str) {
        let database = self.text(spec, "databaseName").ok().flatten();
        let container = self
            .text(spec, "containerName")
            .ok()
            .flatten()
            .or_else(|| self.text(spec, "collectionName").ok().flatten());
        let partition_key = self
            .text(spec, "partitionKeyName")
            .ok()
            .flatten()
            .or_else(|| self.text(spec, "PartitionKeyName").ok().flatten());
        let mut note = format!(
            "IoT Hub Cosmos DB endpoint `{}` (database `{}`, container `{}`): hubroute has no \
             Cosmos DB sink. The nearest is a PostgreSQL table (Azure Database for PostgreSQL, or \
             Azure Cosmos DB for PostgreSQL): one row per message, idempotent on (event_hub, \
             partition, sequence_number), the JSON body in a jsonb column. Create the database, \
             fill in the block below and uncomment it, together with the routes to it.",
            endpoint.name,
            database.as_deref().unwrap_or("?"),
            container.as_deref().unwrap_or("?"),
        );
        if let Some(key) = partition_key {
            note.push_str(&format!(
                " IoT Hub's synthetic partition key `{key}` has no counterpart: PostgreSQL needs none."
            ));
        }
        endpoint.notes.push(note);
        endpoint.warnings.push(
            "Cosmos DB has no hubroute sink; written as a commented-out PostgreSQL endpoint, and \
             the routes to it are commented out"
                .to_owned(),
        );
        endpoint.set("type", TomlValue::String("postgres".to_owned()), None);
        endpoint.set("name", TomlValue::String(endpoint.name.clone()), None);
        let host = endpoint.variable(
            format!("{prefix}_PGHOST"),
            format!(
                "The PostgreSQL server replacing Cosmos DB endpoint `{}`.",
                endpoint.name
            ),
        );
        endpoint.set("host", host, None);
        endpoint.set(
            "dbname",
            TomlValue::String(database.unwrap_or_else(|| "iothub".to_owned())),
            None,
        );
        endpoint.set("user", TomlValue::String("hubroute".to_owned()), None);
        let password = endpoint.variable(
            format!("{prefix}_PGPASSWORD"),
            format!(
                "The password of that PostgreSQL server's `hubroute` user (endpoint `{}`).",
                endpoint.name
            ),
        );
        endpoint.set("password", password, None);
        endpoint.set(
            "sslmode",
            TomlValue::String("verify-full".to_owned()),
            Some("Azure's PostgreSQL services require TLS".to_owned()),
        );
        endpoint.set_in(
            "table",
            "name",
            TomlValue::String(
                container
                    .map(|c| c.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_"))
                    .unwrap_or_else(|| "messages".to_owned()),
            ),
            None,
        );
        endpoint.unusable(
            "is a Cosmos DB endpoint, written as a commented-out PostgreSQL endpoint".to_owned(),
        );
    }
}

/// The host of `sb://host/`, `https://host:443/path` or `Endpoint=sb://host/` values.
fn host_of(uri: &str) -> Option<String> {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_prefixes_are_upper_snake_and_unique() {
        let mut planner = Planner {
            template: Template::of(&Value::Null),
            hub_name: "hub",
            prefixes: HashSet::new(),
            names: HashSet::new(),
        };
        let names = ["contosoStorageEndpoint", "sb-queue.1", "SB_QUEUE_1", "2nd"];
        let prefixes: Vec<String> = names.iter().map(|n| planner.prefix(n)).collect();
        assert_eq!(
            prefixes,
            [
                "CONTOSO_STORAGE_ENDPOINT",
                "SB_QUEUE_1",
                "SB_QUEUE_1_2",
                "ENDPOINT_2ND"
            ]
        );
    }

    #[test]
    fn hosts_of_uris_and_connection_string_endpoints() {
        assert_eq!(
            host_of("sb://ns.servicebus.windows.net/").as_deref(),
            Some("ns.servicebus.windows.net")
        );
        assert_eq!(
            host_of("https://acct.blob.core.windows.net:443/").as_deref(),
            Some("acct.blob.core.windows.net")
        );
        assert_eq!(host_of(""), None);
    }
}
