//! The sender domains a pool serves and their DKIM keys, reloaded while the node runs.
//!
//! In a pool the operator writes the domain set into a fixed set of shard Secrets and an
//! index ConfigMap ([`shard`]); [`source`] watches the index through the API server and
//! fetches the shards that changed, [`set`] builds a complete new [`DomainSet`] from them,
//! and [`DomainState`] swaps it in whole. Adding a domain, rotating a key or removing a
//! domain therefore reaches a running node within seconds and restarts nothing: the pod
//! template does not mention domains at all.
//!
//! Why the API server rather than a mounted volume: the kubelet refreshes mounted
//! Secrets only on its sync period (a minute or more), and mounting one Secret per
//! domain grows the pod template with every domain. Why shards the operator copies
//! rather than the MailDomains' own key Secrets: the node's Role then names a fixed list
//! of objects (`get` on the shards, `watch` on the index), so a node can read nothing
//! else in its namespace, not the peer CA key, not other pools' keys.
//!
//! A standalone node (no Kubernetes) keeps `relay.domains` and `dkim[]` in its
//! configuration file; both sources can be used together.

pub mod set;
pub mod shard;
pub mod source;

use std::sync::Arc;

use tokio::sync::watch;

pub use set::{DomainSet, Rejected};
pub use source::{DomainsError, run};

/// The current [`DomainSet`], replaced atomically: readers take an `Arc` of one whole
/// set and keep using it for as long as they need (one message), whatever reloads meanwhile.
#[derive(Debug)]
pub struct DomainState {
    current: watch::Sender<Arc<DomainSet>>,
}

impl DomainState {
    /// A state holding the unloaded placeholder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            current: watch::Sender::new(Arc::new(DomainSet::unloaded())),
        })
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<DomainSet> {
        self.current.borrow().clone()
    }

    /// Puts `set` in force.
    pub fn replace(&self, set: DomainSet) {
        self.current.send_replace(Arc::new(set));
    }

    /// Waits until a loaded set is in force (for tests and start-up logs).
    pub async fn loaded(&self) {
        let mut rx = self.current.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we wait.
        let _ = rx.wait_for(|set| set.is_loaded()).await;
    }
}
