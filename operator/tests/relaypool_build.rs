//! RelayPool manifests in, child objects out: the pure stages of the reconciler
//! (validate → build, orphan detection, status) driven by YAML fixtures.

mod relaypool_support;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use relaypool_support::fixture;
use smtp_node::domains::shard::{INDEX_KEY, ShardIndex};
use smtp_node::outbound::DkimAlgorithm as NodeAlgorithm;
use smtpfleet_operator::api::RelayPool;
use smtpfleet_operator::relaypool::apply::orphans;
use smtpfleet_operator::relaypool::build::domains::{self, KeyMaterial};
use smtpfleet_operator::relaypool::build::layout::CONFIG_KEY;
use smtpfleet_operator::relaypool::build::node_config::{ListenerTls, NodeConfig};
use smtpfleet_operator::relaypool::build::{Children, build};
use smtpfleet_operator::relaypool::dereference::{Dereferenced, ReferencedSecret, SecretSummary};
use smtpfleet_operator::relaypool::model::{DkimAlgorithm, DkimKey, SigningDomain};
use smtpfleet_operator::relaypool::validate::{Validated, validate};

const IMAGE: &str = "ghcr.io/smtpfleet/smtp-node:test";

fn resolve(pool: &RelayPool, refs: &Dereferenced) -> Validated {
    validate(pool, refs, IMAGE).expect("fixture has full metadata")
}

fn children(pool: &RelayPool) -> Children {
    build(&resolve(pool, &Dereferenced::default()).pool).expect("builds")
}

fn pod(sts: &StatefulSet) -> &PodSpec {
    sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn node(sts: &StatefulSet) -> &Container {
    &pod(sts).containers[0]
}

fn replicas(children: &Children) -> Vec<(String, i32)> {
    children
        .statefulsets
        .iter()
        .map(|s| (s.name_any(), s.spec.as_ref().unwrap().replicas.unwrap()))
        .collect()
}

fn owner_refs(children: &Children) -> Vec<(String, Vec<OwnerReference>)> {
    let mut all = vec![
        (
            children.service_account.name_any(),
            children.service_account.owner_references().to_vec(),
        ),
        (
            children.config_map.name_any(),
            children.config_map.owner_references().to_vec(),
        ),
        (
            children.peer_service.name_any(),
            children.peer_service.owner_references().to_vec(),
        ),
        (
            children.client_service.name_any(),
            children.client_service.owner_references().to_vec(),
        ),
        (
            children.pod_disruption_budget.name_any(),
            children.pod_disruption_budget.owner_references().to_vec(),
        ),
    ];
    all.extend(
        children
            .statefulsets
            .iter()
            .map(|s| (s.name_any(), s.owner_references().to_vec())),
    );
    all
}

#[test]
fn pool_without_data_centres_runs_one_default_data_centre() {
    let pool = fixture("single.yaml");
    let children = children(&pool);
    assert_eq!(replicas(&children), [("relay-default".to_owned(), 3)]);
    let sts = &children.statefulsets[0];
    assert_eq!(sts.labels()["smtpfleet.io/data-centre"], "default");
    let env = node(sts).env.as_ref().unwrap();
    let dc = env
        .iter()
        .find(|e| e.name == "SMTP_NODE_DATA_CENTRE")
        .unwrap();
    assert_eq!(dc.value.as_deref(), Some("default"));
    assert_eq!(
        node(sts).image.as_deref(),
        Some(IMAGE),
        "pools without spec.image use the operator's"
    );
    // Not pinned to a zone: spread over zones as well as hosts.
    let keys: Vec<&str> = pod(sts)
        .topology_spread_constraints
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.topology_key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    assert!(pod(sts).node_selector.is_none());
    // The user's TLS Secret is mounted and required.
    let tls = pod(sts)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tls")
        .unwrap();
    let secret = tls.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("smtp-tls"));
    assert_eq!(secret.optional, None);
}

