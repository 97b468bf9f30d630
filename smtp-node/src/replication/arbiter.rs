//! The node's side of the arbiter: its own Lease and the pool's view in the API server.
//!
//! Everything this task writes is a `coordination.k8s.io/v1` Lease in the pool's
//! namespace, labelled `smtpfleet.io/pool=<pool>` so that one list call reads them all:
//!
//! - `<pool>-node-<node>`, renewed only by its node (`holderIdentity` =
//!   `<node>/<incarnation>`): liveness;
//! - `<pool>-view`, whose annotation `smtpfleet.io/view` holds the [`View`] as JSON and
//!   which is only ever replaced with the `resourceVersion` just read (compare-and-set),
//!   so that two nodes changing the view at once cannot both win.
//!
//! Each cycle renews the own Lease, lists the pool's Leases, folds every member's renewal
//! into what this node has seen (by its own monotonic clock, [`lease::observe`]), and
//! changes the view when needed: join when this incarnation is not a member, correct its
//! address when it moved, remove members whose renewals have not changed for
//! [`LeaseTiming::expired`] — and on no other evidence. Then it publishes a [`Standing`].
//!
//! The decisions are the pure functions at the top of this file; [`Arbiter`] only reads
//! and writes. A failing API server is never an error of the task: renewals lapse, the
//! node fences itself after `fence_after`, and the task keeps trying.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lease::{self, LeaseTiming, Observed};
use super::{Holder, Standing, View};
use crate::config::ArbiterConfig;
use crate::spool::NodeId;

/// Label on every Lease of the arbiter, valued with the pool's name.
pub const POOL_LABEL: &str = "smtpfleet.io/pool";
/// Label telling a node's Lease (`node`) from the view (`view`).
pub const ROLE_LABEL: &str = "smtpfleet.io/lease";
/// Annotation of the view Lease holding the [`View`] as JSON.
pub const VIEW_ANNOTATION: &str = "smtpfleet.io/view";

/// Name of `node`'s Lease in `pool`.
pub fn lease_name(pool: &str, node: &NodeId) -> String {
    format!("{pool}-node-{node}")
}

/// Name of the Lease holding `pool`'s view.
pub fn view_name(pool: &str) -> String {
    format!("{pool}-view")
}

/// The `holderIdentity` a holder writes into its Lease: the node and its spool's
/// incarnation, so that a reader can tell a new disk from the old one.
pub fn holder_identity(me: &Holder) -> String {
    format!("{}/{}", me.node, me.incarnation)
}

/// The pool's timings for a Lease `duration`: every interval keeps its proportion to the
/// duration in [`LeaseTiming::default`], so a shorter Lease keeps the same safety
/// argument (fencing before expiry, two renewals per fencing period, the same tolerated
/// drift).
pub fn scaled_timing(duration: Duration) -> LeaseTiming {
    let base = LeaseTiming::default();
    let ratio = duration.as_secs_f64() / base.duration.as_secs_f64();
    let scale =
        |d: Duration| Duration::from_millis((d.as_secs_f64() * ratio * 1000.0).round() as u64);
    LeaseTiming {
        duration,
        renew_every: scale(base.renew_every),
        fence_after: scale(base.fence_after),
        takeover_margin: scale(base.takeover_margin),
    }
}

/// What a reader compares between two reads of a node's Lease: who renewed it and when.
/// `None` (no Lease, or no spec) is a value like any other: a Lease that stays absent
/// is a Lease that does not change.
pub fn renewal_of(spec: Option<&LeaseSpec>) -> String {
    match spec {
        None => "absent".to_owned(),
        Some(spec) => format!(
            "{}@{}",
            spec.holder_identity.as_deref().unwrap_or_default(),
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        ),
    }
}

