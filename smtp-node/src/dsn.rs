//! Delivery status notifications: RFC 3464 reports in an RFC 6522 `multipart/report`.
//!
//! A report has three parts: a human-readable explanation, the machine-readable
//! `message/delivery-status` (per-message fields, then one block per recipient), and the
//! original message — whole, or only its header section when the sender asked for
//! `RET=HDRS` or the message is too large to return. Reports with non-ASCII addresses
//! use the RFC 6533 types (`message/global-delivery-status`, `utf-8` address type).
//!
//! Bounces are queued from the null reverse path, so a bounce that fails is never
//! bounced again (RFC 5321 section 4.5.5); the caller drops it with a log line instead.

use std::fmt::Write as _;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::outbound::outcome::{reply_line, status_code};
use crate::spool::{
    BodyType, Envelope, MessageId, MessageMeta, Notify, Recipient, RecipientState, Reply, Ret,
    UnixMillis,
};

/// Larger originals are returned as headers only, so a bounce stays deliverable.
pub const MAX_RETURNED_MESSAGE: usize = 10 * 1024 * 1024;

/// RFC 3464 section 2.3.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient block of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsnRecipient {
    pub address: String,
    /// ORCPT as received: `addr-type;xtext`.
    pub orcpt: Option<String>,
    pub action: Action,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// The reply that explains the outcome: the remote server's when there was one.
    pub diagnostic: Option<Reply>,
    /// Whether `diagnostic` came from a remote SMTP server (type `smtp`) or from this
    /// node (DNS failures, expiry).
    pub diagnostic_is_remote: bool,
    /// The remote host name, when one answered.
    pub remote_mta: Option<String>,
    pub last_attempt: Option<UnixMillis>,
}

impl DsnRecipient {
    /// The report block for a recipient in the `Failed` state. The status comes from the
    /// failure (so expiry reads 4.4.7); the diagnostic from the last attempt, which holds
    /// the remote server's own words when there were any.
    pub fn failed(recipient: &Recipient) -> Option<Self> {
        let RecipientState::Failed { at, reply } = &recipient.state else {
            return None;
        };
        let last = recipient.attempts.last();
        let remote_mta = last.and_then(|a| a.host.as_deref()).map(host_name);
        let diagnostic = last
            .map(|a| a.reply.clone())
            .unwrap_or_else(|| reply.clone());
        Some(Self {
            address: recipient.address.clone(),
            orcpt: recipient.orcpt.clone(),
            action: Action::Failed,
            status: status_code(reply),
            diagnostic_is_remote: remote_mta.is_some(),
            diagnostic: Some(diagnostic),
            remote_mta,
            last_attempt: Some(last.map(|a| a.at).unwrap_or(*at)),
        })
    }
}

/// Attempt hosts are recorded as `name[address]`; reports name the host.
fn host_name(host: &str) -> String {
    host.split('[').next().unwrap_or(host).trim().to_string()
}

/// Everything a report says.
#[derive(Clone, Debug)]
pub struct Report<'a> {
    /// This node's name, for `Reporting-MTA` and the Message-ID.
    pub reporting_mta: &'a str,
    /// `From:` of the report (the postmaster address).
    pub from: &'a str,
    /// The original envelope sender, who receives the report.
    pub to: &'a str,
    pub env_id: Option<&'a str>,
    pub arrival: UnixMillis,
    pub ret: Ret,
    pub recipients: &'a [DsnRecipient],
    pub original: &'a [u8],
    pub now: UnixMillis,
    /// Unique token for the Message-ID and the MIME boundary.
    pub token: &'a str,
}

