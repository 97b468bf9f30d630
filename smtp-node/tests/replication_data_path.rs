//! The replication data path with real spools and real sockets: three nodes in two data
//! centres, each with its own `LogSpool` on disk, its peer listener on loopback with mTLS
//! from a test CA, and a `ReplicatedSpool` in front. The pool's view is given to the
//! nodes directly here (the arbiter that reads it from the API server is tested on its
//! own), so these tests are about what crosses the wire and lands on disk.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::certs::Pki;
use smtp_node::config::PeerTlsFiles;
use smtp_node::peer_tls::PeerTls;
use smtp_node::replication::protocol::Request;
use smtp_node::replication::{
    Authority, Copy, Duty, Holder, Incarnation, PeerError, Peers, ReplicatedSpool, Settings,
    Standing, View, server, takeover,
};
use smtp_node::spool::{
    LogSpool, LogSpoolOptions, MessageMeta, NodeId, RecipientState, RecipientUpdate, Spool,
    SpoolError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NODES: [(&str, &str); 3] = [
    ("pool-east-0", "east"),
    ("pool-east-1", "east"),
    ("pool-west-0", "west"),
];

struct TestNode {
    holder: Holder,
    spool: Arc<LogSpool>,
    replicated: ReplicatedSpool<LogSpool>,
    standing: watch::Sender<Standing>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

struct Pool {
    nodes: Vec<TestNode>,
    view: View,
    pki: Pki,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.stop.cancel();
        }
    }
}

fn loopback() -> IpAddr {
    "127.0.0.1".parse().expect("ip")
}

/// Starts the three nodes, each a member of the view, with factor 2 over 2 data centres.
async fn pool(factor: usize, min_dcs: usize) -> Pool {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let mut view = View::default();
    let mut prepared = Vec::new();
    for (name, dc) in NODES {
        let dir = tempfile::tempdir().expect("tempdir");
        let incarnation = Incarnation::load_or_create(dir.path()).expect("incarnation");
        let holder = Holder {
            node: NodeId(name.into()),
            incarnation,
        };
        let cert = pki.issue(name);
        let tls = PeerTls::load(
            &PeerTlsFiles {
                ca_file: ca.clone(),
                cert_dir: cert.cert.parent().expect("dir").to_path_buf(),
            },
            name,
        )
        .expect("peer tls");
        let port = common::free_port(&[loopback()], false);
        let address = format!("127.0.0.1:{port}");
        view = view.join(&holder, dc, &address).expect("joins");
        prepared.push((holder, dir, tls, address, dc));
    }
    let mut nodes = Vec::new();
    for (holder, dir, tls, address, dc) in prepared {
        let spool =
            Arc::new(LogSpool::open(dir.path(), LogSpoolOptions::default()).expect("spool"));
        let stop = CancellationToken::new();
        let listener = server::bind(&address).await.expect("bind");
        let (standing, watch) = watch::channel(standing(&view));
        tokio::spawn(server::serve(
            listener,
            spool.clone(),
            holder.clone(),
            watch.clone(),
            Arc::default(),
            Some(tls.clone()),
            stop.clone(),
        ));
        let replicated = ReplicatedSpool::new(
            spool.clone(),
            Settings {
                me: holder.clone(),
                data_centre: dc.to_owned(),
                factor,
                min_data_centres: min_dcs,
                timeout: Duration::from_secs(5),
                answer_within: Duration::from_secs(5),
            },
            watch,
            Peers::new(holder.clone(), Some(tls)),
        );
        nodes.push(TestNode {
            holder,
            spool,
            replicated,
            standing,
            stop,
            _dir: dir,
        });
    }
    Pool { nodes, view, pki }
}

fn message(n: usize) -> (MessageMeta, Bytes) {
    let body = format!("Subject: message {n}\r\n\r\nbody of {n} with 8-bit \u{e9}\r\n");
    (
        common::meta("sender@example.com", &["rcpt@example.net"], body.len()),
        Bytes::from(body),
    )
}

