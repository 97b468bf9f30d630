//! CEL rules and bounds attached to the RelayPool schema with schemars `transform`s.
//!
//! Rules that relate fields across the spec sit on the spec; the others on the smallest
//! object that holds the fields they read, so that the API server reports the error at
//! that object. Messages name the field in `spec.` form, as users write it.

use schemars::Schema;

use super::ZONE_LABEL;
use crate::api::schema::{self, CelRule};

/// Total replicas of the pool in CEL: the sum over data centres, or `spec.replicas` for a
/// pool without data centres. `self` is the spec.
const CEL_TOTAL_REPLICAS: &str = "(has(self.dataCentres) && size(self.dataCentres) > 0 ? self.dataCentres.map(dc, dc.replicas).sum() : self.replicas)";
/// Number of data centres of the pool in CEL (an implicit one when none are listed).
const CEL_DATA_CENTRE_COUNT: &str =
    "(has(self.dataCentres) && size(self.dataCentres) > 0 ? size(self.dataCentres) : 1)";

pub(super) fn spec(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [
            CelRule::new(
                format!(
                    "!has(self.queue.replicationFactor) || self.queue.replicationFactor <= {CEL_TOTAL_REPLICAS}"
                ),
                "spec.queue.replicationFactor must not exceed the pool's total replicas",
            )
            .message_expression(format!(
                "\"spec.queue.replicationFactor (%d) must not exceed the pool's total replicas (%d): add replicas or lower the replication factor\".format([self.queue.replicationFactor, {CEL_TOTAL_REPLICAS}])"
            ))
            .field_path(".queue.replicationFactor")
            .reason("FieldValueInvalid"),
            CelRule::new(
                format!("self.queue.minDataCentres <= {CEL_DATA_CENTRE_COUNT}"),
                "spec.queue.minDataCentres must not exceed the number of data centres",
            )
            .message_expression(format!(
                "\"spec.queue.minDataCentres (%d) must not exceed the number of data centres (%d)\".format([self.queue.minDataCentres, {CEL_DATA_CENTRE_COUNT}])"
            ))
            .field_path(".queue.minDataCentres")
            .reason("FieldValueInvalid"),
            CelRule::new(
                "!has(self.queue.replicationFactor) || self.queue.replicationFactor >= self.queue.minDataCentres",
                "spec.queue.replicationFactor must be at least spec.queue.minDataCentres: each data centre needs a copy",
            )
            .message_expression(
                "\"spec.queue.replicationFactor (%d) must be at least spec.queue.minDataCentres (%d): each data centre needs a copy\".format([self.queue.replicationFactor, self.queue.minDataCentres])",
            )
            .field_path(".queue.replicationFactor")
            .reason("FieldValueInvalid"),
            CelRule::new(
                "!(has(self.listeners.submission) || has(self.listeners.implicitTls)) || has(self.relay.authSecretRef)",
                "spec.relay.authSecretRef is required when spec.listeners.submission or spec.listeners.implicitTls is enabled: those listeners accept only authenticated clients",
            )
            .field_path(".relay.authSecretRef")
            .reason("FieldValueRequired"),
            CelRule::new(
                "!has(self.dataCentres) || size(self.dataCentres) == 0 || self.replicas == 1",
                "spec.replicas applies only to a pool without spec.dataCentres: set replicas on each data centre instead",
            )
            .field_path(".replicas")
            .reason("FieldValueForbidden"),
        ],
    );
}

pub(super) fn data_centres(schema: &mut Schema) {
    schema::list_map(schema, &["name"]);
    schema::push_rules(
        schema,
        [CelRule::new(
            "self.all(a, self.exists_one(b, b.name == a.name))",
            "spec.dataCentres names must be unique",
        )
        .reason("FieldValueInvalid")],
    );
}

pub(super) fn data_centre(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [CelRule::new(
            format!("!has(self.zone) || !has(self.nodeSelector) || !('{ZONE_LABEL}' in self.nodeSelector)"),
            format!("set the zone either with zone or with nodeSelector[{ZONE_LABEL}], not both"),
        )
        .field_path(".zone")
        .reason("FieldValueForbidden")],
    );
}

/// At most 16 labels, each value at most 63 characters like every label value; the
/// bounds keep the CEL cost estimate of rules on data centres small.
pub(super) fn node_selector(schema: &mut Schema) {
    schema::max_properties(schema, 16);
    if let Some(serde_json::Value::Object(values)) =
        schema.ensure_object().get_mut("additionalProperties")
    {
        values.insert("maxLength".into(), serde_json::Value::from(63));
    }
}

pub(super) fn listeners(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [
            CelRule::new(
                "has(self.relay) || has(self.submission) || has(self.implicitTls)",
                "spec.listeners must enable at least one of relay, submission or implicitTls",
            )
            .reason("FieldValueRequired"),
            CelRule::new(
                "!(has(self.relay) && has(self.submission) && self.relay.port == self.submission.port) && !(has(self.relay) && has(self.implicitTls) && self.relay.port == self.implicitTls.port) && !(has(self.submission) && has(self.implicitTls) && self.submission.port == self.implicitTls.port)",
                "spec.listeners ports must differ from each other",
            )
            .reason("FieldValueInvalid"),
        ],
    );
}

pub(super) fn autoscaling(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [CelRule::new(
            "self.minReplicas <= self.maxReplicas",
            "spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas",
        )
        .message_expression(
            "\"spec.autoscaling.minReplicas (%d) must not exceed spec.autoscaling.maxReplicas (%d)\".format([self.minReplicas, self.maxReplicas])",
        )
        .field_path(".minReplicas")
        .reason("FieldValueInvalid")],
    );
}

pub(super) fn tls(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [CelRule::new(
            "(has(self.certManager) ? 1 : 0) + (has(self.secretName) ? 1 : 0) + (has(self.selfSigned) ? 1 : 0) == 1",
            "spec.tls must set exactly one of certManager, secretName or selfSigned",
        )
        .reason("FieldValueInvalid")],
    );
}

/// The API server also checks each section's `default: {}` against the section's rules,
/// without filling in the nested defaults first, so the rule tolerates absent fields
/// (objects themselves always have both, from their defaults).
pub(super) fn limits(schema: &mut Schema) {
    schema::push_rules(
        schema,
        [CelRule::new(
            "!has(self.maxConnectionsPerClient) || !has(self.maxConnections) || self.maxConnectionsPerClient <= self.maxConnections",
            "spec.limits.maxConnectionsPerClient must not exceed spec.limits.maxConnections",
        )
        .field_path(".maxConnectionsPerClient")
        .reason("FieldValueInvalid")],
    );
}

/// A size given as a quantity must be one and be positive. The field is an
/// int-or-string, so `string(self)` reads both forms. The field always has a value
/// (its default), so it is not nullable either.
pub(super) fn positive_quantity(schema: &mut Schema) {
    schema::not_nullable(schema);
    schema::push_rules(
        schema,
        [CelRule::new(
            "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
            "must be a positive quantity such as 512Mi or 10Gi",
        )
        .reason("FieldValueInvalid")],
    );
}
