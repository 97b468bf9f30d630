//! The node's essential tasks, watched while the node runs and stopped in order.
//!
//! Every long-running part of the node (listeners and sessions, delivery, the HTTP
//! port, the certificate watcher, the spool writer's health) is essential: if it ends
//! or panics while the node runs, the node can no longer do what it promises (a node
//! that accepts mail it will never deliver is worse than a node that is down). The
//! supervisor notices the first such end, names the task in the log and in
//! `smtpnode_task_failures_total{task}`, and the node stops and exits non-zero so that
//! Kubernetes restarts it.
//!
//! Stopping runs in the reverse of the start order, one task at a time, like unwinding a
//! stack: what started last (the listeners) depended on everything before it. Each task
//! has its own stop token and a grace period; one that overruns is reported and aborted
//! so that the process still exits in bounded time.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::metrics::TaskLabel;

/// What an essential task returns when it fails.
pub type TaskError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How an essential task ended while the node still needed it.
#[derive(Debug, thiserror::Error)]
pub enum TaskFailure {
    #[error("essential task {task} failed: {error}")]
    Failed {
        task: &'static str,
        #[source]
        error: TaskError,
    },
    #[error("essential task {task} ended unexpectedly")]
    Ended { task: &'static str },
    #[error("essential task {task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
}

impl TaskFailure {
    pub fn task(&self) -> &'static str {
        match self {
            Self::Failed { task, .. } | Self::Ended { task } | Self::Panicked { task, .. } => task,
        }
    }
}

#[derive(Clone)]
struct Essential {
    name: &'static str,
    id: Id,
    stop: CancellationToken,
    grace: Duration,
    abort: AbortHandle,
}

/// Owns the essential tasks. Dropping it aborts whatever still runs.
pub struct Supervisor {
    tasks: JoinSet<Result<(), TaskError>>,
    /// In start order.
    essentials: Vec<Essential>,
    ended: HashSet<Id>,
    failures: Family<TaskLabel, Counter>,
}

impl Supervisor {
    /// `failures` counts failed tasks by name.
    pub fn new(failures: Family<TaskLabel, Counter>) -> Self {
        Self {
            tasks: JoinSet::new(),
            essentials: Vec::new(),
            ended: HashSet::new(),
            failures,
        }
    }

    /// Starts an essential task. `stop` is cancelled when it is its turn to stop, and it
    /// then has `grace` to return. Tasks stop in the reverse order of their start.
    pub fn spawn<F, E>(
        &mut self,
        name: &'static str,
        stop: CancellationToken,
        grace: Duration,
        task: F,
    ) where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<TaskError>,
    {
        let abort = self
            .tasks
            .spawn(async move { task.await.map_err(Into::into) });
        self.essentials.push(Essential {
            name,
            id: abort.id(),
            stop,
            grace,
            abort,
        });
    }

    /// Waits until `shutdown` is cancelled (`Ok`) or an essential task ends first (the
    /// failure, already logged and counted).
    pub async fn watch(&mut self, shutdown: &CancellationToken) -> Result<(), TaskFailure> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(()),
            Some(joined) = self.tasks.join_next_with_id() => {
                let (name, outcome) = self.ended(joined);
                Err(match outcome {
                    Err(failure) => failure,
                    Ok(()) => self.report(TaskFailure::Ended { task: name }),
                })
            }
        }
    }

    /// Stops the tasks in the reverse of their start order, each within its grace.
    /// Returns the first failure seen while stopping (a task returning an error or
    /// panicking); a task that overruns its grace is logged and aborted, which is not a
    /// failure: what it was doing is retried after the restart.
    pub async fn stop(mut self) -> Result<(), TaskFailure> {
        let mut first = None;
        let order: Vec<Essential> = self.essentials.iter().rev().cloned().collect();
        for task in &order {
            task.stop.cancel();
            if self.ended.contains(&task.id) {
                continue;
            }
            let waited = tokio::time::timeout(task.grace, async {
                while !self.ended.contains(&task.id) {
                    let Some(joined) = self.tasks.join_next_with_id().await else {
                        break;
                    };
                    if let (_, Err(failure)) = self.ended(joined) {
                        first.get_or_insert(failure);
                    }
                }
            })
            .await;
            if waited.is_err() {
                tracing::warn!(
                    task = task.name,
                    grace = ?task.grace,
                    "essential task did not stop in time; aborting it"
                );
                task.abort.abort();
            } else {
                tracing::debug!(task = task.name, "stopped");
            }
        }
        self.tasks.shutdown().await;
        first.map_or(Ok(()), Err)
    }

    /// Books a task that ended and turns a failure into a [`TaskFailure`].
    fn ended(
        &mut self,
        joined: Result<(Id, Result<(), TaskError>), JoinError>,
    ) -> (&'static str, Result<(), TaskFailure>) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(join) => join.id(),
        };
        self.ended.insert(id);
        let name = self
            .essentials
            .iter()
            .find(|e| e.id == id)
            .map_or("unknown", |e| e.name);
        let outcome = match joined {
            Ok((_, Ok(()))) => Ok(()),
            Ok((_, Err(error))) => Err(self.report(TaskFailure::Failed { task: name, error })),
            Err(join) if join.is_panic() => Err(self.report(TaskFailure::Panicked {
                task: name,
                message: panic_message(join),
            })),
            // Cancelled: only the supervisor aborts, and only tasks it stopped.
            Err(_) => Ok(()),
        };
        (name, outcome)
    }

    fn report(&self, failure: TaskFailure) -> TaskFailure {
        tracing::error!(task = failure.task(), error = %failure, "essential task failed");
        self.failures
            .get_or_create(&TaskLabel {
                task: failure.task(),
            })
            .inc();
        failure
    }
}

