//! A real authoritative DNS server (Knot) on a free loopback port, serving zones written
//! by the test.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// One zone: its origin and its records in zone-file syntax, relative to the origin.
/// An SOA and NS record are added.
pub struct Zone {
    pub origin: String,
    pub records: Vec<String>,
}

impl Zone {
    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.trim_end_matches('.').to_string(),
            records: Vec::new(),
        }
    }

    pub fn record(mut self, line: impl Into<String>) -> Self {
        self.records.push(line.into());
        self
    }

    /// A TXT record whose value may exceed 255 bytes: split into character-strings.
    pub fn txt(self, name: &str, value: &str) -> Self {
        let parts: Vec<String> = value
            .as_bytes()
            .chunks(200)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        self.record(format!("{name} TXT {}", parts.join(" ")))
    }
}

pub struct KnotServer {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl KnotServer {
    pub fn start(zones: Vec<Zone>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port(&["127.0.0.1".parse().unwrap()], true);
        for sub in ["run", "db", "zones"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let mut conf = format!(
            "server:\n    rundir: \"{run}\"\n    listen: 127.0.0.1@{port}\n\
             log:\n  - target: stderr\n    any: warning\n\
             database:\n    storage: \"{db}\"\n\
             template:\n  - id: default\n    storage: \"{zones}\"\n    file: \"%s.zone\"\n\
             zone:\n",
            run = dir.path().join("run").display(),
            db = dir.path().join("db").display(),
            zones = dir.path().join("zones").display(),
        );
        for zone in &zones {
            conf.push_str(&format!("  - domain: {}\n", zone.origin));
            write_zone(&dir.path().join("zones"), zone);
        }
        let conf_path = dir.path().join("knot.conf");
        std::fs::write(&conf_path, conf).expect("write knot.conf");
        let mut child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("knotd must be installed (Debian package knot)");
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("knotd exited while starting: {status}");
        }
        let server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        for zone in &zones {
            server.wait_for_zone(&zone.origin);
        }
        server
    }

    /// Waits until the zone answers its SOA query, i.e. is loaded.
    fn wait_for_zone(&self, origin: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("kdig")
                .arg(format!("@{}", self.addr.ip()))
                .arg("-p")
                .arg(self.addr.port().to_string())
                .args(["+short", "+time=1", "+retry=0", "SOA"])
                .arg(origin)
                .output()
                .expect("kdig must be installed (Debian package knot-dnsutils)");
            if out.status.success() && !out.stdout.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Knot did not serve zone {origin} in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn write_zone(dir: &Path, zone: &Zone) {
    let mut text = format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 1\n@ NS ns.{origin}.\nns A 127.0.0.1\n",
        origin = zone.origin
    );
    for record in &zone.records {
        text.push_str(record);
        text.push('\n');
    }
    std::fs::write(dir.join(format!("{}.zone", zone.origin)), text).expect("write zone");
}

impl Drop for KnotServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