async fn held(node: &TestNode, meta: &MessageMeta) -> Option<(MessageMeta, Bytes)> {
    let stored = node.spool.load_meta(meta.id).await.expect("load")?;
    let body = node.spool.load_body(meta.id).await.expect("body");
    Some((stored, body))
}

/// No node of the pool holds any copy of the message.
async fn kept_nowhere(pool: &Pool, meta: &MessageMeta) {
    for node in &pool.nodes {
        assert!(
            held(node, meta).await.is_none(),
            "{} kept a copy",
            node.holder.node
        );
    }
}

/// The node's copy once the owner's commit, sent after the 250, has reached it.
async fn committed(node: &TestNode, meta: &MessageMeta) -> (MessageMeta, Bytes) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let copy = held(node, meta).await;
        match copy {
            Some(copy) if copy.0.ownership.copy.as_ref().is_some_and(|c| c.committed) => {
                return copy;
            }
            _ if Instant::now() > deadline => panic!(
                "{} has no committed copy of {} after 10 s: {copy:?}",
                node.holder.node, meta.id
            ),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn a_stored_message_is_committed_on_a_node_in_the_other_data_centre() {
    let pool = pool(2, 2).await;
    let owner = &pool.nodes[0];
    let (meta, body) = message(1);
    owner
        .replicated
        .store(meta.clone(), body.clone())
        .await
        .expect("stored on two nodes");

    let (local, local_body) = held(owner, &meta).await.expect("owner keeps a copy");
    assert_eq!(local_body, body);
    let copy = local.ownership.copy.clone().expect("a replication record");
    assert!(copy.committed);
    assert_eq!(copy.epoch, pool.view.epoch);
    assert_eq!(copy.holders.len(), 2);
    assert_eq!(copy.holders[0], owner.holder);
    assert_eq!(
        copy.holders[1], pool.nodes[2].holder,
        "the replica is in west"
    );

    let (remote, remote_body) = committed(&pool.nodes[2], &meta).await;
    assert_eq!(remote_body, body, "byte for byte");
    assert_eq!(remote.ownership.copy, Some(copy.clone()));
    assert_eq!(remote.envelope, local.envelope);
    assert!(
        held(&pool.nodes[1], &meta).await.is_none(),
        "only two copies"
    );
    assert_eq!(
        pool.view.duty(&owner.holder, &copy),
        smtp_node::replication::Duty::Deliver
    );
}

#[tokio::test]
async fn without_the_other_data_centre_nothing_is_kept_and_the_reason_is_given() {
    let pool = pool(2, 2).await;
    pool.nodes[2].stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (meta, body) = message(2);
    let error = pool.nodes[0]
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("the only west node is gone");
    match &error {
        SpoolError::NotReplicated(reason) => assert!(reason.contains("pool-west-0"), "{reason}"),
        other => panic!("expected NotReplicated, got {other}"),
    }
    kept_nowhere(&pool, &meta).await;
}

/// A replica that takes the connection and never answers may still store the copy
/// after the owner gave up: the client hears 421 (outcome unknown), never 451, whose
/// promise is that nothing of the message is delivered. The owner's own copy goes.
#[tokio::test]
async fn a_replica_that_does_not_answer_gets_the_message_a_421_not_a_451() {
    let pool = pool(2, 2).await;
    let west0 = &pool.nodes[2];
    west0.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let address = pool.view.members[&west0.holder.node].address.clone();
    let silent = tokio::net::TcpListener::bind(&address)
        .await
        .expect("west-0's address");
    let held_open = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let (meta, body) = message(3);
    let error = pool.nodes[0]
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("west-0 never answers");
    held_open.abort();
    match &error {
        SpoolError::OutcomeUnknown(reason) => {
            assert!(reason.contains("pool-west-0"), "{reason}")
        }
        other => panic!("expected OutcomeUnknown, got {other}"),
    }
    assert!(
        held(&pool.nodes[0], &meta).await.is_none(),
        "the owner dropped its copy"
    );
}

#[tokio::test]
async fn too_few_data_centres_in_the_view_are_refused_before_anything_is_written() {
    let pool = pool(2, 2).await;
    let without_west = pool
        .view
        .remove(&[NodeId("pool-west-0".into())])
        .expect("member");
    pool.nodes[0].standing.send_replace(standing(&without_west));
    let (meta, body) = message(3);
    let error = pool.nodes[0]
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("one DC");
    assert!(error.to_string().contains("span 2 data centres"), "{error}");
    assert!(held(&pool.nodes[0], &meta).await.is_none());
}

#[tokio::test]
async fn a_fenced_node_takes_no_mail() {
    let pool = pool(2, 2).await;
    pool.nodes[0].standing.send_replace(fenced(&pool.view));
    let (meta, body) = message(4);
    let error = pool.nodes[0]
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("fenced");
    assert!(error.to_string().contains("fenced"), "{error}");
    for node in &pool.nodes {
        assert!(held(node, &meta).await.is_none());
    }
}

/// The owner's view may lag behind the arbiter's: here east-0 still sees west-0 as it
/// was, while west-0 was paused past its Lease, removed, and let in again. A copy on
/// west-0 written at the old epoch would not count (west-0 is eligible only for copies
/// since it came back), so west-0 refuses it and the client hears 451 instead of a 250
/// resting on one copy. The same holds while west-0 is fenced, and on its first instant
/// back from a pause, before its arbiter task has noticed that its deadline passed.
#[tokio::test]
async fn a_holder_refuses_copies_that_would_not_count() {
    let pool = pool(2, 2).await;
    let (east0, west0) = (&pool.nodes[0], &pool.nodes[2]);
    let refused = |error: SpoolError, why: &str| match error {
        SpoolError::NotReplicated(reason) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected NotReplicated, got {other}"),
    };

    west0.standing.send_replace(fenced(&pool.view));
    let (meta, body) = message(20);
    let error = east0
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("fenced");
    refused(error, "fenced");

    // Not fenced as far as the published flag goes, but its deadline has passed.
    west0.standing.send_replace(Standing {
        until: Some(Instant::now() - Duration::from_millis(1)),
        ..standing(&pool.view)
    });
    let (meta, body) = message(21);
    let error = east0
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("lapsed");
    refused(error, "fenced");

    let rejoined = pool
        .view
        .remove(std::slice::from_ref(&west0.holder.node))
        .and_then(|v| {
            let address = pool.view.members[&west0.holder.node].address.clone();
            v.join(&west0.holder, "west", &address)
        })
        .expect("removed and let in again");
    west0.standing.send_replace(standing(&rejoined));
    let (meta, body) = message(22);
    let error = east0
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("stale owner view");
    refused(error, "not an eligible holder");
    kept_nowhere(&pool, &meta).await;

    // Once the owner reads the view too, the copy is written at the new epoch and counts.
    east0.standing.send_replace(standing(&rejoined));
    let (meta, body) = message(23);
    east0
        .replicated
        .store(meta.clone(), body)
        .await
        .expect("stored");
    let (theirs, _) = held(west0, &meta).await.expect("west holds it");
    let copy = theirs.ownership.copy.expect("record");
    assert_eq!(copy.epoch, rejoined.epoch);
    assert_eq!(rejoined.copies(&copy), 2);

    // Draining, west-0 takes no new copy, even from an owner that does not know yet:
    // once its drain is done, no copy may come to need it again.
    let leaving = rejoined
        .mark_leaving(&west0.holder, true)
        .expect("a member");
    west0.standing.send_replace(standing(&leaving));
    let (meta, body) = message(24);
    let error = east0
        .replicated
        .store(meta.clone(), body)
        .await
        .expect_err("west-0 is leaving");
    refused(error, "draining");
    kept_nowhere(&pool, &meta).await;
}

/// west-0 was removed and let in again, so its copies are stale. It asks east-0, a
/// holder that never left, about each: a message east-0 still has stays, one east-0 is
/// done with goes, and once east-0 has left too, nobody can vouch and the copy stays,
/// counted as possibly the last one.
#[tokio::test]
async fn stale_copies_go_once_a_holder_that_never_left_is_done_with_them() {
    let pool = pool(2, 2).await;
    let (east0, west0) = (&pool.nodes[0], &pool.nodes[2]);
    let (done_meta, body) = message(30);
    east0
        .replicated
        .store(done_meta.clone(), body)
        .await
        .expect("stored");
    let (alive_meta, body) = message(31);
    east0
        .replicated
        .store(alive_meta.clone(), body)
        .await
        .expect("stored");

    let address = pool.view.members[&west0.holder.node].address.clone();
    let rejoined = pool
        .view
        .remove(std::slice::from_ref(&west0.holder.node))
        .and_then(|v| v.join(&west0.holder, "west", &address))
        .expect("removed and let in again");
    for node in &pool.nodes {
        node.standing.send_replace(standing(&rejoined));
    }
    // east-0 delivered one of them; the removal did not reach west-0 (it had left).
    east0
        .spool
        .remove(done_meta.id)
        .await
        .expect("removed at east-0");

    let (queue, _announced) = tokio::sync::mpsc::unbounded_channel();
    let done = pass(west0, &rejoined, takeover::Look::default(), &queue).await;
    assert_eq!(
        (done.stale_dropped, done.stale, done.orphaned),
        (1, 1, 0),
        "{done:?}"
    );
    assert!(held(west0, &done_meta).await.is_none());
    assert!(held(west0, &alive_meta).await.is_some());

    // east-0 leaves as well: nobody alive can say the message is done.
    let alone = rejoined
        .remove(std::slice::from_ref(&east0.holder.node))
        .expect("member");
    west0.standing.send_replace(standing(&alone));
    let done = pass(west0, &alone, takeover::Look::default(), &queue).await;
    assert_eq!(
        (done.stale_dropped, done.stale, done.orphaned),
        (0, 1, 1),
        "{done:?}"
    );
    assert!(
        held(west0, &alive_meta).await.is_some(),
        "possibly the last copy"
    );
}

/// east-0 delivered a message but its removal never reached west-0 (it was restarting,
/// the connection broke). When west-0 asks, east-0 says it no longer has the message
/// and west-0 drops its copy; a message east-0 still has, and one too young to ask
/// about, stay. A node answers "not here" only as the incarnation it is asked about: a
/// disk that came back empty cannot say what the old one held.
#[tokio::test]
async fn a_held_copy_goes_once_its_owner_no_longer_has_the_message() {
    let pool = pool(2, 2).await;
    let (east0, west0) = (&pool.nodes[0], &pool.nodes[2]);
    let old = |n: usize| {
        let (mut meta, body) = message(n);
        meta.received_at -= 10 * 60 * 1000;
        (meta, body)
    };
    let (delivered, delivered_body) = old(40);
    let (alive, alive_body) = old(41);
    let (young, young_body) = message(42);
    for (meta, body) in [
        (&delivered, delivered_body),
        (&alive, alive_body),
        (&young, young_body),
    ] {
        east0
            .replicated
            .store(meta.clone(), body)
            .await
            .expect("stored");
        committed(west0, meta).await;
    }
    // Removed at east-0 only: the removal did not reach west-0.
    for meta in [&delivered, &young] {
        east0
            .spool
            .remove(meta.id)
            .await
            .expect("removed at east-0");
    }

    let address = pool.view.members[&east0.holder.node].address.clone();
    let peers = west0_peers(&pool);
    let empty_disk = Holder {
        node: east0.holder.node.clone(),
        incarnation: Incarnation::new(),
    };
    let asked = peers
        .holds(&empty_disk, &address, delivered.id, Duration::from_secs(3))
        .await;
    assert!(
        matches!(&asked, Err(PeerError::Refused { reason, .. }) if reason.contains("incarnation")),
        "{asked:?}"
    );
    let asked = peers
        .holds(
            &east0.holder,
            &address,
            delivered.id,
            Duration::from_secs(3),
        )
        .await;
    assert!(matches!(asked, Ok(false)), "{asked:?}");

    let (queue, _announced) = tokio::sync::mpsc::unbounded_channel();
    let not_asked = pass(west0, &pool.view, takeover::Look::default(), &queue).await;
    assert_eq!(not_asked.leftovers_dropped, 0, "{not_asked:?}");
    let done = pass(
        west0,
        &pool.view,
        takeover::Look {
            announce_all: false,
            ask_owners: true,
        },
        &queue,
    )
    .await;
    assert_eq!(done.leftovers_dropped, 1, "{done:?}");
    assert!(held(west0, &delivered).await.is_none(), "the leftover went");
    assert!(held(west0, &alive).await.is_some(), "east-0 still has it");
    assert!(
        held(west0, &young).await.is_some(),
        "too young to ask about"
    );
}

/// One takeover pass on `node` under `view`, counted in metrics nobody reads.
async fn pass(
    node: &TestNode,
    view: &View,
    look: takeover::Look,
    queue: &tokio::sync::mpsc::UnboundedSender<smtp_node::spool::MessageId>,
) -> takeover::Pass {
    takeover::pass(&node.replicated, view, look, queue, &Default::default())
        .await
        .expect("pass")
}

/// west-0's side of the peer connections, with its own certificate.
fn west0_peers(pool: &Pool) -> Arc<Peers> {
    let west0 = &pool.nodes[2];
    let name = west0.holder.node.0.as_str();
    let tls = PeerTls::load(
        &PeerTlsFiles {
            ca_file: pool.pki.ca_file(),
            cert_dir: pool
                .pki
                .issue(name)
                .cert
                .parent()
                .expect("dir")
                .to_path_buf(),
        },
        name,
    )
    .expect("tls");
    Peers::new(west0.holder.clone(), Some(tls))
}

#[tokio::test]
async fn concurrent_messages_all_reach_their_replicas() {
    let pool = Arc::new(pool(2, 1).await);
    let mut tasks = Vec::new();
    for i in 0..300 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (meta, body) = message(100 + i);
            let owner = &pool.nodes[i % 3];
            owner
                .replicated
                .store(meta.clone(), body)
                .await
                .map(|()| (i % 3, meta))
        }));
    }
    let mut per_node = [0usize; 3];
    for task in tasks {
        let (owner, meta) = task.await.expect("task").expect("stored");
        let copy = held(&pool.nodes[owner], &meta)
            .await
            .expect("owner copy")
            .0
            .ownership
            .copy
            .expect("record");
        assert_eq!(copy.holders.len(), 2);
        for h in &copy.holders {
            let n = pool
                .nodes
                .iter()
                .position(|x| &x.holder == h)
                .expect("a pool node");
            per_node[n] += 1;
            committed(&pool.nodes[n], &meta).await;
        }
    }
    assert_eq!(per_node.iter().sum::<usize>(), 600);
    assert!(
        per_node.iter().all(|&c| c > 100),
        "copies spread: {per_node:?}"
    );
}

