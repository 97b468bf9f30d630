//! Real clients (swaks, Python's smtplib and ssl) through the node binary to a real
//! destination (aiosmtpd), checking what arrives there byte for byte.

mod common;

use std::time::Duration;

use common::certs::Pki;
use common::node::{Node, NodeSettings, Raw, python, queued_ids, swaks};
use common::peers::{PyMessage, PyOptions, PySink};
use common::{free_port, ip};

const WAIT: Duration = Duration::from_secs(30);

/// A node relaying through a smarthost to an aiosmtpd destination.
fn node_to(sink_port: u16, settings: NodeSettings) -> Node {
    Node::start(NodeSettings {
        delivery_yaml: format!(
            "delivery: {{smarthost: {{host: 127.0.0.1, port: {sink_port}, tls: none}}, retrySchedule: [1s]}}\n"
        ),
        ..settings
    })
}

fn sink() -> (PySink, u16) {
    let port = free_port(&[ip("127.0.0.1")], false);
    (
        PySink::start(ip("127.0.0.1"), port, PyOptions::default()),
        port,
    )
}

fn wait_messages(sink: &PySink, n: usize) -> Vec<PyMessage> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let messages = sink.messages();
        if messages.len() >= n {
            return messages;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} messages arrived",
            messages.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The delivered message without the node's `Received:` header (the first header, folded
/// over continuation lines).
fn strip_received(message: &[u8]) -> (String, Vec<u8>) {
    assert!(message.starts_with(b"Received: "), "trace header first");
    let mut end = 0;
    while let Some(pos) = message[end..].windows(2).position(|w| w == b"\r\n") {
        end += pos + 2;
        if !matches!(message.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&message[..end]).into_owned(),
        message[end..].to_vec(),
    )
}

fn tls_settings(pki: &Pki, users: Option<&std::path::Path>) -> NodeSettings {
    let cert = pki.issue("relay.test");
    let relay_yaml = match users {
        Some(path) => format!(
            "relay: {{allowedNetworks: [127.0.0.0/8], domains: [example.com], usersFile: \"{}\"}}\n",
            path.display()
        ),
        None => NodeSettings::default().relay_yaml,
    };
    NodeSettings {
        tls: Some((cert.cert, cert.key)),
        submission: users.is_some(),
        relay_yaml,
        ..NodeSettings::default()
    }
}

fn users_file(dir: &tempfile::TempDir, user: &str, password: &str) -> std::path::PathBuf {
    let output = std::process::Command::new(common::node::binary())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(password.as_bytes())?;
            child.wait_with_output()
        })
        .expect("hash-password");
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).expect("utf-8");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let path = dir.path().join("users");
    std::fs::write(&path, format!("{user}:{hash}")).expect("users");
    path
}

/// 8-bit text, a 998-octet line, lines starting with dots (stuffed on the wire), an
/// empty line at the end: all must arrive exactly as given.
fn tricky_body() -> Vec<u8> {
    let mut m = b"From: <a@example.com>\r\nTo: <b@example.net>\r\nSubject: exact\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    m.extend_from_slice("gr\u{fc}\u{df}e, \u{65e5}\u{672c}\r\n".as_bytes());
    m.extend_from_slice(&[b'L'; 998]);
    m.extend_from_slice(b"\r\n.leading dot\r\n..two dots\r\n.\r\n");
    m.extend_from_slice(b"\r\n");
    m
}

