//! The admin API on the HTTP port, for the operator: `GET /admin/queue` reports what the
//! node holds; `GET /admin/delivery` reports recipients delivered, deferred and bounced
//! per served sender domain since the process started, with the refusals' enhanced
//! status codes and example destination domains (never addresses or reply texts: see
//! [`crate::outbound::deliverability`]); `POST /admin/drain` makes the node give everything it holds to the others
//! before it is removed, `DELETE /admin/drain` takes it back, `GET /admin/drain` reports
//! progress. Every call is safe to repeat.
//!
//! Only a caller with the pool's admin token may call them (`Authorization: Bearer`,
//! the token in the file `http.adminTokenFile`, read on each call so a rotated Secret
//! takes effect at once). Without that setting the admin API is off: `/metrics` and the
//! probes are for anyone who reaches the port, draining a node is not.
//!
//! A drain, in a pool (`docs/replication.md`, "Drain"): the node stops taking mail and
//! stops starting deliveries, waits for the deliveries in flight, then marks itself
//! leaving in the pool's view. The other nodes take its messages over and restore
//! `replicationFactor` without it. The drain is done when no copy on the node needs it
//! (`View::needs`). A standalone node's drain is done when its queue is empty.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use prometheus_client::metrics::gauge::Gauge;

use crate::http::Readiness;
use crate::outbound::DeliveryLedger;
use crate::replication::server::Intake;
use crate::replication::{Duty, Holder, ReplicatedSpool, Standing, View};
use crate::spool::{LogSpool, MessageMeta, RecipientState, Spool, UnixMillis};

/// Readiness reason while a drain is asked for: the Service stops routing mail here.
pub const DRAINING: &str = "draining: this node takes no new mail";
/// How long a drain waits for deliveries in flight before marking the node leaving
/// anyway (a delivery still running then may be repeated by the next owner).
const QUIESCE_LIMIT: Duration = Duration::from_secs(60);

/// What `GET /admin/queue` answers (the operator reads it with this same type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct QueueReport {
    pub node: String,
    /// Messages this node is to deliver (owned), deferred or not.
    pub depth: usize,
    /// Owned messages with at least one recipient waiting for a retry.
    pub deferred: usize,
    /// When the oldest owned message was received (RFC 3339), if any.
    pub oldest_received_at: Option<String>,
    /// Copies held for messages another node owns.
    pub held_as_replica: usize,
    /// Held messages (owned or not) with fewer copies that count than the factor.
    pub under_replicated: usize,
    /// Copies this node may no longer act on (it left the view since they were written).
    pub stale: usize,
    /// Every message in the spool, whatever the node's duty for it: while the pool's view
    /// changes (a drain, a takeover) a message may briefly be owned by nobody this node
    /// knows of, but a copy on disk is mail the pool still holds.
    pub copies: usize,
    pub drain: DrainReport,
}

/// Where a drain stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct DrainReport {
    /// A drain was asked for and not taken back.
    pub requested: bool,
    /// The pool's view has this node leaving (pools only).
    pub leaving: bool,
    /// Copies on this node that still need it: it owns them, without it they have
    /// fewer copies than the factor, or their writer may still commit them.
    pub needed: usize,
    /// Copies the peer listener is taking in (a leaving node refuses new ones; those
    /// let in before are waited for).
    pub arriving: usize,
    /// Nothing on this node needs it any more: it may be removed.
    pub done: bool,
}

