//! The queue manager: decides what to deliver when, and runs the delivery workers.
//!
//! All scheduling state lives in one task, so it needs no locks: a timer-ordered set of
//! messages waiting for their next attempt, a FIFO of jobs per destination, and the
//! workers. A due message is split into one job per destination; a destination gets up
//! to `concurrencyPerDestination` workers, each with its own connection, and each worker
//! takes the destination's next job when it finishes one (connection reuse), waiting a
//! little for one with its connection open when there is none. When all
//! jobs of a message finished, the manager reads the message back from the spool and
//! schedules its next attempt from the stored recipient states, so the spool is the only
//! source of truth and a restart recovers exactly what was queued.
//!
//! Messages are delivered only where `Authority::may_deliver` says so (the owner; in a
//! pool, the owner under the current view); announcing an id on the incoming channel
//! again (after a takeover) makes the manager look at it afresh.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::client::{ClientSettings, Credentials, Timeouts, TlsPolicy};
use super::config::{DeliveryConfig, InvalidConfig, SmarthostTls};
use super::delivery::{Event, Job, Route, Shared, WorkerLink, run_worker};
use super::metrics::OutboundMetrics;
use super::mx::{MxResolver, ResolverError};
use super::queue::{Destination, RetryPolicy, due_recipients, next_due, next_due_after_attempt};
use super::throttle::RateLimiter;
use super::tls::{TlsConnectors, TlsSetupError};
use crate::dkim::DkimKeyring;
use crate::replication::Authority;
use crate::spool::{MessageId, MessageMeta, Spool, SpoolError, UnixMillis, now_millis};

/// Wait before looking again at a message whose attempt could not be made at all.
const STALLED_BACKOFF: Duration = Duration::from_secs(30);
/// Messages dispatched per turn of the manager loop.
const DISPATCH_BATCH: usize = 256;
/// How often idle per-destination state is dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot read smarthost.passwordFile {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot list the spool to recover queued mail: {0}")]
    Recovery(SpoolError),
}

/// Delivers everything in the spool that this node owns.
pub struct QueueManager<S: Spool> {
    shared: Arc<Shared<S>>,
    smarthost: bool,
    concurrency: usize,
    rate_per_minute: Option<u32>,
    shutdown_grace: Duration,
}

