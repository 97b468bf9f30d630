//! The contract between the operator and smtp-node: every configuration the operator
//! renders is one smtp-node itself accepts (parsed and validated by smtp-node's own
//! `Config`), and pods run the command smtp-node understands.

use k8s_openapi::api::core::v1::Secret;
use smtpfleet_operator::api::RelayPool;
use smtpfleet_operator::relaypool::build::build;
use smtpfleet_operator::relaypool::build::layout::CONFIG_KEY;
use smtpfleet_operator::relaypool::dereference::{Dereferenced, ReferencedSecret, SecretSummary};
use smtpfleet_operator::relaypool::validate::validate;

fn pools() -> Vec<(String, RelayPool)> {
    let mut out = Vec::new();
    for dir in ["valid", "reconcile"] {
        let root = format!(
            "{}/tests/fixtures/relaypool/{dir}",
            env!("CARGO_MANIFEST_DIR")
        );
        for entry in std::fs::read_dir(&root).expect("fixtures") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc).expect("yaml");
                if value.get("kind").and_then(|k| k.as_str()) == Some("RelayPool") {
                    let mut pool: RelayPool = serde_yaml::from_value(value).expect("pool");
                    pool.metadata.namespace.get_or_insert_with(|| "mail".into());
                    pool.metadata.uid.get_or_insert_with(|| "uid-1".into());
                    out.push((path.display().to_string(), pool));
                }
            }
        }
    }
    assert!(out.len() > 5, "fixtures found");
    out
}

use serde::Deserialize;

/// Every Secret a spec names exists with the keys it needs.
fn refs_for(pool: &RelayPool) -> Dereferenced {
    let mut refs = Dereferenced::default();
    let secret = |field: &'static str, name: &str, type_: &str, keys: &[&str]| ReferencedSecret {
        field,
        name: name.to_owned(),
        found: Some(SecretSummary::of(&Secret {
            type_: Some(type_.to_owned()),
            string_data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), "x".to_owned()))
                    .collect(),
            ),
            ..Secret::default()
        })),
    };
    if let Some(name) = pool
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.secret_name.as_deref())
    {
        refs.tls_secret = Some(secret(
            "spec.tls.secretName",
            name,
            "kubernetes.io/tls",
            &["tls.crt", "tls.key"],
        ));
    }
    if let Some(auth) = pool.spec.relay.auth_secret_ref.as_ref() {
        refs.auth_secret = Some(secret(
            "spec.relay.authSecretRef",
            &auth.name,
            "Opaque",
            &["users"],
        ));
    }
    refs
}

#[test]
fn every_rendered_configuration_is_accepted_by_smtp_node() {
    for (path, pool) in pools() {
        let validated = match validate(&pool, &refs_for(&pool), "smtp-node:test") {
            Ok(v) => v,
            Err(e) => panic!("{path}: {e}"),
        };
        let children = build(&validated.pool).unwrap_or_else(|e| panic!("{path}: {e}"));
        let yaml = &children.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        if let Err(e) = smtp_node::config::Config::from_yaml(yaml) {
            panic!("{path}: smtp-node refuses the rendered config:\n{e}\n---\n{yaml}");
        }
        for sts in &children.statefulsets {
            let pod = sts
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("pod");
            let args = pod.containers[0].args.clone().unwrap_or_default();
            assert_eq!(
                args[..2],
                ["run".to_owned(), "--config".to_owned()],
                "{path}"
            );
        }
    }
}

/// Every file the rendered configuration names lies under a directory the node's pod
/// mounts, and a replicated pool's nodes get what replication needs: the arbiter (their
/// own namespace and pool, so the Lease names `<pool>-node-<node>` and `<pool>-view`),
/// their address from the downward API, the peer mTLS files, and the admin token the
/// operator drains them with.
#[test]
fn every_file_the_config_names_is_mounted_and_pools_get_what_replication_needs() {
    let mut replicated = 0;
    for (path, pool) in pools() {
        let Ok(validated) = validate(&pool, &refs_for(&pool), "smtp-node:test") else {
            continue;
        };
        let children = build(&validated.pool).unwrap_or_else(|e| panic!("{path}: {e}"));
        let yaml = &children.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        let config = smtp_node::config::Config::from_yaml(yaml).expect("accepted");
        for sts in &children.statefulsets {
            let pod = sts
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("pod");
            let container = &pod.containers[0];
            let mounts: Vec<String> = container
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.clone())
                .collect();
            let mounted = |file: &std::path::Path| mounts.iter().any(|m| file.starts_with(m));
            let token = config.http.admin_token_file.as_ref().expect("admin token");
            assert!(mounted(token), "{path}: {} is not mounted", token.display());
            assert!(mounted(&config.spool.dir), "{path}: spool not mounted");
            let env: Vec<String> = container
                .env
                .iter()
                .flatten()
                .map(|e| e.name.clone())
                .collect();
            if let Some(r) = &config.replication
                && r.factor > 1
            {
                replicated += 1;
                let arbiter = r.arbiter.as_ref().expect("an arbiter for factor > 1");
                assert_eq!(arbiter.namespace, pool.metadata.namespace.clone().unwrap());
                assert_eq!(arbiter.pool, pool.metadata.name.clone().unwrap());
                assert!(
                    arbiter.kubeconfig.is_none(),
                    "in cluster: the pod's account"
                );
                let host_env = r.advertise_host_env.as_deref().expect("advertised host");
                assert!(
                    env.iter().any(|e| e == host_env),
                    "{path}: {host_env} unset"
                );
                let tls = r.tls.as_ref().expect("peer mTLS");
                assert!(mounted(&tls.ca_file) && mounted(&tls.cert_dir), "{path}");
                assert!(pod.service_account_name.is_some(), "{path}: Lease access");
            }
        }
    }
    assert!(replicated > 0, "a fixture with replicationFactor > 1");
}

