//! Where the object-store sinks (Parquet, dead letters) write: the local filesystem by default, Azure
//! Blob Storage (Azurite included) or S3, built into an `Arc<dyn ObjectStore>`.
//!
//! Secrets are never required in configuration files: every backend first reads the standard
//! environment variables of its SDK (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ... through object_store's `from_env`), and values in
//! the file override them. Secret values are wrapped in [`Secret`], whose `Debug` prints `***`; a
//! secret written as `${NAME}` is read from the environment variable `NAME` when the file is loaded.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::local::LocalFileSystem;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};
use serde::Deserialize;

use crate::{Error, Result};

/// A secret string (key, password, DSN, header value): never printed. In configuration files it is a
/// string; `"${NAME}"` takes the value of environment variable `NAME` instead (an error if unset).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        match raw.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(variable) => std::env::var(variable).map(Self).map_err(|_| {
                serde::de::Error::custom(format!(
                    "environment variable `{variable}` (named by a secret) is not set"
                ))
            }),
            None => Ok(Self(raw)),
        }
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An object store backend.
///
/// ```toml
/// store = { kind = "local", root = "/var/lib/hubroute/lake" }
/// store = { kind = "azure", container = "telemetry", use_emulator = true }
/// store = { kind = "s3", bucket = "telemetry", region = "eu-west-1" }
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectStoreConfig {
    /// A directory on the local filesystem, created if missing. Uploads are staged in a temporary
    /// file next to the target and renamed into place when complete.
    Local {
        /// The root directory; object paths are relative to it.
        root: PathBuf,
    },
    /// Azure Blob Storage or ADLS Gen2 (block blobs; multipart = staged blocks committed at the end).
    Azure {
        /// Storage account; default `AZURE_STORAGE_ACCOUNT_NAME` (or Azurite's `devstoreaccount1`).
        #[serde(default)]
        account: Option<String>,
        /// The container, which must exist.
        container: String,
        /// Account key; default `AZURE_STORAGE_ACCOUNT_KEY`. Without a key, object_store tries its
        /// other credential sources (SAS, service principal, managed identity, Azure CLI).
        #[serde(default)]
        access_key: Option<Secret>,
        /// Use the Azurite emulator's well-known account and key (endpoint from
        /// `AZURITE_BLOB_STORAGE_URL`, default `http://127.0.0.1:10000`).
        #[serde(default)]
        use_emulator: bool,
        /// Blob endpoint override, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// Amazon S3 or an S3-compatible store (multipart upload, visible only on completion).
    S3 {
        /// The bucket, which must exist.
        bucket: String,
        /// Region; default `AWS_REGION` / `AWS_DEFAULT_REGION`.
        #[serde(default)]
        region: Option<String>,
        /// Endpoint for S3-compatible stores (MinIO, ...).
        #[serde(default)]
        endpoint: Option<String>,
        /// Access key id; default `AWS_ACCESS_KEY_ID`.
        #[serde(default)]
        access_key_id: Option<String>,
        /// Secret access key; default `AWS_SECRET_ACCESS_KEY`.
        #[serde(default)]
        secret_access_key: Option<Secret>,
        /// Allow plain `http://` endpoints (local S3-compatible stores).
        #[serde(default)]
        allow_http: bool,
    },
}

impl Default for ObjectStoreConfig {
    /// `./hubroute-data` on the local filesystem.
    fn default() -> Self {
        Self::Local {
            root: PathBuf::from("hubroute-data"),
        }
    }
}

impl ObjectStoreConfig {
    /// Builds the store. `sink` names the endpoint in errors.
    pub fn build(&self, sink: &str) -> Result<Arc<dyn ObjectStore>> {
        self.build_with(sink, None)
    }

    /// Builds the store for one health probe: requests time out after `timeout` and are not
    /// retried (object_store's own retries would stretch a probe of a store that is down to
    /// minutes; the caller decides when to probe again).
    pub(crate) fn build_for_probe(
        &self,
        sink: &str,
        timeout: Duration,
    ) -> Result<Arc<dyn ObjectStore>> {
        self.build_with(sink, Some(timeout))
    }

    /// Builds the store; with `probe_timeout`, without retries and with that request timeout.
    fn build_with(
        &self,
        sink: &str,
        probe_timeout: Option<Duration>,
    ) -> Result<Arc<dyn ObjectStore>> {
        let no_retries = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let timeout = probe_timeout.map(|t| humantime::format_duration(t).to_string());
        let config_error = |problem: String| Error::Config {
            sink: sink.to_owned(),
            problem,
        };
        match self {
            Self::Local { root } => {
                std::fs::create_dir_all(root).map_err(|e| {
                    config_error(format!("cannot create directory {}: {e}", root.display()))
                })?;
                let store = LocalFileSystem::new_with_prefix(root).map_err(|e| {
                    config_error(format!("cannot use directory {}: {e}", root.display()))
                })?;
                Ok(Arc::new(store))
            }
            Self::Azure {
                account,
                container,
                access_key,
                use_emulator,
                endpoint,
            } => {
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_use_emulator(*use_emulator);
                if let Some(account) = account {
                    builder = builder.with_account(account);
                }
                if let Some(key) = access_key {
                    builder = builder.with_access_key(key.expose());
                }
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint.clone())
                        .with_allow_http(true);
                }
                if let Some(timeout) = &timeout {
                    builder = builder
                        .with_retry(no_retries)
                        .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), timeout)
                        .with_config(
                            AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
                            timeout,
                        );
                }
                let store = builder.build().map_err(|e| {
                    config_error(format!(
                        "Azure container `{container}`: {e}; set `account` and `access_key` or AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY"
                    ))
                })?;
                Ok(Arc::new(store))
            }
            Self::S3 {
                bucket,
                region,
                endpoint,
                access_key_id,
                secret_access_key,
                allow_http,
            } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http);
                if let Some(region) = region {
                    builder = builder.with_region(region);
                }
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(id) = access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(secret) = secret_access_key {
                    builder = builder.with_secret_access_key(secret.expose());
                }
                if let Some(timeout) = &timeout {
                    builder = builder
                        .with_retry(no_retries)
                        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), timeout)
                        .with_config(
                            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                            timeout,
                        );
                }
                let store = builder.build().map_err(|e| {
                    config_error(format!(
                        "S3 bucket `{bucket}`: {e}; set `region` and credentials or the AWS_* environment variables"
                    ))
                })?;
                Ok(Arc::new(store))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt as _;

    use super::*;

    #[test]
    fn secrets_are_masked_in_debug_output() {
        let config: ObjectStoreConfig = serde_json::from_str(
            r#"{"kind":"azure","container":"c","access_key":"c2VjcmV0","use_emulator":true}"#,
        )
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("c2VjcmV0"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
    }

    #[test]
    fn a_secret_can_name_an_environment_variable() {
        let path: Secret = serde_json::from_str(r#""${PATH}""#).unwrap();
        assert_eq!(path.expose(), std::env::var("PATH").unwrap());
        let error = serde_json::from_str::<Secret>(r#""${HUBROUTE_SURELY_UNSET_VARIABLE}""#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("HUBROUTE_SURELY_UNSET_VARIABLE"), "{error}");
        let plain: Secret = serde_json::from_str(r#""k$y""#).unwrap();
        assert_eq!(plain.expose(), "k$y");
    }

    #[test]
    fn configurations_parse_or_are_rejected() {
        let cases = [
            (r#"{"kind":"local","root":"/tmp/x"}"#, true),
            (r#"{"kind":"s3","bucket":"b","region":"eu-west-1"}"#, true),
            (r#"{"kind":"azure","container":"c"}"#, true),
            (r#"{"kind":"local","root":"/tmp/x","typo":1}"#, false),
            (r#"{"kind":"gcs","bucket":"b"}"#, false),
        ];
        for (json, ok) in cases {
            let parsed = serde_json::from_str::<ObjectStoreConfig>(json);
            assert_eq!(parsed.is_ok(), ok, "{json}: {parsed:?}");
        }
    }

    #[tokio::test]
    async fn the_local_backend_creates_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        let store = ObjectStoreConfig::Local { root: root.clone() }
            .build("t")
            .unwrap();
        store
            .put(&"x/y.txt".into(), bytes::Bytes::from_static(b"hi").into())
            .await
            .unwrap();
        assert!(root.join("x/y.txt").exists());
    }
}
