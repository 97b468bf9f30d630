//! A node whose essential part fails for real stops accepting, turns not ready, says
//! which task failed and exits non-zero; a restart on the same spool delivers
//! everything it acknowledged. Running out of spool space is back-pressure instead.
//!
//! The spool lives on a file system the test mounts (root is needed): an ext4 image on a
//! loop device that the test shuts down with `EXT4_IOC_SHUTDOWN`, after which every
//! write and sync fails with EIO, as on a dying disk; and a 4 MiB tmpfs for ENOSPC.
//! (A read-only remount is refused while the spool holds its files open for writing.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{Node, NodeSettings, Raw, http_get, python};
use common::peers::SmtpSink;
use common::{free_port, ip};

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A file system mounted for one test; unmounted (and its loop device detached) on drop,
/// also when the test fails.
struct Mount {
    dir: tempfile::TempDir,
    loop_device: Option<String>,
}

impl Mount {
    fn point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn tmpfs(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = Self {
            dir,
            loop_device: None,
        };
        std::fs::create_dir(mount.point()).expect("mount point");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path(&mount.point()),
            ],
        );
        mount
    }

    fn ext4(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.img");
        run("truncate", &["-s", size, path(&image)]);
        run("mkfs.ext4", &["-q", path(&image)]);
        let device = run("losetup", &["--find", "--show", path(&image)]);
        let mount = Self {
            dir,
            loop_device: Some(device),
        };
        std::fs::create_dir(mount.point()).expect("mount point");
        mount.mount_device();
        mount
    }

    fn mount_device(&self) {
        let device = self.loop_device.as_deref().expect("a loop device");
        run("mount", &[device, path(&self.point())]);
    }

    /// From now on every write and sync on the file system fails with EIO; what was
    /// synced before stays (the journal is not flushed, as in a crash).
    fn shut_down(&self) {
        let (ok, out) = python(
            "import fcntl, os, struct, sys\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))  # EXT4_IOC_SHUTDOWN, NOLOGFLUSH\n",
            &[path(&self.point())],
        );
        assert!(ok, "EXT4_IOC_SHUTDOWN: {out}");
    }

    /// Mounts the file system again after a shutdown (its processes must be gone).
    fn remount(&self) {
        run("umount", &[path(&self.point())]);
        self.mount_device();
    }

    /// A directory on the file system for the node's spool, linked from where the
    /// node's config puts it (`<dir>/spool`); the node's log stays off the file system.
    fn spool_for(&self, node_dir: &Path) {
        let spool = self.point().join("spool");
        std::fs::create_dir_all(&spool).expect("spool dir");
        std::os::unix::fs::symlink(&spool, node_dir.join("spool")).expect("spool link");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let point = self.point();
        let unmounted = Command::new("umount")
            .arg(&point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&point).status();
        }
        if let Some(device) = &self.loop_device {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
    }
}

fn readyz(node: &Node) -> Option<(u16, String)> {
    http_get(node.http, "/readyz")
}

/// Polls until `check` holds, at most [`WAIT`].
fn wait_until(what: &str, node: &Node, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One message on its own connection; returns the reply to the end of data.
fn send(addr: SocketAddr, subject: &str) -> String {
    let mut client = Raw::greeted(addr);
    client.start_mail("sender@example.com", "rcpt@dest.test");
    let r = client.cmd("DATA");
    assert!(r.starts_with("354"), "{r}");
    client.cmd(&format!(
        "Subject: {subject}\r\n\r\nbody of {subject}\r\nEND-OF-MESSAGE {subject}\r\n."
    ))
}

/// Like [`send`], for a node that may be going down: any reply that ends the attempt
/// (the server's last one, or an empty string when it refused or closed the
/// connection).
fn try_send(addr: SocketAddr, subject: &str) -> String {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let (Ok(reader), mut writer) = (stream.try_clone(), stream) else {
        return String::new();
    };
    let mut reader = BufReader::new(reader);
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    let steps: [(&str, String); 5] = [
        ("220", String::new()),
        ("250", "EHLO client.test\r\n".to_owned()),
        ("250", "MAIL FROM:<sender@example.com>\r\n".to_owned()),
        ("250", "RCPT TO:<rcpt@dest.test>\r\n".to_owned()),
        ("354", "DATA\r\n".to_owned()),
    ];
    for (expected, command) in steps {
        if writer.write_all(command.as_bytes()).is_err() {
            return String::new();
        }
        let r = reply();
        if !r.starts_with(expected) {
            return r;
        }
    }
    let body = format!("Subject: {subject}\r\n\r\nEND-OF-MESSAGE {subject}\r\n.\r\n");
    if writer.write_all(body.as_bytes()).is_err() {
        return String::new();
    }
    reply()
}

fn subjects(sink: &SmtpSink) -> Vec<String> {
    sink.messages()
        .iter()
        .filter(|m| m.data.contains("END-OF-MESSAGE"))
        .filter_map(|m| {
            m.data
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .map(|s| s.trim().to_owned())
        })
        .collect()
}

fn node_on(mount: &Mount, sink_port: u16) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    mount.spool_for(dir.path());
    Node::start_in(
        dir,
        NodeSettings {
            delivery_yaml: format!(
                "delivery: {{smarthost: {{host: 127.0.0.1, port: {sink_port}, tls: none}}, retrySchedule: [1s]}}\n"
            ),
            extra_yaml: "limits: {shutdownTimeout: 5s}\n".to_owned(),
            ..NodeSettings::default()
        },
    )
}

