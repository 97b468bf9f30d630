//! The arbiter against a real API server: etcd and kube-apiserver from the e2e build
//! (`e2e/build.sh`, cached), started on free loopback ports in a temporary directory and
//! stopped when the test ends, also when it fails.
//!
//! Five nodes join one pool at once (their compare-and-set writes conflict and are
//! retried), two stop and are removed after the expiry, one loses the API server (its
//! connections go through a proxy the test turns into a black hole, so requests hang):
//! it fences itself, and only later do the others remove it; it joins again with a new
//! `since` once it reaches the API server again; and a new incarnation under the same
//! node name replaces the old member.

use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_node::config::ArbiterConfig;
use smtp_node::replication::arbiter::{self, Arbiter, ArbiterSettings};
use smtp_node::replication::{Holder, Incarnation, Standing, View};
use smtp_node::spool::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "default";
const POOL: &str = "relay";
const LEASE: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// etcd and kube-apiserver, killed on drop.
struct ControlPlane {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    port: u16,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ControlPlane {
    fn start() -> Self {
        let bin = binaries();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut plane = ControlPlane {
            dir,
            children: Vec::new(),
            port: free_port(),
        };
        let work = plane.dir.path().to_path_buf();
        certificates(&work);
        let (client, peer) = (free_port(), free_port());
        plane.spawn(
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--name",
                "arbiter",
                "--data-dir",
                &work.join("etcd").display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("arbiter=http://127.0.0.1:{peer}"),
                "--unsafe-no-fsync",
            ]),
        );
        let pki = |f: &str| work.join("pki").join(f).display().to_string();
        plane.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                "--etcd-servers",
                &format!("http://127.0.0.1:{client}"),
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                &plane.port.to_string(),
                "--tls-cert-file",
                &pki("apiserver.crt"),
                "--tls-private-key-file",
                &pki("apiserver.key"),
                "--client-ca-file",
                &pki("ca.crt"),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                &pki("sa.pub"),
                "--service-account-signing-key-file",
                &pki("sa.key"),
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--authorization-mode",
                "RBAC",
                "--endpoint-reconciler-type",
                "none",
            ]),
        );
        plane
    }

    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.push((name.to_owned(), child));
    }

    /// The last lines of every component's log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join(format!("{name}.log"))) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = f.seek(SeekFrom::Start(len.saturating_sub(3000)));
                let _ = f.read_to_string(&mut text);
            }
            out.push_str(&format!("--- {name}.log (tail)\n{text}\n"));
        }
        out
    }

    fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, child)| matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone()))
    }

    /// A kubeconfig for the API server at `port` (the server's own port, or a proxy's),
    /// authenticating with the client certificate `user` (`admin` or `node`).
    fn kubeconfig(&self, file: &str, port: u16, user: &str) -> PathBuf {
        let pki = self.dir.path().join("pki");
        let path = self.dir.path().join(file);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: t\n  context: {{cluster: t, user: admin, namespace: {NAMESPACE}}}\ncurrent-context: t\n",
            ca = pki.join("ca.crt").display(),
            crt = pki.join(format!("{user}.crt")).display(),
            key = pki.join(format!("{user}.key")).display(),
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Starts etcd and kube-apiserver and waits until the API server serves; returns
    /// the admin kubeconfig. The free ports are picked before the components bind them,
    /// so another process may take one in between: a component that exits at start is
    /// retried on new ports, twice.
    async fn start_ready() -> (ControlPlane, PathBuf) {
        let mut attempt = 1;
        loop {
            let mut plane = ControlPlane::start();
            let admin = plane.kubeconfig("admin.kubeconfig", plane.port, "admin");
            match plane.wait_ready(&admin).await {
                Ok(()) => return (plane, admin),
                Err(exited) if attempt < 3 => {
                    eprintln!("attempt {attempt}: {exited}");
                    attempt += 1;
                }
                Err(exited) => panic!("{exited}"),
            }
        }
    }

    async fn wait_ready(&mut self, kubeconfig: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(name) = self.exited() {
                return Err(format!("{name} exited\n{}", self.logs()));
            }
            if let Ok(client) = arbiter::client(&config(kubeconfig)).await {
                let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
                if api.get_opt(NAMESPACE).await.ok().flatten().is_some() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                panic!("the API server was not ready in 120 s\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The Role and RoleBinding the operator gives a pool's ServiceAccount
/// (`operator/src/relaypool/build/rbac.rs`): the nodes in this test run with exactly
/// these permissions.
async fn grant_lease_role(admin: &Path) {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    use kube::api::{ObjectMeta, PostParams};
    let client = arbiter::client(&config(admin)).await.expect("admin client");
    let meta = ObjectMeta {
        name: Some(format!("{POOL}-node")),
        namespace: Some(NAMESPACE.into()),
        ..ObjectMeta::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            verbs: ["get", "list", "watch", "create", "update"]
                .map(String::from)
                .to_vec(),
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: format!("{POOL}-node"),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: POOL.into(),
            namespace: Some(NAMESPACE.into()),
            ..Subject::default()
        }]),
    };
    let pp = PostParams::default();
    kube::Api::<Role>::namespaced(client.clone(), NAMESPACE)
        .create(&pp, &role)
        .await
        .expect("create the Role");
    kube::Api::<RoleBinding>::namespaced(client, NAMESPACE)
        .create(&pp, &binding)
        .await
        .expect("create the RoleBinding");
}

/// The e2e control-plane binaries: built and cached by `e2e/build.sh`, which prints their
/// directory last.
fn binaries() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running e2e/build.sh");
    assert!(out.status.success(), "e2e/build.sh failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(
        text.lines()
            .last()
            .expect("e2e/build.sh printed nothing")
            .trim(),
    );
    assert!(
        dir.join("kube-apiserver").exists(),
        "no kube-apiserver in {dir:?}"
    );
    dir
}

