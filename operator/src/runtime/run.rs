//! The `operator run` process: wiring of flags, logging, the HTTP endpoint, leader
//! election, the controllers and signals.
//!
//! Order of events:
//! 1. logging, the kube client, the HTTP listener (bound before anything else runs, so a
//!    busy port fails the start-up);
//! 2. leader election starts; the process is a standby until it holds the Lease;
//! 3. once leading, the controllers future starts with a [`Context`];
//! 4. on SIGTERM or SIGINT: the controllers are asked to stop (`Context::shutdown`) and
//!    given [`CONTROLLER_STOP_TIMEOUT`], then the Lease is released so that a standby
//!    takes over at once, then the HTTP server stops.
//!
//! Losing the Lease (another replica took it, or renewals failed past the renew
//! deadline) aborts the controllers at once and ends `run` with
//! [`RunError::LeadershipLost`]; `main` exits non-zero and Kubernetes restarts the
//! container as a fresh standby. Exiting is simpler to reason about than stopping and
//! restarting controllers in one process, and it is what most Kubernetes controllers do.
//! The controllers future ending on its own (with or without an error, or by a panic) is
//! fatal in the same way, since nothing would reconcile any more; `main` builds it from
//! [`super::Controllers`], so the error names the controller that ended. So is the HTTP
//! server failing, and the leader elector panicking. [`RunError::exit_code`] maps each
//! end to an exit code ([`super::exit`]).

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cli::{ArgsError, RunArgs, resolve_identity, resolve_lease_namespace};
use super::exit;
use super::http::{self, Health, HttpError};
use super::leader::{ElectionStatus, LeaderConfig, LeaderElector};
use super::metrics::Metrics;
use super::telemetry::{self, TelemetryError};

/// How long stopping controllers may take after SIGTERM before they are aborted. Below
/// Kubernetes' default 30 s termination grace period, leaving time to release the Lease.
pub const CONTROLLER_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the HTTP server may take to finish in-flight requests at shutdown.
const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Error type the controllers future returns.
pub type ControllerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// DNS settings for the record checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Servers to query; empty means the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Queries per second, across all domains.
    pub query_rate: NonZeroU32,
    /// Between checks of a verified domain.
    pub verified_interval: Duration,
    /// Between checks of a domain with a record missing or wrong.
    pub unverified_interval: Duration,
}

/// What controllers get when they start. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// Client for the API server.
    pub client: Client,
    /// Metrics registry; reconcilers use [`Metrics::reconcile`].
    pub metrics: Metrics,
    /// Controllers call `health.set_ready(true)` once their caches have synced.
    pub health: Health,
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// DNS check settings.
    pub dns: DnsSettings,
    /// smtp-node image for pools that do not name one.
    pub node_image: String,
    /// Cancelled when the controllers must stop (for example, pass
    /// `shutdown.clone().cancelled_owned()` to kube-runtime's
    /// `Controller::graceful_shutdown_on`). The controllers future should then return.
    pub shutdown: CancellationToken,
}

/// Leader election settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionSettings {
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name, identity and timing.
    pub leader: LeaderConfig,
}

/// Settings of one run, resolved from [`RunArgs`] and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Address of the HTTP endpoint.
    pub http_addr: SocketAddr,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// `None` when leader election is off.
    pub election: Option<ElectionSettings>,
    /// DNS check settings.
    pub dns: DnsSettings,
    /// smtp-node image for pools that do not name one.
    pub node_image: String,
}

