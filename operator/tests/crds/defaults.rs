//! Defaults: what a minimal object means, and agreement between the defaults the API
//! server writes (schema `default`s) and the ones the operator assumes (serde).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};
use smtpfleet_operator::api::mail_domain::{DkimAlgorithm, MailDomainSpec};
use smtpfleet_operator::api::relay_pool::{IssuerKind, RelayPoolSpec};

use crate::support::{apply_defaults, load_fixtures, schema};

#[test]
fn minimal_relay_pool_spec_defaults() {
    let spec: RelayPoolSpec =
        serde_yaml::from_str("hostname: smtp.example.com\n").expect("minimal spec parses");
    assert_eq!(spec.replicas, 1);
    assert!(spec.data_centres.is_empty());
    assert_eq!(spec.image, None);
    assert_eq!(spec.listeners.relay.map(|l| l.port), Some(25));
    assert!(spec.listeners.submission.is_none() && spec.listeners.implicit_tls.is_none());
    assert_eq!(spec.queue.replication_factor, None);
    assert_eq!(spec.effective_replication_factor(), 1);
    assert_eq!(spec.queue.min_data_centres, 1);
    assert_eq!(spec.queue.storage.size, Quantity("10Gi".into()));
    assert_eq!(spec.queue.storage.storage_class_name, None);
    assert_eq!(
        spec.queue.retry.schedule,
        ["5m", "10m", "30m", "1h", "2h", "4h"]
    );
    assert_eq!(spec.queue.max_age, "5d");
    assert_eq!(spec.tls, None);
    assert!(spec.relay.allowed_networks.is_empty());
    assert_eq!(spec.relay.auth_secret_ref, None);
    assert_eq!(spec.limits.max_message_size, Quantity("25Mi".into()));
    assert_eq!(spec.limits.max_recipients, 100);
    assert_eq!(spec.limits.max_connections, 1000);
    assert_eq!(spec.limits.max_connections_per_client, 50);
    assert_eq!(spec.limits.per_destination.concurrency, 10);
    assert_eq!(spec.limits.per_destination.rate_per_minute, None);
}

#[test]
fn listener_and_issuer_defaults_apply_inside_set_objects() {
    let spec: RelayPoolSpec = serde_yaml::from_str(
        "hostname: smtp.example.com\n\
         listeners: {submission: {}, implicitTls: {}}\n\
         tls: {certManager: {issuerRef: {name: ca}}}\n",
    )
    .expect("spec parses");
    assert_eq!(spec.listeners.relay, None);
    assert_eq!(spec.listeners.submission.map(|l| l.port), Some(587));
    assert_eq!(spec.listeners.implicit_tls.map(|l| l.port), Some(465));
    let issuer = spec
        .tls
        .and_then(|t| t.cert_manager)
        .expect("cert-manager set")
        .issuer_ref;
    assert_eq!(issuer.kind, IssuerKind::Issuer);
    assert_eq!(issuer.group, "cert-manager.io");
}

#[test]
fn minimal_mail_domain_spec_defaults() {
    let spec: MailDomainSpec =
        serde_yaml::from_str("domain: example.com\nrelayPoolRef: {name: outbound}\n")
            .expect("minimal spec parses");
    assert_eq!(spec.dkim.selector, "smtpfleet");
    assert_eq!(spec.dkim.algorithm, DkimAlgorithm::Rsa2048);
    assert_eq!(spec.dkim.rotate_after, None);
    assert_eq!(spec.dkim.rotation_overlap, "7d");
    assert_eq!(spec.dkim.private_key_secret_ref, None);
    assert_eq!(spec.dmarc, None);
    assert_eq!(spec.spf, None);
    assert_eq!(spec.mta_sts, None);
    assert_eq!(spec.tls_rpt, None);
}

/// What the API server stores for a minimal object: every section with its defaults.
#[test]
fn api_server_fills_in_the_documented_defaults() {
    let object = json!({
        "apiVersion": "smtpfleet.io/v1alpha1",
        "kind": "RelayPool",
        "metadata": {"name": "outbound"},
        "spec": {"hostname": "smtp.example.com"}
    });
    let defaulted = apply_defaults(&schema("RelayPool"), &object);
    assert_eq!(
        defaulted["spec"],
        json!({
            "hostname": "smtp.example.com",
            "replicas": 1,
            "listeners": {"relay": {"port": 25}},
            "queue": {
                "minDataCentres": 1,
                "storage": {"size": "10Gi"},
                "retry": {"schedule": ["5m", "10m", "30m", "1h", "2h", "4h"]},
                "maxAge": "5d"
            },
            "relay": {},
            "limits": {
                "maxMessageSize": "25Mi",
                "maxRecipients": 100,
                "maxConnections": 1000,
                "maxConnectionsPerClient": 50,
                "perDestination": {"concurrency": 10}
            }
        })
    );
}

fn same_spec_either_way<T>(kind: &str, fixture_dir: &str)
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let schema = schema(kind);
    for fixture in load_fixtures(fixture_dir) {
        let raw: T = serde_json::from_value(fixture.object["spec"].clone())
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.name()));
        let defaulted_object = apply_defaults(&schema, &fixture.object);
        let defaulted: T = serde_json::from_value(defaulted_object["spec"].clone())
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.name()));
        assert_eq!(
            raw,
            defaulted,
            "{}: schema defaults and serde defaults disagree",
            fixture.name()
        );
    }
}

/// An object reads the same whether the API server defaulted it or the operator's serde
/// defaults fill the gaps (objects created before a default existed, or in tests).
#[test]
fn schema_defaults_agree_with_serde_defaults() {
    same_spec_either_way::<RelayPoolSpec>("RelayPool", "relaypool/valid");
    same_spec_either_way::<MailDomainSpec>("MailDomain", "maildomain/valid");
}

/// Serialising a spec written with defaults omitted keeps it minimal, so that objects
/// the operator or its tests create stay readable.
#[test]
fn minimal_specs_serialise_minimally() {
    let spec: RelayPoolSpec = serde_yaml::from_str("hostname: smtp.example.com\n").expect("parses");
    assert_eq!(
        serde_json::to_value(&spec).expect("serialises"),
        json!({"hostname": "smtp.example.com", "replicas": 1})
    );
    let spec: MailDomainSpec =
        serde_yaml::from_str("domain: example.com\nrelayPoolRef: {name: outbound}\n")
            .expect("parses");
    assert_eq!(
        serde_json::to_value(&spec).expect("serialises"),
        json!({"domain": "example.com", "relayPoolRef": {"name": "outbound"}})
    );
}

/// Defaults written by the API server survive a round trip through the Rust types.
#[test]
fn defaulted_objects_round_trip() {
    let schema = schema("RelayPool");
    for fixture in load_fixtures("relaypool/valid") {
        let defaulted = apply_defaults(&schema, &fixture.object);
        let spec: RelayPoolSpec = serde_json::from_value(defaulted["spec"].clone()).expect("reads");
        let again: RelayPoolSpec =
            serde_json::from_value(serde_json::to_value(&spec).expect("writes")).expect("reads");
        assert_eq!(spec, again, "{}", fixture.name());
        let _: Value = serde_json::to_value(&again).expect("writes");
    }
}