/// Renders the report as a complete message (CRLF line ends).
pub fn render(report: &Report<'_>) -> Vec<u8> {
    let utf8 = !report.to.is_ascii()
        || report
            .recipients
            .iter()
            .any(|r| !r.address.is_ascii() || r.orcpt.as_deref().is_some_and(|o| !o.is_ascii()));
    let boundary = format!("=_dsn_{}", report.token);
    let failed = report.recipients.iter().any(|r| r.action == Action::Failed);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else {
        "Delivery Status Notification"
    };

    let mut out = String::new();
    header(
        &mut out,
        "From",
        &format!("Mail Delivery System <{}>", report.from),
    );
    header(&mut out, "To", &format!("<{}>", report.to));
    header(&mut out, "Subject", subject);
    header(&mut out, "Date", &rfc5322_date(report.now));
    header(
        &mut out,
        "Message-ID",
        &format!("<{}@{}>", report.token, report.reporting_mta),
    );
    header(&mut out, "Auto-Submitted", "auto-replied");
    header(&mut out, "MIME-Version", "1.0");
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    out.push_str("\r\nThis is a MIME-encapsulated delivery status notification.\r\n");

    // Human-readable part.
    let _ = write!(out, "\r\n--{boundary}\r\n");
    header(&mut out, "Content-Type", "text/plain; charset=utf-8");
    header(
        &mut out,
        "Content-Transfer-Encoding",
        if utf8 { "8bit" } else { "7bit" },
    );
    out.push_str("\r\n");
    let _ = write!(
        out,
        "This is the mail system at {}.\r\n\r\n",
        report.reporting_mta
    );
    if failed {
        out.push_str(
            "Your message could not be delivered to one or more recipients.\r\n\
             The error reported for each is below; the message is attached.\r\n\r\n",
        );
    } else {
        out.push_str("Delivery status of your message:\r\n\r\n");
    }
    for r in report.recipients {
        let detail = match (&r.diagnostic, &r.remote_mta) {
            (Some(reply), Some(host)) => format!("host {host} said: {}", reply_line(reply)),
            (Some(reply), None) => reply_line(reply),
            (None, _) => format!("status {}", r.status),
        };
        let _ = write!(out, "<{}> ({}): {detail}\r\n", r.address, r.action.as_str());
    }

    // Machine-readable part.
    let _ = write!(out, "\r\n--{boundary}\r\n");
    header(
        &mut out,
        "Content-Type",
        if utf8 {
            "message/global-delivery-status"
        } else {
            "message/delivery-status"
        },
    );
    out.push_str("\r\n");
    header(
        &mut out,
        "Reporting-MTA",
        &format!("dns; {}", report.reporting_mta),
    );
    if let Some(env_id) = report.env_id {
        header(&mut out, "Original-Envelope-Id", &xtext_decode(env_id));
    }
    header(&mut out, "Arrival-Date", &rfc5322_date(report.arrival));
    let address_type = if utf8 { "utf-8" } else { "rfc822" };
    for r in report.recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt
            && let Some((kind, value)) = orcpt.split_once(';')
        {
            header(
                &mut out,
                "Original-Recipient",
                &format!("{}; {}", kind.trim(), xtext_decode(value.trim())),
            );
        }
        header(
            &mut out,
            "Final-Recipient",
            &format!("{address_type}; {}", r.address),
        );
        header(&mut out, "Action", r.action.as_str());
        header(&mut out, "Status", &r.status);
        if let Some(host) = &r.remote_mta {
            header(&mut out, "Remote-MTA", &format!("dns; {host}"));
        }
        if let Some(reply) = &r.diagnostic {
            let kind = if r.diagnostic_is_remote {
                "smtp"
            } else {
                "X-smtpfleet"
            };
            header(
                &mut out,
                "Diagnostic-Code",
                &format!("{kind}; {}", reply_line(reply)),
            );
        }
        if let Some(at) = r.last_attempt {
            header(&mut out, "Last-Attempt-Date", &rfc5322_date(at));
        }
    }

    // The original.
    let _ = write!(out, "\r\n--{boundary}\r\n");
    let headers_only = report.ret == Ret::Headers || report.original.len() > MAX_RETURNED_MESSAGE;
    let returned = if headers_only {
        header_section(report.original)
    } else {
        report.original
    };
    let eight_bit = returned.iter().any(|b| *b >= 0x80);
    let content_type = match (headers_only, utf8 || eight_bit) {
        (true, false) => "text/rfc822-headers",
        (true, true) => "message/global-headers",
        (false, false) => "message/rfc822",
        (false, true) => "message/global",
    };
    header(&mut out, "Content-Type", content_type);
    if eight_bit {
        header(&mut out, "Content-Transfer-Encoding", "8bit");
    }
    out.push_str("\r\n");

    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The queue entry for a report: from the null sender to the original sender, with the
/// same replica set as the message it reports on. `None` when the original came from the
/// null sender: bounces are never bounced.
pub fn bounce_message(
    original: &MessageMeta,
    id: MessageId,
    body: Vec<u8>,
    now: UnixMillis,
) -> Option<(MessageMeta, Bytes)> {
    if original.envelope.mail_from.is_empty() {
        return None;
    }
    let eight_bit = body.iter().any(|b| *b >= 0x80);
    let recipient = Recipient {
        notify: Notify {
            never: true,
            ..Notify::default()
        },
        ..Recipient::new(original.envelope.mail_from.clone())
    };
    let meta = MessageMeta {
        id,
        received_at: now,
        size: body.len() as u64,
        envelope: Envelope {
            mail_from: String::new(),
            recipients: vec![recipient],
            body_type: if eight_bit {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8: !original.envelope.mail_from.is_ascii(),
            ret: Ret::Headers,
            env_id: None,
            client_ip: None,
            helo: None,
            auth_user: None,
        },
        ownership: original.ownership.clone(),
    };
    Some((meta, Bytes::from(body)))
}

/// The header section of a message, including the empty line that ends it (or the whole
/// input when there is no body).
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &message[..2];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(pos) => &message[..pos + 4],
        None => message,
    }
}

