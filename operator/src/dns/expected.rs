//! The exact DNS records a MailDomain needs, rendered from its settings.
//!
//! Values are what the user pastes into a DNS provider's form. TXT values longer than 255
//! bytes (every RSA-2048 DKIM key) cannot be one DNS character-string: a zone file needs
//! them split into several quoted strings, which receivers concatenate without spaces.
//! Most DNS providers' web forms split on their own; [`ExpectedRecord::zone_file_line`]
//! renders the split form for zone files, and the record's status message says so.

use super::{RecordType, fqdn, normalize_name};
use crate::dkim_keys::{KeyAlgorithm, dkim_record_value};

/// Longest DNS character-string (RFC 1035 §3.3).
pub const MAX_TXT_STRING: usize = 255;

/// MX preference rendered for the pool.
pub const MX_PREFERENCE: u16 = 10;

/// Default MTA-STS `max_age` (one week, as RFC 8461 suggests for enforce policies).
pub const DEFAULT_MTA_STS_MAX_AGE: u32 = 604_800;

/// Everything the records depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    /// The sending domain.
    pub domain: String,
    /// The pool's hostname (EHLO name; MX target; authorised in SPF).
    pub pool_hostname: String,
    /// DKIM keys whose records must or may be published.
    pub dkim: Vec<DkimPublication>,
    /// `spec.spf` extra mechanisms, in order, e.g. `include:_spf.google.com`.
    pub spf_mechanisms: Vec<String>,
    /// The final `all` of the SPF record.
    pub spf_all: SpfAll,
    /// `None`: no DMARC record is expected.
    pub dmarc: Option<DmarcSpec>,
    pub mta_sts: Option<MtaStsSpec>,
    pub tls_rpt: Option<TlsRptSpec>,
}

/// One DKIM key to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimPublication {
    pub selector: String,
    pub algorithm: KeyAlgorithm,
    /// Base64 `p=` value.
    pub public_key: String,
    /// Whether `DNSVerified` waits for it: true for the signing key, false for a key that
    /// is about to be used or is being retired.
    pub required: bool,
    /// Extra words for the status message, e.g. "next key: publish it so signing can
    /// switch".
    pub note: Option<String>,
}

/// Qualifier of the SPF record's final `all`: what receivers do with mail from hosts no
/// mechanism matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpfAll {
    /// `~all`
    #[default]
    SoftFail,
    /// `-all`
    Fail,
    /// `?all`
    Neutral,
}

impl SpfAll {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoftFail => "~all",
            Self::Fail => "-all",
            Self::Neutral => "?all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Quarantine => "quarantine",
            Self::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcSpec {
    /// `None` accepts any published policy (and renders `p=none`).
    pub policy: Option<DmarcPolicy>,
    /// Aggregate report addresses (`mailto:` URIs; a bare address gets `mailto:`).
    pub rua: Vec<String>,
    /// Percentage of mail the policy applies to; `None` means 100.
    pub pct: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtaStsMode {
    Enforce,
    Testing,
    None,
}

impl MtaStsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaStsSpec {
    pub mode: MtaStsMode,
    /// Seconds; [`DEFAULT_MTA_STS_MAX_AGE`] when the spec says nothing.
    pub max_age: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptSpec {
    /// Report URIs (`mailto:` or `https:`; a bare address gets `mailto:`).
    pub rua: Vec<String>,
}

/// Which of the domain's records this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Mx,
    Spf,
    Dkim,
    Dmarc,
    MtaSts,
    TlsRpt,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mx => "MX",
            Self::Spf => "SPF",
            Self::Dkim => "DKIM",
            Self::Dmarc => "DMARC",
            Self::MtaSts => "MTA-STS",
            Self::TlsRpt => "TLS-RPT",
        }
    }
}

