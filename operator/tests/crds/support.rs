//! Shared helpers: the generated CRDs, fixtures, and validation of objects the way the
//! API server does it (defaults, then OpenAPI constraints, then CEL rules).
//!
//! Everything is read from the CRDs that `crdgen::crds()` generates, never from the
//! Rust types directly, so the tests exercise exactly what the API server will load.
//!
//! Stand-ins for the API server's validators:
//! - OpenAPI constraints (type, pattern, enum, minimum/maximum, lengths, item counts,
//!   required): the `jsonschema` crate, as JSON Schema draft 4, which OpenAPI 3.0's
//!   schema objects are a dialect of. The patterns used are RE2-compatible, so the
//!   ECMA-style engine there reads them the same way.
//! - CEL: the `kube-cel` crate, a CEL interpreter (the `cel` crate) with the Kubernetes
//!   extension libraries registered, including the list functions (`sum()`, `max()`)
//!   and the quantity library (`isQuantity()`, `quantity()`) that the rules use. It
//!   applies schema defaults before evaluating, as the API server does.
//! - List-map key uniqueness and unknown-field pruning are API server behaviours
//!   neither crate has; the structural test checks the schema declares them.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use smtpfleet_operator::crdgen;

/// The generated CRD of `kind`.
pub fn crd(kind: &str) -> CustomResourceDefinition {
    crdgen::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
}

/// The `openAPIV3Schema` of the CRD of `kind`, as JSON.
pub fn schema(kind: &str) -> Value {
    let crd = crd(kind);
    assert_eq!(crd.spec.versions.len(), 1, "one version expected");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("schema serialises")
}

/// Directory of the test fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One fixture file: an object (and, for update fixtures, the object it replaces) and
/// the failures it must produce.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// File the fixture came from, for messages.
    pub path: PathBuf,
    /// The previous version of the object, when the fixture is an update: the file's
    /// first YAML document when it has two.
    pub old: Option<Value>,
    /// The object submitted.
    pub object: Value,
    /// `# expect: <text>` lines: each must appear in some failure message, and every
    /// failure message must contain one of them.
    pub expect: Vec<String>,
    /// `# expect-field: <path>` lines: each must be the path of some failure.
    pub expect_fields: Vec<String>,
}

impl Fixture {
    /// Display name (`relaypool/invalid/no-listeners.yaml`).
    pub fn name(&self) -> String {
        self.path
            .strip_prefix(fixtures_dir())
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }

    /// Kind of the fixture's object.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().expect("fixture has a kind")
    }
}

/// Every `*.yaml` fixture in `fixtures/<sub>`, sorted by name.
pub fn load_fixtures(sub: &str) -> Vec<Fixture> {
    let dir = fixtures_dir().join(sub);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
    paths.iter().map(|path| load_fixture(path)).collect()
}

fn load_fixture(path: &Path) -> Fixture {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let directive = |prefix: &str| -> Vec<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .map(|rest| rest.trim().to_owned())
            .collect()
    };
    let expect = directive("# expect:");
    let expect_fields = directive("# expect-field:");
    let mut documents: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        })
        .collect();
    let (old, object) = match documents.len() {
        1 => (None, documents.remove(0)),
        2 => {
            let object = documents.remove(1);
            (Some(documents.remove(0)), object)
        }
        n => panic!(
            "{}: expected 1 or 2 YAML documents, found {n}",
            path.display()
        ),
    };
    Fixture {
        path: path.to_owned(),
        old,
        object,
        expect,
        expect_fields,
    }
}

/// Which validator reported a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An OpenAPI constraint of the schema.
    OpenApi,
    /// A CEL rule.
    Cel,
}

/// One reason an object is rejected.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Which validator.
    pub source: Source,
    /// Path of the failing field, dotted (`spec.queue.replicationFactor`).
    pub path: String,
    /// The message a user would see.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{:?}] {}: {}", self.source, self.path, self.message)
    }
}

/// Applies the schema's defaults to `object`, as the API server does on admission.
///
/// The API server (`structuraldefaulting.Default`) fills in a missing field with its
/// default and then descends into it, so `queue: {default: {}}` also receives the
/// defaults of `queue.maxAge` and the rest. `kube_cel::apply_defaults` only descends
/// into fields that were present before, one level per call, so it is repeated until
/// nothing changes, which yields the API server's result.
pub fn apply_defaults(schema: &Value, object: &Value) -> Value {
    let mut current = object.clone();
    loop {
        let next = kube_cel::apply_defaults(schema, &current);
        if next == current {
            return current;
        }
        current = next;
    }
}

/// Validates `object` (replacing `old`, for updates) against `schema`: defaults, then
/// OpenAPI constraints, then CEL rules.
pub fn validate_against(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<Failure> {
    let defaulted = apply_defaults(schema, object);
    let defaulted_old = old.map(|old| apply_defaults(schema, old));
    let mut failures = openapi_failures(schema, &defaulted);
    if let Err(errors) =
        kube_cel::Validator::new().validate(schema, &defaulted, defaulted_old.as_ref())
    {
        failures.extend(errors.iter().map(|e| Failure {
            source: Source::Cel,
            path: e.field_path.clone(),
            message: e.message.clone(),
        }));
    }
    failures
}

/// Validates a fixture against the generated CRD of its kind.
pub fn validate(fixture: &Fixture) -> Vec<Failure> {
    validate_against(
        &schema(fixture.kind()),
        &fixture.object,
        fixture.old.as_ref(),
    )
}

fn openapi_failures(schema: &Value, object: &Value) -> Vec<Failure> {
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .build(schema)
        .expect("the CRD schema is a valid JSON schema");
    validator
        .iter_errors(object)
        .map(|error| {
            let mut path = json_pointer_to_path(&error.instance_path().to_string());
            // The API server reports a missing required field at the field itself
            // (`spec.hostname: Required value`), not at its parent.
            if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind()
                && let Some(name) = property.as_str()
            {
                path = if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                };
            }
            Failure {
                source: Source::OpenApi,
                path,
                message: error.to_string(),
            }
        })
        .collect()
}

