//! The validated form of a MailDomain spec, and what is built from it (pure).
//!
//! The API server rejects most invalid specs itself (OpenAPI + CEL); these checks catch
//! what a schema cannot express (an SPF mechanism that does not parse, a duration) and
//! name the field, so the status says exactly what to fix.

use chrono::{DateTime, Duration, Utc};

use super::keys::StoredKeys;
use crate::dkim_keys::{KeyAlgorithm, RotationPolicy};
use crate::dns::{DkimPublication, DmarcSpec, MtaStsSpec, PublishSpec, SpfAll, TlsRptSpec};

/// Default overlap after signing switched to a new key, before the old key is deleted:
/// long enough for mail queued elsewhere with the old signature to be delivered.
pub const DEFAULT_OVERLAP_HOURS: i64 = 7 * 24;
/// After this long without the next key's DNS record, the rotation is reported stalled.
pub const DEFAULT_MAX_DNS_WAIT_HOURS: i64 = 7 * 24;

/// How the signing key is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySettings {
    /// The operator generates and rotates keys.
    Generated {
        selector: String,
        algorithm: KeyAlgorithm,
        rotate_after: Option<Duration>,
        overlap: Duration,
    },
    /// The user's key, copied from a Secret in the MailDomain's namespace; never rotated
    /// by the operator.
    UserProvided {
        selector: String,
        secret_name: String,
        /// Data key in that Secret.
        secret_key: String,
    },
}

impl KeySettings {
    pub fn selector(&self) -> &str {
        match self {
            Self::Generated { selector, .. } | Self::UserProvided { selector, .. } => selector,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    pub domain: String,
    pub relay_pool: String,
    pub key: KeySettings,
    pub spf_mechanisms: Vec<String>,
    pub spf_all: SpfAll,
    pub dmarc: Option<DmarcSpec>,
    pub mta_sts: Option<MtaStsSpec>,
    pub tls_rpt: Option<TlsRptSpec>,
}

/// A spec problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidSpec {
    pub field: String,
    pub problem: String,
}

impl InvalidSpec {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A DNS name: labels of letters, digits, `-` and `_` (for `_`-prefixed service names),
/// 1–63 bytes each, 253 in total.
pub fn check_dns_name(field: &str, name: &str, min_labels: usize) -> Result<String, InvalidSpec> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = n.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if n.is_empty() || n.len() > 253 || !labels.iter().all(label_ok) || labels.len() < min_labels {
        return Err(InvalidSpec::new(
            field,
            format!("{name:?} is not a valid DNS name"),
        ));
    }
    Ok(n)
}

/// Each extra SPF mechanism must parse on its own, and must not end evaluation or
/// replace the record (`all`, `redirect=`, `exp=`), which the rendered record adds.
pub fn check_spf_mechanisms(
    field: &str,
    mechanisms: &[String],
) -> Result<Vec<String>, InvalidSpec> {
    use mail_auth::common::parse::TxtRecordParser as _;
    mechanisms
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let m = m.trim();
            let f = format!("{field}[{i}]");
            let lower = m.to_ascii_lowercase();
            let bare = lower.trim_start_matches(['+', '-', '~', '?']);
            if m.is_empty() || m.contains(char::is_whitespace) {
                return Err(InvalidSpec::new(
                    f,
                    "one mechanism per entry, without spaces",
                ));
            }
            if bare == "all" || bare.starts_with("redirect=") || bare.starts_with("exp=") {
                return Err(InvalidSpec::new(
                    f,
                    format!(
                        "{m:?} is not allowed: the operator renders the record's all/redirect/exp"
                    ),
                ));
            }
            // mail-auth is lenient with addresses; be strict, a typo here breaks SPF.
            for (prefix, v6) in [("ip4:", false), ("ip6:", true)] {
                if let Some(net) = bare.strip_prefix(prefix) {
                    let addr = net.split('/').next().unwrap_or_default();
                    let ok = if v6 {
                        addr.parse::<std::net::Ipv6Addr>().is_ok()
                    } else {
                        addr.parse::<std::net::Ipv4Addr>().is_ok()
                    };
                    if !ok {
                        return Err(InvalidSpec::new(
                            f,
                            format!("{m:?}: {addr:?} is not an IP address"),
                        ));
                    }
                }
            }
            let parsed =
                mail_auth::spf::Spf::parse(format!("v=spf1 {m}").as_bytes()).map_err(|e| {
                    InvalidSpec::new(&f, format!("{m:?} is not an SPF mechanism ({e})"))
                })?;
            if parsed.directives.len() != 1 {
                return Err(InvalidSpec::new(
                    f,
                    format!("{m:?} is not an SPF mechanism"),
                ));
            }
            Ok(m.to_string())
        })
        .collect()
}