impl RuntimeConfig {
    /// Resolves the flags against the process environment (`POD_NAMESPACE`, `POD_NAME`,
    /// the hostname) and the client's default namespace.
    pub fn from_args(args: &RunArgs, client_namespace: &str) -> Result<Self, ArgsError> {
        let timing = args.election_timing()?;
        let election = args.leader_election.then(|| {
            let env = |name| std::env::var(name).ok();
            let hostname = gethostname::gethostname().to_string_lossy().into_owned();
            ElectionSettings {
                lease_namespace: resolve_lease_namespace(
                    args.lease_namespace.as_deref(),
                    env("POD_NAMESPACE").as_deref(),
                    client_namespace,
                ),
                leader: LeaderConfig {
                    lease_name: args.lease_name.clone(),
                    identity: resolve_identity(
                        args.identity.as_deref(),
                        env("POD_NAME").as_deref(),
                        &hostname,
                        &random_suffix(),
                    ),
                    timing,
                },
            }
        });
        Ok(Self {
            http_addr: args.http_addr,
            namespaces: args.namespaces.clone(),
            election,
            dns: DnsSettings {
                nameservers: args.dns_nameservers.clone(),
                query_rate: args.dns_query_rate,
                verified_interval: args.dns_verified_interval,
                unverified_interval: args.dns_unverified_interval,
            },
            node_image: args.node_image.clone(),
        })
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

/// Why the process stopped other than by a signal.
#[derive(Debug, Error)]
pub enum RunError {
    /// Inconsistent flags.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// No kube client could be built (no kubeconfig, no in-cluster config).
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The HTTP endpoint failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// Another replica holds the Lease now, or renewals failed past the renew deadline.
    #[error("leadership lost; exiting so that the process restarts as a standby")]
    LeadershipLost,
    /// The controllers failed.
    #[error("controllers failed: {0}")]
    Controllers(#[source] ControllerError),
    /// The controllers returned without being asked to stop.
    #[error("controllers stopped unexpectedly")]
    ControllersExited,
    /// The controllers task panicked.
    #[error("controllers panicked: {0}")]
    ControllersPanicked(String),
    /// The leader elector panicked; nobody renews the Lease any more.
    #[error("leader election task panicked: {0}")]
    ElectionPanicked(String),
}

impl RunError {
    /// The process exit code (see [`super::exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Args(_)
            | Self::Telemetry(_)
            | Self::Client(_)
            | Self::Signals(_)
            | Self::Http(HttpError::Bind { .. }) => exit::START_UP,
            Self::LeadershipLost => exit::LEADERSHIP_LOST,
            Self::Http(_)
            | Self::Controllers(_)
            | Self::ControllersExited
            | Self::ControllersPanicked(_)
            | Self::ElectionPanicked(_) => exit::TASK_FAILED,
        }
    }
}

/// Runs `operator run`: sets up logging and the client from the environment (honouring
/// `KUBECONFIG`), stops gracefully on SIGTERM/SIGINT, and runs `controllers` while this
/// replica leads. `main` calls this after installing the rustls crypto provider;
/// returns `Ok` after a graceful stop.
pub async fn run<F, Fut>(args: RunArgs, controllers: F) -> Result<(), RunError>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), ControllerError>> + Send + 'static,
{
    telemetry::init(args.log_format, &args.log_level)?;
    let shutdown = CancellationToken::new();
    shutdown_on_signals(shutdown.clone()).map_err(RunError::Signals)?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let config = RuntimeConfig::from_args(&args, client.default_namespace())?;
    Runtime::bind(config, client)
        .await?
        .run(shutdown, controllers)
        .await
}

/// Installs SIGTERM and SIGINT handlers now (so that a signal during start-up is not
/// lost) and cancels `shutdown` on the first one.
pub fn shutdown_on_signals(shutdown: CancellationToken) -> std::io::Result<JoinHandle<()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            () = shutdown.cancelled() => return,
        };
        tracing::info!(signal = name, "shutting down");
        shutdown.cancel();
    }))
}

/// The process runtime with its HTTP listener bound, before anything runs. Split from
/// [`run`] so that tests and other binaries can supply their own client and shutdown.
pub struct Runtime {
    config: RuntimeConfig,
    client: Client,
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
}

impl Runtime {
    /// Binds the HTTP listener.
    pub async fn bind(config: RuntimeConfig, client: Client) -> Result<Self, RunError> {
        let listener = http::bind(config.http_addr).await?;
        let health = Health::new(config.election.is_some());
        Ok(Self {
            config,
            client,
            listener,
            metrics: Metrics::new(),
            health,
        })
    }

    /// The address the HTTP endpoint listens on (useful with port 0).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `shutdown` is cancelled (then returns `Ok`) or a fatal event (see the
    /// module docs).
    pub async fn run<F, Fut>(
        self,
        shutdown: CancellationToken,
        controllers: F,
    ) -> Result<(), RunError>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), ControllerError>> + Send + 'static,
    {
        let Self {
            config,
            client,
            listener,
            metrics,
            health,
        } = self;
        let http_stop = CancellationToken::new();
        let mut http_task = tokio::spawn(http::serve(
            listener,
            metrics.clone(),
            health.clone(),
            http_stop.clone(),
        ));
        let context = Context {
            client,
            metrics,
            health: health.clone(),
            namespaces: config.namespaces,
            dns: config.dns,
            node_image: config.node_image,
            shutdown: CancellationToken::new(),
        };
        // A failing HTTP server ends the run too (probes would fail anyway), but through
        // the same graceful path: stop the controllers, release the Lease.
        let lead_stop = shutdown.child_token();
        let leading = lead(config.election, context, lead_stop.clone(), controllers);
        tokio::pin!(leading);
        let outcome = tokio::select! {
            outcome = &mut leading => outcome,
            served = &mut http_task => {
                let err = match served {
                    Ok(Err(err)) => err,
                    Ok(Ok(())) | Err(_) => {
                        HttpError::Serve(std::io::Error::other("HTTP server stopped"))
                    }
                };
                tracing::error!(error = %err, "HTTP endpoint failed");
                lead_stop.cancel();
                leading.await.and(Err(RunError::Http(err)))
            }
        };
        if let Err(err) = &outcome {
            tracing::error!(error = %err, "stopping");
            health.set_failed(err.to_string());
        }
        http_stop.cancel();
        if !http_task.is_finished()
            && tokio::time::timeout(HTTP_STOP_TIMEOUT, &mut http_task)
                .await
                .is_err()
        {
            http_task.abort();
        }
        outcome
    }
}

