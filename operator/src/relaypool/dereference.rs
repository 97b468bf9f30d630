//! Reads what a RelayPool's spec points at: the Secrets it names and the MailDomains
//! bound to it. The result is a plain struct, so validation and building stay pure.
//!
//! Secret contents never leave this module, except the DKIM private keys of the pool's
//! domains ([`domain_keys`]), which the pool copies into its domain shards: of the TLS
//! and auth Secrets only the type and the key names are kept, which is all validation
//! needs (the pods mount those Secrets themselves).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::build::domains::KeyMaterial;
use super::error::{Error, Result};
use super::model::{DkimAlgorithm, DkimKey, SigningDomain};
use crate::api::conditions;
use crate::api::mail_domain::condition_types;
use crate::api::relay_pool::{RelayPoolSpec, TlsSource};
use crate::api::{MailDomain, RelayPool};

/// Field of the TLS Secret reference, for messages.
pub const TLS_SECRET_FIELD: &str = "spec.tls.secretName";
/// Field of the auth Secret reference, for messages.
pub const AUTH_SECRET_FIELD: &str = "spec.relay.authSecretRef";

/// Key of the private key in the DKIM Secrets the MailDomain controller writes.
pub const DKIM_PRIVATE_KEY: &str = "private.key";

/// Label the MailDomain controller puts on key Secrets: the pool the domain is bound to,
/// so that a pool reads its domains' keys with one labelled list.
pub const RELAY_POOL_LABEL: &str = crate::maildomain::keys::LABEL_RELAY_POOL;

/// A Secret the spec refers to, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferencedSecret {
    /// Path of the spec field naming it (`spec.tls.secretName`), for messages.
    pub field: &'static str,
    /// Secret name.
    pub name: String,
    /// `None` when the Secret does not exist.
    pub found: Option<SecretSummary>,
}

/// The parts of a Secret validation looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretSummary {
    /// `type` (`kubernetes.io/tls`, `Opaque`, …).
    pub type_: Option<String>,
    /// Keys present in `data` or `stringData`.
    pub keys: BTreeSet<String>,
}

impl SecretSummary {
    /// Summarises `secret` without keeping its values.
    pub fn of(secret: &Secret) -> Self {
        let mut keys: BTreeSet<String> = secret
            .data
            .as_ref()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(string_data) = &secret.string_data {
            keys.extend(string_data.keys().cloned());
        }
        Self {
            type_: secret.type_.clone(),
            keys,
        }
    }
}

/// Everything the spec points at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dereferenced {
    /// The user's TLS Secret, when `spec.tls.secretName` is set.
    pub tls_secret: Option<ReferencedSecret>,
    /// The submission users Secret, when `spec.relay.authSecretRef` is set.
    pub auth_secret: Option<ReferencedSecret>,
    /// MailDomains bound to the pool, sorted by domain.
    pub domains: Vec<SigningDomain>,
}

/// Reads Secret `name`, `None` when it does not exist.
pub async fn read_secret(
    client: &Client,
    namespace: &str,
    field: &'static str,
    name: &str,
) -> Result<ReferencedSecret> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(name)
        .await
        .map_err(|source| Error::Dereference {
            kind: "Secret",
            name: name.to_owned(),
            source,
        })?;
    Ok(ReferencedSecret {
        field,
        name: name.to_owned(),
        found: found.as_ref().map(SecretSummary::of),
    })
}

/// The Secrets `spec` names, with the field naming each: `(field, name)`. Also what the
/// controller's Secret watch uses to find the pools a changed Secret matters to.
pub fn secret_refs(spec: &RelayPoolSpec) -> Vec<(&'static str, &str)> {
    let mut refs = Vec::new();
    if let Ok(TlsSource::Secret(name)) = spec.tls_source() {
        refs.push((TLS_SECRET_FIELD, name));
    }
    if let Some(auth) = &spec.relay.auth_secret_ref {
        refs.push((AUTH_SECRET_FIELD, auth.name.as_str()));
    }
    refs
}

/// Reads everything `pool` points at.
pub async fn dereference(client: &Client, pool: &RelayPool) -> Result<Dereferenced> {
    let namespace = pool
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let mut refs = Dereferenced::default();
    for (field, name) in secret_refs(&pool.spec) {
        let secret = read_secret(client, &namespace, field, name).await?;
        if field == TLS_SECRET_FIELD {
            refs.tls_secret = Some(secret);
        } else {
            refs.auth_secret = Some(secret);
        }
    }
    refs.domains = bound_domains(client, &namespace, &pool.name_any()).await?;
    Ok(refs)
}

/// Objects per page when a pool lists its MailDomains or their key Secrets. Each page
/// is reduced to what the pool needs before the next is read: a thousand domains read
/// in one list were held whole at once (with their managed fields, the larger part of
/// each object), several MiB the operator kept as heap long after.
pub const LIST_PAGE: u32 = 100;

/// The continuation of a paged list, if there is more to read.
fn next_page(params: ListParams, token: Option<String>) -> Option<ListParams> {
    token
        .filter(|t| !t.is_empty())
        .map(|t| params.continue_token(&t))
}