/// The spec of this node's Lease, renewed at `now`. The acquisition time stays while the
/// same incarnation holds it.
pub fn renewed_spec(
    current: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    timing: &LeaseTiming,
) -> LeaseSpec {
    let same_holder = current.and_then(|s| s.holder_identity.as_deref()) == Some(identity);
    let acquired = current
        .filter(|_| same_holder)
        .and_then(|s| s.acquire_time.clone())
        .unwrap_or(MicroTime(now));
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration_seconds(timing.duration)),
        acquire_time: Some(acquired),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if current.is_some() && !same_holder {
            transitions.saturating_add(1)
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// `leaseDurationSeconds` for a duration, rounded up: a reader using the Lease's own
/// field must never expire it earlier than the pool's timing does.
fn duration_seconds(duration: Duration) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The view held by the view Lease. A Lease without the annotation, or with one that does
/// not parse, is an error rather than an empty view: starting the epochs again from zero
/// would make old copies look current.
pub fn view_of(lease: &Lease) -> Result<View, ArbiterError> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let text = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VIEW_ANNOTATION))
        .ok_or_else(|| ArbiterError::BadView {
            lease: name.clone(),
            reason: format!("no {VIEW_ANNOTATION} annotation"),
        })?;
    serde_json::from_str(text).map_err(|e| ArbiterError::BadView {
        lease: name,
        reason: e.to_string(),
    })
}

/// Why this node changes the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewChange {
    /// This incarnation is not a member (first start, removed, or a new disk).
    Join,
    /// This incarnation is a member but is now reached elsewhere (a pod restarted on the
    /// same disk gets a new address) or moved data centre. Its `since` stays.
    Readdress,
    /// These members' Leases have not changed for the expiry.
    Remove(Vec<NodeId>),
    /// This node starts draining (`true`) or stops (`false`), as asked on its admin API.
    Leaving(bool),
}

/// The view this node should write, given the view read (`None`: there is none yet) and
/// the members it has seen expire; `None` when the view is right as it is. Joining comes
/// first: a node that is not a member has no business removing others.
pub fn plan_view(
    current: Option<&View>,
    me: &Holder,
    data_centre: &str,
    address: &str,
    expired: &[NodeId],
    leaving: Option<bool>,
) -> Option<(ViewChange, View)> {
    let base = current.cloned().unwrap_or_default();
    if let Some(next) = base.join(me, data_centre, address) {
        return Some((ViewChange::Join, next));
    }
    if let Some(member) = base.members.get(&me.node)
        && (member.address != address || member.data_centre != data_centre)
    {
        let mut next = base.clone();
        next.epoch += 1;
        if let Some(m) = next.members.get_mut(&me.node) {
            m.address = address.to_owned();
            m.data_centre = data_centre.to_owned();
        }
        return Some((ViewChange::Readdress, next));
    }
    // `None`: nobody asked since start; what the view says stands (a drain survives a
    // restart of the draining node).
    if let Some(next) = leaving.and_then(|l| base.mark_leaving(me, l)) {
        return Some((ViewChange::Leaving(leaving == Some(true)), next));
    }
    let gone: Vec<NodeId> = expired
        .iter()
        .filter(|n| **n != me.node && base.members.contains_key(*n))
        .cloned()
        .collect();
    base.remove(&gone)
        .map(|next| (ViewChange::Remove(gone), next))
}

/// Whether this node must hold back: it has not renewed its Lease, or not read the view,
/// within `fence_after` (both counted from when the request was sent), or the view it
/// read does not have this incarnation.
pub fn fenced(
    me: &Holder,
    view: Option<&View>,
    renewal_sent: Option<Instant>,
    view_read_sent: Option<Instant>,
    now: Instant,
    timing: &LeaseTiming,
) -> bool {
    let fresh = |at: Option<Instant>| {
        at.is_some_and(|at| !timing.must_fence(now.saturating_duration_since(at)))
    };
    !(fresh(renewal_sent) && fresh(view_read_sent) && view.is_some_and(|v| v.is_member(me)))
}

/// What this node has seen of the other members' Leases, by its own clock.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    observed: BTreeMap<NodeId, Observed<Instant>>,
}

