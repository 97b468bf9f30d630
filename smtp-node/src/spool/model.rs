//! The queued-message data model.
//!
//! It is shaped for replication from the start: every message carries a globally unique id,
//! the replica set that holds it (owner first) and an ownership epoch, and every recipient
//! carries its own delivery state. A replica that takes a message over bumps the epoch and
//! delivers only the recipients that are not yet known to be done.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Globally unique message id. UUIDv7, so ids sort by arrival time and never collide
/// between nodes without coordination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::from_str(s).map(Self)
    }
}

/// A node's stable name (the pod name in a cluster, the configured name standalone).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds since the Unix epoch. Plain integers keep the on-disk encoding stable.
pub type UnixMillis = u64;

/// Current wall-clock time as [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Who holds a message and under which epoch. A replica acts on a message only when it is
/// the owner of the newest epoch it knows of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub owner: NodeId,
    /// Other holders in rank order: the first live one takes over when the owner is gone.
    pub replicas: Vec<NodeId>,
    pub epoch: u64,
    /// The replication record of a message held by several nodes (holders with their
    /// spool incarnations, the view epoch of the list, committed or not); absent on a
    /// standalone node. Decisions about it are `replication::View::duty`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<crate::replication::Copy>,
}

/// DSN `NOTIFY` parameter (RFC 3461), kept per recipient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
    pub never: bool,
}

/// DSN `RET` parameter: whether a bounce carries the full message or only its headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    #[default]
    Full,
    Headers,
}

/// Body type declared with `BODY=` on MAIL FROM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// An SMTP reply as a remote server (or this node) gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as `5.1.1`, when one was given.
    pub enhanced: Option<String>,
    pub text: String,
}

/// One delivery attempt for one recipient, kept for DSNs and operators' questions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: UnixMillis,
    /// The host that answered (or could not be reached), if any.
    pub host: Option<String>,
    pub reply: Reply,
}

/// Where one recipient stands. Terminal states are `Delivered` and `Failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientState {
    Pending,
    Deferred { until: UnixMillis },
    Delivered { at: UnixMillis, reply: Reply },
    Failed { at: UnixMillis, reply: Reply },
}

impl RecipientState {
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Delivered { .. } | Self::Failed { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path as given in RCPT TO, without angle brackets.
    pub address: String,
    /// `ORCPT` parameter, for DSNs.
    pub orcpt: Option<String>,
    pub notify: Notify,
    pub state: RecipientState,
    pub attempts: Vec<Attempt>,
}

impl Recipient {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            orcpt: None,
            notify: Notify::default(),
            state: RecipientState::Pending,
            attempts: Vec::new(),
        }
    }
}

/// The SMTP envelope and the facts about how the message arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse path without angle brackets; empty for the null sender (bounces), which
    /// must never be bounced to.
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    pub ret: Ret,
    /// `ENVID` parameter, for DSNs.
    pub env_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub helo: Option<String>,
    /// The authenticated submission user, if any.
    pub auth_user: Option<String>,
}

/// Everything the spool keeps about a message except its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub id: MessageId,
    pub received_at: UnixMillis,
    /// Size of the stored body in octets.
    pub size: u64,
    pub envelope: Envelope,
    pub ownership: Ownership,
}

impl MessageMeta {
    /// True when every recipient reached a terminal state and the message can be removed.
    pub fn is_done(&self) -> bool {
        self.envelope.recipients.iter().all(|r| r.state.is_done())
    }
}

/// A change to one recipient's state, as produced by a delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientUpdate {
    /// Index into `Envelope::recipients`.
    pub index: usize,
    pub state: RecipientState,
    pub attempt: Option<Attempt>,
}
