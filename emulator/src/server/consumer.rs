//! Consumer links: `<hub>/ConsumerGroups/<cg>/Partitions/<id>` with Event Hubs start positions,
//! owner levels and the five-receiver limit.
//!
//! The connection task sends a consumer's events itself (see `connection`): each stored event is
//! already the exact encoding a consumer receives, so serving one is a frame header and a copy into
//! the connection's write buffer. While a consumer is caught up, a small watcher task waits for the
//! partition to grow past it and wakes the connection; the same task reports eviction by a stronger
//! owner. Neither touches an event, so a busy partition costs the watcher nothing while its
//! consumers keep up.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use hubroute_protocol::{EventPosition, conditions};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::store::{AdmissionError, Hub, Partition, PositionError, StoredEvent};

/// Identifies a link within its connection, never reused.
pub(crate) type LinkId = u64;

/// What a watcher tells its connection.
#[derive(Debug)]
pub(crate) enum Wake {
    /// The partition has events past the consumer's position.
    Appended(LinkId),
    /// The link must end with this condition and description (a stronger owner took the
    /// partition, the service forces producers off).
    Detach(LinkId, &'static str, String),
}

/// A consumer link's state between deliveries.
#[derive(Debug)]
pub(crate) struct Consumer {
    hub: Arc<Hub>,
    partition: Arc<Partition>,
    consumer_group: String,
    /// The entity path, as tokens name it.
    pub(crate) entity: String,
    /// The next sequence number to send.
    next: i64,
    receiver_id: u64,
    /// The sequence number the watcher waits for (armed by [`Consumer::wait`]).
    wanted: Arc<AtomicI64>,
    armed: Arc<Notify>,
    watcher: tokio::task::JoinHandle<()>,
}

/// Everything needed to admit a consumer.
pub(crate) struct ConsumerRequest {
    pub(crate) hub: Arc<Hub>,
    pub(crate) partition: Arc<Partition>,
    pub(crate) consumer_group: String,
    pub(crate) entity: String,
    pub(crate) position: EventPosition,
    pub(crate) epoch: Option<i64>,
}

impl Consumer {
    /// Resolves the start position and takes a receiver slot, or says why not (condition and
    /// description to detach with).
    pub(crate) fn admit(
        request: ConsumerRequest,
        link: LinkId,
        wake: mpsc::Sender<Wake>,
    ) -> Result<Self, (&'static str, String)> {
        let ConsumerRequest {
            hub,
            partition,
            consumer_group,
            entity,
            position,
            epoch,
        } = request;
        let next = partition.resolve(&position).map_err(|error| match error {
            PositionError::OutOfRange(reason) => (conditions::ARGUMENT_OUT_OF_RANGE, reason),
        })?;
        let description = format!(
            "partition {} of {} in consumer group {consumer_group}",
            partition.id, hub.config.name
        );
        let (receiver_id, evicted) = hub
            .with_receivers(&consumer_group, &partition.id, |registry| {
                registry.admit(epoch, &description)
            })
            .map_err(|error| match error {
                AdmissionError::Excluded(reason) => (conditions::LINK_STOLEN, reason),
                AdmissionError::TooMany(reason) => (conditions::RESOURCE_LIMIT_EXCEEDED, reason),
            })?;
        let wanted = Arc::new(AtomicI64::new(i64::MAX));
        let armed = Arc::new(Notify::new());
        let watcher = tokio::spawn(watch(
            partition.subscribe(),
            Arc::clone(&wanted),
            Arc::clone(&armed),
            evicted,
            link,
            wake,
        ));
        Ok(Self {
            hub,
            partition,
            consumer_group,
            entity,
            next,
            receiver_id,
            wanted,
            armed,
            watcher,
        })
    }

    /// Up to `max` events from the consumer's position, which moves past them.
    pub(crate) fn take(&mut self, max: usize) -> Vec<Arc<StoredEvent>> {
        let events = self.partition.read_from(self.next, max);
        if let Some(last) = events.last() {
            self.next = last.sequence_number + 1;
        }
        events
    }

    /// Asks the watcher to wake the connection once the partition holds the next event.
    pub(crate) fn wait(&self) {
        self.wanted.store(self.next, Ordering::Release);
        self.armed.notify_one();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.watcher.abort();
        self.hub
            .with_receivers(&self.consumer_group, &self.partition.id, |registry| {
                registry.release(self.receiver_id);
            });
    }
}

/// Waits, each time it is armed, for the partition to grow past `wanted`; reports eviction.
async fn watch(
    mut appended: watch::Receiver<i64>,
    wanted: Arc<AtomicI64>,
    armed: Arc<Notify>,
    mut evicted: oneshot::Receiver<String>,
    link: LinkId,
    wake: mpsc::Sender<Wake>,
) {
    loop {
        tokio::select! {
            () = armed.notified() => {}
            reason = &mut evicted => {
                if let Ok(reason) = reason {
                    let _ = wake.send(Wake::Detach(link, conditions::LINK_STOLEN, reason)).await;
                }
                return;
            }
        }
        let want = wanted.load(Ordering::Acquire);
        let evicted_while_waiting = tokio::select! {
            grown = appended.wait_for(|next| *next > want) => {
                if grown.is_err() {
                    return;
                }
                None
            }
            reason = &mut evicted => Some(reason),
        };
        if let Some(reason) = evicted_while_waiting {
            if let Ok(reason) = reason {
                let _ = wake
                    .send(Wake::Detach(link, conditions::LINK_STOLEN, reason))
                    .await;
            }
            return;
        }
        if wake.send(Wake::Appended(link)).await.is_err() {
            return;
        }
    }
}