/// The MailDomains of `namespace` whose `spec.relayPoolRef` names `pool`, as signing
/// domains sorted by domain.
///
/// The list asks the API server to filter on the selectable field
/// `spec.relayPoolRef.name`, and the result is filtered again here so that a server
/// ignoring the selector cannot bind foreign domains. It is read [`LIST_PAGE`] objects
/// at a time.
pub async fn bound_domains(
    client: &Client,
    namespace: &str,
    pool: &str,
) -> Result<Vec<SigningDomain>> {
    let api: Api<MailDomain> = Api::namespaced(client.clone(), namespace);
    let mut params = Some(
        ListParams::default()
            .fields(&format!("spec.relayPoolRef.name={pool}"))
            .limit(LIST_PAGE),
    );
    let mut bound = Vec::new();
    while let Some(p) = params.take() {
        let page = api.list(&p).await.map_err(|source| Error::Dereference {
            kind: "MailDomain",
            name: format!("bound to {pool}"),
            source,
        })?;
        bound.extend(
            page.items
                .iter()
                .filter_map(|md| signing_domain_of(pool, md)),
        );
        params = next_page(p, page.metadata.continue_);
    }
    Ok(sorted(bound))
}

/// The signing domains of `pool` among `domains`, sorted by domain (so the rendered
/// configuration does not change with list order).
///
/// Only domains whose `PoolBound` condition is `True` are served: the MailDomain
/// controller sets it once it has checked the binding (the pool exists, no other
/// MailDomain claims the same domain). A domain being deleted is dropped at once.
pub fn signing_domains(pool: &str, domains: &[MailDomain]) -> Vec<SigningDomain> {
    sorted(
        domains
            .iter()
            .filter_map(|md| signing_domain_of(pool, md))
            .collect(),
    )
}

/// `md` as a signing domain of `pool`, if it is one (see [`signing_domains`]).
fn signing_domain_of(pool: &str, md: &MailDomain) -> Option<SigningDomain> {
    let bound = md.spec.relay_pool_ref.name == pool
        && md.metadata.deletion_timestamp.is_none()
        && md
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, condition_types::POOL_BOUND));
    bound.then(|| signing_domain(md))
}

fn sorted(mut bound: Vec<SigningDomain>) -> Vec<SigningDomain> {
    bound.sort();
    bound.dedup_by(|a, b| a.domain == b.domain);
    bound
}

/// A bound MailDomain as the pool sees it. The active key is the one the MailDomain
/// status names (`status.dkim.selector`): the MailDomain controller switches it only
/// once the new selector is published, so following the status is what makes
/// rotation safe. Its Secret is the one [`crate::maildomain::active_key_secret_name`]
/// names, with the PKCS#8 key under `private.key` (user-provided keys are copied into
/// the same layout).
pub fn signing_domain(md: &MailDomain) -> SigningDomain {
    let dkim = md
        .status
        .as_ref()
        .and_then(|s| s.dkim.as_ref())
        .filter(|d| !d.selector.is_empty())
        .zip(crate::maildomain::active_key_secret_name(md))
        .map(|(d, secret)| DkimKey {
            secret,
            selector: d.selector.clone(),
            algorithm: match md.spec.dkim.algorithm {
                crate::api::mail_domain::DkimAlgorithm::Rsa2048 => DkimAlgorithm::Rsa,
                crate::api::mail_domain::DkimAlgorithm::Ed25519 => DkimAlgorithm::Ed25519,
            },
            secret_key: DKIM_PRIVATE_KEY.to_owned(),
        });
    let object = md.name_any();
    SigningDomain {
        object,
        domain: md.spec.domain.to_ascii_lowercase(),
        dkim,
    }
}

/// The private keys of the domains bound to `pool`, read with one list (in pages of
/// [`LIST_PAGE`]) of the key Secrets labelled with the pool (only the active key of each
/// domain is kept: the others are waiting for DNS or retiring, and nodes sign with the
/// active one).
pub async fn domain_keys(
    client: &Client,
    namespace: &str,
    pool: &str,
    domains: &[SigningDomain],
) -> Result<KeyMaterial> {
    let wanted: BTreeSet<&str> = domains
        .iter()
        .filter_map(|d| d.dkim.as_ref().map(|k| k.secret.as_str()))
        .collect();
    if wanted.is_empty() {
        return Ok(KeyMaterial::default());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let selector = format!(
        "{}={},{RELAY_POOL_LABEL}={pool}",
        crate::maildomain::keys::LABEL_COMPONENT,
        crate::maildomain::keys::COMPONENT_DKIM_KEY
    );
    let mut params = Some(ListParams::default().labels(&selector).limit(LIST_PAGE));
    let mut keys = KeyMaterial::default();
    while let Some(p) = params.take() {
        let page = api.list(&p).await.map_err(|source| Error::Dereference {
            kind: "Secret",
            name: format!("DKIM keys of {pool}"),
            source,
        })?;
        for secret in page.items {
            let Some(name) = secret.metadata.name.clone() else {
                continue;
            };
            if !wanted.contains(name.as_str()) {
                continue;
            }
            let algorithm = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::maildomain::keys::ANN_ALGORITHM))
                .and_then(|a| crate::dkim_keys::KeyAlgorithm::from_spec_name(a))
                .map(|a| match a {
                    crate::dkim_keys::KeyAlgorithm::Rsa => DkimAlgorithm::Rsa,
                    crate::dkim_keys::KeyAlgorithm::Ed25519 => DkimAlgorithm::Ed25519,
                });
            if let Some(pem) = secret.data.and_then(|mut d| d.remove(DKIM_PRIVATE_KEY)) {
                keys.insert(name, pem.0, algorithm);
            }
        }
        params = next_page(p, page.metadata.continue_);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paged_lists_continue_until_the_server_has_no_more() {
        let first = ListParams::default().limit(LIST_PAGE);
        assert!(next_page(first.clone(), None).is_none());
        assert!(next_page(first.clone(), Some(String::new())).is_none());
        let next = next_page(first, Some("page-2".into())).unwrap();
        assert_eq!(next.continue_token.as_deref(), Some("page-2"));
        assert_eq!(next.limit, Some(LIST_PAGE));
    }
}
