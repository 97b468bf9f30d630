//! Shared helpers for the unit tests of the pipeline stages.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::model::{
    DataCentre, Limits, Listener, ListenerKind, Pool, PoolIdentity, Queue, Relay, Storage,
};

/// A pool `relay` in namespace `mail` with the given data centres (name, replicas).
pub fn pool(dcs: &[(&str, i32)]) -> Pool {
    Pool {
        identity: PoolIdentity {
            name: "relay".into(),
            namespace: "mail".into(),
            uid: "uid-relay".into(),
            generation: Some(1),
            api_version: "smtpfleet.io/v1alpha1".into(),
            kind: "RelayPool".into(),
        },
        hostname: "mx.example.com".into(),
        image: "smtp-node:test".into(),
        image_pull_policy: None,
        resources: None,
        listeners: vec![Listener {
            kind: ListenerKind::Relay,
            port: 25,
        }],
        data_centres: dcs
            .iter()
            .map(|(name, replicas)| DataCentre {
                name: (*name).into(),
                replicas: *replicas,
                zone: None,
                node_selector: BTreeMap::new(),
                tolerations: Vec::new(),
            })
            .collect(),
        queue: Queue {
            replication_factor: 2,
            min_data_centres: 1,
            storage: Storage {
                size: Quantity("1Gi".into()),
                class: None,
            },
            retry_schedule: vec![Duration::from_secs(60)],
            max_age: Duration::from_secs(5 * 24 * 3600),
        },
        tls: None,
        relay: Relay::default(),
        limits: Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_client: 50,
            per_destination_concurrency: 10,
            per_destination_rate_per_minute: None,
        },
        domains: Vec::new(),
    }
}

/// Status of a StatefulSet as the StatefulSet controller reports it.
#[derive(Debug, Clone, Copy)]
pub struct StsState {
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed: i64,
    /// `status.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `status.updatedReplicas`.
    pub updated: i32,
    /// Whether `currentRevision == updateRevision`.
    pub same_revision: bool,
}

impl StsState {
    /// A settled StatefulSet with `replicas` pods of which `ready` are ready.
    pub fn settled(replicas: i32, ready: i32) -> Self {
        Self {
            generation: 1,
            observed: 1,
            replicas,
            ready,
            updated: replicas,
            same_revision: true,
        }
    }
}

/// The StatefulSet of data centre `dc` of pool `relay` in `state`.
pub fn sts(dc: &str, state: StsState) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some(format!("relay-{dc}")),
            generation: Some(state.generation),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(StatefulSetStatus {
            observed_generation: Some(state.observed),
            replicas: state.replicas,
            ready_replicas: Some(state.ready),
            updated_replicas: Some(state.updated),
            current_revision: Some("relay-a-1".into()),
            update_revision: Some(if state.same_revision {
                "relay-a-1".into()
            } else {
                "relay-a-2".into()
            }),
            ..StatefulSetStatus::default()
        }),
    }
}
