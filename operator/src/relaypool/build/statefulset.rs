//! One StatefulSet per data centre: stable pod names (a node's Lease and its place in
//! the pool's view are keyed by them)
//! and one spool PersistentVolumeClaim per pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::layout::{
    self, ADMIN_DIR, AUTH_DIR, CONFIG_DIR, HTTP_PORT, HTTP_PORT_NAME, PEER_PORT, PEER_PORT_NAME,
    PEER_TLS_DIR, RUN_AS, SPOOL_DIR, TLS_DIR, TMP_DIR,
};
use super::meta::{self, CONFIG_HASH_ANNOTATION, TEMPLATE_HASH_ANNOTATION};
use crate::relaypool::model::{DataCentre, Pool};

/// Name of the node container.
pub const CONTAINER_NAME: &str = "smtp-node";
/// Environment variable carrying the pod's data centre to the node.
pub const DATA_CENTRE_ENV: &str = "SMTP_NODE_DATA_CENTRE";

/// The pod's IP, from the downward API: the address a node writes into the pool's view
/// for its peers.
pub const POD_IP_ENV: &str = "POD_IP";
/// Node label of the zone a pod runs in (the one `spec.zone` and `nodeSelector` speak of).
pub use crate::api::relay_pool::ZONE_LABEL;
/// Node label of the host a pod runs on.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

const SPOOL_VOLUME: &str = "spool";
const CONFIG_VOLUME: &str = "config";
const TLS_VOLUME: &str = "tls";
const PEER_TLS_VOLUME: &str = "peer-tls";
const ADMIN_VOLUME: &str = "admin";
const AUTH_VOLUME: &str = "auth";
const TMP_VOLUME: &str = "tmp";

/// Secrets are readable by the pod's group (fsGroup) and nobody else.
const SECRET_MODE: i32 = 0o440;

/// Pods get this long after SIGTERM to finish SMTP transactions in flight and flush
/// the spool before they are killed.
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// The StatefulSet of data centre `dc`. `config_hash` identifies the rendered node
/// configuration: it goes into a pod-template annotation so that a configuration
/// change rolls the pods, which read their configuration at start.
///
/// Nothing here depends on the pool's domains (the volumes have a fixed shape): nodes
/// read domains and DKIM keys from the API server while they run, so MailDomains never
/// change the pod template.
///
/// The partition is 0 here (nothing held): the controller sets it from
/// [`crate::relaypool::rollout::decide`] before applying, so that a template change
/// reaches one node at a time.
pub fn statefulset(pool: &Pool, dc: &DataCentre, config_hash: &str) -> StatefulSet {
    let name = &pool.identity.name;
    let labels = meta::data_centre_labels(name, &dc.name);
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_owned(),
                config_hash.to_owned(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(pool, dc)),
    };
    let mut metadata = meta::child_meta(
        &pool.identity,
        meta::statefulset_name(name, &dc.name),
        labels,
    );
    metadata.annotations = Some(BTreeMap::from([(
        TEMPLATE_HASH_ANNOTATION.to_owned(),
        template_hash(&template),
    )]));
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(dc.replicas),
            selector: LabelSelector {
                match_labels: Some(meta::data_centre_selector(name, &dc.name)),
                match_expressions: None,
            },
            service_name: Some(meta::peer_service_name(name)),
            // Nodes find each other through the pool's view, not through start order:
            // starting them together halves the time a new data centre takes to come up.
            pod_management_policy: Some("Parallel".into()),
            // The operator moves the partition itself, one node of the whole pool at a
            // time, once the queue is replicated (see `relaypool::rollout`); the
            // StatefulSet controller alone would replace every data centre's pods at once,
            // gated only by readiness.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: None,
                }),
            }),
            // Spools hold mail: never delete a claim automatically. A data centre that
            // is removed and added back finds its old spool, and replication sorts out
            // ownership (a returning node learns newer epochs from its peers).
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template,
            volume_claim_templates: Some(vec![spool_claim(pool)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// A digest of the pod template as the operator builds it (before the API server adds
/// defaults), so two builds of the same spec compare equal.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    super::config::sha256_hex(&bytes)
}

fn pod_spec(pool: &Pool, dc: &DataCentre) -> PodSpec {
    let name = &pool.identity.name;
    PodSpec {
        service_account_name: Some(meta::service_account_name(name)),
        // The node keeps its Lease and its place in the pool's view through the API
        // server, as the pool's ServiceAccount (a Role on Leases in this namespace only).
        automount_service_account_token: Some(true),
        // Service links inject variables for every Service in the namespace; the node
        // does not use them and they can collide with its own settings.
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        node_selector: node_selector(dc),
        tolerations: (!dc.tolerations.is_empty()).then(|| dc.tolerations.clone()),
        topology_spread_constraints: Some(spread_constraints(name, dc)),
        containers: vec![container(pool, dc)],
        volumes: Some(volumes(pool)),
        ..PodSpec::default()
    }
}

/// The user's node selector plus the zone shorthand.
fn node_selector(dc: &DataCentre) -> Option<BTreeMap<String, String>> {
    let mut selector = dc.node_selector.clone();
    if let Some(zone) = &dc.zone {
        selector.insert(ZONE_LABEL.to_owned(), zone.clone());
    }
    (!selector.is_empty()).then_some(selector)
}

/// Spreading keeps the copies of a message on different failure domains.
///
/// Over hosts it is required (`DoNotSchedule`): two pods of the pool on one host would
/// let one host failure take several replicas of the same messages. A skew of 1 never
/// needs more hosts than pods, so small clusters still schedule everything. Over zones,
/// when the data centre is not pinned to one, it is best effort (`ScheduleAnyway`):
/// clusters without zone labels must still run the pool.
fn spread_constraints(pool: &str, dc: &DataCentre) -> Vec<TopologySpreadConstraint> {
    let selector = LabelSelector {
        match_labels: Some(meta::pool_selector(pool)),
        match_expressions: None,
    };
    let mut constraints = vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: HOSTNAME_LABEL.into(),
        when_unsatisfiable: "DoNotSchedule".into(),
        label_selector: Some(selector.clone()),
        ..TopologySpreadConstraint::default()
    }];
    if dc.zone.is_none() {
        constraints.push(TopologySpreadConstraint {
            max_skew: 1,
            topology_key: ZONE_LABEL.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(selector),
            ..TopologySpreadConstraint::default()
        });
    }
    constraints
}

