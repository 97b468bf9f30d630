//! Reads what a RelayPool's spec points at: the Secrets it names and the MailDomains
//! bound to it. The result is a plain struct, so validation and building stay pure.
//!
//! Secret contents never leave this module: only the type and the key names are kept,
//! which is all validation needs (the pods mount the Secrets themselves).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::error::{Error, Result};
use super::model::SigningDomain;

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