/// The report, from the spool listing and what the node knows of the pool. Pure, so the
/// operator's view of a node is tested without one.
pub fn report(
    me: &Holder,
    listing: &[MessageMeta],
    view: Option<&View>,
    factor: usize,
    requested: bool,
) -> QueueReport {
    let mut out = QueueReport {
        node: me.node.0.clone(),
        ..QueueReport::default()
    };
    let mut oldest: Option<UnixMillis> = None;
    out.copies = listing.len();
    for meta in listing {
        let (owned, needs_me) = match (&meta.ownership.copy, view) {
            (Some(copy), Some(view)) => {
                let duty = view.duty(me, copy);
                if matches!(duty, Duty::Hold { .. }) {
                    out.held_as_replica += 1;
                }
                if duty == Duty::Stale {
                    out.stale += 1;
                }
                if view.may_be_acknowledged(me, copy) && view.copies(copy) < factor {
                    out.under_replicated += 1;
                }
                (
                    matches!(duty, Duty::Deliver | Duty::TakeOver),
                    view.needs(me, copy, factor),
                )
            }
            // Without a view nothing can be decided; what this node wrote as owner is
            // still its own.
            (Some(copy), None) => {
                let mine = copy.holders.first() == Some(me);
                (mine, mine || copy.committed)
            }
            // Accepted with a single copy.
            (None, _) => {
                let mine = meta.ownership.owner == me.node;
                (mine, mine)
            }
        };
        if needs_me {
            out.drain.needed += 1;
        }
        if owned {
            out.depth += 1;
            if meta.envelope.recipients.iter().any(|r| {
                matches!(r.state, RecipientState::Deferred { .. })
                    || (!r.state.is_done() && !r.attempts.is_empty())
            }) {
                out.deferred += 1;
            }
            oldest = Some(oldest.map_or(meta.received_at, |o| o.min(meta.received_at)));
        }
    }
    out.oldest_received_at = oldest.map(rfc3339);
    let leaving = view.is_some_and(|v| v.is_leaving(&me.node));
    out.drain.requested = requested;
    out.drain.leaving = leaving;
    // In a pool, done only once the others know it is leaving; alone, once it is empty.
    let pool = factor > 1;
    out.drain.done = requested && out.drain.needed == 0 && (leaving || !pool);
    out
}

