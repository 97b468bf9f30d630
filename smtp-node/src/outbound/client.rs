//! The SMTP client: one connection to one server, several transactions over it.
//!
//! Choices worth knowing:
//! - EHLO first, HELO when EHLO is refused with 5yz (then no extensions are used).
//! - STARTTLS per [`TlsPolicy`]; after STARTTLS any bytes the server sent before the
//!   handshake are a protocol violation (command injection, CVE-2011-0411) and end the
//!   session. In opportunistic mode a failed handshake is retried once in plaintext on a
//!   new connection, as RFC 7435 recommends.
//! - AUTH PLAIN only over TLS.
//! - PIPELINING: MAIL, every RCPT and DATA go out in one write when offered.
//! - Between transactions on one connection, RSET only when the last transaction may have
//!   left state on the server; otherwise a look at the socket (without waiting) catches a
//!   server that closed the connection meanwhile, and the next transaction costs no extra
//!   round trip.
//! - 8-bit content is never sent to a server without 8BITMIME: it is refused with 5.6.3
//!   rather than converted, because conversion would break the DKIM signature and can
//!   damage the content. A message flagged SMTPUTF8 is sent to a server without SMTPUTF8
//!   only when its envelope addresses are all ASCII (otherwise 5.6.7, RFC 6531). A SIZE
//!   announced by the server is honoured before sending (5.3.4).
//! - BODY=BINARYMIME messages go out with BDAT and need CHUNKING and BINARYMIME.
//! - DSN parameters (NOTIFY, ORCPT, RET, ENVID) are passed on when the server offers DSN.
//! - Every read and write has a timeout; a reply is at most 64 KiB, a line 4 KiB.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use super::metrics::{TlsLabels, TlsResult};
use super::mx::Target;
use super::outcome::{Outcome, local_reply};
use super::tls::{TlsConnectors, server_name};
use crate::spool::{BodyType, Notify, Reply, Ret};

const MAX_LINE: usize = 4096;
const MAX_REPLY: usize = 64 * 1024;
const WRITE_CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Each reply and each command write.
    pub command: Duration,
    /// Each chunk of the message body, and the reply after it.
    pub data: Duration,
}

/// How a connection uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never.
    Disabled,
    /// STARTTLS when offered, any certificate; plaintext otherwise.
    Opportunistic,
    /// STARTTLS must be offered and the certificate must be valid for the host name.
    RequireVerified,
    /// TLS from the first byte (port 465), certificate verified.
    Implicit,
}

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Clone)]
pub struct ClientSettings {
    pub helo_name: String,
    pub timeouts: Timeouts,
    pub tls: TlsPolicy,
    pub credentials: Option<Credentials>,
    pub connectors: TlsConnectors,
    /// Where TLS attempts are counted (the node's `outbound_tls` family).
    pub tls_results: Family<TlsLabels, Counter>,
}

impl ClientSettings {
    fn count_tls(&self, result: TlsResult) {
        self.tls_results.get_or_create(&TlsLabels { result }).inc();
    }
}

/// What one TLS attempt counts as: `offered` is whether the server offered TLS at all
/// (STARTTLS in its EHLO reply; always for implicit TLS), `completed` whether the
/// STARTTLS command and the handshake succeeded.
fn tls_result(offered: bool, completed: bool) -> TlsResult {
    match (offered, completed) {
        (false, _) => TlsResult::NotOffered,
        (true, true) => TlsResult::Ok,
        (true, false) => TlsResult::Failed,
    }
}

/// What the server offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// False after a HELO fallback: no extension may be used.
    pub esmtp: bool,
    pub pipelining: bool,
    /// `SIZE` with a limit; `Some(0)` means offered without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub dsn: bool,
    pub chunking: bool,
    pub binary_mime: bool,
}

