//! A running node: everything from the config file to a stopped process.
//!
//! Start-up order matters for the guarantees: the spool is opened (and recovered) before
//! any listener accepts, so nothing is acknowledged into a spool that is not ready; the
//! listeners and the HTTP port are bound before readiness turns true. Shutdown runs the
//! other way: readiness off, listeners closed, sessions finished, then delivery stopped,
//! so no accepted message is left half-stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, UserDb};
use crate::config::{Config, ConfigError};
use crate::dkim::{DkimError, DkimKeyring};
use crate::http::{self, HttpError, HttpState};
use crate::inbound::{self, CertError, CertStore, ServerError, Shared};
use crate::metrics::{InboundMetrics, ResultLabel, SpoolMetrics};
use crate::outbound::{OutboundError, OutboundMetrics, QueueManager};
use crate::policy::RelayPolicy;
use crate::spool::{LogSpool, LogSpoolOptions, NodeId, SpoolError, now_millis};

/// How often the certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);

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

/// Runs the node until `shutdown` is cancelled (SIGTERM in the binary).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let identity = config.node.resolve(|var| std::env::var(var).ok())?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let mut registry = Registry::with_prefix("smtpnode");
    let inbound_metrics = InboundMetrics::register(&mut registry);
    let spool_metrics = SpoolMetrics::register(&mut registry);
    let outbound_metrics = OutboundMetrics::register(&mut registry);

    let batch = spool_metrics.fsync_batch.clone();
    let relocated = spool_metrics.relocated.clone();
    let spool = Arc::new(LogSpool::open(
        &config.spool.dir,
        LogSpoolOptions {
            on_batch: Some(Arc::new(move |n| batch.observe(n as f64))),
            on_compact: Some(Arc::new(move |n| {
                relocated.inc_by(n as u64);
            })),
            ..LogSpoolOptions::default()
        },
    )?);
    tracing::info!(dir = %config.spool.dir.display(), messages = spool.len(), "spool open");

    let certs = config.tls.clone().map(CertStore::load).transpose()?;
    let users = config
        .relay
        .users_file
        .as_ref()
        .map(UserDb::load)
        .transpose()?
        .map(Arc::new);
    let keyring = Arc::new(DkimKeyring::load(&config.dkim)?);
    let node = NodeId(identity.name.clone());
    let manager = QueueManager::new(
        &config.delivery,
        keyring,
        node.clone(),
        spool.clone(),
        outbound_metrics,
    )?;

    let listeners = inbound::bind(&config.listeners).await?;
    let http_listener = http::bind(config.http.address).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let refresh = {
        let spool = spool.clone();
        let gauges = spool_metrics.clone();
        Arc::new(move || {
            gauges.messages.set(spool.len() as i64);
            let age = spool
                .oldest_received_at()
                .map(|at| now_millis().saturating_sub(at) / 1000)
                .unwrap_or(0);
            gauges.oldest_message_age_seconds.set(age as i64);
        })
    };
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(
        http_listener,
        HttpState::new(Arc::new(registry), ready.clone(), refresh),
        http_stop.clone(),
    ));

    let cert_task = certs.clone().map(|store| {
        let metrics = inbound_metrics.clone();
        tokio::spawn(watch_certificate(store, metrics))
    });

    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let delivery_stop = CancellationToken::new();
    let delivery = tokio::spawn(manager.run(queue_rx, delivery_stop.clone().cancelled_owned()));

    let shared = Arc::new(Shared {
        hostname: config.hostname.clone(),
        limits: config.limits.clone(),
        policy: RelayPolicy::new(&config.relay),
        users,
        certs,
        spool: spool.clone(),
        node,
        queue: queue_tx,
        metrics: inbound_metrics,
        shutdown: shutdown.clone(),
    });
    for l in &config.listeners {
        tracing::info!(listener = %l.name, address = %l.address, "accepting SMTP");
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(node = %identity.name, data_centre = %identity.data_centre, "node ready");

    let server = tokio::spawn(inbound::serve(shared.clone(), listeners));
    shutdown.cancelled().await;
    ready.store(false, Ordering::Relaxed);
    tracing::info!("stopping: no new connections; finishing sessions in flight");
    let _ = server.await;
    drop(shared);
    delivery_stop.cancel();
    let delivered = delivery.await;
    if let Some(task) = cert_task {
        task.abort();
    }
    http_stop.cancel();
    let _ = http_task.await;
    tracing::info!(
        queued = spool.len(),
        "stopped; queued mail stays in the spool"
    );
    match delivered {
        Ok(result) => result.map_err(NodeError::from),
        Err(_) => Ok(()),
    }
}

async fn watch_certificate(store: Arc<CertStore>, metrics: InboundMetrics) {
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = store.failed_reloads();
        let polled = store.clone();
        let Ok(changed) = tokio::task::spawn_blocking(move || polled.reload_if_changed()).await
        else {
            continue;
        };
        let result = if changed {
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