/// Writes a header field, folding long values at spaces (RFC 5322 section 2.2.3) and
/// turning any line break inside the value into a space.
fn header(out: &mut String, name: &str, value: &str) {
    let value: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let mut line_len = name.len() + 1;
    out.push_str(name);
    out.push(':');
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 && line_len + 1 + word.len() > 78 && line_len > name.len() + 1 {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
    }
    out.push_str("\r\n");
}

fn rfc5322_date(millis: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis as i64)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

/// Decodes RFC 3461 xtext (`+HH` escapes); malformed escapes are kept as they are.
pub fn xtext_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use mail_parser::{MessageParser, MimeHeaders};

    use super::*;
    use crate::outbound::test_support::test_meta;
    use crate::spool::{Attempt, NodeId};

    const ORIGINAL: &[u8] = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hello\r\n\
Message-ID: <orig@example.com>\r\n\r\nbody line\r\n";

    fn failed_recipient() -> DsnRecipient {
        DsnRecipient {
            address: "b@example.net".into(),
            orcpt: Some("rfc822;B+2Bx@example.net".into()),
            action: Action::Failed,
            status: "5.1.1".into(),
            diagnostic: Some(Reply {
                code: 550,
                enhanced: Some("5.1.1".into()),
                text: "no such user here, and this explanation is long enough to need folding somewhere".into(),
            }),
            diagnostic_is_remote: true,
            remote_mta: Some("mx.example.net".into()),
            last_attempt: Some(1_700_000_100_000),
        }
    }

    fn report<'a>(recipients: &'a [DsnRecipient], ret: Ret, original: &'a [u8]) -> Report<'a> {
        Report {
            reporting_mta: "relay.example.com",
            from: "MAILER-DAEMON@relay.example.com",
            to: "a@example.com",
            env_id: Some("env+2B1"),
            arrival: 1_700_000_000_000,
            ret,
            recipients,
            original,
            now: 1_700_000_200_000,
            token: "0123abcd",
        }
    }

    /// Unfolded value of a field in a delivery-status block.
    fn field(block: &str, name: &str) -> Option<String> {
        let unfolded = block.replace("\r\n ", " ");
        unfolded.lines().find_map(|line| {
            line.strip_prefix(&format!("{name}: "))
                .map(|value| value.trim_end().to_string())
        })
    }

    #[test]
    fn renders_a_parsable_multipart_report() {
        let recipients = [failed_recipient()];
        let bytes = render(&report(&recipients, Ret::Full, ORIGINAL));
        assert!(
            bytes.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'),
            "CRLF only"
        );
        let message = MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(
            message.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(
            message.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        let ct = message.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(message.parts.len(), 4, "root + three parts");

        let human = message.body_text(0).unwrap();
        assert!(
            human.contains("<b@example.net> (failed): host mx.example.net said: 550 5.1.1"),
            "{human}"
        );

        let status_part = &message.parts[2];
        assert_eq!(
            status_part.content_type().unwrap().subtype(),
            Some("delivery-status")
        );
        let status = String::from_utf8_lossy(status_part.contents()).into_owned();
        let blocks: Vec<&str> = status.split("\r\n\r\n").collect();
        assert_eq!(
            field(blocks[0], "Reporting-MTA").as_deref(),
            Some("dns; relay.example.com")
        );
        assert_eq!(
            field(blocks[0], "Original-Envelope-Id").as_deref(),
            Some("env+1")
        );
        assert_eq!(
            field(blocks[0], "Arrival-Date").as_deref(),
            Some("Tue, 14 Nov 2023 22:13:20 +0000")
        );
        let rcpt = blocks[1];
        assert_eq!(
            field(rcpt, "Final-Recipient").as_deref(),
            Some("rfc822; b@example.net")
        );
        assert_eq!(
            field(rcpt, "Original-Recipient").as_deref(),
            Some("rfc822; B+x@example.net")
        );
        assert_eq!(field(rcpt, "Action").as_deref(), Some("failed"));
        assert_eq!(field(rcpt, "Status").as_deref(), Some("5.1.1"));
        assert_eq!(
            field(rcpt, "Remote-MTA").as_deref(),
            Some("dns; mx.example.net")
        );
        assert_eq!(
            field(rcpt, "Diagnostic-Code").as_deref(),
            Some(
                "smtp; 550 5.1.1 no such user here, and this explanation is long enough to need folding somewhere"
            )
        );
        assert!(status.lines().all(|l| l.len() <= 78), "folded:\n{status}");

        let returned = message.parts[3].message().expect("message/rfc822 part");
        assert_eq!(returned.subject(), Some("hello"));
        assert_eq!(returned.message_id(), Some("orig@example.com"));
    }

    #[test]
    fn ret_hdrs_returns_only_the_header_section() {
        let recipients = [failed_recipient()];
        let bytes = render(&report(&recipients, Ret::Headers, ORIGINAL));
        let message = MessageParser::new().parse(&bytes).unwrap();
        let part = &message.parts[3];
        assert_eq!(part.content_type().unwrap().ctype(), "text");
        assert_eq!(
            part.content_type().unwrap().subtype(),
            Some("rfc822-headers")
        );
        let text = String::from_utf8_lossy(part.contents());
        assert!(text.contains("Subject: hello"));
        assert!(!text.contains("body line"));
    }

    #[test]
    fn non_ascii_reports_use_global_types() {
        let mut r = failed_recipient();
        r.address = "j\u{f6}rg@example.net".into();
        let recipients = [r];
        let bytes = render(&report(&recipients, Ret::Full, ORIGINAL));
        let message = MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(
            message.parts[2].content_type().unwrap().subtype(),
            Some("global-delivery-status")
        );
        let status = String::from_utf8_lossy(message.parts[2].contents()).into_owned();
        assert!(
            status.contains("Final-Recipient: utf-8; j\u{f6}rg@example.net"),
            "{status}"
        );
    }

    fn meta(mail_from: &str) -> MessageMeta {
        let mut meta = test_meta(mail_from, vec![Recipient::new("b@example.net")]);
        meta.ownership.replicas = vec![NodeId("n2".into())];
        meta
    }

    #[test]
    fn bounces_go_from_the_null_sender_and_never_to_it() {
        let id = MessageId::new();
        let (bounce, body) = bounce_message(&meta("a@example.com"), id, b"x".to_vec(), 42).unwrap();
        assert_eq!(bounce.id, id);
        assert_eq!(bounce.envelope.mail_from, "");
        assert_eq!(bounce.envelope.recipients.len(), 1);
        assert_eq!(bounce.envelope.recipients[0].address, "a@example.com");
        assert_eq!(bounce.envelope.recipients[0].state, RecipientState::Pending);
        assert_eq!(bounce.received_at, 42);
        assert_eq!(bounce.size, 1);
        assert_eq!(bounce.ownership.replicas, [NodeId("n2".into())]);
        assert_eq!(&body[..], b"x");
        assert!(bounce_message(&meta(""), id, b"x".to_vec(), 42).is_none());
    }

    #[test]
    fn failed_recipient_block_uses_the_last_attempt() {
        let recipient = Recipient {
            state: RecipientState::Failed {
                at: 900,
                reply: Reply {
                    code: 451,
                    enhanced: Some("4.4.7".into()),
                    text: "delivery time expired".into(),
                },
            },
            attempts: vec![Attempt {
                at: 800,
                host: Some("mx.example.net[192.0.2.1]".into()),
                reply: Reply {
                    code: 451,
                    enhanced: Some("4.3.0".into()),
                    text: "try later".into(),
                },
            }],
            ..Recipient::new("b@example.net")
        };
        let block = DsnRecipient::failed(&recipient).unwrap();
        assert_eq!(block.status, "4.4.7");
        assert_eq!(block.remote_mta.as_deref(), Some("mx.example.net"));
        assert_eq!(block.diagnostic.as_ref().unwrap().text, "try later");
        assert!(block.diagnostic_is_remote);
        assert_eq!(block.last_attempt, Some(800));
        assert!(DsnRecipient::failed(&Recipient::new("x@y")).is_none());
    }

    #[test]
    fn header_sections_and_xtext() {
        assert_eq!(header_section(b"A: 1\r\n\r\nbody"), b"A: 1\r\n\r\n");
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(xtext_decode("a+2Bb+3Dc"), "a+b=c");
        assert_eq!(xtext_decode("bad+zz"), "bad+zz");
    }
}
