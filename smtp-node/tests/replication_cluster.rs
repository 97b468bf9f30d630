//! The replicated queue end to end: four smtp-node processes in two data centres, each in
//! its own network namespace behind a bridge, peers talking mTLS, the real kube-apiserver
//! and etcd as the arbiter, Postfix's smtp-sink as the destination, and SMTP load with a
//! ledger of every message answered 250. Faults hit the processes and the network while
//! the load runs: kill -9, SIGSTOP past the Lease, a wiped disk, a data centre cut off
//! from the other and from the API server and healed, a drain. At the end every
//! acknowledged message must have reached the sink. The run prints acknowledged,
//! delivered, lost and duplicated counts and how long the survivors took to take over.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::apiserver::ControlPlane;
use common::certs::Pki;
use common::free_port;
use common::load::{Client, subject_of};
use common::netns::Network;
use common::node::{Node, NodeSettings, http_request, signal};
use common::peers::SmtpSink;

/// Short Leases keep the test short: takeover about 5 s after an owner's last renewal.
const LEASE: &str = "4s";
const POOL: &str = "chaos";
const NODES: [(&str, &str); 4] = [
    ("east-0", "east"),
    ("east-1", "east"),
    ("west-0", "west"),
    ("west-1", "west"),
];

/// The admin token the operator would mount; each node reads it from `token`.
const ADMIN_TOKEN: &str = "chaos-admin-token";

/// What every node of the pool shares.
struct Pool<'a> {
    net: &'a Network,
    kubeconfig: &'a Path,
    sink: SocketAddr,
    token: &'a Path,
    pki: &'a Pki,
}

fn settings(pool: &Pool, i: usize) -> NodeSettings {
    let (name, dc) = NODES[i];
    let node = pool.net.node(i);
    let cert = pool.pki.issue(name);
    let cert_dir = cert.cert.parent().expect("cert dir").to_path_buf();
    NodeSettings {
        netns: Some((node.ns.clone(), node.ip)),
        admin_token_file: Some(pool.token.to_path_buf()),
        identity_yaml: format!("node: {{name: {name}, dataCentre: {dc}}}\n"),
        relay_yaml: "relay: {allowedNetworks: [10.0.0.0/8], domains: [example.com]}\n".into(),
        delivery_yaml: format!(
            "delivery: {{smarthost: {{host: \"{}\", port: {}, tls: none}}, retrySchedule: [1s], concurrencyPerDestination: 4}}\n",
            pool.sink.ip(),
            pool.sink.port()
        ),
        extra_yaml: format!(
            "replication: {{factor: 2, minDataCentres: 2, listen: \"{ip}:7946\", advertiseHost: \"{ip}\", \
             tls: {{caFile: \"{ca}\", certDir: \"{certs}\"}}, \
             arbiter: {{namespace: default, pool: {POOL}, kubeconfig: \"{kubeconfig}\", leaseDuration: {LEASE}}}}}\n",
            ip = node.ip,
            ca = pool.pki.ca_file().display(),
            certs = cert_dir.display(),
            kubeconfig = pool.kubeconfig.display(),
        ),
        ..NodeSettings::default()
    }
}