fn rfc3339(at: UnixMillis) -> String {
    let secs = i64::try_from(at / 1000).unwrap_or(i64::MAX);
    let nanos = u32::try_from((at % 1000) * 1_000_000).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// What the admin API acts on: the node's spool and standing, and the switches a drain
/// turns.
pub struct Admin {
    token_file: Option<PathBuf>,
    me: Holder,
    factor: usize,
    spool: Arc<ReplicatedSpool<LogSpool>>,
    standing: watch::Receiver<Standing>,
    /// Copies the peer listener is taking in.
    intake: Arc<Intake>,
    /// The arbiter marks the node leaving (or not) in the view as this says.
    leaving: watch::Sender<Option<bool>>,
    /// Set while deliveries must not start: between a drain request and the view that
    /// has the node leaving (`Authority` reads it).
    quiet: Arc<AtomicBool>,
    readiness: Readiness,
    /// Outbound connections open: deliveries in flight.
    deliveries: Gauge,
    /// Per-domain delivery counts.
    delivery: DeliveryLedger,
    /// Serialises drain requests; holds the task waiting for deliveries in flight.
    drain: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The pieces of the node a drain works through.
pub struct AdminParts {
    pub token_file: Option<PathBuf>,
    pub me: Holder,
    pub factor: usize,
    pub spool: Arc<ReplicatedSpool<LogSpool>>,
    pub standing: watch::Receiver<Standing>,
    pub intake: Arc<Intake>,
    pub leaving: watch::Sender<Option<bool>>,
    pub quiet: Arc<AtomicBool>,
    pub readiness: Readiness,
    pub deliveries: Gauge,
    pub delivery: DeliveryLedger,
}

impl Admin {
    pub fn new(parts: AdminParts) -> Self {
        Self {
            token_file: parts.token_file,
            me: parts.me,
            factor: parts.factor,
            spool: parts.spool,
            standing: parts.standing,
            intake: parts.intake,
            leaving: parts.leaving,
            quiet: parts.quiet,
            readiness: parts.readiness,
            deliveries: parts.deliveries,
            delivery: parts.delivery,
            drain: Mutex::new(None),
        }
    }

    async fn queue(&self) -> Result<QueueReport, String> {
        // In this order: a view with this node leaving, then no copy arriving, then the
        // listing, which then holds every copy the peer listener let in.
        let view = self.standing.borrow().view.clone();
        let arriving = self.intake.arriving();
        let listing = self.spool.local().list().await.map_err(|e| e.to_string())?;
        let requested = self.spool.is_draining();
        let mut out = report(&self.me, &listing, view.as_ref(), self.factor, requested);
        out.drain.arriving = arriving;
        out.drain.done &= arriving == 0;
        Ok(out)
    }

    /// Starts a drain (once; a repeated call only reports).
    async fn start_drain(self: &Arc<Self>) {
        let mut drain = self.drain.lock().await;
        if self.spool.is_draining() {
            return;
        }
        tracing::info!(node = %self.me.node, "drain asked for: no new mail, handing the queue to the pool");
        self.spool.set_draining(true);
        self.readiness.hold(DRAINING);
        if self.factor <= 1 {
            // Alone: delivering the queue is the drain.
            return;
        }
        self.quiet.store(true, Ordering::SeqCst);
        let this = self.clone();
        *drain = Some(tokio::spawn(async move { this.hand_over().await }));
    }

    /// Waits for deliveries in flight, marks the node leaving, and lets deliveries start
    /// again once the view says so (the node still delivers what nobody else can own).
    async fn hand_over(&self) {
        let started = tokio::time::Instant::now();
        while self.deliveries.get() > 0 && started.elapsed() < QUIESCE_LIMIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.deliveries.get() > 0 {
            tracing::warn!(
                open = self.deliveries.get(),
                "draining with deliveries still in flight: they may be repeated by the next owner"
            );
        }
        let _ = self.leaving.send(Some(true));
        let mut standing = self.standing.clone();
        let me = self.me.node.clone();
        let _ = standing
            .wait_for(|s| s.view.as_ref().is_some_and(|v| v.is_leaving(&me)))
            .await;
        self.quiet.store(false, Ordering::SeqCst);
        tracing::info!(node = %self.me.node, "marked leaving in the pool's view; the others take its messages over");
    }

    /// Takes a drain back: the node takes mail and counts as a copy again.
    async fn cancel_drain(&self) {
        let mut drain = self.drain.lock().await;
        if let Some(task) = drain.take() {
            task.abort();
        }
        if self.spool.is_draining() {
            tracing::info!(node = %self.me.node, "drain cancelled: taking mail again");
        }
        self.spool.set_draining(false);
        self.quiet.store(false, Ordering::SeqCst);
        if self.factor > 1 {
            let _ = self.leaving.send(Some(false));
        }
        self.readiness.release(DRAINING);
    }
}

/// The admin routes, to be merged into the HTTP router.
pub fn routes(admin: Option<Arc<Admin>>) -> Router {
    Router::new()
        .route("/admin/queue", get(queue))
        .route("/admin/delivery", get(delivery))
        .route(
            "/admin/drain",
            get(drain_status).post(drain).delete(undrain),
        )
        .with_state(admin)
}

type AdminState = State<Option<Arc<Admin>>>;

/// The admin API when the caller may use it, or the response saying why not.
async fn authorised(
    admin: Option<Arc<Admin>>,
    headers: &HeaderMap,
) -> Result<Arc<Admin>, Response> {
    let Some(admin) = admin else {
        return Err((StatusCode::NOT_FOUND, "the admin API is off on this node\n").into_response());
    };
    let Some(path) = &admin.token_file else {
        return Err((
            StatusCode::NOT_FOUND,
            "the admin API is off: set http.adminTokenFile to enable it\n",
        )
            .into_response());
    };
    let expected = match tokio::fs::read_to_string(path).await {
        Ok(token) => token.trim().to_owned(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the admin token file; refusing admin calls");
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token cannot be read\n",
            )
                .into_response());
        }
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if expected.is_empty() || !same(given.as_bytes(), expected.as_bytes()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the admin API needs the pool's admin token\n",
        )
            .into_response());
    }
    Ok(admin)
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn queue(State(admin): AdminState, headers: HeaderMap) -> Response {
    let admin = match authorised(admin, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    match admin.queue().await {
        Ok(report) => Json(report).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the spool: {error}\n"),
        )
            .into_response(),
    }
}

async fn delivery(State(admin): AdminState, headers: HeaderMap) -> Response {
    match authorised(admin, &headers).await {
        Ok(admin) => Json(admin.delivery.report(&admin.me.node.0)).into_response(),
        Err(response) => response,
    }
}