/// Reads the capabilities from a complete raw EHLO reply (smtp-proto does the keyword
/// parsing). An unparsable reply yields no extensions rather than an error: the session
/// can still carry 7-bit mail.
pub fn parse_ehlo(raw: &[u8]) -> Capabilities {
    use smtp_proto::*;
    match EhloResponse::parse(&mut raw.iter()) {
        Ok(ehlo) => Capabilities {
            esmtp: true,
            pipelining: ehlo.has_capability(EXT_PIPELINING),
            size: ehlo.has_capability(EXT_SIZE).then_some(ehlo.size as u64),
            eight_bit_mime: ehlo.has_capability(EXT_8BIT_MIME),
            smtputf8: ehlo.has_capability(EXT_SMTP_UTF8),
            starttls: ehlo.has_capability(EXT_START_TLS),
            auth_plain: ehlo.has_capability(EXT_AUTH) && ehlo.auth() & AUTH_PLAIN != 0,
            dsn: ehlo.has_capability(EXT_DSN),
            chunking: ehlo.has_capability(EXT_CHUNKING),
            binary_mime: ehlo.has_capability(EXT_BINARY_MIME),
        },
        Err(err) => {
            tracing::debug!(?err, "unparsable EHLO reply; using no extensions");
            Capabilities {
                esmtp: true,
                ..Capabilities::default()
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{stage} refused: {} {}", reply.code, reply.text)]
    Rejected { stage: &'static str, reply: Reply },
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("TLS is required but the server does not offer STARTTLS")]
    TlsUnavailable,
    #[error("credentials are configured but the connection is not encrypted")]
    AuthWithoutTls,
}

impl ClientError {
    /// What this failure means for recipients that were not yet answered. Session
    /// failures are temporary: another attempt, or another MX host, may succeed.
    pub fn outcome(&self, host: &str) -> Outcome {
        let reply = match self {
            ClientError::Connect(err) => {
                local_reply(451, "4.4.1", format!("cannot connect to {host}: {err}"))
            }
            ClientError::Io(err) => {
                local_reply(451, "4.4.2", format!("connection to {host} lost: {err}"))
            }
            ClientError::Timeout(stage) => local_reply(
                451,
                "4.4.2",
                format!("timed out waiting for {stage} from {host}"),
            ),
            ClientError::Protocol(detail) => local_reply(
                451,
                "4.5.0",
                format!("protocol error talking to {host}: {detail}"),
            ),
            ClientError::Rejected { stage, reply } => {
                let mut reply = reply.clone();
                if reply.code >= 500 {
                    // Keep the remote words but never bounce on a session-level refusal
                    // from one host.
                    reply.text = format!("{host} refused {stage}: {}", reply.text);
                }
                return Outcome::Temporary(reply);
            }
            ClientError::Tls(err) => {
                local_reply(451, "4.7.5", format!("TLS with {host} failed: {err}"))
            }
            ClientError::TlsUnavailable => local_reply(
                451,
                "4.7.5",
                format!("{host} does not offer STARTTLS and TLS is required"),
            ),
            ClientError::AuthWithoutTls => local_reply(
                451,
                "4.7.5",
                format!("refusing to send credentials to {host} without TLS"),
            ),
        };
        Outcome::Temporary(reply)
    }

    /// A 5yz refusal of the session itself (greeting, EHLO/HELO).
    pub fn is_permanent_refusal(&self) -> bool {
        matches!(self, ClientError::Rejected { reply, stage } if reply.code >= 500 && (*stage == "greeting" || *stage == "HELO"))
    }
}

/// One recipient of a transaction.
#[derive(Clone, Debug)]
pub struct TransactionRecipient<'a> {
    pub address: &'a str,
    pub notify: Notify,
    /// ORCPT as received: `addr-type;xtext`.
    pub orcpt: Option<&'a str>,
}

/// One message to send: envelope plus the message in canonical form (CRLF line ends, not
/// dot-stuffed, signatures already added).
#[derive(Clone, Debug)]
pub struct Transaction<'a> {
    pub mail_from: &'a str,
    pub recipients: Vec<TransactionRecipient<'a>>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    pub ret: Ret,
    pub env_id: Option<&'a str>,
    pub message: &'a [u8],
}

/// Builds the MAIL command for a server, or the permanent outcome when the message
/// cannot be sent to it at all.
pub fn mail_command(tx: &Transaction<'_>, caps: &Capabilities) -> Result<String, Outcome> {
    let size = tx.message.len() as u64;
    if let Some(limit) = caps.size
        && limit > 0
        && size > limit
    {
        return Err(Outcome::Permanent(local_reply(
            552,
            "5.3.4",
            format!("message is {size} bytes, the receiving server accepts at most {limit}"),
        )));
    }
    let mut command = format!("MAIL FROM:<{}>", tx.mail_from);
    match tx.body_type {
        BodyType::BinaryMime => {
            if !(caps.chunking && caps.binary_mime) {
                return Err(Outcome::Permanent(local_reply(
                    554,
                    "5.6.3",
                    "binary message and the receiving server lacks BINARYMIME/CHUNKING",
                )));
            }
            command.push_str(" BODY=BINARYMIME");
        }
        BodyType::SevenBit | BodyType::EightBitMime => {
            if has_8bit(tx.message) {
                if !caps.eight_bit_mime {
                    return Err(Outcome::Permanent(local_reply(
                        554,
                        "5.6.3",
                        "8-bit message and the receiving server lacks 8BITMIME",
                    )));
                }
                command.push_str(" BODY=8BITMIME");
            }
        }
    }
    if tx.smtputf8 {
        if caps.smtputf8 {
            command.push_str(" SMTPUTF8");
        } else if !tx.mail_from.is_ascii() || tx.recipients.iter().any(|r| !r.address.is_ascii()) {
            return Err(Outcome::Permanent(local_reply(
                553,
                "5.6.7",
                "non-ASCII addresses and the receiving server lacks SMTPUTF8",
            )));
        }
    }
    if caps.size.is_some() {
        command.push_str(&format!(" SIZE={size}"));
    }
    if caps.dsn {
        if tx.ret == Ret::Headers {
            command.push_str(" RET=HDRS");
        }
        if let Some(env_id) = tx.env_id.filter(|v| is_xtext(v)) {
            command.push_str(&format!(" ENVID={env_id}"));
        }
    }
    command.push_str("\r\n");
    Ok(command)
}

pub fn rcpt_command(recipient: &TransactionRecipient<'_>, caps: &Capabilities) -> String {
    let mut command = format!("RCPT TO:<{}>", recipient.address);
    if caps.dsn {
        let n = recipient.notify;
        if n.never {
            command.push_str(" NOTIFY=NEVER");
        } else if n.success || n.failure || n.delay {
            let words: Vec<&str> = [
                (n.success, "SUCCESS"),
                (n.failure, "FAILURE"),
                (n.delay, "DELAY"),
            ]
            .into_iter()
            .filter_map(|(on, word)| on.then_some(word))
            .collect();
            command.push_str(&format!(" NOTIFY={}", words.join(",")));
        }
        if let Some(orcpt) = recipient.orcpt.filter(|v| is_xtext(v) && v.contains(';')) {
            command.push_str(&format!(" ORCPT={orcpt}"));
        }
    }
    command.push_str("\r\n");
    command
}

/// Parameter values must already be xtext (RFC 3461): printable ASCII, no space, no `=`.
fn is_xtext(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| (b'!'..=b'~').contains(&b) && b != b'=')
}

