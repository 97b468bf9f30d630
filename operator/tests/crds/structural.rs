//! The schemas are structural, as the API server requires of `apiextensions.k8s.io/v1`
//! CRDs, and their extensions are well-formed.
//!
//! The checks follow "Specifying a structural schema" in the Kubernetes documentation
//! and the CRD validation of the apiextensions API server: every node has a type (or is
//! an int-or-string), arrays have items, objects do not mix `properties` with
//! `additionalProperties`, no logical junctors or references, no pruning opt-outs,
//! list-map keys are required scalars, defaults are pruned and valid, and CEL rules
//! carry messages without line breaks, known reasons and field paths that exist.

use serde_json::{Map, Value};

use crate::support::{node, rules, schema, walk_nodes};

const KINDS: [&str; 2] = ["RelayPool", "MailDomain"];

/// Keywords the API server's `JSONSchemaProps` accepts and that we may use.
const ALLOWED_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "default",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

fn problems_of(kind: &str) -> Vec<String> {
    let schema = schema(kind);
    let mut problems = Vec::new();
    walk_nodes(&schema, String::new(), &mut |node, location| {
        let at = if location.is_empty() {
            "<root>"
        } else {
            location
        };
        let Value::Object(map) = node else {
            problems.push(format!("{at}: not an object"));
            return;
        };
        check_node(map, at, &mut problems);
    });
    let root_properties: Vec<&String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    for name in root_properties {
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&name.as_str()) {
            problems.push(format!("<root>: unexpected top-level property {name}"));
        }
    }
    if schema
        .get("properties")
        .and_then(|p| p.get("metadata"))
        .is_some()
    {
        problems.push("<root>: metadata must not be constrained by the schema".into());
    }
    problems
}

fn check_node(map: &Map<String, Value>, at: &str, problems: &mut Vec<String>) {
    for key in map.keys() {
        if !ALLOWED_KEYS.contains(&key.as_str()) {
            problems.push(format!(
                "{at}: keyword {key} is not allowed in a structural schema"
            ));
        }
    }
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let type_ = map.get("type").and_then(Value::as_str);
    match (type_, int_or_string) {
        (Some(_), true) => problems.push(format!("{at}: int-or-string must not have a type")),
        (None, false) => problems.push(format!("{at}: no type")),
        (Some(t), false) if !TYPES.contains(&t) => problems.push(format!("{at}: unknown type {t}")),
        _ => {}
    }
    match type_ {
        Some("array") => {
            if !map.get("items").is_some_and(Value::is_object) {
                problems.push(format!("{at}: array without a single items schema"));
            }
        }
        Some("object") => {
            if map.contains_key("properties") && map.contains_key("additionalProperties") {
                problems.push(format!("{at}: both properties and additionalProperties"));
            }
            if let Some(additional) = map.get("additionalProperties")
                && !additional.is_object()
            {
                problems.push(format!("{at}: additionalProperties must be a schema"));
            }
        }
        _ => {
            for key in ["items", "properties", "additionalProperties", "required"] {
                if map.contains_key(key) {
                    problems.push(format!("{at}: {key} on a non-container node"));
                }
            }
        }
    }
    if let Some(Value::Array(required)) = map.get("required") {
        let properties = map.get("properties").and_then(Value::as_object);
        for name in required.iter().filter_map(Value::as_str) {
            if !properties.is_some_and(|p| p.contains_key(name)) {
                problems.push(format!("{at}: required {name} is not a property"));
            }
        }
    }
    if let Some(Value::Array(values)) = map.get("enum") {
        for value in values {
            if !matches_type(value, type_) {
                problems.push(format!("{at}: enum value {value} does not match type"));
            }
        }
    }
    if let Some(pattern) = map.get("pattern").and_then(Value::as_str) {
        // Rust's regex crate, like Go's RE2, has no look-around or back-references.
        if let Err(e) = regex::Regex::new(pattern) {
            problems.push(format!("{at}: pattern does not compile: {e}"));
        }
        if !pattern.starts_with('^') || !pattern.ends_with('$') {
            problems.push(format!("{at}: pattern is not anchored"));
        }
    }
    check_list_type(map, type_, at, problems);
    if let Some(default) = map.get("default") {
        check_default(map, default, at, problems);
    }
}

fn matches_type(value: &Value, type_: Option<&str>) -> bool {
    match type_ {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        _ => value.is_string() || value.is_i64() || value.is_u64(),
    }
}

fn check_list_type(
    map: &Map<String, Value>,
    type_: Option<&str>,
    at: &str,
    problems: &mut Vec<String>,
) {
    let list_type = map.get("x-kubernetes-list-type").and_then(Value::as_str);
    if list_type.is_some() && type_ != Some("array") {
        problems.push(format!("{at}: list-type on a non-array"));
    }
    match list_type {
        None => {
            if map.contains_key("x-kubernetes-list-map-keys") {
                problems.push(format!("{at}: list-map-keys without list-type map"));
            }
        }
        Some("atomic") | Some("set") => {}
        Some("map") => {
            let items = map.get("items").and_then(Value::as_object);
            let keys: Vec<&str> = map
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if keys.is_empty() {
                problems.push(format!("{at}: list-type map without keys"));
            }
            let Some(items) = items else { return };
            if items.get("type").and_then(Value::as_str) != Some("object") {
                problems.push(format!("{at}: list-type map items are not objects"));
            }
            let required: Vec<&str> = items
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for key in keys {
                let property = items.get("properties").and_then(|p| p.get(key));
                let scalar = property
                    .and_then(|p| p.get("type"))
                    .and_then(Value::as_str)
                    .is_some_and(|t| ["string", "integer", "number", "boolean"].contains(&t));
                if !scalar {
                    problems.push(format!("{at}: map key {key} is not a scalar property"));
                }
                let defaulted = property.is_some_and(|p| p.get("default").is_some());
                if !required.contains(&key) && !defaulted {
                    problems.push(format!(
                        "{at}: map key {key} is neither required nor defaulted"
                    ));
                }
            }
        }
        Some(other) => problems.push(format!("{at}: unknown list-type {other}")),
    }
}

