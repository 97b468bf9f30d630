//! Follows a pool's domain set in the API server: a watch on the index ConfigMap (one
//! object, selected by name) and a `get` of each shard Secret whose digest changed.
//!
//! Every change builds a complete new set from the shards in hand and swaps it in. A
//! shard that cannot be fetched or read keeps its previous version (and is fetched again
//! every [`RETRY`]); a key that does not parse is refused alone. Until the first set is
//! built the node is not ready and answers senders with 451, so a starting node never
//! refuses mail permanently for a domain it is about to serve.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher as watch_objects};
use kube::{Api, Client, Config};
use tokio_util::sync::CancellationToken;

use super::DomainState;
use super::set::{ParsedShard, assemble, parse_shard};
use super::shard::{digest, index_name, shard_names};
use crate::config::PoolDomainsConfig;
use crate::http::Readiness;
use crate::metrics::{DomainMetrics, ResultLabel};

/// How often shards that could not be loaded are tried again.
pub const RETRY: Duration = Duration::from_secs(10);
/// Readiness reason until the first set is in force.
pub const NOT_LOADED: &str = "the pool's domains and DKIM keys are not loaded yet";

/// Why the domain source stopped.
#[derive(Debug, thiserror::Error)]
pub enum DomainsError {
    /// No client for the API server (kubeconfig or in-cluster files).
    #[error("poolDomains: no Kubernetes client: {0}")]
    Client(String),
    /// The watch stream ended, which it does not while the node runs.
    #[error("the watch on the pool's domain index ended")]
    WatchEnded,
}

/// A client for the API server: the kubeconfig file when one is given, else the pod's
/// service account (or the environment's kubeconfig).
pub async fn client(config: &PoolDomainsConfig) -> Result<Client, DomainsError> {
    let kube_config = match &config.kubeconfig {
        Some(path) => from_file(path).await?,
        None => Config::infer()
            .await
            .map_err(|e| DomainsError::Client(e.to_string()))?,
    };
    Client::try_from(kube_config).map_err(|e| DomainsError::Client(e.to_string()))
}

async fn from_file(path: &Path) -> Result<Config, DomainsError> {
    let file = Kubeconfig::read_from(path)
        .map_err(|e| DomainsError::Client(format!("{}: {e}", path.display())))?;
    Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| DomainsError::Client(format!("{}: {e}", path.display())))
}

/// The shards the node has, by Secret name.
#[derive(Default)]
struct Loaded {
    /// Digest of the data each shard was parsed from.
    digests: BTreeMap<String, String>,
    shards: BTreeMap<String, ParsedShard>,
    built_once: bool,
}

/// Runs until `stop`: keeps `state` equal to the pool's domain set in the API server.
pub async fn run(
    config: PoolDomainsConfig,
    client: Client,
    state: Arc<DomainState>,
    metrics: DomainMetrics,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), DomainsError> {
    readiness.hold(NOT_LOADED);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &config.namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &config.namespace);
    let index = index_name(&config.pool);
    let allowed = shard_names(&config.pool);
    let watch_config = watcher::Config::default().fields(&format!("metadata.name={index}"));
    let mut events = watch_objects(config_maps, watch_config)
        .default_backoff()
        .boxed();
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wanted: Option<BTreeMap<String, String>> = None;
    let mut loaded = Loaded::default();
    loop {
        let pending = wanted
            .as_ref()
            .is_some_and(|w| *w != loaded.digests || !loaded.built_once);
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            event = events.next() => match event {
                Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => {
                    wanted = Some(wanted_shards(&cm, &allowed));
                }
                Some(Ok(Event::Delete(_))) => {
                    tracing::warn!(configmap = %index, "the domain index was deleted; keeping the domains in force until it is written again");
                    continue;
                }
                Some(Ok(Event::Init | Event::InitDone)) => continue,
                Some(Err(error)) => {
                    tracing::warn!(%error, configmap = %index, "watching the domain index failed; retrying");
                    continue;
                }
                None => return Err(DomainsError::WatchEnded),
            },
            _ = retry.tick(), if pending => {}
        }
        if let Some(wanted) = &wanted {
            sync(&secrets, wanted, &mut loaded, &state, &metrics).await;
            if loaded.built_once {
                readiness.release(NOT_LOADED);
            }
        }
    }
}

