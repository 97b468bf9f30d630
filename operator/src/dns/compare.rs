//! Judges DNS answers against the expected records, by meaning rather than by bytes.
//!
//! - MX: matches when one of the MX hosts is the pool (case and trailing dot ignored).
//! - SPF: exactly one `v=spf1` record at the domain; it parses (mail-auth); it needs at
//!   most 10 DNS-lookup terms (RFC 7208 §4.6.4: `include`, `a`, `mx`, `ptr`, `exists`,
//!   `redirect`), counted recursively through every `include:`/`redirect=` whose target is
//!   a literal name the checker could resolve (targets built from macros are counted as
//!   one lookup, their contents are not); it authorizes the pool, before any `all`, with
//!   a pass qualifier, through `a:<pool>`, through `mx` when the domain's MX is the pool,
//!   through an `include:`/`redirect=` whose record does, or through one of the
//!   non-`include` mechanisms declared in `spec.spf` (an `ip4:`/`ip6:` range or `a:`
//!   name is taken as the user's statement that it covers the pool's addresses, which
//!   the checker cannot know; declared `include:`s are followed like any other, so a
//!   third-party include such as a mailbox provider's does not count). Every declared
//!   mechanism must be present, and a final `all` must have the spec's qualifier (`+all`
//!   never matches). The void-lookup limit and the 10-name limit of `mx` are not
//!   checked.
//!
//! Records receivers cannot use (they do not parse, two SPF or DMARC records, more than
//! ten SPF lookups) are a `Mismatch` whose message says receivers treat them as a
//! permanent error; `Error` is kept for lookups that failed.
//! - DKIM: exactly one record at the selector, which parses (mail-auth) and whose `p=` is
//!   the same public key (RSA keys compared as keys, so PKCS#1 and SubjectPublicKeyInfo
//!   encodings of the same key match).
//! - DMARC: one `v=DMARC1` record that parses; its policy, `pct` and the declared `rua`
//!   addresses as the spec asks. The published policy is reported either way.
//! - MTA-STS: one `v=STSv1` record that parses and carries the policy's `id`.
//! - TLS-RPT: one `v=TLSRPTv1` record that parses and lists every declared `rua`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::spf::{Directive, Macro, Mechanism, Qualifier, Spf};

use super::expected::{DmarcSpec, Expectation, ExpectedRecord, report_uri};
use super::{CheckResult, RecordCheck, normalize_name};
use crate::dkim_keys::KeyAlgorithm;

/// RFC 7208 §4.6.4.
pub const SPF_MAX_LOOKUPS: usize = 10;

/// How deep `include:` chains are followed; deeper chains exceed the lookup limit anyway.
const SPF_MAX_DEPTH: usize = SPF_MAX_LOOKUPS;

/// An MX answer row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    /// Normalized: lowercase, no trailing dot (`""` for a null MX).
    pub exchange: String,
}

/// What the resolver got for one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Mx(Vec<MxHost>),
    /// One entry per TXT record, its character-strings concatenated.
    Txt(Vec<String>),
    /// NXDOMAIN (`nxdomain`) or an empty NOERROR answer.
    NoRecords {
        nxdomain: bool,
    },
    /// The question could not be answered: timeout, SERVFAIL, REFUSED, network error.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    /// Smallest TTL of the answer records, or the negative-caching TTL.
    pub ttl: Option<u32>,
}

impl Answer {
    pub fn new(outcome: Outcome, ttl: Option<u32>) -> Self {
        Self { outcome, ttl }
    }
}

/// What the SPF comparison needs beyond the domain's own TXT answer.
#[derive(Debug, Clone, Default)]
pub struct SpfContext<'a> {
    /// The domain's MX answer, for records that authorize the pool through `mx`.
    pub mx: Option<&'a Answer>,
    /// TXT answers of `include:`/`redirect=` targets, keyed by normalized name.
    pub includes: Option<&'a BTreeMap<String, Answer>>,
}

struct Verdict {
    result: CheckResult,
    observed: Option<String>,
    message: String,
}

impl Verdict {
    fn new(result: CheckResult, observed: Option<String>, message: impl Into<String>) -> Self {
        Self {
            result,
            observed,
            message: message.into(),
        }
    }
}

/// Compares one expected record with what DNS answered for its name.
pub fn compare(expected: &ExpectedRecord, answer: &Answer, ctx: &SpfContext<'_>) -> RecordCheck {
    let v = match (&expected.expectation, &answer.outcome) {
        (_, Outcome::Failed(err)) => Verdict::new(
            CheckResult::Error,
            None,
            format!(
                "could not look up {} {}: {err}",
                expected.record_type(),
                expected.name
            ),
        ),
        (_, Outcome::NoRecords { nxdomain }) => Verdict::new(
            CheckResult::Missing,
            None,
            format!(
                "no {} record at {}{}: publish {}",
                expected.record_type(),
                expected.name,
                if *nxdomain {
                    " (the name does not exist)"
                } else {
                    ""
                },
                publish_hint(expected)
            ),
        ),
        (Expectation::Mx { host }, Outcome::Mx(hosts)) => compare_mx(host, hosts),
        (
            Expectation::Spf {
                domain,
                pool_host,
                mechanisms,
                all,
            },
            Outcome::Txt(txt),
        ) => compare_spf(domain, pool_host, mechanisms, *all, txt, ctx),
        (
            Expectation::Dkim {
                algorithm,
                public_key,
                ..
            },
            Outcome::Txt(txt),
        ) => compare_dkim(&expected.name, *algorithm, public_key, txt),
        (Expectation::Dmarc(spec), Outcome::Txt(txt)) => compare_dmarc(spec, txt),
        (Expectation::MtaSts { id, policy }, Outcome::Txt(txt)) => {
            compare_mta_sts(&expected.name, id, policy, txt)
        }
        (Expectation::TlsRpt { rua }, Outcome::Txt(txt)) => compare_tls_rpt(rua, txt),
        (_, outcome) => Verdict::new(
            CheckResult::Error,
            None,
            format!(
                "unexpected answer for a {} query: {outcome:?}",
                expected.record_type()
            ),
        ),
    };
    let mut message = v.message;
    if let Some(note) = &expected.note {
        message = format!("{message} ({note})");
    }
    if v.result != CheckResult::Match && expected.value.len() > super::expected::MAX_TXT_STRING {
        message.push_str(
            "; the value is longer than 255 bytes: in a zone file write it as several quoted \
             strings of at most 255 bytes each, which receivers join",
        );
    }
    RecordCheck {
        kind: expected.kind(),
        record_type: expected.record_type(),
        name: expected.name.clone(),
        expected: expected.value.clone(),
        observed: v.observed,
        result: v.result,
        message,
        required: expected.required,
        ttl: answer.ttl,
    }
}

