//! Durable storage of accepted messages.
//!
//! The contract every backend keeps: when a method returns `Ok`, the change is on stable
//! storage (fsync of data and metadata, or a store commit). Callers answer 250 only after
//! `store` returned `Ok`. Backends batch concurrent writes into one sync (group commit).

pub mod health;
pub mod log;
pub mod model;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

pub use health::SpoolHealth;
pub use log::{LogSpool, LogSpoolOptions};
pub use model::*;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool store error: {0}")]
    Store(String),
    #[error("message {0} is not in the spool")]
    NotFound(MessageId),
    #[error("spool record is corrupt: {0}")]
    Corrupt(String),
    #[error("the spool in {0} is in use by another process (a running node?)")]
    Locked(String),
    #[error("the spool writer has stopped")]
    Closed,
    /// Out of space: this write was not made; later ones may be (see [`health`]).
    #[error("the spool is out of space: {0}")]
    Full(#[source] Arc<std::io::Error>),
    /// A write failed so that the spool cannot keep its promise; it refuses every write
    /// from then on (see [`health`]).
    #[error("the spool failed and takes no more writes: {0}")]
    Failed(#[source] Arc<std::io::Error>),
    /// The copies the guarantee needs could not be made; nothing of the message is kept
    /// anywhere that could deliver it.
    #[error("not enough copies: {0}")]
    NotReplicated(String),
    /// Copies were made but not every holder confirmed the commit: the message is kept and
    /// delivered, but the client cannot be told 250 (nor 451, see docs/replication.md).
    #[error("copies made but the commit is unconfirmed: {0}")]
    OutcomeUnknown(String),
}

/// Storage for queued messages. One backend today; replication adds peers that call the
/// same operations on their own spools.
pub trait Spool: Send + Sync + 'static {
    /// Stores a new message (metadata and body) durably.
    fn store(
        &self,
        meta: MessageMeta,
        body: Bytes,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send;

    /// Applies recipient state changes durably and returns the updated metadata.
    fn update(
        &self,
        id: MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> impl Future<Output = Result<MessageMeta, SpoolError>> + Send;

    /// Replaces the ownership record (takeover, drain).
    fn set_ownership(
        &self,
        id: MessageId,
        ownership: Ownership,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send;

    /// Marks a replica's pending copy committed. The record needs no sync of its own: it
    /// becomes durable with the spool's next synced write. A commit that a crash takes
    /// leaves the copy pending, as if the commit had never arrived, which replication
    /// allows for anyway (the commit travels after the 250 and may be lost on the way).
    fn commit_copy(
        &self,
        id: MessageId,
        ownership: Ownership,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send {
        self.set_ownership(id, ownership)
    }

    /// Removes a message whose recipients are all done.
    fn remove(&self, id: MessageId) -> impl Future<Output = Result<(), SpoolError>> + Send;

    /// Removes a message whose last `updates` make every recipient final. The outcomes
    /// are in the delivery log; a spool whose records vanish with the message may skip
    /// writing them and make the removal its one synced write, which is what the default
    /// does not assume.
    fn finish(
        &self,
        id: MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send {
        async move {
            self.update(id, updates).await?;
            self.remove(id).await
        }
    }

    fn load_meta(
        &self,
        id: MessageId,
    ) -> impl Future<Output = Result<Option<MessageMeta>, SpoolError>> + Send;

    fn load_body(&self, id: MessageId) -> impl Future<Output = Result<Bytes, SpoolError>> + Send;

    /// Every message in the spool, for recovery at start and for the queue summary.
    fn list(&self) -> impl Future<Output = Result<Vec<MessageMeta>, SpoolError>> + Send;
}