#[tokio::test]
async fn outcomes_and_removal_reach_the_replica() {
    let pool = pool(2, 2).await;
    let owner = &pool.nodes[0];
    let (meta, body) = message(5);
    owner
        .replicated
        .store(meta.clone(), body)
        .await
        .expect("stored");
    let delivered = RecipientState::Delivered {
        at: 1,
        reply: smtp_node::spool::Reply {
            code: 250,
            enhanced: Some("2.0.0".into()),
            text: "ok".into(),
        },
    };
    owner
        .replicated
        .update(
            meta.id,
            vec![RecipientUpdate {
                index: 0,
                state: delivered.clone(),
                attempt: None,
            }],
        )
        .await
        .expect("update");
    let (remote, _) = held(&pool.nodes[2], &meta).await.expect("held");
    assert_eq!(remote.envelope.recipients[0].state, delivered);
    owner.replicated.remove(meta.id).await.expect("remove");
    assert!(held(owner, &meta).await.is_none());
    // The replica hears of it with the next batch of removals, milliseconds later.
    let started = Instant::now();
    while held(&pool.nodes[2], &meta).await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not removed on the replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_holder_refuses_an_older_record_and_a_copy_meant_for_another_disk() {
    let pool = pool(2, 2).await;
    let owner = &pool.nodes[0];
    let replica = &pool.nodes[2];
    let (meta, body) = message(6);
    owner
        .replicated
        .store(meta.clone(), body.clone())
        .await
        .expect("stored");
    let address = pool.view.members[&replica.holder.node].address.clone();
    let peers = Peers::new(owner.holder.clone(), None);
    // Without mTLS the replica does not even answer.
    let plain = peers
        .call(
            &replica.holder.node,
            &address,
            Request::Remove { ids: vec![meta.id] },
            Duration::from_secs(3),
        )
        .await;
    assert!(plain.is_err(), "a peer without a certificate was served");
    assert!(held(replica, &meta).await.is_some());

    let tls_peers = Peers::new(
        owner.holder.clone(),
        Some(
            PeerTls::load(
                &PeerTlsFiles {
                    ca_file: pool.pki.ca_file(),
                    cert_dir: pool
                        .pki
                        .issue("pool-east-0")
                        .cert
                        .parent()
                        .expect("dir")
                        .to_path_buf(),
                },
                "pool-east-0",
            )
            .expect("tls"),
        ),
    );
    // A record from a newer view (a takeover the replica has not read about yet) is
    // taken; the one it replaced is then refused as older.
    let record = |epoch| Copy {
        holders: vec![owner.holder.clone(), replica.holder.clone()],
        epoch,
        committed: true,
    };
    tls_peers
        .call(
            &replica.holder.node,
            &address,
            Request::Update {
                id: meta.id,
                updates: vec![],
                copy: Some(record(pool.view.epoch + 1)),
            },
            Duration::from_secs(3),
        )
        .await
        .expect("a newer record is taken");
    let older = record(pool.view.epoch);
    let refused = tls_peers
        .call(
            &replica.holder.node,
            &address,
            Request::Update {
                id: meta.id,
                updates: vec![],
                copy: Some(older),
            },
            Duration::from_secs(3),
        )
        .await;
    assert!(
        matches!(&refused, Err(PeerError::Refused { reason, .. }) if reason.contains("stale")),
        "{refused:?}"
    );

    let (mut other, other_body) = message(7);
    other.ownership.copy = Some(Copy {
        holders: vec![
            owner.holder.clone(),
            Holder {
                node: replica.holder.node.clone(),
                incarnation: Incarnation::new(),
            },
        ],
        epoch: pool.view.epoch,
        committed: false,
    });
    let refused = tls_peers
        .call(
            &replica.holder.node,
            &address,
            Request::Prepare {
                meta: Box::new(other.clone()),
                body: other_body,
            },
            Duration::from_secs(3),
        )
        .await;
    assert!(
        matches!(&refused, Err(PeerError::Refused { reason, .. }) if reason.contains("incarnation")),
        "{refused:?}"
    );
    assert!(held(replica, &other).await.is_none());
}

#[tokio::test]
async fn one_copy_needs_no_peer() {
    let pool = pool(1, 1).await;
    pool.nodes[1].stop.cancel();
    pool.nodes[2].stop.cancel();
    let (meta, body) = message(8);
    pool.nodes[0]
        .replicated
        .store(meta.clone(), body)
        .await
        .expect("stored locally");
    assert!(held(&pool.nodes[0], &meta).await.is_some());
}

/// A member's standing as its arbiter publishes it after a renewal.
fn standing(view: &View) -> Standing {
    Standing {
        view: Some(view.clone()),
        fenced: false,
        until: Some(Instant::now() + Duration::from_secs(3600)),
    }
}

fn fenced(view: &View) -> Standing {
    Standing {
        fenced: true,
        ..standing(view)
    }
}

#[tokio::test]
async fn the_survivor_takes_over_and_restores_the_factor() {
    let pool = pool(2, 2).await;
    let (east0, east1, west0) = (&pool.nodes[0], &pool.nodes[1], &pool.nodes[2]);
    let (meta, body) = message(9);
    east0
        .replicated
        .store(meta.clone(), body.clone())
        .await
        .expect("stored");

    // east-0 is gone: its Lease expired and the arbiter removed it.
    east0.stop.cancel();
    let after = pool
        .view
        .remove(std::slice::from_ref(&east0.holder.node))
        .expect("member");
    for node in [east1, west0] {
        node.standing.send_replace(standing(&after));
    }
    let (queue, mut announced) = tokio::sync::mpsc::unbounded_channel();
    let done = pass(west0, &after, takeover::Look::default(), &queue).await;
    assert_eq!(done.taken_over, 1, "{done:?}");
    assert_eq!(announced.try_recv().ok(), Some(meta.id));

    let (mine, _) = held(west0, &meta).await.expect("west keeps it");
    let copy = mine.ownership.copy.clone().expect("record");
    assert_eq!(
        copy.epoch, after.epoch,
        "the takeover is written at the new epoch"
    );
    assert_eq!(
        copy.holders,
        vec![west0.holder.clone(), east1.holder.clone()]
    );
    assert_eq!(after.duty(&west0.holder, &copy), Duty::Deliver);
    let (theirs, their_body) = held(east1, &meta).await.expect("a new copy in east");
    assert_eq!(their_body, body);
    assert_eq!(theirs.ownership.copy, Some(copy.clone()));

    let west_authority = Authority::Replicated {
        me: west0.holder.clone(),
        standing: west0.standing.subscribe(),
        quiet: Default::default(),
    };
    assert!(west_authority.may_deliver(&mine));
    // The old owner, were it still running: fenced, it delivers nothing; once it reads
    // the new view, its copy is stale.
    let old = Authority::Replicated {
        me: east0.holder.clone(),
        standing: east0.standing.subscribe(),
        quiet: Default::default(),
    };
    let (old_copy, _) = held(east0, &meta).await.expect("its disk still has it");
    east0.standing.send_replace(fenced(&pool.view));
    assert!(!old.may_deliver(&old_copy));
    east0.standing.send_replace(standing(&after));
    assert!(!old.may_deliver(&old_copy));

    // Nothing more to do on either survivor.
    let again = pass(west0, &after, takeover::Look::default(), &queue).await;
    assert_eq!(again, takeover::Pass::default());
    let at_east = pass(east1, &after, takeover::Look::default(), &queue).await;
    assert_eq!(at_east, takeover::Pass::default());
}

/// A pending copy (its commit had not arrived) is held for its writer while the writer
/// is in the view, and taken over once the writer has left: the writer may have
/// answered 250 before it went.
#[tokio::test]
async fn a_pending_copy_whose_writer_left_is_taken_over() {
    let pool = pool(2, 2).await;
    let (east0, west0) = (&pool.nodes[0], &pool.nodes[2]);
    let (mut meta, body) = message(10);
    meta.ownership.copy = Some(Copy {
        holders: vec![east0.holder.clone(), west0.holder.clone()],
        epoch: pool.view.epoch,
        committed: false,
    });
    west0
        .spool
        .store(meta.clone(), body)
        .await
        .expect("prepared copy");
    let (queue, mut announced) = tokio::sync::mpsc::unbounded_channel();
    let held_while_writer_lives = pass(
        west0,
        &pool.view,
        takeover::Look {
            announce_all: true,
            ask_owners: false,
        },
        &queue,
    )
    .await;
    assert_eq!(
        (
            held_while_writer_lives.taken_over,
            held_while_writer_lives.discarded
        ),
        (0, 0)
    );
    assert!(announced.try_recv().is_err(), "not west-0's to deliver");

    let after = pool
        .view
        .remove(std::slice::from_ref(&east0.holder.node))
        .expect("member");
    west0.standing.send_replace(standing(&after));
    let done = pass(west0, &after, takeover::Look::default(), &queue).await;
    assert_eq!((done.taken_over, done.discarded), (1, 0));
    assert_eq!(
        announced.try_recv().ok(),
        Some(meta.id),
        "handed to delivery"
    );
    let (mine, _) = held(west0, &meta).await.expect("west-0 keeps it");
    let copy = mine.ownership.copy.expect("record");
    assert!(copy.committed);
    assert_eq!(copy.holders[0], west0.holder);
    assert_eq!(copy.epoch, after.epoch);
}
