//! Builder tests on the resolved model. Fixture-driven tests of the whole pipeline
//! (RelayPool YAML in, objects out) live in `operator/tests/relaypool_build.rs`.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use super::layout::{HTTP_PORT, PEER_PORT};
use super::meta::{self, CONFIG_HASH_ANNOTATION};
use super::statefulset::{HOSTNAME_LABEL, ZONE_LABEL, statefulset};
use super::{pdb, rbac, service, service_account};
use crate::relaypool::model::{
    DkimAlgorithm, DkimKey, Listener, ListenerKind, SigningDomain, TlsSource,
};
use crate::relaypool::testing::pool;

fn pod(sts: &StatefulSet) -> &PodSpec {
    sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn node(sts: &StatefulSet) -> &Container {
    &pod(sts).containers[0]
}

fn assert_owned(meta: &kube::api::ObjectMeta) {
    let refs = meta.owner_references.as_ref().expect("owner references");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].kind, "RelayPool");
    assert_eq!(refs[0].name, "relay");
    assert_eq!(refs[0].uid, "uid-relay");
    assert_eq!(refs[0].controller, Some(true));
    assert_eq!(meta.namespace.as_deref(), Some("mail"));
}

#[test]
fn statefulset_identity_labels_and_selector() {
    let pool = pool(&[("east", 3)]);
    let sts = statefulset(&pool, &pool.data_centres[0], "hash-1");
    assert_eq!(sts.metadata.name.as_deref(), Some("relay-east"));
    assert_owned(&sts.metadata);
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("relay-peers"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let labels = sts.metadata.labels.as_ref().unwrap();
    for (k, v) in [
        ("app.kubernetes.io/name", "smtp-node"),
        ("app.kubernetes.io/instance", "relay"),
        ("app.kubernetes.io/managed-by", "smtpfleet-operator"),
        ("smtpfleet.io/pool", "relay"),
        ("smtpfleet.io/data-centre", "east"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(template_labels, labels);
    // The selector must select the template's pods and nothing of other data centres.
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert!(
        selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v))
    );
    assert_eq!(
        selector.get("smtpfleet.io/data-centre").map(String::as_str),
        Some("east")
    );
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(
        annotations.get(CONFIG_HASH_ANNOTATION).map(String::as_str),
        Some("hash-1")
    );
}

#[test]
fn config_hash_change_changes_only_the_template_annotation() {
    let pool = pool(&[("a", 1)]);
    let one = statefulset(&pool, &pool.data_centres[0], "h1");
    let mut two = statefulset(&pool, &pool.data_centres[0], "h2");
    assert_ne!(one, two);
    // The StatefulSet's digest of its template follows (the rollout gate compares it).
    let template_hash = |sts: &StatefulSet| {
        sts.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(meta::TEMPLATE_HASH_ANNOTATION))
            .cloned()
    };
    assert!(template_hash(&one).is_some());
    assert_ne!(template_hash(&one), template_hash(&two));
    two.metadata.annotations = one.metadata.annotations.clone();
    two.spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations = one
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone();
    assert_eq!(one, two);
}

#[test]
fn the_same_spec_gives_the_same_template_hash_and_partition_zero() {
    let pool = pool(&[("a", 2)]);
    let one = statefulset(&pool, &pool.data_centres[0], "h1");
    let again = statefulset(&pool, &pool.data_centres[0], "h1");
    assert_eq!(one.metadata.annotations, again.metadata.annotations);
    let strategy = one.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.as_ref().and_then(|r| r.partition),
        Some(0)
    );
}

#[test]
fn pods_get_their_identity_and_data_centre_from_the_environment() {
    let pool = pool(&[("west", 1)]);
    let sts = statefulset(&pool, &pool.data_centres[0], "h");
    let env = node(&sts).env.as_ref().unwrap();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(field("POD_IP").as_deref(), Some("status.podIP"));
    let dc = env
        .iter()
        .find(|e| e.name == "SMTP_NODE_DATA_CENTRE")
        .unwrap();
    assert_eq!(dc.value.as_deref(), Some("west"));
}

