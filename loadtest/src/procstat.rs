//! CPU time and memory of a process on this machine, from `/proc`.

use std::time::Duration;

/// A process's CPU time (user + system) and resident memory.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/statm`.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields start after the closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcSample {
        cpu: Duration::from_secs_f64((utime + stime) as f64 / USER_HZ),
        rss_bytes: rss_pages * 4096,
    })
}

/// `/proc` reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second on every
/// architecture we run on.
const USER_HZ: f64 = 100.0;

/// Finds the pid of the first process whose command name is `name`.
pub fn find(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    })
}

/// This process.
pub fn own() -> Option<ProcSample> {
    sample(std::process::id())
}
