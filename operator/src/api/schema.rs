//! Schema transforms: CEL validation rules, Kubernetes list semantics, and tidying of
//! what schemars derives so that the CRDs read well and stay structural.
//!
//! kube's own `Rule` type carries either a `message` or a `messageExpression`; the API
//! server accepts both together and falls back to `message` when the expression fails,
//! so rules here are written through [`CelRule`] and attached with a schemars
//! `transform`.

use schemars::Schema;
use serde::Serialize;
use serde_json::Value;

/// Key of the rule list in a schema.
pub const VALIDATIONS_KEY: &str = "x-kubernetes-validations";

/// One `x-kubernetes-validations` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CelRule {
    /// The CEL expression; `self` is the value of the schema node it is attached to.
    pub rule: String,
    /// Fixed message shown when the rule fails.
    pub message: String,
    /// CEL expression that builds a message with the offending values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_expression: Option<String>,
    /// Path, relative to the node, reported as the failing field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
    /// Machine-readable reason: `FieldValueInvalid`, `FieldValueForbidden` or
    /// `FieldValueRequired`. Not `FieldValueDuplicate`: the API server reports that one
    /// as a bare "Duplicate value" and drops the rule's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl CelRule {
    /// A rule with a fixed message.
    pub fn new(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            rule: rule.into(),
            message: message.into(),
            message_expression: None,
            field_path: None,
            reason: None,
        }
    }

    /// Adds a message expression (the fixed message stays as the fallback).
    ///
    /// Build it with `"... %d ...".format([value])`, never with `"..." + string(value)`:
    /// the API server's cost estimator cannot bound the length of `string(int)`, rates
    /// every concatenation with it as unbounded, and rejects the CRD.
    pub fn message_expression(mut self, expression: impl Into<String>) -> Self {
        self.message_expression = Some(expression.into());
        self
    }

    /// Reports the failure on this field, relative to the node (`.queue.replicationFactor`).
    pub fn field_path(mut self, path: impl Into<String>) -> Self {
        self.field_path = Some(path.into());
        self
    }

    /// Sets the machine-readable reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Appends rules to a schema node's `x-kubernetes-validations`.
pub fn push_rules(schema: &mut Schema, rules: impl IntoIterator<Item = CelRule>) {
    let object = schema.ensure_object();
    let entry = object
        .entry(VALIDATIONS_KEY)
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = entry {
        for rule in rules {
            // Serialising a struct of strings into a `Value` cannot fail.
            if let Ok(value) = serde_json::to_value(rule) {
                list.push(value);
            }
        }
    }
}

/// Marks an array of objects as a map keyed by `keys`, so that server-side apply merges
/// entries by key and the API server rejects duplicate keys.
pub fn list_map(schema: &mut Schema, keys: &[&str]) {
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), Value::from("map"));
    object.insert(
        "x-kubernetes-list-map-keys".into(),
        Value::Array(keys.iter().map(|k| Value::from(*k)).collect()),
    );
}

/// Bounds the number of keys of a map-valued field; CEL cost estimates need the bound.
pub fn max_properties(schema: &mut Schema, max: u64) {
    schema
        .ensure_object()
        .insert("maxProperties".into(), Value::from(max));
}

/// Joins the hard-wrapped lines of the doc comments that became this node's
/// `description` and its properties' descriptions, keeping blank-line paragraph breaks.
///
/// `kubectl explain` re-flows text to the terminal width; line breaks from the source
/// would otherwise show up as ragged short lines. Only this node and its direct
/// properties are touched: nested types written elsewhere (Kubernetes' own, with their
/// deliberate line breaks) keep their text.
pub fn unwrap_descriptions(schema: &mut Schema) {
    let object = schema.ensure_object();
    unwrap_description(object);
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        for property in properties.values_mut() {
            if let Value::Object(property) = property {
                unwrap_description(property);
            }
        }
    }
}

fn unwrap_description(object: &mut serde_json::Map<String, Value>) {
    if let Some(Value::String(text)) = object.get_mut("description") {
        *text = unwrap_text(text);
    }
}

/// Replaces single line breaks with spaces; blank lines separate paragraphs.
pub fn unwrap_text(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Removes `default` from this node and everything below it.
///
/// Status fields are written by the operator in full; defaults there would only make
/// the API server invent values the operator never reported.
pub fn strip_defaults(schema: &mut Schema) {
    if let Some(object) = schema.as_object_mut() {
        strip_defaults_in(object);
    }
}

fn strip_defaults_in(object: &mut serde_json::Map<String, Value>) {
    object.remove("default");
    for (key, value) in object.iter_mut() {
        match (key.as_str(), value) {
            ("properties", Value::Object(properties)) => {
                for property in properties.values_mut() {
                    if let Value::Object(property) = property {
                        strip_defaults_in(property);
                    }
                }
            }
            ("items" | "additionalProperties", Value::Object(inner)) => strip_defaults_in(inner),
            _ => {}
        }
    }
}

/// Declares a field that must always hold a value as not nullable.
///
/// kube marks every optional int-or-string property (such as a quantity with a
/// default) as nullable unless the schema already says otherwise. A stored `null` would
/// then pass validation and make the object unreadable for the operator, which expects
/// a value or the field's absence.
pub fn not_nullable(schema: &mut Schema) {
    schema
        .ensure_object()
        .insert("nullable".into(), Value::Bool(false));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_text_joins_lines_and_keeps_paragraphs() {
        assert_eq!(
            unwrap_text("one\ntwo\n\nthree\n four"),
            "one two\n\nthree four"
        );
        assert_eq!(unwrap_text("single line"), "single line");
    }

    #[test]
    fn strip_defaults_is_recursive() {
        let mut schema = Schema::try_from(serde_json::json!({
            "type": "object",
            "default": {},
            "properties": {
                "n": {"type": "integer", "default": 0},
                "list": {"type": "array", "default": [], "items": {
                    "type": "object", "properties": {"x": {"type": "string", "default": "a"}}
                }}
            }
        }))
        .unwrap();
        strip_defaults(&mut schema);
        assert!(!serde_json::to_string(&schema).unwrap().contains("default"));
    }
}
