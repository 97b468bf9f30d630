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

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_node::config::ArbiterConfig;
use smtp_node::replication::arbiter::{self, Arbiter, ArbiterSettings};
use smtp_node::replication::{Holder, Incarnation, Standing, View};
use smtp_node::spool::NodeId;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::apiserver::{ControlPlane, NAMESPACE, Proxy};

const POOL: &str = "relay";
const LEASE: Duration = Duration::from_secs(3);

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
