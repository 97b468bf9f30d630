//! DKIM signatures made at delivery time, verified by dkimpy with the public keys served
//! by Knot. Keys come from the openssl command line in the formats operators have:
//! PKCS#8 and PKCS#1 RSA, PKCS#8 Ed25519.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use common::knot::{KnotServer, Zone};
use common::memory_spool::MemorySpool;
use common::peers::{PyOptions, PySink};
use common::{Node, WAIT, delivery_config, free_port, ip, message, meta, wait_for};
use smtp_node::dkim::DkimKeyring;
use smtp_node::outbound::{DkimAlgorithm, DkimConfig};

const SINK_HOST: &str = "127.0.0.11";

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A private key file and the `p=` value of its DNS record.
struct Key {
    path: PathBuf,
    public: String,
    algorithm: DkimAlgorithm,
}

fn rsa_pkcs8(dir: &Path, name: &str) -> Key {
    let path = dir.join(format!("{name}.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        path.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    public_key(path, DkimAlgorithm::Rsa)
}

fn rsa_pkcs1(dir: &Path, name: &str) -> Key {
    let path = dir.join(format!("{name}.pem"));
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        path.to_str().unwrap(),
        "2048",
    ]);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    public_key(path, DkimAlgorithm::Rsa)
}

fn ed25519(dir: &Path, name: &str) -> Key {
    let path = dir.join(format!("{name}.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "ED25519",
        "-out",
        path.to_str().unwrap(),
    ]);
    public_key(path, DkimAlgorithm::Ed25519)
}

