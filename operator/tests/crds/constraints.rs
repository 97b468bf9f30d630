//! OpenAPI constraints of the generated schemas: the patterns accept and reject what
//! their documentation promises, and numbers have the bounds the API relies on.
//!
//! Patterns are read from the generated CRDs and compiled with the `regex` crate, which
//! like the API server's RE2 engine has no look-around or back-references.

use serde_json::Value;

use crate::support::{node, schema};

fn pattern_at(kind: &str, path: &str) -> regex::Regex {
    let schema = schema(kind);
    let pattern = node(&schema, path)["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{kind} {path} has a pattern"));
    regex::Regex::new(pattern).expect("pattern compiles")
}

fn check(kind: &str, path: &str, accepted: &[&str], rejected: &[&str]) {
    let re = pattern_at(kind, path);
    for value in accepted {
        assert!(re.is_match(value), "{kind} {path} should accept {value:?}");
    }
    for value in rejected {
        assert!(!re.is_match(value), "{kind} {path} should reject {value:?}");
    }
}

#[test]
fn host_and_domain_names() {
    let long_label = "a".repeat(64);
    let max_label = "a".repeat(63);
    let accepted = [
        "smtp.example.com",
        "a.b",
        "mx-1.mail.example.co.uk",
        "xn--bcher-kva.example",
        "1.example.com",
        &format!("{max_label}.example.com"),
    ];
    let too_long = format!("{long_label}.example.com");
    let rejected = [
        "SMTP.example.com",
        "smtp",
        "smtp.example.com.",
        "-smtp.example.com",
        "smtp-.example.com",
        "smtp_1.example.com",
        "smtp..example.com",
        "smtp example.com",
        "",
        &too_long,
    ];
    check("RelayPool", "spec.hostname", &accepted, &rejected);
    check("MailDomain", "spec.domain", &accepted, &rejected);
}

#[test]
fn dns_labels() {
    let accepted = ["a", "eu-west-1a", "dc1", &"a".repeat(63)];
    let rejected = ["A", "-a", "a-", "a_b", "a.b", "", &"a".repeat(64)];
    check(
        "RelayPool",
        "spec.dataCentres[*].name",
        &accepted,
        &rejected,
    );
    check("MailDomain", "spec.dkim.selector", &accepted, &rejected);
    check("MailDomain", "spec.relayPoolRef.name", &accepted, &rejected);
}

#[test]
fn cidrs() {
    check(
        "RelayPool",
        "spec.relay.allowedNetworks[*]",
        &[
            "0.0.0.0/0",
            "10.0.0.0/8",
            "192.168.1.0/24",
            "255.255.255.255/32",
            "::/0",
            "::1/128",
            "2001:db8::/32",
            "fd00::/8",
            "2001:db8:0:0:0:0:0:1/128",
            "FD00:ABCD::/48",
        ],
        &[
            "10.0.0.0",
            "10.0.0.0/33",
            "256.0.0.0/8",
            "10.0.0/8",
            "01.2.3.4/8",
            "10.0.0.0/8 ",
            "2001:db8::/129",
            "2001:db8::",
            "fe80::1%eth0/64",
            "example.com/8",
            "",
        ],
    );
}

#[test]
fn durations() {
    let accepted = [
        "1s", "5m", "90s", "1h30m", "7d", "250ms", "0h5m", "10d", "3d12h", "1m0s",
    ];
    let rejected = [
        "0s", "00m", "0d0h", "5", "1.5h", "-5m", "5 m", "5w", "", "m5", "5mm", "1h 30m",
    ];
    for (kind, path) in [
        ("RelayPool", "spec.queue.maxAge"),
        ("RelayPool", "spec.queue.retry.schedule[*]"),
        ("MailDomain", "spec.dkim.rotateAfter"),
        ("MailDomain", "spec.dkim.rotationOverlap"),
        ("MailDomain", "spec.mtaSts.maxAge"),
    ] {
        check(kind, path, &accepted, &rejected);
    }
}

/// Every duration the pattern accepts is one the operator can parse, to the same value
/// the documentation describes.
#[test]
fn accepted_durations_parse() {
    use smtpfleet_operator::api::duration::parse;
    let re = pattern_at("RelayPool", "spec.queue.maxAge");
    for (text, seconds) in [
        ("90s", 90),
        ("1h30m", 5400),
        ("7d", 604_800),
        ("3d12h", 302_400),
        ("1m0s", 60),
    ] {
        assert!(re.is_match(text));
        assert_eq!(parse(text).map(|d| d.as_secs()), Ok(seconds), "{text}");
    }
}

