//! One SMTP session, from greeting to QUIT.
//!
//! The session reads a command, decides with pure helpers (`policy`, parameter checks),
//! and queues the reply; replies are flushed when the client has nothing more pipelined,
//! and always before waiting at a sync point (DATA's 354, STARTTLS, AUTH challenges).
//! A message is answered 250 only after the spool has it on stable storage, and never
//! once the node has failed: from then on every session says `421 4.3.0` at its next
//! command, or instead of completing its transaction, and closes. (A store already under
//! way when the failure is noticed is answered by its outcome: a message on stable
//! storage is acknowledged, since the restart delivers it; a failed spool refuses it.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME,
    MAIL_BY_NOTIFY, MAIL_BY_RETURN, MAIL_BY_TRACE, MAIL_CONPERM, MAIL_REQUIRETLS, MAIL_RET_HDRS,
    MAIL_SMTPUTF8, MailFrom, RCPT_CONNEG, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE,
    RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, RCPT_RRVS_CONTINUE, RCPT_RRVS_REJECT, RcptTo, Request,
};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::io::{Conn, Content, Line, LineEndings, Stream};
use super::received::{Protocol, Trace, received_header};
use super::reply::{self, Reply};
use super::tls::CertStore;
use crate::auth::UserDb;
use crate::config::{Limits, ListenerTls};
use crate::metrics::{InboundMetrics, ListenerLabel, ResultLabel};
use crate::policy::{self, Client, Refusal, RelayPolicy};
use crate::spool::{
    BodyType, Envelope, MessageId, MessageMeta, NodeId, Notify, Ownership, Recipient, Ret, Spool,
    SpoolError, now_millis,
};

/// Longest command line, CRLF included: RFC 5321's 512 octets (section 4.5.3.1.4) plus
/// what the advertised extensions may add to MAIL and RCPT: SIZE (RFC 1870, 26), AUTH=
/// (RFC 4954, 500) and the DSN parameters ENVID, RET, NOTIFY and ORCPT (RFC 3461, up to
/// about 1000). AUTH initial responses and SASL lines share the limit.
pub const MAX_COMMAND_LINE: usize = 2048;

/// Everything sessions share.
pub struct Shared<S: Spool> {
    pub hostname: String,
    pub limits: Limits,
    pub policy: RelayPolicy,
    pub users: Option<Arc<UserDb>>,
    pub certs: Option<Arc<CertStore>>,
    pub spool: Arc<S>,
    pub node: NodeId,
    /// Stored message ids go to the delivery queue.
    pub queue: mpsc::UnboundedSender<MessageId>,
    pub metrics: InboundMetrics,
    /// Cancelled when the node stops: idle sessions say 421 and close.
    pub shutdown: CancellationToken,
    /// Cancelled when an essential task failed and the node is going down: sessions say
    /// 421 whatever their state, and no transaction completes.
    pub failed: CancellationToken,
}

/// The listener a session arrived on.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: String,
    pub tls: ListenerTls,
    pub require_auth: bool,
}

struct Transaction {
    mail_from: String,
    body_type: BodyType,
    smtputf8: bool,
    ret: Ret,
    env_id: Option<String>,
    recipients: Vec<Recipient>,
    /// BDAT chunks received so far (DATA is refused once BDAT started).
    bdat: Option<BdatState>,
}

struct BdatState {
    body: Vec<u8>,
    size: u64,
    endings: LineEndings,
}

enum Flow {
    Continue,
    Close,
}

pub struct Session<S: Spool> {
    shared: Arc<Shared<S>>,
    listener: Listener,
    conn: Conn,
    peer: SocketAddr,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    tls_detail: Option<String>,
    user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
}

impl<S: Spool> Session<S> {
    pub fn new(
        shared: Arc<Shared<S>>,
        listener: Listener,
        stream: Stream,
        peer: SocketAddr,
    ) -> Self {
        let tls = matches!(stream, Stream::Tls(_));
        let tls_detail = tls_detail(&stream);
        Self {
            shared,
            listener,
            conn: Conn::new(stream),
            peer,
            helo: None,
            esmtp: false,
            tls,
            tls_detail,
            user: None,
            tx: None,
            errors: 0,
        }
    }