impl Liveness {
    /// Folds one read of the pool's Leases (`renewals`: node → [`renewal_of`] its Lease)
    /// into what was seen before, for every member of `view` except `me`. Nodes that are
    /// no longer members are forgotten: if they join again, their clock starts afresh.
    pub fn fold(
        &mut self,
        view: &View,
        me: &NodeId,
        renewals: &BTreeMap<NodeId, String>,
        now: Instant,
    ) {
        let absent = renewal_of(None);
        let mut next = BTreeMap::new();
        for node in view.members.keys().filter(|n| *n != me) {
            let renewal = renewals.get(node).unwrap_or(&absent);
            let seen = lease::observe(self.observed.get(node), renewal, now);
            next.insert(node.clone(), seen);
        }
        self.observed = next;
    }

    /// Members whose renewal has not changed for the expiry (`LeaseTiming::expired`).
    pub fn expired(&self, now: Instant, timing: &LeaseTiming) -> Vec<NodeId> {
        self.observed
            .iter()
            .filter(|(_, seen)| timing.expired(now.saturating_duration_since(seen.seen_at)))
            .map(|(node, _)| node.clone())
            .collect()
    }
}

/// An arbiter request failed.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    /// The address to advertise to peers cannot be made from the configuration.
    /// The client configuration could not be read (kubeconfig file, in-cluster files).
    #[error("API server client: {0}")]
    Client(String),
    /// The API server refused or could not be reached.
    #[error("lease {lease:?}: {source}")]
    Kube {
        lease: String,
        #[source]
        source: kube::Error,
    },
    /// The view Lease exists but does not hold a view this node can read. Nobody changes
    /// it automatically: the pool stays fenced until it is repaired.
    #[error("view lease {lease:?}: {reason}")]
    BadView { lease: String, reason: String },
    /// Writes kept conflicting with other nodes' writes within one cycle.
    #[error("lease {lease:?} kept changing while writing it")]
    Conflict { lease: String },
}

impl ArbiterError {
    /// Errors that retrying cannot cure: the API server refuses the object itself (for
    /// instance a node name that is not a valid object name).
    pub fn is_unrecoverable(&self) -> bool {
        matches!(self, ArbiterError::Kube { source: kube::Error::Api(s), .. } if s.code == 422)
    }
}

/// A client for the API server named by the arbiter configuration: the kubeconfig file
/// when one is given, else the pod's service account (or the environment's kubeconfig).
pub async fn client(config: &ArbiterConfig) -> Result<Client, ArbiterError> {
    let config = match &config.kubeconfig {
        Some(path) => kubeconfig(path).await?,
        None => Config::infer()
            .await
            .map_err(|e| ArbiterError::Client(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ArbiterError::Client(e.to_string()))
}

async fn kubeconfig(path: &Path) -> Result<Config, ArbiterError> {
    let file = Kubeconfig::read_from(path)
        .map_err(|e| ArbiterError::Client(format!("{}: {e}", path.display())))?;
    Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| ArbiterError::Client(format!("{}: {e}", path.display())))
}

/// Who this node is in the pool and where the pool's Leases live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArbiterSettings {
    pub namespace: String,
    pub pool: String,
    /// This node and its spool's incarnation.
    pub me: Holder,
    pub data_centre: String,
    /// Where peers reach this node's peer listener (`host:port`).
    pub address: String,
    pub timing: LeaseTiming,
}

impl ArbiterSettings {
    /// Settings from the configuration file, with timings scaled from its Lease duration.
    pub fn new(config: &ArbiterConfig, me: Holder, data_centre: &str, address: &str) -> Self {
        Self {
            namespace: config.namespace.clone(),
            pool: config.pool.clone(),
            me,
            data_centre: data_centre.to_owned(),
            address: address.to_owned(),
            timing: scaled_timing(config.lease_duration),
        }
    }
}

/// Write attempts per cycle after conflicts: each conflict means another node's write
/// landed, so a handful covers the pool's nodes joining at once.
const ATTEMPTS: usize = 5;

