//! Crash-test child: stores messages from concurrent tasks into the spool at `argv[1]`
//! and prints each id only after `store` returned Ok. The spool tests kill it with
//! SIGKILL mid-load and check that every printed id survived.

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
        },
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: spool_crash DIR"))?;
    let spool = LogSpool::open(&dir, LogSpoolOptions::default())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageId>();
    for _ in 0..20 {
        let (spool, tx) = (spool.clone(), tx.clone());
        tokio::spawn(async move {
            loop {
                let id = MessageId::new();
                let body = body_for(&id);
                if spool
                    .store(meta(id, body.len() as u64), Bytes::from(body))
                    .await
                    .is_err()
                {
                    return;
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
