//! Replies of the SMTP server, each with its enhanced status code (RFC 3463).
//!
//! RFC 2034 exempts the greeting and the EHLO/HELO response from enhanced codes (their
//! first word must be the server's name), and 3xx intermediate replies (354, 334) carry
//! none; every other reply this server sends has one.

use std::borrow::Cow;

/// One SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (`5.5.1`), empty for the exempt replies.
    pub enhanced: &'static str,
    /// Text; `\n` separates the lines of a multi-line reply.
    pub text: Cow<'static, str>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// Whether the reply refuses something (for the session's error count).
    pub fn is_permanent_error(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (`250-…\r\n250 …\r\n`) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if !self.enhanced.is_empty() {
                out.extend_from_slice(self.enhanced.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

pub fn ok(enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
    Reply::new(250, enhanced, text)
}

pub fn bad_sequence(text: &'static str) -> Reply {
    Reply::new(503, "5.5.1", text)
}

pub fn not_implemented() -> Reply {
    Reply::new(502, "5.5.1", "Command not implemented")
}

pub fn line_too_long(limit: usize) -> Reply {
    Reply::new(
        500,
        "5.5.2",
        format!("Line too long (the limit is {limit} octets including CRLF)"),
    )
}

pub fn too_many_errors() -> Reply {
    Reply::new(421, "4.7.0", "Too many errors, closing connection")
}

pub fn timeout() -> Reply {
    Reply::new(
        421,
        "4.4.2",
        "Timeout waiting for the client, closing connection",
    )
}

pub fn shutting_down() -> Reply {
    Reply::new(421, "4.3.2", "Service shutting down, try again later")
}

/// An essential part of the node failed and it is going down: the client must retry,
/// here after the restart or at another node.
pub fn node_failed() -> Reply {
    Reply::new(
        421,
        "4.3.0",
        "Service not available: local failure, closing connection; try again later",
    )
}

/// The spool is out of space (RFC 3463's 4.3.1): a temporary refusal the client retries.
pub fn insufficient_storage() -> Reply {
    Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
}

/// The message could not be stored on enough nodes; nothing of it will be delivered.
pub fn not_replicated(reason: &str) -> Reply {
    Reply::new(
        451,
        "4.3.0",
        format!(
            "Not accepted: the message could not be stored on enough nodes ({reason}); try again later"
        ),
    )
}

/// The message is stored but a holder did not confirm it in time: the client gets no
/// verdict and the connection closes (RFC 5321 4.1.4 lets a client retry).
pub fn outcome_unknown() -> Reply {
    Reply::new(
        421,
        "4.3.0",
        "Service not available: the message was stored but not confirmed everywhere; closing connection",
    )
}

pub fn local_error() -> Reply {
    Reply::new(
        451,
        "4.3.0",
        "Local error, the message was not accepted; try again later",
    )
}

pub fn message_too_big(max: u64) -> Reply {
    Reply::new(
        552,
        "5.3.4",
        format!("Message size exceeds the maximum of {max} octets"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_use_dashes_and_repeat_the_code() {
        let mut out = Vec::new();
        Reply::new(250, "", "mx.example.com\nPIPELINING\nSIZE 10").write_to(&mut out);
        assert_eq!(
            out,
            b"250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        out.clear();
        bad_sequence("Send EHLO first").write_to(&mut out);
        assert_eq!(out, b"503 5.5.1 Send EHLO first\r\n");
    }
}
