//! The `Received:` trace header (RFC 5321 section 4.4) added to every accepted message.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

/// How the message arrived, for the `with` clause (RFC 3848).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    pub esmtp: bool,
    pub tls: bool,
    pub authenticated: bool,
}

impl Protocol {
    pub fn keyword(self) -> &'static str {
        match (self.esmtp, self.tls, self.authenticated) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }
}

pub struct Trace<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    pub protocol: Protocol,
    pub id: &'a str,
    /// Named in a `for` clause only when there is exactly one (naming several would tell
    /// every recipient who else got the message).
    pub recipients: &'a [String],
    pub tls_detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// The header, folded, ending with CRLF.
pub fn received_header(trace: &Trace<'_>) -> String {
    let ip = match trace.client_ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let helo: String = trace
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect();
    let mut out = format!("Received: from {helo} ([{ip}])\r\n\tby {}", trace.hostname);
    if let Some(tls) = &trace.tls_detail {
        out.push_str(&format!(" ({tls})"));
    }
    out.push_str(&format!(
        " with {} id {}",
        trace.protocol.keyword(),
        trace.id
    ));
    if let [only] = trace.recipients {
        out.push_str(&format!("\r\n\tfor <{only}>"));
    }
    out.push_str(&format!(";\r\n\t{}\r\n", trace.at.to_rfc2822()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_client_server_protocol_and_single_recipient() {
        let at = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let one = vec!["bob@example.net".to_owned()];
        let trace = Trace {
            helo: "client.example (evil;)",
            client_ip: "::ffff:192.0.2.1".parse().unwrap(),
            hostname: "mx.example.com",
            protocol: Protocol {
                esmtp: true,
                tls: true,
                authenticated: true,
            },
            id: "0193",
            recipients: &one,
            tls_detail: None,
            at,
        };
        assert_eq!(
            received_header(&trace),
            "Received: from client.exampleevil ([192.0.2.1])\r\n\tby mx.example.com with \
             ESMTPSA id 0193\r\n\tfor <bob@example.net>;\r\n\tMon, 23 Nov 2026 10:00:00 +0000\r\n"
        );
        let two = vec!["a@x.org".to_owned(), "b@x.org".to_owned()];
        let header = received_header(&Trace {
            recipients: &two,
            ..trace
        });
        assert!(!header.contains("for <"), "{header}");
    }
}
