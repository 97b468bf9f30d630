//! Helpers for delivery tests: real peers (Knot, smtp-sink, aiosmtpd), an in-memory
//! spool, and a running queue manager. Each test binary uses a subset.
#![allow(dead_code)]

pub mod apiserver;
pub mod certs;
pub mod knot;
pub mod load;
pub mod memory_spool;
pub mod netns;
pub mod node;
pub mod peers;

use std::net::{IpAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::registry::Registry;
use smtp_node::dkim::DkimKeyring;
use smtp_node::outbound::{DeliveryConfig, OutboundError, OutboundMetrics, QueueManager};
use smtp_node::spool::{
    BodyType, Envelope, MessageId, MessageMeta, NodeId, Ownership, Recipient, Ret, Spool,
    now_millis,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use knot::KnotServer;
use memory_spool::MemorySpool;

pub const NODE: &str = "node-0";

/// Upper bound for any wait on a delivery in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// A port free for TCP (and UDP when asked) on every given address.
pub fn free_port(ips: &[IpAddr], udp: bool) -> u16 {
    for _ in 0..100 {
        let Ok(probe) = TcpListener::bind((ips[0], 0)) else {
            continue;
        };
        let port = probe.local_addr().expect("addr").port();
        let mut holds = vec![probe];
        let mut ok = true;
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)) {
                Ok(l) => holds.push(l),
                Err(_) => ok = false,
            }
        }
        if udp {
            ok &= ips.iter().all(|ip| UdpSocket::bind((*ip, port)).is_ok());
        }
        if ok {
            return port;
        }
    }
    panic!("no free port");
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "smtp_node=debug".into()),
        )
        .try_init();
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small RFC 5322 message with CRLF line ends.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let body = body.replace("\r\n", "\n").replace('\n', "\r\n");
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

pub fn meta(from: &str, recipients: &[&str], size: usize) -> MessageMeta {
    MessageMeta {
        id: MessageId::new(),
        received_at: now_millis(),
        size: size as u64,
        envelope: Envelope {
            mail_from: from.to_string(),
            recipients: recipients.iter().map(|r| Recipient::new(*r)).collect(),
            body_type: BodyType::SevenBit,
            smtputf8: false,
            ret: Ret::Full,
            env_id: None,
            client_ip: None,
            helo: None,
            auth_user: None,
        },
        ownership: Ownership {
            owner: NodeId(NODE.to_string()),
            replicas: vec![],
            epoch: 1,
            copy: None,
        },
    }
}

/// Delivery settings for tests: the test DNS server, a high port, quick timeouts and a
/// one-second retry schedule.
pub fn delivery_config(dns: &KnotServer, port: u16) -> DeliveryConfig {
    let yaml = format!(
        "nameservers: [\"{}\"]\nport: {port}\nheloName: relay.test\n\
         bounceFrom: postmaster@relay.test\nretrySchedule: [\"1s\"]\nmaxAge: 1h\n\
         connectTimeout: 5s\ncommandTimeout: 10s\ndataTimeout: 10s\nshutdownGrace: 5s\n",
        dns.addr
    );
    serde_yaml::from_str(&yaml).expect("test delivery config")
}

/// A queue manager running against an in-memory spool.
pub struct Node {
    pub spool: Arc<MemorySpool>,
    registry: Registry,
    incoming: mpsc::UnboundedSender<MessageId>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), OutboundError>>,
}

impl Node {
    pub fn start(config: DeliveryConfig, keyring: DkimKeyring, spool: Arc<MemorySpool>) -> Self {
        init_tracing();
        let mut registry = Registry::default();
        let metrics = OutboundMetrics::register(&mut registry);
        let manager = QueueManager::new(
            &config,
            Arc::new(keyring),
            smtp_node::replication::Authority::Standalone(NodeId(NODE.to_string())),
            spool.clone(),
            metrics,
        )
        .expect("queue manager");
        let (incoming, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(manager.run(rx, async move {
            let _ = stopped.await;
        }));
        Self {
            spool,
            registry,
            incoming,
            stop: Some(stop),
            task,
        }
    }

    /// Without DKIM keys, on a fresh spool.
    pub fn start_plain(config: DeliveryConfig) -> Self {
        Self::start(
            config,
            DkimKeyring::default(),
            Arc::new(MemorySpool::default()),
        )
    }

    /// Stores a message the way the accept path does, and announces it.
    pub async fn submit(&self, meta: MessageMeta, body: Vec<u8>) -> MessageId {
        let id = meta.id;
        self.spool
            .store(meta, Bytes::from(body))
            .await
            .expect("store");
        self.incoming.send(id).expect("manager running");
        id
    }

    /// Value of one exposed sample, e.g. `outbound_recipients_total{result="delivered",route="mx"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops the manager and returns how long stopping took.
    pub async fn stop(mut self) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("manager stops in time")
            .expect("manager task")
            .expect("manager result");
        started.elapsed()
    }
}

/// Recipient states, for readable assertions.
pub fn states(meta: &MessageMeta) -> Vec<String> {
    meta.envelope
        .recipients
        .iter()
        .map(|r| {
            let state = match &r.state {
                smtp_node::spool::RecipientState::Pending => "pending".to_string(),
                smtp_node::spool::RecipientState::Deferred { .. } => "deferred".to_string(),
                smtp_node::spool::RecipientState::Delivered { .. } => "delivered".to_string(),
                smtp_node::spool::RecipientState::Failed { reply, .. } => {
                    format!("failed {}", reply.enhanced.clone().unwrap_or_default())
                }
            };
            format!("{}: {state}", r.address)
        })
        .collect()
}