#[test]
fn listeners_become_container_ports_and_client_service_ports() {
    let mut pool = pool(&[("a", 1)]);
    pool.listeners = vec![
        Listener {
            kind: ListenerKind::Relay,
            port: 25,
        },
        Listener {
            kind: ListenerKind::Submission,
            port: 587,
        },
        Listener {
            kind: ListenerKind::ImplicitTls,
            port: 465,
        },
    ];
    let sts = statefulset(&pool, &pool.data_centres[0], "h");
    let ports: Vec<(String, i32)> = node(&sts)
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("smtp".to_owned(), 2525),
            ("submission".to_owned(), 2587),
            ("submissions".to_owned(), 2465),
            ("http".to_owned(), i32::from(HTTP_PORT)),
            ("peer".to_owned(), i32::from(PEER_PORT)),
        ]
    );
    let client = service::client_service(&pool);
    assert_eq!(client.metadata.name.as_deref(), Some("relay"));
    assert_owned(&client.metadata);
    let service_ports: Vec<(String, i32, IntOrString)> = client
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
        service_ports,
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
    // Every target port names a port the container declares.
    for (_, _, target) in &service_ports {
        let IntOrString::String(name) = target else {
            panic!("numeric target")
        };
        assert!(ports.iter().any(|(n, _)| n == name), "{name}");
    }
    // The client Service selects the pool's pods.
    let pod_labels = sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = client.spec.as_ref().unwrap().selector.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
}

#[test]
fn peer_service_is_headless_and_publishes_unready_pods() {
    let pool = pool(&[("a", 1)]);
    let peers = service::peer_service(&pool);
    assert_eq!(peers.metadata.name.as_deref(), Some("relay-peers"));
    assert_owned(&peers.metadata);
    let spec = peers.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    let ports: Vec<i32> = spec
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert!(ports.contains(&i32::from(PEER_PORT)));
}

#[test]
fn pods_run_locked_down() {
    let pool = pool(&[("a", 1)]);
    let sts = statefulset(&pool, &pool.data_centres[0], "h");
    let pod = pod(&sts);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(psc.run_as_group, Some(65532));
    assert_eq!(psc.fs_group, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let csc = node(&sts).security_context.as_ref().unwrap();
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(
        csc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert!(csc.capabilities.as_ref().unwrap().add.is_none());
    assert_eq!(
        csc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    // The node reaches the API server (its Lease and the pool's view) with this token.
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("relay"));
    // Every listener port is unprivileged, since no capability allows binding below 1024.
    assert!(
        node(&sts)
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .all(|p| p.container_port >= 1024)
    );
}

#[test]
fn probes_use_the_node_http_port() {
    let pool = pool(&[("a", 1)]);
    let sts = statefulset(&pool, &pool.data_centres[0], "h");
    let c = node(&sts);
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
        (get.path.clone().unwrap(), get.port.clone())
    };
    let http = IntOrString::String("http".into());
    assert_eq!(probe(&c.readiness_probe), ("/readyz".into(), http.clone()));
    assert_eq!(probe(&c.liveness_probe), ("/healthz".into(), http.clone()));
    assert_eq!(probe(&c.startup_probe), ("/healthz".into(), http));
}

#[test]
fn zone_pins_pods_and_drops_the_zone_spread() {
    let mut pool = pool(&[("a", 2), ("b", 2)]);
    pool.data_centres[0].zone = Some("eu-1a".into());
    pool.data_centres[0].node_selector = [("disk".to_owned(), "ssd".to_owned())].into();
    pool.data_centres[0].tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("mail".into()),
        effect: Some("NoSchedule".into()),
        toleration_seconds: None,
    }];
    let pinned = statefulset(&pool, &pool.data_centres[0], "h");
    let selector = pod(&pinned).node_selector.clone().unwrap();
    assert_eq!(selector.get(ZONE_LABEL).map(String::as_str), Some("eu-1a"));
    assert_eq!(selector.get("disk").map(String::as_str), Some("ssd"));
    assert_eq!(
        pod(&pinned).tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    let keys: Vec<&str> = pod(&pinned)
        .topology_spread_constraints
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.topology_key.as_str())
        .collect();
    assert_eq!(keys, [HOSTNAME_LABEL]);

    let free = statefulset(&pool, &pool.data_centres[1], "h");
    assert!(pod(&free).node_selector.is_none());
    assert!(pod(&free).tolerations.is_none());
    let constraints = pod(&free).topology_spread_constraints.clone().unwrap();
    let keys: Vec<(&str, &str)> = constraints
        .iter()
        .map(|c| (c.topology_key.as_str(), c.when_unsatisfiable.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            (HOSTNAME_LABEL, "DoNotSchedule"),
            (ZONE_LABEL, "ScheduleAnyway")
        ]
    );
    assert!(constraints.iter().all(|c| c.max_skew == 1
        && c.label_selector.as_ref().unwrap().match_labels == Some(meta::pool_selector("relay"))));
}

