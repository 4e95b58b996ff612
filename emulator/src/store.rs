//! Event hubs and their partitions: append-only logs of stamped, encoded events.
//!
//! Each partition keeps its events as the exact AMQP encoding a consumer will receive (annotations
//! already stamped), so the offset of an event is its byte position in the partition's lifetime stream,
//! as on Event Hubs. A partition is guarded by a std `Mutex` (held only to push or copy out `Arc`s,
//! never across an await) and announces appends through a `watch` channel carrying the next sequence
//! number, so live consumers wait without polling.
//!
//! With a data directory every partition also appends its records to `<dir>/<hub>/<partition>.log`
//! (`u32` length, `i64` sequence number, `i64` offset, `i64` enqueued time, then the encoded message).
//! Records are written through to the OS on every append, so they survive a process crash (SIGKILL); they
//! are fsynced on shutdown, not per event, so a power loss can lose the tail. Retention trims memory at
//! once and rewrites the file when the partition is next opened.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hubroute_amqp::message::{Annotation, MessageView, stamp_annotations};
use hubroute_protocol::filter::{EARLIEST_OFFSET, LATEST_OFFSET};
use hubroute_protocol::{EventPosition, PositionKind, annotations};
use tokio::sync::watch;

use crate::config::{HubConfig, Retention};
use crate::{Error, Result};

/// One stored event.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub(crate) sequence_number: i64,
    pub(crate) offset: i64,
    pub(crate) enqueued_time_ms: i64,
    /// The complete encoded message, annotations included.
    pub(crate) encoded: Bytes,
}

/// One event of a delivery, to be appended: its encoding, the sections found in it (it is parsed
/// once, by whoever received it) and its partition key.
#[derive(Debug)]
pub(crate) struct Incoming<'a> {
    pub(crate) message: &'a [u8],
    pub(crate) view: MessageView<'a>,
    pub(crate) partition_key: Option<&'a str>,
}

fn not_a_message(error: &hubroute_amqp::Error) -> Error {
    Error::Config {
        problem: format!("an event is not a well-formed AMQP message: {error}"),
    }
}

/// Where an appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPosition {
    /// Partition id.
    pub partition: String,
    /// `x-opt-sequence-number`.
    pub sequence_number: i64,
    /// `x-opt-offset`.
    pub offset: String,
    /// `x-opt-enqueued-time`, ms since the Unix epoch.
    pub enqueued_time_ms: i64,
}

/// Why a start position cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PositionError {
    /// Beyond the end of the stream or before the retained start.
    OutOfRange(String),
}

/// Runtime information of a partition, for `$management`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    pub(crate) begin_sequence_number: i64,
    pub(crate) last_sequence_number: i64,
    pub(crate) last_offset: i64,
    pub(crate) last_enqueued_time_ms: i64,
    pub(crate) is_empty: bool,
}

#[derive(Debug)]
struct PartitionState {
    events: VecDeque<Arc<StoredEvent>>,
    next_sequence: i64,
    next_offset: i64,
    retained_bytes: u64,
    last_enqueued_time_ms: i64,
    file: Option<BufWriter<File>>,
}

/// One partition's log.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) id: String,
    retention: Retention,
    path: Option<PathBuf>,
    state: Mutex<PartitionState>,
    appended: watch::Sender<i64>,
}

const RECORD_HEADER: usize = 4 + 8 + 8 + 8;