/// A CA, the API server's certificate for 127.0.0.1, an admin client certificate
/// (`system:masters`), a client certificate authenticating as the pool's ServiceAccount
/// (`system:serviceaccount:default:relay`, which RBAC matches like a token of that
/// account) and the service-account key pair, as `e2e/cluster.sh` makes them.
fn certificates(work: &Path) {
    let script = r#"
set -euo pipefail
d="$1/pki"; mkdir -p "$d"; cd "$d"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=arbiter-test-ca" -keyout ca.key -out ca.crt
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >apiserver.ext
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile apiserver.ext -out apiserver.crt
openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=arbiter-test-admin" -keyout admin.key -out admin.csr
printf 'extendedKeyUsage=clientAuth\n' >admin.ext
openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile admin.ext -out admin.crt
openssl req -newkey rsa:2048 -nodes -subj "/CN=system:serviceaccount:default:relay" -keyout node.key -out node.csr
openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile admin.ext -out node.crt
openssl genrsa -out sa.key 2048
openssl rsa -in sa.key -pubout -out sa.pub
"#;
    let out = Command::new("bash")
        .args(["-c", script, "certs"])
        .arg(work)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "making certificates failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP proxy to the API server that the test can cut and restore: a node behind it
/// loses the API server while the process keeps running. Cut, it is a black hole:
/// connections stay open and nothing passes either way (requests hang, as behind a
/// partition), until it is restored and they are closed.
struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, _) = watch::channel(false);
        let state = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let already_cut = *cut.borrow_and_update();
                    if already_cut {
                        let _ = cut.wait_for(|c| !*c).await.map(|_| ());
                        return;
                    }
                    let target = SocketAddr::from(([127, 0, 0, 1], target));
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let frozen = tokio::select! {
                        _ = async { cut.wait_for(|c| *c).await.map(|_| ()) } => true,
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                    };
                    if frozen {
                        // Hold both ends, pass nothing, until restored.
                        let _ = cut.wait_for(|c| !*c).await.map(|_| ());
                    }
                });
            }
        });
        Proxy { port, cut, task }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.restore();
        self.task.abort();
    }
}