/// Every node is pointed at its pool's domain set, and the domain set the operator
/// writes is one smtp-node itself reads: its own shard parser and set builder load every
/// domain, sign with the keys the MailDomain controller generates, and the Role lets
/// the node read exactly the objects it fetches.
#[test]
fn the_domain_set_the_operator_writes_is_what_smtp_node_loads() {
    use smtp_node::domains::set::{assemble, parse_shard};
    use smtpfleet_operator::dkim_keys::{DkimKey, KeyAlgorithm};
    use smtpfleet_operator::relaypool::build::domains::{self, KeyMaterial};
    use smtpfleet_operator::relaypool::build::rbac;
    use smtpfleet_operator::relaypool::model::{DkimAlgorithm, DkimKey as PoolKey, SigningDomain};

    let (path, pool) = pools().into_iter().next().expect("a fixture");
    let mut model = validate(&pool, &refs_for(&pool), "smtp-node:test")
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .pool;
    let config = smtp_node::config::Config::from_yaml(
        &build(&model)
            .expect("builds")
            .config_map
            .data
            .expect("data")[CONFIG_KEY],
    )
    .expect("smtp-node accepts the configuration");
    let source = config
        .pool_domains
        .expect("nodes follow the pool's domain set");
    assert_eq!(source.pool, model.identity.name);
    assert_eq!(source.namespace, model.identity.namespace);

    let mut keys = KeyMaterial::default();
    model.domains = (0..40)
        .map(|i| {
            let algorithm = if i % 10 == 0 {
                KeyAlgorithm::Rsa
            } else {
                KeyAlgorithm::Ed25519
            };
            let key = DkimKey::generate(algorithm).expect("key");
            let secret = format!("d{i}-dkim-s1");
            keys.insert(
                secret.clone(),
                key.private_key_pem.clone().into_bytes(),
                None,
            );
            SigningDomain {
                object: format!("d{i}"),
                domain: format!("d{i}.example.com"),
                dkim: (i != 7).then(|| PoolKey {
                    selector: "s1".into(),
                    algorithm: match algorithm {
                        KeyAlgorithm::Rsa => DkimAlgorithm::Rsa,
                        KeyAlgorithm::Ed25519 => DkimAlgorithm::Ed25519,
                    },
                    secret,
                    secret_key: "private.key".into(),
                }),
            }
        })
        .collect();
    let objects = domains::build(&model, &keys);
    let role = rbac::role(&model);
    let rules = role.rules.expect("rules");
    let readable = |resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r.resources.as_deref() == Some(&[resource.to_owned()][..]))
            .flat_map(|r| r.resource_names.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        readable("configmaps"),
        [objects.index.metadata.name.clone().expect("name")]
    );
    let mut parsed = Vec::new();
    for (secret, digest) in &objects.shards {
        let name = secret.metadata.name.clone().expect("name");
        assert!(readable("secrets").contains(&name), "{name} is readable");
        let data = secret
            .data
            .clone()
            .expect("data")
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        assert_eq!(smtp_node::domains::shard::digest(&data), *digest);
        let (shard, rejected) = parse_shard(&name, &data, None).expect("the index parses");
        assert!(rejected.is_empty(), "{rejected:?}");
        parsed.push(shard);
    }
    let set = assemble(&parsed);
    assert_eq!(set.domain_count(), 40);
    assert_eq!(
        set.key_count(),
        39,
        "d7 has no key yet and is served unsigned"
    );
    assert!(set.serves("d7.example.com"));
    assert_eq!(
        set.signer("d10.example.com").map(|s| s.selector()),
        Some("s1")
    );
}
