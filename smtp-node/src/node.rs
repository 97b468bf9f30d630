//! A running node: everything from the config file to a stopped process.
//!
//! Start-up order matters for the guarantees: the spool is opened (and recovered) before
//! any listener accepts, so nothing is acknowledged into a spool that is not ready; the
//! listeners and the HTTP port are bound before readiness turns true. Shutdown runs the
//! other way: readiness off, listeners closed, sessions finished, then delivery stopped,
//! then the watchers and the HTTP port, and the spool is flushed and closed last, so no
//! accepted message is left half-stored. The same path runs when an essential task
//! fails (see [`crate::supervisor`]), except that sessions are told 421 at once and the
//! process exits with [`exit::TASK_FAILED`].

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, AdminParts};
use crate::auth::{AuthError, UserDb};
use crate::config::{Config, ConfigError};
use crate::dkim::{DkimError, DkimKeyring};
use crate::domains::{self, DomainState, DomainsError};
use crate::exit;
use crate::http::{self, HttpError, HttpState, Readiness};
use crate::inbound::{self, CertError, CertStore, ServerError, Shared};
use crate::metrics::{self, InboundMetrics, ResultLabel, SpoolMetrics};
use crate::outbound::{OutboundError, OutboundMetrics, QueueManager};
use crate::policy::RelayPolicy;
use crate::replication::{server, takeover, wiring};
use crate::spool::{LogSpool, LogSpoolOptions, NodeId, SpoolError, SpoolHealth, now_millis};
use crate::supervisor::{Supervisor, TaskFailure};

