//! Pure decisions about listener certificates: is this PEM pair one a node can serve
//! for the pool's hostname, and when must a managed one be renewed.

use std::fmt;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Lifetime of certificates the operator issues itself.
pub const SELF_SIGNED_DAYS: i64 = 90;
/// A Warning Event is raised when a certificate ends within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// What the operator reports about a usable certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Hex, upper case, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub dns_names: Vec<String>,
}

/// Why a certificate cannot be served. Each maps to a `CertificateReady` reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    /// `tls.crt` missing or not a PEM X.509 certificate.
    InvalidCertificate(String),
    /// `tls.key` missing, unreadable, or of an unsupported type.
    InvalidKey(String),
    NotYetValid {
        not_before: i64,
    },
    Expired {
        not_after: i64,
    },
    HostnameMismatch {
        hostname: String,
        names: Vec<String>,
    },
    KeyMismatch,
}

impl CertProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidCertificate(_) | Self::InvalidKey(_) => "InvalidCertificate",
            Self::NotYetValid { .. } => "NotYetValid",
            Self::Expired { .. } => "Expired",
            Self::HostnameMismatch { .. } => "HostnameMismatch",
            Self::KeyMismatch => "KeyMismatch",
        }
    }
}

impl fmt::Display for CertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidCertificate(e) => {
                write!(f, "tls.crt is not a usable PEM certificate: {e}")
            }
            Self::InvalidKey(e) => write!(f, "tls.key is not a usable PEM private key: {e}"),
            Self::NotYetValid { not_before } => {
                write!(
                    f,
                    "the certificate is not valid before {}",
                    rfc3339(*not_before)
                )
            }
            Self::Expired { not_after } => write!(
                f,
                "the certificate expired at {}; replace it with a current one",
                rfc3339(*not_after)
            ),
            Self::HostnameMismatch { hostname, names } => write!(
                f,
                "the certificate is for [{}], not for spec.hostname {hostname}",
                names.join(", ")
            ),
            Self::KeyMismatch => write!(f, "tls.key does not belong to the certificate in tls.crt"),
        }
    }
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Checks a certificate chain and key the way a node and its clients will use them.
pub fn inspect(
    cert_pem: &[u8],
    key_pem: &[u8],
    hostname: &str,
    now: i64,
) -> Result<CertInfo, CertProblem> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertProblem::InvalidCertificate(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| CertProblem::InvalidCertificate("no certificate in tls.crt".into()))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| CertProblem::InvalidCertificate(e.to_string()))?;
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let mut dns_names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if dns_names.is_empty() {
        // Legacy certificates without SANs: browsers ignore the CN, SMTP clients often
        // still accept it.
        dns_names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>();

    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CertProblem::InvalidKey(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(CertProblem::KeyMismatch),
        Err(e) => return Err(CertProblem::InvalidKey(e.to_string())),
    }
    if now < not_before {
        return Err(CertProblem::NotYetValid { not_before });
    }
    if now >= not_after {
        return Err(CertProblem::Expired { not_after });
    }
    if !dns_names.iter().any(|n| name_matches(n, hostname)) {
        return Err(CertProblem::HostnameMismatch {
            hostname: hostname.to_owned(),
            names: dns_names,
        });
    }
    Ok(CertInfo {
        not_before,
        not_after,
        serial,
        dns_names,
    })
}

/// RFC 6125 section 6.4: exact match without regard to case, or a wildcard standing for
/// exactly the left-most label.
pub fn name_matches(pattern: &str, hostname: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => hostname
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == hostname,
    }
}

/// Renew once less than a third of the lifetime is left (30 days of 90), the rule
/// cert-manager and ACME clients follow.
pub fn needs_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    let lifetime = (not_after - not_before).max(0);
    now >= not_after - lifetime / 3
}

/// Whether an Expiring warning is due.
pub fn expires_soon(not_after: i64, now: i64) -> bool {
    not_after - now <= EXPIRY_WARNING_DAYS * 86_400
}

