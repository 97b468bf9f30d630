//! The exit codes of `smtp-node`, in one place because Kubernetes and operators read
//! them: any non-zero code makes the kubelet restart the container, and the code says
//! whether a restart can help.

/// Stopped on SIGTERM or SIGINT, everything in flight finished or handed back.
pub const CLEAN: u8 = 0;
/// Could not start, or a command failed: a bad config or file, a busy port, a spool
/// that cannot be opened. A restart alone will not fix it.
pub const START_UP: u8 = 1;
/// The node ran, then an essential task (listeners, delivery, HTTP, certificate watch,
/// spool) failed or panicked; the log names it. The spool is consistent, and a restart
/// delivers what was acknowledged.
pub const TASK_FAILED: u8 = 2;