    /// Runs the session to its end. I/O errors end it quietly: the client is gone.
    pub async fn run(mut self) {
        let greeting = Reply::new(
            220,
            "",
            format!("{} ESMTP smtp-node ready", self.shared.hostname),
        );
        greeting.write_to(self.conn.output());
        if let Err(error) = self.serve().await {
            tracing::debug!(peer = %self.peer, %error, "session ended by an I/O error");
            return;
        }
        self.conn.close().await;
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            if !self.conn.has_buffered_input() {
                self.conn.flush().await?;
            }
            let limit = self.shared.limits.command_timeout;
            let idle = self.tx.is_none();
            let shutdown = self.shared.shutdown.clone();
            let failed = self.shared.failed.clone();
            let line = tokio::select! {
                biased;
                _ = failed.cancelled() => {
                    self.send(reply::node_failed());
                    return Ok(());
                }
                read = timeout(limit, self.conn.read_line(MAX_COMMAND_LINE)) => match read {
                    Ok(line) => line?,
                    Err(_) => {
                        self.shared.metrics.reject("timeout");
                        self.send(reply::timeout());
                        return Ok(());
                    }
                },
                _ = shutdown.cancelled(), if idle => {
                    self.send(reply::shutting_down());
                    return Ok(());
                }
            };
            let flow = match line {
                Line::Closed => return Ok(()),
                Line::TooLong => {
                    self.shared.metrics.reject("line_too_long");
                    self.refuse(reply::line_too_long(MAX_COMMAND_LINE))
                }
                Line::Complete(line) => self.command(&line).await?,
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    fn send(&mut self, reply: Reply) {
        reply.write_to(self.conn.output());
    }

    /// Sends a refusal and counts it; too many end the session.
    fn refuse(&mut self, reply: Reply) -> Flow {
        let counts = reply.is_permanent_error();
        self.send(reply);
        if counts {
            self.errors += 1;
            if self.errors >= self.shared.limits.max_errors {
                self.shared.metrics.reject("too_many_errors");
                self.send(reply::too_many_errors());
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    fn reply(&mut self, reply: Reply) -> Flow {
        if reply.code >= 400 {
            self.refuse(reply)
        } else {
            self.send(reply);
            Flow::Continue
        }
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        if line.contains(&0) {
            self.shared.metrics.reject("nul_in_command");
            return Ok(self.refuse(Reply::new(500, "5.5.2", "NUL octet in command refused")));
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(error) => {
                self.shared.metrics.reject("syntax");
                return Ok(self.refuse(parse_error_reply(&error)));
            }
        };
        match request {
            Request::Ehlo { host } => Ok(self.hello(host, true)),
            Request::Helo { host } => Ok(self.hello(host, false)),
            Request::Lhlo { .. } => Ok(self.refuse(reply::not_implemented())),
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Request::Mail { from } => Ok(self.mail(from)),
            Request::Rcpt { to } => Ok(self.rcpt(to)),
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.tx = None;
                Ok(self.reply(reply::ok("2.0.0", "Ok")))
            }
            Request::Noop { .. } => Ok(self.reply(reply::ok("2.0.0", "Ok"))),
            Request::Help { .. } => Ok(self.reply(Reply::new(
                214,
                "2.0.0",
                "smtp-node: see RFC 5321 for the commands",
            ))),
            // Nothing about mailboxes is revealed: VRFY neither confirms nor denies
            // (RFC 5321 section 3.5.3), EXPN is not offered.
            Request::Vrfy { .. } => Ok(self.reply(Reply::new(
                252,
                "2.5.2",
                "Cannot VRFY user; send mail and delivery will be attempted",
            ))),
            Request::Expn { .. } => {
                Ok(self.refuse(Reply::new(502, "5.5.1", "EXPN is not offered")))
            }
            Request::Quit => {
                self.send(Reply::new(221, "2.0.0", "Bye"));
                Ok(Flow::Close)
            }
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Ok(self.refuse(reply::not_implemented()))
            }
        }
    }

    fn hello(&mut self, host: String, esmtp: bool) -> Flow {
        if host.is_empty() {
            return self.refuse(Reply::new(501, "5.5.4", "EHLO/HELO needs a host name"));
        }
        self.helo = Some(host);
        self.esmtp = esmtp;
        self.tx = None;
        let mut lines = vec![format!(
            "{} greets [{}]",
            self.shared.hostname,
            self.peer.ip().to_canonical()
        )];
        if esmtp {
            lines.extend([
                "PIPELINING".to_owned(),
                format!("SIZE {}", self.shared.limits.max_message_size),
                "8BITMIME".to_owned(),
                "SMTPUTF8".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
                "CHUNKING".to_owned(),
                "DSN".to_owned(),
            ]);
            if !self.tls
                && self
                    .shared
                    .certs
                    .as_ref()
                    .is_some_and(|c| c.has_certificate())
            {
                lines.push("STARTTLS".to_owned());
            }
            if self.tls && self.shared.users.is_some() && self.user.is_none() {
                lines.push("AUTH PLAIN LOGIN".to_owned());
            }
        }
        self.send(Reply::new(250, "", lines.join("\n")));
        Flow::Continue
    }

    async fn starttls(&mut self) -> std::io::Result<Flow> {
        if self.tls {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "TLS is already active")));
        }
        let Some(certs) = self.shared.certs.clone().filter(|c| c.has_certificate()) else {
            return Ok(self.refuse(Reply::new(454, "4.7.0", "TLS not available")));
        };
        if self.helo.is_none() {
            return Ok(self.refuse(reply::bad_sequence("Send EHLO first")));
        }
        self.send(Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.conn.flush().await?;
        let dropped = self.conn.discard_buffered_input();
        if dropped > 0 {
            self.shared.metrics.reject("pipelined_before_tls");
            tracing::info!(peer = %self.peer, octets = dropped, "discarded plaintext sent after STARTTLS");
        }
        let Stream::Plain(tcp) = self.conn.take_stream() else {
            return Ok(Flow::Close);
        };
        let handshake = timeout(
            self.shared.limits.command_timeout,
            certs.acceptor().accept(tcp),
        )
        .await;
        match handshake {
            Ok(Ok(tls)) => {
                self.shared
                    .metrics
                    .tls_handshakes
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                let stream = Stream::Tls(Box::new(tls));
                self.tls_detail = tls_detail(&stream);
                self.conn.set_stream(stream);
                self.tls = true;
                // RFC 3207 section 4.2: forget everything learnt before TLS.
                self.helo = None;
                self.esmtp = false;
                self.tx = None;
                self.user = None;
                Ok(Flow::Continue)
            }
            _ => {
                self.shared
                    .metrics
                    .tls_handshakes
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                Ok(Flow::Close)
            }
        }
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> std::io::Result<Flow> {
        if self.helo.is_none() || !self.esmtp {
            return Ok(self.refuse(reply::bad_sequence("Send EHLO first")));
        }
        if self.user.is_some() {
            return Ok(self.refuse(reply::bad_sequence("Already authenticated")));
        }
        if self.tx.is_some() {
            return Ok(self.refuse(reply::bad_sequence(
                "AUTH is not allowed during a transaction",
            )));
        }
        let Some(users) = self.shared.users.clone() else {
            return Ok(self.refuse(Reply::new(502, "5.5.1", "AUTH is not offered here")));
        };
        if !self.tls {
            self.shared.metrics.reject("auth_without_tls");
            return Ok(self.refuse(Reply::new(
                538,
                "5.7.11",
                "Encryption required: use STARTTLS before AUTH",
            )));
        }
        let credentials = match mechanism {
            AUTH_PLAIN => {
                let response = if initial.is_empty() {
                    match self.challenge("").await? {
                        Some(r) => r,
                        None => return Ok(Flow::Close),
                    }
                } else {
                    initial
                };
                if response.trim() == "*" {
                    return Ok(self.refuse(Reply::new(501, "5.0.0", "Authentication cancelled")));
                }
                decode_plain(&response)
            }
            AUTH_LOGIN => {
                let user = if initial.is_empty() {
                    match self.challenge("VXNlcm5hbWU6").await? {
                        Some(r) => r,
                        None => return Ok(Flow::Close),
                    }
                } else {
                    initial
                };
                let Some(password) = self.challenge("UGFzc3dvcmQ6").await? else {
                    return Ok(Flow::Close);
                };
                if user.trim() == "*" || password.trim() == "*" {
                    return Ok(self.refuse(Reply::new(501, "5.0.0", "Authentication cancelled")));
                }
                match (decode_b64(&user), decode_b64(&password)) {
                    (Some(u), Some(p)) => Some((u, p)),
                    _ => None,
                }
            }
            _ => {
                return Ok(self.refuse(Reply::new(
                    504,
                    "5.5.4",
                    "Unrecognized authentication mechanism; use PLAIN or LOGIN",
                )));
            }
        };
        let Some((user, password)) = credentials else {
            return Ok(self.refuse(Reply::new(501, "5.5.2", "Cannot decode the AUTH response")));
        };
        match users.verify(&user, &password).await {
            Ok(true) => {
                tracing::info!(peer = %self.peer, %user, "authenticated");
                self.user = Some(user);
                Ok(self.reply(Reply::new(235, "2.7.0", "Authentication succeeded")))
            }
            Ok(false) => {
                self.shared.metrics.reject("auth_failed");
                tracing::info!(peer = %self.peer, %user, "authentication failed");
                Ok(self.refuse(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                )))
            }
            Err(error) => {
                tracing::error!(%error, "password verification failed");
                Ok(self.reply(Reply::new(454, "4.7.0", "Temporary authentication failure")))
            }
        }
    }

    /// Sends a 334 challenge and reads the client's line. `None`: the client left.
    async fn challenge(&mut self, text: &'static str) -> std::io::Result<Option<String>> {
        Reply::new(334, "", text).write_to(self.conn.output());
        self.conn.flush().await?;
        let line = timeout(
            self.shared.limits.command_timeout,
            self.conn.read_line(MAX_COMMAND_LINE),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "AUTH response"))??;
        Ok(match line {
            Line::Complete(bytes) => Some(
                String::from_utf8_lossy(&bytes)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            Line::TooLong => Some("*".to_owned()),
            Line::Closed => None,
        })
    }

    fn client(&self) -> Client {
        Client {
            ip: self.peer.ip(),
            authenticated: self.user.is_some(),
            listener_requires_auth: self.listener.require_auth,
        }
    }

    fn mail(&mut self, from: MailFrom<String>) -> Flow {
        if self.helo.is_none() {
            return self.refuse(reply::bad_sequence("Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.refuse(reply::bad_sequence("Nested MAIL command"));
        }
        if let Some(reply) = unsupported_mail_parameter(&from, self.esmtp) {
            self.shared.metrics.reject("parameter");
            return self.refuse(reply);
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            self.shared.metrics.reject("smtputf8_required");
            return self.refuse(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address needs the SMTPUTF8 parameter",
            ));
        }
        let max = self.shared.limits.max_message_size;
        if let Err(refusal) = policy::check_declared_size(from.size as u64, max) {
            self.shared.metrics.reject(refusal.reason());
            return self.refuse(reply::message_too_big(max));
        }
        if let Err(refusal) = self
            .shared
            .policy
            .check_sender(&self.client(), &from.address)
        {
            self.shared.metrics.reject(refusal.reason());
            return self.refuse(refusal_reply(&refusal));
        }
        self.tx = Some(Transaction {
            mail_from: from.address,
            body_type: if from.flags & MAIL_BODY_8BITMIME != 0 {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8,
            ret: if from.flags & MAIL_RET_HDRS != 0 {
                Ret::Headers
            } else {
                Ret::Full
            },
            env_id: from.env_id,
            recipients: Vec::new(),
            bdat: None,
        });
        self.reply(reply::ok("2.1.0", "Sender OK"))
    }

    fn rcpt(&mut self, to: RcptTo<String>) -> Flow {
        let max = self.shared.limits.max_recipients as usize;
        let esmtp = self.esmtp;
        let Some(tx) = self.tx.as_mut() else {
            return self.refuse(reply::bad_sequence("Need MAIL before RCPT"));
        };
        if to.flags & (RCPT_CONNEG | RCPT_RRVS_REJECT | RCPT_RRVS_CONTINUE) != 0 || to.rrvs != 0 {
            return self.refuse(Reply::new(555, "5.5.4", "Unsupported RCPT parameter"));
        }
        if !esmtp && (to.flags != 0 || to.orcpt.is_some()) {
            return self.refuse(Reply::new(555, "5.5.4", "RCPT parameters need EHLO"));
        }
        if policy::check_recipient_count(tx.recipients.len(), max).is_err() {
            self.shared.metrics.reject("too_many_recipients");
            return self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        if policy::address_domain(&to.address).is_none() {
            return self.refuse(Reply::new(
                550,
                "5.1.3",
                "Recipient must be a full address (local@domain)",
            ));
        }
        if !tx.smtputf8 && !to.address.is_ascii() {
            return self.refuse(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address needs SMTPUTF8 on MAIL",
            ));
        }
        let mut recipient = Recipient::new(to.address);
        recipient.orcpt = to.orcpt;
        recipient.notify = Notify {
            success: to.flags & RCPT_NOTIFY_SUCCESS != 0,
            failure: to.flags & RCPT_NOTIFY_FAILURE != 0,
            delay: to.flags & RCPT_NOTIFY_DELAY != 0,
            never: to.flags & RCPT_NOTIFY_NEVER != 0,
        };
        tx.recipients.push(recipient);
        self.reply(reply::ok("2.1.5", "Recipient OK"))
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        match &self.tx {
            None => return Ok(self.refuse(reply::bad_sequence("Need MAIL before DATA"))),
            Some(tx) if tx.recipients.is_empty() => {
                return Ok(self.refuse(reply::bad_sequence("Need RCPT before DATA")));
            }
            Some(tx) if tx.bdat.is_some() => {
                return Ok(self.refuse(reply::bad_sequence("DATA is not allowed after BDAT")));
            }
            Some(_) => {}
        }
        self.send(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        self.conn.flush().await?;
        let max = self.shared.limits.max_message_size;
        let mut body = Vec::with_capacity(8192);
        let content = match timeout(
            self.shared.limits.data_timeout,
            self.conn.read_data(&mut body, max),
        )
        .await
        {
            Err(_) => {
                self.shared.metrics.reject("timeout");
                self.send(reply::timeout());
                return Ok(Flow::Close);
            }
            Ok(read) => match read? {
                Some(content) => content,
                None => return Ok(Flow::Close),
            },
        };
        Ok(self.finish(body, content).await)
    }

    async fn bdat(&mut self, size: usize, last: bool) -> std::io::Result<Flow> {
        let max = self.shared.limits.max_message_size;
        // The chunk is read whatever the state, so that the octets are not taken for
        // commands (RFC 3030 section 4).
        let usable = matches!(&self.tx, Some(tx) if !tx.recipients.is_empty());
        let mut scratch = LineEndings::default();
        let read = if usable {
            let Some(tx) = self.tx.as_mut() else {
                return Ok(Flow::Close);
            };
            let state = tx.bdat.get_or_insert_with(|| BdatState {
                body: Vec::new(),
                size: 0,
                endings: LineEndings::default(),
            });
            state.size += size as u64;
            let keep = state.size <= max;
            let body = keep.then_some(&mut state.body);
            timeout(
                self.shared.limits.data_timeout,
                self.conn.read_chunk(size, body, &mut state.endings),
            )
            .await
        } else {
            timeout(
                self.shared.limits.data_timeout,
                self.conn.read_chunk(size, None, &mut scratch),
            )
            .await
        };
        match read {
            Err(_) => {
                self.shared.metrics.reject("timeout");
                self.send(reply::timeout());
                return Ok(Flow::Close);
            }
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ok(Flow::Close),
            Ok(Err(e)) => return Err(e),
        }
        if !usable {
            let text = if self.tx.is_none() {
                "Need MAIL before BDAT"
            } else {
                "Need RCPT before BDAT"
            };
            return Ok(self.refuse(reply::bad_sequence(text)));
        }
        if !last {
            return Ok(self.reply(reply::ok("2.0.0", format!("{size} octets received"))));
        }
        let Some(state) = self.tx.as_mut().and_then(|tx| tx.bdat.take()) else {
            return Ok(Flow::Close);
        };
        let content = Content {
            size: state.size,
            bare_line_ending: state.endings.finish(),
            oversize: state.size > max,
        };
        Ok(self.finish(state.body, content).await)
    }

    /// Ends a transaction: checks the content, stores it durably, answers.
    async fn finish(&mut self, body: Vec<u8>, content: Content) -> Flow {
        let Some(tx) = self.tx.take() else {
            return self.refuse(reply::bad_sequence("No transaction"));
        };
        let ended = Instant::now();
        if content.oversize {
            self.shared.metrics.reject("size");
            return self.refuse(reply::message_too_big(self.shared.limits.max_message_size));
        }
        if content.bare_line_ending {
            self.shared.metrics.reject("bare_line_ending");
            return self.refuse(Reply::new(
                554,
                "5.6.0",
                "Message refused: bare CR or LF in the content; lines must end with CRLF \
                 (RFC 5321 section 2.3.8)",
            ));
        }
        if self.shared.failed.is_cancelled() {
            self.shared.metrics.reject("node_failed");
            self.send(reply::node_failed());
            return Flow::Close;
        }
        let id = MessageId::new();
        let addresses: Vec<String> = tx.recipients.iter().map(|r| r.address.clone()).collect();
        let header = received_header(&Trace {
            helo: self.helo.as_deref().unwrap_or(""),
            client_ip: self.peer.ip(),
            hostname: &self.shared.hostname,
            protocol: Protocol {
                esmtp: self.esmtp,
                tls: self.tls,
                authenticated: self.user.is_some(),
            },
            id: &id.to_string(),
            recipients: &addresses,
            tls_detail: self.tls_detail.clone(),
            at: chrono::Utc::now(),
        });
        let mut message = Vec::with_capacity(header.len() + body.len());
        message.extend_from_slice(header.as_bytes());
        message.extend_from_slice(&body);
        let size = message.len() as u64;
        let meta = MessageMeta {
            id,
            received_at: now_millis(),
            size,
            envelope: Envelope {
                mail_from: tx.mail_from,
                recipients: tx.recipients,
                body_type: tx.body_type,
                smtputf8: tx.smtputf8,
                ret: tx.ret,
                env_id: tx.env_id,
                client_ip: Some(self.peer.ip().to_canonical()),
                helo: self.helo.clone(),
                auth_user: self.user.clone(),
            },
            ownership: Ownership {
                owner: self.shared.node.clone(),
                replicas: Vec::new(),
                epoch: 1,
                copy: None,
            },
        };
        match self.shared.spool.store(meta, Bytes::from(message)).await {
            Ok(()) => {
                let _ = self.shared.queue.send(id);
                let metrics = &self.shared.metrics;
                metrics
                    .accepted
                    .get_or_create(&ListenerLabel {
                        listener: self.listener.name.clone(),
                    })
                    .inc();
                metrics.accepted_bytes.inc_by(size);
                metrics
                    .accept_latency
                    .observe(ended.elapsed().as_secs_f64());
                tracing::debug!(%id, peer = %self.peer, size, "message accepted");
                self.reply(reply::ok("2.0.0", format!("Ok: queued as {id}")))
            }
            Err(error @ SpoolError::Full(_)) => {
                tracing::warn!(%error, "cannot store an incoming message; answering 452");
                self.shared.metrics.reject("spool_full");
                self.reply(reply::insufficient_storage())
            }
            Err(error @ SpoolError::Failed(_)) => {
                tracing::error!(%error, "cannot store an incoming message; answering 421");
                self.shared.metrics.reject("spool_failed");
                self.send(reply::node_failed());
                Flow::Close
            }
            Err(SpoolError::NotReplicated(reason)) => {
                tracing::warn!(%id, %reason, "message not stored on enough nodes; answering 451");
                self.shared.metrics.reject("not_replicated");
                self.reply(reply::not_replicated(&reason))
            }
            Err(SpoolError::OutcomeUnknown(reason)) => {
                tracing::warn!(%id, %reason,
                    "message stored but a holder did not confirm it; kept for delivery, answering 421");
                self.shared.metrics.reject("replication_unconfirmed");
                self.send(reply::outcome_unknown());
                Flow::Close
            }
            Err(error) => {
                tracing::error!(%error, "cannot store an incoming message; answering 451");
                self.shared.metrics.reject("spool_error");
                self.reply(reply::local_error())
            }
        }
    }
}

fn tls_detail(stream: &Stream) -> Option<String> {
    let Stream::Tls(tls) = stream else {
        return None;
    };
    let (_, conn) = tls.get_ref();
    let version = conn.protocol_version()?;
    let suite = conn.negotiated_cipher_suite()?;
    Some(format!("version={:?} cipher={:?}", version, suite.suite()))
}

fn parse_error_reply(error: &ParseError) -> Reply {
    match error {
        ParseError::UnknownCommand => Reply::new(500, "5.5.1", "Unknown command"),
        ParseError::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "Bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
        ParseError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => {
            let param: String = param
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
        }
        _ => Reply::new(500, "5.5.2", "Syntax error"),
    }
}

/// MAIL parameters this server does not advertise, refused with 555 (RFC 5321 4.1.1.11).
fn unsupported_mail_parameter(from: &MailFrom<String>, esmtp: bool) -> Option<Reply> {
    let refuse = |what: &str| Some(Reply::new(555, "5.5.4", format!("{what} is not supported")));
    if from.flags & MAIL_BODY_BINARYMIME != 0 {
        return refuse("BODY=BINARYMIME");
    }
    if from.flags & MAIL_REQUIRETLS != 0 {
        return refuse("REQUIRETLS");
    }
    if from.flags & (MAIL_BY_NOTIFY | MAIL_BY_RETURN | MAIL_BY_TRACE) != 0 || from.by != 0 {
        return refuse("BY");
    }
    if from.flags & MAIL_CONPERM != 0
        || from.hold_for != 0
        || from.hold_until != 0
        || from.mt_priority != 0
        || from.mtrk.is_some()
        || from.solicit.is_some()
        || from.trans_id.is_some()
    {
        return refuse("The parameter");
    }
    if !esmtp && (from.flags != 0 || from.size != 0 || from.env_id.is_some()) {
        return Some(Reply::new(555, "5.5.4", "MAIL parameters need EHLO"));
    }
    None
}

fn refusal_reply(refusal: &Refusal) -> Reply {
    match refusal {
        Refusal::AuthRequired => Reply::new(530, "5.7.0", "Authentication required"),
        Refusal::RelayDenied { client } => Reply::new(
            554,
            "5.7.1",
            format!(
                "Relay access denied: {client} is not an allowed network and did not authenticate"
            ),
        ),
        Refusal::SenderDomainNotServed { domain } => Reply::new(
            550,
            "5.7.1",
            format!("Sender domain {domain} is not served by this relay"),
        ),
        Refusal::DomainsNotLoaded => Reply::new(
            451,
            "4.3.0",
            "Sender domains are not loaded yet, try again later",
        ),
        Refusal::MessageTooBig { max } => reply::message_too_big(*max),
        Refusal::TooManyRecipients { .. } => Reply::new(452, "4.5.3", "Too many recipients"),
    }
}

fn decode_b64(text: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`. An authzid other than the user is
/// refused (no proxy authorization).
fn decode_plain(response: &str) -> Option<(String, String)> {
    let text = decode_b64(response)?;
    let mut parts = text.split('\0');
    let authz = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || user.is_empty() || (!authz.is_empty() && authz != user) {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_plain(&b64("\0alice\0pw")),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            decode_plain(&b64("alice\0alice\0pw")),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(decode_plain(&b64("bob\0alice\0pw")), None);
        assert_eq!(decode_plain(&b64("alice")), None);
        assert_eq!(decode_plain("!!!"), None);
    }
}
