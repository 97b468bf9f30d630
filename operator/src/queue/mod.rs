//! The pool's queue as its nodes report it: every 30 seconds the operator asks each node
//! of each pool (`GET /admin/queue` on its pod IP, with the pool's admin token, a few
//! at a time, each bounded in time) and writes `status.queue` and the `QueueReplicated`
//! condition when they changed. A node that does not answer is named in the status, not
//! guessed. Its own controller, so a slow node never delays the pool's reconciliation.
//! The same round samples the nodes' delivery counters for the MailDomains bound to the
//! pool ([`crate::delivery`]).

pub mod client;
pub mod summary;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use smtp_node::admin::QueueReport;

use crate::api::RelayPool;
use crate::api::conditions;
use crate::api::relay_pool::{QueueStatus, condition_types};
use crate::relaypool::build::layout::{ADMIN_TOKEN_KEY, HTTP_PORT};
use crate::relaypool::build::meta;
use crate::runtime::scope::{self, scoped};
use summary::{NodeResult, WRITE_EVERY, replicated_condition, should_write, summarize};

/// Nodes asked at the same time, per pool.
const AT_ONCE: usize = 8;
/// Pod label the StatefulSet controller sets to the revision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// How long one node may take to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

pub struct Context {
    pub client: Client,
    pub namespaces: Vec<String>,
    /// The pools' delivery counters over time, for the MailDomains' `status.delivery`.
    pub delivery: Arc<crate::delivery::Sampler>,
    /// When each pool was last asked and last written, by this process.
    seen: Mutex<HashMap<(String, String), Seen>>,
}

#[derive(Clone, Copy, Default)]
struct Seen {
    asked: Option<Instant>,
    written: Option<Instant>,
}

