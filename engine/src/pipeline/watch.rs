//! Reloading the routes when the operator asks: on SIGHUP, and whenever the configuration file's
//! modification time changes (checked every two seconds).
//!
//! Polling the modification time needs no file-system notification API and also sees a file
//! replaced by rename. An invalid file leaves the running routes in place and says why
//! ([`Reloader::reload`]).

use std::time::{Duration, SystemTime};

use super::Reloader;

/// How often the configuration file's modification time is checked.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

impl Reloader {
    /// Reloads on SIGHUP and whenever the file's modification time changes, until the task is
    /// dropped; each outcome is logged. Spawn it next to the running engine.
    pub async fn watch(self) {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut last = self.modified();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            #[cfg(unix)]
            let hangup_signal = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup_signal = std::future::pending::<()>();
            let reason = tokio::select! {
                () = hangup_signal => "SIGHUP",
                _ = tick.tick() => {
                    let now = self.modified();
                    if now == last {
                        continue;
                    }
                    last = now;
                    "file changed"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!(reason, "routes reloaded"),
                Err(error) => {
                    tracing::error!(reason, %error, "the new configuration was rejected; the running routes stay");
                }
            }
        }
    }

    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(self.path())
            .and_then(|m| m.modified())
            .ok()
    }
}