#[test]
fn report_addresses() {
    check(
        "MailDomain",
        "spec.dmarc.rua[*]",
        &[
            "mailto:dmarc@example.com",
            "mailto:d@example.com!10m",
            "dmarc@example.com",
        ],
        &[
            "https://example.com/r",
            "mailto:",
            "dmarc",
            "mailto:a@example.com,mailto:b@example.com",
            "mailto:a b@example.com",
        ],
    );
    check(
        "MailDomain",
        "spec.tlsRpt.rua[*]",
        &[
            "mailto:tls@example.com",
            "https://reports.example.com/tlsrpt",
            "tls@example.com",
        ],
        &[
            "http://reports.example.com/",
            "ftp://example.com",
            "https://",
            "https://a b",
        ],
    );
}

#[test]
fn spf_mechanisms() {
    check(
        "MailDomain",
        "spec.spf.mechanisms[*]",
        &[
            "include:_spf.example.net",
            "ip4:192.0.2.0/24",
            "ip6:2001:db8::/32",
            "a",
            "mx",
            "-a:old.example.com",
            "~mx:example.com/24",
            "a/24//64",
            "?exists:%{i}.spf.example.net",
            "ptr",
        ],
        &[
            "all",
            "-all",
            "redirect=_spf.example.com",
            "v=spf1",
            "include: x",
            "include:a include:b",
            "ip4:not-an-ip",
            "",
        ],
    );
}

#[test]
fn secret_names_and_keys() {
    check(
        "RelayPool",
        "spec.tls.secretName",
        &["smtp-tls", "smtp.example.com-tls", "a"],
        &["Smtp-TLS", "smtp_tls", "-smtp", ""],
    );
    check(
        "MailDomain",
        "spec.dkim.privateKeySecretRef.key",
        &["private.key", "dkim_2026.pem", "KEY-1"],
        &["a/b", "key with space", ""],
    );
}

fn bounds(kind: &str, path: &str) -> (Option<f64>, Option<f64>) {
    let schema = schema(kind);
    let node = node(&schema, path);
    (node["minimum"].as_f64(), node["maximum"].as_f64())
}

/// No count, port or size in the API can be zero or negative.
#[test]
fn numeric_bounds() {
    for (kind, path, min, max) in [
        ("RelayPool", "spec.replicas", 1.0, Some(1000.0)),
        (
            "RelayPool",
            "spec.dataCentres[*].replicas",
            1.0,
            Some(1000.0),
        ),
        ("RelayPool", "spec.listeners.relay.port", 1.0, Some(65535.0)),
        (
            "RelayPool",
            "spec.listeners.submission.port",
            1.0,
            Some(65535.0),
        ),
        (
            "RelayPool",
            "spec.listeners.implicitTls.port",
            1.0,
            Some(65535.0),
        ),
        ("RelayPool", "spec.queue.replicationFactor", 1.0, Some(5.0)),
        ("RelayPool", "spec.queue.minDataCentres", 1.0, Some(8.0)),
        ("RelayPool", "spec.limits.maxRecipients", 1.0, None),
        ("RelayPool", "spec.limits.maxConnections", 1.0, None),
        (
            "RelayPool",
            "spec.limits.maxConnectionsPerClient",
            1.0,
            None,
        ),
        (
            "RelayPool",
            "spec.limits.perDestination.concurrency",
            1.0,
            None,
        ),
        (
            "RelayPool",
            "spec.limits.perDestination.ratePerMinute",
            1.0,
            None,
        ),
        ("MailDomain", "spec.dmarc.pct", 0.0, Some(100.0)),
    ] {
        let (found_min, found_max) = bounds(kind, path);
        assert_eq!(found_min, Some(min), "{kind} {path} minimum");
        if max.is_some() {
            assert_eq!(found_max, max, "{kind} {path} maximum");
        }
        assert_eq!(
            node(&schema(kind), path)["type"],
            Value::from("integer"),
            "{kind} {path}"
        );
    }
}

#[test]
fn data_centres_are_a_bounded_list_map_keyed_by_name() {
    let schema = schema("RelayPool");
    let list = node(&schema, "spec.dataCentres");
    assert_eq!(list["maxItems"], Value::from(8));
    assert_eq!(list["x-kubernetes-list-type"], Value::from("map"));
    assert_eq!(
        list["x-kubernetes-list-map-keys"],
        serde_json::json!(["name"])
    );
}

#[test]
fn quantities_are_int_or_string_and_never_null() {
    let schema = schema("RelayPool");
    for path in ["spec.queue.storage.size", "spec.limits.maxMessageSize"] {
        let node = node(&schema, path);
        assert_eq!(
            node["x-kubernetes-int-or-string"],
            Value::Bool(true),
            "{path}"
        );
        assert_eq!(node["nullable"], Value::Bool(false), "{path}");
    }
}