#[derive(Debug, thiserror::Error)]
#[error("cannot issue a self-signed certificate: {0}")]
pub struct IssueError(String);

/// A self-signed certificate for `hostname`, valid from an hour ago (clock skew) for
/// [`SELF_SIGNED_DAYS`]. Returns PEM (certificate, key).
pub fn issue_self_signed(hostname: &str, now: i64) -> Result<(String, String), IssueError> {
    let err = |e: rcgen::Error| IssueError(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()]).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 3600)
        .map_err(|e| IssueError(e.to_string()))?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now + SELF_SIGNED_DAYS * 86_400)
        .map_err(|e| IssueError(e.to_string()))?;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000;

    fn cert(names: &[&str], from: i64, to: i64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(to).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_good_certificate_is_described() {
        let (c, k) = cert(&["mail.example.com"], NOW - 10, NOW + 1000);
        let info = inspect(c.as_bytes(), k.as_bytes(), "MAIL.example.com.", NOW).unwrap();
        assert_eq!(info.not_after, NOW + 1000);
        assert_eq!(info.dns_names, ["mail.example.com"]);
        assert!(!info.serial.is_empty());
    }

    #[test]
    fn expired_not_yet_valid_wrong_name_and_wrong_key_are_refused() {
        let (c, k) = cert(&["mail.example.com"], NOW - 1000, NOW - 10);
        assert_eq!(
            inspect(c.as_bytes(), k.as_bytes(), "mail.example.com", NOW).unwrap_err(),
            CertProblem::Expired {
                not_after: NOW - 10
            }
        );
        let (c, k) = cert(&["mail.example.com"], NOW + 10, NOW + 1000);
        assert_eq!(
            inspect(c.as_bytes(), k.as_bytes(), "mail.example.com", NOW)
                .unwrap_err()
                .reason(),
            "NotYetValid"
        );
        let (c, k) = cert(&["other.example.com"], NOW - 10, NOW + 1000);
        let problem = inspect(c.as_bytes(), k.as_bytes(), "mail.example.com", NOW).unwrap_err();
        assert_eq!(problem.reason(), "HostnameMismatch");
        assert!(
            problem.to_string().contains("other.example.com"),
            "{problem}"
        );
        let (c, _) = cert(&["mail.example.com"], NOW - 10, NOW + 1000);
        let (_, other_key) = cert(&["mail.example.com"], NOW - 10, NOW + 1000);
        assert_eq!(
            inspect(c.as_bytes(), other_key.as_bytes(), "mail.example.com", NOW).unwrap_err(),
            CertProblem::KeyMismatch
        );
        assert_eq!(
            inspect(b"garbage", b"garbage", "mail.example.com", NOW)
                .unwrap_err()
                .reason(),
            "InvalidCertificate"
        );
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_matches("*.example.com", "mail.example.com"));
        assert!(!name_matches("*.example.com", "a.mail.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("Mail.Example.com", "mail.example.com."));
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let day = 86_400;
        assert!(!needs_renewal(0, 90 * day, 59 * day));
        assert!(needs_renewal(0, 90 * day, 60 * day));
        assert!(expires_soon(90 * day, 76 * day));
        assert!(!expires_soon(90 * day, 75 * day));
    }

    #[test]
    fn self_signed_certificates_pass_inspection() {
        let (c, k) = issue_self_signed("relay.example.com", NOW).unwrap();
        let info = inspect(c.as_bytes(), k.as_bytes(), "relay.example.com", NOW).unwrap();
        assert_eq!(info.not_after, NOW + SELF_SIGNED_DAYS * 86_400);
        let (c2, _) = issue_self_signed("relay.example.com", NOW).unwrap();
        let info2 = inspect(c2.as_bytes(), k.as_bytes(), "relay.example.com", NOW);
        assert_eq!(info2.unwrap_err(), CertProblem::KeyMismatch);
    }
}
