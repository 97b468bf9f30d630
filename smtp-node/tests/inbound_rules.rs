//! The SMTP server's strictness rules, one test each, against the real binary with a raw
//! client (the rules are about exact bytes on the wire, which ordinary clients never send).

mod common;

use std::time::Duration;

use common::node::{Node, NodeSettings, Raw};

fn node_with(extra: &str) -> Node {
    Node::start(NodeSettings {
        extra_yaml: extra.to_owned(),
        ..NodeSettings::default()
    })
}

fn code(reply: &str) -> &str {
    reply.get(..9).unwrap_or(reply)
}

#[test]
fn mail_before_helo_is_503() {
    let node = node_with("");
    let mut c = Raw::greeted(node.smtp);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), "503 5.5.1");
    assert!(c.cmd("HELO client.test").starts_with("250 "));
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), "250 2.1.0");
}

#[test]
fn rcpt_before_mail_is_503() {
    let node = node_with("");
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    assert_eq!(code(&c.cmd("RCPT TO:<b@example.net>")), "503 5.5.1");
}

#[test]
fn data_before_rcpt_is_503_and_so_is_bdat() {
    let node = node_with("");
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    assert_eq!(code(&c.cmd("DATA")), "503 5.5.1");
    c.cmd("MAIL FROM:<a@example.com>");
    assert_eq!(code(&c.cmd("DATA")), "503 5.5.1");
    // A refused BDAT chunk is still read, so its octets are not taken for commands.
    c.send(b"BDAT 9 LAST\r\nQUIT\r\nxyz");
    assert_eq!(code(&c.reply()), "503 5.5.1");
    assert_eq!(code(&c.cmd("NOOP")), "250 2.0.0");
}

#[test]
fn overlong_command_line_is_500_and_the_session_goes_on() {
    let node = node_with("");
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    let long = format!("MAIL FROM:<{}@example.com>", "a".repeat(3000));
    let reply = c.cmd(&long);
    assert_eq!(code(&reply), "500 5.5.2", "{reply}");
    assert!(reply.contains("2048"), "the limit is named: {reply}");
    // Just under the limit is parsed normally.
    let fits = format!("NOOP {}", "x".repeat(2040));
    assert_eq!(fits.len() + 2, 2047);
    assert_eq!(code(&c.cmd(&fits)), "250 2.0.0");
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), "250 2.1.0");
}

#[test]
fn nul_in_a_command_is_refused() {
    let node = node_with("");
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    c.send(b"MAIL FROM:<a@example.com>\0 SIZE=10\r\n");
    assert_eq!(code(&c.reply()), "500 5.5.2");
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), "250 2.1.0");
}

/// SMTP smuggling: `<LF>.<LF>`, `<CR>.<CR>` and `<LF>.<CR><LF>` must not end DATA, and
/// what follows them must not run as commands. Messages holding bare CR or LF are
/// refused (554 5.6.0) rather than normalised, so what is relayed is byte-exact.
#[test]
fn bare_cr_or_lf_never_ends_data() {
    let node = node_with("");
    for smuggle in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"] {
        let mut c = Raw::greeted(node.smtp);
        c.start_mail("a@example.com", "b@example.net");
        assert_eq!(&c.cmd("DATA")[..3], "354");
        let mut body = b"Subject: first\r\n\r\nfirst".to_vec();
        body.extend_from_slice(smuggle);
        body.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n");
        c.send(&body);
        // Nothing may have been answered yet: the server is still in DATA.
        c.send(b"\r\n.\r\n");
        let reply = c.reply();
        assert_eq!(code(&reply), "554 5.6.0", "{smuggle:?}: {reply}");
        assert_eq!(code(&c.cmd("NOOP")), "250 2.0.0", "{smuggle:?}");
    }
    assert_eq!(
        node.metric("smtpnode_inbound_accepted_messages_total{listener=\"relay\"}"),
        0.0
    );
}

#[test]
fn error_limit_ends_the_session_with_421() {
    let node = node_with("limits: {maxErrors: 3}\n");
    let mut c = Raw::greeted(node.smtp);
    assert_eq!(code(&c.cmd("BOGUS")), "500 5.5.1");
    assert_eq!(code(&c.cmd("BOGUS")), "500 5.5.1");
    let last = c.cmd("BOGUS");
    assert_eq!(code(&last), "500 5.5.1");
    assert_eq!(code(&c.reply()), "421 4.7.0");
    assert!(c.closed());
}

