//! The exit codes of `operator`, in one place because Kubernetes and operators read
//! them: any non-zero code makes the kubelet restart the container, and the code says
//! what to look at.

/// Stopped on SIGTERM or SIGINT, the Lease handed back.
pub const CLEAN: u8 = 0;
/// Could not start: bad flags, no Kubernetes client, a busy HTTP port, logging or signal
/// set-up failed. A restart alone will not fix it.
pub const START_UP: u8 = 1;
/// A task the operator needs ended while it ran: a controller (its watch ended, it
/// failed or panicked), the HTTP server or the leader elector. The log names it.
pub const TASK_FAILED: u8 = 2;
/// Leadership was lost (another replica holds the Lease, or renewals failed past the
/// renew deadline); the restart makes this replica a standby.
pub const LEADERSHIP_LOST: u8 = 3;
