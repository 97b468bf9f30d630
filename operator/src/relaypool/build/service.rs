//! The two Services of a pool: a headless one that gives every pod a stable DNS name
//! for peer traffic, and the one SMTP clients connect to.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::layout::{HTTP_PORT, HTTP_PORT_NAME, PEER_PORT, PEER_PORT_NAME};
use super::meta;
use crate::relaypool::model::Pool;

/// `<pool>-peers`: headless, the `serviceName` of every data centre's StatefulSet, so
/// pod `<pool>-<dc>-<i>` resolves as `<pool>-<dc>-<i>.<pool>-peers.<namespace>.svc`.
///
/// Not-ready addresses are published: a node must reach its peers while it is still
/// starting (to recover ownership of messages) and is not ready yet, and readiness of
/// the SMTP side says nothing about the peer side.
pub fn peer_service(pool: &Pool) -> Service {
    let name = &pool.identity.name;
    Service {
        metadata: meta::child_meta(
            &pool.identity,
            meta::peer_service_name(name),
            meta::pool_labels(name),
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(meta::pool_selector(name)),
            ports: Some(vec![
                port(PEER_PORT_NAME, PEER_PORT, PEER_PORT_NAME),
                port(HTTP_PORT_NAME, HTTP_PORT, HTTP_PORT_NAME),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `<pool>`: the SMTP entry point, one port per listener in the spec, each forwarding
/// to the node's unprivileged port of the same name. Only ready pods receive clients.
pub fn client_service(pool: &Pool) -> Service {
    let name = &pool.identity.name;
    Service {
        metadata: meta::child_meta(
            &pool.identity,
            meta::client_service_name(name),
            meta::pool_labels(name),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(meta::pool_selector(name)),
            ports: Some(
                pool.listeners
                    .iter()
                    .map(|l| port(l.kind.port_name(), l.port, l.kind.port_name()))
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn port(name: &str, port: u16, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}