#[test]
fn idle_session_times_out_with_421() {
    let node = node_with("limits: {commandTimeout: 1s}\n");
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    let started = std::time::Instant::now();
    let reply = c.reply();
    assert_eq!(code(&reply), "421 4.4.2", "{reply}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(c.closed());
}

#[test]
fn total_connection_limit_turns_clients_away_with_421() {
    let node = node_with("limits: {maxConnections: 2, maxConnectionsPerClient: 10}\n");
    let _a = Raw::greeted(node.smtp);
    let _b = Raw::greeted(node.smtp);
    let mut c = Raw::connect(node.smtp);
    let reply = c.reply();
    assert!(
        reply.starts_with("421 4.7.0 Too many connections,"),
        "{reply}"
    );
    drop(_a);
    // The slot is given back when a session ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = Raw::connect(node.smtp);
        if d.reply().starts_with("220 ") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot not released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn per_client_connection_limit_turns_clients_away_with_421() {
    let node = node_with("limits: {maxConnections: 10, maxConnectionsPerClient: 1}\n");
    let _a = Raw::greeted(node.smtp);
    let mut b = Raw::connect(node.smtp);
    let reply = b.reply();
    assert!(
        reply.starts_with("421 4.7.0 Too many connections from your address"),
        "{reply}"
    );
    assert_eq!(
        node.metric(
            "smtpnode_inbound_refused_connections_total{reason=\"max_connections_per_client\"}"
        ),
        1.0
    );
}

#[test]
fn recipients_past_the_limit_get_452() {
    let node = node_with("limits: {maxRecipients: 2}\n");
    let mut c = Raw::greeted(node.smtp);
    c.start_mail("a@example.com", "one@example.net");
    assert_eq!(code(&c.cmd("RCPT TO:<two@example.net>")), "250 2.1.5");
    assert_eq!(code(&c.cmd("RCPT TO:<three@example.net>")), "452 4.5.3");
    // The transaction goes on with the recipients it has.
    assert_eq!(&c.cmd("DATA")[..3], "354");
    let reply = c.cmd("Subject: x\r\n\r\nhello\r\n.");
    assert_eq!(code(&reply), "250 2.0.0", "{reply}");
}

#[test]
fn size_is_enforced_at_mail_and_during_data_and_bdat() {
    let node = node_with("limits: {maxMessageSize: 4096}\n");
    let mut c = Raw::greeted(node.smtp);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("250-SIZE 4096"), "{ehlo}");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@example.com> SIZE=5000")),
        "552 5.3.4"
    );
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@example.com> SIZE=100")),
        "250 2.1.0"
    );
    c.cmd("RCPT TO:<b@example.net>");
    c.cmd("DATA");
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(70).repeat(100));
    c.send(big.as_bytes());
    let reply = c.cmd(".");
    assert_eq!(code(&reply), "552 5.3.4", "{reply}");
    // BDAT: the chunks are read and the message refused at LAST.
    c.start_mail_after_ehlo();
    c.send(format!("BDAT 3000\r\n{}", "y".repeat(3000)).as_bytes());
    assert_eq!(code(&c.reply()), "250 2.0.0");
    c.send(format!("BDAT 3000 LAST\r\n{}", "y".repeat(3000)).as_bytes());
    assert_eq!(code(&c.reply()), "552 5.3.4");
    assert_eq!(code(&c.cmd("NOOP")), "250 2.0.0");
}

trait AfterEhlo {
    fn start_mail_after_ehlo(&mut self);
}

impl AfterEhlo for Raw {
    fn start_mail_after_ehlo(&mut self) {
        assert_eq!(code(&self.cmd("MAIL FROM:<a@example.com>")), "250 2.1.0");
        assert_eq!(code(&self.cmd("RCPT TO:<b@example.net>")), "250 2.1.5");
    }
}

#[test]
fn vrfy_and_expn_reveal_nothing() {
    let node = node_with("");
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    let known = c.cmd("VRFY postmaster");
    let unknown = c.cmd("VRFY no-such-user-4711");
    assert_eq!(code(&known), "252 2.5.2");
    assert_eq!(known, unknown, "the same answer for any name");
    assert_eq!(code(&c.cmd("EXPN staff")), "502 5.5.1");
}