fn publish_hint(expected: &ExpectedRecord) -> String {
    match expected.expectation {
        Expectation::MtaSts { .. } | Expectation::TlsRpt { .. } | Expectation::Dkim { .. } => {
            "the expected value".to_string()
        }
        _ => format!("\"{}\"", expected.value),
    }
}

fn compare_mx(pool: &str, hosts: &[MxHost]) -> Verdict {
    let mut sorted = hosts.to_vec();
    sorted.sort_by(|a, b| {
        a.preference
            .cmp(&b.preference)
            .then(a.exchange.cmp(&b.exchange))
    });
    let observed = sorted
        .iter()
        .map(|h| format!("{} {}.", h.preference, h.exchange))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(ours) = sorted.iter().find(|h| h.exchange == pool) else {
        if sorted.iter().any(|h| h.exchange.is_empty()) {
            return Verdict::new(
                CheckResult::Mismatch,
                Some(observed),
                "the domain publishes a null MX (it accepts no mail); replace it with the pool's MX",
            );
        }
        return Verdict::new(
            CheckResult::Mismatch,
            Some(observed),
            format!("no MX host is {pool}; add an MX record pointing to it"),
        );
    };
    let before: Vec<String> = sorted
        .iter()
        .filter(|h| h.preference < ours.preference)
        .map(|h| h.exchange.clone())
        .collect();
    let message = if before.is_empty() {
        format!("MX points to {pool}")
    } else {
        format!(
            "MX includes {pool}, but {} {} preferred",
            before.join(", "),
            if before.len() == 1 { "is" } else { "are" }
        )
    };
    Verdict::new(CheckResult::Match, Some(observed), message)
}

fn is_spf(txt: &str) -> bool {
    let t = txt.trim_start();
    t.get(..6).is_some_and(|v| v.eq_ignore_ascii_case("v=spf1"))
        && t.as_bytes().get(6).is_none_or(|b| *b == b' ')
}

/// Parses an SPF record, lowercasing it first when it has no macros (whose letters are
/// case-sensitive), so that domain names compare case-insensitively.
fn parse_spf(txt: &str) -> Result<Spf, String> {
    let text = if txt.contains('%') {
        txt.trim().to_string()
    } else {
        txt.trim().to_ascii_lowercase()
    };
    Spf::parse(text.as_bytes()).map_err(|e| e.to_string())
}