/// `/spec/dataCentres/0/name` → `spec.dataCentres[0].name`.
fn json_pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(segment);
        }
    }
    path
}

/// A CEL rule of a schema, with where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct LocatedRule {
    /// Path of the schema node (`spec.dataCentres[*]`), `""` for the root.
    pub location: String,
    /// Index of the rule in the node's `x-kubernetes-validations`.
    pub index: usize,
    /// The rule entry as written in the CRD.
    pub entry: Value,
}

impl LocatedRule {
    /// The CEL expression.
    pub fn rule(&self) -> &str {
        self.entry["rule"].as_str().expect("rule is a string")
    }

    /// Whether the rule compares with `oldSelf` (evaluated on updates only).
    pub fn is_transition(&self) -> bool {
        self.rule().contains("oldSelf")
    }
}

impl std::fmt::Display for LocatedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.location.is_empty() {
            "<root>"
        } else {
            &self.location
        };
        write!(f, "{at}: {}", self.rule())
    }
}

/// Every CEL rule in a schema, in schema order.
pub fn rules(schema: &Value) -> Vec<LocatedRule> {
    let mut out = Vec::new();
    walk_nodes(schema, String::new(), &mut |node, location| {
        if let Some(Value::Array(list)) = node.get("x-kubernetes-validations") {
            for (index, entry) in list.iter().enumerate() {
                out.push(LocatedRule {
                    location: location.to_owned(),
                    index,
                    entry: entry.clone(),
                });
            }
        }
    });
    out
}

/// Calls `visit` on every schema node below and including `node`, with its path.
pub fn walk_nodes(node: &Value, location: String, visit: &mut dyn FnMut(&Value, &str)) {
    visit(node, &location);
    if let Some(Value::Object(properties)) = node.get("properties") {
        for (name, property) in properties {
            let child = if location.is_empty() {
                name.clone()
            } else {
                format!("{location}.{name}")
            };
            walk_nodes(property, child, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk_nodes(items, format!("{location}[*]"), visit);
    }
    if let Some(additional @ Value::Object(_)) = node.get("additionalProperties") {
        walk_nodes(additional, format!("{location}{{*}}"), visit);
    }
}

/// A copy of `schema` that keeps only `keep` among all CEL rules, to tell which rule an
/// object violates.
pub fn schema_with_only(schema: &Value, keep: &LocatedRule) -> Value {
    let mut copy = schema.clone();
    strip_rules(&mut copy, String::new(), keep);
    copy
}

fn strip_rules(node: &mut Value, location: String, keep: &LocatedRule) {
    let Value::Object(map) = node else { return };
    if let Some(Value::Array(list)) = map.get_mut("x-kubernetes-validations") {
        let kept: Vec<Value> = list
            .iter()
            .enumerate()
            .filter(|(i, _)| location == keep.location && *i == keep.index)
            .map(|(_, v)| v.clone())
            .collect();
        *list = kept;
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            let child = if location.is_empty() {
                name.clone()
            } else {
                format!("{location}.{name}")
            };
            strip_rules(property, child, keep);
        }
    }
    if let Some(items) = map.get_mut("items") {
        strip_rules(items, format!("{location}[*]"), keep);
    }
    if let Some(additional @ Value::Object(_)) = map.get_mut("additionalProperties") {
        strip_rules(additional, format!("{location}{{*}}"), keep);
    }
}

/// Violations of just this rule by `object`.
pub fn violates(schema: &Value, rule: &LocatedRule, object: &Value, old: Option<&Value>) -> bool {
    let only = schema_with_only(schema, rule);
    let defaulted = apply_defaults(schema, object);
    let defaulted_old = old.map(|old| apply_defaults(schema, old));
    kube_cel::Validator::new()
        .validate(&only, &defaulted, defaulted_old.as_ref())
        .is_err()
}

/// Whether the (defaulted) object has a value at a schema location, so that a rule
/// there is evaluated.
pub fn has_node(object: &Value, location: &str) -> bool {
    if location.is_empty() {
        return true;
    }
    let mut current = vec![object];
    for segment in location.split('.') {
        let (name, lists) = match segment.find('[') {
            Some(i) => (&segment[..i], segment[i..].matches("[*]").count()),
            None => (segment, 0),
        };
        let mut next: Vec<&Value> = current
            .iter()
            .filter_map(|value| value.get(name))
            .filter(|value| !value.is_null())
            .collect();
        for _ in 0..lists {
            next = next
                .iter()
                .filter_map(|value| value.as_array())
                .flatten()
                .collect();
        }
        if next.is_empty() {
            return false;
        }
        current = next;
    }
    true
}

/// The schema node at a property path (`spec.queue.storage.size`, `[*]` for items).
pub fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut current = schema;
    for segment in path.split('.') {
        let (name, lists) = match segment.find('[') {
            Some(i) => (&segment[..i], segment[i..].matches("[*]").count()),
            None => (segment, 0),
        };
        current = current
            .get("properties")
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no property {name} in path {path}"));
        for _ in 0..lists {
            current = current
                .get("items")
                .unwrap_or_else(|| panic!("no items at {name} in path {path}"));
        }
    }
    current
}
