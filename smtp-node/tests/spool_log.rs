//! The log spool: durability across reopen, group commit, torn tails, compaction and
//! fatal write failures. Kill -9 is in `spool_kill9.rs`, a test binary of its own: it
//! starts child processes, and a child forked while a test here holds a spool open keeps
//! that spool's `LOCK` (a `flock` belongs to the open file, which the child shares until
//! it execs), so a reopen here right after `drop` could find it still locked.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use smtp_node::spool::*;

fn meta(id: MessageId, rcpts: usize, size: u64) -> MessageMeta {
    MessageMeta {
        id,
        received_at: now_millis(),
        size,
        envelope: Envelope {
            mail_from: "sender@example.com".into(),
            recipients: (0..rcpts)
                .map(|i| Recipient::new(format!("r{i}@example.net")))
                .collect(),
            body_type: BodyType::EightBitMime,
            smtputf8: false,
            ret: Ret::Full,
            env_id: None,
            client_ip: None,
            helo: Some("client.example".into()),
            auth_user: None,
        },
        ownership: Ownership {
            owner: NodeId("n1".into()),
            replicas: vec![NodeId("n2".into())],
            epoch: 0,
            copy: None,
        },
    }
}

async fn store(spool: &LogSpool, rcpts: usize, body: &[u8]) -> MessageId {
    let id = MessageId::new();
    spool
        .store(
            meta(id, rcpts, body.len() as u64),
            Bytes::copy_from_slice(body),
        )
        .await
        .unwrap();
    id
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn bodies_round_trip_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    let eight_bit = "Subject: caf\u{e9}\r\n\r\n\u{fc}ber \u{2603}\r\n.\r\n"
        .as_bytes()
        .to_vec();
    let long_line = [b"x".repeat(998), b"\r\n".to_vec()].concat();
    let bodies: Vec<Vec<u8>> = vec![eight_bit, long_line, Vec::new(), vec![0u8, 255, 13, 10, 46]];
    let mut ids = Vec::new();
    for b in &bodies {
        ids.push(store(&spool, 1, b).await);
    }
    drop(spool);
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    for (id, b) in ids.iter().zip(&bodies) {
        assert_eq!(spool.load_body(*id).await.unwrap().as_ref(), b.as_slice());
        assert_eq!(
            spool.load_meta(*id).await.unwrap().unwrap().size,
            b.len() as u64
        );
    }
    assert_eq!(spool.list().await.unwrap().len(), 4);
}

#[tokio::test]
async fn updates_ownership_and_removal_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    let kept = store(&spool, 2, b"kept").await;
    let gone = store(&spool, 1, b"gone").await;
    let reply = Reply {
        code: 250,
        enhanced: Some("2.0.0".into()),
        text: "ok".into(),
    };
    let updated = spool
        .update(
            kept,
            vec![RecipientUpdate {
                index: 1,
                state: RecipientState::Delivered {
                    at: 7,
                    reply: reply.clone(),
                },
                attempt: Some(Attempt {
                    at: 7,
                    host: Some("mx.example.net".into()),
                    reply: reply.clone(),
                }),
            }],
        )
        .await
        .unwrap();
    assert!(updated.envelope.recipients[1].state.is_done());
    let new_owner = Ownership {
        owner: NodeId("n2".into()),
        replicas: vec![],
        epoch: 1,
        copy: None,
    };
    spool.set_ownership(kept, new_owner.clone()).await.unwrap();
    spool.remove(gone).await.unwrap();
    drop(spool);

    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    let all = spool.list().await.unwrap();
    assert_eq!(all.len(), 1, "the removed message stays removed");
    let m = &all[0];
    assert_eq!(m.id, kept);
    assert_eq!(m.ownership, new_owner);
    assert_eq!(m.envelope.recipients[0].state, RecipientState::Pending);
    assert_eq!(
        m.envelope.recipients[1].state,
        RecipientState::Delivered { at: 7, reply }
    );
    assert_eq!(m.envelope.recipients[1].attempts.len(), 1);
    assert!(matches!(
        spool.update(gone, vec![]).await,
        Err(SpoolError::NotFound(_))
    ));
}