/// EIO under the running node: the spool refuses the write and every later one, the
/// node turns not ready, refuses connections, answers 421 to the transaction in
/// flight, names the spool task and exits 2; after a restart on the repaired disk
/// everything acknowledged before is delivered.
#[test]
fn a_failed_disk_stops_the_node_and_a_restart_delivers_what_it_acknowledged() {
    let disk = Mount::ext4("32M");
    // Nothing listens there yet: the mail stays queued until after the restart.
    let sink_port = free_port(&[ip("127.0.0.1")], false);
    let mut node = node_on(&disk, sink_port);

    let acknowledged: Vec<String> = (0..5)
        .map(|n| {
            let subject = format!("before-{n}");
            let reply = send(node.smtp, &subject);
            assert!(reply.starts_with("250 2.0.0"), "{reply}");
            subject
        })
        .collect();
    // A transaction in flight when the disk fails.
    let mut in_flight = Raw::greeted(node.smtp);
    in_flight.start_mail("sender@example.com", "rcpt@dest.test");
    assert!(in_flight.cmd("DATA").starts_with("354"));
    in_flight.send(b"Subject: in-flight\r\n\r\nhalf of a message\r\n");

    disk.shut_down();
    // The next write fails for real (this message's, or a delivery retry's if that
    // comes first): either way the message is refused, never acknowledged.
    let reply = try_send(node.smtp, "after-failure");
    assert!(
        reply.is_empty() || reply.starts_with("421 4.3.0"),
        "{reply}\n{}",
        node.log_text()
    );

    wait_until("/readyz to turn false", &node, || {
        readyz(&node).is_some_and(|(code, _)| code == 503)
    });
    let (_, body) = readyz(&node).expect("/readyz while stopping");
    assert!(body.contains("essential task spool failed"), "{body}");
    assert_eq!(
        node.metric("smtpnode_task_failures_total{task=\"spool\"}"),
        1.0
    );
    // No new sessions.
    wait_until("the listener to close", &node, || {
        TcpStream::connect_timeout(&node.smtp, Duration::from_secs(1)).is_err()
    });
    // The transaction in flight ends with 421, not 250.
    in_flight.send(b"rest of it\r\n.\r\n");
    let reply = in_flight.reply();
    assert!(reply.starts_with("421 4.3.0"), "{reply}");

    let status = node.wait_exit(WAIT);
    let log = node.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("essential task spool failed"), "{log}");
    assert!(log.contains("Input/output error"), "{log}");

    disk.remount();
    let sink = SmtpSink::start(ip("127.0.0.1"), sink_port);
    node.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let delivered = subjects(&sink);
        if acknowledged.iter().all(|s| delivered.contains(s)) {
            assert!(
                !delivered
                    .iter()
                    .any(|s| s == "after-failure" || s == "in-flight"),
                "a refused message was delivered: {delivered:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {delivered:?} of {acknowledged:?}:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until("the spool to drain", &node, || {
        node.metric("smtpnode_spool_messages") == 0.0
    });
    assert_eq!(node.terminate(WAIT).code(), Some(0), "{}", node.log_text());
}

/// A full spool refuses messages with 452 4.3.1 and turns the node not ready, without
/// failing it; once space is back it accepts and is ready again.
#[test]
fn a_full_spool_is_back_pressure_not_a_failure() {
    let disk = Mount::tmpfs("4m");
    let sink_port = free_port(&[ip("127.0.0.1")], false);
    let mut node = node_on(&disk, sink_port);

    // Fill the file system, leaving less than a message's worth.
    let filler = disk.point().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "status=none"])
        .arg(format!("of={}", path(&filler)))
        .status();
    let reply = send(node.smtp, "while-full");
    assert!(
        reply.starts_with("452 4.3.1"),
        "{reply}\n{}",
        node.log_text()
    );
    wait_until("/readyz to turn false", &node, || {
        readyz(&node).is_some_and(|(code, body)| code == 503 && body.contains("spool full"))
    });

    std::fs::remove_file(&filler).expect("free the space");
    let reply = send(node.smtp, "after-space");
    assert!(
        reply.starts_with("250 2.0.0"),
        "{reply}\n{}",
        node.log_text()
    );
    wait_until("/readyz to turn true", &node, || {
        readyz(&node).is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(
        node.metric("smtpnode_task_failures_total{task=\"spool\"}"),
        0.0
    );
    assert_eq!(node.terminate(WAIT).code(), Some(0), "{}", node.log_text());
}
