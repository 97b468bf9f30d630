//! What one delivery attempt did to one recipient, and the replies this node makes up
//! when no remote server answered (DNS failures, refused connections, expiry).

use crate::spool::Reply;

/// The result of one attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop took responsibility (250 after the message body).
    Delivered(Reply),
    /// Worth trying again later.
    Temporary(Reply),
    /// Will never work: bounce.
    Permanent(Reply),
}

impl Outcome {
    /// Classifies a remote reply by its first digit (RFC 5321 section 4.2.1). Anything that
    /// is neither 2yz nor 5yz, including nonsense codes, is treated as temporary so that a
    /// confused server never causes a bounce.
    pub fn from_reply(reply: Reply) -> Self {
        match reply.code {
            200..=299 => Self::Delivered(reply),
            500..=599 => Self::Permanent(reply),
            _ => Self::Temporary(reply),
        }
    }

    pub fn reply(&self) -> &Reply {
        match self {
            Self::Delivered(r) | Self::Temporary(r) | Self::Permanent(r) => r,
        }
    }
}

/// A reply produced locally, always with an enhanced status code.
pub fn local_reply(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
    Reply {
        code,
        enhanced: Some(enhanced.to_string()),
        text: text.into(),
    }
}

/// Name resolution failed in a way that may heal (SERVFAIL, timeout, refused).
pub fn dns_temporary(detail: impl std::fmt::Display) -> Outcome {
    Outcome::Temporary(local_reply(
        451,
        "4.4.3",
        format!("DNS lookup failed: {detail}"),
    ))
}

/// The enhanced status code of a reply, or one derived from its basic code when the
/// server gave none (RFC 3463: `X.0.0`).
pub fn status_code(reply: &Reply) -> String {
    match &reply.enhanced {
        Some(code) => code.clone(),
        None => match reply.code / 100 {
            2 => "2.0.0".to_string(),
            5 => "5.0.0".to_string(),
            _ => "4.0.0".to_string(),
        },
    }
}

/// One-line rendering for logs and DSN diagnostic codes: `550 5.1.1 no such user`.
pub fn reply_line(reply: &Reply) -> String {
    let text = reply.text.split(['\r', '\n']).filter(|l| !l.is_empty());
    let text = text.collect::<Vec<_>>().join(" ");
    match &reply.enhanced {
        Some(enhanced) => format!("{} {enhanced} {text}", reply.code),
        None => format!("{} {text}", reply.code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: "x".into(),
        }
    }

    #[test]
    fn classifies_by_first_digit() {
        assert!(matches!(
            Outcome::from_reply(reply(250)),
            Outcome::Delivered(_)
        ));
        assert!(matches!(
            Outcome::from_reply(reply(451)),
            Outcome::Temporary(_)
        ));
        assert!(matches!(
            Outcome::from_reply(reply(550)),
            Outcome::Permanent(_)
        ));
        assert!(matches!(
            Outcome::from_reply(reply(354)),
            Outcome::Temporary(_)
        ));
        assert!(matches!(
            Outcome::from_reply(reply(999)),
            Outcome::Temporary(_)
        ));
    }

    #[test]
    fn status_code_falls_back_to_class() {
        assert_eq!(status_code(&reply(550)), "5.0.0");
        assert_eq!(status_code(&reply(421)), "4.0.0");
        assert_eq!(
            status_code(&local_reply(556, "5.1.10", "null MX")),
            "5.1.10"
        );
    }

    #[test]
    fn reply_line_joins_multiline_text() {
        let r = Reply {
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "no such user\nsee https://example.com".into(),
        };
        assert_eq!(
            reply_line(&r),
            "550 5.1.1 no such user see https://example.com"
        );
    }
}