/// Keeps this node's Lease and its membership in the view, and publishes its
/// [`Standing`].
pub struct Arbiter {
    api: Api<Lease>,
    settings: ArbiterSettings,
    standing: watch::Sender<Standing>,
    /// The own Lease as last written, so that a renewal replaces it without reading.
    own: Option<Lease>,
    /// When the last successful renewal was sent.
    renewed: Option<Instant>,
    /// When the read of the view last held in `view` was sent.
    view_read: Option<Instant>,
    view: Option<View>,
    liveness: Liveness,
    /// Whether this node is to be marked leaving in the view (drain), as last asked.
    leaving: watch::Receiver<Option<bool>>,
}

impl Arbiter {
    /// An arbiter that has not run yet: its standing is fenced, with no view.
    pub fn new(client: Client, settings: ArbiterSettings) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        let (standing, _) = watch::channel(Standing {
            view: None,
            fenced: true,
            until: None,
        });
        Self {
            api,
            settings,
            standing,
            own: None,
            renewed: None,
            view_read: None,
            view: None,
            liveness: Liveness::default(),
            leaving: watch::channel(None).1,
        }
    }

    /// Where the admin API's drain requests come from.
    pub fn with_leaving(mut self, leaving: watch::Receiver<Option<bool>>) -> Self {
        self.leaving = leaving;
        self
    }

    /// The standing as it changes; fenced until the first renewal and view read.
    pub fn subscribe(&self) -> watch::Receiver<Standing> {
        self.standing.subscribe()
    }

    /// Runs cycles until `shutdown`; the standing is fenced from then on (also when the
    /// task is dropped or panics). Returns an error only when the API server refuses this
    /// node's objects as invalid; every other failure is logged and left to fencing.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ArbiterError> {
        let _fence = FenceOnDrop(self.standing.clone());
        let timing = self.settings.timing;
        loop {
            // Also after waking at the fencing deadline: publish before anything can hang.
            self.publish();
            let started = Instant::now();
            // A cycle may take until the moment the node must fence: past it, the node
            // publishes that it is fenced rather than wait for a hung request.
            let limit = self
                .fence_deadline()
                .map(|d| d.saturating_duration_since(started))
                .filter(|d| !d.is_zero())
                .unwrap_or(timing.fence_after);
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                outcome = tokio::time::timeout(limit, self.cycle()) => outcome,
            };
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) if err.is_unrecoverable() => {
                    self.publish();
                    return Err(err);
                }
                Ok(Err(err)) => tracing::warn!(error = %err, "arbiter cycle failed"),
                Err(_) => tracing::warn!(timeout = ?limit, "arbiter cycle timed out"),
            }
            self.publish();
            let mut wake = started + timing.renew_every;
            if let Some(deadline) = self.fence_deadline().filter(|d| *d > Instant::now()) {
                wake = wake.min(deadline);
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// When the node must fence unless it renews and reads the view again.
    fn fence_deadline(&self) -> Option<Instant> {
        let fence = self.settings.timing.fence_after;
        match (self.renewed, self.view_read) {
            (Some(r), Some(v)) => Some(r.min(v) + fence),
            _ => None,
        }
    }

    fn publish(&self) {
        let me = &self.settings.me;
        let next = Standing {
            fenced: fenced(
                me,
                self.view.as_ref(),
                self.renewed,
                self.view_read,
                Instant::now(),
                &self.settings.timing,
            ),
            view: self.view.clone(),
            until: self.fence_deadline(),
        };
        self.standing.send_if_modified(|current| {
            if current.fenced != next.fenced {
                if next.fenced {
                    tracing::warn!(node = %me.node, "fenced: Lease renewal or view read lapsed");
                } else {
                    tracing::info!(node = %me.node, "unfenced: Lease renewed and member of the view");
                }
            }
            let changed = current.differs_from(&next);
            *current = next;
            changed
        });
    }

    /// One cycle: renew, read, observe, change the view if needed.
    async fn cycle(&mut self) -> Result<(), ArbiterError> {
        self.renew().await?;
        let read_sent = Instant::now();
        let selector = format!("{POOL_LABEL}={}", self.settings.pool);
        let leases = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| self.error(&selector, source))?;
        let view_lease_name = view_name(&self.settings.pool);
        let prefix = format!("{}-node-", self.settings.pool);
        let mut view_lease = None;
        let mut renewals = BTreeMap::new();
        for lease in leases.items {
            let name = lease.metadata.name.clone().unwrap_or_default();
            if name == view_lease_name {
                view_lease = Some(lease);
            } else if let Some(node) = name.strip_prefix(&prefix) {
                renewals.insert(NodeId(node.to_owned()), renewal_of(lease.spec.as_ref()));
            }
        }
        let mut current = match &view_lease {
            Some(lease) => Some(view_of(lease)?),
            None => None,
        };
        if let Some(view) = &current {
            self.liveness
                .fold(view, &self.settings.me.node, &renewals, read_sent);
            self.set_view(view.clone(), read_sent);
        }
        self.change_view(view_lease, current.take()).await
    }

    /// Creates or renews the own Lease; a conflict (someone else wrote it, or it was
    /// deleted and re-created) re-reads it.
    async fn renew(&mut self) -> Result<(), ArbiterError> {
        let name = lease_name(&self.settings.pool, &self.settings.me.node);
        let identity = holder_identity(&self.settings.me);
        let pp = PostParams::default();
        for _ in 0..ATTEMPTS {
            if self.own.is_none() {
                self.own = self
                    .api
                    .get_opt(&name)
                    .await
                    .map_err(|source| self.error(&name, source))?;
            }
            let sent = Instant::now();
            let spec = renewed_spec(
                self.own.as_ref().and_then(|l| l.spec.as_ref()),
                &identity,
                wall_clock(),
                &self.settings.timing,
            );
            let written = match &self.own {
                Some(current) => {
                    let mut lease = current.clone();
                    lease.spec = Some(spec);
                    self.api.replace(&name, &pp, &lease).await
                }
                None => {
                    let lease = Lease {
                        metadata: self.metadata(&name, "node"),
                        spec: Some(spec),
                    };
                    self.api.create(&pp, &lease).await
                }
            };
            match written {
                Ok(lease) => {
                    self.own = Some(lease);
                    self.renewed = Some(sent);
                    return Ok(());
                }
                Err(kube::Error::Api(status))
                    if status.is_conflict()
                        || status.is_already_exists()
                        || status.is_not_found() =>
                {
                    tracing::debug!(lease = %name, "own lease changed under us; re-reading");
                    self.own = None;
                }
                Err(source) => {
                    self.own = None;
                    return Err(self.error(&name, source));
                }
            }
        }
        Err(ArbiterError::Conflict { lease: name })
    }

    /// Writes the planned view by compare-and-set on the view Lease read; on a conflict
    /// re-reads it and plans again. Only after a renewal in this very cycle: a node that
    /// cannot renew changes nothing.
    async fn change_view(
        &mut self,
        mut lease: Option<Lease>,
        mut current: Option<View>,
    ) -> Result<(), ArbiterError> {
        let name = view_name(&self.settings.pool);
        let pp = PostParams::default();
        for _ in 0..ATTEMPTS {
            let sent = Instant::now();
            let expired = self.liveness.expired(sent, &self.settings.timing);
            let s = &self.settings;
            let Some((change, next)) = plan_view(
                current.as_ref(),
                &s.me,
                &s.data_centre,
                &s.address,
                &expired,
                *self.leaving.borrow(),
            ) else {
                return Ok(());
            };
            let text = serde_json::to_string(&next).map_err(|e| ArbiterError::BadView {
                lease: name.clone(),
                reason: e.to_string(),
            })?;
            let written = match &lease {
                Some(read) => {
                    let mut object = read.clone();
                    object
                        .metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(VIEW_ANNOTATION.to_owned(), text);
                    self.api.replace(&name, &pp, &object).await
                }
                None => {
                    let mut metadata = self.metadata(&name, "view");
                    metadata.annotations =
                        Some(BTreeMap::from([(VIEW_ANNOTATION.to_owned(), text)]));
                    let object = Lease {
                        metadata,
                        spec: None,
                    };
                    self.api.create(&pp, &object).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(epoch = next.epoch, ?change, "view changed");
                    self.set_view(next, sent);
                    return Ok(());
                }
                Err(kube::Error::Api(status))
                    if status.is_conflict()
                        || status.is_already_exists()
                        || status.is_not_found() =>
                {
                    tracing::debug!(?change, "view changed under us; re-reading");
                    let reread = Instant::now();
                    lease = self
                        .api
                        .get_opt(&name)
                        .await
                        .map_err(|source| self.error(&name, source))?;
                    current = lease.as_ref().map(view_of).transpose()?;
                    if let Some(view) = &current {
                        self.set_view(view.clone(), reread);
                    }
                }
                Err(source) => return Err(self.error(&name, source)),
            }
        }
        Err(ArbiterError::Conflict { lease: name })
    }

    fn set_view(&mut self, view: View, read_sent: Instant) {
        self.view = Some(view);
        self.view_read = Some(read_sent);
    }

    fn metadata(&self, name: &str, role: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.settings.namespace.clone()),
            labels: Some(BTreeMap::from([
                (POOL_LABEL.to_owned(), self.settings.pool.clone()),
                (ROLE_LABEL.to_owned(), role.to_owned()),
            ])),
            ..ObjectMeta::default()
        }
    }

    fn error(&self, lease: &str, source: kube::Error) -> ArbiterError {
        ArbiterError::Kube {
            lease: lease.to_owned(),
            source,
        }
    }
}

