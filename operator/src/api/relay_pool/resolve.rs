//! Defaults and shorthands of a RelayPool spec, resolved for the reconciler.
//!
//! The API server applies schema defaults, but objects can reach the operator without
//! them (created under an older CRD, or built in code), so the effective values are
//! computed here from the typed spec, the same way for everyone.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    AutoscalingSpec, DEFAULT_DATA_CENTRE, DataCentre, IssuerRef, LimitsSpec, ListenersSpec,
    QueueSpec, RelayPoolSpec, TlsSpec, ZONE_LABEL,
};
use crate::api::error::SpecError;
use crate::api::{duration, quantity};

/// Replication factor used when the spec leaves it out (capped by the pool's size).
pub const DEFAULT_REPLICATION_FACTOR: i32 = 2;

/// Which SMTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerKind {
    /// Plain SMTP relay with STARTTLS (`spec.listeners.relay`).
    Relay,
    /// Submission with STARTTLS and AUTH (`spec.listeners.submission`).
    Submission,
    /// Submission over implicit TLS with AUTH (`spec.listeners.implicitTls`).
    ImplicitTls,
}

/// A listener the spec enables, with its Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnabledListener {
    /// Which listener.
    pub kind: ListenerKind,
    /// Port of the pool's Service.
    pub port: i32,
}

/// Where the listener certificate comes from, with the absent `spec.tls` resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSource<'a> {
    /// cert-manager issues it through this issuer.
    CertManager(&'a IssuerRef),
    /// A user-provided `kubernetes.io/tls` Secret of this name.
    Secret(&'a str),
    /// The operator issues a self-signed certificate.
    SelfSigned,
}

impl RelayPoolSpec {
    /// The data centres of the pool: the listed ones, or the single implicit `default`
    /// data centre with `spec.replicas` nodes.
    pub fn data_centres(&self) -> Vec<DataCentre> {
        if self.data_centres.is_empty() {
            vec![DataCentre {
                name: DEFAULT_DATA_CENTRE.to_owned(),
                replicas: self.replicas,
                zone: None,
                node_selector: BTreeMap::new(),
                tolerations: Vec::new(),
            }]
        } else {
            self.data_centres.clone()
        }
    }

    /// Desired nodes over all data centres.
    pub fn total_replicas(&self) -> i32 {
        if self.data_centres.is_empty() {
            self.replicas
        } else {
            self.data_centres
                .iter()
                .fold(0i32, |sum, dc| sum.saturating_add(dc.replicas))
        }
    }

    /// Number of data centres, counting the implicit one.
    pub fn data_centre_count(&self) -> usize {
        self.data_centres.len().max(1)
    }

    /// The replication factor nodes apply: the spec's value, or 2 (at least
    /// `minDataCentres`) capped at the pool's total replicas.
    pub fn effective_replication_factor(&self) -> i32 {
        match self.queue.replication_factor {
            Some(factor) => factor,
            None => DEFAULT_REPLICATION_FACTOR
                .max(self.queue.min_data_centres)
                .min(self.total_replicas())
                .max(1),
        }
    }

    /// Where the listener certificate comes from. An absent `spec.tls` means
    /// self-signed.
    pub fn tls_source(&self) -> Result<TlsSource<'_>, SpecError> {
        match &self.tls {
            None => Ok(TlsSource::SelfSigned),
            Some(tls) => tls.source(),
        }
    }
}

impl TlsSpec {
    /// The one source this spec sets.
    pub fn source(&self) -> Result<TlsSource<'_>, SpecError> {
        match (&self.cert_manager, &self.secret_name, &self.self_signed) {
            (Some(cm), None, None) => Ok(TlsSource::CertManager(&cm.issuer_ref)),
            (None, Some(name), None) => Ok(TlsSource::Secret(name)),
            (None, None, Some(_)) => Ok(TlsSource::SelfSigned),
            _ => Err(SpecError::ExactlyOne {
                field: "spec.tls".to_owned(),
                options: "certManager, secretName, selfSigned".to_owned(),
            }),
        }
    }
}