fn panic_message(join: JoinError) -> String {
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn supervisor() -> (Supervisor, Family<TaskLabel, Counter>) {
        let failures = Family::<TaskLabel, Counter>::default();
        (Supervisor::new(failures.clone()), failures)
    }

    fn count(failures: &Family<TaskLabel, Counter>, task: &'static str) -> u64 {
        failures.get_or_create(&TaskLabel { task }).get()
    }

    /// Runs until its stop token is cancelled.
    async fn until_stopped(stop: CancellationToken) -> Result<(), std::io::Error> {
        stop.cancelled().await;
        Ok(())
    }

    const GRACE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_task_returning_an_error_is_named_and_counted() {
        let (mut tasks, failures) = supervisor();
        let stop = CancellationToken::new();
        tasks.spawn("delivery", stop.clone(), GRACE, until_stopped(stop));
        tasks.spawn("http", CancellationToken::new(), GRACE, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::other("accept: too many open files"))
        });
        let failure = tasks
            .watch(&CancellationToken::new())
            .await
            .expect_err("failure");
        assert_eq!(failure.task(), "http");
        assert!(
            failure.to_string().contains("too many open files"),
            "{failure}"
        );
        assert_eq!(count(&failures, "http"), 1);
        // The others still stop in order; the failure is not reported twice.
        assert!(tasks.stop().await.is_ok());
        assert_eq!(count(&failures, "http"), 1);
        assert_eq!(count(&failures, "delivery"), 0);
    }

    #[tokio::test]
    async fn a_panic_is_a_failure_with_its_message() {
        let (mut tasks, failures) = supervisor();
        tasks.spawn(
            "certificate-watch",
            CancellationToken::new(),
            GRACE,
            async {
                tokio::task::yield_now().await;
                if true {
                    panic!("reload exploded");
                }
                Ok::<(), std::io::Error>(())
            },
        );
        let failure = tasks.watch(&CancellationToken::new()).await.unwrap_err();
        assert!(matches!(
            failure,
            TaskFailure::Panicked {
                task: "certificate-watch",
                ..
            }
        ));
        assert!(failure.to_string().contains("reload exploded"), "{failure}");
        assert_eq!(count(&failures, "certificate-watch"), 1);
    }

    #[tokio::test]
    async fn a_task_that_returns_while_needed_is_a_failure() {
        let (mut tasks, failures) = supervisor();
        tasks.spawn("smtp", CancellationToken::new(), GRACE, async {
            Ok::<(), std::io::Error>(())
        });
        let failure = tasks.watch(&CancellationToken::new()).await.unwrap_err();
        assert!(matches!(failure, TaskFailure::Ended { task: "smtp" }));
        assert_eq!(count(&failures, "smtp"), 1);
    }

    #[tokio::test]
    async fn shutdown_stops_tasks_in_reverse_start_order() {
        let (mut tasks, failures) = supervisor();
        let order = Arc::new(Mutex::new(Vec::new()));
        for name in ["spool", "http", "delivery", "smtp"] {
            let stop = CancellationToken::new();
            let order = order.clone();
            let token = stop.clone();
            tasks.spawn(name, stop, GRACE, async move {
                token.cancelled().await;
                // Give a wrongly ordered stop the chance to overtake.
                tokio::time::sleep(Duration::from_millis(10)).await;
                order.lock().unwrap().push(name);
                Ok::<(), std::io::Error>(())
            });
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(tasks.watch(&shutdown).await.is_ok());
        assert!(tasks.stop().await.is_ok());
        assert_eq!(
            *order.lock().unwrap(),
            ["smtp", "delivery", "http", "spool"]
        );
        assert_eq!(count(&failures, "smtp"), 0);
    }

    #[tokio::test]
    async fn a_task_that_overruns_its_grace_is_aborted_and_the_rest_still_stop() {
        let (mut tasks, _) = supervisor();
        let http_stop = CancellationToken::new();
        let http_stopped = Arc::new(Mutex::new(false));
        let flag = http_stopped.clone();
        let token = http_stop.clone();
        tasks.spawn("http", http_stop, GRACE, async move {
            token.cancelled().await;
            *flag.lock().unwrap() = true;
            Ok::<(), std::io::Error>(())
        });
        tasks.spawn(
            "delivery",
            CancellationToken::new(),
            Duration::from_millis(50),
            std::future::pending::<Result<(), std::io::Error>>(),
        );
        let started = std::time::Instant::now();
        assert!(tasks.stop().await.is_ok());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(*http_stopped.lock().unwrap());
    }

    #[tokio::test]
    async fn an_error_while_stopping_is_returned() {
        let (mut tasks, failures) = supervisor();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tasks.spawn("delivery", stop, GRACE, async move {
            token.cancelled().await;
            Err(std::io::Error::other("could not record the last attempts"))
        });
        let failure = tasks.stop().await.unwrap_err();
        assert_eq!(failure.task(), "delivery");
        assert_eq!(count(&failures, "delivery"), 1);
    }
}
