//! Which namespaces the controllers watch: `--namespace` (repeatable) or, without it,
//! the whole cluster. Every controller runs one kube-runtime `Controller` per scope.

use kube::{Api, Client, Resource};

/// One scope per watched namespace, or a single cluster-wide scope (`None`) when no
/// namespace is named.
pub fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    }
}

/// The API of `K` within one scope.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_means_the_whole_cluster() {
        assert_eq!(scopes(&[]), vec![None]);
        assert_eq!(
            scopes(&["a".into(), "b".into()]),
            vec![Some("a".into()), Some("b".into())]
        );
    }
}