#[test]
fn volumes_follow_the_spec() {
    let mut pool = pool(&[("a", 1)]);
    let plain = statefulset(&pool, &pool.data_centres[0], "h");
    let mounts = |sts: &StatefulSet| -> Vec<(String, String)> {
        node(sts)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    };
    assert_eq!(
        mounts(&plain),
        [
            ("config".to_owned(), "/etc/smtp-node/config".to_owned()),
            ("spool".to_owned(), "/var/spool/smtp-node".to_owned()),
            ("tmp".to_owned(), "/tmp".to_owned()),
            ("peer-tls".to_owned(), "/etc/smtp-node/peer".to_owned()),
            ("admin".to_owned(), "/etc/smtp-node/admin".to_owned()),
        ]
    );
    let admin = pod(&plain)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "admin")
        .unwrap()
        .secret
        .clone()
        .unwrap();
    assert_eq!(admin.secret_name.as_deref(), Some("relay-admin"));
    assert_eq!(admin.optional, Some(true));
    let spec = plain.spec.as_ref().unwrap();
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("spool"));
    let claim_spec = claim.spec.as_ref().unwrap();
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
    let config = pod(&plain)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "config")
        .unwrap();
    assert_eq!(config.config_map.as_ref().unwrap().name, "relay-config");

    pool.tls = Some(TlsSource::Secret("smtp-tls".into()));
    pool.relay.auth_secret = Some("smtp-users".into());
    pool.queue.storage.class = Some("fast".into());
    pool.domains = vec![
        SigningDomain {
            object: "example".into(),
            domain: "example.com".into(),
            dkim: Some(DkimKey {
                selector: "s1".into(),
                algorithm: DkimAlgorithm::Rsa,
                secret: "example-dkim-s1".into(),
                secret_key: "private.key".into(),
            }),
        },
        SigningDomain {
            object: "nokey".into(),
            domain: "nokey.org".into(),
            dkim: None,
        },
    ];
    let full = statefulset(&pool, &pool.data_centres[0], "h");
    let names: Vec<String> = mounts(&full).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["config", "spool", "tmp", "tls", "peer-tls", "admin", "auth"],
        "domains add no volume: nodes read their keys from the API server"
    );
    let volumes = pod(&full).volumes.clone().unwrap();
    let tls = volumes.iter().find(|v| v.name == "tls").unwrap();
    assert_eq!(
        tls.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("smtp-tls")
    );
    let auth = volumes.iter().find(|v| v.name == "auth").unwrap();
    assert_eq!(
        auth.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("smtp-users")
    );
    assert!(
        mounts(&full)
            .iter()
            .all(|(n, _)| volumes.iter().any(|v| &v.name == n) || n == "spool")
    );
    let claim = &full
        .spec
        .as_ref()
        .unwrap()
        .volume_claim_templates
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("fast")
    );
}

#[test]
fn pdb_allows_one_disruption_over_the_whole_pool() {
    let pool = pool(&[("a", 3), ("b", 3)]);
    let pdb = pdb::pod_disruption_budget(&pool);
    assert_eq!(pdb.metadata.name.as_deref(), Some("relay"));
    assert_owned(&pdb.metadata);
    let spec = pdb.spec.as_ref().unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(spec.min_available.is_none());
    let selector = spec
        .selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    for dc in &pool.data_centres {
        let sts = statefulset(&pool, dc, "h");
        let labels = sts.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "selects {}",
            dc.name
        );
    }
}

#[test]
fn the_pods_may_only_keep_leases_and_read_their_domain_set_in_their_namespace() {
    let pool = pool(&[("a", 1)]);
    let role = rbac::role(&pool);
    assert_eq!(role.meta().name.as_deref(), Some("relay-node"));
    assert_owned(&role.metadata);
    let rules = role.rules.as_ref().unwrap();
    assert_eq!(
        rules.len(),
        3,
        "Leases, the domain index, the domain shards"
    );
    assert!(rules[1..].iter().all(|r| r.resource_names.is_some()));
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["coordination.k8s.io".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["leases".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch", "create", "update"]);
    assert!(rules[0].resource_names.is_none());

    let binding = rbac::role_binding(&pool);
    assert_eq!(binding.meta().name.as_deref(), Some("relay-node"));
    assert_owned(&binding.metadata);
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "relay-node");
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "relay");
    assert_eq!(
        subjects[0].namespace.as_deref(),
        Some(pool.identity.namespace.as_str())
    );
}

