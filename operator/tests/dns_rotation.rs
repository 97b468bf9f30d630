//! A DKIM key rotation walked end to end against a real DNS server (Knot): the rotation
//! state machine decides, keys are really generated, the zone is really changed and
//! reloaded, and signing only switches once DNS has served the new record for the
//! overlap. Time is injected.

mod dnsserver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use dnsserver::KnotServer;
use smtpfleet_operator::dkim_keys::{
    DkimKey, KeyAlgorithm, KeyRing, RotationAction, RotationPolicy, RotationReason, apply_rotation,
    decide_rotation,
};
use smtpfleet_operator::dns::{
    DkimPublication, DnsResolver, DomainCheck, PublishSpec, QueryLimiter, ResolverSettings, SpfAll,
    check_domain, expected_records,
};

const DOMAIN: &str = "rotate.test";

struct World {
    server: KnotServer,
    resolver: DnsResolver,
    ring: KeyRing,
    keys: BTreeMap<String, DkimKey>,
    policy: RotationPolicy,
}

impl World {
    /// What the MailDomain would publish now: the signing key is required, the next and
    /// retiring keys are listed but optional.
    fn publish_spec(&self) -> PublishSpec {
        let mut dkim = Vec::new();
        let mut add = |selector: &str, required: bool| {
            let key = &self.keys[selector];
            dkim.push(DkimPublication {
                selector: selector.to_string(),
                algorithm: key.algorithm,
                public_key: key.dns_public_key.clone(),
                required,
                note: None,
            });
        };
        if let Some(a) = &self.ring.active {
            add(&a.selector, true);
        }
        if let Some(n) = &self.ring.next {
            add(&n.selector, false);
        }
        for r in &self.ring.retiring {
            add(&r.key.selector, false);
        }
        PublishSpec {
            domain: DOMAIN.into(),
            pool_hostname: "relay.pool.example.net".into(),
            dkim,
            spf_mechanisms: vec![],
            spf_all: SpfAll::default(),
            dmarc: None,
            mta_sts: None,
            tls_rpt: None,
        }
    }

    async fn check(&self) -> DomainCheck {
        check_domain(&self.resolver, &expected_records(&self.publish_spec())).await
    }

    /// Decides with what DNS shows for the next key, carries the action out (generating
    /// keys for real) and returns it.
    async fn step(&mut self, now: DateTime<Utc>) -> RotationAction {
        let check = self.check().await;
        let next_published = self
            .ring
            .next
            .as_ref()
            .is_some_and(|n| check.dkim_published(&n.selector));
        let action = decide_rotation(&self.policy, &self.ring, next_published, now);
        match &action {
            RotationAction::GenerateInitial { selector }
            | RotationAction::GenerateNext { selector, .. } => {
                let key = DkimKey::generate(self.policy.algorithm).unwrap();
                self.keys.insert(selector.clone(), key);
            }
            RotationAction::Retire { selector } => {
                self.keys.remove(selector);
            }
            _ => {}
        }
        self.ring = apply_rotation(&self.ring, &action, self.policy.algorithm, now);
        action
    }

    /// The user publishes every record the MailDomain lists.
    fn publish_all(&mut self) {
        let body = expected_records(&self.publish_spec())
            .iter()
            .map(|r| r.zone_file_line(1))
            .collect::<Vec<_>>()
            .join("\n");
        self.server.set_zone(DOMAIN, &body);
    }

    fn signing_selector(&self) -> &str {
        &self.ring.active.as_ref().unwrap().selector
    }
}

