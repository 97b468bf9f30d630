//! Shared fixtures for unit tests.

use crate::spool::{BodyType, Envelope, MessageId, MessageMeta, NodeId, Ownership, Recipient, Ret};

/// A plain queued message owned by node `n1`.
pub fn test_meta(mail_from: &str, recipients: Vec<Recipient>) -> MessageMeta {
    MessageMeta {
        id: MessageId::new(),
        received_at: 1,
        size: 1,
        envelope: Envelope {
            mail_from: mail_from.into(),
            recipients,
            body_type: BodyType::SevenBit,
            smtputf8: false,
            ret: Ret::Full,
            env_id: None,
            client_ip: None,
            helo: None,
            auth_user: None,
        },
        ownership: Ownership {
            owner: NodeId("n1".into()),
            replicas: vec![],
            epoch: 1,
            copy: None,
        },
    }
}