#[test]
fn every_child_is_owned_by_the_pool_as_controller() {
    let pool = fixture("multi.yaml");
    let children = children(&pool);
    let owned = owner_refs(&children);
    assert_eq!(owned.len(), 5 + 3);
    for (name, refs) in owned {
        assert_eq!(refs.len(), 1, "{name}");
        let r = &refs[0];
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            (
                "smtpfleet.io/v1alpha1",
                "RelayPool",
                "outbound",
                "6f1c1f5e-0000-4000-8000-000000000002"
            ),
            "{name}"
        );
        assert_eq!(r.controller, Some(true), "{name}");
        assert_eq!(r.block_owner_deletion, Some(true), "{name}");
    }
    let names: BTreeSet<String> = [
        children.service_account.name_any(),
        children.config_map.name_any(),
        children.peer_service.name_any(),
        children.client_service.name_any(),
        children.pod_disruption_budget.name_any(),
    ]
    .into();
    assert_eq!(
        names,
        ["outbound", "outbound-config", "outbound-peers"]
            .map(str::to_owned)
            .into()
    );
}

#[test]
fn data_centres_get_their_own_statefulsets_and_placement() {
    let pool = fixture("multi.yaml");
    let children = children(&pool);
    assert_eq!(
        replicas(&children),
        [
            ("outbound-eu-west-1a".to_owned(), 2),
            ("outbound-eu-west-1b".to_owned(), 2),
            ("outbound-on-prem".to_owned(), 1),
        ]
    );
    let [a, b, on_prem] = &children.statefulsets[..] else {
        panic!("three StatefulSets")
    };
    let zone = |sts: &StatefulSet| pod(sts).node_selector.clone().unwrap_or_default();
    assert_eq!(
        zone(a),
        BTreeMap::from([(
            "topology.kubernetes.io/zone".to_owned(),
            "eu-west-1a".to_owned()
        )])
    );
    assert_eq!(zone(b)["topology.kubernetes.io/zone"], "eu-west-1b");
    assert_eq!(
        zone(on_prem),
        BTreeMap::from([("example.com/rack".to_owned(), "r12".to_owned())])
    );
    assert!(pod(a).tolerations.is_none());
    let tolerations = pod(b).tolerations.clone().unwrap();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(
        (
            tolerations[0].key.as_deref(),
            tolerations[0].value.as_deref(),
            tolerations[0].effect.as_deref()
        ),
        (Some("dedicated"), Some("mail"), Some("NoSchedule"))
    );
    let spread = |sts: &StatefulSet| -> Vec<String> {
        pod(sts)
            .topology_spread_constraints
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.topology_key.clone())
            .collect()
    };
    assert_eq!(spread(a), ["kubernetes.io/hostname"], "pinned to a zone");
    assert_eq!(
        spread(on_prem),
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    for sts in &children.statefulsets {
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.service_name.as_deref(), Some("outbound-peers"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let dc = sts.labels()["smtpfleet.io/data-centre"].clone();
        assert!(sts.name_any().ends_with(&dc));
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast-ssd"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "50Gi"
        );
        let resources = node(sts).resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "250m");
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi");
        assert_eq!(
            node(sts).image.as_deref(),
            Some("registry.example.com/smtp-node:1.2.3")
        );
        assert_eq!(node(sts).image_pull_policy.as_deref(), Some("IfNotPresent"));
    }
}

