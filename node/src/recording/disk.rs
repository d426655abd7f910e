//! Free space on the recordings' filesystem. A recording is refused when the filesystem of
//! the recordings directory has less free space than `recording.min_free_mb` (HTTP `507`,
//! gRPC `RESOURCE_EXHAUSTED`), and a running one that sees it fall below stops cleanly: its
//! file finalised, its state `failed` with "disk full" and the figures. Stopping early keeps
//! the file playable and leaves room for everything else on the disk (a muxer that hits a
//! full disk mid-write leaves a truncated file and fails with a write error).

use std::path::Path;
use std::time::{Duration, Instant};

/// How often a running recording looks at the free space (one `statvfs`).
const CHECK_EVERY: Duration = Duration::from_secs(1);

const MB: u64 = 1024 * 1024;

/// Bytes an unprivileged process may still write on the filesystem holding `dir` (or, if it
/// does not exist yet, its nearest existing parent).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    let s = nix::sys::statvfs::statvfs(at).map_err(std::io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// `Err` with the reason if `dir`'s filesystem has less than `min_free` bytes free. A
/// filesystem that cannot be asked is not refused for it (writing will say what is wrong).
pub fn check(dir: &Path, min_free: u64) -> Result<(), String> {
    if min_free == 0 {
        return Ok(());
    }
    match free_bytes(dir) {
        Ok(free) if free < min_free => Err(format!(
            "disk full: {} MB free for {}, below the minimum of {} MB (recording.min_free_mb)",
            free / MB,
            dir.display(),
            min_free / MB
        )),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), "free space unknown: {e}");
            Ok(())
        }
    }
}

/// A running recording's look at the free space, at most once per [`CHECK_EVERY`].
pub(super) struct SpaceWatch {
    next: Instant,
}

impl SpaceWatch {
    pub(super) fn new() -> Self {
        Self {
            next: Instant::now() + CHECK_EVERY,
        }
    }

    /// The reason to stop, when it is time to look and the space is below the minimum.
    pub(super) fn full(&mut self, recordings: &super::Recordings) -> Option<String> {
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        self.next = now + CHECK_EVERY;
        recordings.check_space().err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimum_above_the_free_space_is_refused_with_the_figures() {
        let dir = std::env::temp_dir()
            .join("sfu-disk-check-not-created")
            .join("deeper");
        let free = free_bytes(&dir).expect("the temporary directory's filesystem answers");
        assert!(free > 0);
        assert!(check(&dir, 0).is_ok());
        assert!(check(&dir, 1).is_ok());
        let e = check(&dir, free + 1024 * MB).unwrap_err();
        assert!(e.starts_with("disk full: "), "{e}");
        assert!(
            e.contains("recording.min_free_mb") && e.contains("sfu-disk-check"),
            "{e}"
        );
    }
}
