//! Deliverability per sender domain, with the node binary and a destination that refuses
//! some recipients: the per-domain counters on `/metrics` and `GET /admin/delivery`.

mod common;

use std::time::Duration;

use common::node::{Node, NodeSettings, Raw, http_request};
use common::peers::{PyOptions, PySink};
use common::{free_port, ip};
use smtp_node::outbound::DeliveryReport;

const TOKEN: &str = "deliverability-admin-token";
const WAIT: Duration = Duration::from_secs(30);

fn send(node: &Node, from: &str, to: &[&str]) {
    let mut c = Raw::greeted(node.smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let reply = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(reply.starts_with("250"), "{reply}");
    for rcpt in to {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd(&format!(
        "From: <{from}>\r\nSubject: deliverability\r\n\r\nhello\r\n."
    ));
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT");
}

fn wait_metric(node: &Node, sample: &str, value: f64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = node.metric(sample);
        if got == value {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sample} is {got}, not {value}:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A served domain's mail refused with 550 5.1.1 and 451 4.2.2: counted under the
/// domain with the codes; bounces from the null sender and unserved domains go under
/// `other`; the admin report shows the destination domain, never an address or the
/// reply text.
#[test]
fn refusals_are_counted_per_sender_domain_with_their_codes() {
    let sink_port = free_port(&[ip("127.0.0.1")], false);
    let _sink = PySink::start(
        ip("127.0.0.1"),
        sink_port,
        PyOptions {
            refuse: vec![
                (
                    "gone@dest.test".into(),
                    "550 5.1.1 <gone@dest.test>: no such user".into(),
                    None,
                ),
                (
                    "busy@dest.test".into(),
                    "451 4.2.2 <busy@dest.test>: mailbox full".into(),
                    None,
                ),
            ],
            ..PyOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let node = Node::start(NodeSettings {
        admin_token_file: Some(token),
        relay_yaml: "relay: {allowedNetworks: [127.0.0.0/8], domains: [example.com]}\n".into(),
        delivery_yaml: format!(
            "delivery: {{smarthost: {{host: 127.0.0.1, port: {sink_port}, tls: none}}, retrySchedule: [1h]}}\n"
        ),
        ..NodeSettings::default()
    });

    send(
        &node,
        "alice@Example.COM",
        &["ok@dest.test", "gone@dest.test", "busy@dest.test"],
    );
    // A bounce-like message from the null sender: not a served domain's mail.
    send(&node, "", &["ok@other.test"]);

    let sample = |domain: &str, result: &str, code: &str| {
        format!(
            "smtpnode_outbound_domain_recipients_total{{domain=\"{domain}\",result=\"{result}\",code=\"{code}\"}}"
        )
    };
    wait_metric(&node, &sample("example.com", "delivered", "none"), 1.0);
    wait_metric(&node, &sample("example.com", "bounced", "5.1.1"), 1.0);
    wait_metric(&node, &sample("example.com", "deferred", "4.2.2"), 1.0);
    // The null sender's message and the bounce sent to alice.
    wait_metric(&node, &sample("other", "delivered", "none"), 2.0);

    let (status, _) = http_request(node.http, "GET", "/admin/delivery", None).expect("answer");
    assert_eq!(status, 401, "the report needs the admin token");
    let (status, body) =
        http_request(node.http, "GET", "/admin/delivery", Some(TOKEN)).expect("answer");
    assert_eq!(status, 200, "{body}");
    for secret in ["gone@", "busy@", "alice", "no such user", "mailbox full"] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    let report: DeliveryReport = serde_json::from_str(&body).expect("a delivery report");
    assert_eq!(report.node, "test-0");
    assert!(!report.since.is_empty());
    let served = report.domains["example.com"];
    assert_eq!(
        (served.delivered, served.deferred, served.bounced),
        (1, 1, 1)
    );
    assert_eq!(report.domains["other"].delivered, 2);
    assert_eq!(report.domains.len(), 2, "{body}");
    let bounced = report
        .refusals
        .iter()
        .find(|r| r.result == "bounced")
        .expect("a bounce reason");
    assert_eq!(
        (
            bounced.domain.as_str(),
            bounced.code.as_str(),
            bounced.count
        ),
        ("example.com", "5.1.1", 1)
    );
    assert_eq!(bounced.destinations, ["dest.test"]);
    assert!(
        report
            .refusals
            .iter()
            .any(|r| r.result == "deferred" && r.code == "4.2.2"),
        "{body}"
    );
}
