//! The node binary's life: SIGKILL under load loses nothing it acknowledged, SIGTERM
//! finishes what is in flight, and a replaced certificate is served without a restart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certs::Pki;
use common::load::{Client, subject_of};
use common::node::{Node, NodeSettings, Raw, http_get, signal};
use common::peers::SmtpSink;
use common::{free_port, ip};

/// kill -9 at arbitrary moments under load: every message answered 250 reaches the
/// destination (at least once), complete, and the spool drains.
#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    let sink_port = free_port(&[ip("127.0.0.1")], false);
    let sink = SmtpSink::start(ip("127.0.0.1"), sink_port);
    let mut node = Node::start(NodeSettings {
        delivery_yaml: format!(
            "delivery: {{smarthost: {{host: 127.0.0.1, port: {sink_port}, tls: none}}, retrySchedule: [1s], concurrencyPerDestination: 4}}\n"
        ),
        ..NodeSettings::default()
    });
    let addr = node.smtp;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let attempts = Arc::new(Mutex::new(0u64));
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let stop = stop.clone();
            let acknowledged = acknowledged.clone();
            let attempts = attempts.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut client) = Client::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let subject = format!("load-{t}-{n}");
                        *attempts.lock().unwrap() += 1;
                        match client.send(&subject) {
                            Ok(_) => {
                                acknowledged.lock().unwrap().insert(subject);
                            }
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();

    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(700 + 450 * round));
        node.kill();
        std::thread::sleep(Duration::from_millis(100));
        node.restart();
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 100, "load ran: {}", acknowledged.len());

    let deadline = Instant::now() + Duration::from_secs(120);
    let received = loop {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for m in sink.messages() {
            if let Some(subject) = subject_of(&m.data) {
                *seen.entry(subject).or_default() += 1;
            }
        }
        let missing = acknowledged
            .iter()
            .filter(|s| !seen.contains_key(*s))
            .count();
        if missing == 0 {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged messages never arrived",
            acknowledged.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Everything delivered is whole: nothing half-written left the spool.
    std::thread::sleep(Duration::from_millis(500));
    for m in sink.messages() {
        let subject = subject_of(&m.data).expect("subject");
        assert!(
            m.data.contains(&format!("END-OF-MESSAGE {subject}")),
            "{subject} arrived truncated"
        );
    }
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let wait = Instant::now() + Duration::from_secs(60);
    while node.metric("smtpnode_spool_messages") > 0.0 {
        assert!(Instant::now() < wait, "the spool did not drain");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "attempted {}, acknowledged {}, delivered {} distinct, {duplicates} duplicates",
        attempts.lock().unwrap(),
        acknowledged.len(),
        received.len()
    );
}

/// SIGTERM: readiness off, no new connections, idle sessions told 421, a transaction in
/// flight finishes with 250, exit 0, and the message is there after the restart.
#[test]
fn sigterm_finishes_sessions_in_flight() {
    let mut node = Node::start(NodeSettings::default());
    let mut busy = Raw::greeted(node.smtp);
    busy.start_mail("a@example.com", "b@example.net");
    let mut idle = Raw::greeted(node.smtp);
    assert!(idle.cmd("EHLO idle.test").starts_with("250"));

    signal(node.pid(), "TERM");
    let reply = idle.reply();
    assert!(reply.starts_with("421 4.3.2"), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(node.http, "/readyz").is_some_and(|(code, _)| code == 200) {
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = match TcpStream::connect_timeout(&node.smtp, Duration::from_secs(2)) {
        Err(_) => true,
        Ok(stream) => {
            let mut line = String::new();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = BufReader::new(stream).read_line(&mut line);
            !line.starts_with("220")
        }
    };
    assert!(refused, "a new connection was served after SIGTERM");

    assert!(busy.cmd("DATA").starts_with("354"));
    let reply = busy.cmd("Subject: in flight\r\n\r\nstill accepted\r\n.");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    // Once the transaction is over the session is idle: QUIT may race the 421.
    let bye = busy.cmd("QUIT");
    assert!(
        bye.starts_with("221") || bye.starts_with("421 4.3.2"),
        "{bye}"
    );
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        node.log_text()
    );

    node.restart();
    assert_eq!(node.metric("smtpnode_spool_messages"), 1.0);
}

fn served_serial(addr: SocketAddr) -> Option<String> {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "timeout 20 openssl s_client -starttls smtp -connect {addr} -servername relay.test </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().strip_prefix("serial=").map(str::to_owned)
}

fn file_serial(path: &std::path::Path) -> String {
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(path)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

/// Replaces a file the way a Secret volume update does: write elsewhere, rename over.
fn replace(path: &std::path::Path, from: &std::path::Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A TLS session held open across the reload, with rustls.
fn tls_session(
    addr: SocketAddr,
    ca: &std::path::Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut raw = Raw::greeted(addr);
    assert!(raw.cmd("EHLO held.test").starts_with("250"));
    assert!(raw.cmd("STARTTLS").starts_with("220 2.0.0"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls_pki_types::ServerName::try_from("relay.test").expect("name"),
    )
    .expect("client");
    rustls::StreamOwned::new(conn, raw.into_stream())
}

fn tls_cmd(
    session: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    line: &str,
) -> String {
    session
        .write_all(format!("{line}\r\n").as_bytes())
        .expect("write");
    let mut out = String::new();
    let mut reader = BufReader::new(session);
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).expect("read") == 0 {
            return out;
        }
        out.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return out;
        }
    }
}

#[test]
fn replaced_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // Pki writes every certificate for a name to the same files: keep copies.
    let keep = |stem: &str| {
        let issued = pki.issue("relay.test");
        let copy = common::certs::ServerCert {
            cert: dir.path().join(format!("{stem}.crt")),
            key: dir.path().join(format!("{stem}.key")),
        };
        std::fs::copy(&issued.cert, &copy.cert).unwrap();
        std::fs::copy(&issued.key, &copy.key).unwrap();
        copy
    };
    let first = keep("first");
    let second = keep("second");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    replace(&cert, &first.cert);
    replace(&key, &first.key);
    let node = Node::start(NodeSettings {
        tls: Some((cert.clone(), key.clone())),
        ..NodeSettings::default()
    });
    let pid = node.pid();
    assert_eq!(served_serial(node.smtp), Some(file_serial(&first.cert)));
    let mut held = tls_session(node.smtp, &pki.ca_file());
    assert!(tls_cmd(&mut held, "EHLO held.test").starts_with("250"));

    replace(&key, &second.key);
    replace(&cert, &second.cert);
    let want = file_serial(&second.cert);
    assert_ne!(
        want,
        file_serial(&first.cert),
        "the certificates differ in serial"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_serial(node.smtp).as_deref() != Some(want.as_str()) {
        assert!(Instant::now() < deadline, "new certificate not served");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The session that began before the reload goes on.
    assert!(tls_cmd(&mut held, "NOOP").starts_with("250 2.0.0"));
    assert!(tls_cmd(&mut held, "QUIT").starts_with("221"));
    assert_eq!(node.pid(), pid);
    let metrics = http_get(node.http, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        node.metric("smtpnode_tls_certificate_reloads_total{result=\"ok\"}") >= 1.0,
        "{metrics}\n{}",
        node.log_text()
    );

    // A broken file keeps the certificate that works.
    std::fs::write(
        dir.path().join("broken"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    replace(&cert, &dir.path().join("broken"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric("smtpnode_tls_certificate_reloads_total{result=\"failed\"}") < 1.0 {
        assert!(Instant::now() < deadline, "broken file not noticed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served_serial(node.smtp), Some(want));
    assert!(
        node.log_text().contains("still serving the previous one"),
        "{}",
        node.log_text()
    );
}

/// A pod may start before its certificate Secret exists: the node starts without TLS and
/// offers STARTTLS once the files appear.
#[test]
fn certificate_appearing_after_start_is_picked_up() {
    let pki = Pki::new();
    let issued = pki.issue("relay.test");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let node = Node::start(NodeSettings {
        tls: Some((cert.clone(), key.clone())),
        ..NodeSettings::default()
    });
    let mut c = Raw::greeted(node.smtp);
    let ehlo = c.cmd("EHLO early.test");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(c.cmd("STARTTLS").starts_with("454 4.7.0"));
    replace(&key, &issued.key);
    replace(&cert, &issued.cert);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ehlo = Raw::greeted(node.smtp).cmd("EHLO late.test");
        if ehlo.contains("STARTTLS") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "STARTTLS not offered:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served_serial(node.smtp), Some(file_serial(&cert)));
}