#[test]
fn smtplib_body_arrives_byte_exact_with_a_trace_header() {
    let (sink, port) = sink();
    let node = node_to(port, NodeSettings::default());
    let body = tricky_body();
    let script = r#"
import smtplib, sys
body = open(sys.argv[2], "rb").read()
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.ehlo("client.test")
    s.sendmail("a@example.com", ["b@example.net"], body, mail_options=["BODY=8BITMIME"])
print("sent")
"#;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    let (ok, out) = python(
        script,
        &[&node.smtp.port().to_string(), file.path().to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let messages = wait_messages(&sink, 1);
    let (received, rest) = strip_received(&messages[0].bytes());
    assert_eq!(rest, body, "byte-exact after the trace header");
    assert!(
        received.contains("from client.test ([127.0.0.1])"),
        "{received}"
    );
    assert!(
        received.contains("by relay.test with ESMTP id "),
        "{received}"
    );
    assert!(received.contains("for <b@example.net>"), "{received}");
    assert!(
        messages[0]
            .mail_options
            .iter()
            .any(|o| o == "BODY=8BITMIME")
    );
}

#[test]
fn smtputf8_addresses_are_relayed() {
    let (sink, port) = sink();
    let node = node_to(port, NodeSettings::default());
    let script = r#"
import smtplib, sys
msg = "From: <a@example.com>\r\nTo: <j\u00f6rg@example.net>\r\nSubject: utf8\r\n\r\nhi\r\n".encode()
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.ehlo("client.test")
    assert s.has_extn("smtputf8")
    s.sendmail("a@example.com", ["j\u00f6rg@example.net"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
"#;
    let (ok, out) = python(script, &[&node.smtp.port().to_string()]);
    assert!(ok, "{out}");
    let messages = wait_messages(&sink, 1);
    assert_eq!(messages[0].rcpt_tos, ["j\u{f6}rg@example.net"]);
    assert!(messages[0].mail_options.iter().any(|o| o == "SMTPUTF8"));
}

#[test]
fn bdat_chunks_arrive_byte_exact() {
    let (sink, port) = sink();
    let node = node_to(port, NodeSettings::default());
    let body = tricky_body();
    let mut c = Raw::greeted(node.smtp);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME");
    c.cmd("RCPT TO:<b@example.net>");
    let (first, second) = body.split_at(100);
    // Pipelined: both chunks in one write.
    let mut wire = format!("BDAT {}\r\n", first.len()).into_bytes();
    wire.extend_from_slice(first);
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
    wire.extend_from_slice(second);
    c.send(&wire);
    assert!(c.reply().starts_with("250 2.0.0 100 octets"));
    let reply = c.reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let messages = wait_messages(&sink, 1);
    let (received, rest) = strip_received(&messages[0].bytes());
    assert_eq!(rest, body);
    assert!(
        received.contains(&format!("id {}", queued_ids(&reply)[0])),
        "{received}"
    );
}

#[test]
fn submission_over_starttls_with_auth_via_swaks() {
    let (sink, port) = sink();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(&dir, "alice", "correct horse");
    let node = node_to(port, tls_settings(&pki, Some(&users)));
    let server = node.submission.unwrap().to_string();
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "correct horse",
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
        "--ehlo",
        "client.test",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("235 2.7.0"), "{out}");
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "wrong",
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
    ]);
    assert!(!ok && out.contains("535 5.7.8"), "{out}");
    let messages = wait_messages(&sink, 1);
    let (received, _) = strip_received(&messages[0].bytes());
    assert!(received.contains("with ESMTPSA id"), "{received}");
    assert_eq!(
        node.metric("smtpnode_inbound_rejected_total{reason=\"auth_failed\"}"),
        1.0
    );
}

#[test]
fn implicit_tls_listener_via_swaks() {
    let (sink, port) = sink();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(&dir, "bob", "s3cret-s3cret");
    let node = node_to(port, tls_settings(&pki, Some(&users)));
    let server = node.implicit.unwrap().to_string();
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--tls-on-connect",
        "--auth",
        "LOGIN",
        "--auth-user",
        "bob",
        "--auth-password",
        "s3cret-s3cret",
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
    ]);
    assert!(ok, "{out}");
    wait_messages(&sink, 1);
}

/// CVE-2011-0411: commands sent in plaintext behind STARTTLS must not be executed as if
/// they had arrived over TLS.
#[test]
fn plaintext_pipelined_behind_starttls_is_discarded() {
    let pki = Pki::new();
    let node = Node::start(tls_settings(&pki, None));
    let script = r#"
import socket, ssl, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=15)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline().decode()
        lines.append(line.strip())
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)
reply()
s.sendall(b"EHLO client.test\r\n"); reply()
s.sendall(b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\n")
r = reply()
assert r.startswith("220 2.0.0"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="relay.test")
tf = t.makefile("rb")
def treply():
    lines = []
    while True:
        line = tf.readline().decode()
        lines.append(line.strip())
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)
t.sendall(b"EHLO client.test\r\n")
r = treply()
assert r.startswith("250-relay.test"), "first reply over TLS must answer EHLO: " + r
t.sendall(b"MAIL FROM:<a@example.com>\r\n")
r = treply()
# Had the injected MAIL run, this one would be a nested MAIL (503).
assert r.startswith("250 2.1.0"), r
print("ok")
"#;
    let (ok, out) = python(script, &[&node.smtp.port().to_string()]);
    assert!(ok, "{out}");
    assert_eq!(
        node.metric("smtpnode_inbound_rejected_total{reason=\"pipelined_before_tls\"}"),
        1.0
    );
}

#[test]
fn check_config_names_the_field_and_help_lists_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "hostname: relay.test\nlisteners: [{name: relay, address: \"127.0.0.1:0\", requireAuth: true}]\nspool: {dir: /tmp/x}\nlimits: {maxRecipients: 0}\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::node::binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners[0].requireAuth"), "{err}");
    assert!(
        err.contains("limits.maxRecipients: must be at least 1"),
        "{err}"
    );
    let help = std::process::Command::new(common::node::binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["run", "check-config", "spool", "hash-password"] {
        assert!(help.contains(command), "{help}");
    }
}
