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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{MessageId, MessageMeta, Ownership, RecipientUpdate, Spool, SpoolError};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Most operations written under one sync.
const MAX_BATCH: usize = 1024;
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
    /// A new segment is started once the current one reaches this size.
    pub segment_bytes: u64,
}

impl Default for LogSpoolOptions {
    fn default() -> Self {
        Self {
            on_batch: None,
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

#[derive(Default)]
struct Index {
    messages: HashMap<MessageId, Entry>,
    /// Live messages stored per segment, for deleting segments.
    live: HashMap<u64, usize>,
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        *self.live.entry(entry.segment).or_default() += 1;
        if let Some(old) = self.messages.insert(entry.meta.id, entry) {
            self.release(old.segment);
        }
    }

    fn remove(&mut self, id: &MessageId) {
        if let Some(old) = self.messages.remove(id) {
            self.release(old.segment);
        }
    }

    fn release(&mut self, segment: u64) {
        if let Some(n) = self.live.get_mut(&segment) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&segment);
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
    Remove(MessageId),
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
        let oldest = segments.first().copied().unwrap_or(current);
        let writer = Writer::new(shared.clone(), oldest, current, options)?;
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            shared,
            ops: Arc::new(WriterHandle {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
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
    /// Oldest segment file still on disk.
    oldest: u64,
    file: File,
    size: u64,
    options: LogSpoolOptions,
}

impl Writer {
    fn new(
        shared: Arc<Shared>,
        oldest: u64,
        segment: u64,
        options: LogSpoolOptions,
    ) -> Result<Self, SpoolError> {
        let file = OpenOptions::new()
            .append(true)
            .open(segment_path(&shared.dir, segment))?;
        let size = file.metadata()?.len();
        Ok(Self {
            shared,
            segment,
            oldest,
            file,
            size,
            options,
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

    /// Writes a batch, syncs once, then applies it to the index and answers every caller.
    fn commit(&mut self, batch: Vec<(Op, Reply)>) {
        if self.size >= self.options.segment_bytes
            && let Err(e) = self.rotate()
        {
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
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Nothing of this batch is acknowledged; a partial write is a torn tail that
            // the next open cuts off.
            let e = SpoolError::Io(e);
            fail_all(batch, &e);
            return;
        }
        self.size += buf.len() as u64;
        if let Some(cb) = &self.options.on_batch {
            cb(batch.len());
        }
        let mut index = self.shared.index();
        for ((op, reply), at) in batch.into_iter().zip(placed) {
            let result = at.and_then(|body_at| apply(&mut index, op, self.segment, body_at));
            let _ = reply.send(result);
        }
        let keep_from = first_needed(&index, self.segment);
        drop(index);
        while self.oldest < keep_from {
            if let Err(e) = fs::remove_file(segment_path(&self.shared.dir, self.oldest)) {
                tracing::warn!(segment = self.oldest, error = %e, "could not delete a spent spool segment");
            }
            self.oldest += 1;
        }
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        let next = self.segment + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.shared.dir, next))?;
        sync_dir(&self.shared.dir)?;
        self.segment = next;
        self.file = file;
        self.size = 0;
        Ok(())
    }
}

fn fail_all(batch: Vec<(Op, Reply)>, e: &SpoolError) {
    for (_, reply) in batch {
        let _ = reply.send(Err(SpoolError::Store(e.to_string())));
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
        Op::Ownership(id, ownership) => {
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
        Op::Ownership(id, ownership) => {
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

    async fn remove(&self, id: MessageId) -> Result<(), SpoolError> {
        self.submit(Op::Remove(id)).await.map(|_| ())
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
        let entry = self
            .shared
            .index()
            .messages
            .get(&id)
            .cloned()
            .ok_or(SpoolError::NotFound(id))?;
        let path = segment_path(&self.shared.dir, entry.segment);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; entry.body_len as usize];
            File::open(path)?.read_exact_at(&mut buf, entry.body_at)?;
            Ok(Bytes::from(buf))
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