fn load(
    addrs: Vec<SocketAddr>,
    threads: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<BTreeMap<String, String>>>,
    refused: Arc<Mutex<Refused>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (addrs, stop, ledger, refused) =
                (addrs.clone(), stop.clone(), ledger.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut target = t;
                let mut client: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    // Every node gets its share: a new connection to the next node
                    // every few messages, and at once after any failure.
                    if n.is_multiple_of(20) {
                        client = None;
                    }
                    if client.is_none() {
                        target = (target + 1) % addrs.len();
                        client = Client::connect(addrs[target]).ok();
                        if client.is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    let subject = format!("m-{t}-{n}");
                    n += 1;
                    let sent = client.as_mut().map(|c| c.send(&subject));
                    match sent {
                        Some(Ok(id)) => {
                            ledger.lock().expect("ledger").insert(subject, id);
                        }
                        Some(Err(error)) => {
                            refused.lock().expect("refused").add(subject, &error);
                            client = None;
                        }
                        None => client = None,
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect()
}

/// Messages not answered with 250, and those answered with 451: a 451 promises that
/// nothing of the message is ever delivered (a 421 or a cut connection does not).
#[derive(Default)]
struct Refused {
    count: u64,
    with_451: BTreeSet<String>,
}

impl Refused {
    fn add(&mut self, subject: String, error: &std::io::Error) {
        self.count += 1;
        if error.to_string().starts_with("451") {
            self.with_451.insert(subject);
        }
    }
}

/// Messages taken over so far by the nodes `among`.
fn takeovers(nodes: &[Node], among: &[usize]) -> f64 {
    among
        .iter()
        .map(|&i| nodes[i].metric("smtpnode_replication_takeovers_total"))
        .sum()
}

fn others(except: usize) -> Vec<usize> {
    (0..NODES.len()).filter(|i| *i != except).collect()
}

/// Waits until every node has counted its copies under the same view and none is
/// under-replicated, the same for a second: the guarantee covers `replicationFactor - 1`
/// lost copies at a time, so the next fault may hit only then. A node publishes its
/// epoch and its count together, once it has looked at its copies under that view.
fn settle(nodes: &[Node], skip: &[usize]) {
    let started = Instant::now();
    let mut since: Option<(Instant, Vec<(f64, f64)>)> = None;
    loop {
        let state: Vec<(f64, f64)> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .map(|(_, n)| {
                (
                    n.metric("smtpnode_replication_view_epoch"),
                    n.metric("smtpnode_replication_under_replicated_messages"),
                )
            })
            .collect();
        let same_view = state.windows(2).all(|w| w[0].0 == w[1].0);
        if same_view && state.iter().all(|s| s.1 == 0.0) {
            match &since {
                Some((at, seen)) if *seen == state => {
                    if at.elapsed() >= Duration::from_secs(1) {
                        return;
                    }
                }
                _ => since = Some((Instant::now(), state.clone())),
            }
        } else {
            since = None;
        }
        if started.elapsed() > Duration::from_secs(60) {
            dump(nodes);
            panic!(
                "copies not restored within 60 s: (view epoch, under-replicated) per node {state:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The log lines of every node that say what replication did, for a failure; the whole
/// logs go to a directory under the system's temporary one.
fn dump(nodes: &[Node]) {
    let dir = std::env::temp_dir().join("smtpfleet-replication-cluster");
    let _ = std::fs::create_dir_all(&dir);
    eprintln!("node logs in {}", dir.display());
    for (node, (name, _)) in nodes.iter().zip(NODES) {
        let log = node.log_text();
        let _ = std::fs::write(dir.join(format!("{name}.log")), &log);
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("replication::") || l.contains(" WARN ") || l.contains(" ERROR ")
            })
            .collect();
        eprintln!("--- {name}");
        for line in tail.iter().rev().take(40).rev() {
            eprintln!("{line}");
        }
    }
}

fn wait_until(
    what: &str,
    nodes: &[Node],
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            dump(nodes);
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[test]
fn acknowledged_mail_survives_crashes_pauses_wiped_disks_a_cut_data_centre_and_a_drain() {
    // Built (or found in the cache) before the test leaves the host's network.
    common::apiserver::binaries();
    let net = Network::create(NODES.len());
    net.enter_hub();
    let hub = net.hub_ip();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (plane, kubeconfig) = runtime.block_on(ControlPlane::start_ready_on(hub));

    let sink_port = free_port(&[hub], false);
    let mut sink = Some(SmtpSink::start(hub, sink_port));
    let secrets = tempfile::tempdir().expect("tempdir");
    let token = secrets.path().join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).expect("token");
    let pki = Pki::new();
    let pool = Pool {
        net: &net,
        kubeconfig: &kubeconfig,
        sink: SocketAddr::new(hub, sink_port),
        token: &token,
        pki: &pki,
    };
    let mut nodes: Vec<Node> = (0..NODES.len())
        .map(|i| Node::start(settings(&pool, i)))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.smtp).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(BTreeMap::new()));
    let refused = Arc::new(Mutex::new(Refused::default()));
    let clients = load(addrs, 6, stop.clone(), ledger.clone(), refused.clone());
    let acked = || ledger.lock().expect("ledger").len();
    wait_until(
        "first acknowledged messages",
        &nodes,
        Duration::from_secs(30),
        || acked() > 200,
    );

    // Each fault hits while the destination is away, so owners hold deferred mail, and
    // only once the pool has restored every message's copies after the previous one: the
    // guarantee covers `replicationFactor - 1` lost copies at a time.
    let mut captured = Vec::new();
    let mut pause_sink = |sink: &mut Option<SmtpSink>| {
        if let Some(s) = sink.take() {
            captured.extend(s.stop());
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let resume_sink = || SmtpSink::start(hub, sink_port);

    // kill -9 an owner: its messages are taken over by their replicas in west.
    pause_sink(&mut sink);
    let before = takeovers(&nodes, &others(0));
    nodes[0].kill();
    let took = wait_until(
        "a takeover after kill -9",
        &nodes,
        Duration::from_secs(30),
        || takeovers(&nodes, &others(0)) > before,
    );
    eprintln!(
        "takeover {:.1} s after kill -9 of east-0",
        took.as_secs_f64()
    );
    sink = Some(resume_sink());
    nodes[0].restart();
    settle(&nodes, &[]);

    // SIGSTOP a node past its Lease: it is removed and its mail taken over; resumed, it
    // finds itself out of the view and joins again, its old copies stale.
    pause_sink(&mut sink);
    let before = takeovers(&nodes, &others(2));
    let paused = nodes[2].pid();
    signal(paused, "STOP");
    let took_paused = wait_until(
        "a takeover from the paused node",
        &nodes,
        Duration::from_secs(30),
        || takeovers(&nodes, &others(2)) > before,
    );
    signal(paused, "CONT");
    eprintln!(
        "takeover {:.1} s after SIGSTOP of west-0",
        took_paused.as_secs_f64()
    );
    sink = Some(resume_sink());
    nodes[2].wait_ready();
    settle(&nodes, &[]);

    // An empty disk: east-1 comes back as a new incarnation that holds nothing; its mail
    // is taken over from the copies in west.
    pause_sink(&mut sink);
    let before = takeovers(&nodes, &others(1));
    nodes[1].kill();
    std::fs::remove_dir_all(nodes[1].spool_dir()).expect("wipe the spool");
    let took_wiped = wait_until(
        "a takeover from the wiped node",
        &nodes,
        Duration::from_secs(30),
        || takeovers(&nodes, &others(1)) > before,
    );
    eprintln!(
        "takeover {:.1} s after kill -9 of east-1 and the loss of its disk",
        took_wiped.as_secs_f64()
    );
    sink = Some(resume_sink());
    nodes[1].restart();
    settle(&nodes, &[]);
    let restarted = took;

    // Cut the east data centre off from west, from the API server and from the clients:
    // east fences itself, west removes it and takes every east-owned message over (each
    // has a copy in west), and delivers it. Healed, east finds itself out of the view and
    // joins again; its copies are stale and go once west has delivered their messages.
    let west = [2, 3];
    let before = takeovers(&nodes, &west);
    net.cut(0);
    net.cut(1);
    let took_cut = wait_until(
        "west taking over from the cut-off east",
        &nodes,
        Duration::from_secs(40),
        || takeovers(&nodes, &west) > before,
    );
    eprintln!(
        "takeover {:.1} s after east was cut off",
        took_cut.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    net.heal(0);
    net.heal(1);
    nodes[0].wait_ready();
    nodes[1].wait_ready();
    settle(&nodes, &[]);

    // Drain west-1 as the operator does before it removes a node: only with the token;
    // the node takes no new mail, marks itself leaving, the others take its messages
    // over and restore the factor without it; once it says done, it goes for good,
    // disk and all, and nothing acknowledged may be missing.
    pause_sink(&mut sink);
    let drained = &nodes[3];
    let call = |method: &str, path: &str, token: Option<&str>| {
        http_request(drained.http, method, path, token).unwrap_or((0, String::new()))
    };
    assert_eq!(call("POST", "/admin/drain", None).0, 401, "no token");
    assert_eq!(call("POST", "/admin/drain", Some("wrong")).0, 401);
    let (code, body) = call("POST", "/admin/drain", Some(ADMIN_TOKEN));
    assert!(code == 202 || code == 200, "{code} {body}");
    assert!(body.contains("\"requested\":true"), "{body}");
    let asked = Instant::now();
    wait_until("west-1 drained", &nodes, Duration::from_secs(60), || {
        call("POST", "/admin/drain", Some(ADMIN_TOKEN)).0 == 200
    });
    eprintln!(
        "drain of west-1 done {:.1} s after it was asked",
        asked.elapsed().as_secs_f64()
    );
    let (_, queue) = call("GET", "/admin/queue", Some(ADMIN_TOKEN));
    assert!(queue.contains("\"depth\":0"), "{queue}");
    assert!(queue.contains("\"done\":true"), "{queue}");
    let (ready, reason) = call("GET", "/readyz", None);
    assert_eq!(ready, 503, "a draining node is not ready: {reason}");
    sink = Some(resume_sink());
    nodes[3].kill();
    std::fs::remove_dir_all(nodes[3].spool_dir()).expect("remove the drained disk");
    settle(&nodes, &[3]);

    // Enough load to mean something, within a bound.
    let more = Instant::now();
    while acked() < 10_000 && more.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let ledger = ledger.lock().expect("ledger").clone();

    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    let load_ended = Instant::now();
    while load_ended.elapsed() < Duration::from_secs(120) {
        delivered.clear();
        let now = sink.as_ref().map(SmtpSink::messages).unwrap_or_default();
        for m in captured.iter().chain(&now) {
            if let Some(s) = subject_of(&m.data) {
                *delivered.entry(s).or_default() += 1;
            }
        }
        if ledger.keys().all(|s| delivered.contains_key(s)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let settled = load_ended.elapsed();
    eprintln!(
        "sink alive at the end: {}",
        sink.as_mut().is_some_and(SmtpSink::alive)
    );
    let lost: Vec<(&String, &String)> = ledger
        .iter()
        .filter(|(s, _)| !delivered.contains_key(*s))
        .collect();
    let duplicates: usize = delivered.values().map(|c| c - 1).sum();
    let unexpected = delivered
        .keys()
        .filter(|s| !ledger.contains_key(*s))
        .count();
    eprintln!(
        "acknowledged {}, refused or cut {}, delivered {} distinct, lost {}, duplicates {}, \
         delivered without 250 {}, first takeover {:.1} s, settled {:.1} s after the load",
        ledger.len(),
        refused.lock().expect("refused").count,
        delivered.len(),
        lost.len(),
        duplicates,
        unexpected,
        restarted.as_secs_f64(),
        settled.as_secs_f64()
    );
    if !lost.is_empty() {
        dump(&nodes);
        panic!("lost acknowledged messages (subject, queue id): {lost:?}");
    }
    let refused = refused.lock().expect("refused");
    let delivered_after_451: Vec<&String> = refused
        .with_451
        .iter()
        .filter(|s| delivered.contains_key(*s))
        .collect();
    eprintln!(
        "answered 451: {}, of them delivered: {}",
        refused.with_451.len(),
        delivered_after_451.len()
    );
    assert!(
        delivered_after_451.is_empty(),
        "messages answered 451 were delivered: {delivered_after_451:?}"
    );
    assert!(
        ledger.len() >= 10_000,
        "too little load to mean anything: {}",
        ledger.len()
    );
    // By each live node's own count, every 250 it gave rested on two copies, and it
    // timed the holders' acknowledgements.
    for (node, (name, _)) in nodes.iter().zip(NODES).take(3) {
        let answered = node.metric("smtpnode_replication_copies_per_message_count");
        let copies = node.metric("smtpnode_replication_copies_per_message_sum");
        assert!(answered > 0.0, "{name} counted no 250");
        assert_eq!(copies, 2.0 * answered, "{name}: copies behind its 250s");
        assert!(
            node.metric("smtpnode_replication_ack_seconds_count{phase=\"prepare\"}") >= answered,
            "{name} timed fewer prepares than it answered"
        );
    }
    drop(nodes);
    drop(plane);
}