/// How often the certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);
/// How long the tasks with nothing in flight (spool watch, HTTP, certificate watch) may
/// take to stop.
const SHORT_GRACE: Duration = Duration::from_secs(5);
/// Added to the configured grace of sessions and deliveries: they enforce their own
/// limit, and this only catches a task that does not.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// Readiness reasons.
const STARTING: &str = "starting";
const SPOOL_FULL: &str = "spool full: new messages are refused with 452 4.3.1";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the spool in spool.dir: {0}")]
    Spool(#[from] SpoolError),
    #[error("tls: {0}")]
    Certificate(#[from] CertError),
    #[error("relay.usersFile: {0}")]
    Users(#[from] AuthError),
    #[error("dkim: {0}")]
    Dkim(#[from] DkimError),
    #[error(transparent)]
    Delivery(#[from] OutboundError),
    #[error(transparent)]
    Listen(#[from] ServerError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Replication(#[from] crate::replication::wiring::SetupError),
    #[error(transparent)]
    Domains(#[from] DomainsError),
    /// The node started, then an essential task failed (or failed while stopping).
    #[error(transparent)]
    Task(#[from] TaskFailure),
}

impl NodeError {
    /// The process exit code: a node that could not start is a configuration or
    /// environment problem a restart will not fix; a task that failed later may be.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Task(_) => exit::TASK_FAILED,
            _ => exit::START_UP,
        }
    }
}

/// Loads everything the config points at without starting anything: what `check-config`
/// verifies beyond the file itself.
pub fn check_files(config: &Config) -> Result<(), NodeError> {
    if let Some(tls) = &config.tls {
        inbound::tls::load_certified_key(tls)?;
    }
    if let Some(path) = &config.relay.users_file {
        UserDb::load(path)?;
    }
    DkimKeyring::load(&config.dkim)?;
    Ok(())
}

/// Runs the node until `shutdown` is cancelled (SIGTERM in the binary) or an essential
/// task fails; see [`crate::supervisor`] for what that means and [`NodeError::exit_code`]
/// for how the two ends differ.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    Node::start(config).await?.run(shutdown).await
}

/// A started node: its essential tasks run under a [`Supervisor`]; the rest is what
/// stopping needs.
pub struct Node {
    tasks: Supervisor,
    readiness: Readiness,
    /// Cancelled when a task failed: sessions say 421 and complete nothing.
    failed: CancellationToken,
    spool: Arc<LogSpool>,
}

impl Node {
    /// Opens (and recovers) the spool, loads the files the config names, binds every
    /// port and starts the tasks. An error here is a start-up error: nothing has been
    /// accepted yet.
    pub async fn start(config: Config) -> Result<Self, NodeError> {
        let identity = config.node.resolve(|var| std::env::var(var).ok())?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let mut registry = Registry::with_prefix("smtpnode");
        let inbound_metrics = InboundMetrics::register(&mut registry);
        let spool_metrics = SpoolMetrics::register(&mut registry);
        let outbound_metrics = OutboundMetrics::register(&mut registry);
        let task_failures = metrics::register_task_failures(&mut registry);
        let replication_metrics = metrics::ReplicationMetrics::register(&mut registry);
        let domain_metrics = metrics::DomainMetrics::register(&mut registry);

        let spool = open_spool(&config, &spool_metrics)?;

        let certs = config.tls.clone().map(CertStore::load).transpose()?;
        let users = config
            .relay
            .users_file
            .as_ref()
            .map(UserDb::load)
            .transpose()?
            .map(Arc::new);
        let mut keyring = DkimKeyring::load(&config.dkim)?;
        let mut policy = RelayPolicy::new(&config.relay);
        let pool_domains = match &config.pool_domains {
            Some(source) => {
                let state = DomainState::new();
                keyring = keyring.with_pool_domains(state.clone());
                policy = policy.with_pool_domains(state.clone());
                Some((
                    source.clone(),
                    domains::source::client(source).await?,
                    state,
                ))
            }
            None => None,
        };
        let keyring = Arc::new(keyring);
        let outbound_metrics = OutboundMetrics {
            delivery: outbound_metrics.delivery.clone().serving(policy.clone()),
            ..outbound_metrics
        };
        let delivery = outbound_metrics.delivery.clone();
        let node = NodeId(identity.name.clone());
        let prepared = wiring::prepare(
            &config,
            &identity,
            spool.clone(),
            replication_metrics.clone(),
            |var| std::env::var(var).ok(),
        )
        .await?;
        let replicated = prepared.spool.clone();
        let deliveries = outbound_metrics.active_connections.clone();
        let manager = QueueManager::new(
            &config.delivery,
            keyring,
            prepared.authority.clone(),
            replicated.clone(),
            outbound_metrics,
        )?;

        let listeners = inbound::bind(&config.listeners).await?;
        let http_listener = http::bind(config.http.address).await?;

        let readiness = Readiness::default();
        readiness.hold(STARTING);
        let intake = Arc::new(server::Intake::default());
        let admin = Arc::new(Admin::new(AdminParts {
            token_file: config.http.admin_token_file.clone(),
            me: replicated.settings().me.clone(),
            factor: replicated.settings().factor,
            spool: replicated.clone(),
            standing: prepared.standing.clone(),
            intake: intake.clone(),
            leaving: prepared.drain.leaving,
            quiet: prepared.drain.quiet,
            readiness: readiness.clone(),
            deliveries,
            delivery,
        }));
        let refresh = spool_gauges(spool.clone(), config.spool.dir.clone(), spool_metrics);

        // Started in dependency order; the supervisor stops them the other way round.
        let mut tasks = Supervisor::new(task_failures);
        let stop = CancellationToken::new();
        tasks.spawn(
            "spool",
            stop.clone(),
            SHORT_GRACE,
            watch_spool(spool.health(), readiness.clone(), stop),
        );
        let stop = CancellationToken::new();
        tasks.spawn(
            "http",
            stop.clone(),
            SHORT_GRACE,
            http::serve(
                http_listener,
                HttpState::new(Arc::new(registry), readiness.clone(), refresh).with_admin(admin),
                stop,
            ),
        );
        if let Some(store) = certs.clone() {
            let stop = CancellationToken::new();
            tasks.spawn(
                "certificate-watch",
                stop.clone(),
                SHORT_GRACE,
                watch_certificate(store, inbound_metrics.clone(), stop),
            );
        }
        if let Some((source, client, state)) = pool_domains {
            let stop = CancellationToken::new();
            tasks.spawn(
                "domains",
                stop.clone(),
                SHORT_GRACE,
                domains::run(
                    source,
                    client,
                    state,
                    domain_metrics,
                    readiness.clone(),
                    stop,
                ),
            );
        }
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        if let Some(replication) = prepared.replication {
            // The arbiter first: everything else waits for the view it publishes.
            let me = replication.me.clone();
            let stop = CancellationToken::new();
            tasks.spawn(
                "arbiter",
                stop.clone(),
                SHORT_GRACE,
                replication.arbiter.run(stop),
            );
            let stop = CancellationToken::new();
            tasks.spawn(
                "fencing",
                stop.clone(),
                SHORT_GRACE,
                wiring::watch_standing(
                    prepared.standing.clone(),
                    me.clone(),
                    readiness.clone(),
                    replication_metrics.clone(),
                    stop,
                ),
            );
            if let Some(tls) = replication.tls.clone() {
                let stop = CancellationToken::new();
                tasks.spawn(
                    "peer-tls-watch",
                    stop.clone(),
                    SHORT_GRACE,
                    wiring::watch_peer_tls(tls, stop),
                );
            }
            let stop = CancellationToken::new();
            tasks.spawn(
                "peer-server",
                stop.clone(),
                SHORT_GRACE,
                server::serve(
                    replication.listener,
                    spool.clone(),
                    me,
                    prepared.standing.clone(),
                    intake,
                    replication.tls,
                    stop,
                ),
            );
            let stop = CancellationToken::new();
            tasks.spawn(
                "takeover",
                stop.clone(),
                SHORT_GRACE,
                takeover::run(
                    replicated.clone(),
                    prepared.standing.clone(),
                    queue_tx.clone(),
                    replication_metrics.clone(),
                    stop,
                ),
            );
        }
        let stop = CancellationToken::new();
        tasks.spawn(
            "delivery",
            stop.clone(),
            config.delivery.shutdown_grace + STOP_MARGIN,
            manager.run(queue_rx, stop.cancelled_owned()),
        );
        let stop = CancellationToken::new();
        let failed = CancellationToken::new();
        let shared = Arc::new(Shared {
            hostname: config.hostname.clone(),
            limits: config.limits.clone(),
            policy,
            users,
            certs,
            spool: replicated.clone(),
            node,
            queue: queue_tx,
            metrics: inbound_metrics,
            shutdown: stop.clone(),
            failed: failed.clone(),
        });
        tasks.spawn(
            "smtp",
            stop,
            config.limits.shutdown_timeout + STOP_MARGIN,
            inbound::serve(shared, listeners),
        );
        for l in &config.listeners {
            tracing::info!(listener = %l.name, address = %l.address, "accepting SMTP");
        }
        readiness.release(STARTING);
        tracing::info!(node = %identity.name, data_centre = %identity.data_centre, "node ready");
        Ok(Self {
            tasks,
            readiness,
            failed,
            spool,
        })
    }

    /// Runs until `shutdown` is cancelled or an essential task fails, then stops the
    /// tasks in order; the spool is flushed and closed when the node is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), NodeError> {
        let outcome = self.tasks.watch(&shutdown).await;
        match &outcome {
            Ok(()) => {
                self.readiness.hold("stopping");
                tracing::info!("stopping: no new connections; finishing sessions in flight");
            }
            Err(failure) => {
                self.readiness.hold(format!("stopping: {failure}"));
                self.failed.cancel();
                tracing::error!(
                    task = failure.task(),
                    "stopping after a failure: no new connections; sessions told 421"
                );
            }
        }
        let stopped = self.tasks.stop().await;
        tracing::info!(
            queued = self.spool.len(),
            "stopped; queued mail stays in the spool"
        );
        outcome?;
        stopped?;
        Ok(())
    }
}

fn open_spool(config: &Config, metrics: &SpoolMetrics) -> Result<Arc<LogSpool>, SpoolError> {
    let batch = metrics.fsync_batch.clone();
    let relocated = metrics.relocated.clone();
    let spool = LogSpool::open(
        &config.spool.dir,
        LogSpoolOptions {
            on_batch: Some(Arc::new(move |n| batch.observe(n as f64))),
            on_compact: Some(Arc::new(move |n| {
                relocated.inc_by(n as u64);
            })),
            ..LogSpoolOptions::default()
        },
    )?;
    tracing::info!(dir = %config.spool.dir.display(), messages = spool.len(), "spool open");
    Ok(Arc::new(spool))
}

/// The queue gauges are read from the spool at scrape time rather than kept up to date
/// on every change; so is the spool volume's space (one `statvfs` per scrape).
fn spool_gauges(
    spool: Arc<LogSpool>,
    dir: std::path::PathBuf,
    gauges: SpoolMetrics,
) -> http::Refresh {
    Arc::new(move || {
        match crate::volume::space(&dir) {
            Ok(space) => gauges.set_volume(space),
            // The gauges keep their last values; the spool's own writes report a
            // volume that is really gone.
            Err(error) => {
                tracing::debug!(dir = %dir.display(), %error, "cannot read the spool volume's space");
            }
        }
        gauges.messages.set(spool.len() as i64);
        let age = spool
            .oldest_received_at()
            .map(|at| now_millis().saturating_sub(at) / 1000)
            .unwrap_or(0);
        gauges.oldest_message_age_seconds.set(age as i64);
    })
}

/// Follows the spool writer: not ready while it is out of space, and a failure of the
/// node when the spool failed for good or its writer thread is gone, since no message
/// could be accepted or its delivery recorded any more.
async fn watch_spool(
    mut health: watch::Receiver<SpoolHealth>,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), SpoolError> {
    loop {
        let state = health.borrow_and_update().clone();
        match state {
            SpoolHealth::Ok => readiness.release(SPOOL_FULL),
            SpoolHealth::Full => readiness.hold(SPOOL_FULL),
            SpoolHealth::Failed(error) => return Err(SpoolError::Failed(error)),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            changed = health.changed() => changed.map_err(|_| SpoolError::Closed)?,
        }
    }
}

/// Reloads the listener certificate when its files change. A bad file is counted and
/// the old certificate kept (the operator fixes the Secret); a reload that panics is a
/// failure of the node.
async fn watch_certificate(
    store: Arc<CertStore>,
    metrics: InboundMetrics,
    stop: CancellationToken,
) -> Result<(), JoinError> {
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    record_certificate_expiry(&store, &metrics);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let before = store.failed_reloads();
        let polled = store.clone();
        let changed = tokio::task::spawn_blocking(move || polled.reload_if_changed()).await?;
        let result = if changed {
            record_certificate_expiry(&store, &metrics);
            "ok"
        } else if store.failed_reloads() > before {
            "failed"
        } else {
            continue;
        };
        metrics
            .certificate_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// Exports the served certificate's notAfter, for the expiry alert. A certificate whose
/// validity cannot be read (rustls served it, so this should not happen) leaves no
/// series rather than a wrong one.
fn record_certificate_expiry(store: &CertStore, metrics: &InboundMetrics) {
    let not_after = store
        .current()
        .and_then(|key| key.cert.first().cloned())
        .and_then(|leaf| match crate::inbound::tls::not_after(&leaf) {
            Ok(seconds) => Some(seconds),
            Err(error) => {
                tracing::warn!(%error, "cannot read the listener certificate's expiry");
                None
            }
        });
    metrics.set_certificate_not_after(not_after);
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    async fn settled() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_full_spool_holds_readiness_until_it_has_space_again() {
        let (health, rx) = watch::channel(SpoolHealth::Ok);
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_spool(rx, readiness.clone(), stop.clone()));
        health.send_replace(SpoolHealth::Full);
        settled().await;
        assert!(
            readiness
                .not_ready()
                .is_some_and(|r| r.contains("spool full"))
        );
        health.send_replace(SpoolHealth::Ok);
        settled().await;
        assert_eq!(readiness.not_ready(), None);
        stop.cancel();
        assert!(task.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_failed_spool_or_a_gone_writer_fails_the_task() {
        let (health, rx) = watch::channel(SpoolHealth::Ok);
        let task = tokio::spawn(watch_spool(
            rx,
            Readiness::default(),
            CancellationToken::new(),
        ));
        health.send_replace(SpoolHealth::Failed(Arc::new(io::Error::from_raw_os_error(
            5,
        ))));
        assert!(matches!(task.await.unwrap(), Err(SpoolError::Failed(_))));

        let (health, rx) = watch::channel(SpoolHealth::Ok);
        let task = tokio::spawn(watch_spool(
            rx,
            Readiness::default(),
            CancellationToken::new(),
        ));
        drop(health);
        assert!(matches!(task.await.unwrap(), Err(SpoolError::Closed)));
    }
}
