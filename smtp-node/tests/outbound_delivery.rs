//! Delivery through MX records against real peers: Knot as the authoritative DNS server,
//! Postfix's smtp-sink and aiosmtpd as destinations.
//!
//! Every destination listens on the same free port on its own loopback address
//! (127.0.0.2, .3, …), since MX delivery uses one port for all hosts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::knot::{KnotServer, Zone};
use common::memory_spool::MemorySpool;
use common::peers::{PyOptions, PySink, SmtpSink};
use common::{Node, WAIT, delivery_config, free_port, ip, message, meta, states, wait_for};
use mail_parser::{MessageParser, MimeHeaders};
use smtp_node::dkim::DkimKeyring;
use smtp_node::spool::{Notify, RecipientState, Ret, Spool};

const MX_HOST: &str = "127.0.0.2";
const A_HOST: &str = "127.0.0.3";
const SENDER_HOST: &str = "127.0.0.4";
const PY_HOST: &str = "127.0.0.5";

fn zones() -> Vec<Zone> {
    vec![
        Zone::new("mx.test")
            .record("@ MX 10 mail.mx.test.")
            .record(format!("mail A {MX_HOST}")),
        // No MX: the domain's own address is the implicit MX.
        Zone::new("amx.test").record(format!("@ A {A_HOST}")),
        Zone::new("nullmx.test").record("@ MX 0 ."),
        Zone::new("sender.test")
            .record("@ MX 10 mx.sender.test.")
            .record(format!("mx A {SENDER_HOST}")),
        Zone::new("py.test")
            .record("@ MX 10 mx.py.test.")
            .record(format!("mx A {PY_HOST}")),
    ]
}

fn port_for(hosts: &[&str]) -> u16 {
    let ips: Vec<_> = hosts.iter().map(|h| ip(h)).collect();
    free_port(&ips, false)
}

/// Parses a bounce captured by smtp-sink (LF line ends) into its delivery-status text.
/// The DNS server, an aiosmtpd sink as the MX of `py.test`, and a node that delivers to
/// it with the default delivery settings.
fn py_node(options: PyOptions) -> (KnotServer, PySink, Node) {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST]);
    let sink = PySink::start(ip(PY_HOST), port, options);
    let node = Node::start_plain(delivery_config(&dns, port));
    (dns, sink, node)
}