impl Partition {
    fn open(id: String, retention: Retention, path: Option<PathBuf>) -> Result<Self> {
        let mut state = PartitionState {
            events: VecDeque::new(),
            next_sequence: 0,
            next_offset: 0,
            retained_bytes: 0,
            last_enqueued_time_ms: 0,
            file: None,
        };
        if let Some(path) = &path {
            let storage = |source| Error::Storage {
                path: path.clone(),
                source,
            };
            if path.exists() {
                load_records(path, &mut state)?;
                trim(&mut state, retention);
                rewrite(path, &state.events).map_err(storage)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(storage)?;
            state.file = Some(BufWriter::new(file));
        }
        let (appended, _) = watch::channel(state.next_sequence);
        Ok(Self {
            id,
            retention,
            path,
            state: Mutex::new(state),
            appended,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartitionState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stamps the encoded `message` with its position (rewriting only its message annotations),
    /// stores it and wakes consumers. The stored bytes are what every consumer receives.
    pub(crate) fn append(
        &self,
        message: &[u8],
        partition_key: Option<&str>,
        max_message_bytes: usize,
    ) -> Result<PublishedPosition> {
        let view = MessageView::parse(message).map_err(|error| not_a_message(&error))?;
        self.append_all(
            &[Incoming {
                message,
                view,
                partition_key,
            }],
            max_message_bytes,
        )
    }

    /// Appends the events of one delivery (a batch) all or nothing: every event is stamped and
    /// checked against `max_message_bytes` before the first is stored, as Event Hubs refuses a
    /// batch whole. Returns where the first event landed.
    pub(crate) fn append_all(
        &self,
        events: &[Incoming<'_>],
        max_message_bytes: usize,
    ) -> Result<PublishedPosition> {
        let enqueued_time_ms = chrono::Utc::now().timestamp_millis();
        let mut state = self.lock();
        let (first_sequence, first_offset) = (state.next_sequence, state.next_offset);
        let (mut sequence_number, mut offset) = (first_sequence, first_offset);
        let mut stamped = Vec::with_capacity(events.len());
        let mut offset_text = String::new();
        for event in events {
            offset_text.clear();
            write!(offset_text, "{offset}").expect("writing to a String");
            let position = [
                (
                    annotations::SEQUENCE_NUMBER,
                    Annotation::Long(sequence_number),
                ),
                (annotations::OFFSET, Annotation::String(&offset_text)),
                (
                    annotations::ENQUEUED_TIME,
                    Annotation::Timestamp(enqueued_time_ms),
                ),
            ];
            let key = event
                .partition_key
                .map(|key| (annotations::PARTITION_KEY, Annotation::String(key)));
            let stamps: &[(&str, Annotation<'_>)] = match key {
                Some(key) => &[position[0], position[1], position[2], key],
                None => &position,
            };
            let encoded = stamp_annotations(event.message, &event.view, stamps)
                .map_err(|error| not_a_message(&error))?;
            if encoded.len() > max_message_bytes {
                return Err(Error::MessageTooLarge {
                    size: encoded.len(),
                    limit: max_message_bytes,
                });
            }
            stamped.push(Arc::new(StoredEvent {
                sequence_number,
                offset,
                enqueued_time_ms,
                encoded: Bytes::from(encoded),
            }));
            sequence_number += 1;
            offset += stamped.last().map_or(0, |event| event.encoded.len() as i64);
        }
        if let (Some(file), Some(path)) = (state.file.as_mut(), &self.path) {
            for event in &stamped {
                write_record(file, event).map_err(|source| Error::Storage {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        for event in stamped {
            state.retained_bytes += event.encoded.len() as u64;
            state.events.push_back(event);
        }
        state.next_sequence = sequence_number;
        state.next_offset = offset;
        state.last_enqueued_time_ms = enqueued_time_ms;
        trim(&mut state, self.retention);
        let next = state.next_sequence;
        drop(state);
        self.appended.send_replace(next);
        Ok(PublishedPosition {
            partition: self.id.clone(),
            sequence_number: first_sequence,
            offset: first_offset.to_string(),
            enqueued_time_ms,
        })
    }

    /// Up to `max` events starting at sequence number `from` (fewer if not yet appended or trimmed).
    pub(crate) fn read_from(&self, from: i64, max: usize) -> Vec<Arc<StoredEvent>> {
        let state = self.lock();
        let Some(first) = state.events.front().map(|e| e.sequence_number) else {
            return Vec::new();
        };
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(0);
        state.events.iter().skip(skip).take(max).cloned().collect()
    }

    /// Watches the next sequence number to be appended.
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.appended.subscribe()
    }

    /// The first sequence number to deliver for `position`.
    pub(crate) fn resolve(&self, position: &EventPosition) -> Result<i64, PositionError> {
        let state = self.lock();
        let first_retained = state
            .events
            .front()
            .map_or(state.next_sequence, |e| e.sequence_number);
        let next = state.next_sequence;
        let out_of_range = |what: String| PositionError::OutOfRange(what);
        let start = match &position.kind {
            PositionKind::Offset(offset) if offset == LATEST_OFFSET => return Ok(next),
            PositionKind::Offset(offset) if offset == EARLIEST_OFFSET => return Ok(first_retained),
            PositionKind::Offset(offset) => {
                let offset: i64 = offset
                    .parse()
                    .map_err(|_| out_of_range(format!("offset `{offset}` is not a number")))?;
                if offset > state.next_offset {
                    return Err(out_of_range(format!(
                        "offset {offset} is beyond the end of the partition (next offset {})",
                        state.next_offset
                    )));
                }
                let first_offset = state.events.front().map_or(state.next_offset, |e| e.offset);
                if first_retained > 0 && offset < first_offset {
                    return Err(out_of_range(format!(
                        "offset {offset} is no longer retained (the partition starts at offset {first_offset})"
                    )));
                }
                state
                    .events
                    .iter()
                    .find(|e| {
                        if position.inclusive {
                            e.offset >= offset
                        } else {
                            e.offset > offset
                        }
                    })
                    .map_or(next, |e| e.sequence_number)
            }
            PositionKind::SequenceNumber(sequence) => {
                let start = if position.inclusive {
                    *sequence
                } else {
                    sequence + 1
                };
                if start > next {
                    return Err(out_of_range(format!(
                        "sequence number {sequence} is beyond the end of the partition (last is {})",
                        next - 1
                    )));
                }
                start
            }
            PositionKind::EnqueuedTime(ms) => state
                .events
                .iter()
                .find(|e| {
                    if position.inclusive {
                        e.enqueued_time_ms >= *ms
                    } else {
                        e.enqueued_time_ms > *ms
                    }
                })
                .map_or(next, |e| e.sequence_number),
        };
        if start < first_retained {
            return Err(out_of_range(format!(
                "sequence number {start} is no longer retained (the partition starts at {first_retained})"
            )));
        }
        Ok(start)
    }

    pub(crate) fn info(&self) -> PartitionInfo {
        let state = self.lock();
        let last = state.events.back();
        PartitionInfo {
            begin_sequence_number: state
                .events
                .front()
                .map_or(state.next_sequence, |e| e.sequence_number),
            last_sequence_number: state.next_sequence - 1,
            last_offset: last.map_or(-1, |e| e.offset),
            last_enqueued_time_ms: state.last_enqueued_time_ms,
            is_empty: state.events.is_empty(),
        }
    }

    fn sync(&self) {
        let mut state = self.lock();
        if let Some(file) = state.file.as_mut() {
            let _ = file.flush();
            let _ = file.get_ref().sync_all();
        }
    }
}

fn trim(state: &mut PartitionState, retention: Retention) {
    while state.events.len() > retention.max_events.max(1)
        || (state.retained_bytes > retention.max_bytes && state.events.len() > 1)
    {
        if let Some(event) = state.events.pop_front() {
            state.retained_bytes -= event.encoded.len() as u64;
        }
    }
}

fn write_record(file: &mut BufWriter<File>, event: &StoredEvent) -> std::io::Result<()> {
    let length = u32::try_from(event.encoded.len()).map_err(std::io::Error::other)?;
    file.write_all(&length.to_le_bytes())?;
    file.write_all(&event.sequence_number.to_le_bytes())?;
    file.write_all(&event.offset.to_le_bytes())?;
    file.write_all(&event.enqueued_time_ms.to_le_bytes())?;
    file.write_all(&event.encoded)?;
    file.flush()
}

fn load_records(path: &Path, state: &mut PartitionState) -> Result<()> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|source| Error::Storage {
            path: path.to_owned(),
            source,
        })?;
    let mut at = 0;
    // A crash can leave a partial record at the end; everything before it is complete.
    while at + RECORD_HEADER <= bytes.len() {
        let field =
            |from: usize| i64::from_le_bytes(bytes[from..from + 8].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let (sequence_number, offset, enqueued_time_ms) =
            (field(at + 4), field(at + 12), field(at + 20));
        let body_start = at + RECORD_HEADER;
        if body_start + length > bytes.len() {
            break;
        }
        if sequence_number != state.next_sequence && !state.events.is_empty() {
            return Err(Error::CorruptStorage {
                path: path.to_owned(),
                problem: format!(
                    "record at byte {at} has sequence number {sequence_number}, expected {}",
                    state.next_sequence
                ),
            });
        }
        let event = Arc::new(StoredEvent {
            sequence_number,
            offset,
            enqueued_time_ms,
            encoded: Bytes::copy_from_slice(&bytes[body_start..body_start + length]),
        });
        state.next_sequence = sequence_number + 1;
        state.next_offset = offset + length as i64;
        state.retained_bytes += length as u64;
        state.last_enqueued_time_ms = enqueued_time_ms;
        state.events.push_back(event);
        at = body_start + length;
    }
    Ok(())
}

fn rewrite(path: &Path, events: &VecDeque<Arc<StoredEvent>>) -> std::io::Result<()> {
    let temporary = path.with_extension("log.tmp");
    {
        let mut file = BufWriter::new(File::create(&temporary)?);
        for event in events {
            write_record(&mut file, event)?;
        }
        file.get_ref().sync_all()?;
    }
    std::fs::rename(&temporary, path)
}

/// Who holds a partition for a consumer group: owner-level (epoch) receivers exclude everyone else;
/// at most [`MAX_NON_EPOCH_RECEIVERS`] receivers without an owner level may share it.
#[derive(Debug, Default)]
pub(crate) struct ReceiverRegistry {
    next_id: u64,
    holders: Vec<Holder>,
}

#[derive(Debug)]
struct Holder {
    id: u64,
    epoch: Option<i64>,
    evict: tokio::sync::oneshot::Sender<String>,
}

/// The Event Hubs limit on receivers without an owner level per partition and consumer group.
pub(crate) const MAX_NON_EPOCH_RECEIVERS: usize = 5;

/// Why a receiver may not attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdmissionError {
    /// An owner-level receiver with a higher epoch (or any, for a non-epoch receiver) holds it.
    Excluded(String),
    /// Five non-epoch receivers already.
    TooMany(String),
}

impl ReceiverRegistry {
    /// Admits a receiver, evicting weaker owners; returns its id and the eviction signal it must watch.
    pub(crate) fn admit(
        &mut self,
        epoch: Option<i64>,
        description: &str,
    ) -> Result<(u64, tokio::sync::oneshot::Receiver<String>), AdmissionError> {
        let strongest = self.holders.iter().filter_map(|h| h.epoch).max();
        match epoch {
            Some(epoch) => {
                if let Some(current) = strongest.filter(|current| *current > epoch) {
                    return Err(AdmissionError::Excluded(format!(
                        "a receiver with owner level {current} exists on {description}; owner level {epoch} \
                         cannot be created"
                    )));
                }
                for holder in self.holders.drain(..) {
                    let _ = holder.evict.send(format!(
                        "New receiver with higher epoch of '{epoch}' is created hence current receiver with \
                         epoch '{}' is getting disconnected from {description}. If you are recreating the \
                         receiver, make sure a higher epoch is used.",
                        holder.epoch.map_or_else(|| "none".to_owned(), |e| e.to_string())
                    ));
                }
            }
            None => {
                if let Some(current) = strongest {
                    return Err(AdmissionError::Excluded(format!(
                        "a receiver with owner level {current} holds {description}; receivers without an \
                         owner level cannot attach"
                    )));
                }
                if self.holders.len() >= MAX_NON_EPOCH_RECEIVERS {
                    return Err(AdmissionError::TooMany(format!(
                        "Exceeded the maximum number of allowed receivers per partition in a consumer group \
                         which is {MAX_NON_EPOCH_RECEIVERS} ({description})"
                    )));
                }
            }
        }
        self.next_id += 1;
        let (evict, evicted) = tokio::sync::oneshot::channel();
        self.holders.push(Holder {
            id: self.next_id,
            epoch,
            evict,
        });
        Ok((self.next_id, evicted))
    }

    /// Forgets a receiver that detached.
    pub(crate) fn release(&mut self, id: u64) {
        self.holders.retain(|holder| holder.id != id);
    }
}

/// One event hub: its partitions and the receivers holding them.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) config: HubConfig,
    pub(crate) created_at_ms: i64,
    pub(crate) partitions: Vec<Arc<Partition>>,
    round_robin: AtomicUsize,
    receivers: Mutex<HashMap<(String, String), ReceiverRegistry>>,
    /// Bumped by [`Hub::detach_producers`]; producer links watch it.
    producer_detaches: watch::Sender<u64>,
}

impl Hub {
    /// Force-detaches every producer link attached to this hub now (a fault for tests).
    pub(crate) fn detach_producers(&self) {
        self.producer_detaches
            .send_modify(|generation| *generation += 1);
    }

    /// Watches [`Hub::detach_producers`].
    pub(crate) fn producer_detaches(&self) -> watch::Receiver<u64> {
        self.producer_detaches.subscribe()
    }

    pub(crate) fn partition(&self, id: &str) -> Result<&Arc<Partition>> {
        self.partitions
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| Error::UnknownPartition {
                hub: self.config.name.clone(),
                partition: id.to_owned(),
                partition_count: self.config.partition_count,
            })
    }

    /// The partition for a key: a stable FNV-1a hash of the key's UTF-8 bytes modulo the partition
    /// count. (Event Hubs uses its own hash; only stability — one key, one partition — is promised.)
    pub(crate) fn partition_for_key(&self, key: &str) -> &Arc<Partition> {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.partitions[(hash % self.partitions.len() as u64) as usize]
    }

    pub(crate) fn next_round_robin(&self) -> &Arc<Partition> {
        let index = self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions.len();
        &self.partitions[index]
    }

    pub(crate) fn with_receivers<T>(
        &self,
        consumer_group: &str,
        partition: &str,
        action: impl FnOnce(&mut ReceiverRegistry) -> T,
    ) -> T {
        let mut receivers = self
            .receivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let registry = receivers
            .entry((consumer_group.to_ascii_lowercase(), partition.to_owned()))
            .or_default();
        action(registry)
    }
}

/// All event hubs of the namespace.
#[derive(Debug)]
pub(crate) struct Namespace {
    hubs: Vec<Arc<Hub>>,
}

impl Namespace {
    pub(crate) fn open(
        hubs: &[HubConfig],
        retention: Retention,
        data_dir: Option<&Path>,
    ) -> Result<Self> {
        if hubs.is_empty() {
            return Err(Error::Config {
                problem: "no event hub configured".to_owned(),
            });
        }
        let created_at_ms = chrono::Utc::now().timestamp_millis();
        let mut opened = Vec::new();
        for config in hubs {
            if config.partition_count == 0 || config.partition_count > 1024 {
                return Err(Error::Config {
                    problem: format!(
                        "event hub `{}` must have 1 to 1024 partitions, not {}",
                        config.name, config.partition_count
                    ),
                });
            }
            if opened
                .iter()
                .any(|hub: &Arc<Hub>| hub.config.name.eq_ignore_ascii_case(&config.name))
            {
                return Err(Error::Config {
                    problem: format!("event hub `{}` is configured twice", config.name),
                });
            }
            let directory = data_dir.map(|dir| dir.join(config.name.to_ascii_lowercase()));
            if let Some(directory) = &directory {
                std::fs::create_dir_all(directory).map_err(|source| Error::Storage {
                    path: directory.clone(),
                    source,
                })?;
            }
            let partitions = (0..config.partition_count)
                .map(|id| {
                    let path = directory.as_ref().map(|dir| dir.join(format!("{id}.log")));
                    Partition::open(id.to_string(), retention, path).map(Arc::new)
                })
                .collect::<Result<Vec<_>>>()?;
            opened.push(Arc::new(Hub {
                config: config.clone(),
                created_at_ms,
                partitions,
                round_robin: AtomicUsize::new(0),
                receivers: Mutex::default(),
                producer_detaches: watch::channel(0).0,
            }));
        }
        Ok(Self { hubs: opened })
    }

    /// Event hub names are case-insensitive, as on Event Hubs.
    pub(crate) fn hub(&self, name: &str) -> Result<&Arc<Hub>> {
        self.hubs
            .iter()
            .find(|hub| hub.config.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::UnknownHub {
                hub: name.to_owned(),
                configured: self
                    .hubs
                    .iter()
                    .map(|hub| hub.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub(crate) fn hubs(&self) -> &[Arc<Hub>] {
        &self.hubs
    }

    /// Flushes and fsyncs every partition file.
    pub(crate) fn sync(&self) {
        for hub in &self.hubs {
            for partition in &hub.partitions {
                partition.sync();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hubroute_amqp::codec;
    use hubroute_amqp::message::section;

    use super::*;

    /// An encoded message with one data section.
    fn message(body: &str) -> Vec<u8> {
        let mut encoded = Vec::new();
        codec::put_descriptor(&mut encoded, section::DATA);
        codec::put_binary(&mut encoded, body.as_bytes());
        encoded
    }

    fn incoming<'a>(message: &'a [u8], partition_key: Option<&'a str>) -> Incoming<'a> {
        Incoming {
            message,
            view: MessageView::parse(message).unwrap(),
            partition_key,
        }
    }

    fn partition(retention: Retention, path: Option<PathBuf>) -> Partition {
        Partition::open("0".to_owned(), retention, path).unwrap()
    }

    #[test]
    fn positions_resolve_like_event_hubs() {
        let p = partition(Retention::default(), None);
        let first = p.append(&message("a"), None, 1 << 20).unwrap();
        let second = p.append(&message("b"), Some("k"), 1 << 20).unwrap();
        assert_eq!((first.sequence_number, second.sequence_number), (0, 1));
        let offset: i64 = second.offset.parse().unwrap();
        assert!(offset > 0);
        let at = |kind, inclusive| p.resolve(&EventPosition { kind, inclusive });
        assert_eq!(at(PositionKind::Offset("-1".into()), false), Ok(0));
        assert_eq!(at(PositionKind::Offset("@latest".into()), false), Ok(2));
        assert_eq!(at(PositionKind::Offset("0".into()), false), Ok(1));
        assert_eq!(at(PositionKind::Offset("0".into()), true), Ok(0));
        assert_eq!(at(PositionKind::Offset(offset.to_string()), false), Ok(2));
        assert_eq!(at(PositionKind::SequenceNumber(0), false), Ok(1));
        assert_eq!(at(PositionKind::SequenceNumber(1), true), Ok(1));
        assert_eq!(at(PositionKind::SequenceNumber(1), false), Ok(2));
        assert!(matches!(
            at(PositionKind::SequenceNumber(5), false),
            Err(PositionError::OutOfRange(_))
        ));
        assert_eq!(
            at(
                PositionKind::EnqueuedTime(first.enqueued_time_ms - 1),
                false
            ),
            Ok(0)
        );
        assert_eq!(at(PositionKind::EnqueuedTime(i64::MAX), false), Ok(2));
    }

    #[test]
    fn retention_trims_and_old_positions_are_out_of_range() {
        let p = partition(
            Retention {
                max_events: 2,
                max_bytes: u64::MAX,
            },
            None,
        );
        for body in ["a", "b", "c"] {
            p.append(&message(body), None, 1 << 20).unwrap();
        }
        assert_eq!(p.info().begin_sequence_number, 1);
        assert_eq!(p.read_from(0, 10).len(), 2);
        let at = |sequence| p.resolve(&EventPosition::after_sequence_number(sequence));
        assert!(matches!(at(-1), Err(PositionError::OutOfRange(_))));
        assert_eq!(at(0), Ok(1));
    }

    #[test]
    fn a_batch_is_stored_all_or_nothing() {
        let p = partition(Retention::default(), None);
        let (small, large) = (message("a"), message(&"x".repeat(100)));
        let error = p
            .append_all(&[incoming(&small, None), incoming(&large, None)], 60)
            .unwrap_err();
        assert!(matches!(error, Error::MessageTooLarge { .. }), "{error}");
        assert!(p.info().is_empty, "nothing of a refused batch is stored");
        let first = p
            .append_all(
                &[incoming(&small, Some("k")), incoming(&small, Some("k"))],
                1 << 20,
            )
            .unwrap();
        assert_eq!((first.sequence_number, first.offset.as_str()), (0, "0"));
        let stored = p.read_from(0, 2);
        assert_eq!(
            stored.iter().map(|s| s.sequence_number).collect::<Vec<_>>(),
            [0, 1]
        );
        let second = stored[1].offset;
        assert_eq!(second, p.read_from(0, 1)[0].encoded.len() as i64);
    }

    #[test]
    fn oversize_events_are_refused() {
        let p = partition(Retention::default(), None);
        let error = p.append(&message(&"x".repeat(100)), None, 50).unwrap_err();
        assert!(
            matches!(error, Error::MessageTooLarge { limit: 50, .. }),
            "{error}"
        );
        assert!(p.info().is_empty);
    }

    #[test]
    fn a_partition_file_survives_reopening_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        {
            let p = partition(Retention::default(), Some(path.clone()));
            for body in ["a", "b", "c"] {
                p.append(&message(body), None, 1 << 20).unwrap();
            }
        }
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[7, 0, 0]).unwrap();
        drop(file);
        let p = partition(Retention::default(), Some(path));
        assert_eq!(p.info().last_sequence_number, 2);
        let next = p.append(&message("d"), None, 1 << 20).unwrap();
        assert_eq!(next.sequence_number, 3);
        assert_eq!(p.read_from(0, 10).len(), 4);
    }

    #[test]
    fn owner_levels_and_the_five_receiver_limit() {
        let mut registry = ReceiverRegistry::default();
        let mut plain = Vec::new();
        for _ in 0..MAX_NON_EPOCH_RECEIVERS {
            plain.push(registry.admit(None, "p0").unwrap());
        }
        assert!(matches!(
            registry.admit(None, "p0"),
            Err(AdmissionError::TooMany(_))
        ));
        let (owner, _owner_evicted) = registry.admit(Some(0), "p0").unwrap();
        for (_, mut evicted) in plain {
            assert!(evicted.try_recv().unwrap().contains("higher epoch of '0'"));
        }
        assert!(matches!(
            registry.admit(None, "p0"),
            Err(AdmissionError::Excluded(_))
        ));
        let (_, mut first_evicted) = registry.admit(Some(0), "p0").unwrap();
        registry.release(owner);
        assert!(matches!(
            registry.admit(Some(-1), "p0"),
            Err(AdmissionError::Excluded(_))
        ));
        registry.admit(Some(1), "p0").unwrap();
        assert!(first_evicted.try_recv().is_ok());
    }
}
