//! STARTTLS, verified TLS and smarthost delivery against aiosmtpd, with names served by
//! Knot and certificates from a test CA.

mod common;

use common::certs::Pki;
use common::knot::{KnotServer, Zone};
use common::peers::{PyOptions, PySink};
use common::{Node, WAIT, delivery_config, free_port, ip, message, meta, states, wait_for};
use smtp_node::outbound::{DeliveryConfig, SmarthostConfig, SmarthostTls};
use smtp_node::spool::RecipientState;

const TLS_HOST: &str = "127.0.0.7";
const PLAIN_HOST: &str = "127.0.0.8";
const TRUSTED_HOST: &str = "127.0.0.9";
const RELAY_HOST: &str = "127.0.0.10";

fn zones() -> Vec<Zone> {
    vec![
        Zone::new("tls.test")
            .record("@ MX 10 mx.tls.test.")
            .record(format!("mx A {TLS_HOST}")),
        Zone::new("plain.test")
            .record("@ MX 10 mx.plain.test.")
            .record(format!("mx A {PLAIN_HOST}")),
        Zone::new("trusted.test")
            .record("@ MX 10 mx.trusted.test.")
            .record(format!("mx A {TRUSTED_HOST}")),
        Zone::new("smarthost.test").record(format!("relay A {RELAY_HOST}")),
    ]
}

fn port_for(hosts: &[&str]) -> u16 {
    let ips: Vec<_> = hosts.iter().map(|h| ip(h)).collect();
    free_port(&ips, false)
}

/// Delivery through `relay.smarthost.test` on `port`, trusting the test CA, with
/// `relayuser` and the given password (written to a file in the given directory).
fn smarthost_config(
    dns: &KnotServer,
    pki: &Pki,
    port: u16,
    tls: SmarthostTls,
    password: Option<(&std::path::Path, &str)>,
) -> DeliveryConfig {
    let password_file = password.map(|(dir, password)| {
        let path = dir.join("password");
        std::fs::write(&path, password).unwrap();
        path
    });
    let mut config = delivery_config(dns, 25);
    config.tls_ca_file = Some(pki.ca_file());
    config.smarthost = Some(SmarthostConfig {
        host: "relay.smarthost.test".into(),
        port: Some(port),
        tls,
        username: password_file.as_ref().map(|_| "relayuser".to_string()),
        password_file,
    });
    config
}