/// The literal domain a macro string names, if it is one; `None` for macros and for the
/// empty domain spec (which means the current domain).
fn literal(m: &Macro) -> Option<String> {
    match m {
        Macro::Literal(bytes) => Some(normalize_name(&String::from_utf8_lossy(bytes))),
        Macro::List(items) => items
            .iter()
            .map(|i| match i {
                Macro::Literal(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect::<Option<String>>()
            .map(|s| normalize_name(&s)),
        _ => None,
    }
}

/// Targets of `include:` and `redirect=` (literal ones) that the checker should resolve
/// so [`compare`] can count lookups and follow authorizations through them.
pub fn spf_lookup_targets(txt: &str) -> Vec<String> {
    let Ok(spf) = parse_spf(txt) else {
        return vec![];
    };
    let mut out: Vec<String> = spf
        .directives
        .iter()
        .filter_map(|d| match &d.mechanism {
            Mechanism::Include { macro_string } => literal(macro_string),
            _ => None,
        })
        .collect();
    if let Some(r) = spf.redirect.as_ref().and_then(literal) {
        out.push(r);
    }
    out
}

/// The single SPF record among a name's TXT answers, if exactly one exists.
fn resolved_spf(includes: Option<&BTreeMap<String, Answer>>, name: &str) -> ResolvedSpf {
    let Some(answer) = includes.and_then(|m| m.get(name)) else {
        return ResolvedSpf::Unresolved("not looked up".into());
    };
    match &answer.outcome {
        Outcome::Txt(txt) => {
            let spf: Vec<&String> = txt.iter().filter(|t| is_spf(t)).collect();
            match spf.as_slice() {
                [] => ResolvedSpf::NoRecord,
                [one] => match parse_spf(one) {
                    Ok(p) => ResolvedSpf::Record(p),
                    Err(e) => ResolvedSpf::Invalid(e),
                },
                more => ResolvedSpf::Invalid(format!("{} SPF records", more.len())),
            }
        }
        Outcome::NoRecords { .. } => ResolvedSpf::NoRecord,
        Outcome::Failed(e) => ResolvedSpf::Unresolved(e.clone()),
        Outcome::Mx(_) => ResolvedSpf::Unresolved("not a TXT answer".into()),
    }
}

enum ResolvedSpf {
    Record(Spf),
    NoRecord,
    Invalid(String),
    Unresolved(String),
}

#[derive(Default)]
struct LookupCount {
    count: usize,
    /// Targets that would make receivers return permerror (no SPF record, invalid).
    broken: Vec<String>,
    /// Targets we could not count into (macro, unresolved, loop).
    uncounted: Vec<String>,
}

fn count_lookups(
    spf: &Spf,
    includes: Option<&BTreeMap<String, Answer>>,
    depth: usize,
    path: &mut Vec<String>,
    acc: &mut LookupCount,
) {
    let has_all = spf
        .directives
        .iter()
        .any(|d| matches!(d.mechanism, Mechanism::All));
    let mut targets: Vec<(&'static str, &Macro)> = Vec::new();
    for d in spf.directives.iter() {
        match &d.mechanism {
            Mechanism::Include { macro_string } => {
                acc.count += 1;
                targets.push(("include:", macro_string));
            }
            Mechanism::A { .. }
            | Mechanism::Mx { .. }
            | Mechanism::Ptr { .. }
            | Mechanism::Exists { .. } => acc.count += 1,
            Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {}
        }
    }
    if let Some(r) = &spf.redirect
        && !has_all
    {
        acc.count += 1;
        targets.push(("redirect=", r));
    }
    for (label, target) in targets {
        if acc.count > SPF_MAX_LOOKUPS {
            return;
        }
        let Some(name) = literal(target) else {
            acc.uncounted.push(format!("{label}<macro>"));
            continue;
        };
        if depth >= SPF_MAX_DEPTH || path.contains(&name) {
            // Receivers follow a loop until the lookup limit ends it in a permanent error.
            acc.broken.push(format!(
                "{label}{name} loops back to a record already being evaluated"
            ));
            continue;
        }
        match resolved_spf(includes, &name) {
            ResolvedSpf::Record(inner) => {
                path.push(name);
                count_lookups(&inner, includes, depth + 1, path, acc);
                path.pop();
            }
            ResolvedSpf::NoRecord => acc.broken.push(format!("{label}{name} has no SPF record")),
            ResolvedSpf::Invalid(e) => acc.broken.push(format!("{label}{name}: {e}")),
            ResolvedSpf::Unresolved(e) => acc.uncounted.push(format!("{label}{name} ({e})")),
        }
    }
}

struct SpfAuthority<'a> {
    domain: &'a str,
    pool: &'a str,
    declared: &'a [Directive],
    mx_is_pool: bool,
    includes: Option<&'a BTreeMap<String, Answer>>,
}

impl SpfAuthority<'_> {
    /// How `spf` (the record of `current`) authorizes the pool, if it does.
    /// Mechanisms that name the pool are preferred over declared ones in the explanation.
    fn authorizes(&self, spf: &Spf, current: &str, depth: usize) -> Option<String> {
        let mut reached_all = false;
        let mut declared_match = None;
        for d in spf.directives.iter() {
            if matches!(d.mechanism, Mechanism::All) {
                reached_all = true;
                break;
            }
            if d.qualifier != Qualifier::Pass {
                continue;
            }
            // Declared includes are followed like any other, never taken on trust.
            if depth == 0
                && declared_match.is_none()
                && !matches!(d.mechanism, Mechanism::Include { .. })
                && self.declared.contains(d)
            {
                declared_match = Some(format!("the declared mechanism {}", show_directive(d)));
            }
            match &d.mechanism {
                Mechanism::A { macro_string, .. } => {
                    let target = literal(macro_string).or_else(|| {
                        matches!(macro_string, Macro::None).then(|| current.to_string())
                    });
                    if target.as_deref() == Some(self.pool) {
                        return Some(format!("a:{}", self.pool));
                    }
                }
                Mechanism::Mx { macro_string, .. } => {
                    let target = literal(macro_string).or_else(|| {
                        matches!(macro_string, Macro::None).then(|| current.to_string())
                    });
                    if self.mx_is_pool && target.as_deref() == Some(self.domain) {
                        return Some(format!("mx (the MX of {} is {})", self.domain, self.pool));
                    }
                }
                Mechanism::Include { macro_string } if depth < SPF_MAX_DEPTH => {
                    if let Some(name) = literal(macro_string)
                        && let ResolvedSpf::Record(inner) = resolved_spf(self.includes, &name)
                        && self.authorizes(&inner, &name, depth + 1).is_some()
                    {
                        return Some(format!("include:{name}"));
                    }
                }
                _ => {}
            }
        }
        if !reached_all
            && depth < SPF_MAX_DEPTH
            && let Some(name) = spf.redirect.as_ref().and_then(literal)
            && let ResolvedSpf::Record(inner) = resolved_spf(self.includes, &name)
            && self.authorizes(&inner, &name, depth + 1).is_some()
        {
            return Some(format!("redirect={name}"));
        }
        declared_match
    }
}

fn show_directive(d: &Directive) -> String {
    let q = match d.qualifier {
        Qualifier::Pass => "",
        Qualifier::Fail => "-",
        Qualifier::SoftFail => "~",
        Qualifier::Neutral => "?",
    };
    let m = match &d.mechanism {
        Mechanism::All => "all".to_string(),
        Mechanism::Include { macro_string } => {
            format!("include:{}", literal(macro_string).unwrap_or_default())
        }
        Mechanism::A { macro_string, .. } => match literal(macro_string) {
            Some(l) => format!("a:{l}"),
            None => "a".into(),
        },
        Mechanism::Mx { macro_string, .. } => match literal(macro_string) {
            Some(l) => format!("mx:{l}"),
            None => "mx".into(),
        },
        Mechanism::Ptr { .. } => "ptr".into(),
        Mechanism::Ip4 { addr, mask } => format!("ip4:{addr}/{}", mask.count_ones()),
        Mechanism::Ip6 { addr, mask } => format!("ip6:{addr}/{}", mask.count_ones()),
        Mechanism::Exists { macro_string } => {
            format!("exists:{}", literal(macro_string).unwrap_or_default())
        }
    };
    format!("{q}{m}")
}

fn declared_directives(mechanisms: &[String]) -> Vec<(String, Option<Directive>)> {
    mechanisms
        .iter()
        .map(|m| {
            let parsed = parse_spf(&format!("v=spf1 {m}"))
                .ok()
                .and_then(|s| s.directives.first().cloned());
            (m.clone(), parsed)
        })
        .collect()
}

fn compare_spf(
    domain: &str,
    pool: &str,
    mechanisms: &[String],
    want_all: super::expected::SpfAll,
    txt: &[String],
    ctx: &SpfContext<'_>,
) -> Verdict {
    let spf: Vec<&String> = txt.iter().filter(|t| is_spf(t)).collect();
    let record = match spf.as_slice() {
        [] => {
            return Verdict::new(
                CheckResult::Missing,
                None,
                format!(
                    "no v=spf1 record among the {} TXT records of {domain}",
                    txt.len()
                ),
            );
        }
        [one] => *one,
        more => {
            return Verdict::new(
                CheckResult::Mismatch,
                Some(join_records(more)),
                format!(
                    "{} SPF records are published; receivers treat that as a permanent error \
                     (RFC 7208 §4.5): merge them into one",
                    more.len()
                ),
            );
        }
    };
    let observed = Some(record.clone());
    let parsed = match parse_spf(record) {
        Ok(p) => p,
        Err(e) => {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                format!(
                    "the SPF record does not parse ({e}); receivers treat it as a permanent error"
                ),
            );
        }
    };

    let mut lookups = LookupCount::default();
    count_lookups(
        &parsed,
        ctx.includes,
        0,
        &mut vec![domain.to_string()],
        &mut lookups,
    );
    let counted_note = if lookups.uncounted.is_empty() {
        String::new()
    } else {
        format!(" (not counted into: {})", lookups.uncounted.join(", "))
    };
    if lookups.count > SPF_MAX_LOOKUPS {
        return Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "the SPF record needs more than {SPF_MAX_LOOKUPS} DNS lookups (counted {} including \
                 nested includes); receivers stop at {SPF_MAX_LOOKUPS} with a permanent error: replace includes \
                 with ip4:/ip6: ranges or drop unused ones",
                lookups.count
            ),
        );
    }
    if !lookups.broken.is_empty() {
        return Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "receivers get a permanent error evaluating this SPF record: {}",
                lookups.broken.join("; ")
            ),
        );
    }

    let declared = declared_directives(mechanisms);
    let declared_parsed: Vec<Directive> = declared.iter().filter_map(|(_, d)| d.clone()).collect();
    let missing_declared: Vec<&str> = declared
        .iter()
        .filter(|(text, d)| match d {
            Some(d) => !parsed.directives.contains(d),
            None => !record
                .split_whitespace()
                .any(|tok| tok.eq_ignore_ascii_case(text)),
        })
        .map(|(text, _)| text.as_str())
        .collect();

    let mx_is_pool = matches!(
        ctx.mx.map(|a| &a.outcome),
        Some(Outcome::Mx(hosts)) if hosts.iter().any(|h| h.exchange == pool)
    );
    let authority = SpfAuthority {
        domain,
        pool,
        declared: &declared_parsed,
        mx_is_pool,
        includes: ctx.includes,
    };
    let all_directive = parsed
        .directives
        .iter()
        .find(|d| matches!(d.mechanism, Mechanism::All));
    if all_directive.is_some_and(|d| d.qualifier == Qualifier::Pass) {
        return Verdict::new(
            CheckResult::Mismatch,
            observed,
            "the SPF record ends in +all, which lets any host on the internet send as this \
             domain; use ~all or -all",
        );
    }
    let Some(how) = authority.authorizes(&parsed, domain, 0) else {
        let has: Vec<String> = parsed.directives.iter().map(show_directive).collect();
        return Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "the SPF record does not authorize {pool}: add a:{pool} before the all mechanism \
                 (it has: {}; an ip4:/ip6: range covering the pool counts once it is declared in \
                 spec.spf)",
                has.join(" ")
            ),
        );
    };
    if !missing_declared.is_empty() {
        return Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "the SPF record authorizes {pool} through {how} but lacks the mechanisms declared \
                 in spec.spf: {}",
                missing_declared.join(" ")
            ),
        );
    }
    if let Some(all) = all_directive {
        let published = show_directive(all);
        if published != want_all.as_str() {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                format!(
                    "the SPF record ends in {published}, the spec asks {}",
                    want_all.as_str()
                ),
            );
        }
    }
    Verdict::new(
        CheckResult::Match,
        observed,
        format!(
            "SPF authorizes {pool} through {how}; {} of {SPF_MAX_LOOKUPS} DNS lookups{counted_note}",
            lookups.count
        ),
    )
}