pub fn has_8bit(message: &[u8]) -> bool {
    message.iter().any(|b| *b >= 0x80)
}

/// CRLF everywhere: bare CR and bare LF become CRLF, so that what is signed is what the
/// next hop receives. Borrows when the message is already canonical.
pub fn canonical_line_endings(message: &[u8]) -> Cow<'_, [u8]> {
    let canonical = message.iter().enumerate().all(|(i, b)| match b {
        b'\r' => message.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && message[i - 1] == b'\r',
        _ => true,
    });
    if canonical {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                if message[i] == b'\r' && message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Applies SMTP dot-stuffing (RFC 5321 section 4.5.2) and appends the end-of-data
/// marker. Line ends are made canonical first (bare CR and bare LF become CRLF), so no
/// bare line end can smuggle an end of data past the next hop, and a message not ending
/// in CRLF gets one.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let message = canonical_line_endings(message);
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One line of a reply: code, whether it is the last line, and its text (non-UTF-8
/// bytes, which some servers send, are replaced rather than refused).
pub fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, Cow<'_, str>), ClientError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = || {
        ClientError::Protocol(format!(
            "malformed reply line {:?}",
            String::from_utf8_lossy(&line[..line.len().min(80)])
        ))
    };
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let code =
        (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    if !(200..600).contains(&code) {
        return Err(bad());
    }
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(bad()),
    };
    Ok((code, last, String::from_utf8_lossy(text)))
}

/// Splits an RFC 2034 enhanced status code off the start of a reply text, when its class
/// matches the reply code's first digit.
pub fn split_enhanced(code: u16, text: &str) -> (Option<String>, &str) {
    let (candidate, rest) = match text.split_once(' ') {
        Some((candidate, rest)) => (candidate, rest),
        None => (text, ""),
    };
    let parts: Vec<&str> = candidate.split('.').collect();
    let valid = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0].parse::<u16>().ok() == Some(code / 100);
    if valid {
        (Some(candidate.to_string()), rest)
    } else {
        (None, text)
    }
}

