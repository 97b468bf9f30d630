//! `LogSpool`: the spool as append-only segment files with group commit.
//!
//! Why a log rather than a file per message or a B-tree store: every accepted message costs
//! one append, and a whole batch of concurrent appends shares one `fdatasync`. A file per
//! message needs a file sync and a directory sync each; a copy-on-write B-tree writes pages
//! and its header on every commit. Replication later streams the same records to peers.
//!
//! Layout: `seg-<n>.log` files of records `[len u32][crc32 u32][payload]`, little-endian.
//! The payload's first byte says what it is: a stored message (metadata JSON and body),
//! recipient updates, an ownership change, or a removal. At open, segments are replayed in
//! order into an in-memory index; a record whose length or checksum does not hold is a torn
//! tail (a write the crash interrupted, never acknowledged) and the segment is cut there.
//! A segment is deleted once every message stored in it, and in all older ones, is removed.
//!
//! Compaction: one long-deferred message would otherwise pin its segment and every newer
//! one, so disk use would grow with traffic rather than with the queue. When the closed
//! segments are mostly dead (see [`compaction_target`]), the writer appends the live
//! messages of the oldest one again (current metadata, same body) to the current segment
//! and syncs; a later store record for an id replaces the earlier one at replay, so the
//! old segment is spent and deleted. A crash mid-way leaves either the old record or
//! both, never neither.
//!
//! A failed write is classified by [`super::health`]: out of space refuses the batch and
//! the writer goes on; anything else poisons the writer, which then refuses every later
//! operation, so no acknowledgement can follow a write the spool could not make durable.
//! The writer publishes its state on a watch channel ([`LogSpool::health`]); the channel
//! closes if the writer thread dies.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::health::{SpoolHealth, Verdict, WriteStep, classify};
use super::{MessageId, MessageMeta, Ownership, RecipientUpdate, Spool, SpoolError};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Most operations written under one sync.
const MAX_BATCH: usize = 1024;
/// Most body bytes relocated by one compaction step, so that a step never holds up the
/// callers waiting for their batch for long.
const MAX_RELOCATE_BYTES: u64 = 4 * 1024 * 1024;
const HEADER: usize = 8;

const KIND_STORE: u8 = 1;
const KIND_UPDATE: u8 = 2;
const KIND_OWNERSHIP: u8 = 3;
const KIND_REMOVE: u8 = 4;

/// Settings of a [`LogSpool`].
#[derive(Clone)]
pub struct LogSpoolOptions {
    /// Called after each sync with the number of operations it made durable.
    pub on_batch: Option<Arc<dyn Fn(usize) + Send + Sync>>,
    /// Called after each compaction step with the number of messages it relocated.
    pub on_compact: Option<Arc<dyn Fn(usize) + Send + Sync>>,
    /// A new segment is started once the current one reaches this size.
    pub segment_bytes: u64,
}

impl Default for LogSpoolOptions {
    fn default() -> Self {
        Self {
            on_batch: None,
            on_compact: None,
            segment_bytes: SEGMENT_BYTES,
        }
    }
}

#[derive(Clone)]
struct Entry {
    meta: MessageMeta,
    segment: u64,
    /// Offset and length of the body inside the segment file.
    body_at: u64,
    body_len: u64,
}

/// Live messages and body bytes of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Live {
    messages: usize,
    bytes: u64,
}