#[test]
fn scaling_changes_replicas_but_not_the_pod_template() {
    let pool = fixture("multi.yaml");
    let before = children(&pool);
    let mut scaled = pool.clone();
    scaled.spec.data_centres[0].replicas = 4;
    scaled.spec.data_centres[2].replicas = 0;
    let after = children(&scaled);
    assert_eq!(
        replicas(&after),
        [
            ("outbound-eu-west-1a".to_owned(), 4),
            ("outbound-eu-west-1b".to_owned(), 2),
            ("outbound-on-prem".to_owned(), 0),
        ]
    );
    // Scaling must not roll every pod: the template (with its config hash) is unchanged,
    // and so is the digest the rollout gate compares.
    for (b, a) in before.statefulsets.iter().zip(&after.statefulsets) {
        assert_eq!(
            b.spec.as_ref().unwrap().template,
            a.spec.as_ref().unwrap().template,
            "{}",
            a.name_any()
        );
        assert_eq!(template_digest(b), template_digest(a), "{}", a.name_any());
    }
    // Scaling down from the single-data-centre form works the same way.
    let mut single = fixture("single.yaml");
    single.spec.replicas = 1;
    assert_eq!(
        replicas(&children(&single)),
        [("relay-default".to_owned(), 1)]
    );
}

#[test]
fn configuration_changes_roll_the_pods() {
    let pool = fixture("multi.yaml");
    let before = children(&pool);
    let mut changed = pool.clone();
    changed.spec.limits.max_recipients = 50;
    let after = children(&changed);
    let hash = |c: &Children| {
        c.statefulsets[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["smtpfleet.io/config-hash"]
            .clone()
    };
    assert_ne!(hash(&before), hash(&after));
    assert_eq!(hash(&before).len(), 64, "hex SHA-256");
    // The StatefulSets say their template changed: the operator holds their nodes and
    // releases them one at a time.
    for (b, a) in before.statefulsets.iter().zip(&after.statefulsets) {
        assert_ne!(template_digest(b), template_digest(a), "{}", a.name_any());
    }
}

/// The operator's digest of a StatefulSet's pod template.
fn template_digest(sts: &StatefulSet) -> String {
    sts.annotations()["smtpfleet.io/template-hash"].clone()
}

#[test]
fn added_and_removed_data_centres_are_found_as_orphans() {
    let pool = fixture("multi.yaml");
    let observed = children(&pool).statefulsets;

    // Remove eu-west-1b, add eu-central-1.
    let mut changed = pool.clone();
    changed.spec.data_centres.remove(1);
    let mut added = changed.spec.data_centres[0].clone();
    added.name = "eu-central-1".into();
    added.zone = Some("eu-central-1a".into());
    changed.spec.data_centres.push(added);
    let desired = children(&changed);
    let desired_names: BTreeSet<String> = desired
        .statefulsets
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(desired_names.contains("outbound-eu-central-1"));
    let uid = pool.uid().unwrap();
    assert_eq!(
        orphans(&desired_names, &observed, &uid),
        ["outbound-eu-west-1b"]
    );
    // Nothing else to delete once the apply has caught up.
    assert!(orphans(&desired_names, &desired.statefulsets, &uid).is_empty());
    // Another pool's StatefulSets are never ours to delete.
    assert!(orphans(&desired_names, &observed, "some-other-uid").is_empty());
}

#[test]
fn listeners_map_to_service_ports_and_container_ports() {
    let pool = fixture("multi.yaml");
    let children = children(&pool);
    let ports: Vec<(String, i32, IntOrString)> = children
        .client_service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap(),
                p.port,
                p.target_port.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("smtp".to_owned(), 25, IntOrString::String("smtp".into())),
            (
                "submission".to_owned(),
                587,
                IntOrString::String("submission".into())
            ),
            (
                "submissions".to_owned(),
                465,
                IntOrString::String("submissions".into())
            ),
        ]
    );
    for sts in &children.statefulsets {
        let container_ports: BTreeMap<String, i32> = node(sts)
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            container_ports,
            BTreeMap::from([
                ("smtp".to_owned(), 2525),
                ("submission".to_owned(), 2587),
                ("submissions".to_owned(), 2465),
                ("http".to_owned(), 8080),
                ("peer".to_owned(), 7443),
            ])
        );
    }
    // The default pool has only the relay listener.
    let minimal = children_of("minimal.yaml");
    let ports: Vec<i32> = minimal
        .client_service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [25]);
    let peers = children.peer_service.spec.as_ref().unwrap();
    assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
    assert_eq!(peers.publish_not_ready_addresses, Some(true));
}