/// Whatever ends the task, nobody renews the Lease any more: publish fenced at once.
struct FenceOnDrop(watch::Sender<Standing>);

impl Drop for FenceOnDrop {
    fn drop(&mut self) {
        self.0
            .send_if_modified(|s| !std::mem::replace(&mut s.fenced, true));
    }
}

/// The wall-clock time written into `renewTime`. Only for people and tools reading the
/// Lease: the nodes compare renewals for change, never against their own clocks.
fn wall_clock() -> Timestamp {
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{Incarnation, Member};

    fn holder(node: &str, inc: u128) -> Holder {
        Holder {
            node: NodeId(node.into()),
            incarnation: Incarnation(uuid::Uuid::from_u128(inc)),
        }
    }

    fn view(epoch: u64, members: &[(&Holder, u64)]) -> View {
        View {
            epoch,
            members: members
                .iter()
                .map(|(h, since)| {
                    (
                        h.node.clone(),
                        Member {
                            incarnation: h.incarnation,
                            since: *since,
                            data_centre: "dc1".into(),
                            address: format!("{}:2525", h.node),
                            leaving: false,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn timings_scale_in_proportion_and_stay_valid() {
        assert_eq!(
            scaled_timing(Duration::from_secs(10)),
            LeaseTiming::default()
        );
        let t = scaled_timing(Duration::from_secs(3));
        assert_eq!(t.renew_every, Duration::from_millis(600));
        assert_eq!(t.fence_after, Duration::from_millis(2100));
        assert_eq!(t.takeover_margin, Duration::from_millis(900));
        for secs in [1, 2, 3, 5, 10, 30, 60] {
            let t = scaled_timing(Duration::from_secs(secs));
            t.validate().expect("scaled timings are valid");
            let drift = LeaseTiming::default().tolerated_drift();
            assert!((t.tolerated_drift() - drift).abs() < 1e-6, "{secs}s");
        }
        assert_eq!(duration_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(duration_seconds(Duration::from_millis(10)), 1);
    }

    #[test]
    fn a_node_outside_the_view_joins_first() {
        let me = holder("a", 1);
        let (change, next) = plan_view(None, &me, "dc1", "a:2525", &[], None).unwrap();
        assert_eq!(change, ViewChange::Join);
        assert_eq!(next.epoch, 1);
        assert_eq!(next.members[&me.node].since, 1);

        // Removed, or a new disk: join again at the next epoch, even with others expired.
        let b = holder("b", 2);
        let old_me = holder("a", 9);
        let current = view(4, &[(&old_me, 1), (&b, 2)]);
        let (change, next) = plan_view(
            Some(&current),
            &me,
            "dc1",
            "a:2525",
            std::slice::from_ref(&b.node),
            None,
        )
        .unwrap();
        assert_eq!(change, ViewChange::Join);
        assert_eq!(next.epoch, 5);
        assert_eq!(next.members[&me.node].incarnation, me.incarnation);
        assert_eq!(next.members[&me.node].since, 5);
        assert!(next.members.contains_key(&b.node));
    }

    #[test]
    fn a_member_removes_only_expired_others_and_never_itself() {
        let me = holder("a", 1);
        let b = holder("b", 2);
        let current = view(3, &[(&me, 1), (&b, 2)]);
        assert_eq!(
            plan_view(Some(&current), &me, "dc1", "a:2525", &[], None),
            None
        );
        assert_eq!(
            plan_view(
                Some(&current),
                &me,
                "dc1",
                "a:2525",
                std::slice::from_ref(&me.node),
                None
            ),
            None
        );
        let gone = [b.node.clone(), NodeId("not-a-member".into())];
        let (change, next) = plan_view(Some(&current), &me, "dc1", "a:2525", &gone, None).unwrap();
        assert_eq!(change, ViewChange::Remove(vec![b.node.clone()]));
        assert_eq!(next.epoch, 4);
        assert!(!next.members.contains_key(&b.node));
        assert_eq!(next.members[&me.node].since, 1);
    }

    #[test]
    fn a_member_that_moved_updates_its_address_keeping_since() {
        let me = holder("a", 1);
        let current = view(3, &[(&me, 2)]);
        let (change, next) =
            plan_view(Some(&current), &me, "dc1", "10.0.0.9:2525", &[], None).unwrap();
        assert_eq!(change, ViewChange::Readdress);
        assert_eq!(next.epoch, 4);
        assert_eq!(next.members[&me.node].since, 2);
        assert_eq!(next.members[&me.node].address, "10.0.0.9:2525");
    }

    #[test]
    fn a_drain_marks_the_member_leaving_and_survives_a_restart() {
        let me = holder("a", 1);
        let current = view(3, &[(&me, 1), (&holder("b", 2), 2)]);
        let (change, next) =
            plan_view(Some(&current), &me, "dc1", "a:2525", &[], Some(true)).unwrap();
        assert_eq!(change, ViewChange::Leaving(true));
        assert!(next.is_leaving(&me.node));
        assert_eq!(next.members[&me.node].since, 1, "still the same member");
        // Restarted: nobody has asked anything of this process, the view stands.
        assert_eq!(
            plan_view(Some(&next), &me, "dc1", "a:2525", &[], None),
            None
        );
        assert_eq!(
            plan_view(Some(&next), &me, "dc1", "a:2525", &[], Some(true)),
            None
        );
        let (change, back) =
            plan_view(Some(&next), &me, "dc1", "a:2525", &[], Some(false)).unwrap();
        assert_eq!(change, ViewChange::Leaving(false));
        assert!(!back.is_leaving(&me.node));
    }

    #[test]
    fn fenced_until_renewed_and_read_as_member_and_again_once_either_lapses() {
        let t = scaled_timing(Duration::from_secs(10));
        let me = holder("a", 1);
        let member = view(1, &[(&me, 1)]);
        let other = view(2, &[(&holder("a", 2), 2)]);
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(1);
        assert!(fenced(&me, None, None, None, now, &t));
        assert!(fenced(&me, None, Some(t0), Some(t0), now, &t));
        assert!(fenced(&me, Some(&member), Some(t0), None, now, &t));
        assert!(fenced(&me, Some(&other), Some(t0), Some(t0), now, &t));
        assert!(!fenced(&me, Some(&member), Some(t0), Some(t0), now, &t));
        let late = t0 + t.fence_after;
        assert!(fenced(&me, Some(&member), Some(t0), Some(now), late, &t));
        assert!(fenced(&me, Some(&member), Some(now), Some(t0), late, &t));
        assert!(!fenced(&me, Some(&member), Some(now), Some(now), late, &t));
    }

    #[test]
    fn a_member_expires_only_after_its_renewal_stood_still_for_the_expiry() {
        let t = scaled_timing(Duration::from_secs(10));
        let me = holder("a", 1);
        let b = holder("b", 2);
        let c = holder("c", 3);
        let current = view(3, &[(&me, 1), (&b, 2), (&c, 3)]);
        let t0 = Instant::now();
        let mut live = Liveness::default();
        let reads = |renewal: &str| {
            BTreeMap::from([
                (me.node.clone(), "mine".to_owned()),
                (b.node.clone(), renewal.to_owned()),
            ])
        };
        // c has no Lease at all: that counts as a renewal that never changes.
        live.fold(&current, &me.node, &reads("b1"), t0);
        let almost = t0 + t.duration + t.takeover_margin - Duration::from_millis(1);
        live.fold(&current, &me.node, &reads("b1"), almost);
        assert_eq!(live.expired(almost, &t), Vec::<NodeId>::new());
        let at = t0 + t.duration + t.takeover_margin;
        live.fold(&current, &me.node, &reads("b2"), at);
        assert_eq!(live.expired(at, &t), vec![c.node.clone()]);
        // b renewed at `at`: its clock started again.
        let later = at + t.duration;
        live.fold(&current, &me.node, &reads("b2"), later);
        assert_eq!(live.expired(later, &t), vec![c.node.clone()]);
        // Never myself, and members that left are forgotten.
        let without_c = view(4, &[(&me, 1), (&b, 2)]);
        live.fold(&without_c, &me.node, &reads("b2"), later);
        assert_eq!(live.expired(later, &t), Vec::<NodeId>::new());
        let rejoined = view(5, &[(&me, 1), (&b, 2), (&c, 5)]);
        live.fold(&rejoined, &me.node, &reads("b2"), later);
        assert_eq!(live.expired(later + t.duration, &t), vec![b.node.clone()]);
    }

    #[test]
    fn renewals_keep_acquisition_and_count_changes_of_holder() {
        let t = scaled_timing(Duration::from_millis(2500));
        let at = |s| Timestamp::from_second(s).unwrap();
        let first = renewed_spec(None, "a/1", at(100), &t);
        assert_eq!(first.lease_duration_seconds, Some(3));
        assert_eq!(first.lease_transitions, Some(0));
        let again = renewed_spec(Some(&first), "a/1", at(101), &t);
        assert_eq!(again.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(again.renew_time, Some(MicroTime(at(101))));
        assert_ne!(renewal_of(Some(&first)), renewal_of(Some(&again)));
        let new_disk = renewed_spec(Some(&again), "a/2", at(102), &t);
        assert_eq!(new_disk.acquire_time, Some(MicroTime(at(102))));
        assert_eq!(new_disk.lease_transitions, Some(1));
        assert_eq!(renewal_of(None), "absent");
    }

    #[test]
    fn the_view_is_read_from_its_annotation_and_never_made_up() {
        let me = holder("a", 1);
        let v = view(7, &[(&me, 3)]);
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some("p-view".into()),
                annotations: Some(BTreeMap::from([(
                    VIEW_ANNOTATION.to_owned(),
                    serde_json::to_string(&v).unwrap(),
                )])),
                ..ObjectMeta::default()
            },
            spec: None,
        };
        assert_eq!(view_of(&lease).unwrap(), v);
        lease.metadata.annotations = Some(BTreeMap::from([(
            VIEW_ANNOTATION.to_owned(),
            "{".to_owned(),
        )]));
        assert!(matches!(view_of(&lease), Err(ArbiterError::BadView { .. })));
        lease.metadata.annotations = None;
        assert!(matches!(view_of(&lease), Err(ArbiterError::BadView { .. })));
        assert_eq!(holder_identity(&me), format!("a/{}", me.incarnation));
        assert_eq!(lease_name("p", &me.node), "p-node-a");
        assert_eq!(view_name("p"), "p-view");
    }
}