/// A replica's commit is written without a sync of its own and becomes durable with the
/// next synced write.
#[tokio::test]
async fn a_commit_rides_on_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let syncs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let options = || {
        let syncs = syncs.clone();
        LogSpoolOptions {
            on_batch: Some(Arc::new(move |n| syncs.lock().unwrap().push(n))),
            segment_bytes: 2048,
            ..LogSpoolOptions::default()
        }
    };
    let spool = LogSpool::open(dir.path(), options()).unwrap();
    let held = store(&spool, 1, b"held").await;
    let committed = |epoch| Ownership {
        owner: NodeId("n1".into()),
        replicas: vec![NodeId("n2".into())],
        epoch,
        copy: None,
    };
    spool.commit_copy(held, committed(1)).await.unwrap();
    assert_eq!(
        spool.load_meta(held).await.unwrap().unwrap().ownership,
        committed(1),
        "applied at once"
    );
    assert_eq!(*syncs.lock().unwrap(), vec![1], "no sync of its own");
    store(&spool, 1, b"next").await;
    assert_eq!(
        *syncs.lock().unwrap(),
        vec![1, 2],
        "the next store's sync makes the commit durable too"
    );

    // Into later segments, over rotations.
    spool.commit_copy(held, committed(2)).await.unwrap();
    for _ in 0..10 {
        store(&spool, 1, &[b'x'; 600]).await;
    }
    assert!(segments(dir.path()).len() > 2);
    assert_eq!(
        syncs.lock().unwrap().iter().sum::<usize>(),
        spool.len() + 2,
        "every operation made durable once: the stores and both commits"
    );
    drop(spool);
    let spool = LogSpool::open(dir.path(), options()).unwrap();
    assert_eq!(
        spool.load_meta(held).await.unwrap().unwrap().ownership,
        committed(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stores_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let batches = Arc::new(AtomicUsize::new(0));
    let largest = Arc::new(AtomicUsize::new(0));
    let (b, l) = (batches.clone(), largest.clone());
    let options = LogSpoolOptions {
        on_batch: Some(Arc::new(move |n| {
            b.fetch_add(1, Ordering::Relaxed);
            l.fetch_max(n, Ordering::Relaxed);
        })),
        ..LogSpoolOptions::default()
    };
    let spool = LogSpool::open(dir.path(), options).unwrap();
    let mut tasks = Vec::new();
    for t in 0..20 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                ids.push(store(&spool, 1, format!("task {t} message {i}").as_bytes()).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(ids.len(), 200);
    assert!(
        largest.load(Ordering::Relaxed) > 1,
        "no sync was shared between writers"
    );
    assert!(batches.load(Ordering::Relaxed) < 200);
    drop(spool);
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    assert_eq!(spool.list().await.unwrap().len(), 200);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    for i in 0..3 {
        store(&spool, 1, format!("message {i}").as_bytes()).await;
    }
    drop(spool);
    let seg = segments(dir.path()).pop().unwrap();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A record header promising more than was written, then garbage.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&500u32.to_le_bytes()).unwrap();
    f.write_all(&[1, 2, 3, 4, 1, b'{', b'"']).unwrap();
    drop(f);

    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    assert_eq!(spool.list().await.unwrap().len(), 3);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        good_len,
        "the torn tail was not cut"
    );
    store(&spool, 1, b"after the cut").await;
    drop(spool);
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    assert_eq!(spool.list().await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_corrupt_record_ends_replay_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    let first = store(&spool, 1, b"first").await;
    store(&spool, 1, b"second").await;
    drop(spool);
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let last = data.len() - 2;
    data[last] ^= 0xff; // flip a byte inside the second record's body
    std::fs::write(&seg, &data).unwrap();
    let spool = LogSpool::open(dir.path(), LogSpoolOptions::default()).unwrap();
    let ids: Vec<_> = spool
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        ids,
        vec![first],
        "a record failing its checksum must not be listed"
    );
}

/// Segments roll over; spent ones are deleted oldest first, never one that still holds a
/// live message or precedes one; a restart finds exactly the live messages.
#[tokio::test]
async fn spent_segments_are_deleted_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let small = || LogSpoolOptions {
        segment_bytes: 2048,
        ..LogSpoolOptions::default()
    };
    let spool = LogSpool::open(dir.path(), small()).unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(store(&spool, 1, format!("{i:0>300}").as_bytes()).await);
    }
    let before = segments(dir.path()).len();
    assert!(before > 5, "segments did not roll over: {before}");
    // Keep one message from the middle; remove the rest, updating the keeper on the way
    // so its state spans several segments.
    let keeper = ids[20];
    for (i, id) in ids.iter().enumerate() {
        if *id != keeper {
            spool.remove(*id).await.unwrap();
        }
        if i % 10 == 0 {
            spool
                .set_ownership(
                    keeper,
                    Ownership {
                        owner: NodeId("n1".into()),
                        replicas: vec![],
                        epoch: i as u64,
                        copy: None,
                    },
                )
                .await
                .unwrap();
        }
    }
    let after = segments(dir.path()).len();
    assert!(
        after < before,
        "no spent segment was deleted ({before} -> {after})"
    );
    drop(spool);
    let spool = LogSpool::open(dir.path(), small()).unwrap();
    let all = spool.list().await.unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), vec![keeper]);
    assert_eq!(all[0].ownership.epoch, 30);
    assert_eq!(
        spool.load_body(keeper).await.unwrap().as_ref(),
        format!("{:0>300}", 20).as_bytes()
    );
    spool.remove(keeper).await.unwrap();
    store(&spool, 1, b"next").await;
    assert!(
        segments(dir.path()).len() <= 2,
        "segments left after everything old was removed: {:?}",
        segments(dir.path())
    );
}

