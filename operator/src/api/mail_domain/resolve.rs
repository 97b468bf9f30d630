//! Effective values of a MailDomain spec, for the reconciler.

use std::time::Duration;

use super::DkimSpec;
use crate::api::duration::parse_field;
use crate::api::error::SpecError;

impl DkimSpec {
    /// Rotation period of generated keys; `None` when keys are not rotated.
    pub fn rotate_after(&self) -> Result<Option<Duration>, SpecError> {
        self.rotate_after
            .as_deref()
            .map(|text| parse_field("spec.dkim.rotateAfter", text))
            .transpose()
    }

    /// How long a new key is published before signing switches to it.
    pub fn rotation_overlap(&self) -> Result<Duration, SpecError> {
        parse_field("spec.dkim.rotationOverlap", &self.rotation_overlap)
    }

    /// Whether the operator generates (and may rotate) the key, rather than reading a
    /// user-supplied one.
    pub fn generates_key(&self) -> bool {
        self.private_key_secret_ref.is_none()
    }
}

impl super::MtaStsSpec {
    /// How long senders may cache the policy.
    pub fn max_age(&self) -> Result<Duration, SpecError> {
        parse_field("spec.mtaSts.maxAge", &self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DkimAlgorithm, MailDomainSpec, MtaStsMode};
    use super::*;

    fn spec(yaml: &str) -> MailDomainSpec {
        serde_yaml::from_str(yaml).expect("test spec parses")
    }

    #[test]
    fn minimal_spec_generates_an_unrotated_rsa_key() {
        let spec = spec("domain: example.com\nrelayPoolRef: {name: outbound}\n");
        assert_eq!(spec.dkim.selector, "smtpfleet");
        assert_eq!(spec.dkim.algorithm, DkimAlgorithm::Rsa2048);
        assert!(spec.dkim.generates_key());
        assert_eq!(spec.dkim.rotate_after(), Ok(None));
        assert_eq!(
            spec.dkim.rotation_overlap(),
            Ok(Duration::from_secs(7 * 86_400))
        );
    }

    #[test]
    fn rotation_and_mta_sts_durations_parse() {
        let spec = spec(
            "domain: example.com\n\
             relayPoolRef: {name: outbound}\n\
             dkim: {algorithm: ed25519, rotateAfter: 90d, rotationOverlap: 36h}\n\
             mtaSts: {mode: enforce, maxAge: 30d}\n",
        );
        assert_eq!(spec.dkim.algorithm, DkimAlgorithm::Ed25519);
        assert_eq!(
            spec.dkim.rotate_after(),
            Ok(Some(Duration::from_secs(90 * 86_400)))
        );
        assert_eq!(
            spec.dkim.rotation_overlap(),
            Ok(Duration::from_secs(36 * 3_600))
        );
        let sts = spec.mta_sts.expect("mtaSts set");
        assert_eq!(sts.mode, MtaStsMode::Enforce);
        assert_eq!(sts.max_age(), Ok(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn user_key_is_not_generated() {
        let spec = spec(
            "domain: example.com\n\
             relayPoolRef: {name: outbound}\n\
             dkim: {privateKeySecretRef: {name: example-dkim}}\n",
        );
        assert!(!spec.dkim.generates_key());
        let key = spec.dkim.private_key_secret_ref.expect("ref set");
        assert_eq!(key.key, "private.key");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let spec = spec(
            "domain: example.com\nrelayPoolRef: {name: outbound}\ndkim: {rotateAfter: 3 months}\n",
        );
        let err = spec.dkim.rotate_after().unwrap_err().to_string();
        assert!(
            err.starts_with("spec.dkim.rotateAfter: invalid duration"),
            "{err}"
        );
    }
}