fn join_records(records: &[&String]) -> String {
    records
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `tag=value` pairs of a DKIM/DMARC-style record, tags lowercased.
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Decodes a `p=` value into comparable key material: RSA keys as their PKCS#1 DER
/// (whatever encoding was published), Ed25519 keys as the raw 32 bytes.
fn key_material(algorithm: KeyAlgorithm, p: &str) -> Option<Vec<u8>> {
    let cleaned: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = BASE64.decode(cleaned).ok()?;
    match algorithm {
        KeyAlgorithm::Ed25519 => Some(bytes),
        KeyAlgorithm::Rsa => {
            use rsa::pkcs1::{DecodeRsaPublicKey as _, EncodeRsaPublicKey as _};
            use rsa::pkcs8::DecodePublicKey as _;
            let key = rsa::RsaPublicKey::from_public_key_der(&bytes)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(&bytes))
                .ok()?;
            key.to_pkcs1_der().ok().map(|d| d.as_bytes().to_vec())
        }
    }
}

fn abbreviate_key(p: &str) -> String {
    let p: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    if p.len() <= 24 {
        p
    } else {
        format!("{}…{}", &p[..12], &p[p.len() - 12..])
    }
}

fn compare_dkim(name: &str, algorithm: KeyAlgorithm, expected_p: &str, txt: &[String]) -> Verdict {
    let record = match txt {
        [] => {
            return Verdict::new(
                CheckResult::Missing,
                None,
                format!("no TXT record at {name}"),
            );
        }
        [one] => one,
        more => {
            return Verdict::new(
                CheckResult::Mismatch,
                Some(join_records(&more.iter().collect::<Vec<_>>())),
                format!(
                    "{} TXT records at {name}; verifiers may pick any of them: publish exactly one",
                    more.len()
                ),
            );
        }
    };
    let observed = Some(record.clone());
    match mail_auth::common::verify::DomainKey::parse(record.as_bytes()) {
        Ok(_) => {}
        Err(mail_auth::Error::Dkim(mail_auth::dkim::DkimError::RevokedPublicKey)) => {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                "the published key is revoked (empty p=); publish the current key",
            );
        }
        Err(e) => {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                format!("the DKIM record does not parse ({e}); signatures with this selector fail"),
            );
        }
    }
    let t = tags(record);
    let published_alg = match tag(&t, "k").map(str::to_ascii_lowercase).as_deref() {
        None | Some("rsa") => KeyAlgorithm::Rsa,
        Some("ed25519") => KeyAlgorithm::Ed25519,
        Some(other) => {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                format!("unsupported key type k={other}"),
            );
        }
    };
    if published_alg != algorithm {
        return Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "the record is for a k={} key, the signing key is k={}",
                published_alg.dns_tag(),
                algorithm.dns_tag()
            ),
        );
    }
    let published_p = tag(&t, "p").unwrap_or_default();
    let same = match (
        key_material(algorithm, published_p),
        key_material(algorithm, expected_p),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    if same {
        Verdict::new(
            CheckResult::Match,
            observed,
            "the DKIM record carries the signing key",
        )
    } else {
        Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "the published key p={} is not the signing key p={}: replace the record's value",
                abbreviate_key(published_p),
                abbreviate_key(expected_p)
            ),
        )
    }
}

