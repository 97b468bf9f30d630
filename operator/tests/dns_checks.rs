//! DNS checks against a real authoritative server (Knot) started by the test.

mod dnsserver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dnsserver::{KnotServer, NEGATIVE_TTL, SilentNameserver};
use smtpfleet_operator::dkim_keys::{DkimKey, KeyAlgorithm};
use smtpfleet_operator::dns::{
    CheckResult, DkimPublication, DmarcPolicy, DmarcSpec, DnsResolver, DomainCheck, MtaStsMode,
    MtaStsSpec, PublishSpec, QueryLimiter, RecordKind, ResolverSettings, SpfAll, TlsRptSpec,
    check_domain, expected_records,
};

const POOL: &str = "relay.pool.example.net";

fn spec(domain: &str, key: &DkimKey) -> PublishSpec {
    PublishSpec {
        domain: domain.into(),
        pool_hostname: POOL.into(),
        dkim: vec![DkimPublication {
            selector: "mail".into(),
            algorithm: key.algorithm,
            public_key: key.dns_public_key.clone(),
            required: true,
            note: None,
        }],
        spf_mechanisms: vec!["include:_spf.partner.test".into()],
        spf_all: SpfAll::SoftFail,
        dmarc: Some(DmarcSpec {
            policy: Some(DmarcPolicy::Quarantine),
            rua: vec!["dmarc-reports@example.org".into()],
            pct: None,
        }),
        mta_sts: Some(MtaStsSpec {
            mode: MtaStsMode::Enforce,
            max_age: 86400,
        }),
        tls_rpt: Some(TlsRptSpec {
            rua: vec!["tls-reports@example.org".into()],
        }),
    }
}

/// The records as our renderer says to publish them, as zone-file lines.
fn correct_zone_body(spec: &PublishSpec, ttl: u32) -> String {
    expected_records(spec)
        .iter()
        .map(|r| r.zone_file_line(ttl))
        .collect::<Vec<_>>()
        .join("\n")
}

fn resolver(server: std::net::SocketAddr) -> DnsResolver {
    DnsResolver::new(
        &[server],
        &ResolverSettings {
            timeout: Duration::from_millis(500),
            attempts: 1,
            overall_timeout: Duration::from_secs(3),
        },
        Arc::new(QueryLimiter::unlimited()),
    )
    .unwrap()
}

fn result_of(check: &DomainCheck, kind: RecordKind) -> (CheckResult, String) {
    let r = check
        .records
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} record in {check:#?}"));
    (r.result, r.message.clone())
}

fn partner_zone() -> &'static str {
    "_spf IN TXT \"v=spf1 ip4:198.51.100.0/24 -all\"\n\
     deep1 IN TXT \"v=spf1 a:h1.partner.test a:h2.partner.test mx ptr include:deep2.partner.test -all\"\n\
     deep2 IN TXT \"v=spf1 a:h3.partner.test exists:h4.partner.test a:h5.partner.test a -all\""
}

#[tokio::test]
async fn correct_records_match_and_ttls_are_captured() {
    let key = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
    let good = spec("good.test", &key);
    // DMARC with a shorter TTL than the rest, and an unrelated TXT record at the apex.
    let body = expected_records(&good)
        .iter()
        .map(|r| {
            r.zone_file_line(if r.kind() == RecordKind::Dmarc {
                120
            } else {
                300
            })
        })
        .collect::<Vec<_>>()
        .join("\n");
    // A long RSA key really is split into several strings in the zone.
    assert!(body.contains("\" \""), "{body}");
    let body = format!("{body}\n@ 300 IN TXT \"google-site-verification=xyz\"");
    let server = KnotServer::start(&[("good.test", &body), ("partner.test", partner_zone())]);
    let check = check_domain(&resolver(server.addr()), &expected_records(&good)).await;
    for r in &check.records {
        assert_eq!(
            r.result,
            CheckResult::Match,
            "{} {}: {}",
            r.kind.as_str(),
            r.name,
            r.message
        );
        let ttl = if r.kind == RecordKind::Dmarc {
            120
        } else {
            300
        };
        assert_eq!(r.ttl, Some(ttl), "{r:?}");
    }
    assert!(check.verified());
    assert!(check.dkim_published("mail"));
    assert_eq!(check.shortest_ttl, Some(120));
    let (_, spf_msg) = result_of(&check, RecordKind::Spf);
    assert!(spf_msg.contains("a:relay.pool.example.net"), "{spf_msg}");
    let (_, dmarc_msg) = result_of(&check, RecordKind::Dmarc);
    assert!(dmarc_msg.contains("p=quarantine"), "{dmarc_msg}");
    let dkim = check
        .records
        .iter()
        .find(|r| r.kind == RecordKind::Dkim)
        .unwrap();
    assert_eq!(
        dkim.observed.as_deref(),
        Some(key.dns_record_value().as_str())
    );
}

#[tokio::test]
async fn missing_records_and_negative_ttl() {
    let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let missing = spec("missing.test", &key);
    let server = KnotServer::start(&[
        ("missing.test", "www IN A 192.0.2.1"),
        ("partner.test", partner_zone()),
    ]);
    let check = check_domain(&resolver(server.addr()), &expected_records(&missing)).await;
    for r in &check.records {
        assert_eq!(r.result, CheckResult::Missing, "{}: {}", r.name, r.message);
        assert_eq!(r.ttl, Some(NEGATIVE_TTL), "{r:?}");
    }
    // NXDOMAIN for names that do not exist, NoData at the apex.
    let dkim = check
        .records
        .iter()
        .find(|r| r.kind == RecordKind::Dkim)
        .unwrap();
    assert!(dkim.message.contains("does not exist"), "{}", dkim.message);
    let mx = check
        .records
        .iter()
        .find(|r| r.kind == RecordKind::Mx)
        .unwrap();
    assert!(!mx.message.contains("does not exist"), "{}", mx.message);
    assert!(
        mx.message.contains("10 relay.pool.example.net."),
        "{}",
        mx.message
    );
    assert!(!check.verified());
    assert_eq!(check.to_fix().count(), check.records.len());
}

