//! The peer CA rotates while two nodes talk: the operator's rotation plan writes the
//! files each node mounts (each node seeing every change late, as kubelets do), the
//! nodes' own mTLS code (`smtp_node::peer_tls`) reloads them, and not one handshake or
//! exchange fails. At the end both nodes present certificates from the new CA and a
//! certificate from the old one is refused.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use rustls_pki_types::ServerName;
use smtp_node::config::PeerTlsFiles;
use smtp_node::peer_tls::PeerTls;
use smtpfleet_operator::certificate::peer_ca::{PeerMaterial, PeerNode, Phase, plan};

const OVERLAP: i64 = 60;
/// How late the second node sees each change of the mounted files.
const LAG: Duration = Duration::from_millis(400);

fn dns(node: &str) -> String {
    format!("{node}.pool-peers.mail.svc")
}

fn nodes() -> Vec<PeerNode> {
    ["pool-a-0", "pool-b-0"]
        .iter()
        .map(|n| PeerNode {
            name: n.to_string(),
            dns_names: vec![dns(n), n.to_string()],
        })
        .collect()
}

/// Writes the material the way the kubelet updates a mounted Secret: the files of a new
/// version go into a fresh directory, the `..data` link swings to it in one rename, and
/// each key is a link through `..data`.
fn write(dir: &Path, m: &PeerMaterial) {
    use std::os::unix::fs::symlink;
    static VERSION: AtomicU64 = AtomicU64::new(0);
    let version = format!("..v{}", VERSION.fetch_add(1, Ordering::Relaxed));
    let data = dir.join(&version);
    std::fs::create_dir(&data).unwrap();
    let mut names = vec!["ca.crt".to_owned()];
    std::fs::write(data.join("ca.crt"), m.bundle()).unwrap();
    for (node, cert) in &m.nodes {
        std::fs::write(data.join(format!("{node}.crt")), &cert.cert_pem).unwrap();
        std::fs::write(data.join(format!("{node}.key")), &cert.key_pem).unwrap();
        names.push(format!("{node}.crt"));
        names.push(format!("{node}.key"));
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in names {
        let link = dir.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

struct Node {
    tls: Arc<PeerTls>,
    addr: SocketAddr,
}

fn files(dir: &Path) -> PeerTlsFiles {
    PeerTlsFiles {
        ca_file: dir.join("ca.crt"),
        cert_dir: dir.to_path_buf(),
    }
}

/// A node's peer listener: one line in, the same line out, until the peer closes.
fn serve(name: &str, dir: &Path, stop: Arc<AtomicBool>) -> Node {
    let tls = PeerTls::load(&files(dir), name).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server_tls = tls.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((tcp, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            server_tls.reload_if_changed();
            let conn = ServerConnection::new(server_tls.server_config()).unwrap();
            std::thread::spawn(move || {
                let mut stream = BufReader::new(StreamOwned::new(conn, tcp));
                loop {
                    let mut line = String::new();
                    match stream.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if stream.get_mut().write_all(line.as_bytes()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Node { tls, addr }
}

type Stream = StreamOwned<ClientConnection, TcpStream>;

fn connect(tls: &PeerTls, to: SocketAddr, peer: &str) -> std::io::Result<Stream> {
    tls.reload_if_changed();
    let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::try_from(dns(peer)).map_err(std::io::Error::other)?;
    let conn = ClientConnection::new(tls.client_config(), name).map_err(std::io::Error::other)?;
    Ok(StreamOwned::new(conn, tcp))
}

fn exchange(stream: &mut Stream, text: &str) -> std::io::Result<()> {
    stream.write_all(format!("{text}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim_end() == text {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("echo {line:?}")))
    }
}

#[test]
fn peers_keep_talking_through_a_ca_rotation() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |i: usize| -> PathBuf { dirs[i].path().to_path_buf() };
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let initial = plan("pool", None, &nodes(), t0, OVERLAP, false).unwrap();
    let old_ca = initial.active.clone();
    let old_nodes = initial.nodes.clone();
    write(&dir(0), &initial);
    write(&dir(1), &initial);

    let stop = Arc::new(AtomicBool::new(false));
    // The listeners outlive the talkers: the checks at the end connect again.
    let servers_stop = Arc::new(AtomicBool::new(false));
    let a = serve("pool-a-0", &dir(0), servers_stop.clone());
    let b = serve("pool-b-0", &dir(1), servers_stop.clone());
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));

    // Short connections both ways, plus one connection held from start to end.
    let mut talkers = Vec::new();
    for (from, to_addr, to_name, label) in [
        (a.tls.clone(), b.addr, "pool-b-0", "a->b"),
        (b.tls.clone(), a.addr, "pool-a-0", "b->a"),
    ] {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        talkers.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let result = connect(&from, to_addr, to_name)
                    .and_then(|mut s| exchange(&mut s, &format!("{label} {n}")));
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{label} {n}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    let mut held = connect(&a.tls, b.addr, "pool-b-0").unwrap();
    exchange(&mut held, "held 0").unwrap();

    // Introduce, promote, retire: node a sees each change first, node b after LAG.
    let mut material = initial;
    let mut phases = Vec::new();
    for (step, rotate) in [(1, true), (OVERLAP + 2, false), (2 * OVERLAP + 4, false)] {
        std::thread::sleep(Duration::from_millis(600));
        material = plan("pool", Some(material), &nodes(), t0 + step, OVERLAP, rotate).unwrap();
        phases.push(material.phase());
        write(&dir(0), &material);
        std::thread::sleep(LAG);
        write(&dir(1), &material);
        exchange(&mut held, &format!("held {step}")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    for t in talkers {
        t.join().unwrap();
    }
    exchange(&mut held, "held end").unwrap();

    assert_eq!(phases, [Phase::Introducing, Phase::Retiring, Phase::Stable]);
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed exchanges: {failures:?}");
    assert!(ok.load(Ordering::Relaxed) > 50, "the nodes talked");
    assert!(a.tls.reloads() >= 3 && b.tls.reloads() >= 3);

    // Both now present certificates from the new CA...
    assert_ne!(material.active.name_der, old_ca.name_der);
    let mut fresh = connect(&a.tls, b.addr, "pool-b-0").unwrap();
    exchange(&mut fresh, "after").unwrap();
    let presented = fresh.conn.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(presented.as_ref()).unwrap();
    assert_eq!(cert.issuer().as_raw(), material.active.name_der.as_slice());

    // ...and a certificate from the retired CA is refused, trust bundle current or not.
    let stale = tempfile::tempdir().unwrap();
    let mut old_only = material.clone();
    old_only.nodes = old_nodes;
    write(stale.path(), &old_only);
    let intruder = PeerTls::load(&files(stale.path()), "pool-a-0").unwrap();
    let refused =
        connect(&intruder, b.addr, "pool-b-0").and_then(|mut s| exchange(&mut s, "let me in"));
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );
    servers_stop.store(true, Ordering::Relaxed);
}