/// Leader election and the controllers; returns once both have stopped.
async fn lead<F, Fut>(
    election: Option<ElectionSettings>,
    context: Context,
    shutdown: CancellationToken,
    controllers: F,
) -> Result<(), RunError>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), ControllerError>> + Send + 'static,
{
    let mut status = context.health.watch_election();
    let election_stop = CancellationToken::new();
    // Without election, Health reports this replica as leading from the start.
    let elector = election.map(|settings| {
        tracing::info!(
            lease = %settings.leader.lease_name,
            namespace = %settings.lease_namespace,
            identity = %settings.leader.identity,
            "standing by for the leader lease"
        );
        let api = Api::<Lease>::namespaced(context.client.clone(), &settings.lease_namespace);
        let elector = LeaderElector::new(api, settings.leader);
        tokio::spawn(elector.run(context.health.election_publisher(), election_stop.clone()))
    });

    let leading = tokio::select! {
        biased;
        () = shutdown.cancelled() => Ok(false),
        became = status.wait_for(|s| s.leading) => became.map(|_| true),
    };
    let outcome = match leading {
        Ok(true) => run_controllers(context, &shutdown, &mut status, controllers).await,
        Ok(false) => Ok(()),
        Err(_) => Err(RunError::LeadershipLost),
    };

    election_stop.cancel();
    if let Some(elector) = elector
        && let Err(err) = elector.await
    {
        tracing::error!(task = "leader-election", error = %err, "leader election task failed");
        // A dead elector shows up as lost leadership (it steps down when dropped); say
        // what really happened.
        if err.is_panic() && matches!(outcome, Err(RunError::LeadershipLost)) {
            return Err(RunError::ElectionPanicked(err.to_string()));
        }
    }
    outcome
}

async fn run_controllers<F, Fut>(
    context: Context,
    shutdown: &CancellationToken,
    status: &mut watch::Receiver<ElectionStatus>,
    controllers: F,
) -> Result<(), RunError>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), ControllerError>> + Send + 'static,
{
    tracing::info!("leading; starting controllers");
    let stop = context.shutdown.clone();
    let health = context.health.clone();
    let mut task = tokio::spawn(controllers(context));
    let outcome = tokio::select! {
        biased;
        () = shutdown.cancelled() => Ok(()),
        _ = status.wait_for(|s| !s.leading) => Err(RunError::LeadershipLost),
        ended = &mut task => Err(match ended {
            Ok(Ok(())) => RunError::ControllersExited,
            Ok(Err(err)) => RunError::Controllers(err),
            Err(join) => RunError::ControllersPanicked(join.to_string()),
        }),
    };
    stop.cancel();
    health.set_ready(false);
    match &outcome {
        // Another replica may already be reconciling: stop writing now.
        Err(RunError::LeadershipLost) => {
            task.abort();
            // Wait for the abort to land so that no reconcile is still writing when
            // `run` returns.
            let _ = task.await;
        }
        Ok(()) if !task.is_finished() => {
            match tokio::time::timeout(CONTROLLER_STOP_TIMEOUT, &mut task).await {
                Ok(Ok(Ok(()))) => tracing::info!("controllers stopped"),
                Ok(Ok(Err(err))) => {
                    tracing::warn!(error = %err, "controllers failed while stopping");
                }
                Ok(Err(join)) => {
                    tracing::error!(error = %join, "controllers panicked while stopping");
                }
                Err(_) => {
                    tracing::warn!(timeout = ?CONTROLLER_STOP_TIMEOUT, "controllers did not stop in time; aborting them");
                    task.abort();
                }
            }
        }
        _ => {}
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_start_up_task_failure_and_lost_leadership_apart() {
        let bind = RunError::Http(HttpError::Bind {
            addr: "127.0.0.1:8080".parse().unwrap(),
            source: std::io::Error::other("in use"),
        });
        assert_eq!(bind.exit_code(), exit::START_UP);
        let serve = RunError::Http(HttpError::Serve(std::io::Error::other("accept")));
        assert_eq!(serve.exit_code(), exit::TASK_FAILED);
        assert_eq!(RunError::ControllersExited.exit_code(), exit::TASK_FAILED);
        assert_eq!(
            RunError::Controllers("controller maildomain stopped unexpectedly".into()).exit_code(),
            exit::TASK_FAILED
        );
        assert_eq!(
            RunError::ElectionPanicked("boom".into()).exit_code(),
            exit::TASK_FAILED
        );
        assert_eq!(RunError::LeadershipLost.exit_code(), exit::LEADERSHIP_LOST);
    }
}