/// The shard names and digests the index lists, keeping only names of this pool's
/// shards (anything else would be refused by the node's Role anyway).
fn wanted_shards(index: &ConfigMap, allowed: &[String]) -> BTreeMap<String, String> {
    index
        .data
        .iter()
        .flatten()
        .filter(|(name, _)| allowed.contains(name))
        .map(|(name, digest)| (name.clone(), digest.trim().to_owned()))
        .collect()
}

/// Fetches the shards whose digest differs from the loaded one, drops shards no longer
/// listed, and puts a new set in force when anything changed.
async fn sync(
    secrets: &Api<Secret>,
    wanted: &BTreeMap<String, String>,
    loaded: &mut Loaded,
    state: &DomainState,
    metrics: &DomainMetrics,
) {
    let previous = state.current();
    let mut changed = !loaded.built_once;
    let mut failed = false;
    let mut unfetched = false;
    let gone: Vec<String> = loaded
        .shards
        .keys()
        .filter(|name| !wanted.contains_key(*name))
        .cloned()
        .collect();
    for name in gone {
        loaded.shards.remove(&name);
        loaded.digests.remove(&name);
        changed = true;
    }
    for (name, want) in wanted {
        if loaded.digests.get(name) == Some(want) {
            continue;
        }
        let data = match secrets.get_opt(name).await {
            Ok(Some(secret)) => secret_data(secret),
            Ok(None) => {
                tracing::info!(secret = %name, "a listed domain shard does not exist yet; retrying");
                failed = true;
                unfetched = true;
                continue;
            }
            Err(error) => {
                tracing::warn!(secret = %name, %error, "cannot fetch a domain shard; its previous version stays in force");
                failed = true;
                unfetched = true;
                continue;
            }
        };
        let got = digest(&data);
        match parse_shard(name, &data, Some(&previous)) {
            Ok((parsed, rejected)) => {
                for r in &rejected {
                    tracing::warn!(shard = %r.shard, domain = %r.domain, reason = %r.reason, "DKIM key refused; the domain keeps its previous key if it had one");
                    metrics.keys_rejected.inc();
                }
                loaded.shards.insert(name.clone(), parsed);
                changed = true;
            }
            Err(r) => {
                tracing::warn!(shard = %r.shard, reason = %r.reason, "domain shard refused; its previous version stays in force");
                metrics.keys_rejected.inc();
                failed = true;
            }
        }
        // Remember what was read even when refused: the same bytes will not parse
        // better on the next try, a new digest will be fetched again.
        loaded.digests.insert(name.clone(), got);
    }
    // The first set waits for every shard: built from some of them, it would refuse the
    // others' senders with 550 instead of 451.
    if !loaded.built_once && unfetched {
        changed = false;
    }
    if changed {
        let set = assemble(loaded.shards.values());
        tracing::info!(
            domains = set.domain_count(),
            keys = set.key_count(),
            shards = loaded.shards.len(),
            "domain set in force"
        );
        metrics.domains.set(set.domain_count() as i64);
        metrics.keys.set(set.key_count() as i64);
        state.replace(set);
        loaded.built_once = true;
    }
    if changed || failed {
        let result = if failed { "failed" } else { "ok" };
        metrics.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}

fn secret_data(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_pools_shards_are_wanted() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([
                ("p-domains-03".to_owned(), "abc\n".to_owned()),
                ("other-domains-03".to_owned(), "x".to_owned()),
                ("p-config".to_owned(), "y".to_owned()),
            ])),
            ..ConfigMap::default()
        };
        let wanted = wanted_shards(&cm, &shard_names("p"));
        assert_eq!(
            wanted,
            BTreeMap::from([("p-domains-03".to_owned(), "abc".to_owned())])
        );
    }
}