/// RFC 2034: every 2xx/4xx/5xx reply except the greeting and the EHLO/HELO response
/// carries an enhanced status code.
#[test]
fn every_reply_carries_an_enhanced_status_code() {
    let node = node_with("limits: {maxRecipients: 1, maxErrors: 50}\n");
    let mut c = Raw::greeted(node.smtp);
    let mut replies = Vec::new();
    c.cmd("EHLO client.test");
    for command in [
        "NOOP",
        "HELP",
        "VRFY x",
        "EXPN x",
        "ETRN example.com",
        "BOGUS",
        "RCPT TO:<b@example.net>",
        "DATA",
        "MAIL FROM:<a@other.org>",
        "MAIL FROM:<a@example.com> BODY=BINARYMIME",
        "MAIL FROM:<a@example.com> HOLDFOR=10",
        "MAIL FROM:<a@example.com>",
        "MAIL FROM:<a@example.com>",
        "RCPT TO:<postmaster>",
        "RCPT TO:<b@example.net>",
        "RCPT TO:<c@example.net>",
        "AUTH PLAIN AGFsaWNlAHB3",
        "STARTTLS",
        "RSET",
    ] {
        replies.push((command, c.cmd(command)));
    }
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.net>");
    c.cmd("DATA");
    replies.push(("end of data", c.cmd("Subject: x\r\n\r\nx\r\n.")));
    replies.push(("QUIT", c.cmd("QUIT")));
    let pattern = regex::Regex::new(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} ").unwrap();
    for (command, reply) in &replies {
        for line in reply.lines() {
            assert!(
                pattern.is_match(&line.replacen('-', " ", 1)),
                "{command}: {line}"
            );
        }
    }
}

#[test]
fn clients_outside_allowed_networks_may_not_relay() {
    let node = Node::start(NodeSettings {
        relay_yaml: "relay: {allowedNetworks: [10.0.0.0/8], domains: [example.com]}\n".to_owned(),
        ..NodeSettings::default()
    });
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    let reply = c.cmd("MAIL FROM:<a@example.com>");
    assert_eq!(code(&reply), "554 5.7.1", "{reply}");
    assert!(
        reply.contains("127.0.0.1"),
        "the reason names the client: {reply}"
    );
    assert_eq!(
        node.metric("smtpnode_inbound_rejected_total{reason=\"relay_denied\"}"),
        1.0
    );
}

#[test]
fn senders_from_domains_the_node_does_not_serve_are_refused() {
    let node = node_with("");
    let mut c = Raw::greeted(node.smtp);
    c.cmd("EHLO client.test");
    let reply = c.cmd("MAIL FROM:<a@not-ours.example>");
    assert_eq!(code(&reply), "550 5.7.1", "{reply}");
    assert!(reply.contains("not-ours.example"), "{reply}");
    // Subdomains are not included, case is ignored, the null sender may relay.
    assert_eq!(code(&c.cmd("MAIL FROM:<a@sub.example.com>")), "550 5.7.1");
    assert_eq!(code(&c.cmd("MAIL FROM:<a@EXAMPLE.com>")), "250 2.1.0");
    c.cmd("RSET");
    assert_eq!(code(&c.cmd("MAIL FROM:<>")), "250 2.1.0");
}

#[test]
fn auth_is_only_offered_and_accepted_over_tls() {
    let pki = common::certs::Pki::new();
    let cert = pki.issue("relay.test");
    let users = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        users.path(),
        "alice:$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let node = Node::start(NodeSettings {
        tls: Some((cert.cert.clone(), cert.key.clone())),
        submission: true,
        relay_yaml: format!(
            "relay: {{allowedNetworks: [127.0.0.0/8], domains: [example.com], usersFile: \"{}\"}}\n",
            users.path().display()
        ),
        ..NodeSettings::default()
    });
    let mut c = Raw::greeted(node.submission.unwrap());
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let reply = c.cmd("AUTH PLAIN AGFsaWNlAHB3");
    assert!(reply.starts_with("538 5.7.11 "), "{reply}");
    // Submission requires AUTH even from an allowed network.
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), "530 5.7.0");
}