#[test]
fn service_account_has_no_token() {
    let pool = pool(&[("a", 1)]);
    let sa = service_account::service_account(&pool);
    assert_eq!(sa.meta().name.as_deref(), Some("relay"));
    assert_owned(&sa.metadata);
    assert_eq!(sa.automount_service_account_token, Some(false));
}

fn with_domains(
    base: &crate::relaypool::model::Pool,
    count: usize,
    selector: &str,
) -> crate::relaypool::model::Pool {
    let mut pool = base.clone();
    pool.domains = (0..count)
        .map(|i| SigningDomain {
            object: format!("d{i}"),
            domain: format!("d{i}.example.com"),
            dkim: Some(DkimKey {
                selector: selector.into(),
                algorithm: DkimAlgorithm::Ed25519,
                secret: format!("d{i}-dkim-{selector}"),
                secret_key: "private.key".into(),
            }),
        })
        .collect();
    pool
}

#[test]
fn domains_and_key_rotation_are_reloaded_and_never_touch_the_pod_template() {
    let base = pool(&[("east", 2), ("west", 1)]);
    let before = super::build(&base).unwrap();
    let many = with_domains(&base, 200, "s1");
    let mut rotated = many.clone();
    rotated.domains[7].dkim.as_mut().unwrap().selector = "s2".into();
    rotated.domains[7].dkim.as_mut().unwrap().secret = "d7-dkim-s2".into();
    for changed in [&many, &rotated] {
        let after = super::build(changed).unwrap();
        assert_eq!(after, before, "every child but the domain set is unchanged");
        assert_eq!(
            super::domains::restart_inputs(changed),
            super::domains::restart_inputs(&base)
        );
    }
    assert_ne!(
        super::domains::reloaded_inputs(&many),
        super::domains::reloaded_inputs(&rotated),
        "the rotation is in what nodes reload"
    );
    // The domain set follows: the rotated domain's shard changes, and only that one.
    let keys = |pool: &crate::relaypool::model::Pool| {
        let mut keys = super::domains::KeyMaterial::default();
        for d in &pool.domains {
            let k = d.dkim.as_ref().unwrap();
            keys.insert(k.secret.clone(), k.selector.clone().into_bytes(), None);
        }
        keys
    };
    let a = super::domains::build(&many, &keys(&many));
    let b = super::domains::build(&rotated, &keys(&rotated));
    let changed: Vec<_> = a
        .shards
        .iter()
        .zip(&b.shards)
        .filter(|((_, da), (_, db))| da != db)
        .map(|((s, _), _)| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        changed,
        [smtp_node::domains::shard::shard_name(
            "relay",
            smtp_node::domains::shard::shard_of("d7.example.com")
        )]
    );
    assert_ne!(a.index, b.index);
}

#[test]
fn what_needs_a_restart_still_rolls_the_pods() {
    let base = pool(&[("east", 2)]);
    let template = |p: &crate::relaypool::model::Pool| {
        super::build(p).unwrap().statefulsets[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .clone()
    };
    let mut image = base.clone();
    image.image = "smtp-node:other".into();
    assert_ne!(template(&image), template(&base));
    let mut ports = base.clone();
    ports.listeners.push(Listener {
        kind: ListenerKind::Submission,
        port: 587,
    });
    assert_ne!(template(&ports), template(&base));
    let mut limits = base.clone();
    limits.limits.max_recipients += 1;
    assert_ne!(
        template(&limits),
        template(&base),
        "node configuration hash"
    );
}

#[test]
fn the_node_role_names_a_fixed_set_of_objects() {
    let role = rbac::role(&pool(&[("east", 1)]));
    let rules = role.rules.unwrap();
    let secrets = rules
        .iter()
        .find(|r| r.resources.as_deref() == Some(&["secrets".to_owned()][..]))
        .unwrap();
    assert_eq!(secrets.verbs, ["get"]);
    let names = secrets.resource_names.as_ref().unwrap();
    assert_eq!(names.len(), 64);
    assert_eq!(names[0], "relay-domains-00");
    let index = rules
        .iter()
        .find(|r| r.resources.as_deref() == Some(&["configmaps".to_owned()][..]))
        .unwrap();
    assert_eq!(
        index.resource_names.as_deref(),
        Some(&["relay-domains".to_owned()][..])
    );
    assert_eq!(index.verbs, ["get", "list", "watch"]);
}
