//! The peer PKI as Secrets: `<pool>-peer-ca` holds the CA keys and the rotation state
//! and is never mounted; `<pool>-peer-tls` holds what nodes need (the trust bundle and a
//! certificate per node) and is mounted in every pod. Pure conversions, for tests.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::peer_ca::{KeyedCert, PeerMaterial, PeerNode};
use crate::api::relay_pool::RelayPoolSpec;
use crate::relaypool::build::meta;

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn ca_pair(secret: &Secret, prefix: &str) -> Option<KeyedCert> {
    KeyedCert::parse(
        &text(secret, &format!("{prefix}.crt"))?,
        &text(secret, &format!("{prefix}.key"))?,
        true,
    )
    .ok()
}

/// Reads stored material. A CA Secret that is missing or damaged gives `None`, and the
/// plan starts a new CA (nodes pick it up through the bundle like any rotation).
pub fn read(ca: Option<&Secret>, peers: Option<&Secret>) -> Option<PeerMaterial> {
    let ca = ca?;
    let active = ca_pair(ca, "active")?;
    let at = |key: &str| text(ca, key).and_then(|t| t.trim().parse::<i64>().ok());
    let next = ca_pair(ca, "next").zip(at("next.since"));
    let previous = ca_pair(ca, "previous").zip(at("previous.until"));
    let mut nodes = BTreeMap::new();
    if let Some(data) = peers.and_then(|p| p.data.as_ref()) {
        for key in data.keys() {
            let Some(node) = key.strip_suffix(".crt") else {
                continue;
            };
            let pair = peers
                .and_then(|p| Some((text(p, key)?, text(p, &format!("{node}.key"))?)))
                .and_then(|(c, k)| KeyedCert::parse(&c, &k, false).ok());
            if let Some(cert) = pair
                && node != "ca"
            {
                nodes.insert(node.to_owned(), cert);
            }
        }
    }
    Some(PeerMaterial {
        active,
        next,
        previous,
        nodes,
    })
}

/// The data of both Secrets: (CA Secret, mounted peer Secret).
pub fn data(m: &PeerMaterial) -> (BTreeMap<String, ByteString>, BTreeMap<String, ByteString>) {
    let b = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut ca = BTreeMap::from([
        ("active.crt".to_owned(), b(&m.active.cert_pem)),
        ("active.key".to_owned(), b(&m.active.key_pem)),
    ]);
    if let Some((next, since)) = &m.next {
        ca.insert("next.crt".into(), b(&next.cert_pem));
        ca.insert("next.key".into(), b(&next.key_pem));
        ca.insert("next.since".into(), b(&since.to_string()));
    }
    if let Some((previous, until)) = &m.previous {
        ca.insert("previous.crt".into(), b(&previous.cert_pem));
        ca.insert("previous.key".into(), b(&previous.key_pem));
        ca.insert("previous.until".into(), b(&until.to_string()));
    }
    let mut peers = BTreeMap::from([("ca.crt".to_owned(), b(&m.bundle()))]);
    for (node, cert) in &m.nodes {
        peers.insert(format!("{node}.crt"), b(&cert.cert_pem));
        peers.insert(format!("{node}.key"), b(&cert.key_pem));
    }
    (ca, peers)
}

/// The nodes of a pool as its StatefulSets name them, with the DNS names peers dial
/// through the headless Service. `live` is each data centre's replica count in its
/// StatefulSet as it is now: while a node drains before a scale-down, or a removed data
/// centre drains, or the autoscaler has added nodes beyond the spec, those nodes still
/// talk to their peers and need their certificates.
pub fn nodes(
    pool: &str,
    namespace: &str,
    spec: &RelayPoolSpec,
    live: &BTreeMap<String, i32>,
) -> Vec<PeerNode> {
    let service = meta::peer_service_name(pool);
    let mut counts: BTreeMap<String, i32> = live.clone();
    for dc in spec.data_centres() {
        let count = counts.entry(dc.name.clone()).or_default();
        *count = (*count).max(dc.replicas);
    }
    counts
        .into_iter()
        .flat_map(|(dc, replicas)| {
            let sts = meta::statefulset_name(pool, &dc);
            let service = service.clone();
            (0..replicas.max(0)).map(move |ordinal| {
                let name = format!("{sts}-{ordinal}");
                PeerNode {
                    dns_names: vec![
                        format!("{name}.{service}.{namespace}.svc"),
                        format!("{name}.{service}.{namespace}.svc.cluster.local"),
                        name.clone(),
                    ],
                    name,
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::peer_ca::plan;

    #[test]
    fn material_survives_the_round_trip_through_secrets() {
        let nodes = vec![PeerNode {
            name: "p-default-0".into(),
            dns_names: vec!["p-default-0.p-peers.mail.svc".into()],
        }];
        let m = plan("p", None, &nodes, 1_795_000_000, 60, false).unwrap();
        let m = plan("p", Some(m), &nodes, 1_795_000_001, 60, true).unwrap();
        let (ca, peers) = data(&m);
        let secret = |data| Secret {
            data: Some(data),
            ..Secret::default()
        };
        let back = read(Some(&secret(ca)), Some(&secret(peers))).unwrap();
        assert_eq!(back, m);
        assert_eq!(read(None, None), None);
    }

    #[test]
    fn nodes_follow_the_statefulset_names() {
        let spec: RelayPoolSpec = serde_yaml::from_str(
            "hostname: mx.example.com\ndataCentres:\n- {name: east, replicas: 2}\n- {name: west, replicas: 1}\n",
        )
        .unwrap();
        let names = |live: &[(&str, i32)]| -> Vec<String> {
            let live = live.iter().map(|(dc, n)| (dc.to_string(), *n)).collect();
            nodes("out", "mail", &spec, &live)
                .into_iter()
                .map(|n| n.name)
                .collect()
        };
        assert_eq!(names(&[]), ["out-east-0", "out-east-1", "out-west-0"]);
        // A node draining before a scale-down to 1, a data centre removed from the spec
        // that still drains, and nodes the autoscaler added keep their certificates.
        assert_eq!(
            names(&[("east", 3), ("gone", 1), ("west", 2)]),
            [
                "out-east-0",
                "out-east-1",
                "out-east-2",
                "out-gone-0",
                "out-west-0",
                "out-west-1"
            ]
        );
    }
}
