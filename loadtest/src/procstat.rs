//! CPU time and memory of a process on this machine (the systems under test, and the load
//! tester itself), from `/proc`.

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

/// The pids of every process whose command name is `name` (e.g. all nodes of a local
/// cluster), lowest first.
pub fn find_all(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// This process.
pub fn own() -> Option<ProcSample> {
    sample(std::process::id())
}

/// CPU time spent by the whole machine (all cores, all processes) since boot, from the
/// first line of `/proc/stat`: everything but idle and I/O wait. Taken with the watched
/// processes and the load tester, it shows how busy the rest of the machine was.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let busy: u64 = ticks.iter().take(8).sum::<u64>()
        - ticks.get(3).copied().unwrap_or(0)
        - ticks.get(4).copied().unwrap_or(0);
    Some(Duration::from_secs_f64(busy as f64 / USER_HZ))
}