fn children_of(name: &str) -> Children {
    children(&fixture(name))
}

#[test]
fn pods_run_non_root_read_only_without_capabilities() {
    for name in ["single.yaml", "multi.yaml", "minimal.yaml"] {
        for sts in children_of(name).statefulsets {
            let psc = pod(&sts).security_context.clone().unwrap();
            assert_eq!(
                (
                    psc.run_as_non_root,
                    psc.run_as_user,
                    psc.run_as_group,
                    psc.fs_group
                ),
                (Some(true), Some(65532), Some(65532), Some(65532)),
                "{name}"
            );
            assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
            let csc = node(&sts).security_context.clone().unwrap();
            assert_eq!(csc.read_only_root_filesystem, Some(true));
            assert_eq!(csc.allow_privilege_escalation, Some(false));
            assert_eq!(csc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
            // The token reaches the API server for the node's Lease and the pool's view.
            assert_eq!(pod(&sts).automount_service_account_token, Some(true));
        }
    }
    // The account itself mounts nothing: only the pod template asks for the token.
    let sa = children_of("minimal.yaml").service_account;
    assert_eq!(sa.automount_service_account_token, Some(false));
}

#[test]
fn managed_certificates_and_submission_users_are_mounted() {
    let pool = fixture("multi.yaml");
    let children = children(&pool);
    let volumes = pod(&children.statefulsets[0]).volumes.clone().unwrap();
    let tls = volumes
        .iter()
        .find(|v| v.name == "tls")
        .unwrap()
        .secret
        .clone()
        .unwrap();
    assert_eq!(tls.secret_name.as_deref(), Some("outbound-tls"));
    assert_eq!(
        tls.optional,
        Some(true),
        "cert-manager may not have issued it yet"
    );
    let auth = volumes
        .iter()
        .find(|v| v.name == "auth")
        .unwrap()
        .secret
        .clone()
        .unwrap();
    assert_eq!(auth.secret_name.as_deref(), Some("submission-users"));
}

#[test]
fn missing_secrets_are_problems_naming_the_secret() {
    let pool = fixture("single.yaml");
    let refs = Dereferenced {
        tls_secret: Some(ReferencedSecret {
            field: "spec.tls.secretName",
            name: "smtp-tls".into(),
            found: None,
        }),
        ..Dereferenced::default()
    };
    let validated = resolve(&pool, &refs);
    assert_eq!(validated.problems.len(), 1);
    assert_eq!(validated.problems[0].reason, "SecretNotFound");
    assert_eq!(
        validated.problems[0].message,
        "Secret \"smtp-tls\" referenced by spec.tls.secretName not found in namespace \"mail\"."
    );
    // The pool is still fully built.
    assert_eq!(build(&validated.pool).unwrap().statefulsets.len(), 1);

    let incomplete = Dereferenced {
        tls_secret: Some(ReferencedSecret {
            field: "spec.tls.secretName",
            name: "smtp-tls".into(),
            found: Some(SecretSummary {
                type_: Some("kubernetes.io/tls".into()),
                keys: ["tls.crt".to_owned()].into(),
            }),
        }),
        ..Dereferenced::default()
    };
    let validated = resolve(&pool, &incomplete);
    assert_eq!(validated.problems[0].reason, "SecretInvalid");
    assert!(
        validated.problems[0].message.contains("tls.key"),
        "{}",
        validated.problems[0].message
    );

    let present = Dereferenced {
        tls_secret: Some(ReferencedSecret {
            field: "spec.tls.secretName",
            name: "smtp-tls".into(),
            found: Some(SecretSummary {
                type_: Some("kubernetes.io/tls".into()),
                keys: ["tls.crt".to_owned(), "tls.key".to_owned()].into(),
            }),
        }),
        ..Dereferenced::default()
    };
    assert!(resolve(&pool, &present).problems.is_empty());
}

#[test]
fn submission_without_users_is_an_invalid_spec() {
    let mut pool = fixture("multi.yaml");
    pool.spec.relay.auth_secret_ref = None;
    let validated = resolve(&pool, &Dereferenced::default());
    let reasons: Vec<&str> = validated.problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, ["InvalidSpec"]);
    assert!(
        validated.problems[0]
            .message
            .contains("spec.relay.authSecretRef")
    );
}