impl<S: Spool> QueueManager<S> {
    /// Validates the configuration and prepares DNS and TLS. The smarthost password is
    /// read here, once.
    pub fn new(
        config: &DeliveryConfig,
        dkim: Arc<DkimKeyring>,
        authority: Authority,
        spool: Arc<S>,
        metrics: OutboundMetrics,
    ) -> Result<Self, OutboundError> {
        config.validate()?;
        let helo_name = config.effective_helo_name();
        let connectors = TlsConnectors::new(config.tls_ca_file.as_deref())?;
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            command: config.command_timeout,
            data: config.data_timeout,
        };
        let (route, tls, credentials) = match &config.smarthost {
            None => (
                Route::Mx { port: config.port },
                if config.require_tls {
                    TlsPolicy::RequireVerified
                } else {
                    TlsPolicy::Opportunistic
                },
                None,
            ),
            Some(smarthost) => {
                let credentials = match (&smarthost.username, &smarthost.password_file) {
                    (Some(username), Some(path)) => {
                        let password = std::fs::read_to_string(path).map_err(|source| {
                            OutboundError::PasswordFile {
                                path: path.display().to_string(),
                                source,
                            }
                        })?;
                        Some(Credentials {
                            username: username.clone(),
                            password: password.trim_end_matches(['\r', '\n']).to_string(),
                        })
                    }
                    _ => None,
                };
                let tls = match smarthost.tls {
                    SmarthostTls::None => TlsPolicy::Disabled,
                    SmarthostTls::Starttls => TlsPolicy::RequireVerified,
                    SmarthostTls::Implicit => TlsPolicy::Implicit,
                };
                (
                    Route::Smarthost {
                        host: smarthost.host.clone(),
                        port: smarthost.effective_port(),
                    },
                    tls,
                    credentials,
                )
            }
        };
        let shared = Shared {
            spool,
            authority,
            route,
            resolver: MxResolver::new(&config.nameservers)?,
            client: ClientSettings {
                helo_name: helo_name.clone(),
                timeouts,
                tls,
                credentials,
                connectors,
                tls_results: metrics.tls.clone(),
            },
            retry: RetryPolicy {
                schedule: config.retry_schedule.clone(),
                max_age: config.max_age,
            },
            dkim,
            metrics,
            connections: Arc::new(Semaphore::new(config.max_connections_total)),
            messages_per_connection: config.messages_per_connection,
            reporting_mta: helo_name,
            bounce_from: config.effective_bounce_from(),
        };
        Ok(Self {
            shared: Arc::new(shared),
            smarthost: config.smarthost.is_some(),
            concurrency: config.concurrency_per_destination,
            rate_per_minute: config.rate_per_minute,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// Recovers the queue from the spool, then delivers until `shutdown` resolves.
    /// Stopping lets in-flight transactions finish for `shutdownGrace`, then cuts them
    /// off; recipients not confirmed delivered stay pending in the spool.
    pub async fn run(
        self,
        mut incoming: mpsc::UnboundedReceiver<MessageId>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), OutboundError> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut state = State {
            manager: &self,
            events_tx,
            stop_rx,
            due: BTreeSet::new(),
            scheduled: HashMap::new(),
            in_flight: HashMap::new(),
            destinations: HashMap::new(),
            assigned: HashMap::new(),
            task_destination: HashMap::new(),
            workers: JoinSet::new(),
            stopping: false,
        };
        state.recover().await?;

        tokio::pin!(shutdown);
        let mut incoming_open = true;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        loop {
            state.update_gauge();
            let wake = state.due.first().map(|(at, _)| instant_at(*at));
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(event) = events.recv() => state.handle_event(event).await,
                Some(exit) = state.workers.join_next_with_id(), if !state.workers.is_empty() => {
                    state.handle_exit(exit).await
                }
                // Due work before new arrivals: a steady stream of new mail must not
                // starve retries.
                _ = sleep_until(wake), if wake.is_some() => state.dispatch_due().await,
                id = incoming.recv(), if incoming_open => match id {
                    Some(id) => state.schedule(id, now_millis()),
                    None => incoming_open = false,
                },
                _ = housekeeping.tick() => state.prune_destinations(),
            }
        }

        state.stopping = true;
        let _ = stop_tx.send(true);
        let queued: usize = state.destinations.values().map(|d| d.queue.len()).sum();
        tracing::info!(
            in_flight = state.workers.len(),
            queued,
            "delivery stopping; waiting for in-flight transactions"
        );
        // Dropping a parked worker's answer tells it to close its connection.
        state.destinations.values_mut().for_each(|d| {
            d.queue.clear();
            d.idle.clear();
        });
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        while !state.workers.is_empty() {
            tokio::select! {
                biased;
                Some(event) = events.recv() => state.handle_event(event).await,
                Some(exit) = state.workers.join_next_with_id() => state.handle_exit(exit).await,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(workers = state.workers.len(),
                        "cutting off deliveries still running after the shutdown grace period");
                    state.workers.abort_all();
                    while state.workers.join_next().await.is_some() {}
                }
            }
        }
        state.update_gauge();
        tracing::info!("delivery stopped");
        Ok(())
    }
}

struct DestinationState {
    queue: VecDeque<Job>,
    workers: usize,
    /// Workers with an open connection waiting for a job (they count in `workers`).
    idle: Vec<(tokio::task::Id, oneshot::Sender<Option<Job>>)>,
    limiter: Option<Arc<Mutex<RateLimiter>>>,
}

struct State<'a, S: Spool> {
    manager: &'a QueueManager<S>,
    events_tx: mpsc::UnboundedSender<Event>,
    stop_rx: watch::Receiver<bool>,
    /// Messages waiting for a time, ordered by it; `scheduled` is the same set by id.
    due: BTreeSet<(UnixMillis, MessageId)>,
    scheduled: HashMap<MessageId, UnixMillis>,
    /// Jobs not yet finished per message.
    in_flight: HashMap<MessageId, usize>,
    destinations: HashMap<Destination, DestinationState>,
    /// The job each worker is on, to finish it if the worker dies.
    assigned: HashMap<tokio::task::Id, MessageId>,
    task_destination: HashMap<tokio::task::Id, Destination>,
    workers: JoinSet<()>,
    stopping: bool,
}

