//! Free and total space of the filesystem that holds the spool.
//!
//! The spool refuses mail (452) once its volume is full; these numbers let an alert
//! predict that hours ahead (`predict_linear` over the free bytes), the way
//! kube-prometheus watches persistent volumes. They are read with `statvfs(3)` on the
//! spool directory at scrape time, so they cost one system call per scrape and are
//! never stale.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Space on one filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeSpace {
    /// Bytes an unprivileged writer can still use (`f_bavail`): what the spool can
    /// grow into. Blocks reserved for root are not counted, as `df` does not.
    pub free: u64,
    /// Size of the filesystem (`f_blocks`).
    pub size: u64,
}

impl VolumeSpace {
    /// From `statvfs` fields: block counts are in units of the fragment size
    /// (`f_frsize`), not `f_bsize`. Saturates rather than wrapping on absurd values.
    pub fn from_blocks(fragment_size: u64, blocks: u64, available_blocks: u64) -> Self {
        Self {
            free: available_blocks.saturating_mul(fragment_size),
            size: blocks.saturating_mul(fragment_size),
        }
    }
}

/// The space of the filesystem holding `dir`.
pub fn space(dir: &Path) -> io::Result<VolumeSpace> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable
    // memory of the right type, which statvfs fills when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(VolumeSpace::from_blocks(
        u64::from(stat.f_frsize),
        u64::from(stat.f_blocks),
        u64::from(stat.f_bavail),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_counts_are_in_fragments() {
        assert_eq!(
            VolumeSpace::from_blocks(4096, 1000, 250),
            VolumeSpace {
                free: 1_024_000,
                size: 4_096_000
            }
        );
    }

    #[test]
    fn absurd_counts_saturate() {
        let space = VolumeSpace::from_blocks(u64::MAX, 2, 1);
        assert_eq!((space.free, space.size), (u64::MAX, u64::MAX));
    }

    #[test]
    fn reads_the_filesystem_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let space = space(dir.path()).unwrap();
        assert!(space.size > 0, "{space:?}");
        assert!(space.free <= space.size, "{space:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(space(&dir.path().join("missing")).is_err());
    }
}