/// A connection after greeting, EHLO, and (as configured) STARTTLS and AUTH.
pub struct SmtpSession {
    io: BufReader<Stream>,
    capabilities: Capabilities,
    target: Target,
    encrypted: bool,
    timeouts: Timeouts,
    /// The server holds no transaction state: the session is new, or its last
    /// transaction ended with a final reply.
    clean: bool,
}

impl std::fmt::Debug for SmtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSession")
            .field("target", &self.target)
            .field("encrypted", &self.encrypted)
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

impl SmtpSession {
    /// Opens a session ready for transactions. In opportunistic mode a failed TLS
    /// handshake is retried once without STARTTLS.
    pub async fn connect(
        target: &Target,
        port: u16,
        settings: &ClientSettings,
    ) -> Result<Self, ClientError> {
        match Self::connect_once(target, port, settings, settings.tls).await {
            Err(ClientError::Tls(err)) if settings.tls == TlsPolicy::Opportunistic => {
                tracing::info!(host = %target.host, addr = %target.addr, error = %err,
                    "STARTTLS failed; retrying in plaintext");
                Self::connect_once(target, port, settings, TlsPolicy::Disabled).await
            }
            other => other,
        }
    }

    async fn connect_once(
        target: &Target,
        port: u16,
        settings: &ClientSettings,
        policy: TlsPolicy,
    ) -> Result<Self, ClientError> {
        let timeouts = settings.timeouts;
        let addr = SocketAddr::new(target.addr, port);
        let tcp = timeout(timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut encrypted = false;
        let stream = if policy == TlsPolicy::Implicit {
            encrypted = true;
            let handshake = tls_handshake(Stream::Plain(tcp), target, settings, true).await;
            settings.count_tls(tls_result(true, handshake.is_ok()));
            handshake?
        } else {
            Stream::Plain(tcp)
        };
        let mut session = SmtpSession {
            io: BufReader::new(stream),
            capabilities: Capabilities::default(),
            target: target.clone(),
            encrypted,
            timeouts,
            clean: true,
        };

        let (greeting, _) = session.read_reply("greeting", timeouts.command).await?;
        if greeting.code != 220 {
            return Err(ClientError::Rejected {
                stage: "greeting",
                reply: greeting,
            });
        }
        session.hello(&settings.helo_name).await?;

        let wants_tls = matches!(
            policy,
            TlsPolicy::Opportunistic | TlsPolicy::RequireVerified
        );
        if wants_tls && !session.capabilities.starttls {
            settings.count_tls(tls_result(false, false));
        }
        if wants_tls && session.capabilities.starttls {
            session.write(b"STARTTLS\r\n").await?;
            let (reply, _) = session
                .read_reply("STARTTLS reply", timeouts.command)
                .await?;
            if reply.code == 220 {
                if !session.io.buffer().is_empty() {
                    settings.count_tls(tls_result(true, false));
                    return Err(ClientError::Protocol(
                        "server sent data before the TLS handshake".into(),
                    ));
                }
                let verify = policy == TlsPolicy::RequireVerified;
                let handshake =
                    tls_handshake(session.io.into_inner(), target, settings, verify).await;
                settings.count_tls(tls_result(true, handshake.is_ok()));
                session.io = BufReader::new(handshake?);
                session.encrypted = true;
                session.hello(&settings.helo_name).await?;
            } else if policy == TlsPolicy::RequireVerified {
                settings.count_tls(tls_result(true, false));
                return Err(ClientError::Rejected {
                    stage: "STARTTLS",
                    reply,
                });
            } else {
                settings.count_tls(tls_result(true, false));
                tracing::info!(host = %target.host, code = reply.code,
                    "STARTTLS refused; continuing in plaintext");
            }
        }
        if policy == TlsPolicy::RequireVerified && !session.encrypted {
            return Err(ClientError::TlsUnavailable);
        }
        if let Some(credentials) = &settings.credentials {
            session.authenticate(credentials).await?;
        }
        Ok(session)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn hello(&mut self, name: &str) -> Result<(), ClientError> {
        self.write(format!("EHLO {name}\r\n").as_bytes()).await?;
        let (reply, raw) = self.read_reply("EHLO reply", self.timeouts.command).await?;
        if reply.code == 250 {
            self.capabilities = parse_ehlo(&raw);
            return Ok(());
        }
        if reply.code < 500 {
            return Err(ClientError::Rejected {
                stage: "EHLO",
                reply,
            });
        }
        self.write(format!("HELO {name}\r\n").as_bytes()).await?;
        let (reply, _) = self.read_reply("HELO reply", self.timeouts.command).await?;
        if reply.code != 250 {
            return Err(ClientError::Rejected {
                stage: "HELO",
                reply,
            });
        }
        self.capabilities = Capabilities::default();
        Ok(())
    }

    async fn authenticate(&mut self, credentials: &Credentials) -> Result<(), ClientError> {
        if !self.encrypted {
            return Err(ClientError::AuthWithoutTls);
        }
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "\0{}\0{}",
            credentials.username, credentials.password
        ));
        self.write(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await?;
        let (reply, _) = self.read_reply("AUTH reply", self.timeouts.command).await?;
        if reply.code != 235 {
            return Err(ClientError::Rejected {
                stage: "AUTH",
                reply,
            });
        }
        Ok(())
    }

    /// Before reusing the connection for another transaction: RSET when the last one may
    /// have left state on the server, else only a check that the server has not closed
    /// the connection (or said anything unasked, such as a 421 on an idle timeout) while
    /// it was idle, so that a message is not committed to a dead connection.
    pub async fn ready_for_next(&mut self) -> Result<(), ClientError> {
        if !self.clean {
            return self.reset().await;
        }
        // Bytes already buffered come back at once; otherwise one read that must not block.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut self.io).poll_fill_buf(&mut cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok([])) => Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the idle connection",
            ))),
            Poll::Ready(Ok(_)) => Err(ClientError::Protocol(
                "the server sent a reply nobody asked for on the idle connection".into(),
            )),
            Poll::Ready(Err(err)) => Err(ClientError::Io(err)),
        }
    }

    /// RSET: clears the server's transaction state and proves the connection works.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        self.write(b"RSET\r\n").await?;
        let (reply, _) = self.read_reply("RSET reply", self.timeouts.command).await?;
        if reply.code != 250 {
            return Err(ClientError::Rejected {
                stage: "RSET",
                reply,
            });
        }
        Ok(())
    }

    /// Runs one transaction and returns one outcome per recipient, in order. An `Err`
    /// means the connection is unusable and no recipient of this transaction was
    /// delivered as far as this node can know.
    pub async fn send(&mut self, tx: &Transaction<'_>) -> Result<Vec<Outcome>, ClientError> {
        let n = tx.recipients.len();
        let mail = match mail_command(tx, &self.capabilities) {
            Ok(command) => command,
            Err(outcome) => return Ok(vec![outcome; n]),
        };
        let rcpts: Vec<String> = tx
            .recipients
            .iter()
            .map(|r| rcpt_command(r, &self.capabilities))
            .collect();
        let use_bdat = tx.body_type == BodyType::BinaryMime;
        let timeout_cmd = self.timeouts.command;
        // Until a final reply says otherwise, the server may hold part of a transaction.
        self.clean = false;

        let (mail_reply, rcpt_replies, data_reply) = if self.capabilities.pipelining {
            let mut batch = mail.clone().into_bytes();
            for rcpt in &rcpts {
                batch.extend_from_slice(rcpt.as_bytes());
            }
            if !use_bdat {
                batch.extend_from_slice(b"DATA\r\n");
            }
            self.write(&batch).await?;
            let (mail_reply, _) = self.read_reply("MAIL reply", timeout_cmd).await?;
            let mut rcpt_replies = Vec::with_capacity(n);
            for _ in 0..n {
                rcpt_replies.push(self.read_reply("RCPT reply", timeout_cmd).await?.0);
            }
            let data_reply = if use_bdat {
                None
            } else {
                Some(self.read_reply("DATA reply", timeout_cmd).await?.0)
            };
            (mail_reply, rcpt_replies, data_reply)
        } else {
            self.write(mail.as_bytes()).await?;
            let (mail_reply, _) = self.read_reply("MAIL reply", timeout_cmd).await?;
            if !is_positive(&mail_reply) {
                return Ok(vec![Outcome::from_reply(mail_reply); n]);
            }
            let mut rcpt_replies = Vec::with_capacity(n);
            for rcpt in &rcpts {
                self.write(rcpt.as_bytes()).await?;
                rcpt_replies.push(self.read_reply("RCPT reply", timeout_cmd).await?.0);
            }
            let any_accepted = rcpt_replies.iter().any(is_positive);
            let data_reply = if use_bdat || !any_accepted {
                None
            } else {
                self.write(b"DATA\r\n").await?;
                Some(self.read_reply("DATA reply", timeout_cmd).await?.0)
            };
            (mail_reply, rcpt_replies, data_reply)
        };

        if !is_positive(&mail_reply) {
            if data_reply.as_ref().is_some_and(|r| r.code == 354) {
                self.abort_data().await?;
            }
            // No transaction began, unless pipelined RCPTs were taken without a sender.
            self.clean = !rcpt_replies.iter().any(is_positive);
            return Ok(vec![Outcome::from_reply(mail_reply); n]);
        }
        let any_accepted = rcpt_replies.iter().any(is_positive);
        let final_reply = if !any_accepted {
            if data_reply.as_ref().is_some_and(|r| r.code == 354) {
                self.abort_data().await?;
                self.clean = true;
            }
            None
        } else if use_bdat {
            let mut command = format!("BDAT {} LAST\r\n", tx.message.len()).into_bytes();
            command.extend_from_slice(tx.message);
            self.write_body(&command).await?;
            let reply = self.read_reply("BDAT reply", self.timeouts.data).await?.0;
            self.clean = true;
            Some(reply)
        } else {
            match data_reply {
                Some(reply) if reply.code == 354 => {
                    self.write_body(&dot_stuff(tx.message)).await?;
                    let reply = self
                        .read_reply("reply to end of data", self.timeouts.data)
                        .await?
                        .0;
                    self.clean = true;
                    Some(reply)
                }
                Some(reply) if is_positive(&reply) => {
                    return Err(ClientError::Protocol(format!(
                        "DATA answered {} instead of 354",
                        reply.code
                    )));
                }
                Some(reply) => Some(reply),
                None => None,
            }
        };

        Ok(rcpt_replies
            .into_iter()
            .map(
                |rcpt_reply| match (&final_reply, is_positive(&rcpt_reply)) {
                    (Some(reply), true) => Outcome::from_reply(reply.clone()),
                    _ => Outcome::from_reply(rcpt_reply),
                },
            )
            .collect())
    }

    /// Ends a DATA phase that the server opened although no recipient was accepted
    /// (possible with pipelining): an empty message, whose reply is ignored.
    async fn abort_data(&mut self) -> Result<(), ClientError> {
        self.write(b".\r\n").await?;
        self.read_reply("reply to empty data", self.timeouts.data)
            .await?;
        Ok(())
    }

    /// Ends the session politely; errors no longer matter at this point.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self
                .read_reply(
                    "QUIT reply",
                    self.timeouts.command.min(Duration::from_secs(5)),
                )
                .await;
        }
        let _ = timeout(Duration::from_secs(5), self.io.get_mut().shutdown()).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = self.io.get_mut();
        timeout(self.timeouts.command, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout("the server to accept a command"))??;
        Ok(())
    }

    async fn write_body(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let limit = self.timeouts.data;
        let stream = self.io.get_mut();
        for chunk in bytes.chunks(WRITE_CHUNK) {
            timeout(limit, stream.write_all(chunk))
                .await
                .map_err(|_| ClientError::Timeout("the server to accept message data"))??;
        }
        timeout(limit, stream.flush())
            .await
            .map_err(|_| ClientError::Timeout("the server to accept message data"))??;
        Ok(())
    }

    /// Reads one complete (possibly multi-line) reply; returns it parsed and raw.
    async fn read_reply(
        &mut self,
        what: &'static str,
        limit: Duration,
    ) -> Result<(Reply, Vec<u8>), ClientError> {
        let io = &mut self.io;
        timeout(limit, async move {
            let mut raw = Vec::new();
            let mut code = 0;
            let mut enhanced = None;
            let mut text = Vec::new();
            loop {
                let start = raw.len();
                read_line(io, &mut raw).await?;
                if raw.len() > MAX_REPLY {
                    return Err(ClientError::Protocol("reply too long".into()));
                }
                let (line_code, last, line_text) = parse_reply_line(&raw[start..])?;
                if start == 0 {
                    code = line_code;
                }
                // Continuation lines repeat the enhanced code; keep only the first.
                let (esc, rest) = split_enhanced(code, &line_text);
                if start == 0 {
                    enhanced = esc;
                }
                text.push(rest.to_string());
                if last {
                    break;
                }
            }
            Ok((
                Reply {
                    code,
                    enhanced,
                    text: text.join("\n"),
                },
                raw,
            ))
        })
        .await
        .map_err(|_| ClientError::Timeout(what))?
    }
}