/// A default must survive pruning (no undeclared fields) and satisfy its own schema.
fn check_default(map: &Map<String, Value>, default: &Value, at: &str, problems: &mut Vec<String>) {
    fn unpruned(node: &Map<String, Value>, value: &Value, path: &str, problems: &mut Vec<String>) {
        if let (Some(properties), Value::Object(fields)) =
            (node.get("properties").and_then(Value::as_object), value)
        {
            for (name, field) in fields {
                match properties.get(name).and_then(Value::as_object) {
                    Some(child) => unpruned(child, field, &format!("{path}.{name}"), problems),
                    None => problems.push(format!("{path}: default has undeclared field {name}")),
                }
            }
        }
    }
    unpruned(map, default, at, problems);
    let mut node = map.clone();
    node.remove("default");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .build(&Value::Object(node.clone()))
        .expect("node is a valid schema");
    let defaulted = crate::support::apply_defaults(&Value::Object(node), default);
    for error in validator.iter_errors(&defaulted) {
        problems.push(format!("{at}: default {default} is invalid: {error}"));
    }
}

#[test]
fn schemas_are_structural() {
    for kind in KINDS {
        let problems = problems_of(kind);
        assert!(problems.is_empty(), "{kind}:\n  {}", problems.join("\n  "));
    }
}

#[test]
fn no_field_opts_out_of_pruning_or_embeds_resources() {
    for kind in KINDS {
        let text = serde_json::to_string(&schema(kind)).expect("serialises");
        for keyword in [
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-embedded-resource",
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
        ] {
            assert!(!text.contains(keyword), "{kind} schema uses {keyword}");
        }
    }
}

#[test]
fn spec_collections_are_bounded_for_cel_cost() {
    // The API server estimates the worst-case cost of every CEL rule from maxItems,
    // maxProperties and maxLength. Unbounded collections of our own types would make the
    // estimate explode; Kubernetes' own embedded types (`resources`) are exempt because
    // no rule looks into them.
    for kind in KINDS {
        let spec = node(&schema(kind), "spec").clone();
        let mut problems = Vec::new();
        walk_nodes(&spec, "spec".into(), &mut |node, location| {
            if location.starts_with("spec.resources") {
                return;
            }
            let type_ = node.get("type").and_then(Value::as_str);
            if type_ == Some("array") && node.get("maxItems").is_none() {
                problems.push(format!("{location}: array without maxItems"));
            }
            if node.get("additionalProperties").is_some() && node.get("maxProperties").is_none() {
                problems.push(format!("{location}: map without maxProperties"));
            }
            let in_toleration = location.contains(".tolerations[*]");
            if type_ == Some("string")
                && node.get("enum").is_none()
                && !in_toleration
                && node.get("maxLength").is_none()
            {
                problems.push(format!("{location}: string without maxLength"));
            }
        });
        assert!(problems.is_empty(), "{kind}:\n  {}", problems.join("\n  "));
    }
}

#[test]
fn cel_rules_are_well_formed() {
    // `FieldValueDuplicate` is a valid reason, but the API server renders it as a bare
    // "Duplicate value" without the rule's message, so the API does not use it.
    const REASONS: [&str; 3] = [
        "FieldValueInvalid",
        "FieldValueForbidden",
        "FieldValueRequired",
    ];
    for kind in KINDS {
        let schema = schema(kind);
        let rules = rules(&schema);
        assert!(!rules.is_empty(), "{kind} has CEL rules");
        for rule in rules {
            let entry = rule.entry.as_object().expect("rule entry is an object");
            assert!(!rule.rule().trim().is_empty(), "{rule}: empty rule");
            let message = entry.get("message").and_then(Value::as_str);
            let expression = entry.get("messageExpression").and_then(Value::as_str);
            assert!(
                message.is_some() || expression.is_some(),
                "{rule}: no message"
            );
            if let Some(message) = message {
                assert!(!message.contains('\n'), "{rule}: message has a line break");
            }
            if let Some(expression) = expression {
                // The API server's cost estimator cannot bound `string(int)`, so any
                // concatenation with it is estimated as unbounded and the CRD rejected;
                // messages with values use `format()`, whose cost is the format string's.
                assert!(
                    !expression.contains("string(") && !expression.contains(" + "),
                    "{rule}: messageExpression concatenates converted values; use format()"
                );
            }
            if let Some(reason) = entry.get("reason").and_then(Value::as_str) {
                assert!(REASONS.contains(&reason), "{rule}: unknown reason {reason}");
            }
            if let Some(path) = entry.get("fieldPath").and_then(Value::as_str) {
                let relative = path.strip_prefix('.').expect("fieldPath starts with a dot");
                // The path must name a property the schema declares below the rule.
                assert!(
                    !rule.location.is_empty(),
                    "{rule}: fieldPath on a root rule"
                );
                let target = format!("{}.{relative}", rule.location);
                let node = node(&schema, &target);
                assert!(node.is_object(), "{rule}: fieldPath {path} does not exist");
            }
        }
    }
}
