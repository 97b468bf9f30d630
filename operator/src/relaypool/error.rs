//! Errors of the RelayPool reconciler, one variant family per pipeline stage.
//!
//! A missing referenced Secret is not an error: it is reported in the pool's status
//! (`Degraded`) and the pool stays reconciled. Errors here are failures to talk to the
//! API server or to produce the desired objects; they are retried with backoff.

use thiserror::Error;

/// Result of a reconciler stage.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a reconciliation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The pool object lacks a field the API server always sets (name, namespace, uid).
    #[error("RelayPool has no {0}")]
    MissingObjectKey(&'static str),

    /// Reading an object the spec points at failed (not counting "not found").
    #[error("reading {kind} {name:?}: {source}")]
    Dereference {
        /// Kind of the object read.
        kind: &'static str,
        /// Name of the object, or a description of the list.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// Building the desired objects failed.
    #[error("building the desired objects: {0}")]
    Build(#[from] super::build::BuildError),

    /// Listing the pool's existing children failed.
    #[error("listing {kind} objects of the pool: {source}")]
    ListChildren {
        /// Kind of the children listed.
        kind: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// Server-side apply of a child failed.
    #[error("applying {kind} {name:?}: {source}")]
    Apply {
        /// Kind of the child.
        kind: &'static str,
        /// Name of the child.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// Deleting a child that is no longer desired failed.
    #[error("deleting orphaned {kind} {name:?}: {source}")]
    DeleteOrphan {
        /// Kind of the child.
        kind: &'static str,
        /// Name of the child.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// Writing the pool's status failed.
    #[error("patching the RelayPool status: {0}")]
    Status(#[source] kube::Error),

    /// Adding or removing the finalizer failed.
    #[error("managing the finalizer: {0}")]
    Finalizer(#[source] kube::Error),

    /// The finalizer helper reported an inconsistent object (no name, bad path).
    #[error("finalizer helper: {0}")]
    FinalizerHelper(String),
}

impl Error {
    /// A fixed, low-cardinality name for metrics (`reconcile_errors{category=...}`).
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "invalid_object",
            Self::Dereference { .. } => "dereference",
            Self::Build(_) => "build",
            Self::ListChildren { .. } => "list_children",
            Self::Apply { .. } => "apply",
            Self::DeleteOrphan { .. } => "delete_orphan",
            Self::Status(_) => "status",
            Self::Finalizer(_) | Self::FinalizerHelper(_) => "finalizer",
        }
    }

    /// Whether the API server refused a write because the pool's namespace is being
    /// deleted. Not a failure: the namespace takes the pool and its children with it,
    /// and retrying only adds noise until it is gone.
    pub fn is_namespace_terminating(&self) -> bool {
        let source = match self {
            Self::Apply { source, .. } | Self::Status(source) => source,
            _ => return false,
        };
        match source {
            kube::Error::Api(status) => {
                status.code == 403
                    && status.details.as_ref().is_some_and(|d| {
                        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
                    })
            }
            _ => false,
        }
    }

    /// Whether a write was refused because the cached pool was older than the stored
    /// one: the finalizer patch (its JSON-patch `test` no longer holds: 422, or a 409
    /// conflict), expected right after the finalizer is added while other triggers are
    /// queued; or the status patch, which carries the resourceVersion it was computed
    /// from so that a status another controller wrote meanwhile (the certificate
    /// controller's `CertificateReady`) gives 409 instead of being overwritten. The next
    /// attempt reads the fresh object.
    pub fn is_stale_write(&self) -> bool {
        match self {
            Self::Finalizer(kube::Error::Api(status)) => status.code == 409 || status.code == 422,
            Self::Status(kube::Error::Api(status)) => status.code == 409,
            _ => false,
        }
    }

    /// Folds the finalizer helper's wrapper back into our own error so that callers
    /// see one type with one category per cause.
    pub(crate) fn from_finalizer(err: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match err {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Self::Finalizer(e),
            F::UnnamedObject => Self::MissingObjectKey("name"),
            other @ F::InvalidFinalizer => Self::FinalizerHelper(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("boom", "InternalError")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn categories_name_the_stage() {
        let cases = [
            (
                Error::Dereference {
                    kind: "Secret",
                    name: "tls".into(),
                    source: api_error(500),
                },
                "dereference",
            ),
            (
                Error::Apply {
                    kind: "StatefulSet",
                    name: "p-a".into(),
                    source: api_error(409),
                },
                "apply",
            ),
            (
                Error::DeleteOrphan {
                    kind: "StatefulSet",
                    name: "p-b".into(),
                    source: api_error(500),
                },
                "delete_orphan",
            ),
            (Error::Status(api_error(500)), "status"),
            (Error::Finalizer(api_error(409)), "finalizer"),
        ];
        for (err, category) in cases {
            assert_eq!(err.category(), category, "{err}");
        }
    }

    #[test]
    fn writes_into_a_terminating_namespace_are_recognised() {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":403,"reason":"Forbidden",
            "message":"configmaps \"p-config\" is forbidden: unable to create new content in namespace mail because it is being terminated",
            "details":{"name":"p-config","kind":"configmaps","causes":[{"reason":"NamespaceTerminating","message":"namespace mail is being terminated","field":"metadata.namespace"}]}}"#;
        let status: kube::core::Status = serde_json::from_str(body).unwrap();
        let terminating = Error::Apply {
            kind: "ConfigMap",
            name: "p-config".into(),
            source: kube::Error::Api(status.boxed()),
        };
        assert!(terminating.is_namespace_terminating());
        let forbidden = Error::Apply {
            kind: "ConfigMap",
            name: "p-config".into(),
            source: api_error(403),
        };
        assert!(!forbidden.is_namespace_terminating());
    }

    #[test]
    fn finalizer_wrapper_unfolds_to_the_inner_stage() {
        let inner = Error::Status(api_error(500));
        let folded = Error::from_finalizer(kube::runtime::finalizer::Error::ApplyFailed(inner));
        assert_eq!(folded.category(), "status");
        let folded = Error::from_finalizer(kube::runtime::finalizer::Error::RemoveFinalizer(
            api_error(409),
        ));
        assert_eq!(folded.category(), "finalizer");
    }
}