/// One message deferred for long while traffic flows past it: the spool relocates it
/// out of the otherwise dead segments, so the disk holds a few segments, not every
/// segment written since; its state and body survive the moves and a reopen.
#[tokio::test]
async fn a_deferred_message_does_not_pin_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let relocated = Arc::new(AtomicUsize::new(0));
    let counter = relocated.clone();
    let small = move || LogSpoolOptions {
        segment_bytes: 2048,
        on_compact: Some(Arc::new({
            let counter = counter.clone();
            move |n| {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        })),
        ..LogSpoolOptions::default()
    };
    let spool = LogSpool::open(dir.path(), small()).unwrap();
    let deferred = store(&spool, 2, b"deferred body\r\n").await;
    let mut most = 0;
    for i in 0..400u64 {
        let id = store(&spool, 1, format!("{i:0>300}").as_bytes()).await;
        spool.remove(id).await.unwrap();
        if i % 50 == 0 {
            let update = RecipientUpdate {
                index: 0,
                state: RecipientState::Deferred { until: i },
                attempt: Some(Attempt {
                    at: i,
                    host: Some("mx.example.net".into()),
                    reply: Reply {
                        code: 451,
                        enhanced: Some("4.4.1".into()),
                        text: format!("attempt {i}"),
                    },
                }),
            };
            spool.update(deferred, vec![update]).await.unwrap();
        }
        most = most.max(segments(dir.path()).len());
    }
    // Segments of 2 KiB at ~330 bytes per store: 400 of them wrote about 65 segments.
    assert!(most <= 8, "up to {most} segment files for one live message");
    // Only the deferred message is ever live when compaction runs: each step moves it.
    let moves = relocated.load(Ordering::Relaxed);
    assert!(moves >= 10, "the deferred message was moved {moves} times");
    drop(spool);
    let spool = LogSpool::open(dir.path(), small()).unwrap();
    let all = spool.list().await.unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), vec![deferred]);
    let first = &all[0].envelope.recipients[0];
    assert_eq!(first.state, RecipientState::Deferred { until: 350 });
    let attempts: Vec<u64> = first.attempts.iter().map(|a| a.at).collect();
    assert_eq!(attempts, (0..400).step_by(50).collect::<Vec<u64>>());
    assert_eq!(all[0].envelope.recipients[1].state, RecipientState::Pending);
    assert_eq!(
        spool.load_body(deferred).await.unwrap().as_ref(),
        b"deferred body\r\n"
    );
}

/// A write the spool cannot make durable (here its directory vanished, so no new segment
/// can be created) poisons the writer: that write and every later one are refused, even
/// once the disk would take them again, and the health channel says so.
#[tokio::test]
async fn a_fatal_write_failure_refuses_every_later_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let options = LogSpoolOptions {
        // Every batch starts a new segment.
        segment_bytes: 1,
        ..LogSpoolOptions::default()
    };
    let spool = LogSpool::open(&dir, options).unwrap();
    let kept = store(&spool, 1, b"acknowledged").await;
    let mut health = spool.health();
    assert!(matches!(*health.borrow_and_update(), SpoolHealth::Ok));

    std::fs::remove_dir_all(&dir).unwrap();
    let refused = spool
        .store(meta(MessageId::new(), 1, 4), Bytes::from_static(b"lost"))
        .await;
    assert!(matches!(refused, Err(SpoolError::Failed(_))), "{refused:?}");
    assert!(matches!(
        *health.borrow_and_update(),
        SpoolHealth::Failed(_)
    ));

    std::fs::create_dir_all(&dir).unwrap();
    let refused = spool
        .store(meta(MessageId::new(), 1, 4), Bytes::from_static(b"lost"))
        .await;
    assert!(matches!(refused, Err(SpoolError::Failed(_))), "{refused:?}");
    assert!(matches!(
        spool.remove(kept).await,
        Err(SpoolError::Failed(_))
    ));
}