fn dsn_status(data: &str) -> (String, String) {
    let crlf = data.replace('\n', "\r\n");
    let parsed = MessageParser::new()
        .parse(crlf.as_bytes())
        .expect("DSN parses");
    let ct = parsed.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let status = parsed
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("delivery-status"))
        })
        .expect("delivery-status part");
    let subject = parsed.subject().unwrap_or_default().to_string();
    (
        subject,
        String::from_utf8_lossy(status.contents()).replace("\r\n ", " "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_through_mx_records_to_smtp_sink() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[MX_HOST]);
    let sink = SmtpSink::start(ip(MX_HOST), port);
    let node = Node::start_plain(delivery_config(&dns, port));

    let body = message(
        "alice@sender.test",
        "bob@mx.test",
        "mx-delivery",
        "Hello Bob.\n.A line starting with a dot.\n..and two.\n",
    );
    let mut queued = meta(
        "alice@sender.test",
        &["bob@mx.test", "Carol@MX.test"],
        body.len(),
    );
    // DSN parameters go to a next hop that offers DSN (smtp-sink does).
    queued.envelope.ret = Ret::Headers;
    queued.envelope.env_id = Some("env-42".into());
    queued.envelope.recipients[0].notify = Notify {
        success: true,
        failure: true,
        ..Notify::default()
    };
    queued.envelope.recipients[0].orcpt = Some("rfc822;bob@mx.test".into());
    let id = node.submit(queued, body).await;

    let received = wait_for("smtp-sink to capture the message", WAIT, || {
        sink.messages().into_iter().next()
    })
    .await;
    assert_eq!(received.mail_from, "alice@sender.test");
    assert_eq!(received.client_proto, "ESMTP");
    assert_eq!(
        received.rcpt_to,
        ["bob@mx.test", "Carol@MX.test"],
        "one transaction, both recipients"
    );
    assert!(
        received.mail_args.ends_with("RET=HDRS ENVID=env-42"),
        "{}",
        received.mail_args
    );
    assert_eq!(
        received.rcpt_args,
        [
            "<bob@mx.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@mx.test",
            "<Carol@MX.test>"
        ]
    );
    assert!(
        received.data.contains("Subject: mx-delivery"),
        "{}",
        received.data
    );

    let done = wait_for("the message to be removed", WAIT, || {
        node.spool.removed_meta(id)
    })
    .await;
    assert_eq!(
        states(&done),
        ["bob@mx.test: delivered", "Carol@MX.test: delivered"]
    );
    let attempt = &done.envelope.recipients[0].attempts[0];
    assert_eq!(
        attempt.host.as_deref(),
        Some(&*format!("mail.mx.test[{MX_HOST}]"))
    );
    assert_eq!(attempt.reply.code, 250);
    assert_eq!(node.spool.len(), 0);
    assert_eq!(
        node.metric("outbound_recipients_total{result=\"delivered\",route=\"mx\"}"),
        2.0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_stuffing_survives_the_wire() {
    let (_dns, sink, node) = py_node(PyOptions::default());
    let body = message(
        "alice@sender.test",
        "dot@py.test",
        "dots",
        "first\n.\n.leading\n..double\nlast",
    );
    node.submit(
        meta("alice@sender.test", &["dot@py.test"], body.len()),
        body.clone(),
    )
    .await;
    let received = wait_for("aiosmtpd to receive", WAIT, || {
        sink.messages().into_iter().next()
    })
    .await;
    assert_eq!(
        received.bytes(),
        body,
        "byte-identical after dot-stuffing and unstuffing"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_address_record_without_mx() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[A_HOST]);
    let sink = SmtpSink::start(ip(A_HOST), port);
    let node = Node::start_plain(delivery_config(&dns, port));
    let body = message("alice@sender.test", "dave@amx.test", "implicit-mx", "hi");
    let id = node
        .submit(
            meta("alice@sender.test", &["dave@amx.test"], body.len()),
            body,
        )
        .await;
    let received = wait_for("the A-record host to receive", WAIT, || {
        sink.messages().into_iter().next()
    })
    .await;
    assert_eq!(received.rcpt_to, ["dave@amx.test"]);
    let done = wait_for("removal", WAIT, || node.spool.removed_meta(id)).await;
    assert_eq!(
        done.envelope.recipients[0].attempts[0].host.as_deref(),
        Some(&*format!("amx.test[{A_HOST}]"))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_nxdomain_bounce_to_the_sender() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[SENDER_HOST]);
    let sender_sink = SmtpSink::start(ip(SENDER_HOST), port);
    let node = Node::start_plain(delivery_config(&dns, port));

    let body = message(
        "alice@sender.test",
        "x@nullmx.test",
        "to-null-mx",
        "nobody home",
    );
    let null_id = node
        .submit(
            meta("alice@sender.test", &["x@nullmx.test"], body.len()),
            body,
        )
        .await;
    let body = message(
        "alice@sender.test",
        "y@nosuch.mx.test",
        "to-nxdomain",
        "no such domain",
    );
    let nx_id = node
        .submit(
            meta("alice@sender.test", &["y@nosuch.mx.test"], body.len()),
            body,
        )
        .await;

    let bounces = wait_for("two bounces at the sender's MX", WAIT, || {
        let m = sender_sink.messages();
        (m.len() >= 2).then_some(m)
    })
    .await;
    for bounce in &bounces {
        assert_eq!(bounce.mail_from, "", "bounces come from the null sender");
        assert_eq!(bounce.rcpt_to, ["alice@sender.test"]);
    }
    let null_bounce = bounces
        .iter()
        .find(|b| b.data.contains("x@nullmx.test"))
        .expect("null MX bounce");
    let (subject, status) = dsn_status(&null_bounce.data);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    assert!(
        status.contains("Final-Recipient: rfc822; x@nullmx.test"),
        "{status}"
    );
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 5.1.10"), "{status}");
    assert!(
        null_bounce.data.contains("Subject: to-null-mx"),
        "original attached"
    );

    let nx_bounce = bounces
        .iter()
        .find(|b| b.data.contains("y@nosuch.mx.test"))
        .expect("NXDOMAIN bounce");
    let (_, status) = dsn_status(&nx_bounce.data);
    assert!(status.contains("Status: 5.1.2"), "{status}");

    for id in [null_id, nx_id] {
        let done = wait_for("removal", WAIT, || node.spool.removed_meta(id)).await;
        assert!(
            states(&done)[0].contains("failed 5.1."),
            "{:?}",
            states(&done)
        );
    }
    assert_eq!(node.metric("outbound_dsn_total{result=\"queued\"}"), 2.0);
    // The bounces themselves were delivered and removed too.
    wait_for("bounces removed", WAIT, || {
        (node.spool.len() == 0).then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refusal_gives_per_recipient_outcomes_and_one_dsn() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST, SENDER_HOST]);
    let sink = PySink::start(
        ip(PY_HOST),
        port,
        PyOptions {
            refuse: vec![("bad@py.test".into(), "550 5.1.1 no such user".into(), None)],
            ..PyOptions::default()
        },
    );
    let sender_sink = SmtpSink::start(ip(SENDER_HOST), port);
    let node = Node::start_plain(delivery_config(&dns, port));
    let body = message(
        "alice@sender.test",
        "good@py.test",
        "partial",
        "some get it",
    );
    let id = node
        .submit(
            meta(
                "alice@sender.test",
                &["good@py.test", "bad@py.test", "also-good@py.test"],
                body.len(),
            ),
            body,
        )
        .await;

    let done = wait_for("removal", WAIT, || node.spool.removed_meta(id)).await;
    assert_eq!(
        states(&done),
        [
            "good@py.test: delivered",
            "bad@py.test: failed 5.1.1",
            "also-good@py.test: delivered"
        ]
    );
    let received = sink.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_tos, ["good@py.test", "also-good@py.test"]);

    let bounce = wait_for("the bounce", WAIT, || {
        sender_sink.messages().into_iter().next()
    })
    .await;
    let (_, status) = dsn_status(&bounce.data);
    assert!(
        status.contains("Final-Recipient: rfc822; bad@py.test"),
        "{status}"
    );
    assert!(
        !status.contains("good@py.test"),
        "only the refused recipient: {status}"
    );
    assert!(status.contains("Status: 5.1.1"), "{status}");
    assert!(status.contains("Remote-MTA: dns; mx.py.test"), "{status}");
    assert!(
        status.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sender_sink.messages().len(), 1, "exactly one DSN");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failure_is_deferred_then_delivered_on_retry() {
    let (_dns, sink, node) = py_node(PyOptions {
        refuse: vec![(
            "later@py.test".into(),
            "451 4.3.0 try again later".into(),
            Some(1),
        )],
        ..PyOptions::default()
    });
    let body = message(
        "alice@sender.test",
        "later@py.test",
        "retry",
        "second time lucky",
    );
    let id = node
        .submit(
            meta("alice@sender.test", &["later@py.test"], body.len()),
            body,
        )
        .await;

    let deferred = wait_for("the first attempt to defer", WAIT, || {
        node.spool.current(id).filter(|m| {
            matches!(
                m.envelope.recipients[0].state,
                RecipientState::Deferred { .. }
            )
        })
    })
    .await;
    let first = &deferred.envelope.recipients[0].attempts[0];
    assert_eq!(
        (first.reply.code, first.reply.enhanced.as_deref()),
        (451, Some("4.3.0"))
    );
    let RecipientState::Deferred { until } = deferred.envelope.recipients[0].state else {
        unreachable!()
    };
    assert_eq!(
        until - first.at,
        1_000,
        "first retry interval of the schedule"
    );
    assert!(sink.messages().is_empty());

    let done = wait_for("delivery on retry", WAIT, || node.spool.removed_meta(id)).await;
    assert_eq!(states(&done), ["later@py.test: delivered"]);
    assert_eq!(done.envelope.recipients[0].attempts.len(), 2);
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        node.metric("outbound_recipients_total{result=\"deferred\",route=\"mx\"}"),
        1.0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounces_with_4_4_7() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST, SENDER_HOST]);
    let _sink = PySink::start(
        ip(PY_HOST),
        port,
        PyOptions {
            refuse: vec![(
                "stuck@py.test".into(),
                "452 4.2.2 mailbox full".into(),
                None,
            )],
            ..PyOptions::default()
        },
    );
    let sender_sink = SmtpSink::start(ip(SENDER_HOST), port);
    let mut config = delivery_config(&dns, port);
    config.max_age = Duration::from_secs(3);
    let node = Node::start_plain(config);
    let body = message(
        "alice@sender.test",
        "stuck@py.test",
        "expiring",
        "never arrives",
    );
    let submitted = std::time::Instant::now();
    let id = node
        .submit(
            meta("alice@sender.test", &["stuck@py.test"], body.len()),
            body,
        )
        .await;

    let done = wait_for("expiry", WAIT, || node.spool.removed_meta(id)).await;
    assert!(
        submitted.elapsed() >= Duration::from_secs(3),
        "not before maxAge"
    );
    assert_eq!(states(&done), ["stuck@py.test: failed 4.4.7"]);
    let attempts = &done.envelope.recipients[0].attempts;
    assert!(
        attempts.len() >= 3,
        "retried every second until expiry: {}",
        attempts.len()
    );

    let bounce = wait_for("the expiry bounce", WAIT, || {
        sender_sink.messages().into_iter().next()
    })
    .await;
    let (_, status) = dsn_status(&bounce.data);
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 4.4.7"), "{status}");
    assert!(
        status.contains("Diagnostic-Code: smtp; 452 4.2.2 mailbox full"),
        "{status}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_is_never_bounced() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST, SENDER_HOST]);
    let _sink = PySink::start(
        ip(PY_HOST),
        port,
        PyOptions {
            refuse: vec![("gone@py.test".into(), "550 5.1.1 gone".into(), None)],
            ..PyOptions::default()
        },
    );
    let sender_sink = SmtpSink::start(ip(SENDER_HOST), port);
    let node = Node::start_plain(delivery_config(&dns, port));
    let body = message("", "gone@py.test", "a-bounce", "this is a bounce");
    let id = node
        .submit(meta("", &["gone@py.test"], body.len()), body)
        .await;
    let done = wait_for("removal", WAIT, || node.spool.removed_meta(id)).await;
    assert_eq!(states(&done), ["gone@py.test: failed 5.1.1"]);
    assert_eq!(
        node.metric("outbound_dsn_total{result=\"suppressed_null_sender\"}"),
        1.0
    );
    assert_eq!(node.spool.len(), 0, "no bounce queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sender_sink.messages().is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuses_one_connection_for_several_messages() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST]);
    let sink = PySink::start(ip(PY_HOST), port, PyOptions::default());
    let mut config = delivery_config(&dns, port);
    config.concurrency_per_destination = 1;
    let node = Node::start_plain(config);
    for n in 0..5 {
        let body = message(
            "alice@sender.test",
            "many@py.test",
            &format!("reuse-{n}"),
            "x",
        );
        node.submit(
            meta("alice@sender.test", &["many@py.test"], body.len()),
            body,
        )
        .await;
    }
    let received = wait_for("five messages", WAIT, || {
        let m = sink.messages();
        (m.len() == 5).then_some(m)
    })
    .await;
    let connections: std::collections::BTreeSet<u64> =
        received.iter().map(|m| m.connection).collect();
    assert_eq!(
        connections.len(),
        1,
        "all over one connection: {connections:?}"
    );
    wait_for("all removed", WAIT, || {
        (node.spool.len() == 0).then_some(())
    })
    .await;
    assert_eq!(
        node.metric("outbound_transactions_total{connection=\"new\"}"),
        1.0
    );
    assert_eq!(
        node.metric("outbound_transactions_total{connection=\"reused\"}"),
        4.0
    );
    node.stop().await;
}

/// Submits one message to `to` and waits until the sink holds `count` messages and the
/// spool is empty again; returns the connection the last one came over.
async fn deliver_one(node: &Node, sink: &PySink, to: &str, subject: &str, count: usize) -> u64 {
    let body = message("alice@sender.test", to, subject, "x");
    node.submit(meta("alice@sender.test", &[to], body.len()), body)
        .await;
    let received = wait_for(subject, WAIT, || {
        let m = sink.messages();
        (m.len() == count).then_some(m)
    })
    .await;
    wait_for("the spool to empty", WAIT, || {
        (node.spool.len() == 0).then_some(())
    })
    .await;
    received.last().map(|m| m.connection).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_arrives_soon_after_the_last_one_takes_its_open_connection() {
    let (_dns, sink, node) = py_node(PyOptions::default());
    let first = deliver_one(&node, &sink, "steady@py.test", "first", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = deliver_one(&node, &sink, "steady@py.test", "second", 2).await;
    assert_eq!(
        first, second,
        "the idle connection carried the second message"
    );
    assert_eq!(
        node.metric("outbound_transactions_total{connection=\"reused\"}"),
        1.0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_server_closed_is_replaced_without_delaying_the_message() {
    let (_dns, sink, node) = py_node(PyOptions {
        idle_timeout: Some(Duration::from_millis(200)),
        ..PyOptions::default()
    });
    let first = deliver_one(&node, &sink, "later@py.test", "first", 1).await;
    // The server says 421 and closes while the node still keeps the connection.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let second = deliver_one(&node, &sink, "later@py.test", "second", 2).await;
    assert_ne!(first, second, "a new connection");
    assert_eq!(
        node.metric("outbound_recipients_total{result=\"deferred\",route=\"mx\"}"),
        0.0,
        "the dead connection cost the message no attempt"
    );
    assert_eq!(
        node.metric("outbound_transactions_total{connection=\"new\"}"),
        2.0
    );
    assert_eq!(
        node.metric("outbound_transactions_total{connection=\"reused\"}"),
        0.0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_queued_mail_from_the_spool_at_start() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[MX_HOST]);
    let sink = SmtpSink::start(ip(MX_HOST), port);
    let spool = Arc::new(MemorySpool::default());

    // Acknowledged before a restart: one untouched, one deferred and due, one with a
    // recipient already delivered.
    let body = message("alice@sender.test", "a@mx.test", "recover-pending", "x");
    spool
        .store(
            meta("alice@sender.test", &["a@mx.test"], body.len()),
            body.into(),
        )
        .await
        .unwrap();
    let body = message("alice@sender.test", "b@mx.test", "recover-deferred", "x");
    let mut deferred = meta("alice@sender.test", &["b@mx.test"], body.len());
    deferred.envelope.recipients[0].state = RecipientState::Deferred { until: 0 };
    spool.store(deferred, body.into()).await.unwrap();
    let body = message("alice@sender.test", "c@mx.test", "recover-partial", "x");
    let mut partial = meta(
        "alice@sender.test",
        &["done@mx.test", "c@mx.test"],
        body.len(),
    );
    partial.envelope.recipients[0].state = RecipientState::Delivered {
        at: 1,
        reply: smtp_node::spool::Reply {
            code: 250,
            enhanced: None,
            text: "ok".into(),
        },
    };
    spool.store(partial, body.into()).await.unwrap();
    // Owned by another node: not ours to deliver.
    let body = message("alice@sender.test", "other@mx.test", "recover-foreign", "x");
    let mut foreign = meta("alice@sender.test", &["other@mx.test"], body.len());
    foreign.ownership.owner = smtp_node::spool::NodeId("node-9".into());
    let foreign_id = foreign.id;
    spool.store(foreign, body.into()).await.unwrap();

    let node = Node::start(
        delivery_config(&dns, port),
        DkimKeyring::default(),
        spool.clone(),
    );
    let received = wait_for("three recovered messages", WAIT, || {
        let m = sink.messages();
        (m.len() >= 3).then_some(m)
    })
    .await;
    let mut rcpts: Vec<String> = received.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["a@mx.test", "b@mx.test", "c@mx.test"],
        "already-delivered recipients are not sent again"
    );
    wait_for("only the foreign message left", WAIT, || {
        (spool.len() == 1).then_some(())
    })
    .await;
    assert!(spool.current(foreign_id).is_some());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_cuts_off_a_slow_transaction_and_keeps_the_recipient_pending() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST]);
    let sink = PySink::start(
        ip(PY_HOST),
        port,
        PyOptions {
            data_delay: Some(Duration::from_secs(20)),
            ..PyOptions::default()
        },
    );
    let mut config = delivery_config(&dns, port);
    config.shutdown_grace = Duration::from_secs(1);
    config.data_timeout = Duration::from_secs(60);
    let node = Node::start_plain(config);
    let spool = node.spool.clone();
    let body = message("alice@sender.test", "slow@py.test", "slow", "x");
    let id = node
        .submit(
            meta("alice@sender.test", &["slow@py.test"], body.len()),
            body,
        )
        .await;
    // Give the transaction time to reach the end of DATA.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = node.stop().await;
    assert!(
        took < Duration::from_secs(5),
        "stopped within the grace period: {took:?}"
    );
    let meta = spool.current(id).expect("still queued");
    assert_eq!(states(&meta), ["slow@py.test: pending"]);
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_helo_when_ehlo_is_refused() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[MX_HOST]);
    // -e: smtp-sink does not speak ESMTP.
    let sink = SmtpSink::start_with(ip(MX_HOST), port, &["-e"]);
    let node = Node::start_plain(delivery_config(&dns, port));
    let body = message("alice@sender.test", "old@mx.test", "helo", "plain old SMTP");
    let mut queued = meta("alice@sender.test", &["old@mx.test"], body.len());
    queued.envelope.recipients[0].notify.never = true;
    let id = node.submit(queued, body).await;
    let received = wait_for("delivery over HELO", WAIT, || {
        sink.messages().into_iter().next()
    })
    .await;
    assert_eq!(received.client_proto, "SMTP", "HELO, not EHLO");
    assert_eq!(
        received.rcpt_args,
        ["<old@mx.test>"],
        "no ESMTP parameters after HELO"
    );
    wait_for("removal", WAIT, || node.spool.removed_meta(id)).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_recipients_are_sent_again_in_the_same_connection() {
    let (_dns, sink, node) = py_node(PyOptions {
        refuse: vec![(
            "third@py.test".into(),
            "452 4.5.3 too many recipients".into(),
            Some(1),
        )],
        ..PyOptions::default()
    });
    let body = message("alice@sender.test", "first@py.test", "452", "x");
    let rcpts = ["first@py.test", "second@py.test", "third@py.test"];
    let id = node
        .submit(meta("alice@sender.test", &rcpts, body.len()), body)
        .await;
    let done = wait_for("removal", WAIT, || node.spool.removed_meta(id)).await;
    assert_eq!(
        states(&done),
        [
            "first@py.test: delivered",
            "second@py.test: delivered",
            "third@py.test: delivered"
        ]
    );
    assert_eq!(
        done.envelope.recipients[2].attempts.len(),
        1,
        "sent again at once, not deferred"
    );
    let received = sink.messages();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].rcpt_tos, ["first@py.test", "second@py.test"]);
    assert_eq!(received[1].rcpt_tos, ["third@py.test"]);
    assert_eq!(received[0].connection, received[1].connection);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_per_destination_bounds_the_connections() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST]);
    let sink = PySink::start(
        ip(PY_HOST),
        port,
        PyOptions {
            data_delay: Some(Duration::from_millis(200)),
            ..PyOptions::default()
        },
    );
    let mut config = delivery_config(&dns, port);
    config.concurrency_per_destination = 2;
    let node = Node::start_plain(config);
    for n in 0..6 {
        let body = message("alice@sender.test", "c@py.test", &format!("conc-{n}"), "x");
        node.submit(meta("alice@sender.test", &["c@py.test"], body.len()), body)
            .await;
    }
    let received = wait_for("six messages", WAIT, || {
        let m = sink.messages();
        (m.len() == 6).then_some(m)
    })
    .await;
    let connections: std::collections::BTreeSet<u64> =
        received.iter().map(|m| m.connection).collect();
    assert!(
        !connections.is_empty() && connections.len() <= 2,
        "at most two connections: {connections:?}"
    );
    wait_for("all removed", WAIT, || {
        (node.spool.len() == 0).then_some(())
    })
    .await;
    let reused = node.metric("outbound_transactions_total{connection=\"reused\"}");
    assert_eq!(reused as usize, 6 - connections.len());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_paces_a_destination() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[PY_HOST]);
    let sink = PySink::start(ip(PY_HOST), port, PyOptions::default());
    let mut config = delivery_config(&dns, port);
    // 60 per minute: a burst of 6, then one per second.
    config.rate_per_minute = Some(60);
    let node = Node::start_plain(config);
    let started = std::time::Instant::now();
    for n in 0..8 {
        let body = message("alice@sender.test", "r@py.test", &format!("rate-{n}"), "x");
        node.submit(meta("alice@sender.test", &["r@py.test"], body.len()), body)
            .await;
    }
    wait_for("all eight", WAIT, || {
        (sink.messages().len() == 8).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "the two messages after the burst wait a second each: {elapsed:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_a_running_transaction_finish() {
    let (_dns, sink, node) = py_node(PyOptions {
        data_delay: Some(Duration::from_secs(2)),
        ..PyOptions::default()
    });
    let spool = node.spool.clone();
    let body = message("alice@sender.test", "patient@py.test", "finish", "x");
    let id = node
        .submit(
            meta("alice@sender.test", &["patient@py.test"], body.len()),
            body,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    node.stop().await;
    let done = spool
        .removed_meta(id)
        .expect("delivered and removed before the stop returned");
    assert_eq!(states(&done), ["patient@py.test: delivered"]);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_failure_defers_instead_of_bouncing() {
    // Knot answers REFUSED for a zone it does not serve, like a broken delegation.
    let dns = KnotServer::start(zones());
    let node = Node::start_plain(delivery_config(&dns, 25));
    let body = message("alice@sender.test", "x@unserved.example", "dns-fail", "x");
    let id = node
        .submit(
            meta("alice@sender.test", &["x@unserved.example"], body.len()),
            body,
        )
        .await;
    let meta = wait_for("the attempt", WAIT, || {
        node.spool
            .current(id)
            .filter(|m| !m.envelope.recipients[0].attempts.is_empty())
    })
    .await;
    assert_eq!(states(&meta), ["x@unserved.example: deferred"]);
    let reply = &meta.envelope.recipients[0].attempts[0].reply;
    assert_eq!(
        (reply.code, reply.enhanced.as_deref()),
        (451, Some("4.4.3"))
    );
    assert_eq!(meta.envelope.recipients[0].attempts[0].host, None);
    assert_eq!(node.metric("outbound_dsn_total{result=\"queued\"}"), 0.0);
    node.stop().await;
}