/// What a record must mean, for [`super::compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    Mx {
        /// Normalized (lowercase, no trailing dot).
        host: String,
    },
    Spf {
        domain: String,
        pool_host: String,
        mechanisms: Vec<String>,
        all: SpfAll,
    },
    Dkim {
        selector: String,
        algorithm: KeyAlgorithm,
        public_key: String,
    },
    Dmarc(DmarcSpec),
    MtaSts {
        id: String,
        /// The policy file to serve at `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
        policy: String,
    },
    TlsRpt {
        rua: Vec<String>,
    },
}

/// One record the user must (or should) publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRecord {
    /// Fully qualified, with the trailing dot.
    pub name: String,
    /// The value to publish: `10 pool.example.net.` for MX, the whole string for TXT.
    pub value: String,
    pub expectation: Expectation,
    pub required: bool,
    /// Extra words for the status message.
    pub note: Option<String>,
}

impl ExpectedRecord {
    pub fn kind(&self) -> RecordKind {
        match self.expectation {
            Expectation::Mx { .. } => RecordKind::Mx,
            Expectation::Spf { .. } => RecordKind::Spf,
            Expectation::Dkim { .. } => RecordKind::Dkim,
            Expectation::Dmarc(_) => RecordKind::Dmarc,
            Expectation::MtaSts { .. } => RecordKind::MtaSts,
            Expectation::TlsRpt { .. } => RecordKind::TlsRpt,
        }
    }

    pub fn record_type(&self) -> RecordType {
        match self.expectation {
            Expectation::Mx { .. } => RecordType::Mx,
            _ => RecordType::Txt,
        }
    }

    /// The record as a zone-file line (`<name> <ttl> IN <type> <rdata>`), TXT values split
    /// into quoted strings of at most 255 bytes.
    pub fn zone_file_line(&self, ttl: u32) -> String {
        let rdata = match self.record_type() {
            RecordType::Mx => self.value.clone(),
            RecordType::Txt => txt_strings(&self.value)
                .iter()
                .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(" "),
        };
        format!("{} {ttl} IN {} {rdata}", self.name, self.record_type())
    }
}