#[tokio::test]
async fn rotation_switches_only_after_dns_shows_the_new_key() {
    let server = KnotServer::start(&[(DOMAIN, "")]);
    let resolver = DnsResolver::new(
        &[server.addr()],
        &ResolverSettings {
            timeout: StdDuration::from_millis(500),
            attempts: 1,
            overall_timeout: StdDuration::from_secs(3),
        },
        Arc::new(QueryLimiter::new(200)),
    )
    .unwrap();
    let mut w = World {
        server,
        resolver,
        ring: KeyRing::default(),
        keys: BTreeMap::new(),
        policy: RotationPolicy {
            base_selector: "mail".into(),
            algorithm: KeyAlgorithm::Ed25519,
            rotate_after: Some(Duration::days(30)),
            overlap: Duration::minutes(10),
            max_dns_wait: Duration::days(2),
        },
    };
    let t0 = Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap();

    // First key, published by the user, verified.
    assert_eq!(
        w.step(t0).await,
        RotationAction::GenerateInitial {
            selector: "mail".into()
        }
    );
    assert!(!w.check().await.verified());
    w.publish_all();
    assert!(w.check().await.verified());
    assert!(matches!(
        w.step(t0 + Duration::days(1)).await,
        RotationAction::Idle { .. }
    ));

    // Rotation due: the next key is generated; signing stays on the first key.
    let due = t0 + Duration::days(30);
    assert_eq!(
        w.step(due).await,
        RotationAction::GenerateNext {
            selector: "mail-20260501".into(),
            reason: RotationReason::Age
        }
    );
    assert_eq!(w.signing_selector(), "mail");
    let check = w.check().await;
    assert!(
        check.verified(),
        "a pending next key does not unverify the domain"
    );
    assert!(!check.dkim_published("mail-20260501"));

    // DNS lacks the new record: no switch, however often we ask.
    for minutes in [1, 30, 600] {
        assert_eq!(
            w.step(due + Duration::minutes(minutes)).await,
            RotationAction::WaitForDns {
                selector: "mail-20260501".into()
            }
        );
        assert_eq!(w.signing_selector(), "mail");
    }
    // Much later it is reported as stalled, still without switching.
    assert!(matches!(
        w.step(due + Duration::days(3)).await,
        RotationAction::Stalled { .. }
    ));
    assert_eq!(w.signing_selector(), "mail");

    // The user publishes it and the zone is reloaded: the operator notes when it first
    // saw the record, and switches signing one overlap later, not before.
    w.publish_all();
    let seen_at = due + Duration::days(3) + Duration::minutes(5);
    assert_eq!(
        w.step(seen_at).await,
        RotationAction::MarkPublished {
            selector: "mail-20260501".into()
        }
    );
    assert_eq!(
        w.step(seen_at + Duration::minutes(9)).await,
        RotationAction::WaitForOverlap {
            selector: "mail-20260501".into(),
            until: seen_at + Duration::minutes(10)
        }
    );
    assert_eq!(w.signing_selector(), "mail");
    let switch_at = seen_at + Duration::minutes(10);
    assert_eq!(
        w.step(switch_at).await,
        RotationAction::SwitchSigning {
            selector: "mail-20260501".into(),
            retire_at: switch_at + Duration::minutes(10)
        }
    );
    assert_eq!(w.signing_selector(), "mail-20260501");
    assert_eq!(w.ring.retiring.len(), 1);
    // The old record is still expected (optional) during the overlap.
    let names: Vec<String> = expected_records(&w.publish_spec())
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(names.contains(&"mail._domainkey.rotate.test.".to_string()));
    assert!(w.check().await.verified());

    // Within the overlap nothing happens; after it the old key is retired.
    assert!(matches!(
        w.step(switch_at + Duration::minutes(9)).await,
        RotationAction::Idle { .. }
    ));
    assert_eq!(
        w.step(switch_at + Duration::minutes(10)).await,
        RotationAction::Retire {
            selector: "mail".into()
        }
    );
    assert!(w.ring.retiring.is_empty());
    assert!(!w.keys.contains_key("mail"));
    let recs = expected_records(&w.publish_spec());
    assert!(
        recs.iter().all(|r| !r.name.starts_with("mail._domainkey.")),
        "the retired key is no longer listed"
    );
    let check = w.check().await;
    assert!(check.verified(), "{check:#?}");
    assert!(check.dkim_published("mail-20260501"));
}
