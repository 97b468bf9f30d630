//! DNS verification of a MailDomain: which records the user must publish, and what DNS
//! says about each of them now.
//!
//! - [`expected`] (pure) renders the exact records from the MailDomain's settings.
//! - [`compare`] (pure) judges observed answers against them, semantically.
//! - [`resolver`] (thin I/O) asks the configured nameservers, through the shared
//!   [`limiter`], and keeps TTLs so the next check can respect them.
//! - [`check`] ties them together for one domain.
//!
//! Results, per record:
//! - `Match`: DNS publishes what is expected (in meaning, not byte for byte).
//! - `Missing`: nothing of that kind is published (NXDOMAIN, no data, or no TXT record
//!   with the right version tag at the name).
//! - `Mismatch`: something is published but it is not what is needed: another value, or
//!   a record receivers cannot use (it does not parse, two SPF records, more than ten
//!   SPF lookups — receivers treat those as permanent errors; the message says so).
//! - `Error`: DNS could not be asked (timeout, SERVFAIL, REFUSED, network error); the
//!   record's state is unknown.

pub mod check;
pub mod compare;
pub mod expected;
pub mod limiter;
pub mod resolver;

pub use check::{DomainCheck, check_domain, question_count};
pub use compare::{Answer, MxHost, Outcome};
pub use expected::{
    DkimPublication, DmarcPolicy, DmarcSpec, Expectation, ExpectedRecord, MtaStsMode, MtaStsSpec,
    PublishSpec, RecordKind, SpfAll, TlsRptSpec, expected_records,
};
pub use limiter::{CheckSchedule, QueryLimiter, next_check_delay};
pub use resolver::{DnsResolver, ResolverError, ResolverSettings};

/// The DNS type a record is published as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    Mx,
    Txt,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mx => "MX",
            Self::Txt => "TXT",
        }
    }
}

impl std::fmt::Display for RecordType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one record; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckResult {
    Match,
    Missing,
    Mismatch,
    Error,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Match => "Match",
            Self::Missing => "Missing",
            Self::Mismatch => "Mismatch",
            Self::Error => "Error",
        }
    }
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was found for one expected record: the row of `status.dns.records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordCheck {
    pub kind: RecordKind,
    pub record_type: RecordType,
    /// Fully qualified, with the trailing dot.
    pub name: String,
    /// The value to publish, ready to paste.
    pub expected: String,
    /// What DNS answered (the relevant records only), if anything.
    pub observed: Option<String>,
    pub result: CheckResult,
    /// A sentence saying what is right or what to change.
    pub message: String,
    /// Whether `DNSVerified` depends on this record.
    pub required: bool,
    /// The TTL (or negative-caching TTL) of the answer, when the server gave one.
    pub ttl: Option<u32>,
}

/// Lowercase, without the trailing dot: how names are compared.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Lowercase, with the trailing dot: how names are shown and queried.
pub(crate) fn fqdn(name: &str) -> String {
    format!("{}.", normalize_name(name))
}
