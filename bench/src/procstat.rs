//! CPU time of processes, read from `/proc/<pid>/stat` (Linux only).
//!
//! The load generator samples the watched processes at the start and the end of the
//! measured window, so a run reports how many CPU microseconds each party (the STS,
//! Postgres, Redis, the load generator itself) spent per mint.

use std::path::Path;

/// Clock ticks per second of `utime`/`stime` (`getconf CLK_TCK`; 100 on Linux).
pub const CLK_TCK: u64 = 100;

/// A named group of processes whose CPU time is summed.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Label in the results (`sts`, `postgres`, `redis`).
    pub name: String,
    /// The processes.
    pub pids: Vec<u32>,
    /// Also count every direct child of each pid (Postgres backends of the postmaster),
    /// looked up again at each sample.
    pub children: bool,
}

impl std::str::FromStr for Watch {
    type Err = String;

    /// `name=pid[,pid...]`, or `name=+pid` to include the children of `pid`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected name=pid[,pid] or name=+pid"))?;
        let (children, list) = match rest.strip_prefix('+') {
            Some(list) => (true, list),
            None => (false, rest),
        };
        let pids = list
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.trim().parse::<u32>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if pids.is_empty() {
            return Err(format!("{s:?}: no pid"));
        }
        Ok(Self {
            name: name.to_owned(),
            pids,
            children,
        })
    }
}

/// `(ppid, utime + stime in ticks)` of one process, `None` when it is gone.
pub fn stat(pid: &str) -> Option<(u32, u64)> {
    let raw = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let (_, rest) = raw.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU ticks of this process.
pub fn self_ticks() -> u64 {
    stat("self").map_or(0, |(_, ticks)| ticks)
}

impl Watch {
    /// Current total CPU ticks of the group. Processes that exited since the last sample
    /// are not counted (their time is lost), so a group should be long-lived.
    pub fn ticks(&self) -> u64 {
        let mut total = 0;
        for pid in &self.pids {
            total += stat(&pid.to_string()).map_or(0, |(_, t)| t);
        }
        if self.children
            && let Ok(entries) = std::fs::read_dir("/proc")
        {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some((ppid, t)) = stat(name)
                    && self.pids.contains(&ppid)
                {
                    total += t;
                }
            }
        }
        total
    }
}

/// Busy CPU ticks of the whole machine, all CPUs (`user + nice + system` of `/proc/stat`;
/// interrupt time is left out because it is not charged to any process, and most of it is
/// the benchmark's own loopback traffic).
pub fn machine_busy_ticks() -> u64 {
    machine_fields().iter().take(3).sum()
}

/// Steal ticks of the whole machine (`/proc/stat` field 8): time the hypervisor gave this
/// virtual machine's CPUs to someone else.
pub fn machine_steal_ticks() -> u64 {
    machine_fields().get(7).copied().unwrap_or(0)
}

fn machine_fields() -> Vec<u64> {
    let Ok(raw) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    let Some(line) = raw.lines().find(|l| l.starts_with("cpu ")) else {
        return Vec::new();
    };
    line.split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse::<u64>().ok())
        .collect()
}

/// Ticks to microseconds.
pub fn ticks_to_us(ticks: u64) -> u64 {
    ticks * (1_000_000 / CLK_TCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_specs() {
        let w: Watch = "postgres=+12".parse().unwrap();
        assert!(w.children);
        assert_eq!(w.pids, vec![12]);
        let w: Watch = "sts=1,2".parse().unwrap();
        assert!(!w.children);
        assert_eq!(w.pids, vec![1, 2]);
        assert!("nopid".parse::<Watch>().is_err());
    }

    #[test]
    fn reads_own_cpu_time() {
        assert!(stat("self").is_some());
        assert!(machine_busy_ticks() > 0);
    }
}
