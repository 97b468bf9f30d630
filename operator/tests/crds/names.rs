//! Names, short names, categories, subresources and printer columns.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition;

use crate::support::crd;

fn columns(kind: &str) -> Vec<(String, String, String)> {
    let crd = crd(kind);
    crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(
            |CustomResourceColumnDefinition {
                 name,
                 json_path,
                 type_,
                 ..
             }| (name, type_, json_path),
        )
        .collect()
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect()
}

#[test]
fn both_kinds_are_namespaced_in_the_smtpfleet_category() {
    for (kind, plural, short) in [
        ("RelayPool", "relaypools", "rp"),
        ("MailDomain", "maildomains", "md"),
    ] {
        let crd = crd(kind);
        assert_eq!(crd.spec.group, "smtpfleet.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["smtpfleet".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(
            subresources.status.is_some(),
            "{kind} has a status subresource"
        );
    }
}

#[test]
fn relay_pool_columns() {
    assert_eq!(
        columns("RelayPool"),
        owned(&[
            (
                "Ready",
                "string",
                ".status.conditions[?(@.type==\"Ready\")].status"
            ),
            ("Replicas", "integer", ".status.replicas"),
            ("Ready Replicas", "integer", ".status.readyReplicas"),
            ("Queued", "integer", ".status.queue.depth"),
            ("Oldest", "date", ".status.queue.oldestReceivedAt"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ])
    );
}

#[test]
fn mail_domain_columns_and_selectable_fields() {
    assert_eq!(
        columns("MailDomain"),
        owned(&[
            ("Domain", "string", ".spec.domain"),
            ("Pool", "string", ".spec.relayPoolRef.name"),
            (
                "DNS",
                "string",
                ".status.conditions[?(@.type==\"DNSVerified\")].status"
            ),
            ("DKIM", "string", ".status.dkim.selector"),
            (
                "Ready",
                "string",
                ".status.conditions[?(@.type==\"Ready\")].status"
            ),
            (
                "Delivered",
                "integer",
                ".status.delivery.lastHour.delivered"
            ),
            (
                "Bounce%",
                "number",
                ".status.delivery.lastHour.bounceRatePercent"
            ),
            ("Age", "date", ".metadata.creationTimestamp"),
        ])
    );
    let crd = crd("MailDomain");
    let selectable: Vec<String> = crd.spec.versions[0]
        .selectable_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.json_path)
        .collect();
    assert_eq!(selectable, [".spec.domain", ".spec.relayPoolRef.name"]);
}

/// Printer columns must point at fields the schema declares, or they stay empty.
#[test]
fn columns_point_at_declared_fields() {
    for kind in ["RelayPool", "MailDomain"] {
        let schema = crate::support::schema(kind);
        for (name, _, path) in columns(kind) {
            if path.starts_with(".metadata.") {
                continue;
            }
            let property_path = path
                .trim_start_matches('.')
                .replace("[?(@.type==\"Ready\")]", "[*]")
                .replace("[?(@.type==\"DNSVerified\")]", "[*]");
            let node = crate::support::node(&schema, &property_path);
            assert!(
                node.get("type").is_some(),
                "{kind} column {name}: {path} has a type"
            );
        }
    }
}

#[test]
fn condition_type_constants_match_the_documented_vocabulary() {
    use smtpfleet_operator::api::{mail_domain, relay_pool};
    assert_eq!(
        relay_pool::condition_types::ALL,
        [
            "Ready",
            "Available",
            "Progressing",
            "Degraded",
            "CertificateReady",
            "QueueReplicated"
        ]
    );
    assert_eq!(
        mail_domain::condition_types::ALL,
        ["Ready", "DNSVerified", "DKIMKeyReady", "PoolBound"]
    );
    assert_eq!(
        mail_domain::condition_types::DELIVERY_HEALTHY,
        "DeliveryHealthy"
    );
}