fn container(pool: &Pool, dc: &DataCentre) -> Container {
    let mut ports: Vec<ContainerPort> = pool
        .listeners
        .iter()
        .map(|l| tcp_port(l.kind.port_name(), l.kind.container_port()))
        .collect();
    ports.push(tcp_port(HTTP_PORT_NAME, HTTP_PORT));
    ports.push(tcp_port(PEER_PORT_NAME, PEER_PORT));
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(pool.image.clone()),
        image_pull_policy: pool.image_pull_policy.clone(),
        args: Some(vec!["run".into(), "--config".into(), layout::config_path()]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env(POD_IP_ENV, "status.podIP"),
            EnvVar {
                name: DATA_CENTRE_ENV.into(),
                value: Some(dc.name.clone()),
                value_from: None,
            },
        ]),
        ports: Some(ports),
        // Start-up replays the spool, which can take a while after a crash with a deep
        // queue: up to 5 minutes before liveness takes over.
        startup_probe: Some(http_probe("/healthz", 5, 60)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: pool.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volume_mounts(pool)),
        ..Container::default()
    }
}

fn tcp_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: field_path.into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn volume_mounts(pool: &Pool) -> Vec<VolumeMount> {
    let mut mounts = vec![
        mount(CONFIG_VOLUME, CONFIG_DIR, true),
        mount(SPOOL_VOLUME, SPOOL_DIR, false),
        mount(TMP_VOLUME, TMP_DIR, false),
    ];
    if pool.tls.is_some() {
        mounts.push(mount(TLS_VOLUME, TLS_DIR, true));
    }
    mounts.push(mount(PEER_TLS_VOLUME, PEER_TLS_DIR, true));
    mounts.push(mount(ADMIN_VOLUME, ADMIN_DIR, true));
    if pool.relay.auth_secret.is_some() {
        mounts.push(mount(AUTH_VOLUME, AUTH_DIR, true));
    }
    mounts
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// Secrets are mounted as whole volumes, never with `subPath`, so that the kubelet
/// updates the files in place when a certificate is renewed and the node can reload
/// it without a restart.
fn volumes(pool: &Pool) -> Vec<Volume> {
    let name = &pool.identity.name;
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: meta::config_map_name(name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(tls) = &pool.tls {
        volumes.push(secret_volume(TLS_VOLUME, tls.secret_name(), tls.optional()));
    }
    // Optional: the certificate controller creates it shortly after the pool.
    volumes.push(secret_volume(
        PEER_TLS_VOLUME,
        &meta::peer_tls_secret_name(name),
        true,
    ));
    // Optional for the same reason; until it exists the node's admin API is closed.
    volumes.push(secret_volume(
        ADMIN_VOLUME,
        &meta::admin_secret_name(name),
        true,
    ));
    if let Some(auth) = &pool.relay.auth_secret {
        volumes.push(secret_volume(AUTH_VOLUME, auth, false));
    }
    volumes
}

fn secret_volume(name: &str, secret: &str, optional: bool) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(SECRET_MODE),
            optional: optional.then_some(true),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn spool_claim(pool: &Pool) -> PersistentVolumeClaim {
    let storage = &pool.queue.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(SPOOL_VOLUME.into()),
            labels: Some(meta::pool_labels(&pool.identity.name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    storage.size.clone(),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}
