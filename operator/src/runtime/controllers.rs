//! Several controllers as the one controllers future that [`super::run`] supervises.
//!
//! Each controller is a named task. The operator is only useful while all of them run:
//! one whose watch stream ends, that returns an error or that panics leaves its
//! resources unreconciled while the process looks healthy. So the first one to end
//! before the stop ends them all, with an error naming it; the runtime then exits
//! non-zero and Kubernetes restarts the pod.

use std::collections::HashMap;
use std::future::Future;

use thiserror::Error;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::run::ControllerError;

/// How a controller ended while the operator still needed it.
#[derive(Debug, Error)]
pub enum ControllerExit {
    /// Its future returned `Ok`: its watch streams ended.
    #[error("controller {name} stopped unexpectedly")]
    Ended { name: &'static str },
    /// It returned an error.
    #[error("controller {name} failed: {source}")]
    Failed {
        name: &'static str,
        #[source]
        source: ControllerError,
    },
    /// It panicked.
    #[error("controller {name} panicked: {message}")]
    Panicked { name: &'static str, message: String },
}

impl ControllerExit {
    /// The controller's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ended { name } | Self::Failed { name, .. } | Self::Panicked { name, .. } => name,
        }
    }
}

/// Named controller tasks; dropping the set aborts them.
#[derive(Default)]
pub struct Controllers {
    tasks: JoinSet<Result<(), ControllerError>>,
    names: HashMap<Id, &'static str>,
}

impl Controllers {
    /// Starts a controller.
    pub fn spawn<F, E>(&mut self, name: &'static str, controller: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<ControllerError>,
    {
        let handle = self
            .tasks
            .spawn(async move { controller.await.map_err(Into::into) });
        self.names.insert(handle.id(), name);
    }

    /// Runs until `shutdown` is cancelled (`Ok`; the controllers are then dropped, as
    /// their own stop handling has begun) or until one controller ends first.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ControllerExit> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(()),
            Some(joined) = self.tasks.join_next_with_id() => {
                let name = |id| self.names.get(&id).copied().unwrap_or("unknown");
                let exit = match joined {
                    Ok((id, Ok(()))) => ControllerExit::Ended { name: name(id) },
                    Ok((id, Err(source))) => ControllerExit::Failed { name: name(id), source },
                    Err(join) => {
                        let id = join.id();
                        ControllerExit::Panicked { name: name(id), message: join.to_string() }
                    }
                };
                tracing::error!(controller = exit.name(), error = %exit, "controller ended");
                Err(exit)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pending() -> impl Future<Output = Result<(), std::io::Error>> + Send + 'static {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_controller_whose_stream_ends_is_named() {
        let mut set = Controllers::default();
        set.spawn("relaypool", pending());
        set.spawn("maildomain", async { Ok::<(), std::io::Error>(()) });
        let exit = set.run(CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(exit, ControllerExit::Ended { name: "maildomain" }),
            "{exit}"
        );
    }

    #[tokio::test]
    async fn a_failing_or_panicking_controller_is_named() {
        let mut set = Controllers::default();
        set.spawn("relaypool", async {
            Err::<(), std::io::Error>(std::io::Error::other("cannot list RelayPools"))
        });
        let exit = set.run(CancellationToken::new()).await.unwrap_err();
        assert_eq!(
            exit.to_string(),
            "controller relaypool failed: cannot list RelayPools"
        );

        let mut set = Controllers::default();
        set.spawn("maildomain", pending());
        set.spawn("certificate", async {
            tokio::task::yield_now().await;
            if true {
                panic!("bad certificate state");
            }
            Ok::<(), std::io::Error>(())
        });
        let exit = set.run(CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(
                exit,
                ControllerExit::Panicked {
                    name: "certificate",
                    ..
                }
            ),
            "{exit}"
        );
    }

    #[tokio::test]
    async fn shutdown_is_a_clean_end() {
        let mut set = Controllers::default();
        set.spawn("relaypool", pending());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.cancel();
        });
        assert!(set.run(shutdown).await.is_ok());
    }
}