async fn drain_status(State(admin): AdminState, headers: HeaderMap) -> Response {
    let admin = match authorised(admin, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    drain_answer(&admin).await
}

async fn drain(State(admin): AdminState, headers: HeaderMap) -> Response {
    let admin = match authorised(admin, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    admin.start_drain().await;
    drain_answer(&admin).await
}

async fn undrain(State(admin): AdminState, headers: HeaderMap) -> Response {
    let admin = match authorised(admin, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    admin.cancel_drain().await;
    drain_answer(&admin).await
}

/// 200 with the report once the drain is done, 202 while it runs.
async fn drain_answer(admin: &Admin) -> Response {
    match admin.queue().await {
        Ok(report) if report.drain.done => (StatusCode::OK, Json(report)).into_response(),
        Ok(report) => (StatusCode::ACCEPTED, Json(report)).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the spool: {error}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::test_support::test_meta;
    use crate::replication::{Copy, Incarnation, Member};
    use crate::spool::{NodeId, Recipient};

    fn holder(name: &str) -> Holder {
        Holder {
            node: NodeId(name.into()),
            incarnation: Incarnation(uuid::Uuid::from_u128(name.len() as u128 + 7)),
        }
    }

    fn view(members: &[(&Holder, bool)]) -> View {
        View {
            epoch: 4,
            members: members
                .iter()
                .map(|(h, leaving)| {
                    (
                        h.node.clone(),
                        Member {
                            incarnation: h.incarnation,
                            since: 1,
                            data_centre: "dc".into(),
                            address: String::new(),
                            leaving: *leaving,
                        },
                    )
                })
                .collect(),
        }
    }

    fn held(holders: &[&Holder], received_at: UnixMillis, deferred: bool) -> MessageMeta {
        let mut rcpt = Recipient::new("r@example.net");
        if deferred {
            rcpt.state = RecipientState::Deferred { until: 99 };
        }
        let mut meta = test_meta("s@example.com", vec![rcpt]);
        meta.received_at = received_at;
        meta.ownership.copy = Some(Copy {
            holders: holders.iter().map(|h| (*h).clone()).collect(),
            epoch: 3,
            committed: true,
        });
        meta
    }

    #[test]
    fn the_queue_as_the_operator_sees_it() {
        let (a, b, c) = (holder("a"), holder("bb"), holder("ccc"));
        let listing = vec![
            held(&[&a, &b], 2_000, true),
            held(&[&a, &c], 1_000, false),
            held(&[&b, &a], 5_000, false),
            // c has left: a owns it and it needs a second copy.
            held(&[&c, &a], 3_000, false),
        ];
        let members = view(&[(&a, false), (&b, false)]);
        let r = report(&a, &listing, Some(&members), 2, false);
        assert_eq!(r.node, "a");
        assert_eq!(r.depth, 3, "owned, taken over included");
        assert_eq!(r.deferred, 1);
        assert_eq!(r.held_as_replica, 1);
        assert_eq!(r.copies, 4, "every message on disk");
        assert_eq!(r.under_replicated, 2, "the two that named c");
        assert_eq!(
            r.oldest_received_at.as_deref(),
            Some("1970-01-01T00:00:01Z")
        );
        assert_eq!(
            r.drain,
            DrainReport {
                needed: 3,
                ..DrainReport::default()
            }
        );
    }

    #[test]
    fn a_drain_is_done_once_nothing_needs_the_node() {
        let (a, b, c) = (holder("a"), holder("bb"), holder("ccc"));
        let leaving = view(&[(&a, true), (&b, false), (&c, false)]);
        // Asked, but the view does not have it leaving yet.
        let before = report(&a, &[], Some(&view(&[(&a, false)])), 2, true);
        assert!(before.drain.requested && !before.drain.done);
        // b has not taken over yet: a still owns nothing but its copy is one of two.
        let listing = vec![held(&[&a, &b], 1, false)];
        let r = report(&a, &listing, Some(&leaving), 2, true);
        assert!(r.drain.leaving);
        assert_eq!((r.depth, r.drain.needed, r.drain.done), (0, 1, false));
        // b took over and added c: a is not needed.
        let listing = vec![held(&[&b, &a, &c], 1, false)];
        let r = report(&a, &listing, Some(&leaving), 2, true);
        assert_eq!((r.held_as_replica, r.drain.needed), (1, 0));
        assert!(r.drain.done);
        // A copy prepared here by b and not committed yet: b may still answer 250.
        let mut pending = held(&[&b, &a], 1, false);
        if let Some(copy) = pending.ownership.copy.as_mut() {
            copy.committed = false;
        }
        let r = report(&a, &[pending], Some(&leaving), 2, true);
        assert_eq!((r.drain.needed, r.drain.done), (1, false));
        // Alone (one copy), a drain is done when the queue is empty.
        let mut single = test_meta("s@example.com", vec![Recipient::new("r@example.net")]);
        single.ownership.owner = a.node.clone();
        let r = report(&a, std::slice::from_ref(&single), None, 1, true);
        assert_eq!((r.depth, r.drain.done), (1, false));
        assert!(report(&a, &[], None, 1, true).drain.done);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