fn config(kubeconfig: &Path) -> ArbiterConfig {
    ArbiterConfig {
        namespace: NAMESPACE.into(),
        pool: POOL.into(),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        lease_duration: LEASE,
    }
}

/// One arbiter task with every standing it published, timestamped when seen.
struct Node {
    me: Holder,
    standing: watch::Receiver<Standing>,
    log: Arc<Mutex<Vec<(Instant, Standing)>>>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), arbiter::ArbiterError>>,
}

impl Node {
    async fn start(kubeconfig: &Path, name: &str) -> Node {
        let me = Holder {
            node: NodeId(name.into()),
            incarnation: Incarnation::new(),
        };
        let config = config(kubeconfig);
        let client = arbiter::client(&config).await.expect("client");
        let address = format!("127.0.0.1:{}", 2000 + name.len());
        let settings = ArbiterSettings::new(&config, me.clone(), "dc-a", &address);
        let arbiter = Arbiter::new(client, settings);
        let standing = arbiter.subscribe();
        let log = Arc::new(Mutex::new(vec![(
            Instant::now(),
            standing.borrow().clone(),
        )]));
        let mut watcher = standing.clone();
        let record = log.clone();
        tokio::spawn(async move {
            while watcher.changed().await.is_ok() {
                let seen = watcher.borrow_and_update().clone();
                record.lock().expect("log").push((Instant::now(), seen));
            }
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(arbiter.run(stop.clone()));
        Node {
            me,
            standing,
            log,
            stop,
            task,
        }
    }

    fn now(&self) -> Standing {
        self.standing.borrow().clone()
    }

    /// First standing published after `after` that satisfies `pred`, and when.
    fn first_after(&self, after: Instant, pred: impl Fn(&Standing) -> bool) -> Option<Instant> {
        let log = self.log.lock().expect("log");
        log.iter()
            .find(|(at, s)| *at >= after && pred(s))
            .map(|(at, _)| *at)
    }

    fn member_of(&self, view: &View) -> bool {
        view.is_member(&self.me)
    }

    async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("arbiter stops within 10 s")
            .expect("arbiter task");
        result.expect("arbiter ended without error");
    }
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn everyone_in(nodes: &[&Node]) -> bool {
    nodes.iter().all(|n| {
        let s = n.now();
        !s.fenced
            && s.view
                .as_ref()
                .is_some_and(|v| nodes.iter().all(|m| m.member_of(v)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_fence_leave_and_rejoin_through_the_api_server() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (plane, admin) = ControlPlane::start_ready().await;
    grant_lease_role(&admin).await;
    let direct = plane.kubeconfig("direct.kubeconfig", plane.port, "node");
    let proxy = Proxy::start(plane.port).await;
    let proxied = plane.kubeconfig("proxied.kubeconfig", proxy.port, "node");
    let timing = arbiter::scaled_timing(LEASE);

    // Five nodes at once: every join lands although the writes race.
    let (a, b, c, d, e) = tokio::join!(
        Node::start(&direct, "a"),
        Node::start(&direct, "b"),
        Node::start(&proxied, "c"),
        Node::start(&direct, "d"),
        Node::start(&direct, "e"),
    );
    wait_for(
        "a to e all members and unfenced",
        Duration::from_secs(30),
        || everyone_in(&[&a, &b, &c, &d, &e]),
    )
    .await;
    let view = a.now().view.expect("a view");
    assert_eq!(view.epoch, 5, "one epoch per join: {view:?}");
    let mut since: Vec<u64> = view.members.values().map(|m| m.since).collect();
    since.sort_unstable();
    assert_eq!(since, vec![1, 2, 3, 4, 5]);

    // d and e stop: their Leases stand still, and the others remove them.
    let stopped_at = Instant::now();
    let (d_node, e_node) = (d.me.node.clone(), e.me.node.clone());
    d.stop().await;
    e.stop().await;
    let without_d_e = |s: &Standing| {
        !s.fenced
            && s.view.as_ref().is_some_and(|v| {
                !v.members.contains_key(&d_node) && !v.members.contains_key(&e_node)
            })
    };
    wait_for("a, b and c remove d and e", Duration::from_secs(30), || {
        [&a, &b, &c].iter().all(|n| without_d_e(&n.now()))
    })
    .await;
    assert!(
        stopped_at.elapsed() >= timing.duration + timing.takeover_margin,
        "removed after only {:?}",
        stopped_at.elapsed()
    );
    assert!(everyone_in(&[&a, &b, &c]));
    let view = a.now().view.expect("a view");
    let c_since = view.members[&c.me.node].since;

    // c loses the API server: it fences itself first, the others remove it later.
    let cut_at = Instant::now();
    proxy.cut();
    let c_gone = |s: &Standing| {
        s.view
            .as_ref()
            .is_some_and(|v| !v.members.contains_key(&c.me.node))
    };
    wait_for("a and b remove c", Duration::from_secs(30), || {
        c_gone(&a.now()) && c_gone(&b.now())
    })
    .await;
    let fenced_at = c
        .first_after(cut_at, |s| s.fenced)
        .unwrap_or_else(|| panic!("c never fenced itself: {:?}", c.log.lock().unwrap()));
    let removed_at = [&a, &b]
        .iter()
        .filter_map(|n| n.first_after(cut_at, c_gone))
        .min()
        .expect("a view without c");
    eprintln!(
        "c fenced {:?} after the cut, removed {:?} after the cut",
        fenced_at - cut_at,
        removed_at - cut_at
    );
    assert!(
        fenced_at < removed_at,
        "c fenced at {:?}, removed at {:?}",
        fenced_at - cut_at,
        removed_at - cut_at
    );
    // By the timings: at least expiry - fence_after apart, less scheduling slack.
    let margin = timing.duration + timing.takeover_margin - timing.fence_after;
    assert!(
        removed_at - fenced_at >= margin / 2,
        "only {:?} between fencing and removal",
        removed_at - fenced_at
    );
    assert!(
        !a.now().fenced && !b.now().fenced,
        "the survivors stay unfenced"
    );
    assert!(
        fenced_at - cut_at <= timing.fence_after + Duration::from_millis(500),
        "c fenced late: {:?}",
        fenced_at - cut_at
    );

    // c reaches the API server again: it joins with a new `since`.
    proxy.restore();
    wait_for("c rejoins", Duration::from_secs(30), || {
        everyone_in(&[&a, &b, &c])
    })
    .await;
    let view = a.now().view.expect("a view");
    let rejoined = &view.members[&c.me.node];
    assert!(
        rejoined.since > c_since && rejoined.since == view.epoch,
        "c rejoined at {} (was {c_since}): {view:?}",
        rejoined.since
    );

    // c comes back with a new disk under the same name: the new incarnation replaces the
    // old member at once, without waiting for any expiry.
    let old = c.me.clone();
    let old_standing = c.standing.clone();
    c.stop().await;
    assert!(old_standing.borrow().fenced, "a stopped arbiter is fenced");
    let c2 = Node::start(&direct, "c").await;
    let replaced = Instant::now();
    wait_for(
        "the new c replaces the old one",
        Duration::from_secs(10),
        || everyone_in(&[&a, &b, &c2]),
    )
    .await;
    assert!(
        replaced.elapsed() < timing.duration,
        "replacing took {:?}",
        replaced.elapsed()
    );
    let view = a.now().view.expect("a view");
    assert!(!view.is_member(&old));
    assert_eq!(view.members[&c2.me.node].since, view.epoch);
    assert_eq!(view.members.len(), 3);

    // Nobody removed anyone else on the way.
    for node in [&a, &b] {
        let log = node.log.lock().expect("log");
        let first_member = log
            .iter()
            .position(|(_, s)| s.view.as_ref().is_some_and(|v| node.member_of(v)))
            .expect("member once");
        assert!(
            log[first_member..]
                .iter()
                .all(|(_, s)| s.view.as_ref().is_some_and(|v| node.member_of(v))),
            "{} left the view",
            node.me.node
        );
    }

    for node in [a, b, c2] {
        node.stop().await;
    }
    drop(proxy);
    drop(plane);
}
