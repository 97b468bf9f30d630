//! Destination SMTP servers: Postfix's smtp-sink and an aiosmtpd script.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

/// A message as smtp-sink captured it: its envelope lines and the message.
#[derive(Debug, Clone)]
pub struct SinkMessage {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The MAIL and RCPT arguments as sent, parameters included.
    pub mail_args: String,
    pub rcpt_args: Vec<String>,
    /// `SMTP` after HELO, `ESMTP` after EHLO.
    pub client_proto: String,
    /// The message as received (smtp-sink writes LF line ends).
    pub data: String,
}

/// Postfix's smtp-sink, capturing each transaction to a file.
pub struct SmtpSink {
    child: Child,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start(ip: IpAddr, port: u16) -> Self {
        Self::start_with(ip, port, &[])
    }

    /// With extra smtp-sink options, e.g. `-e` (no ESMTP).
    pub fn start_with(ip: IpAddr, port: u16, options: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let template = format!("{}/%M.", dir.path().display());
        let mut child = Command::new("smtp-sink")
            .args(["-u", "root", "-d", &template])
            .args(options)
            .arg(format!("{ip}:{port}"))
            .arg("100")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("smtp-sink must be installed (Debian package postfix)");
        wait_listening(&mut child, ip, port);
        Self { child, dir }
    }

    /// Stops smtp-sink, then reads what it captured: a transaction it was still writing
    /// is complete on disk by then.
    pub fn stop(mut self) -> Vec<SinkMessage> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.messages()
    }

    /// Whether the smtp-sink process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Messages captured so far (complete files only).
    pub fn messages(&self) -> Vec<SinkMessage> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter_map(|text| parse_sink_dump(&text))
            .collect()
    }
}

/// Parses an smtp-sink dump: X-Mail-Args/X-Rcpt-Args lines, a three-line Received
/// header, the message, and a final empty line that smtp-sink adds. A file still being
/// written (no message yet) yields `None`.
fn parse_sink_dump(text: &str) -> Option<SinkMessage> {
    let mut mail_args = None;
    let mut rcpt_args = Vec::new();
    let mut client_proto = String::new();
    let mut lines = text.split_inclusive('\n');
    for line in lines.by_ref() {
        if let Some(proto) = line.strip_prefix("X-Client-Proto: ") {
            client_proto = proto.trim_end().to_string();
        } else if let Some(args) = line.strip_prefix("X-Mail-Args: ") {
            mail_args = Some(args.trim_end().to_string());
        } else if let Some(args) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpt_args.push(args.trim_end().to_string());
        } else if line.starts_with("Received: ") {
            break;
        }
    }
    // The two continuation lines of smtp-sink's Received header.
    let mut rest: String = lines.collect();
    while rest.starts_with(char::is_whitespace) && !rest.starts_with('\n') {
        rest = rest
            .split_once('\n')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
    }
    if rest.is_empty() {
        return None;
    }
    let mail_args = mail_args?;
    Some(SinkMessage {
        mail_from: angle(&mail_args),
        rcpt_to: rcpt_args.iter().map(|a| angle(a)).collect(),
        mail_args,
        rcpt_args,
        client_proto,
        data: rest,
    })
}

fn angle(args: &str) -> String {
    let start = args.find('<').map(|i| i + 1).unwrap_or(0);
    let end = args[start..]
        .find('>')
        .map(|i| i + start)
        .unwrap_or(args.len());
    args[start..end].trim().to_string()
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message as the aiosmtpd script recorded it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PyMessage {
    pub connection: u64,
    pub tls: bool,
    pub auth: Option<String>,
    pub helo: Option<String>,
    pub mail_from: String,
    pub mail_options: Vec<String>,
    pub rcpt_tos: Vec<String>,
    pub data: String,
}

impl PyMessage {
    pub fn bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.data)
            .expect("base64 message")
    }
}

/// Options of the aiosmtpd destination.
#[derive(Default, Clone)]
pub struct PyOptions {
    /// (address, reply, times; `None` = always)
    pub refuse: Vec<(String, String, Option<u32>)>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: TLS from the first byte instead of STARTTLS.
    pub implicit_tls: bool,
    /// With `tls`: offer STARTTLS but only with TLS 1.1, which every handshake refuses.
    pub broken_tls: bool,
    pub auth: Option<(String, String)>,
    pub data_delay: Option<Duration>,
    /// Closes connections idle this long, with a 421 first.
    pub idle_timeout: Option<Duration>,
}

pub struct PySink {
    child: Child,
    dir: tempfile::TempDir,
}

impl PySink {
    pub fn start(ip: IpAddr, port: u16, options: PyOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/smtp_server.py");
        let mut command = Command::new("/usr/bin/python3");
        command
            .args(["-W", "ignore::DeprecationWarning"])
            .arg(script)
            .arg("--listen")
            .arg(format!("{ip}:{port}"))
            .arg("--dir")
            .arg(dir.path());
        for (address, reply, times) in &options.refuse {
            let rule = match times {
                Some(n) => format!("{address}={reply}={n}"),
                None => format!("{address}={reply}"),
            };
            command.arg("--refuse").arg(rule);
        }
        if let Some((cert, key)) = &options.tls {
            command.arg("--tls").arg(cert).arg(key);
            if options.implicit_tls {
                command.arg("--implicit-tls");
            }
            if options.broken_tls {
                command.arg("--broken-tls");
            }
        }
        if let Some((user, password)) = &options.auth {
            command.arg("--auth").arg(format!("{user}:{password}"));
        }
        if let Some(delay) = options.data_delay {
            command
                .arg("--data-delay")
                .arg(delay.as_secs_f64().to_string());
        }
        if let Some(idle) = options.idle_timeout {
            command
                .arg("--idle-timeout")
                .arg(idle.as_secs_f64().to_string());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 with aiosmtpd (Debian package python3-aiosmtpd)");
        let ready = dir.path().join("ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            assert_running(&mut child, "aiosmtpd");
            assert!(Instant::now() < deadline, "aiosmtpd did not start in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir }
    }

    pub fn messages(&self) -> Vec<PyMessage> {
        let mut numbered: Vec<(u64, PyMessage)> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let n: u64 = name
                            .strip_prefix("msg-")?
                            .strip_suffix(".json")?
                            .parse()
                            .ok()?;
                        let text = std::fs::read_to_string(e.path()).ok()?;
                        Some((n, serde_json::from_str(&text).expect("message record")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        numbered.sort_by_key(|(n, _)| *n);
        numbered.into_iter().map(|(_, m)| m).collect()
    }
}

impl Drop for PySink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(child: &mut Child, ip: IpAddr, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200))
        .is_err()
    {
        assert_running(child, "smtp-sink");
        assert!(
            Instant::now() < deadline,
            "{ip}:{port} did not start listening in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails at once when a peer died while starting (e.g. its port was taken).
fn assert_running(child: &mut Child, what: &str) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!("{what} exited while starting: {status}");
    }
}