impl DataCentre {
    /// The node selector of this data centre's pods, with the `zone` shorthand added.
    pub fn effective_node_selector(&self) -> BTreeMap<String, String> {
        let mut selector = self.node_selector.clone();
        if let Some(zone) = &self.zone {
            selector.insert(ZONE_LABEL.to_owned(), zone.clone());
        }
        selector
    }
}

impl ListenersSpec {
    /// The enabled listeners, in the order relay, submission, implicit TLS.
    pub fn enabled(&self) -> Vec<EnabledListener> {
        let relay = self.relay.map(|l| EnabledListener {
            kind: ListenerKind::Relay,
            port: l.port,
        });
        let submission = self.submission.map(|l| EnabledListener {
            kind: ListenerKind::Submission,
            port: l.port,
        });
        let implicit_tls = self.implicit_tls.map(|l| EnabledListener {
            kind: ListenerKind::ImplicitTls,
            port: l.port,
        });
        [relay, submission, implicit_tls]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Whether a listener that requires AUTH is enabled, so that the pool needs
    /// `spec.relay.authSecretRef`.
    pub fn requires_auth(&self) -> bool {
        self.submission.is_some() || self.implicit_tls.is_some()
    }
}

impl QueueSpec {
    /// The retry delays as durations.
    pub fn retry_schedule(&self) -> Result<Vec<Duration>, SpecError> {
        self.retry
            .schedule
            .iter()
            .enumerate()
            .map(|(i, text)| {
                duration::parse_field(&format!("spec.queue.retry.schedule[{i}]"), text)
            })
            .collect()
    }