fn is_positive(reply: &Reply) -> bool {
    (200..300).contains(&reply.code)
}

async fn read_line(io: &mut BufReader<Stream>, out: &mut Vec<u8>) -> Result<(), ClientError> {
    let start = out.len();
    loop {
        let available = io.fill_buf().await?;
        if available.is_empty() {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )));
        }
        if let Some(pos) = available.iter().position(|b| *b == b'\n') {
            out.extend_from_slice(&available[..=pos]);
            io.consume(pos + 1);
            return Ok(());
        }
        let len = available.len();
        out.extend_from_slice(available);
        io.consume(len);
        if out.len() - start > MAX_LINE {
            return Err(ClientError::Protocol("reply line too long".into()));
        }
    }
}

async fn tls_handshake(
    stream: Stream,
    target: &Target,
    settings: &ClientSettings,
    verify: bool,
) -> Result<Stream, ClientError> {
    let Stream::Plain(tcp) = stream else {
        return Err(ClientError::Protocol("TLS requested twice".into()));
    };
    let name = match server_name(&target.host) {
        Some(name) => name,
        None if verify => {
            return Err(ClientError::Tls(io::Error::other(format!(
                "{:?} cannot be verified as a server name",
                target.host
            ))));
        }
        None => rustls::pki_types::ServerName::IpAddress(target.addr.into()),
    };
    let connector = if verify {
        &settings.connectors.verified
    } else {
        &settings.connectors.opportunistic
    };
    let tls = timeout(settings.timeouts.command, connector.connect(name, tcp))
        .await
        .map_err(|_| ClientError::Timeout("the TLS handshake"))?
        .map_err(ClientError::Tls)?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// A plaintext or TLS connection, so that one session type serves both.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            esmtp: true,
            eight_bit_mime: true,
            size: Some(0),
            ..Capabilities::default()
        }
    }

    fn tx(message: &[u8]) -> Transaction<'_> {
        Transaction {
            mail_from: "a@example.com",
            recipients: vec![TransactionRecipient {
                address: "b@example.net",
                notify: Notify::default(),
                orcpt: None,
            }],
            body_type: BodyType::SevenBit,
            smtputf8: false,
            ret: Ret::Full,
            env_id: None,
            message,
        }
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"x\r\n\r\n"), b"x\r\n\r\n.\r\n");
        // Bare LF and bare CR are line ends on the wire, so no smuggled end of data.
        assert_eq!(dot_stuff(b"a\n.\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r.\rb\r\n"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"mid.dot\r\n"), b"mid.dot\r\n.\r\n");
    }

    #[test]
    fn tls_attempts_are_classified() {
        assert_eq!(tls_result(false, false), TlsResult::NotOffered);
        assert_eq!(tls_result(true, true), TlsResult::Ok);
        assert_eq!(tls_result(true, false), TlsResult::Failed);
    }

    #[test]
    fn line_endings() {
        assert!(matches!(
            canonical_line_endings(b"a\r\nb\r\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(&*canonical_line_endings(b"a\nb\rc\r\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(&*canonical_line_endings(b"\n"), b"\r\n");
    }

    #[test]
    fn reply_lines() {
        let line = |bytes: &[u8]| {
            let (code, last, text) = parse_reply_line(bytes).unwrap();
            (code, last, text.into_owned())
        };
        assert_eq!(line(b"250 OK\r\n"), (250, true, "OK".into()));
        assert_eq!(
            line(b"250-PIPELINING\r\n"),
            (250, false, "PIPELINING".into())
        );
        assert_eq!(line(b"354\r\n"), (354, true, String::new()));
        assert_eq!(line(b"550 caf\xe9\r\n"), (550, true, "caf\u{fffd}".into()));
        assert!(parse_reply_line(b"25 OK\r\n").is_err());
        assert!(parse_reply_line(b"250_OK\r\n").is_err());
        assert!(parse_reply_line(b"999 what\r\n").is_err());
        assert!(parse_reply_line(b"hello\r\n").is_err());
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(
            split_enhanced(550, "5.1.1 no such user"),
            (Some("5.1.1".into()), "no such user")
        );
        assert_eq!(
            split_enhanced(550, "4.1.1 class mismatch"),
            (None, "4.1.1 class mismatch")
        );
        assert_eq!(split_enhanced(250, "2.0.0"), (Some("2.0.0".into()), ""));
        assert_eq!(split_enhanced(250, "OK 1.2.3"), (None, "OK 1.2.3"));
        assert_eq!(
            split_enhanced(556, "5.1.10 null MX"),
            (Some("5.1.10".into()), "null MX")
        );
    }

    #[test]
    fn ehlo_capabilities() {
        let raw = b"250-mx.example.net hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n\
250-8BITMIME\r\n250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n250-DSN\r\n250-SMTPUTF8\r\n\
250-X-UNKNOWN thing\r\n250 CHUNKING\r\n";
        let caps = parse_ehlo(raw);
        assert!(caps.pipelining && caps.eight_bit_mime && caps.starttls && caps.auth_plain);
        assert!(caps.dsn && caps.smtputf8 && caps.chunking && !caps.binary_mime);
        assert_eq!(caps.size, Some(1000));
        let bare = parse_ehlo(b"250 mx.example.net\r\n");
        assert!(bare.esmtp && !bare.pipelining && bare.size.is_none());
    }

    #[test]
    fn mail_command_parameters() {
        let mut c = caps();
        assert_eq!(
            mail_command(&tx(b"hi\r\n"), &c).unwrap(),
            "MAIL FROM:<a@example.com> SIZE=4\r\n"
        );
        assert_eq!(
            mail_command(&tx("h\u{e9}\r\n".as_bytes()), &c).unwrap(),
            "MAIL FROM:<a@example.com> BODY=8BITMIME SIZE=5\r\n"
        );
        c.dsn = true;
        let mut t = tx(b"x");
        t.ret = Ret::Headers;
        t.env_id = Some("id+2B1");
        t.mail_from = "";
        assert_eq!(
            mail_command(&t, &c).unwrap(),
            "MAIL FROM:<> SIZE=1 RET=HDRS ENVID=id+2B1\r\n"
        );
    }

    #[test]
    fn refuses_what_the_server_cannot_take() {
        let mut c = caps();
        c.size = Some(3);
        let err = mail_command(&tx(b"too long"), &c).unwrap_err();
        assert_eq!(err.reply().enhanced.as_deref(), Some("5.3.4"));

        let c = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        let err = mail_command(&tx("\u{e9}".as_bytes()), &c).unwrap_err();
        assert!(matches!(err, Outcome::Permanent(ref r) if r.enhanced.as_deref() == Some("5.6.3")));
        // Declared 8BITMIME but 7-bit content goes through without BODY=.
        let mut t = tx(b"plain");
        t.body_type = BodyType::EightBitMime;
        assert_eq!(
            mail_command(&t, &c).unwrap(),
            "MAIL FROM:<a@example.com>\r\n"
        );

        let mut t = tx(b"x");
        t.smtputf8 = true;
        assert_eq!(
            mail_command(&t, &c).unwrap(),
            "MAIL FROM:<a@example.com>\r\n"
        );
        t.mail_from = "j\u{f6}rg@example.com";
        let err = mail_command(&t, &c).unwrap_err();
        assert_eq!(err.reply().enhanced.as_deref(), Some("5.6.7"));

        let mut t = tx(b"x");
        t.body_type = BodyType::BinaryMime;
        assert!(mail_command(&t, &c).is_err());
    }

    #[test]
    fn rcpt_parameters_only_with_dsn() {
        let r = TransactionRecipient {
            address: "b@example.net",
            notify: Notify {
                success: true,
                failure: true,
                ..Notify::default()
            },
            orcpt: Some("rfc822;b@example.net"),
        };
        assert_eq!(rcpt_command(&r, &caps()), "RCPT TO:<b@example.net>\r\n");
        let c = Capabilities {
            dsn: true,
            ..caps()
        };
        assert_eq!(
            rcpt_command(&r, &c),
            "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net\r\n"
        );
        let never = TransactionRecipient {
            notify: Notify {
                never: true,
                ..Notify::default()
            },
            orcpt: Some("not xtext"),
            ..r
        };
        assert_eq!(
            rcpt_command(&never, &c),
            "RCPT TO:<b@example.net> NOTIFY=NEVER\r\n"
        );
    }

    #[test]
    fn session_errors_are_temporary() {
        let err = ClientError::Rejected {
            stage: "greeting",
            reply: Reply {
                code: 554,
                enhanced: None,
                text: "go away".into(),
            },
        };
        assert!(err.is_permanent_refusal());
        let outcome = err.outcome("mx.example.net");
        assert!(
            matches!(outcome, Outcome::Temporary(ref r) if r.code == 554 && r.text.contains("mx.example.net"))
        );
        let outcome = ClientError::TlsUnavailable.outcome("mx");
        assert_eq!(outcome.reply().enhanced.as_deref(), Some("4.7.5"));
    }
}