#[test]
fn resolved_defaults_follow_the_api() {
    let minimal = resolve(&fixture("minimal.yaml"), &Dereferenced::default()).pool;
    assert_eq!(
        minimal.queue.replication_factor, 1,
        "a one-node pool cannot replicate"
    );
    assert_eq!(minimal.queue.min_data_centres, 1);
    assert_eq!(minimal.queue.storage.size.0, "10Gi");
    assert_eq!(minimal.limits.max_message_size, 25 * 1024 * 1024);
    assert_eq!(minimal.data_centres.len(), 1);
    assert_eq!(minimal.data_centres[0].name, "default");
    assert_eq!(minimal.data_centres[0].replicas, 1);
    let multi = resolve(&fixture("multi.yaml"), &Dereferenced::default()).pool;
    assert_eq!(multi.queue.replication_factor, 3);
    assert_eq!(multi.queue.min_data_centres, 2);
    assert_eq!(multi.limits.max_message_size, 50 * 1024 * 1024);
    assert_eq!(multi.limits.per_destination_rate_per_minute, Some(600));
    assert_eq!(multi.identity.generation, Some(4));
}

fn rendered(children: &Children) -> NodeConfig {
    let yaml = &children.config_map.data.as_ref().expect("data")[CONFIG_KEY];
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("the rendered config parses: {e}\n{yaml}"))
}