/// Splits a TXT value into DNS character-strings of at most [`MAX_TXT_STRING`] bytes.
/// Values here are ASCII, so byte boundaries are character boundaries.
pub fn txt_strings(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while rest.len() > MAX_TXT_STRING {
        let mut cut = MAX_TXT_STRING;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// Renders every record for `spec`, in the order the status lists them.
pub fn expected_records(spec: &PublishSpec) -> Vec<ExpectedRecord> {
    let domain = normalize_name(&spec.domain);
    let pool = normalize_name(&spec.pool_hostname);
    let mut out = Vec::new();

    out.push(ExpectedRecord {
        name: fqdn(&domain),
        value: format!("{MX_PREFERENCE} {pool}."),
        expectation: Expectation::Mx { host: pool.clone() },
        required: true,
        note: None,
    });

    let mechanisms: Vec<String> = spec
        .spf_mechanisms
        .iter()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    let mut spf = format!("v=spf1 a:{pool}");
    for m in &mechanisms {
        spf.push(' ');
        spf.push_str(m);
    }
    spf.push(' ');
    spf.push_str(spec.spf_all.as_str());
    out.push(ExpectedRecord {
        name: fqdn(&domain),
        value: spf,
        expectation: Expectation::Spf {
            domain: domain.clone(),
            pool_host: pool.clone(),
            mechanisms,
            all: spec.spf_all,
        },
        required: true,
        note: None,
    });

    for key in &spec.dkim {
        out.push(ExpectedRecord {
            name: fqdn(&format!("{}._domainkey.{domain}", key.selector)),
            value: dkim_record_value(key.algorithm, &key.public_key),
            expectation: Expectation::Dkim {
                selector: key.selector.clone(),
                algorithm: key.algorithm,
                public_key: key.public_key.clone(),
            },
            required: key.required,
            note: key.note.clone(),
        });
    }

    if let Some(dmarc) = &spec.dmarc {
        out.push(ExpectedRecord {
            name: fqdn(&format!("_dmarc.{domain}")),
            value: dmarc_value(dmarc),
            expectation: Expectation::Dmarc(dmarc.clone()),
            required: true,
            note: None,
        });
    }

    if let Some(sts) = &spec.mta_sts {
        let policy = mta_sts_policy(sts, &pool);
        let id = mta_sts_id(&policy);
        out.push(ExpectedRecord {
            name: fqdn(&format!("_mta-sts.{domain}")),
            value: format!("v=STSv1; id={id}"),
            expectation: Expectation::MtaSts { id, policy },
            required: true,
            note: None,
        });
    }

    if let Some(rpt) = &spec.tls_rpt {
        let rua: Vec<String> = rpt.rua.iter().map(|u| report_uri(u)).collect();
        out.push(ExpectedRecord {
            name: fqdn(&format!("_smtp._tls.{domain}")),
            value: format!("v=TLSRPTv1; rua={}", rua.join(",")),
            expectation: Expectation::TlsRpt { rua },
            required: true,
            note: None,
        });
    }
    out
}

fn dmarc_value(d: &DmarcSpec) -> String {
    let mut v = format!(
        "v=DMARC1; p={}",
        d.policy.unwrap_or(DmarcPolicy::None).as_str()
    );
    if !d.rua.is_empty() {
        let rua: Vec<String> = d.rua.iter().map(|u| report_uri(u)).collect();
        v.push_str(&format!("; rua={}", rua.join(",")));
    }
    if let Some(pct) = d.pct.filter(|p| *p < 100) {
        v.push_str(&format!("; pct={pct}"));
    }
    v
}

/// `mailto:` for bare addresses; URIs pass through.
pub fn report_uri(uri: &str) -> String {
    let uri = uri.trim();
    if uri.contains(':') {
        uri.to_string()
    } else {
        format!("mailto:{uri}")
    }
}

/// The MTA-STS policy file (RFC 8461 §3.2) for the pool as the only MX.
pub fn mta_sts_policy(spec: &MtaStsSpec, pool_host: &str) -> String {
    format!(
        "version: STSv1\nmode: {}\nmx: {}\nmax_age: {}\n",
        spec.mode.as_str(),
        normalize_name(pool_host),
        spec.max_age
    )
}

/// The policy `id`: derived from the policy text, so it changes exactly when the policy
/// does (which is what tells senders to fetch it again).
pub fn mta_sts_id(policy: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, policy.as_bytes());
    digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PublishSpec {
        PublishSpec {
            domain: "Example.COM.".into(),
            pool_hostname: "relay.pool.example.net".into(),
            dkim: vec![DkimPublication {
                selector: "mail".into(),
                algorithm: KeyAlgorithm::Rsa,
                public_key: "A".repeat(392),
                required: true,
                note: None,
            }],
            spf_mechanisms: vec![
                "include:_spf.google.com".into(),
                " ip4:192.0.2.0/24 ".into(),
            ],
            spf_all: SpfAll::Fail,
            dmarc: Some(DmarcSpec {
                policy: Some(DmarcPolicy::Reject),
                rua: vec!["dmarc@example.com".into()],
                pct: Some(50),
            }),
            mta_sts: Some(MtaStsSpec {
                mode: MtaStsMode::Enforce,
                max_age: DEFAULT_MTA_STS_MAX_AGE,
            }),
            tls_rpt: Some(TlsRptSpec {
                rua: vec![
                    "tls@example.com".into(),
                    "https://rpt.example.com/v1".into(),
                ],
            }),
        }
    }

    #[test]
    fn renders_every_record() {
        let recs = expected_records(&spec());
        let rows: Vec<(RecordKind, &str, &str)> = recs
            .iter()
            .map(|r| (r.kind(), r.name.as_str(), r.value.as_str()))
            .collect();
        let dkim_value = format!("v=DKIM1; k=rsa; p={}", "A".repeat(392));
        let policy = "version: STSv1\nmode: enforce\nmx: relay.pool.example.net\nmax_age: 604800\n";
        let sts = format!("v=STSv1; id={}", mta_sts_id(policy));
        assert_eq!(
            rows,
            vec![
                (RecordKind::Mx, "example.com.", "10 relay.pool.example.net."),
                (
                    RecordKind::Spf,
                    "example.com.",
                    "v=spf1 a:relay.pool.example.net include:_spf.google.com ip4:192.0.2.0/24 -all"
                ),
                (
                    RecordKind::Dkim,
                    "mail._domainkey.example.com.",
                    dkim_value.as_str()
                ),
                (
                    RecordKind::Dmarc,
                    "_dmarc.example.com.",
                    "v=DMARC1; p=reject; rua=mailto:dmarc@example.com; pct=50"
                ),
                (RecordKind::MtaSts, "_mta-sts.example.com.", sts.as_str()),
                (
                    RecordKind::TlsRpt,
                    "_smtp._tls.example.com.",
                    "v=TLSRPTv1; rua=mailto:tls@example.com,https://rpt.example.com/v1"
                ),
            ]
        );
        assert!(recs.iter().all(|r| r.required));
        assert_eq!(recs[0].record_type(), RecordType::Mx);
        assert_eq!(recs[1].record_type(), RecordType::Txt);
    }

    #[test]
    fn rendered_records_parse_with_mail_auth() {
        use mail_auth::common::parse::TxtRecordParser as _;
        let recs = expected_records(&spec());
        mail_auth::spf::Spf::parse(recs[1].value.as_bytes()).unwrap();
        mail_auth::dmarc::Dmarc::parse(recs[3].value.as_bytes()).unwrap();
        mail_auth::mta_sts::MtaSts::parse(recs[4].value.as_bytes()).unwrap();
        mail_auth::mta_sts::TlsRpt::parse(recs[5].value.as_bytes()).unwrap();
    }

    #[test]
    fn optional_parts() {
        let mut s = spec();
        s.dmarc = None;
        s.mta_sts = None;
        s.tls_rpt = None;
        s.spf_mechanisms.clear();
        s.spf_all = SpfAll::default();
        s.dkim[0].required = false;
        let recs = expected_records(&s);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].value, "v=spf1 a:relay.pool.example.net ~all");
        assert!(!recs[2].required, "next/retiring DKIM keys are optional");
        s.dmarc = Some(DmarcSpec {
            policy: None,
            rua: vec![],
            pct: Some(100),
        });
        assert_eq!(expected_records(&s)[3].value, "v=DMARC1; p=none");
    }

    #[test]
    fn mta_sts_id_follows_the_policy() {
        let a = mta_sts_policy(
            &MtaStsSpec {
                mode: MtaStsMode::Testing,
                max_age: 86400,
            },
            "relay.example.net.",
        );
        let b = a.replace("testing", "enforce");
        assert_eq!(mta_sts_id(&a), mta_sts_id(&a.clone()));
        assert_ne!(mta_sts_id(&a), mta_sts_id(&b));
        let id = mta_sts_id(&a);
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn long_txt_values_are_split_for_zone_files() {
        let recs = expected_records(&spec());
        let dkim = &recs[2];
        assert!(dkim.value.len() > MAX_TXT_STRING);
        let parts = txt_strings(&dkim.value);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len(), MAX_TXT_STRING);
        assert_eq!(parts.concat(), dkim.value);
        let line = dkim.zone_file_line(300);
        assert_eq!(
            line,
            format!(
                "mail._domainkey.example.com. 300 IN TXT \"{}\" \"{}\"",
                parts[0], parts[1]
            )
        );
        assert_eq!(
            recs[0].zone_file_line(60),
            "example.com. 60 IN MX 10 relay.pool.example.net."
        );
        assert_eq!(txt_strings(""), vec![""]);
        assert_eq!(txt_strings(&"x".repeat(510)).len(), 2);
        assert_eq!(txt_strings(&"x".repeat(511)).len(), 3);
    }
}
