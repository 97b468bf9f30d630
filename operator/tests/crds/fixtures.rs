//! YAML fixtures validated against the generated CRDs: valid ones pass and read back
//! into the Rust types, invalid ones fail with the messages they declare, and every CEL
//! rule of the CRDs is both violated by some fixture and satisfied by another.

use serde_json::Value;
use smtpfleet_operator::api::{MailDomain, RelayPool};

use crate::support::{Fixture, has_node, load_fixtures, rules, schema, validate, violates};

const KINDS: [(&str, &str); 2] = [("RelayPool", "relaypool"), ("MailDomain", "maildomain")];

fn all(validity: &str) -> Vec<Fixture> {
    KINDS
        .iter()
        .flat_map(|(_, dir)| load_fixtures(&format!("{dir}/{validity}")))
        .collect()
}

/// The object as the operator would read it: through the typed API.
fn read_typed(fixture: &Fixture, object: &Value) -> Result<(), String> {
    match fixture.kind() {
        "RelayPool" => serde_json::from_value::<RelayPool>(object.clone()).map(drop),
        "MailDomain" => serde_json::from_value::<MailDomain>(object.clone()).map(drop),
        other => panic!("unknown kind {other}"),
    }
    .map_err(|e| e.to_string())
}

#[test]
fn valid_fixtures_are_accepted_and_readable() {
    let mut problems = Vec::new();
    for fixture in all("valid") {
        assert!(
            fixture.expect.is_empty(),
            "{}: a valid fixture expects nothing",
            fixture.name()
        );
        for failure in validate(&fixture) {
            problems.push(format!("{}: {failure}", fixture.name()));
        }
        if let Err(e) = read_typed(&fixture, &fixture.object) {
            problems.push(format!("{}: does not deserialise: {e}", fixture.name()));
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

#[test]
fn invalid_fixtures_fail_with_their_declared_messages() {
    let mut problems = Vec::new();
    for fixture in all("invalid") {
        let name = fixture.name();
        assert!(
            !fixture.expect.is_empty(),
            "{name}: declares no `# expect:` line"
        );
        let failures = validate(&fixture);
        if failures.is_empty() {
            problems.push(format!("{name}: accepted"));
            continue;
        }
        for expected in &fixture.expect {
            if !failures
                .iter()
                .any(|f| f.message.contains(expected.as_str()))
            {
                problems.push(format!(
                    "{name}: no failure says {expected:?}; got:\n    {}",
                    failures
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
        }
        for failure in &failures {
            if !fixture
                .expect
                .iter()
                .any(|e| failure.message.contains(e.as_str()))
            {
                problems.push(format!("{name}: unexpected failure {failure}"));
            }
        }
        for field in &fixture.expect_fields {
            if !failures.iter().any(|f| &f.path == field) {
                problems.push(format!(
                    "{name}: no failure at {field}; got:\n    {}",
                    failures
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

#[test]
fn every_cel_rule_is_violated_by_a_fixture_and_satisfied_by_another() {
    let mut problems = Vec::new();
    for (kind, dir) in KINDS {
        let schema = schema(kind);
        let valid = load_fixtures(&format!("{dir}/valid"));
        let invalid = load_fixtures(&format!("{dir}/invalid"));
        for rule in rules(&schema) {
            let violated_by: Vec<String> = invalid
                .iter()
                .filter(|f| violates(&schema, &rule, &f.object, f.old.as_ref()))
                .map(Fixture::name)
                .collect();
            if violated_by.is_empty() {
                problems.push(format!("{kind} {rule}: no invalid fixture violates it"));
            }
            let evaluated_in_valid = valid.iter().any(|f| {
                let defaulted = crate::support::apply_defaults(&schema, &f.object);
                let node_present = has_node(&defaulted, &rule.location);
                let evaluated = node_present && (!rule.is_transition() || f.old.is_some());
                evaluated && !violates(&schema, &rule, &f.object, f.old.as_ref())
            });
            if !evaluated_in_valid {
                problems.push(format!(
                    "{kind} {rule}: no valid fixture exercises it and passes"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

/// The CEL interpreter stand-in must not pass rules it cannot evaluate: a rule that
/// errors (unknown function, type mismatch) counts as a violation, so a valid fixture
/// passing proves the rule really evaluated to true.
#[test]
fn rule_evaluation_errors_count_as_failures() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.n.noSuchFunction()", "message": "m"}]
    });
    let result = kube_cel::Validator::new().validate(&schema, &serde_json::json!({"n": 1}), None);
    assert!(result.is_err());
}