impl Context {
    pub fn new(client: Client, namespaces: Vec<String>) -> Self {
        Self {
            client,
            namespaces,
            delivery: Arc::default(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn seen(&self, key: &(String, String)) -> Seen {
        self.lock().get(key).copied().unwrap_or_default()
    }

    fn note(&self, key: (String, String), change: impl FnOnce(&mut Seen)) {
        change(self.lock().entry(key).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub async fn reconcile(pool: Arc<RelayPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = pool.name_any();
    let Some(namespace) = pool.namespace() else {
        return Ok(Action::await_change());
    };
    let key = (namespace.clone(), name.clone());
    // Other controllers' status writes wake this one too: ask the nodes no more often
    // than every WRITE_EVERY all the same.
    if let Some(asked) = ctx.seen(&key).asked {
        let since = asked.elapsed();
        if since < WRITE_EVERY {
            return Ok(Action::requeue(WRITE_EVERY - since));
        }
    }
    ctx.note(key.clone(), |s| s.asked = Some(Instant::now()));

    let (token, nodes) = pool_nodes(&ctx.client, &namespace, &name).await?;
    // Deliverability rides on the same round; a failure there must not stop the queue's.
    if let Err(error) = crate::delivery::observe(
        &ctx.client,
        &ctx.delivery,
        &namespace,
        &name,
        token.as_deref(),
        &nodes,
    )
    .await
    {
        tracing::warn!(pool = %name, %error, "updating the MailDomains' delivery status failed");
    }
    let results = ask_all(nodes, token).await;
    for node in &results {
        if let Err(reason) = &node.report {
            tracing::debug!(pool = %name, pod = %node.pod, %reason, "no queue report");
        }
    }

    let next = summarize(&results);
    let previous = pool.status.as_ref().and_then(|s| s.queue.as_ref());
    let conditions = pool
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let (status, reason, message) = replicated_condition(&next);
    let condition_changed = !conditions.iter().any(|c| {
        c.type_ == condition_types::QUEUE_REPLICATED && c.status == status && c.reason == reason
    });
    let since_write = ctx.seen(&key).written.map(|w| w.elapsed());
    if should_write(previous, &next, since_write) || condition_changed {
        let mut conditions = conditions;
        conditions::upsert(
            &mut conditions,
            conditions::new(
                condition_types::QUEUE_REPLICATED,
                status,
                reason,
                message,
                pool.metadata.generation,
                Time(Timestamp::now()),
            ),
        );
        let api: Api<RelayPool> = Api::namespaced(ctx.client.clone(), &namespace);
        let body = json!({
            "metadata": { "resourceVersion": pool.resource_version() },
            "status": { "queue": merge_patch_of(&next), "conditions": conditions },
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => ctx.note(key, |s| s.written = Some(Instant::now())),
            // Another controller wrote meanwhile: the next round reads it and tries again.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                ctx.note(key, |s| s.asked = None);
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(WRITE_EVERY))
}

/// The queue summary as a merge patch: fields the summary leaves out (no oldest message,
/// no unreachable or draining node) are sent as null, so that they are removed from the
/// status instead of keeping what an earlier summary said.
fn merge_patch_of(queue: &QueueStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(queue).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        for key in ["oldestReceivedAt", "unreachable", "draining", "dataCentres"] {
            fields.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    value
}

/// A node of a pool as the API server knows it.
#[derive(Clone, Debug)]
pub struct PoolNode {
    pub pod: String,
    pub data_centre: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Its admin API, once the pod has an address.
    pub admin: Option<SocketAddr>,
    /// Its `controller-revision-hash` label: the StatefulSet revision it runs.
    pub revision: Option<String>,
}

/// The pool's admin token (once the operator has made it) and its nodes.
pub async fn pool_nodes(
    client: &Client,
    namespace: &str,
    pool: &str,
) -> Result<(Option<String>, Vec<PoolNode>), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let token = secrets
        .get_opt(&meta::admin_secret_name(pool))
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(ADMIN_TOKEN_KEY).cloned())
        .map(|t| String::from_utf8_lossy(&t.0).trim().to_owned())
        .filter(|t| !t.is_empty());
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = meta::pool_selector(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .map(|pod| PoolNode {
            data_centre: pod
                .labels()
                .get(meta::DATA_CENTRE_LABEL)
                .cloned()
                .unwrap_or_default(),
            ready: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            admin: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, HTTP_PORT)),
            revision: pod.labels().get(REVISION_LABEL).cloned(),
            pod: pod.name_any(),
        })
        .collect();
    Ok((token, nodes))
}

/// Calls `method path` on a node's admin API; the decoded answer or why there is none.
pub async fn admin_call<T: serde::de::DeserializeOwned>(
    node: &PoolNode,
    token: Option<&str>,
    method: &str,
    path: &str,
) -> Result<T, String> {
    match (node.admin, token) {
        (None, _) => Err("no pod IP yet".to_owned()),
        (Some(_), None) => Err("the pool's admin token is not created yet".to_owned()),
        (Some(addr), Some(token)) => client::call::<T>(addr, method, path, token, NODE_TIMEOUT)
            .await
            .map(|(_, report)| report)
            .map_err(|e| e.to_string()),
    }
}

/// Every node's queue report, or why there is none, sorted by pod. Asked now: the
/// rolling-update gate must not trust a summary older than the last restart.
pub async fn ask_all(nodes: Vec<PoolNode>, token: Option<String>) -> Vec<NodeResult> {
    let mut results: Vec<NodeResult> = futures::stream::iter(nodes)
        .map(|node| ask(node, token.clone()))
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    results.sort_by(|a, b| a.pod.cmp(&b.pod));
    results
}

/// One node's report, or why there is none.
async fn ask(node: PoolNode, token: Option<String>) -> NodeResult {
    let report = admin_call::<QueueReport>(&node, token.as_deref(), "GET", "/admin/queue").await;
    NodeResult {
        pod: node.pod,
        data_centre: node.data_centre,
        report,
    }
}

pub fn error_policy(pool: Arc<RelayPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), %error, "reading the queue failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Runs in each watched namespace (all when none is named).
pub async fn run(ctx: Arc<Context>) {
    let scopes = scope::scopes(&ctx.namespaces);
    futures::future::join_all(scopes.into_iter().map(|ns| run_scope(ctx.clone(), ns))).await;
}

async fn run_scope(ctx: Arc<Context>, namespace: Option<String>) {
    let pools: Api<RelayPool> = scoped(&ctx.client, namespace.as_deref());
    Controller::new(pools, watcher::Config::default().any_semantic())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "queue reconcile loop");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_queue_removes_what_the_last_summary_said() {
        let patch = merge_patch_of(&QueueStatus::default());
        assert_eq!(patch["depth"], 0);
        for key in ["oldestReceivedAt", "unreachable", "draining", "dataCentres"] {
            assert!(patch[key].is_null(), "{key}: {patch}");
            assert!(
                patch.as_object().is_some_and(|o| o.contains_key(key)),
                "{key} sent"
            );
        }
    }
}
