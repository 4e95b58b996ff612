//! The engine's `/routes` summary as the view reads it: route names in configuration order, which
//! endpoint each feeds, endpoint types and the partition ids.
//!
//! Every field is optional, and unknown fields are ignored, so that a view of one version reads the
//! summary of another; what is missing is simply not shown.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The parts of `GET /routes` the view shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutesInfo {
    /// `hub_name` of the configuration.
    pub hub_name: Option<String>,
    /// The event hub being read.
    pub event_hub: Option<String>,
    /// Partition ids being read.
    pub partitions: Vec<String>,
    /// Routes in configuration order.
    pub routes: Vec<RouteInfo>,
    /// The fallback route, if configured.
    pub fallback: Option<FallbackInfo>,
    /// Endpoints in configuration order.
    pub endpoints: Vec<EndpointInfo>,
}

/// One route of `/routes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteInfo {
    /// The route's name.
    pub name: String,
    /// The endpoint it delivers to.
    pub endpoint: Option<String>,
    /// Whether it is enabled.
    pub enabled: Option<bool>,
}

/// The fallback route of `/routes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackInfo {
    /// The endpoint it delivers to.
    pub endpoint: Option<String>,
    /// Whether it is enabled.
    pub enabled: Option<bool>,
}

/// One endpoint of `/routes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointInfo {
    /// The endpoint's name.
    pub name: String,
    /// The sink type (`parquet`, `postgres`, `sqlite`, `webhook`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl RoutesInfo {
    /// Reads the JSON body of `GET /routes`.
    pub fn parse(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::Routes {
            problem: e.to_string(),
        })
    }

    /// Reads the summary from an already parsed JSON value (the engine builds its status page from
    /// the same value it serves at `/routes`).
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        serde_json::from_value(value).map_err(|e| Error::Routes {
            problem: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_engines_summary_and_ignores_what_it_does_not_know() {
        let json = r#"{
            "hub_name": "hub", "event_hub": "eh", "partitions": ["0", "1"],
            "routes": [{"name": "a", "source": "DeviceMessages", "condition": "true",
                        "endpoint": "lake", "enabled": true, "matched": 3, "future": [1]}],
            "fallback": null,
            "endpoints": [{"name": "lake", "type": "parquet", "status": "healthy", "last_error": null}],
            "events_routed": 3, "something_new": {"x": 1}
        }"#;
        let info = RoutesInfo::parse(json).unwrap();
        assert_eq!(info.partitions, ["0", "1"]);
        assert_eq!(info.routes[0].endpoint.as_deref(), Some("lake"));
        assert_eq!(info.endpoints[0].kind.as_deref(), Some("parquet"));
        assert_eq!(RoutesInfo::parse("{}").unwrap(), RoutesInfo::default());
        let error = RoutesInfo::parse("[1]").unwrap_err().to_string();
        assert!(error.contains("/routes"), "{error}");
    }
}