fn tls_options(cert: &common::certs::ServerCert) -> PyOptions {
    PyOptions {
        tls: Some((cert.cert.clone(), cert.key.clone())),
        ..PyOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_starttls_accepts_any_certificate() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[TLS_HOST]);
    let pki = Pki::new();
    let sink = PySink::start(
        ip(TLS_HOST),
        port,
        tls_options(&pki.self_signed("mx.tls.test")),
    );
    let node = Node::start_plain(delivery_config(&dns, port));
    let body = message("alice@sender.test", "t@tls.test", "starttls", "secret");
    node.submit(
        meta("alice@sender.test", &["t@tls.test"], body.len()),
        body.clone(),
    )
    .await;
    let received = wait_for("delivery over TLS", WAIT, || {
        sink.messages().into_iter().next()
    })
    .await;
    assert!(received.tls, "the transaction ran inside STARTTLS");
    assert_eq!(received.helo.as_deref(), Some("relay.test"));
    assert_eq!(received.bytes(), body);
    assert_eq!(
        node.metric("outbound_connections_total{result=\"tls\"}"),
        1.0
    );
    assert_eq!(node.metric("outbound_tls_total{result=\"ok\"}"), 1.0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_tls_falls_back_to_plaintext_when_the_handshake_fails() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[TLS_HOST]);
    let pki = Pki::new();
    let mut options = tls_options(&pki.self_signed("mx.tls.test"));
    options.broken_tls = true;
    let sink = PySink::start(ip(TLS_HOST), port, options);
    let node = Node::start_plain(delivery_config(&dns, port));
    let body = message("alice@sender.test", "t@tls.test", "fallback", "x");
    let id = node
        .submit(meta("alice@sender.test", &["t@tls.test"], body.len()), body)
        .await;
    wait_for("delivery", WAIT, || node.spool.removed_meta(id)).await;
    let received = sink.messages();
    assert_eq!(received.len(), 1);
    assert!(
        !received[0].tls,
        "delivered in plaintext after the failed handshake"
    );
    assert_eq!(received[0].connection, 2, "on a second connection");
    // The failed handshake is counted once; the plaintext retry attempts no TLS.
    assert_eq!(node.metric("outbound_tls_total{result=\"failed\"}"), 1.0);
    assert_eq!(node.metric("outbound_tls_total{result=\"ok\"}"), 0.0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_delivers_only_over_verified_tls() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[TLS_HOST, PLAIN_HOST, TRUSTED_HOST]);
    let pki = Pki::new();
    let untrusted = PySink::start(
        ip(TLS_HOST),
        port,
        tls_options(&pki.self_signed("mx.tls.test")),
    );
    let plain = PySink::start(ip(PLAIN_HOST), port, PyOptions::default());
    let trusted = PySink::start(
        ip(TRUSTED_HOST),
        port,
        tls_options(&pki.issue("mx.trusted.test")),
    );
    let mut config = delivery_config(&dns, port);
    config.require_tls = true;
    config.tls_ca_file = Some(pki.ca_file());
    config.retry_schedule = vec![std::time::Duration::from_secs(3600)];
    let node = Node::start_plain(config);

    let body = message("alice@sender.test", "x@tls.test", "require-tls", "x");
    let id = node
        .submit(
            meta(
                "alice@sender.test",
                &["u@tls.test", "p@plain.test", "t@trusted.test"],
                body.len(),
            ),
            body,
        )
        .await;
    let meta = wait_for("all three attempted", WAIT, || {
        node.spool.current(id).filter(|m| {
            m.envelope
                .recipients
                .iter()
                .all(|r| !matches!(r.state, RecipientState::Pending))
        })
    })
    .await;
    assert_eq!(
        states(&meta),
        [
            "u@tls.test: deferred",
            "p@plain.test: deferred",
            "t@trusted.test: delivered"
        ]
    );
    for index in [0, 1] {
        let reply = &meta.envelope.recipients[index].attempts[0].reply;
        assert_eq!(reply.enhanced.as_deref(), Some("4.7.5"), "{reply:?}");
    }
    assert!(
        meta.envelope.recipients[0].attempts[0]
            .reply
            .text
            .contains("TLS")
    );
    assert!(untrusted.messages().is_empty());
    assert!(plain.messages().is_empty());
    let received = trusted.messages();
    assert_eq!(received.len(), 1);
    assert!(received[0].tls);
    for (result, count) in [("ok", 1.0), ("failed", 1.0), ("not_offered", 1.0)] {
        assert_eq!(
            node.metric(&format!("outbound_tls_total{{result=\"{result}\"}}")),
            count,
            "{result}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_with_starttls_and_auth_takes_every_recipient() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[RELAY_HOST]);
    let pki = Pki::new();
    let mut options = tls_options(&pki.issue("relay.smarthost.test"));
    options.auth = Some(("relayuser".into(), "s3cret".into()));
    let relay = PySink::start(ip(RELAY_HOST), port, options);
    let secrets = tempfile::tempdir().unwrap();
    let config = smarthost_config(
        &dns,
        &pki,
        port,
        SmarthostTls::Starttls,
        Some((secrets.path(), "s3cret\n")),
    );
    let node = Node::start_plain(config);
    // Neither domain exists in DNS: the smarthost route never looks them up.
    let body = message(
        "alice@sender.test",
        "a@nowhere.invalid",
        "via-smarthost",
        "x",
    );
    let id = node
        .submit(
            meta(
                "alice@sender.test",
                &["a@nowhere.invalid", "b@elsewhere.invalid"],
                body.len(),
            ),
            body,
        )
        .await;
    let done = wait_for("delivery via the smarthost", WAIT, || {
        node.spool.removed_meta(id)
    })
    .await;
    assert_eq!(
        states(&done),
        [
            "a@nowhere.invalid: delivered",
            "b@elsewhere.invalid: delivered"
        ]
    );
    let received = relay.messages();
    assert_eq!(received.len(), 1, "one transaction for both recipients");
    assert_eq!(
        received[0].rcpt_tos,
        ["a@nowhere.invalid", "b@elsewhere.invalid"]
    );
    assert!(received[0].tls);
    assert_eq!(received[0].auth.as_deref(), Some("relayuser"));
    assert_eq!(
        node.metric("outbound_recipients_total{result=\"delivered\",route=\"smarthost\"}"),
        2.0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_refusing_credentials_defers_instead_of_bouncing() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[RELAY_HOST]);
    let pki = Pki::new();
    let mut options = tls_options(&pki.issue("relay.smarthost.test"));
    options.auth = Some(("relayuser".into(), "right".into()));
    let relay = PySink::start(ip(RELAY_HOST), port, options);
    let secrets = tempfile::tempdir().unwrap();
    let config = smarthost_config(
        &dns,
        &pki,
        port,
        SmarthostTls::Starttls,
        Some((secrets.path(), "wrong")),
    );
    let node = Node::start_plain(config);
    let body = message("alice@sender.test", "a@nowhere.invalid", "bad-auth", "x");
    let id = node
        .submit(
            meta("alice@sender.test", &["a@nowhere.invalid"], body.len()),
            body,
        )
        .await;
    let meta = wait_for("the attempt", WAIT, || {
        node.spool
            .current(id)
            .filter(|m| !m.envelope.recipients[0].attempts.is_empty())
    })
    .await;
    assert_eq!(states(&meta), ["a@nowhere.invalid: deferred"]);
    assert_eq!(meta.envelope.recipients[0].attempts[0].reply.code, 535);
    assert!(relay.messages().is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_with_implicit_tls() {
    let dns = KnotServer::start(zones());
    let port = port_for(&[RELAY_HOST]);
    let pki = Pki::new();
    let mut options = tls_options(&pki.issue("relay.smarthost.test"));
    options.implicit_tls = true;
    let relay = PySink::start(ip(RELAY_HOST), port, options);
    let config = smarthost_config(&dns, &pki, port, SmarthostTls::Implicit, None);
    let node = Node::start_plain(config);
    let body = message("alice@sender.test", "a@nowhere.invalid", "implicit", "x");
    let id = node
        .submit(
            meta("alice@sender.test", &["a@nowhere.invalid"], body.len()),
            body,
        )
        .await;
    wait_for("delivery", WAIT, || node.spool.removed_meta(id)).await;
    let received = relay.messages();
    assert_eq!(received.len(), 1);
    assert!(received[0].tls);
    node.stop().await;
}