/// A report destination: `mailto:` / `https:` URI or a bare address.
pub fn check_report_uri(field: &str, uri: &str) -> Result<String, InvalidSpec> {
    let u = uri.trim();
    let lower = u.to_ascii_lowercase();
    let ok = if let Some(addr) = lower.strip_prefix("mailto:") {
        addr.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
    } else if lower.starts_with("https://") {
        u.len() > "https://".len() && !u.contains(char::is_whitespace)
    } else {
        lower.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.contains(char::is_whitespace)
        })
    };
    if ok {
        Ok(u.to_string())
    } else {
        Err(InvalidSpec::new(
            field,
            format!("{uri:?} is not an e-mail address, mailto: or https: URI"),
        ))
    }
}

/// The rotation policy for generated keys.
pub fn rotation_policy(key: &KeySettings) -> Option<RotationPolicy> {
    match key {
        KeySettings::Generated {
            selector,
            algorithm,
            rotate_after,
            overlap,
        } => Some(RotationPolicy {
            base_selector: selector.clone(),
            algorithm: *algorithm,
            rotate_after: *rotate_after,
            overlap: *overlap,
            max_dns_wait: Duration::hours(DEFAULT_MAX_DNS_WAIT_HOURS),
        }),
        KeySettings::UserProvided { .. } => None,
    }
}

/// The records to publish for `settings` with the pool's hostname and the current keys:
/// the signing key's record is required; a next key's and retiring keys' are listed
/// with a note but do not hold back `DNSVerified`.
pub fn publish_spec(
    settings: &DomainSettings,
    pool_hostname: &str,
    keys: &StoredKeys,
) -> PublishSpec {
    let mut dkim = Vec::new();
    let mut add = |selector: &str, required: bool, note: Option<String>| {
        if let Some(stored) = keys.keys.get(selector) {
            dkim.push(DkimPublication {
                selector: selector.to_string(),
                algorithm: stored.key.algorithm,
                public_key: stored.key.dns_public_key.clone(),
                required,
                note,
            });
        }
    };
    if let Some(a) = &keys.ring.active {
        add(&a.selector, true, None);
    }
    if let Some(n) = &keys.ring.next {
        add(
            &n.selector,
            false,
            Some("next key: publish it so signing can switch to it".to_string()),
        );
    }
    for r in &keys.ring.retiring {
        add(
            &r.key.selector,
            false,
            Some(format!(
                "previous key: keep it published until {}, then remove it",
                r.retire_at.to_rfc3339()
            )),
        );
    }
    PublishSpec {
        domain: settings.domain.clone(),
        pool_hostname: pool_hostname.to_string(),
        dkim,
        spf_mechanisms: settings.spf_mechanisms.clone(),
        spf_all: settings.spf_all,
        dmarc: settings.dmarc.clone(),
        mta_sts: settings.mta_sts.clone(),
        tls_rpt: settings.tls_rpt.clone(),
    }
}

/// When the key ring next needs attention by time alone (rotation due, overlap over).
pub fn next_key_event(action: &crate::dkim_keys::RotationAction) -> Option<DateTime<Utc>> {
    match action {
        crate::dkim_keys::RotationAction::Idle { until } => *until,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert_eq!(
            check_dns_name("spec.domain", "Example.COM.", 2).unwrap(),
            "example.com"
        );
        assert!(check_dns_name("spec.domain", "localhost", 2).is_err());
        assert!(check_dns_name("spec.domain", "a..b", 2).is_err());
        assert!(check_dns_name("spec.domain", "-a.b", 2).is_err());
        assert!(check_dns_name("spec.domain", &format!("{}.com", "a".repeat(64)), 2).is_err());
        let e = check_dns_name("spec.dkim.selector", "sel ector", 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.dkim.selector: \"sel ector\" is not a valid DNS name"
        );
        assert!(check_dns_name("spec.dkim.selector", "s1.2026", 1).is_ok());
    }

    #[test]
    fn spf_mechanisms() {
        let ok = check_spf_mechanisms(
            "spec.spf.mechanisms",
            &[
                "include:_spf.google.com".into(),
                "ip4:192.0.2.0/24".into(),
                "-ip6:2001:db8::/32".into(),
            ],
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        for bad in [
            "-all",
            "redirect=x.example",
            "include:",
            "a b",
            "ip4:300.1.1.1",
            "foo",
        ] {
            let e =
                check_spf_mechanisms("spec.spf.mechanisms", &["a".into(), bad.into()]).unwrap_err();
            assert_eq!(e.field, "spec.spf.mechanisms[1]", "{bad}");
        }
    }

    #[test]
    fn report_uris() {
        for ok in [
            "dmarc@example.com",
            "mailto:dmarc@example.com",
            "https://r.example/x",
        ] {
            assert!(check_report_uri("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", "nobody", "mailto:", "ftp://x", "https://"] {
            assert!(check_report_uri("f", bad).is_err(), "{bad}");
        }
    }
}
