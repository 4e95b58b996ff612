//! Reloading the routes of a running engine: [`Routes`] holds the configuration and the compiled
//! [`RoutingTable`], and [`Reloader`] swaps them when the file changes (`watch.rs` decides when).
//!
//! A reload may change routes, the fallback and enrichments only; anything else (the source,
//! endpoints, checkpoints, dead letters, service or twins settings) needs a restart and is
//! rejected, leaving the running table in place. Routers take the table once per batch, so a new
//! table applies from the next batch, never within one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::Shared;
use crate::config::LoadedConfig;
use crate::routing::RoutingTable;
use crate::{Error, Result};

/// The configuration the engine runs and the routing table compiled from it.
#[derive(Debug)]
pub(super) struct Routes {
    /// The file reloads read.
    path: PathBuf,
    /// The last configuration applied (`/routes` shows it; a reload compares against it).
    config: RwLock<LoadedConfig>,
    /// Read by every router once per batch (a clone of the `Arc`, so the lock is held for a
    /// reference count increment), written by a reload.
    table: RwLock<Arc<RoutingTable>>,
}

impl Routes {
    pub(super) fn new(loaded: LoadedConfig, table: RoutingTable) -> Self {
        Self {
            path: loaded.path.clone(),
            config: RwLock::new(loaded),
            table: RwLock::new(Arc::new(table)),
        }
    }

    /// The routing table for the next batch.
    pub(super) fn table(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the configuration being run.
    pub(super) fn config(&self) -> LoadedConfig {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the file and swaps the table if only routes, the fallback or enrichments changed.
    fn reload(&self) -> Result<()> {
        let loaded = LoadedConfig::load(&self.path)?;
        let table = RoutingTable::compile(&loaded)?;
        let file = self.path.display().to_string();
        {
            let running = self.config.read().unwrap_or_else(PoisonError::into_inner);
            let (old, new) = (&running.config, &loaded.config);
            let unchanged = [
                (old.source == new.source, "the source"),
                (old.endpoints == new.endpoints, "the endpoints"),
                (old.checkpoint == new.checkpoint, "the checkpoint settings"),
                (
                    old.dead_letters == new.dead_letters,
                    "the dead-letter store",
                ),
                (old.service == new.service, "the service settings"),
                (old.twins == new.twins, "the twins settings"),
                (old.hub_name == new.hub_name, "hub_name"),
            ];
            if let Some((_, what)) = unchanged.iter().find(|(same, _)| !same) {
                return Err(Error::ReloadNeedsRestart { file, what });
            }
        }
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        tracing::info!(%file, "configuration reloaded: new routes apply from the next batch");
        Ok(())
    }
}

/// Reloads a running engine's configuration file.
#[derive(Debug, Clone)]
pub struct Reloader {
    pub(super) shared: Arc<Shared>,
}

impl Reloader {
    /// Re-reads the configuration file and, if it is valid and changes only routes, the fallback or
    /// enrichments, swaps the routing table between batches. On error the running table stays.
    pub fn reload(&self) -> Result<()> {
        let outcome = self.shared.routes.reload();
        let label = if outcome.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        self.shared
            .metrics
            .config_reloads
            .get_or_create(&vec![("outcome", label.to_owned())])
            .inc();
        outcome
    }

    /// The configuration file being watched.
    pub fn path(&self) -> &Path {
        &self.shared.routes.path
    }
}