    /// Age after which undelivered mail bounces.
    pub fn max_age(&self) -> Result<Duration, SpecError> {
        duration::parse_field("spec.queue.maxAge", &self.max_age)
    }
}

impl AutoscalingSpec {
    /// `scaleDownStabilization` as a duration.
    pub fn scale_down_stabilization(&self) -> Result<Duration, SpecError> {
        duration::parse_field(
            "spec.autoscaling.scaleDownStabilization",
            &self.scale_down_stabilization,
        )
    }
}

impl LimitsSpec {
    /// `maxMessageSize` in bytes.
    pub fn max_message_size_bytes(&self) -> Result<u64, SpecError> {
        quantity::to_bytes(&self.max_message_size).map_err(|e| SpecError::Quantity {
            field: "spec.limits.maxMessageSize".to_owned(),
            value: self.max_message_size.0.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        CertManagerTls, IssuerKind, RelayListener, SelfSignedTls, SubmissionListener,
    };
    use super::*;

    fn spec(yaml: &str) -> RelayPoolSpec {
        serde_yaml::from_str(yaml).expect("test spec parses")
    }

    #[test]
    fn pool_without_data_centres_is_one_default_data_centre() {
        let spec = spec("hostname: smtp.example.com\nreplicas: 3\n");
        let dcs = spec.data_centres();
        assert_eq!(dcs.len(), 1);
        assert_eq!(dcs[0].name, "default");
        assert_eq!(dcs[0].replicas, 3);
        assert!(dcs[0].effective_node_selector().is_empty());
        assert_eq!(spec.total_replicas(), 3);
        assert_eq!(spec.data_centre_count(), 1);
    }

    #[test]
    fn listed_data_centres_are_returned_as_written() {
        let spec = spec(
            "hostname: smtp.example.com\n\
             dataCentres:\n\
             - {name: eu-1, replicas: 2, zone: eu-west-1a}\n\
             - {name: eu-2, replicas: 3, nodeSelector: {pool: mail}}\n",
        );
        let dcs = spec.data_centres();
        assert_eq!(
            dcs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["eu-1", "eu-2"]
        );
        assert_eq!(spec.total_replicas(), 5);
        assert_eq!(spec.data_centre_count(), 2);
        assert_eq!(
            dcs[0].effective_node_selector(),
            BTreeMap::from([(ZONE_LABEL.to_owned(), "eu-west-1a".to_owned())])
        );
        assert_eq!(
            dcs[1].effective_node_selector(),
            BTreeMap::from([("pool".to_owned(), "mail".to_owned())])
        );
    }

    #[test]
    fn replication_factor_defaults_to_two_capped_by_size() {
        let single = spec("hostname: smtp.example.com\n");
        assert_eq!(single.effective_replication_factor(), 1);
        let three = spec("hostname: smtp.example.com\nreplicas: 3\n");
        assert_eq!(three.effective_replication_factor(), 2);
        let explicit =
            spec("hostname: smtp.example.com\nreplicas: 5\nqueue: {replicationFactor: 3}\n");
        assert_eq!(explicit.effective_replication_factor(), 3);
        let spread = spec(
            "hostname: smtp.example.com\n\
             queue: {minDataCentres: 3}\n\
             dataCentres:\n\
             - {name: a, replicas: 2}\n\
             - {name: b, replicas: 2}\n\
             - {name: c, replicas: 2}\n",
        );
        assert_eq!(spread.effective_replication_factor(), 3);
    }

    #[test]
    fn tls_source_resolves_each_variant() {
        let mut spec = spec("hostname: smtp.example.com\n");
        assert_eq!(spec.tls_source(), Ok(TlsSource::SelfSigned));

        spec.tls = Some(TlsSpec {
            cert_manager: None,
            secret_name: Some("smtp-tls".into()),
            self_signed: None,
        });
        assert_eq!(spec.tls_source(), Ok(TlsSource::Secret("smtp-tls")));

        let issuer = IssuerRef {
            name: "letsencrypt".into(),
            kind: IssuerKind::ClusterIssuer,
            group: "cert-manager.io".into(),
        };
        spec.tls = Some(TlsSpec {
            cert_manager: Some(CertManagerTls {
                issuer_ref: issuer.clone(),
            }),
            secret_name: None,
            self_signed: None,
        });
        assert_eq!(spec.tls_source(), Ok(TlsSource::CertManager(&issuer)));

        spec.tls = Some(TlsSpec {
            cert_manager: None,
            secret_name: Some("smtp-tls".into()),
            self_signed: Some(SelfSignedTls {}),
        });
        assert!(matches!(
            spec.tls_source(),
            Err(SpecError::ExactlyOne { .. })
        ));
        spec.tls = Some(TlsSpec {
            cert_manager: None,
            secret_name: None,
            self_signed: None,
        });
        assert!(spec.tls_source().is_err());
    }

    #[test]
    fn listeners_default_to_relay_and_report_auth_needs() {
        let spec = spec("hostname: smtp.example.com\n");
        assert_eq!(
            spec.listeners.enabled(),
            [EnabledListener {
                kind: ListenerKind::Relay,
                port: 25
            }]
        );
        assert!(!spec.listeners.requires_auth());

        let listeners = ListenersSpec {
            relay: Some(RelayListener { port: 2525 }),
            submission: Some(SubmissionListener::default()),
            implicit_tls: None,
        };
        assert_eq!(
            listeners.enabled(),
            [
                EnabledListener {
                    kind: ListenerKind::Relay,
                    port: 2525
                },
                EnabledListener {
                    kind: ListenerKind::Submission,
                    port: 587
                }
            ]
        );
        assert!(listeners.requires_auth());
    }

    #[test]
    fn queue_durations_and_message_size_parse() {
        let spec = spec("hostname: smtp.example.com\n");
        assert_eq!(
            spec.queue.retry_schedule().unwrap(),
            [300, 600, 1800, 3600, 7200, 14400].map(Duration::from_secs)
        );
        assert_eq!(
            spec.queue.max_age().unwrap(),
            Duration::from_secs(5 * 86_400)
        );
        assert_eq!(spec.limits.max_message_size_bytes(), Ok(25 * 1024 * 1024));
    }

    #[test]
    fn bad_values_name_their_field() {
        let spec = spec(
            "hostname: smtp.example.com\n\
             queue: {maxAge: 5 days, retry: {schedule: [5m, soon]}}\n\
             limits: {maxMessageSize: 25MB}\n",
        );
        let err = spec.queue.retry_schedule().unwrap_err().to_string();
        assert!(
            err.starts_with("spec.queue.retry.schedule[1]: invalid duration \"soon\""),
            "{err}"
        );
        let err = spec.queue.max_age().unwrap_err().to_string();
        assert!(err.starts_with("spec.queue.maxAge:"), "{err}");
        let err = spec
            .limits
            .max_message_size_bytes()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("spec.limits.maxMessageSize: invalid quantity \"25MB\""),
            "{err}"
        );
    }
}
