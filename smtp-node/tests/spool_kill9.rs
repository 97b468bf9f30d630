//! The log spool under kill -9: a child process stores messages and prints each id once
//! `store` returned; it is killed mid-write, and every printed id must be in the spool
//! when it is opened again, body intact.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtp_node::spool::*;

fn crash_child() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("spool_crash")
}

fn expected_body(id: &MessageId) -> Vec<u8> {
    format!("Subject: {id}\r\n\r\n{}\r\n", id.to_string().repeat(60)).into_bytes()
}

/// kill -9 in the middle of concurrent stores, three times over the same spool: every
/// id the child printed (it prints only after `store` returned) is there, body intact.
/// Then the same while most messages are removed again at once, so the spool keeps
/// compacting the few kept ones out of mostly dead segments when it is killed. One test,
/// so that no child is ever forked while another round holds a spool open here.
#[tokio::test]
async fn kill_9_loses_nothing_acknowledged_also_during_compaction() {
    kill_9_rounds(&[]).await;
    kill_9_rounds(&["churn"]).await;
}

async fn kill_9_rounds(args: &[&str]) {
    let child_bin = crash_child();
    assert!(
        child_bin.exists(),
        "{} is not built: run `cargo test -p smtp-node` (it builds examples), not a single --test target",
        child_bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<MessageId> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(&child_bin)
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => ids.push(l.parse::<MessageId>().unwrap()),
                    Err(_) => break,
                }
            }
            ids
        });
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(400 + 150 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let ids = reader.join().unwrap();
        assert!(
            !ids.is_empty(),
            "round {round}: the child stored nothing in {:?}",
            start.elapsed()
        );
        acknowledged.extend(ids);

        let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
        let listed: std::collections::HashSet<MessageId> = spool
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        for id in &acknowledged {
            assert!(
                listed.contains(id),
                "round {round}: acknowledged message {id} lost"
            );
        }
        for id in &listed {
            assert_eq!(
                spool.load_body(*id).await.unwrap().as_ref(),
                expected_body(id).as_slice()
            );
        }
        drop(spool);
    }
    assert!(
        acknowledged.len() > 100,
        "too little load to mean anything: {}",
        acknowledged.len()
    );
    if args.contains(&"churn") {
        // 19 of 20 stores were removed: without compaction the log would hold about
        // twenty times the kept bytes; with it, at most about four plus two segments.
        let kept: u64 = acknowledged
            .iter()
            .map(|id| expected_body(id).len() as u64 + 600)
            .sum();
        let disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(
            disk <= 6 * kept + 4 * 64 * 1024,
            "{disk} bytes of segments for {kept} bytes of kept messages"
        );
    }
}
