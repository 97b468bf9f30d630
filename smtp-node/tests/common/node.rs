//! The smtp-node binary as a test peer: a config written to a temp dir, the process
//! started, stopped with SIGTERM or killed with SIGKILL, and a raw SMTP client for
//! byte-level protocol checks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, ip};

/// Everything a test may want to change in the generated config.
#[derive(Clone)]
pub struct NodeSettings {
    /// `node:` block: the node's name and data centre.
    pub identity_yaml: String,
    /// Extra top-level YAML appended verbatim (e.g. a `limits:` block).
    pub extra_yaml: String,
    /// `relay:` block; default allows loopback for example.com.
    pub relay_yaml: String,
    /// `delivery:` block; default: smarthost on port 9 (refused), so mail stays queued.
    pub delivery_yaml: String,
    /// `tls:` certificate files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Add a submission listener (requireAuth) and an implicit-TLS listener.
    pub submission: bool,
    /// `http.adminTokenFile`: turns the admin API on.
    pub admin_token_file: Option<PathBuf>,
    /// Run in this network namespace, listening on this address (SMTP on 2525, HTTP on
    /// 8080: a fresh namespace has every port free).
    pub netns: Option<(String, IpAddr)>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            identity_yaml: "node: {name: test-0}\n".to_owned(),
            extra_yaml: String::new(),
            relay_yaml: "relay: {allowedNetworks: [127.0.0.0/8], domains: [example.com]}\n"
                .to_owned(),
            delivery_yaml:
                "delivery: {smarthost: {host: 127.0.0.1, port: 9}, retrySchedule: [1h]}\n"
                    .to_owned(),
            tls: None,
            submission: false,
            admin_token_file: None,
            netns: None,
        }
    }
}

pub struct Node {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub submission: Option<SocketAddr>,
    pub implicit: Option<SocketAddr>,
    pub http: SocketAddr,
    log: PathBuf,
    netns: Option<String>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_smtp-node")
}

impl Node {
    pub fn start(settings: NodeSettings) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, settings)
    }

    /// Starts with the spool (and config) in `dir`, e.g. the dir of a killed node.
    pub fn start_in(dir: tempfile::TempDir, settings: NodeSettings) -> Self {
        let loopback = ip("127.0.0.1");
        let port = |_: ()| free_port(&[loopback], false);
        let (smtp, http) = match &settings.netns {
            Some((_, host)) => (SocketAddr::new(*host, 2525), SocketAddr::new(*host, 8080)),
            None => (
                SocketAddr::new(loopback, port(())),
                SocketAddr::new(loopback, port(())),
            ),
        };
        let (submission, implicit) = if settings.submission {
            (
                Some(SocketAddr::new(loopback, port(()))),
                Some(SocketAddr::new(loopback, port(()))),
            )
        } else {
            (None, None)
        };
        let mut yaml = format!(
            "hostname: relay.test\n{}listeners:\n  - {{name: relay, address: \"{smtp}\"}}\n",
            settings.identity_yaml
        );
        if let (Some(sub), Some(imp)) = (submission, implicit) {
            yaml.push_str(&format!(
                "  - {{name: submission, address: \"{sub}\", requireAuth: true}}\n  - {{name: implicitTls, address: \"{imp}\", tls: implicit, requireAuth: true}}\n"
            ));
        }
        let admin = settings
            .admin_token_file
            .as_ref()
            .map(|f| format!(", adminTokenFile: \"{}\"", f.display()))
            .unwrap_or_default();
        yaml.push_str(&format!(
            "http: {{address: \"{http}\"{admin}}}\nspool: {{dir: \"{}\"}}\n",
            dir.path().join("spool").display()
        ));
        if let Some((cert, key)) = &settings.tls {
            yaml.push_str(&format!(
                "tls: {{certFile: \"{}\", keyFile: \"{}\"}}\n",
                cert.display(),
                key.display()
            ));
        }
        yaml.push_str(&settings.relay_yaml);
        yaml.push_str(&settings.delivery_yaml);
        yaml.push_str(&settings.extra_yaml);
        let config = dir.path().join("smtp-node.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let log = dir.path().join(format!("node-{}.log", smtp.port()));
        let mut node = Self {
            child: None,
            dir,
            config,
            smtp,
            submission,
            implicit,
            http,
            log,
            netns: settings.netns.as_ref().map(|(ns, _)| ns.clone()),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        // Appended, so a restarted node's log keeps what happened before.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = match &self.netns {
            // `ip netns exec` execs the node in place: the pid is the node's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, binary()]);
                c
            }
            None => Command::new(binary()),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "smtp_node=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("smtp-node binary");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("smtp-node exited with {status}:\n{}", self.log_text());
            }
            if http_get(self.http, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "smtp-node not ready in time:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The value of one sample line of `/metrics` (name with labels), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").expect("metrics");
        body.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// SIGTERM, then waits (at most `limit`) for the exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.wait_exit(limit)
    }

    /// Waits (at most `limit`) for the process to exit; kills it and fails otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("smtp-node did not exit in time:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same node again on the same ports and spool.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// A minimal HTTP/1.0 request without a body, with a bearer token if given.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

/// A raw SMTP client: sends exact bytes, reads whole (multi-line) replies.
pub struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Self {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Connects and reads the greeting.
    pub fn greeted(addr: SocketAddr) -> Self {
        let mut raw = Self::connect(addr);
        let greeting = raw.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    /// Reads one reply, all its lines joined with `\n` (CRLF removed). Empty string when
    /// the server closed the connection.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        lines.join("\n")
    }

    /// Sends a command line (CRLF added) and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// The socket, for a TLS handshake after STARTTLS (nothing may be buffered).
    pub fn into_stream(self) -> TcpStream {
        assert!(self.reader.buffer().is_empty(), "unread input before TLS");
        self.writer
    }

    /// True when the server closed the connection (EOF on read).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }

    /// EHLO, MAIL, RCPT for a transaction ready for DATA or BDAT.
    pub fn start_mail(&mut self, from: &str, to: &str) {
        assert!(self.cmd("EHLO client.test").starts_with("250"));
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250 2.1.0"), "{r}");
        let r = self.cmd(&format!("RCPT TO:<{to}>"));
        assert!(r.starts_with("250 2.1.5"), "{r}");
    }
}

/// Runs a Python 3 snippet with Debian's interpreter; returns (exit ok, stdout+stderr).
pub fn python(script: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Runs swaks with a timeout; returns (exit ok, transcript).
pub fn swaks(args: &[&str]) -> (bool, String) {
    let output = Command::new("timeout")
        .arg("60")
        .arg("swaks")
        .args(args)
        .output()
        .expect("swaks (Debian package swaks)");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The queue ids (`queued as <id>`) in a transcript.
pub fn queued_ids(text: &str) -> Vec<String> {
    text.match_indices("queued as ")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect()
        })
        .collect()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