fn public_key(path: PathBuf, algorithm: DkimAlgorithm) -> Key {
    let der = openssl(&[
        "pkey",
        "-in",
        path.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = match algorithm {
        // RSA: the SubjectPublicKeyInfo (RFC 6376 section 3.6.1).
        DkimAlgorithm::Rsa => b64.encode(&der),
        // Ed25519: the raw 32-byte key (RFC 8463 section 4).
        DkimAlgorithm::Ed25519 => b64.encode(&der[der.len() - 32..]),
    };
    Key {
        path,
        public,
        algorithm,
    }
}

fn record(key: &Key) -> String {
    let k = match key.algorithm {
        DkimAlgorithm::Rsa => "rsa",
        DkimAlgorithm::Ed25519 => "ed25519",
    };
    format!("v=DKIM1; k={k}; p={}", key.public)
}

fn config(domain: &str, selector: &str, key: &Key) -> DkimConfig {
    DkimConfig {
        domain: domain.into(),
        selector: selector.into(),
        private_key_file: key.path.clone(),
        algorithm: key.algorithm,
        headers: vec![
            "From".into(),
            "To".into(),
            "Subject".into(),
            "Date".into(),
            "Message-ID".into(),
        ],
    }
}

/// Verifies every DKIM-Signature of a message with dkimpy, looking keys up in Knot.
/// Returns (selector, verified) per signature, in header order.
fn dkimpy_verify(dns: &KnotServer, message: &[u8]) -> Vec<(String, bool)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.eml");
    std::fs::write(&file, message).unwrap();
    let script = r#"
import sys, dkim, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    answer = resolver.resolve(name, "TXT", lifetime=timeout)
    return b"".join(b"".join(rdata.strings) for rdata in answer)
data = open(sys.argv[2], "rb").read()
verifier = dkim.DKIM(data)
signatures = [v for (k, v) in verifier.headers if k.lower() == b"dkim-signature"]
for idx, value in enumerate(signatures):
    tags = dkim.util.parse_tag_value(b"".join(value.split()))
    try:
        ok = verifier.verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.ValidationError as err:
        print(err, file=sys.stderr)
        ok = False
    print(tags[b"s"].decode(), ok)
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(dns.addr.port().to_string())
        .arg(&file)
        .output()
        .expect("/usr/bin/python3 with dkimpy (Debian package python3-dkim)");
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (selector, ok) = line.split_once(' ').unwrap();
            (selector.to_string(), ok == "True")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ed25519_signatures_verify_with_dkimpy() {
    let keys = tempfile::tempdir().unwrap();
    let pkcs8 = rsa_pkcs8(keys.path(), "pkcs8");
    let pkcs1 = rsa_pkcs1(keys.path(), "pkcs1");
    let ed = ed25519(keys.path(), "ed");
    let dns = KnotServer::start(vec![
        Zone::new("sender.test")
            .txt("rsa8._domainkey", &record(&pkcs8))
            .txt("rsa1._domainkey", &record(&pkcs1))
            .txt("ed._domainkey", &record(&ed)),
        Zone::new("py.test")
            .record("@ MX 10 mx.py.test.")
            .record(format!("mx A {SINK_HOST}")),
    ]);
    let port = free_port(&[ip(SINK_HOST)], false);
    let sink = PySink::start(ip(SINK_HOST), port, PyOptions::default());
    let keyring = DkimKeyring::load(&[
        config("sender.test", "rsa8", &pkcs8),
        config("sender.test", "rsa1", &pkcs1),
        config("sender.test", "ed", &ed),
    ])
    .expect("keys load");
    let node = Node::start(
        delivery_config(&dns, port),
        keyring,
        Arc::new(MemorySpool::default()),
    );

    // Bare LF line ends and trailing whitespace: signed as they go out on the wire.
    let mut body = message(
        "alice@sender.test",
        "bob@py.test",
        "signed",
        "Hello Bob,  \n\n.dotted line\n",
    );
    body.extend_from_slice(b"bare LF line\n");
    node.submit(
        meta("alice@sender.test", &["bob@py.test"], body.len()),
        body,
    )
    .await;
    let received = wait_for("delivery", WAIT, || sink.messages().into_iter().next()).await;
    let bytes = received.bytes();
    assert!(bytes.starts_with(b"DKIM-Signature:"), "signature prepended");

    let results = dkimpy_verify(&dns, &bytes);
    let selectors: Vec<&str> = results.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(selectors, ["rsa8", "rsa1", "ed"]);
    for (selector, ok) in &results {
        assert!(ok, "dkimpy rejects the {selector} signature");
    }
    assert_eq!(
        node.metric("outbound_dkim_signatures_total{result=\"signed\"}"),
        1.0
    );

    // The check can fail: a tampered body no longer verifies.
    let tampered = String::from_utf8_lossy(&bytes).replace("Hello Bob", "Hello Eve");
    assert!(
        dkimpy_verify(&dns, tampered.as_bytes())
            .iter()
            .all(|(_, ok)| !ok)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_file_signs_mail_delivered_after_the_change() {
    let keys = tempfile::tempdir().unwrap();
    let old = ed25519(keys.path(), "old");
    let new = ed25519(keys.path(), "new");
    // DNS already publishes the new key under the selector.
    let dns = KnotServer::start(vec![
        Zone::new("sender.test").txt("rot._domainkey", &record(&new)),
        Zone::new("py.test")
            .record("@ MX 10 mx.py.test.")
            .record(format!("mx A {SINK_HOST}")),
    ]);
    let port = free_port(&[ip(SINK_HOST)], false);
    let sink = PySink::start(ip(SINK_HOST), port, PyOptions::default());
    let live = keys.path().join("live.pem");
    std::fs::copy(&old.path, &live).unwrap();
    let live_key = Key {
        path: live.clone(),
        public: String::new(),
        algorithm: DkimAlgorithm::Ed25519,
    };
    let keyring = DkimKeyring::load(&[config("sender.test", "rot", &live_key)]).unwrap();
    let node = Node::start(
        delivery_config(&dns, port),
        keyring,
        Arc::new(MemorySpool::default()),
    );

    let body = message("alice@sender.test", "bob@py.test", "before-rotation", "x");
    node.submit(
        meta("alice@sender.test", &["bob@py.test"], body.len()),
        body,
    )
    .await;
    let first = wait_for("first delivery", WAIT, || {
        sink.messages().into_iter().next()
    })
    .await;
    assert_eq!(
        dkimpy_verify(&dns, &first.bytes()),
        [("rot".to_string(), false)],
        "old key, new DNS"
    );

    // The Secret update: the file is replaced in place.
    std::fs::copy(&new.path, &live).unwrap();
    let file = std::fs::File::options().write(true).open(&live).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();

    let body = message("alice@sender.test", "bob@py.test", "after-rotation", "x");
    node.submit(
        meta("alice@sender.test", &["bob@py.test"], body.len()),
        body,
    )
    .await;
    let second = wait_for("second delivery", WAIT, || {
        sink.messages().into_iter().nth(1)
    })
    .await;
    assert_eq!(
        dkimpy_verify(&dns, &second.bytes()),
        [("rot".to_string(), true)]
    );
    node.stop().await;
}
