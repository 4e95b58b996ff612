//! [`Surrender`]: how the engine asks a sink that holds rows for long (a file sink with open files
//! and retrying uploads) to hand every row back instead of retrying, because the endpoint is
//! parked and its rows belong in the dead-letter store until it recovers.

use std::sync::Arc;

use tokio::sync::watch;

/// A flag shared by a sink (and its upload tasks) and the engine. While it is raised, the sink
/// stops retrying: every upload in flight or started gives its rows back in its ack, marked
/// [`Ack::surrendered`](crate::Ack::surrendered), and open files are closed at once. Lowering it
/// ([`Surrender::resume`]) makes the sink deliver normally again.
#[derive(Debug, Clone, Default)]
pub struct Surrender(Arc<watch::Sender<bool>>);

impl Surrender {
    /// Raises the flag: hand every row back.
    pub fn surrender(&self) {
        self.0.send_replace(true);
    }

    /// Lowers the flag: deliver normally.
    pub fn resume(&self) {
        self.0.send_replace(false);
    }

    /// Whether the flag is raised.
    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the flag is raised (at once if it is).
    pub async fn raised(&self) {
        let mut flag = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = flag.wait_for(|raised| *raised).await;
    }

    /// A receiver that sees every change of the flag.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn raising_wakes_a_waiter_and_resuming_lowers_the_flag() {
        let flag = Surrender::default();
        assert!(!flag.is_raised());
        let waiter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.raised().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while the flag is down");
        flag.surrender();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("raising wakes the waiter")
            .unwrap();
        assert!(flag.is_raised());
        flag.resume();
        assert!(!flag.is_raised());
    }
}
