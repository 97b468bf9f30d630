//! What a failed spool write means, and the spool's state as the node sees it.
//!
//! The spool promises that `Ok` means "on stable storage". A failed write breaks that
//! promise for the batch in hand only if the spool can still tell what is on disk:
//!
//! - **Out of space** (`ENOSPC`, `EDQUOT`) while appending or creating a segment: the
//!   bytes never reached the file, the writer cuts the partial append off, and the next
//!   batch may succeed once delivery has emptied segments. This is back-pressure, not a
//!   broken node: the batch is refused (the client hears `452 4.3.1` and retries), the
//!   node turns not ready so new clients go elsewhere, and it becomes ready again after
//!   the next successful write. Exiting would only lose the sessions in flight; a
//!   restart frees no disk.
//! - **Anything else** (`EIO`, `EROFS`, a vanished file, …), and **any failed sync**,
//!   space included: after a failed `fdatasync` the kernel may have dropped the dirty
//!   pages and a later sync can report success for data that is gone, so nothing the
//!   spool says can be trusted any more. The writer refuses every later write (no 250
//!   can follow), and the node exits so that Kubernetes restarts it; recovery at the
//!   next open replays only what was synced.

use std::io;
use std::sync::Arc;

/// The step of a write that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// Appending records, or creating a new segment file.
    Append,
    /// `fdatasync` of a segment or `fsync` of the directory.
    Sync,
}

/// What a failed write means for the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Out of space: refuse this batch, keep going.
    Full,
    /// The spool can no longer keep its promise: refuse everything from now on.
    Fatal,
}

/// Classifies a failed write (see the module docs for why).
pub fn classify(step: WriteStep, error: &io::Error) -> Verdict {
    let out_of_space = matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    );
    match step {
        WriteStep::Append if out_of_space => Verdict::Full,
        _ => Verdict::Fatal,
    }
}

/// The spool's state, published by its writer.
#[derive(Debug, Clone, Default)]
pub enum SpoolHealth {
    #[default]
    Ok,
    /// The last write ran out of space; the next successful one clears this.
    Full,
    /// A fatal write failure: the spool takes no more writes.
    Failed(Arc<io::Error>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    // Linux errno values.
    const EIO: i32 = 5;
    const EBADF: i32 = 9;
    const ENOSPC: i32 = 28;
    const EROFS: i32 = 30;
    const EDQUOT: i32 = 122;

    #[test]
    fn running_out_of_space_while_appending_is_back_pressure() {
        assert_eq!(classify(WriteStep::Append, &os(ENOSPC)), Verdict::Full);
        assert_eq!(classify(WriteStep::Append, &os(EDQUOT)), Verdict::Full);
    }

    #[test]
    fn a_broken_or_read_only_disk_is_fatal() {
        for code in [EIO, EROFS, EBADF] {
            assert_eq!(classify(WriteStep::Append, &os(code)), Verdict::Fatal);
            assert_eq!(classify(WriteStep::Sync, &os(code)), Verdict::Fatal);
        }
        assert_eq!(
            classify(WriteStep::Append, &io::Error::other("anything else")),
            Verdict::Fatal
        );
    }

    #[test]
    fn any_failed_sync_is_fatal_even_for_lack_of_space() {
        assert_eq!(classify(WriteStep::Sync, &os(ENOSPC)), Verdict::Fatal);
        assert_eq!(classify(WriteStep::Sync, &os(EDQUOT)), Verdict::Fatal);
    }
}
