//! Builds a node's replication from its configuration: who it is (name and spool
//! incarnation), where peers reach it, its peer mTLS, the connection to the API server,
//! and the replicated spool in front of the local one. The node starts the tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::arbiter::{self, Arbiter, ArbiterError, ArbiterSettings};
use super::lease::LeaseTiming;
use super::server::{self, PeerServerError};
use super::{Authority, Holder, Incarnation, Peers, ReplicatedSpool, Settings, Standing};
use crate::config::{Config, ReplicationConfig, ResolvedIdentity};
use crate::http::Readiness;
use crate::metrics::ReplicationMetrics;
use crate::peer_tls::{PeerTls, PeerTlsError};
use crate::spool::{LogSpool, NodeId};

/// How long an owner waits for a holder's acknowledgement before it gives up on the
/// message (451) or on the commit (421).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the peer certificate files are looked at.
const PEER_TLS_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read or make the spool's incarnation file: {0}")]
    Incarnation(std::io::Error),
    #[error("replication.tls: {0}")]
    PeerTls(#[from] PeerTlsError),
    #[error("replication.listen `{0}` is not an ip:port address")]
    Listen(String),
    #[error(
        "replication: set advertiseHost or advertiseHostEnv (a variable that is set) so peers can reach this node"
    )]
    Advertise,
    #[error("replication.arbiter: {0}")]
    Arbiter(#[from] ArbiterError),
    #[error(transparent)]
    Bind(#[from] PeerServerError),
}

/// Everything a replicating node runs besides what a standalone one does.
pub struct Replication {
    pub me: Holder,
    pub arbiter: Arbiter,
    pub listener: TcpListener,
    pub tls: Option<Arc<PeerTls>>,
}

/// The spool, the authority and (for a pool member) the replication parts of a node.
pub struct Prepared {
    pub spool: Arc<ReplicatedSpool<LogSpool>>,
    pub authority: Authority,
    pub standing: watch::Receiver<Standing>,
    pub replication: Option<Replication>,
    /// What a drain switches: the arbiter's leaving intent and the delivery pause.
    pub drain: DrainSwitches,
}

/// The switches a drain turns (see `admin.rs`).
pub struct DrainSwitches {
    pub leaving: watch::Sender<Option<bool>>,
    pub quiet: Arc<std::sync::atomic::AtomicBool>,
}

impl DrainSwitches {
    fn new() -> (Self, watch::Receiver<Option<bool>>) {
        let (leaving, intent) = watch::channel(None);
        (
            Self {
                leaving,
                quiet: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            },
            intent,
        )
    }
}

/// Replication is on when the configuration asks for more than one copy.
pub async fn prepare(
    config: &Config,
    identity: &ResolvedIdentity,
    local: Arc<LogSpool>,
    metrics: ReplicationMetrics,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Prepared, SetupError> {
    let node = NodeId(identity.name.clone());
    let factor = config.replication.as_ref().map_or(1, |r| r.factor as usize);
    // Without an arbiter there is no view to agree on: the node keeps a single copy (and
    // `Config::warnings` says so at start).
    let arbitrated = config
        .replication
        .as_ref()
        .and_then(|r| r.arbiter.as_ref().map(|a| (r, a)));
    let (Some((r, arbiter_config)), true) = (arbitrated, factor > 1) else {
        // A single copy: no view, no peers; the replicated spool passes through.
        let (_, standing) = watch::channel(Standing {
            view: None,
            fenced: false,
            until: None,
        });
        let me = Holder {
            node: node.clone(),
            incarnation: Incarnation::load_or_create(&config.spool.dir)
                .map_err(SetupError::Incarnation)?,
        };
        let spool = ReplicatedSpool::new(
            local,
            settings(me.clone(), identity, 1, 1, &LeaseTiming::default()),
            standing.clone(),
            Peers::new(me, None),
        );
        return Ok(Prepared {
            spool: Arc::new(spool),
            authority: Authority::Standalone(node),
            standing,
            replication: None,
            drain: DrainSwitches::new().0,
        });
    };
    let me = Holder {
        node: node.clone(),
        incarnation: Incarnation::load_or_create(&config.spool.dir)
            .map_err(SetupError::Incarnation)?,
    };
    let address = advertised(r, &env)?;
    let tls = r
        .tls
        .as_ref()
        .map(|files| PeerTls::load(files, &identity.name))
        .transpose()?;
    if tls.is_none() {
        tracing::warn!("replication.tls is not set: peer traffic is plaintext and unauthenticated");
    }
    let listener = server::bind(&r.listen).await?;
    let client = arbiter::client(arbiter_config).await?;
    let (drain, leaving) = DrainSwitches::new();
    let arbiter_settings =
        ArbiterSettings::new(arbiter_config, me.clone(), &identity.data_centre, &address);
    let timing = arbiter_settings.timing;
    let arbiter = Arbiter::new(client, arbiter_settings).with_leaving(leaving);
    let standing = arbiter.subscribe();
    let spool = ReplicatedSpool::new(
        local,
        settings(
            me.clone(),
            identity,
            factor,
            r.min_data_centres.max(1) as usize,
            &timing,
        ),
        standing.clone(),
        Peers::new(me.clone(), tls.clone()),
    )
    .with_metrics(metrics);
    tracing::info!(node = %me.node, incarnation = %me.incarnation, %address,
        factor, min_data_centres = r.min_data_centres, "replicating the queue");
    Ok(Prepared {
        spool: Arc::new(spool),
        authority: Authority::Replicated {
            me: me.clone(),
            standing: standing.clone(),
            quiet: drain.quiet.clone(),
        },
        standing,
        drain,
        replication: Some(Replication {
            me,
            arbiter,
            listener,
            tls,
        }),
    })
}

fn settings(
    me: Holder,
    identity: &ResolvedIdentity,
    factor: usize,
    min_dcs: usize,
    timing: &LeaseTiming,
) -> Settings {
    Settings {
        me,
        data_centre: identity.data_centre.clone(),
        factor,
        min_data_centres: min_dcs,
        timeout: ACK_TIMEOUT,
        answer_within: timing.acknowledgements_hold_for(),
    }
}

/// `host:port` peers reach this node at: the advertised host and the listen port.
fn advertised(
    r: &ReplicationConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, SetupError> {
    let listen: SocketAddr = r
        .listen
        .parse()
        .map_err(|_| SetupError::Listen(r.listen.clone()))?;
    let host = match (&r.advertise_host, &r.advertise_host_env) {
        (Some(host), _) => host.clone(),
        (None, Some(var)) => env(var)
            .filter(|v| !v.is_empty())
            .ok_or(SetupError::Advertise)?,
        (None, None) if !listen.ip().is_unspecified() => listen.ip().to_string(),
        (None, None) => return Err(SetupError::Advertise),
    };
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", listen.port())
    } else {
        format!("{host}:{}", listen.port())
    })
}

/// Keeps readiness false while the node is fenced or not yet a member, with the reason.
pub async fn watch_standing(
    mut standing: watch::Receiver<Standing>,
    me: Holder,
    readiness: Readiness,
    metrics: ReplicationMetrics,
    stop: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    const FENCED: &str =
        "fenced: cannot renew this node's Lease with the API server; new mail gets 451";
    const JOINING: &str = "not a member of the pool's view yet";
    loop {
        let (fenced, member) = {
            let s = standing.borrow_and_update();
            (s.fenced, s.view.as_ref().is_some_and(|v| v.is_member(&me)))
        };
        metrics.fenced.set(i64::from(fenced));
        if fenced {
            tracing::warn!(
                "fenced: this node's Lease is not renewed; no deliveries start, new mail gets 451"
            );
            readiness.hold(FENCED);
        } else {
            readiness.release(FENCED);
        }
        if member {
            readiness.release(JOINING);
        } else {
            readiness.hold(JOINING);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            changed = standing.changed() => if changed.is_err() {
                readiness.hold(FENCED);
                return Ok(());
            },
        }
    }
}

/// Reloads the peer certificates when their files change (a CA rotation or a renewed
/// node certificate), without a restart.
pub async fn watch_peer_tls(
    tls: Arc<PeerTls>,
    stop: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let mut tick = tokio::time::interval(PEER_TLS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let polled = tls.clone();
        let _ = tokio::task::spawn_blocking(move || polled.reload_if_changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, host: Option<&str>, env: Option<&str>) -> ReplicationConfig {
        ReplicationConfig {
            factor: 2,
            min_data_centres: 1,
            listen: listen.into(),
            advertise_host: host.map(Into::into),
            advertise_host_env: env.map(Into::into),
            arbiter: None,
            peers: vec![],
            tls: None,
        }
    }

    #[test]
    fn peers_reach_the_advertised_host_on_the_listen_port() {
        let none = |_: &str| None;
        let pod_ip = |v: &str| (v == "POD_IP").then(|| "10.1.2.3".to_owned());
        assert_eq!(
            advertised(&config("0.0.0.0:7946", Some("n1.pool-peers"), None), &none).ok(),
            Some("n1.pool-peers:7946".into())
        );
        assert_eq!(
            advertised(&config("0.0.0.0:7946", None, Some("POD_IP")), &pod_ip).ok(),
            Some("10.1.2.3:7946".into())
        );
        assert_eq!(
            advertised(&config("127.0.0.7:7000", None, None), &none).ok(),
            Some("127.0.0.7:7000".into())
        );
        assert_eq!(
            advertised(&config("[::]:7946", Some("fd00::5"), None), &none).ok(),
            Some("[fd00::5]:7946".into())
        );
        assert!(matches!(
            advertised(&config("0.0.0.0:7946", None, Some("POD_IP")), &none),
            Err(SetupError::Advertise)
        ));
        assert!(matches!(
            advertised(&config("not an address", None, None), &none),
            Err(SetupError::Listen(_))
        ));
    }
}