fn version_is(txt: &str, version: &str) -> bool {
    tags(txt)
        .first()
        .is_some_and(|(k, v)| k == "v" && v.eq_ignore_ascii_case(version))
}

/// The records at a name carrying `version`, or the verdict when there is not exactly one.
fn single_versioned<'a>(
    txt: &'a [String],
    version: &str,
    what: &str,
) -> Result<&'a String, Verdict> {
    let found: Vec<&String> = txt.iter().filter(|t| version_is(t, version)).collect();
    match found.as_slice() {
        [] => Err(Verdict::new(
            CheckResult::Missing,
            (!txt.is_empty()).then(|| join_records(&txt.iter().collect::<Vec<_>>())),
            format!(
                "no v={version} record is published ({} other TXT records)",
                txt.len()
            ),
        )),
        [one] => Ok(one),
        more => Err(Verdict::new(
            CheckResult::Mismatch,
            Some(join_records(more)),
            format!(
                "{} {what} records are published; receivers ignore them all: keep exactly one",
                more.len()
            ),
        )),
    }
}

fn normalize_uri(uri: &str) -> String {
    let uri = uri.trim();
    // DMARC allows a size limit suffix: mailto:a@b!10m.
    let uri = uri.split('!').next().unwrap_or(uri);
    let lower = uri.to_ascii_lowercase();
    lower.strip_prefix("mailto:").unwrap_or(&lower).to_string()
}

fn compare_dmarc(spec: &DmarcSpec, txt: &[String]) -> Verdict {
    let record = match single_versioned(txt, "DMARC1", "DMARC") {
        Ok(r) => r,
        Err(v) => return v,
    };
    let observed = Some(record.clone());
    let parsed = match mail_auth::dmarc::Dmarc::parse(record.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                format!("the DMARC record does not parse ({e}); receivers ignore it"),
            );
        }
    };
    use mail_auth::dmarc::Policy;
    let published = match parsed.p {
        Policy::None => super::DmarcPolicy::None,
        Policy::Quarantine => super::DmarcPolicy::Quarantine,
        Policy::Reject => super::DmarcPolicy::Reject,
        Policy::Unspecified => {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                "the DMARC record has no p= tag, which receivers require",
            );
        }
    };
    let t = tags(record);
    let published_pct = tag(&t, "pct")
        .and_then(|p| p.parse::<u8>().ok())
        .unwrap_or(100);
    let mut problems = Vec::new();
    if let Some(want) = spec.policy
        && want != published
    {
        problems.push(format!(
            "p={} (the spec asks p={})",
            published.as_str(),
            want.as_str()
        ));
    }
    let want_pct = spec.pct.unwrap_or(100);
    if want_pct != published_pct {
        problems.push(format!(
            "pct={published_pct} (the spec asks pct={want_pct})"
        ));
    }
    let published_rua: BTreeSet<String> =
        parsed.rua.iter().map(|u| normalize_uri(&u.uri)).collect();
    let missing_rua: Vec<String> = spec
        .rua
        .iter()
        .map(|u| report_uri(u))
        .filter(|u| !published_rua.contains(&normalize_uri(u)))
        .collect();
    if !missing_rua.is_empty() {
        problems.push(format!("rua lacks {}", missing_rua.join(",")));
    }
    if problems.is_empty() {
        Verdict::new(
            CheckResult::Match,
            observed,
            format!(
                "DMARC policy p={} for {published_pct}% of mail",
                published.as_str()
            ),
        )
    } else {
        Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!("the DMARC record publishes {}", problems.join(", ")),
        )
    }
}

fn compare_mta_sts(name: &str, id: &str, policy: &str, txt: &[String]) -> Verdict {
    let domain = name
        .trim_end_matches('.')
        .strip_prefix("_mta-sts.")
        .unwrap_or(name);
    let serve = format!(
        "serve this policy at https://mta-sts.{domain}/.well-known/mta-sts.txt: {}",
        policy.trim_end().replace('\n', "; ")
    );
    let record = match single_versioned(txt, "STSv1", "MTA-STS") {
        Ok(r) => r,
        Err(mut v) => {
            v.message = format!("{}; {serve}", v.message);
            return v;
        }
    };
    let observed = Some(record.clone());
    match mail_auth::mta_sts::MtaSts::parse(record.as_bytes()) {
        Err(e) => Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!("the MTA-STS record does not parse ({e}); {serve}"),
        ),
        Ok(parsed) if parsed.id == id => Verdict::new(
            CheckResult::Match,
            observed,
            format!("MTA-STS id={id} is current; {serve}"),
        ),
        Ok(parsed) => Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "id={} is not the current policy's id={id}: senders only refetch the policy when \
                 the id changes; {serve}",
                parsed.id
            ),
        ),
    }
}