#[tokio::test]
async fn wrong_and_malformed_records() {
    let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let other_key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let wrong = spec("wrong.test", &key);
    let body = format!(
        "@ IN MX 10 mx.elsewhere.example.\n\
         @ IN TXT \"v=spf1 include:_spf.partner.test ip4:192.0.2.0/24 ~all\"\n\
         mail._domainkey IN TXT \"{}\"\n\
         _dmarc IN TXT \"v=DMARC1; p=maybe; rua=mailto:dmarc-reports@example.org\"\n\
         _mta-sts IN TXT \"v=STSv1; id=20190101T000000\"\n\
         _smtp._tls IN TXT \"v=TLSRPTv1; rua=mailto:someone-else@example.org\"",
        other_key.dns_record_value()
    );
    let server = KnotServer::start(&[("wrong.test", &body), ("partner.test", partner_zone())]);
    let check = check_domain(&resolver(server.addr()), &expected_records(&wrong)).await;

    let (r, m) = result_of(&check, RecordKind::Mx);
    assert_eq!(r, CheckResult::Mismatch, "{m}");
    assert!(m.contains("no MX host is relay.pool.example.net"), "{m}");
    let (r, m) = result_of(&check, RecordKind::Spf);
    assert_eq!(r, CheckResult::Mismatch, "{m}");
    assert!(
        m.contains("does not authorize relay.pool.example.net"),
        "{m}"
    );
    let (r, m) = result_of(&check, RecordKind::Dkim);
    assert_eq!(r, CheckResult::Mismatch, "{m}");
    assert!(m.contains("is not the signing key"), "{m}");
    let (r, m) = result_of(&check, RecordKind::Dmarc);
    assert_eq!(r, CheckResult::Mismatch, "{m}");
    assert!(m.contains("does not parse"), "{m}");
    let (r, m) = result_of(&check, RecordKind::MtaSts);
    assert_eq!(r, CheckResult::Mismatch, "{m}");
    let (r, m) = result_of(&check, RecordKind::TlsRpt);
    assert_eq!(r, CheckResult::Mismatch, "{m}");
    assert!(!check.verified());
    assert!(!check.dkim_published("mail"));
}

#[tokio::test]
async fn spf_lookup_limit_and_duplicate_spf() {
    let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let many = spec("many.test", &key);
    let two = spec("two.test", &key);
    let server = KnotServer::start(&[
        (
            "many.test",
            "@ IN TXT \"v=spf1 a:relay.pool.example.net include:_spf.partner.test include:deep1.partner.test mx ~all\"",
        ),
        (
            "two.test",
            "@ IN TXT \"v=spf1 a:relay.pool.example.net include:_spf.partner.test ~all\"\n\
             @ IN TXT \"v=spf1 -all\"",
        ),
        ("partner.test", partner_zone()),
    ]);
    let r = resolver(server.addr());
    // 4 at the top, 5 in deep1, 4 in deep2: 13 lookups, found only by following includes.
    let check = check_domain(&r, &expected_records(&many)).await;
    let (res, m) = result_of(&check, RecordKind::Spf);
    assert_eq!(res, CheckResult::Mismatch, "{m}");
    assert!(m.contains("more than 10 DNS lookups"), "{m}");
    assert!(m.contains("counted 13"), "{m}");

    let check = check_domain(&r, &expected_records(&two)).await;
    let (res, m) = result_of(&check, RecordKind::Spf);
    assert_eq!(res, CheckResult::Mismatch, "{m}");
    assert!(m.contains("2 SPF records"), "{m}");
    assert!(m.contains("permanent error"), "{m}");
}

#[tokio::test]
async fn silent_nameserver_times_out_as_error_within_bounds() {
    let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let silent = SilentNameserver::bind();
    let started = Instant::now();
    let check = check_domain(
        &resolver(silent.addr),
        &expected_records(&spec("good.test", &key)),
    )
    .await;
    let elapsed = started.elapsed();
    for r in &check.records {
        assert_eq!(r.result, CheckResult::Error, "{}: {}", r.name, r.message);
        assert!(r.message.contains("could not look up"), "{}", r.message);
        assert_eq!(r.ttl, None);
    }
    // Lookups run concurrently and each is bounded by the overall timeout (3 s).
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(!check.verified());
}

#[tokio::test]
async fn refused_zone_is_an_error_not_missing() {
    let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let server = KnotServer::start(&[("partner.test", partner_zone())]);
    // Knot is not authoritative for elsewhere.test and answers REFUSED.
    let check = check_domain(
        &resolver(server.addr()),
        &expected_records(&spec("elsewhere.test", &key)),
    )
    .await;
    for r in &check.records {
        assert_eq!(r.result, CheckResult::Error, "{}: {}", r.name, r.message);
        assert!(r.message.contains("Refused"), "{}", r.message);
    }
}

#[tokio::test]
async fn zone_change_is_seen_on_the_next_check() {
    let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let s = spec("change.test", &key);
    let mut server = KnotServer::start(&[("change.test", ""), ("partner.test", partner_zone())]);
    let r = resolver(server.addr());
    let before = check_domain(&r, &expected_records(&s)).await;
    assert!(!before.verified());
    server.set_zone("change.test", &correct_zone_body(&s, 60));
    let after = check_domain(&r, &expected_records(&s)).await;
    assert!(after.verified(), "{after:#?}");
}
