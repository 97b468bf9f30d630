//! The pure validate and build steps of the MailDomain controller, fed YAML fixtures:
//! the CRD fixtures that the API server accepts (`fixtures/maildomain/valid`) and specs
//! that pass the schema but cannot work (`fixtures/maildomain/semantic`, each with an
//! `# expect:` line holding the exact message).

use std::path::PathBuf;

use chrono::{Duration, TimeZone as _, Utc};
use smtpfleet_operator::api::MailDomain;
use smtpfleet_operator::dkim_keys::{DkimKey, KeyAlgorithm, KeyMeta, KeyRing};
use smtpfleet_operator::dns::{
    DmarcPolicy, MtaStsMode, RecordKind, SpfAll, expected::mta_sts_id, expected::mta_sts_policy,
    expected_records,
};
use smtpfleet_operator::maildomain::keys::{KeySource, StoredKeys, new_stored_key};
use smtpfleet_operator::maildomain::settings::{KeySettings, publish_spec};
use smtpfleet_operator::maildomain::validate::settings_from_spec;

fn fixture_dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/maildomain")
        .join(sub)
}

fn load(sub: &str, name: &str) -> (MailDomain, String) {
    let text = std::fs::read_to_string(fixture_dir(sub).join(name)).unwrap();
    (serde_yaml::from_str(&text).unwrap(), text)
}

/// A key ring with one active ed25519 key under `selector`.
fn ring_with(selector: &str) -> (StoredKeys, DkimKey) {
    let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let mut stored = StoredKeys {
        ring: KeyRing {
            active: Some(KeyMeta {
                selector: selector.into(),
                algorithm: key.algorithm,
                created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    stored.keys.insert(
        selector.into(),
        new_stored_key("example-com", selector, key.clone(), KeySource::Generated),
    );
    (stored, key)
}

#[test]
fn minimal_fixture_generates_an_rsa_key_and_renders_the_default_records() {
    let (md, _) = load("valid", "minimal.yaml");
    let s = settings_from_spec(&md.spec).unwrap();
    assert_eq!(s.domain, "example.com");
    assert_eq!(s.relay_pool, "outbound");
    assert_eq!(
        s.key,
        KeySettings::Generated {
            selector: "smtpfleet".into(),
            algorithm: KeyAlgorithm::Rsa,
            rotate_after: None,
            overlap: Duration::days(7),
        }
    );
    assert!(s.dmarc.is_none() && s.mta_sts.is_none() && s.tls_rpt.is_none());

    let (stored, key) = ring_with("smtpfleet");
    let records = expected_records(&publish_spec(&s, "smtp.example.net", &stored));
    let rows: Vec<(RecordKind, &str, &str)> = records
        .iter()
        .map(|r| (r.kind(), r.name.as_str(), r.value.as_str()))
        .collect();
    let dkim = key.dns_record_value();
    assert_eq!(
        rows,
        vec![
            (RecordKind::Mx, "example.com.", "10 smtp.example.net."),
            (
                RecordKind::Spf,
                "example.com.",
                "v=spf1 a:smtp.example.net ~all"
            ),
            (
                RecordKind::Dkim,
                "smtpfleet._domainkey.example.com.",
                dkim.as_str()
            ),
        ]
    );
    assert!(records.iter().all(|r| r.required));
}

#[test]
fn full_fixture_renders_every_record_exactly() {
    let (md, _) = load("valid", "full.yaml");
    let s = settings_from_spec(&md.spec).unwrap();
    assert_eq!(s.domain, "mail.example.co.uk");
    assert_eq!(
        s.key,
        KeySettings::Generated {
            selector: "fleet2026".into(),
            algorithm: KeyAlgorithm::Ed25519,
            rotate_after: Some(Duration::days(90)),
            overlap: Duration::hours(84),
        }
    );
    assert_eq!(s.spf_all, SpfAll::Fail);
    let dmarc = s.dmarc.clone().unwrap();
    assert_eq!(dmarc.policy, Some(DmarcPolicy::Quarantine));
    assert_eq!(dmarc.pct, Some(50));
    let sts = s.mta_sts.clone().unwrap();
    assert_eq!((sts.mode, sts.max_age), (MtaStsMode::Enforce, 30 * 86_400));

    let (stored, _) = ring_with("fleet2026");
    let records = expected_records(&publish_spec(&s, "smtp.example.net", &stored));
    let value = |kind| {
        records
            .iter()
            .find(|r| r.kind() == kind)
            .map(|r| (r.name.clone(), r.value.clone()))
            .unwrap()
    };
    assert_eq!(
        value(RecordKind::Spf),
        (
            "mail.example.co.uk.".into(),
            "v=spf1 a:smtp.example.net include:_spf.example.net ip4:192.0.2.0/24 \
             ip6:2001:db8::/32 -a:old.example.co.uk mx ~exists:%{i}.spf.example.net a/24 -all"
                .into()
        )
    );
    assert_eq!(
        value(RecordKind::Dmarc),
        (
            "_dmarc.mail.example.co.uk.".into(),
            "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.co.uk,\
             mailto:dmarc-reports@thirdparty.example!10m,mailto:postmaster@example.co.uk; pct=50"
                .into()
        )
    );
    let policy = mta_sts_policy(&sts, "smtp.example.net");
    assert_eq!(
        policy,
        "version: STSv1\nmode: enforce\nmx: smtp.example.net\nmax_age: 2592000\n"
    );
    assert_eq!(
        value(RecordKind::MtaSts),
        (
            "_mta-sts.mail.example.co.uk.".into(),
            format!("v=STSv1; id={}", mta_sts_id(&policy))
        )
    );
    assert_eq!(
        value(RecordKind::TlsRpt),
        (
            "_smtp._tls.mail.example.co.uk.".into(),
            "v=TLSRPTv1; rua=mailto:tls-reports@example.co.uk,https://reports.example.net/tlsrpt"
                .into()
        )
    );
    assert_eq!(records.len(), 6);
}

#[test]
fn user_key_fixture_reads_the_secret_reference() {
    let (md, _) = load("valid", "user-key.yaml");
    let s = settings_from_spec(&md.spec).unwrap();
    assert_eq!(
        s.key,
        KeySettings::UserProvided {
            selector: "s1".into(),
            secret_name: "example-com-dkim".into(),
            secret_key: "dkim.pem".into(),
        }
    );
}

#[test]
fn every_schema_valid_fixture_validates() {
    for entry in std::fs::read_dir(fixture_dir("valid")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // Some fixtures hold an old and a new object (update checks); validate each.
        for doc in serde_yaml::Deserializer::from_str(&text) {
            use serde::Deserialize as _;
            let md = MailDomain::deserialize(doc).unwrap();
            if let Err(e) = settings_from_spec(&md.spec) {
                panic!("{}: {e}", path.display());
            }
        }
    }
}

#[test]
fn semantic_fixtures_are_rejected_with_their_message() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixture_dir("semantic")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (md, text) = load("semantic", &name);
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: no # expect: line"));
        match settings_from_spec(&md.spec) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => assert_eq!(e.to_string(), expect, "{name}"),
        }
        seen += 1;
    }
    assert!(seen >= 3);
}