#[derive(Default)]
struct Index {
    messages: HashMap<MessageId, Entry>,
    /// Live messages stored per segment, for deleting and compacting segments.
    live: HashMap<u64, Live>,
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        let live = self.live.entry(entry.segment).or_default();
        live.messages += 1;
        live.bytes += entry.body_len;
        if let Some(old) = self.messages.insert(entry.meta.id, entry) {
            self.release(&old);
        }
    }

    fn remove(&mut self, id: &MessageId) {
        if let Some(old) = self.messages.remove(id) {
            self.release(&old);
        }
    }

    fn release(&mut self, entry: &Entry) {
        if let Some(live) = self.live.get_mut(&entry.segment) {
            live.messages -= 1;
            live.bytes = live.bytes.saturating_sub(entry.body_len);
            if live.messages == 0 {
                self.live.remove(&entry.segment);
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct UpdateRecord {
    id: MessageId,
    updates: Vec<RecipientUpdate>,
}

#[derive(Serialize, Deserialize)]
struct OwnershipRecord {
    id: MessageId,
    ownership: Ownership,
}

enum Op {
    Store(MessageMeta, Bytes),
    Update(MessageId, Vec<RecipientUpdate>),
    Ownership(MessageId, Ownership),
    /// An ownership change that needs no sync of its own (see [`Spool::commit_copy`]).
    Commit(MessageId, Ownership),
    Remove(MessageId),
}

impl Op {
    fn needs_sync(&self) -> bool {
        !matches!(self, Op::Commit(..))
    }
}

enum Done {
    Unit,
    Meta(Box<MessageMeta>),
}

type Reply = oneshot::Sender<Result<Done, SpoolError>>;

struct Shared {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Holds the exclusive lock on `LOCK` for as long as the spool is open.
    _lock: File,
}

impl Shared {
    fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent map: every mutation is one call.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The spool; cheap to clone, all clones share one writer.
#[derive(Clone)]
pub struct LogSpool {
    shared: Arc<Shared>,
    ops: Arc<WriterHandle>,
    health: watch::Receiver<SpoolHealth>,
}

/// The writer thread's inbox. When the last spool handle goes, the inbox closes and the
/// thread is joined, so everything submitted is on disk and the `LOCK` is released when
/// the spool is gone (a reopen in the same process then succeeds).
struct WriterHandle {
    tx: Option<mpsc::UnboundedSender<(Op, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:010}.log"))
}

fn corrupt(what: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt(what.into())
}

fn encode(kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Applies recipient updates to a message's metadata.
fn apply_updates(meta: &mut MessageMeta, updates: &[RecipientUpdate]) -> Result<(), SpoolError> {
    for u in updates {
        let r =
            meta.envelope.recipients.get_mut(u.index).ok_or_else(|| {
                corrupt(format!("message {} has no recipient {}", meta.id, u.index))
            })?;
        r.state = u.state.clone();
        if let Some(a) = &u.attempt {
            r.attempts.push(a.clone());
        }
    }
    Ok(())
}

/// Replays one segment into the index; returns the length of its valid prefix.
fn replay(segment: u64, data: &[u8], index: &mut Index) -> Result<u64, SpoolError> {
    let mut at = 0usize;
    while at + HEADER <= data.len() {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let start = at + HEADER;
        if len == 0 || start + len > data.len() || crc32fast::hash(&data[start..start + len]) != crc
        {
            break;
        }
        let payload = &data[start + 1..start + len];
        match data[start] {
            KIND_STORE => {
                if payload.len() < 4 {
                    return Err(corrupt("short store record"));
                }
                let meta_len =
                    u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
                let meta_bytes = payload
                    .get(4..4 + meta_len)
                    .ok_or_else(|| corrupt("store record metadata out of bounds"))?;
                let meta: MessageMeta =
                    serde_json::from_slice(meta_bytes).map_err(|e| corrupt(e.to_string()))?;
                let body_at = (start + 1 + 4 + meta_len) as u64;
                let body_len = (payload.len() - 4 - meta_len) as u64;
                index.insert(Entry {
                    meta,
                    segment,
                    body_at,
                    body_len,
                });
            }
            KIND_UPDATE => {
                let rec: UpdateRecord =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                if let Some(e) = index.messages.get_mut(&rec.id) {
                    apply_updates(&mut e.meta, &rec.updates)?;
                }
            }
            KIND_OWNERSHIP => {
                let rec: OwnershipRecord =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                if let Some(e) = index.messages.get_mut(&rec.id) {
                    e.meta.ownership = rec.ownership;
                }
            }
            KIND_REMOVE => {
                let bytes: [u8; 16] = payload
                    .try_into()
                    .map_err(|_| corrupt("remove record is not a message id"))?;
                index.remove(&MessageId::from_bytes(bytes));
            }
            other => return Err(corrupt(format!("unknown record kind {other}"))),
        }
        at = start + len;
    }
    Ok(at as u64)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogSpool {
    /// Opens (or creates) the spool in `dir`, replaying what is there, and starts the
    /// writer thread.
    pub fn open(dir: impl AsRef<Path>, options: LogSpoolOptions) -> Result<Self, SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        // Two writers on one log would interleave records: refuse a second opener.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.display().to_string()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let mut segments: Vec<u64> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        segments.sort_unstable();
        let mut index = Index::default();
        let mut sizes = BTreeMap::new();
        for &n in &segments {
            let path = segment_path(&dir, n);
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let valid = replay(n, &data, &mut index)?;
            if valid < data.len() as u64 {
                tracing::warn!(segment = %path.display(), valid, len = data.len(), "cutting a torn record off the spool");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid)?;
                f.sync_all()?;
            }
            sizes.insert(n, valid);
        }
        let current = match segments.last() {
            Some(&n) => n,
            None => {
                File::create(segment_path(&dir, 1))?.sync_all()?;
                sync_dir(&dir)?;
                1
            }
        };
        let shared = Arc::new(Shared {
            dir,
            index: Mutex::new(index),
            _lock: lock,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (health_tx, health) = watch::channel(SpoolHealth::Ok);
        sizes.remove(&current);
        let writer = Writer::new(shared.clone(), sizes, current, options, health_tx)?;
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            shared,
            ops: Arc::new(WriterHandle {
                tx: Some(tx),
                thread: Some(thread),
            }),
            health,
        })
    }

    /// The writer's state. The channel closes when the writer thread ends: after the
    /// last handle is dropped, or if it died.
    pub fn health(&self) -> watch::Receiver<SpoolHealth> {
        self.health.clone()
    }

    async fn submit(&self, op: Op) -> Result<Done, SpoolError> {
        let (tx, rx) = oneshot::channel();
        let inbox = self.ops.tx.as_ref().ok_or(SpoolError::Closed)?;
        inbox.send((op, tx)).map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Number of live messages.
    pub fn len(&self) -> usize {
        self.shared.index().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arrival time of the oldest live message, for the queue-age metric.
    pub fn oldest_received_at(&self) -> Option<super::UnixMillis> {
        self.shared
            .index()
            .messages
            .values()
            .map(|e| e.meta.received_at)
            .min()
    }
}

struct Writer {
    shared: Arc<Shared>,
    segment: u64,
    /// Size of every segment file on disk before the current one.
    closed: BTreeMap<u64, u64>,
    file: File,
    size: u64,
    options: LogSpoolOptions,
    health: watch::Sender<SpoolHealth>,
    /// Set by the first fatal write failure; every later operation is refused with it.
    failed: Option<Arc<std::io::Error>>,
    /// Operations written to the current segment since its last sync (commits only).
    unsynced: usize,
}

impl Writer {
    fn new(
        shared: Arc<Shared>,
        closed: BTreeMap<u64, u64>,
        segment: u64,
        options: LogSpoolOptions,
        health: watch::Sender<SpoolHealth>,
    ) -> Result<Self, SpoolError> {
        let file = OpenOptions::new()
            .append(true)
            .open(segment_path(&shared.dir, segment))?;
        let size = file.metadata()?.len();
        Ok(Self {
            shared,
            segment,
            closed,
            file,
            size,
            options,
            health,
            failed: None,
            unsynced: 0,
        })
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<(Op, Reply)>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Writes a batch, syncs once (unless it holds only commits, which ride on the next
    /// sync), then applies it to the index and answers every caller.
    fn commit(&mut self, batch: Vec<(Op, Reply)>) {
        if let Some(e) = &self.failed {
            fail_all(batch, &SpoolError::Failed(e.clone()));
            return;
        }
        if self.size >= self.options.segment_bytes
            && let Err(e) = self.rotate()
        {
            self.note_full(&e);
            fail_all(batch, &e);
            return;
        }
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(batch.len());
        for (op, _) in &batch {
            let at = self.size + buf.len() as u64;
            placed.push(match encode_op(op, &mut buf) {
                Ok(body_offset) => Ok(at + body_offset),
                Err(e) => Err(e),
            });
        }
        let sync = batch.iter().any(|(op, _)| op.needs_sync());
        let written = match self.file.write_all(&buf) {
            Ok(()) if !sync => Ok(()),
            Ok(()) => self
                .file
                .sync_data()
                .map_err(|e| self.refused(WriteStep::Sync, e)),
            Err(e) => Err(self.refused(WriteStep::Append, e)),
        };
        if let Err(e) = written {
            // Nothing of this batch is acknowledged. Its partial write must not stay in
            // front of the next batch's records: replay stops at a torn record.
            self.note_full(&e);
            fail_all(batch, &e);
            self.discard_unacknowledged();
            return;
        }
        if matches!(*self.health.borrow(), SpoolHealth::Full) {
            tracing::info!("the spool has space again");
            self.health.send_replace(SpoolHealth::Ok);
        }
        self.size += buf.len() as u64;
        if sync {
            self.synced(batch.len());
        } else {
            self.unsynced += batch.len();
        }
        let mut index = self.shared.index();
        for ((op, reply), at) in batch.into_iter().zip(placed) {
            let result = at.and_then(|body_at| apply(&mut index, op, self.segment, body_at));
            let _ = reply.send(result);
        }
        drop(index);
        self.delete_spent();
        if let Err(e) = self.compact() {
            // Nothing is lost: the messages stay where they were, and the next batch tries
            // again.
            tracing::warn!(error = %e, "spool compaction failed; the segment is kept");
        }
    }

    /// After a failed write or sync: cuts the current segment back to what was
    /// acknowledged, so later records follow it directly. When even that fails, the
    /// writer moves to a fresh segment; the torn tail left behind is cut at the next
    /// open, and only unacknowledged bytes sit past it.
    fn discard_unacknowledged(&mut self) {
        let cut = self
            .file
            .set_len(self.size)
            .and_then(|()| self.file.sync_all());
        // Synced with the cut, or left in a segment whose tail the next open cuts anyway.
        self.unsynced = 0;
        if let Err(e) = cut {
            if self.failed.is_some() {
                // No more writes follow: the next open cuts the torn tail.
                tracing::warn!(segment = self.segment, error = %e, "could not cut a failed write off the spool segment");
                return;
            }
            tracing::error!(segment = self.segment, error = %e, "could not cut a failed write off the spool segment; starting a new segment");
            self.size = self.options.segment_bytes;
        }
    }

    /// Deletes the segments older than the first one still needed, oldest first.
    fn delete_spent(&mut self) {
        let keep_from = first_needed(&self.shared.index(), self.segment);
        while let Some(entry) = self.closed.first_entry()
            && *entry.key() < keep_from
        {
            let (n, _) = entry.remove_entry();
            if let Err(e) = fs::remove_file(segment_path(&self.shared.dir, n)) {
                tracing::warn!(segment = n, error = %e, "could not delete a spent spool segment");
            }
        }
    }

    /// One compaction step: relocates up to [`MAX_RELOCATE_BYTES`] of the live messages
    /// of the segment [`compaction_target`] picks to the current segment.
    fn compact(&mut self) -> Result<(), SpoolError> {
        let moving: Vec<Entry> = {
            let index = self.shared.index();
            let Some(target) = compaction_target(&index.live, &self.closed, self.segment) else {
                return Ok(());
            };
            let mut entries: Vec<&Entry> = index
                .messages
                .values()
                .filter(|e| e.segment == target)
                .collect();
            entries.sort_by_key(|e| e.body_at);
            let mut budget = 0u64;
            entries
                .into_iter()
                .take_while(|e| {
                    let take = budget == 0 || budget + e.body_len <= MAX_RELOCATE_BYTES;
                    budget += e.body_len;
                    take
                })
                .cloned()
                .collect()
        };
        if moving.is_empty() {
            return Ok(());
        }
        if self.size >= self.options.segment_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::new();
        let mut relocated = Vec::with_capacity(moving.len());
        // Every entry comes from the one target segment.
        let source = File::open(segment_path(&self.shared.dir, moving[0].segment))?;
        for entry in moving {
            let mut body = vec![0u8; entry.body_len as usize];
            source.read_exact_at(&mut body, entry.body_at)?;
            let at = self.size + buf.len() as u64;
            let op = Op::Store(entry.meta, Bytes::from(body));
            let body_offset = encode_op(&op, &mut buf)?;
            relocated.push((op, at + body_offset));
        }
        let written = match self.file.write_all(&buf) {
            Ok(()) => self
                .file
                .sync_data()
                .map_err(|e| self.refused(WriteStep::Sync, e)),
            Err(e) => Err(self.refused(WriteStep::Append, e)),
        };
        if let Err(e) = written {
            self.discard_unacknowledged();
            return Err(e);
        }
        self.synced(0);
        self.size += buf.len() as u64;
        let count = relocated.len();
        let mut index = self.shared.index();
        for (op, body_at) in relocated {
            apply(&mut index, op, self.segment, body_at)?;
        }
        drop(index);
        if let Some(cb) = &self.options.on_compact {
            cb(count);
        }
        tracing::debug!(
            messages = count,
            bytes = buf.len(),
            to = self.segment,
            "compacted the oldest spool segment"
        );
        self.delete_spent();
        Ok(())
    }

    /// After a sync that made `written` operations durable, besides the commits written
    /// since the last one: reports them all to `on_batch`, once.
    fn synced(&mut self, written: usize) {
        let durable = written + std::mem::take(&mut self.unsynced);
        if durable > 0
            && let Some(cb) = &self.options.on_batch
        {
            cb(durable);
        }
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        // Only the newest segment may end in records a crash can take: replay cuts a torn
        // tail there.
        if self.unsynced > 0 {
            self.file
                .sync_data()
                .map_err(|e| self.refused(WriteStep::Sync, e))?;
            self.synced(0);
        }
        let next = self.segment + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.shared.dir, next))
            .map_err(|e| self.refused(WriteStep::Append, e))?;
        sync_dir(&self.shared.dir).map_err(|e| self.refused(WriteStep::Sync, e))?;
        self.closed.insert(self.segment, self.size);
        self.segment = next;
        self.file = file;
        self.size = 0;
        Ok(())
    }

    /// Classifies a failed write; a fatal one poisons the writer before any caller
    /// hears of it, so the next batch is refused too.
    fn refused(&mut self, step: WriteStep, error: std::io::Error) -> SpoolError {
        let error = Arc::new(error);
        match classify(step, &error) {
            Verdict::Full => SpoolError::Full(error),
            Verdict::Fatal => {
                tracing::error!(
                    segment = self.segment,
                    ?step,
                    %error,
                    "spool write failed; the spool takes no more writes"
                );
                self.failed = Some(error.clone());
                self.health.send_replace(SpoolHealth::Failed(error.clone()));
                SpoolError::Failed(error)
            }
        }
    }

    /// A batch refused for lack of space turns the spool `Full` until a batch succeeds.
    /// (Compaction running out of space does not: it only delays winning space back.)
    fn note_full(&self, e: &SpoolError) {
        if matches!(e, SpoolError::Full(_)) && !matches!(*self.health.borrow(), SpoolHealth::Full) {
            tracing::warn!(error = %e, "the spool is out of space; refusing new messages");
            self.health.send_replace(SpoolHealth::Full);
        }
    }
}

fn fail_all(batch: Vec<(Op, Reply)>, e: &SpoolError) {
    for (_, reply) in batch {
        let _ = reply.send(Err(for_caller(e)));
    }
}

/// The error each caller of a failed batch gets; the kind is kept so that the session
/// can answer "out of space" differently from "broken".
fn for_caller(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Full(io) => SpoolError::Full(io.clone()),
        SpoolError::Failed(io) => SpoolError::Failed(io.clone()),
        SpoolError::Closed => SpoolError::Closed,
        other => SpoolError::Store(other.to_string()),
    }
}

/// Appends an operation's record; returns the body's offset inside the record for stores.
fn encode_op(op: &Op, buf: &mut Vec<u8>) -> Result<u64, SpoolError> {
    match op {
        Op::Store(meta, body) => {
            let m = to_json(meta)?;
            let meta_len = (m.len() as u32).to_le_bytes();
            encode(KIND_STORE, &[&meta_len, &m, body], buf);
            Ok((HEADER + 1 + 4 + m.len()) as u64)
        }
        Op::Update(id, updates) => {
            let rec = UpdateRecord {
                id: *id,
                updates: updates.clone(),
            };
            encode(KIND_UPDATE, &[&to_json(&rec)?], buf);
            Ok(0)
        }
        Op::Ownership(id, ownership) | Op::Commit(id, ownership) => {
            let rec = OwnershipRecord {
                id: *id,
                ownership: ownership.clone(),
            };
            encode(KIND_OWNERSHIP, &[&to_json(&rec)?], buf);
            Ok(0)
        }
        Op::Remove(id) => {
            encode(KIND_REMOVE, &[id.as_bytes()], buf);
            Ok(0)
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(value).map_err(|e| SpoolError::Store(e.to_string()))
}

fn apply(index: &mut Index, op: Op, segment: u64, body_at: u64) -> Result<Done, SpoolError> {
    match op {
        Op::Store(meta, body) => {
            index.insert(Entry {
                meta,
                segment,
                body_at,
                body_len: body.len() as u64,
            });
            Ok(Done::Unit)
        }
        Op::Update(id, updates) => {
            let entry = index
                .messages
                .get_mut(&id)
                .ok_or(SpoolError::NotFound(id))?;
            apply_updates(&mut entry.meta, &updates)?;
            Ok(Done::Meta(Box::new(entry.meta.clone())))
        }
        Op::Ownership(id, ownership) | Op::Commit(id, ownership) => {
            let entry = index
                .messages
                .get_mut(&id)
                .ok_or(SpoolError::NotFound(id))?;
            entry.meta.ownership = ownership;
            Ok(Done::Unit)
        }
        Op::Remove(id) => {
            index.remove(&id);
            Ok(Done::Unit)
        }
    }
}

/// The segment whose live messages should move to the current one, if any: the oldest
/// one holding live messages (only a prefix of segments can be deleted, see
/// [`first_needed`]), once at least two segments are closed and a quarter or less of the
/// closed segments' bytes is live. The ratio is over all closed segments, not the oldest
/// alone: a dense oldest segment in front of a long sparse tail still pins the tail, and
/// moving it is the first step of winning that back. A dense backlog (the queue itself is
/// large) is left alone, so disk use stays within about four times the live bytes plus
/// two segments, and every byte rewritten frees three.
fn compaction_target(
    live: &HashMap<u64, Live>,
    closed: &BTreeMap<u64, u64>,
    current: u64,
) -> Option<u64> {
    let target = live.keys().copied().filter(|n| *n < current).min()?;
    let live_bytes: u64 = live
        .iter()
        .filter(|(n, _)| **n < current)
        .map(|(_, l)| l.bytes)
        .sum();
    let disk_bytes: u64 = closed.values().sum();
    (closed.len() >= 2 && live_bytes.saturating_mul(4) <= disk_bytes).then_some(target)
}

/// The first segment still needed: the oldest holding a live message, or the current
/// one. Older segments go, oldest first; a newer one may hold updates for messages stored
/// in an older one, so nothing past the first live segment is deleted.
fn first_needed(index: &Index, current: u64) -> u64 {
    index
        .live
        .keys()
        .min()
        .copied()
        .unwrap_or(current)
        .min(current)
}

impl Spool for LogSpool {
    async fn store(&self, meta: MessageMeta, body: Bytes) -> Result<(), SpoolError> {
        self.submit(Op::Store(meta, body)).await.map(|_| ())
    }

    async fn update(
        &self,
        id: MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<MessageMeta, SpoolError> {
        match self.submit(Op::Update(id, updates)).await? {
            Done::Meta(meta) => Ok(*meta),
            Done::Unit => Err(SpoolError::Store("update returned no metadata".into())),
        }
    }

    async fn set_ownership(&self, id: MessageId, ownership: Ownership) -> Result<(), SpoolError> {
        self.submit(Op::Ownership(id, ownership)).await.map(|_| ())
    }

    async fn commit_copy(&self, id: MessageId, ownership: Ownership) -> Result<(), SpoolError> {
        self.submit(Op::Commit(id, ownership)).await.map(|_| ())
    }

    async fn remove(&self, id: MessageId) -> Result<(), SpoolError> {
        self.submit(Op::Remove(id)).await.map(|_| ())
    }

    /// Only the removal is written: replay drops a removed message's records anyway.
    async fn finish(
        &self,
        id: MessageId,
        _updates: Vec<RecipientUpdate>,
    ) -> Result<(), SpoolError> {
        self.remove(id).await
    }

    async fn load_meta(&self, id: MessageId) -> Result<Option<MessageMeta>, SpoolError> {
        Ok(self
            .shared
            .index()
            .messages
            .get(&id)
            .map(|e| e.meta.clone()))
    }

    async fn load_body(&self, id: MessageId) -> Result<Bytes, SpoolError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut attempt = 0;
            loop {
                let entry = shared
                    .index()
                    .messages
                    .get(&id)
                    .cloned()
                    .ok_or(SpoolError::NotFound(id))?;
                let mut buf = vec![0u8; entry.body_len as usize];
                match File::open(segment_path(&shared.dir, entry.segment)) {
                    Ok(file) => {
                        file.read_exact_at(&mut buf, entry.body_at)?;
                        return Ok(Bytes::from(buf));
                    }
                    // Compaction moved the message and deleted its old segment between
                    // the lookup and the open: look it up again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {
                        attempt += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .await
        .map_err(|e| SpoolError::Store(e.to_string()))?
    }

    async fn list(&self) -> Result<Vec<MessageMeta>, SpoolError> {
        let mut all: Vec<MessageMeta> = self
            .shared
            .index()
            .messages
            .values()
            .map(|e| e.meta.clone())
            .collect();
        all.sort_by_key(|m| m.id);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(entries: &[(u64, usize, u64)]) -> HashMap<u64, Live> {
        entries
            .iter()
            .map(|&(n, messages, bytes)| (n, Live { messages, bytes }))
            .collect()
    }

    /// Segments `from..to`, each `bytes` long.
    fn closed(from: u64, to: u64, bytes: u64) -> BTreeMap<u64, u64> {
        (from..to).map(|n| (n, bytes)).collect()
    }

    #[test]
    fn a_deferred_message_in_front_of_dead_segments_is_moved() {
        let live = live(&[(3, 1, 100), (9, 40, 900)]);
        assert_eq!(compaction_target(&live, &closed(3, 9, 1000), 9), Some(3));
    }

    #[test]
    fn a_dense_oldest_segment_in_front_of_a_sparse_tail_is_moved_too() {
        let live = live(&[(1, 20, 900), (2, 1, 50), (3, 1, 50), (4, 1, 50), (5, 1, 50)]);
        assert_eq!(compaction_target(&live, &closed(1, 9, 1000), 9), Some(1));
    }

    #[test]
    fn a_backlog_or_a_short_log_is_left_alone() {
        // Most of what is on disk is live: the queue is long, not the log.
        let backlog = live(&[(3, 10, 900), (4, 10, 900), (5, 10, 900)]);
        assert_eq!(compaction_target(&backlog, &closed(3, 6, 1000), 6), None);
        // Only the current segment holds live messages.
        assert_eq!(
            compaction_target(&live(&[(9, 1, 10)]), &closed(7, 9, 1000), 9),
            None
        );
        // One closed segment: nothing worth winning back yet.
        assert_eq!(
            compaction_target(&live(&[(8, 1, 10)]), &closed(8, 9, 1000), 9),
            None
        );
        assert_eq!(
            compaction_target(&HashMap::new(), &closed(3, 9, 1000), 9),
            None
        );
    }

    #[test]
    fn the_threshold_is_a_quarter_of_the_closed_bytes() {
        let disk = closed(1, 3, 500);
        assert_eq!(compaction_target(&live(&[(1, 5, 250)]), &disk, 3), Some(1));
        assert_eq!(compaction_target(&live(&[(1, 5, 251)]), &disk, 3), None);
        // Live bytes in the current segment do not count against the closed ones.
        assert_eq!(
            compaction_target(&live(&[(1, 5, 250), (3, 9, 9000)]), &disk, 3),
            Some(1)
        );
    }
}
