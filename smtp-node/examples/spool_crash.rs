//! Crash-test child: stores messages from concurrent tasks into the spool at `argv[1]`
//! and prints each id only after `store` returned Ok. The spool tests kill it with
//! SIGKILL mid-load and check that every printed id survived.
//!
//! With `churn` as `argv[2]` it uses 64 KiB segments and removes 19 of every 20 messages
//! right after storing them (printing only the ones it keeps), so the few kept messages
//! leave mostly dead segments behind and the spool compacts while it is killed.

use std::io::Write;

use bytes::Bytes;
use smtp_node::spool::{
    Envelope, LogSpool, LogSpoolOptions, MessageId, MessageMeta, NodeId, Ownership, Recipient,
    Spool,
};

/// The body a message with this id must have: lets the parent check bytes, not just ids.
pub fn body_for(id: &MessageId) -> Vec<u8> {
    format!("Subject: {id}\r\n\r\n{}\r\n", id.to_string().repeat(60)).into_bytes()
}

fn meta(id: MessageId, size: u64) -> MessageMeta {
    MessageMeta {
        id,
        received_at: 0,
        size,
        envelope: Envelope {
            mail_from: "a@example.com".into(),
            recipients: vec![Recipient::new("b@example.net")],
            body_type: Default::default(),
            smtputf8: false,
            ret: Default::default(),
            env_id: None,
            client_ip: None,
            helo: None,
            auth_user: None,
        },
        ownership: Ownership {
            owner: NodeId("crash".into()),
            replicas: vec![],
            epoch: 0,
            copy: None,
        },
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: spool_crash DIR [churn]"))?;
    let churn = std::env::args().nth(2).as_deref() == Some("churn");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let options = if churn {
        LogSpoolOptions {
            segment_bytes: 64 * 1024,
            ..LogSpoolOptions::default()
        }
    } else {
        LogSpoolOptions::default()
    };
    let spool = LogSpool::open(&dir, options)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageId>();
    for _ in 0..20 {
        let (spool, tx) = (spool.clone(), tx.clone());
        tokio::spawn(async move {
            for n in 0u64.. {
                let id = MessageId::new();
                let body = body_for(&id);
                if spool
                    .store(meta(id, body.len() as u64), Bytes::from(body))
                    .await
                    .is_err()
                {
                    return;
                }
                if churn && n % 20 != 0 {
                    if spool.remove(id).await.is_err() {
                        return;
                    }
                    continue;
                }
                if tx.send(id).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(id) = rx.recv().await {
        writeln!(out, "{id}")?;
        out.flush()?;
    }
    Ok(())
}