#[test]
fn node_configuration_is_rendered_into_the_config_map() {
    let pool = fixture("multi.yaml");
    let refs = Dereferenced {
        domains: vec![
            SigningDomain {
                object: "example".into(),
                domain: "example.com".into(),
                dkim: Some(DkimKey {
                    selector: "s2026".into(),
                    algorithm: DkimAlgorithm::Ed25519,
                    secret: "example-dkim-s2026".into(),
                    secret_key: "private.key".into(),
                }),
            },
            SigningDomain {
                object: "fresh".into(),
                domain: "fresh.example".into(),
                dkim: None,
            },
        ],
        ..Dereferenced::default()
    };
    let children = build(&resolve(&pool, &refs).pool).unwrap();
    assert_eq!(
        children.config_map.metadata.name.as_deref(),
        Some("outbound-config")
    );
    let config = rendered(&children);

    assert_eq!(config.hostname, "smtp.mail.example.com");
    assert_eq!(config.node.name_env, "POD_NAME");
    assert_eq!(config.node.data_centre_env, "SMTP_NODE_DATA_CENTRE");
    let listeners: Vec<(&str, &str, ListenerTls, bool)> = config
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address.as_str(), l.tls, l.require_auth))
        .collect();
    assert_eq!(
        listeners,
        [
            ("relay", "0.0.0.0:2525", ListenerTls::Starttls, false),
            ("submission", "0.0.0.0:2587", ListenerTls::Starttls, true),
            ("implicitTls", "0.0.0.0:2465", ListenerTls::Implicit, true),
        ]
    );
    let tls = config.tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, "/etc/smtp-node/tls/tls.crt");
    assert_eq!(tls.key_file, "/etc/smtp-node/tls/tls.key");
    assert_eq!(config.http.address, "0.0.0.0:8080");
    assert_eq!(config.spool.dir, "/var/spool/smtp-node");

    assert_eq!(config.replication.factor, 3);
    assert_eq!(config.replication.min_data_centres, 2);
    assert_eq!(config.replication.listen, "0.0.0.0:7443");
    // Nodes find each other through the view in the API server, each advertising its
    // pod IP: the document names no peer.
    assert_eq!(config.replication.advertise_host_env, "POD_IP");
    assert_eq!(config.replication.arbiter.namespace, "mail");
    assert_eq!(config.replication.arbiter.pool, "outbound");
    for sts in &children.statefulsets {
        assert_eq!(
            sts.spec.as_ref().unwrap().service_name.as_deref(),
            Some("outbound-peers")
        );
    }

    assert_eq!(
        config.relay.allowed_networks,
        ["10.0.0.0/8", "2001:db8::/32"]
    );
    assert_eq!(
        config.relay.users_file.as_deref(),
        Some("/etc/smtp-node/auth/users")
    );
    // Domains and keys are not in the configuration: nodes read the pool's domain set.
    assert_eq!(config.pool_domains.namespace, "mail");
    assert_eq!(config.pool_domains.pool, "outbound");
    let mut keys = KeyMaterial::default();
    keys.insert("example-dkim-s2026".to_owned(), b"PEM".to_vec(), None);
    let model = resolve(&pool, &refs).pool;
    let objects = domains::build(&model, &keys);
    assert_eq!(
        objects.index.metadata.name.as_deref(),
        Some("outbound-domains")
    );
    let mut served = Vec::new();
    for (secret, digest) in &objects.shards {
        let data = secret.data.as_ref().unwrap();
        let name = secret.metadata.name.clone().unwrap();
        assert_eq!(objects.index.data.as_ref().unwrap()[&name], *digest);
        let index: ShardIndex = serde_yaml::from_slice(&data[INDEX_KEY].0).unwrap();
        for d in index.domains {
            if let Some(k) = &d.dkim {
                assert_eq!(
                    (k.selector.as_str(), k.algorithm),
                    ("s2026", NodeAlgorithm::Ed25519)
                );
                assert_eq!(data[&k.key].0, b"PEM", "the key travels in the same shard");
            }
            served.push((d.domain, d.dkim.is_some()));
        }
    }
    served.sort();
    assert_eq!(
        served,
        [
            ("example.com".to_owned(), true),
            ("fresh.example".to_owned(), false)
        ],
        "a domain without a key yet is served unsigned"
    );
    for sts in &children.statefulsets {
        assert!(
            pod(sts)
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.projected.is_none()),
            "no per-domain volume"
        );
    }

    assert_eq!(config.limits.max_message_size, 50 * 1024 * 1024);
    assert_eq!(config.limits.max_recipients, 500);
    assert_eq!(config.limits.max_connections, 2000);
    assert_eq!(config.limits.max_connections_per_client, 100);
    assert_eq!(config.delivery.helo_name, "smtp.mail.example.com");
    assert_eq!(config.delivery.concurrency_per_destination, 20);
    assert_eq!(config.delivery.rate_per_minute, Some(600));
    assert_eq!(
        config.delivery.retry_schedule,
        ["1m", "5m", "15m", "1h", "6h"]
    );
    assert_eq!(config.delivery.max_age, "3d12h");
}

#[test]
fn scaling_changes_neither_the_config_nor_its_hash() {
    let pool = fixture("single.yaml");
    let before = children(&pool);
    let mut scaled = pool.clone();
    scaled.spec.replicas = 5;
    let after = children(&scaled);
    assert_eq!(before.config_map, after.config_map);
    assert_eq!(
        before.statefulsets[0].spec.as_ref().unwrap().template,
        after.statefulsets[0].spec.as_ref().unwrap().template
    );
    // A pool without users or keys renders neither.
    let config = rendered(&children_of("minimal.yaml"));
    assert!(config.relay.users_file.is_none());
    assert_eq!(config.replication.factor, 1);
    assert_eq!(
        config.delivery.retry_schedule,
        ["5m", "10m", "30m", "1h", "2h", "4h"]
    );
    assert_eq!(config.delivery.max_age, "5d");
}
