//! A real authoritative DNS server for tests: Knot (`knotd`, Debian package `knot`),
//! started in a temporary directory on a free 127.0.0.1 port with its own rundir,
//! storage and control socket, as the current user. Zones are given as zone-file bodies;
//! the helper adds SOA and NS records, bumps the serial on every change and reloads
//! through `knotc` (blocking until the new zone is served).
//!
//! Use from an integration test with `mod dnsserver;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Default TTL of records in the zones, and the SOA minimum (negative-caching TTL).
pub const DEFAULT_TTL: u32 = 60;
pub const NEGATIVE_TTL: u32 = 30;

/// A running `knotd`; stopped when dropped.
pub struct KnotServer {
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
    serials: BTreeMap<String, u32>,
}

impl KnotServer {
    /// Starts Knot serving `zones`: `(zone name, body)`; bodies are zone-file lines with
    /// `$ORIGIN` set to the zone (absolute names with a trailing dot work too).
    pub fn start(zones: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("knot-test-")
            .tempdir()
            .expect("temp dir");
        for sub in ["run", "storage", "zones"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("knot dirs");
        }
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut serials = BTreeMap::new();
        for (zone, body) in zones {
            let zone = zone.trim_end_matches('.').to_ascii_lowercase();
            write_zone(dir.path(), &zone, 1, body);
            serials.insert(zone, 1);
        }
        let conf = config(dir.path(), port, serials.keys());
        let conf_path = dir.path().join("knot.conf");
        std::fs::write(&conf_path, conf).expect("write knot.conf");
        let log = std::fs::File::create(dir.path().join("knotd.log")).expect("log file");
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("knotd not found: install the Debian package `knot`");
        let mut server = Self {
            dir,
            child,
            addr,
            serials,
        };
        server.wait_ready();
        server
    }

    /// Where to send queries.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces a zone's records (the zone must have been given to [`start`]) and waits
    /// until Knot serves them.
    pub fn set_zone(&mut self, zone: &str, body: &str) {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let serial = self
            .serials
            .get_mut(&zone)
            .unwrap_or_else(|| panic!("zone {zone} was not configured at start"));
        *serial += 1;
        write_zone(self.dir.path(), &zone, *serial, body);
        let out = self.knotc(&["-b", "zone-reload", &zone]);
        assert!(
            out.0,
            "knotc zone-reload {zone} failed: {}\n{}",
            out.1,
            self.log()
        );
    }

    /// Queries answered so far (Knot's mod-stats), for rate measurements.
    pub fn queries_answered(&self) -> u64 {
        let (ok, out) = self.knotc(&["stats", "mod-stats.server-operation"]);
        assert!(ok, "knotc stats failed: {out}");
        out.lines()
            .filter(|l| l.contains("server-operation[query]"))
            .filter_map(|l| l.rsplit('=').next()?.trim().parse::<u64>().ok())
            .sum()
    }

    /// knotd's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("knot.sock")
    }

    fn knotc(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("knotc")
            .arg("-s")
            .arg(self.socket())
            .args(["-t", "10"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("knotc not found: install the Debian package `knot`");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("knotd exited with {status}:\n{}", self.log());
            }
            if self.socket().exists() && self.knotc(&["status"]).0 {
                // The control socket is up; make sure every zone is loaded.
                let zones: Vec<String> = self.serials.keys().cloned().collect();
                if zones
                    .iter()
                    .all(|z| self.knotc(&["zone-status", z]).1.contains("serial"))
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "knotd did not become ready within 15 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KnotServer {
    fn drop(&mut self) {
        let _ = self.knotc(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A nameserver address that never answers: a bound UDP socket nobody reads and a TCP
/// listener that never accepts. Queries to it time out. Keep the value alive while used.
pub struct SilentNameserver {
    _udp: UdpSocket,
    _tcp: TcpListener,
    pub addr: SocketAddr,
}

impl SilentNameserver {
    pub fn bind() -> Self {
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
            let addr = udp.local_addr().expect("udp addr");
            if let Ok(tcp) = TcpListener::bind(addr) {
                return Self {
                    _udp: udp,
                    _tcp: tcp,
                    addr,
                };
            }
        }
        panic!("no port free for both UDP and TCP");
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("udp addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// The zone file text: SOA, NS and the given body.
pub fn zone_file(zone: &str, serial: u32, body: &str) -> String {
    format!(
        "$ORIGIN {zone}.\n$TTL {DEFAULT_TTL}\n\
         @ SOA ns.{zone}. hostmaster.{zone}. {serial} 3600 600 86400 {NEGATIVE_TTL}\n\
         @ NS ns.{zone}.\n\
         ns A 127.0.0.1\n\
         {body}\n"
    )
}

fn write_zone(dir: &Path, zone: &str, serial: u32, body: &str) {
    std::fs::write(
        dir.join("zones").join(format!("{zone}.zone")),
        zone_file(zone, serial, body),
    )
    .expect("write zone file");
}

fn config<'a>(dir: &Path, port: u16, zones: impl Iterator<Item = &'a String>) -> String {
    let d = dir.display();
    let mut conf = format!(
        r#"server:
    rundir: "{d}/run"
    pidfile: "{d}/run/knot.pid"
    listen: 127.0.0.1@{port}
    udp-workers: 2
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{d}/storage"
log:
  - target: stderr
    any: warning
control:
    listen: "{d}/run/knot.sock"
mod-stats:
  - id: stats
    request-protocol: on
    server-operation: on
    response-code: on
template:
  - id: default
    storage: "{d}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
    global-module: mod-stats/stats
zone:
"#
    );
    for z in zones {
        conf.push_str(&format!("  - domain: {z}\n"));
    }
    conf
}