fn compare_tls_rpt(rua: &[String], txt: &[String]) -> Verdict {
    let record = match single_versioned(txt, "TLSRPTv1", "TLS-RPT") {
        Ok(r) => r,
        Err(v) => return v,
    };
    let observed = Some(record.clone());
    let parsed = match mail_auth::mta_sts::TlsRpt::parse(record.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return Verdict::new(
                CheckResult::Mismatch,
                observed,
                format!("the TLS-RPT record does not parse ({e})"),
            );
        }
    };
    let published: BTreeSet<String> = parsed
        .rua
        .iter()
        .map(|u| match u {
            mail_auth::mta_sts::ReportUri::Mail(m) => normalize_uri(m),
            mail_auth::mta_sts::ReportUri::Http(h) => normalize_uri(h),
        })
        .collect();
    let missing: Vec<&String> = rua
        .iter()
        .filter(|u| !published.contains(&normalize_uri(u)))
        .collect();
    if missing.is_empty() {
        Verdict::new(
            CheckResult::Match,
            observed,
            "TLS reports go to every declared address",
        )
    } else {
        Verdict::new(
            CheckResult::Mismatch,
            observed,
            format!(
                "rua lacks {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim_keys::DkimKey;
    use crate::dns::expected::*;

    fn spec(key: &DkimKey) -> PublishSpec {
        PublishSpec {
            domain: "example.com".into(),
            pool_hostname: "relay.pool.example.net".into(),
            dkim: vec![DkimPublication {
                selector: "mail".into(),
                algorithm: key.algorithm,
                public_key: key.dns_public_key.clone(),
                required: true,
                note: None,
            }],
            spf_mechanisms: vec!["include:_spf.partner.example".into()],
            spf_all: SpfAll::Fail,
            dmarc: Some(DmarcSpec {
                policy: Some(DmarcPolicy::Reject),
                rua: vec!["dmarc@example.com".into()],
                pct: None,
            }),
            mta_sts: Some(MtaStsSpec {
                mode: MtaStsMode::Enforce,
                max_age: 86400,
            }),
            tls_rpt: Some(TlsRptSpec {
                rua: vec!["tls@example.com".into()],
            }),
        }
    }

    fn ed_key() -> DkimKey {
        DkimKey::generate(KeyAlgorithm::Ed25519).unwrap()
    }

    fn records(key: &DkimKey) -> Vec<ExpectedRecord> {
        expected_records(&spec(key))
    }

    fn by_kind(recs: &[ExpectedRecord], kind: RecordKind) -> ExpectedRecord {
        recs.iter().find(|r| r.kind() == kind).unwrap().clone()
    }

    fn txt(values: &[&str]) -> Answer {
        Answer::new(
            Outcome::Txt(values.iter().map(|s| s.to_string()).collect()),
            Some(300),
        )
    }

    fn mx(hosts: &[(u16, &str)]) -> Answer {
        Answer::new(
            Outcome::Mx(
                hosts
                    .iter()
                    .map(|(p, h)| MxHost {
                        preference: *p,
                        exchange: normalize_name(h),
                    })
                    .collect(),
            ),
            Some(300),
        )
    }

    fn partner_includes() -> BTreeMap<String, Answer> {
        let mut m = BTreeMap::new();
        m.insert(
            "_spf.partner.example".into(),
            txt(&["v=spf1 ip4:198.51.100.0/24 -all"]),
        );
        m
    }

    fn check(rec: &ExpectedRecord, answer: &Answer) -> RecordCheck {
        let inc = partner_includes();
        let mxa = mx(&[(10, "relay.pool.example.net.")]);
        compare(
            rec,
            answer,
            &SpfContext {
                mx: Some(&mxa),
                includes: Some(&inc),
            },
        )
    }

    #[test]
    fn every_kind_matches_its_own_rendering() {
        let key = ed_key();
        let inc = partner_includes();
        for rec in records(&key) {
            let answer = match rec.record_type() {
                crate::dns::RecordType::Mx => mx(&[(10, "relay.pool.example.net.")]),
                crate::dns::RecordType::Txt => txt(&[rec.value.as_str()]),
            };
            let c = compare(
                &rec,
                &answer,
                &SpfContext {
                    mx: None,
                    includes: Some(&inc),
                },
            );
            assert_eq!(
                c.result,
                CheckResult::Match,
                "{:?}: {}",
                rec.kind(),
                c.message
            );
            assert_eq!(c.ttl, Some(300));
        }
    }

    #[test]
    fn missing_and_errors_from_the_resolver() {
        let key = ed_key();
        let recs = records(&key);
        for rec in &recs {
            let c = check(
                rec,
                &Answer::new(Outcome::NoRecords { nxdomain: true }, Some(60)),
            );
            assert_eq!(c.result, CheckResult::Missing);
            assert!(c.message.contains("does not exist"), "{}", c.message);
            assert_eq!(c.ttl, Some(60));
            let c = check(
                rec,
                &Answer::new(Outcome::Failed("request timed out".into()), None),
            );
            assert_eq!(c.result, CheckResult::Error);
            assert!(c.message.contains("request timed out"));
        }
        let spf = by_kind(&recs, RecordKind::Spf);
        let c = check(
            &spf,
            &Answer::new(Outcome::NoRecords { nxdomain: false }, None),
        );
        assert!(
            c.message.contains(&format!("\"{}\"", spf.value)),
            "{}",
            c.message
        );
    }

    #[test]
    fn mx_semantics() {
        let rec = by_kind(&records(&ed_key()), RecordKind::Mx);
        let c = check(&rec, &mx(&[(20, "RELAY.pool.example.NET")]));
        assert_eq!(c.result, CheckResult::Match);
        let c = check(
            &rec,
            &mx(&[(5, "mx.other.example."), (20, "relay.pool.example.net.")]),
        );
        assert_eq!(c.result, CheckResult::Match);
        assert!(
            c.message.contains("mx.other.example is preferred"),
            "{}",
            c.message
        );
        let c = check(&rec, &mx(&[(10, "mx.elsewhere.example.")]));
        assert_eq!(c.result, CheckResult::Mismatch);
        assert_eq!(c.observed.as_deref(), Some("10 mx.elsewhere.example."));
        let c = check(&rec, &mx(&[(0, ".")]));
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(c.message.contains("null MX"));
    }

    #[test]
    fn spf_semantics() {
        let rec = by_kind(&records(&ed_key()), RecordKind::Spf);
        let ok = |v: &str| check(&rec, &txt(&["google-site-verification=abc", v]));

        // Other order and qualifiers, uppercase, trailing dot: still a match.
        let c = ok("v=spf1 include:_spf.partner.example A:Relay.Pool.Example.Net. -all");
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);
        assert!(
            c.message.contains("a:relay.pool.example.net"),
            "{}",
            c.message
        );
        assert!(c.message.contains("2 of 10"), "{}", c.message);
        assert_eq!(
            c.observed.as_deref(),
            Some("v=spf1 include:_spf.partner.example A:Relay.Pool.Example.Net. -all")
        );

        // The pool through `mx`, since the domain's MX is the pool.
        let c = ok("v=spf1 mx include:_spf.partner.example -all");
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);
        assert!(c.message.contains("through mx"), "{}", c.message);

        // The spec asks -all; ~all is reported.
        let c = ok("v=spf1 mx include:_spf.partner.example ~all");
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
        assert!(
            c.message.contains("ends in ~all, the spec asks -all"),
            "{}",
            c.message
        );

        // Not authorizing the pool.
        let c = ok("v=spf1 include:_spf.partner.example ip4:192.0.2.1 ~all");
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(
            c.message
                .contains("does not authorize relay.pool.example.net"),
            "{}",
            c.message
        );
        assert!(c.message.contains("ip4:192.0.2.1/32"), "{}", c.message);

        // After `all`, or with a fail qualifier, it does not count.
        for v in [
            "v=spf1 include:_spf.partner.example -all a:relay.pool.example.net",
            "v=spf1 include:_spf.partner.example -a:relay.pool.example.net ~all",
        ] {
            assert_eq!(ok(v).result, CheckResult::Mismatch, "{v}");
        }

        // Pool authorized but a declared mechanism missing.
        let c = ok("v=spf1 a:relay.pool.example.net ~all");
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(c.message.contains("lacks"), "{}", c.message);
        assert!(c.message.contains("include:_spf.partner.example"));

        // +all authorizes the world.
        let c = ok("v=spf1 a:relay.pool.example.net include:_spf.partner.example +all");
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(c.message.contains("+all"));

        // Two SPF records.
        let c = check(
            &rec,
            &txt(&["v=spf1 a:relay.pool.example.net ~all", "v=spf1 -all"]),
        );
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(c.message.contains("2 SPF records"), "{}", c.message);

        // Unparseable.
        let c = ok("v=spf1 a:relay.pool.example.net include: ~all");
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);

        // No SPF among other TXT records.
        let c = check(&rec, &txt(&["google-site-verification=abc"]));
        assert_eq!(c.result, CheckResult::Missing);
        assert!(!is_spf("v=spf10 a"));
    }

    #[test]
    fn spf_declared_mechanism_authorizes_and_include_chains() {
        let key = ed_key();
        let mut s = spec(&key);
        s.spf_mechanisms = vec!["ip4:203.0.113.0/24".into()];
        let rec = by_kind(&expected_records(&s), RecordKind::Spf);
        let c = check(&rec, &txt(&["v=spf1 ip4:203.0.113.0/24 -all"]));
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);
        assert!(c.message.contains("declared mechanism ip4:203.0.113.0/24"));

        // Through an include whose record names the pool, and through redirect.
        let mut inc = BTreeMap::new();
        inc.insert(
            "spf.pool.example.net".to_string(),
            txt(&["v=spf1 a:relay.pool.example.net -all"]),
        );
        let ctx = SpfContext {
            mx: None,
            includes: Some(&inc),
        };
        let c = compare(
            &rec,
            &txt(&["v=spf1 include:spf.pool.example.net ip4:203.0.113.0/24 -all"]),
            &ctx,
        );
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);
        let c = compare(
            &rec,
            &txt(&["v=spf1 ip4:203.0.113.0/24 redirect=spf.pool.example.net"]),
            &ctx,
        );
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);

        // An include without an SPF record is a permanent error at receivers.
        let c = compare(
            &rec,
            &txt(&["v=spf1 include:gone.example ip4:203.0.113.0/24 -all"]),
            &SpfContext {
                mx: None,
                includes: Some(&BTreeMap::from([(
                    "gone.example".to_string(),
                    Answer::new(Outcome::NoRecords { nxdomain: true }, None),
                )])),
            },
        );
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
        assert!(c.message.contains("gone.example has no SPF record"));
    }

    #[test]
    fn spf_lookup_limit_counts_nested_includes() {
        let rec = by_kind(&records(&ed_key()), RecordKind::Spf);
        // Top level: 3 lookups; nested: 4 + 4 more -> 11.
        let mut inc = partner_includes();
        inc.insert(
            "a.example".into(),
            txt(&["v=spf1 a:x1.example a:x2.example mx ptr include:b.example -all"]),
        );
        inc.insert(
            "b.example".into(),
            txt(&["v=spf1 a:x3.example exists:x4.example mx a -all"]),
        );
        let ctx = SpfContext {
            mx: None,
            includes: Some(&inc),
        };
        let v =
            "v=spf1 a:relay.pool.example.net include:_spf.partner.example include:a.example ~all";
        let c = compare(&rec, &txt(&[v]), &ctx);
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
        assert!(
            c.message.contains("more than 10 DNS lookups"),
            "{}",
            c.message
        );
        assert!(c.message.contains("counted 12"), "{}", c.message);

        // The same at the top level only.
        let flat = "v=spf1 a:relay.pool.example.net include:_spf.partner.example a:1.example \
                    a:2.example a:3.example a:4.example a:5.example a:6.example a:7.example \
                    a:8.example a:9.example ~all";
        let c = compare(&rec, &txt(&[flat]), &ctx);
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);

        // Exactly 10 is fine; an unresolved include is counted once and named.
        let ten = "v=spf1 a:relay.pool.example.net include:_spf.partner.example include:u.example \
                   a:1.example a:2.example a:3.example a:4.example a:5.example a:6.example \
                   a:7.example -all";
        let c = compare(&rec, &txt(&[ten]), &ctx);
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);
        assert!(c.message.contains("10 of 10"), "{}", c.message);
        assert!(c.message.contains("include:u.example"), "{}", c.message);

        // Loops terminate.
        let mut looped = partner_includes();
        looped.insert("l.example".into(), txt(&["v=spf1 include:l.example -all"]));
        let c = compare(
            &rec,
            &txt(&[
                "v=spf1 a:relay.pool.example.net include:_spf.partner.example include:l.example -all",
            ]),
            &SpfContext {
                mx: None,
                includes: Some(&looped),
            },
        );
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
        assert!(c.message.contains("loops back"), "{}", c.message);
    }

    #[test]
    fn spf_targets_for_the_resolver() {
        assert_eq!(
            spf_lookup_targets("v=spf1 include:A.example a mx include:%{d}.x redirect=R.example."),
            vec!["a.example".to_string(), "r.example".to_string()]
        );
        assert!(spf_lookup_targets("nonsense").is_empty());
    }

    #[test]
    fn dkim_semantics() {
        let key = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
        let rec = by_kind(&records(&key), RecordKind::Dkim);

        // Same key, PKCS#1 encoding, spaces inside p=, no k= tag: match.
        let der = BASE64.decode(&key.dns_public_key).unwrap();
        let pubkey = {
            use rsa::pkcs8::DecodePublicKey as _;
            rsa::RsaPublicKey::from_public_key_der(&der).unwrap()
        };
        let pkcs1 = {
            use rsa::pkcs1::EncodeRsaPublicKey as _;
            BASE64.encode(pubkey.to_pkcs1_der().unwrap().as_bytes())
        };
        let spaced = format!("v=DKIM1; p={} {}", &pkcs1[..40], &pkcs1[40..]);
        let c = check(&rec, &txt(&[&spaced]));
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);

        // Another key.
        let other = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
        let c = check(&rec, &txt(&[&other.dns_record_value()]));
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(
            c.message.contains("is not the signing key"),
            "{}",
            c.message
        );
        assert!(c.message.contains("255 bytes"), "{}", c.message);

        // Revoked, malformed, two records, wrong algorithm.
        assert_eq!(
            check(&rec, &txt(&["v=DKIM1; k=rsa; p="])).result,
            CheckResult::Mismatch
        );
        assert_eq!(
            check(&rec, &txt(&["v=DKIM1; k=rsa; p=!!!"])).result,
            CheckResult::Mismatch
        );
        let two = check(
            &rec,
            &txt(&[&key.dns_record_value(), &key.dns_record_value()]),
        );
        assert_eq!(two.result, CheckResult::Mismatch);
        let ed = ed_key();
        let c = check(&rec, &txt(&[&ed.dns_record_value()]));
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(c.message.contains("k=ed25519"), "{}", c.message);
    }

    #[test]
    fn dmarc_semantics() {
        let rec = by_kind(&records(&ed_key()), RecordKind::Dmarc);
        let c = check(
            &rec,
            &txt(&["v=DMARC1;p=reject;rua=mailto:DMARC@example.com!10m,mailto:x@y.example"]),
        );
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);
        assert!(c.message.contains("p=reject"));

        let c = check(
            &rec,
            &txt(&["v=DMARC1; p=none; rua=mailto:dmarc@example.com"]),
        );
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(
            c.message.contains("p=none (the spec asks p=reject)"),
            "{}",
            c.message
        );

        let c = check(&rec, &txt(&["v=DMARC1; p=reject; pct=20"]));
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(c.message.contains("pct=20"), "{}", c.message);
        assert!(
            c.message.contains("rua lacks mailto:dmarc@example.com"),
            "{}",
            c.message
        );

        let c = check(&rec, &txt(&["v=DMARC1; p=bogus"]));
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
        assert!(c.message.contains("does not parse"));
        let c = check(&rec, &txt(&["v=DMARC1; rua=mailto:dmarc@example.com"]));
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
        let c = check(&rec, &txt(&["v=DMARC1; p=reject", "v=DMARC1; p=none"]));
        assert_eq!(c.result, CheckResult::Mismatch);
        let c = check(&rec, &txt(&["some other text"]));
        assert_eq!(c.result, CheckResult::Missing);

        // A DMARC spec without a policy accepts any valid one, and reports it.
        let mut s = spec(&ed_key());
        s.dmarc = Some(DmarcSpec {
            policy: None,
            rua: vec![],
            pct: None,
        });
        let rec = by_kind(&expected_records(&s), RecordKind::Dmarc);
        let c = check(&rec, &txt(&["v=DMARC1; p=quarantine"]));
        assert_eq!(c.result, CheckResult::Match);
        assert!(c.message.contains("p=quarantine"));
        // Without a DMARC spec no record is expected.
        s.dmarc = None;
        assert!(
            expected_records(&s)
                .iter()
                .all(|r| r.kind() != RecordKind::Dmarc)
        );
    }

    #[test]
    fn mta_sts_and_tls_rpt_semantics() {
        let recs = records(&ed_key());
        let sts = by_kind(&recs, RecordKind::MtaSts);
        let c = check(&sts, &txt(&["v=STSv1; id=20200101"]));
        assert_eq!(c.result, CheckResult::Mismatch);
        assert!(
            c.message
                .contains("mta-sts.example.com/.well-known/mta-sts.txt")
        );
        assert!(c.message.contains("mode: enforce"), "{}", c.message);
        let c = check(&sts, &txt(&["v=STSv1"]));
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
        let c = check(&sts, &txt(&[]));
        assert_eq!(c.result, CheckResult::Missing);

        let rpt = by_kind(&recs, RecordKind::TlsRpt);
        let c = check(
            &rpt,
            &txt(&["v=TLSRPTv1;rua=https://r.example/x,mailto:TLS@example.com"]),
        );
        assert_eq!(c.result, CheckResult::Match, "{}", c.message);
        let c = check(&rpt, &txt(&["v=TLSRPTv1; rua=mailto:other@example.com"]));
        assert_eq!(c.result, CheckResult::Mismatch);
        let c = check(&rpt, &txt(&["v=TLSRPTv1; rua=ftp://nope"]));
        assert_eq!(c.result, CheckResult::Mismatch, "{}", c.message);
    }
}