impl<S: Spool> State<'_, S> {
    fn shared(&self) -> &Arc<Shared<S>> {
        &self.manager.shared
    }

    async fn recover(&mut self) -> Result<(), OutboundError> {
        let all = self
            .shared()
            .spool
            .list()
            .await
            .map_err(OutboundError::Recovery)?;
        let (mut owned, mut finished) = (0usize, 0usize);
        for meta in all {
            if !self.shared().authority.may_deliver(&meta) {
                continue;
            }
            match next_due(&meta) {
                Some(at) => {
                    owned += 1;
                    self.schedule(meta.id, at);
                }
                None => {
                    finished += 1;
                    self.remove_finished(&meta).await;
                }
            }
        }
        tracing::info!(
            queued = owned,
            finished_removed = finished,
            "delivery queue recovered from the spool"
        );
        Ok(())
    }

    async fn remove_finished(&self, meta: &MessageMeta) {
        if let Err(err) = self.shared().spool.remove(meta.id).await {
            tracing::warn!(id = %meta.id, error = %err, "cannot remove finished message");
        }
    }

    /// Puts a message on the timer. An earlier time wins; messages with jobs running are
    /// looked at again when those finish anyway.
    fn schedule(&mut self, id: MessageId, at: UnixMillis) {
        if self.in_flight.contains_key(&id) {
            return;
        }
        if let Some(existing) = self.scheduled.get(&id).copied() {
            if existing <= at {
                return;
            }
            self.due.remove(&(existing, id));
        }
        self.scheduled.insert(id, at);
        self.due.insert((at, id));
    }

    /// Dispatches due messages, at most [`DISPATCH_BATCH`] at a time so that worker
    /// events keep flowing while a large recovered queue is being dispatched.
    async fn dispatch_due(&mut self) {
        let now = now_millis();
        for _ in 0..DISPATCH_BATCH {
            let Some(&(at, id)) = self.due.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.due.pop_first();
            self.scheduled.remove(&id);
            self.dispatch(id, now).await;
        }
    }

    async fn dispatch(&mut self, id: MessageId, now: UnixMillis) {
        if self.stopping || self.in_flight.contains_key(&id) {
            return;
        }
        let meta = match self.shared().spool.load_meta(id).await {
            Ok(Some(meta)) => meta,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%id, error = %err, "cannot load queued message; will retry");
                self.schedule(id, now + STALLED_BACKOFF.as_millis() as u64);
                return;
            }
        };
        if !self.shared().authority.may_deliver(&meta) {
            tracing::debug!(%id, owner = %meta.ownership.owner, "not the owner; not delivering");
            return;
        }
        let groups = due_recipients(&meta, now, self.manager.smarthost);
        if groups.is_empty() {
            match next_due(&meta) {
                Some(at) => self.schedule(id, at),
                None => self.remove_finished(&meta).await,
            }
            return;
        }
        self.in_flight.insert(id, groups.len());
        for (destination, recipients) in groups {
            let rate = self.manager.rate_per_minute;
            let entry = self
                .destinations
                .entry(destination.clone())
                .or_insert_with(|| DestinationState {
                    queue: VecDeque::new(),
                    workers: 0,
                    idle: Vec::new(),
                    limiter: rate.map(|limit| {
                        Arc::new(Mutex::new(RateLimiter::per_minute(limit, Instant::now())))
                    }),
                });
            entry.queue.push_back(Job { id, recipients });
            self.spawn_workers(&destination);
        }
    }

    /// Starts workers for a destination while it has queued jobs and room under its
    /// concurrency limit; each new worker takes the next job with it.
    fn spawn_workers(&mut self, destination: &Destination) {
        if self.stopping {
            return;
        }
        let Some(entry) = self.destinations.get_mut(destination) else {
            return;
        };
        // Workers waiting with an open connection first, the most recently parked (the
        // warmest) first.
        while !entry.queue.is_empty()
            && let Some((task, reply)) = entry.idle.pop()
        {
            let Some(job) = entry.queue.pop_front() else {
                break;
            };
            let id = job.id;
            match reply.send(Some(job)) {
                Ok(()) => {
                    self.assigned.insert(task, id);
                }
                // That worker stopped waiting and closes its connection.
                Err(returned) => {
                    if let Some(job) = returned {
                        entry.queue.push_front(job);
                    }
                }
            }
        }
        while entry.workers < self.manager.concurrency {
            let Some(job) = entry.queue.pop_front() else {
                break;
            };
            let link = WorkerLink {
                destination: destination.clone(),
                events: self.events_tx.clone(),
                stop: self.stop_rx.clone(),
                limiter: entry.limiter.clone(),
            };
            let id = job.id;
            let handle = self
                .workers
                .spawn(run_worker(self.manager.shared.clone(), link, job));
            entry.workers += 1;
            self.assigned.insert(handle.id(), id);
            self.task_destination
                .insert(handle.id(), destination.clone());
        }
    }

    async fn handle_event(&mut self, event: Event) {
        match event {
            Event::JobDone { task, id } => {
                if self.assigned.get(&task) == Some(&id) {
                    self.assigned.remove(&task);
                    self.finish_job(id).await;
                }
            }
            Event::NextJob {
                task,
                destination,
                reply,
                wait,
            } => {
                let entry = if self.stopping {
                    None
                } else {
                    self.destinations.get_mut(&destination)
                };
                let Some(entry) = entry else {
                    let _ = reply.send(None);
                    return;
                };
                let Some(job) = entry.queue.pop_front() else {
                    if wait {
                        entry.idle.push((task, reply));
                    } else {
                        let _ = reply.send(None);
                    }
                    return;
                };
                self.assigned.insert(task, job.id);
                if let Err(Some(job)) = reply.send(Some(job)) {
                    // The worker is gone; its exit will not know about this job.
                    self.assigned.remove(&task);
                    self.finish_job(job.id).await;
                }
            }
            Event::Stored { id } => self.schedule(id, now_millis()),
        }
    }

    async fn handle_exit(&mut self, exit: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let task = match exit {
            Ok((task, ())) => task,
            Err(err) => {
                if err.is_panic() {
                    tracing::error!(error = %err, "delivery worker panicked");
                }
                err.id()
            }
        };
        if let Some(id) = self.assigned.remove(&task) {
            self.finish_job(id).await;
        }
        if let Some(destination) = self.task_destination.remove(&task) {
            if let Some(entry) = self.destinations.get_mut(&destination) {
                entry.workers = entry.workers.saturating_sub(1);
                entry.idle.retain(|(parked, _)| *parked != task);
            }
            self.spawn_workers(&destination);
        }
    }

    /// One job of a message finished; when it was the last, schedule the next attempt
    /// from what the spool now says.
    async fn finish_job(&mut self, id: MessageId) {
        let Some(left) = self.in_flight.get_mut(&id) else {
            return;
        };
        *left -= 1;
        if *left > 0 {
            return;
        }
        self.in_flight.remove(&id);
        if self.stopping {
            return;
        }
        let now = now_millis();
        match self.shared().spool.load_meta(id).await {
            Ok(Some(meta)) if self.shared().authority.may_deliver(&meta) => {
                match next_due_after_attempt(&meta, now, STALLED_BACKOFF) {
                    Some(at) => self.schedule(id, at),
                    None => self.remove_finished(&meta).await,
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%id, error = %err, "cannot reload message after delivery; will retry");
                self.schedule(id, now + STALLED_BACKOFF.as_millis() as u64);
            }
        }
    }

    /// Drops state of destinations with nothing queued, no worker and no rate history.
    fn prune_destinations(&mut self) {
        let now = Instant::now();
        self.destinations.retain(|_, d| {
            let limiter_idle = d
                .limiter
                .as_ref()
                .is_none_or(|l| l.lock().map(|mut l| l.is_full(now)).unwrap_or(true));
            !(d.queue.is_empty() && d.workers == 0 && limiter_idle)
        });
    }

    fn update_gauge(&self) {
        let known = self.scheduled.len() + self.in_flight.len();
        self.shared()
            .metrics
            .queued_messages
            .set(i64::try_from(known).unwrap_or(i64::MAX));
    }
}

fn instant_at(at: UnixMillis) -> tokio::time::Instant {
    let wait = at.saturating_sub(now_millis());
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
