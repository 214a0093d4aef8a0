//! `replay.backlog` (storage §9): audit events the STS and gateways spilled to their replay
//! volumes and have not replayed yet. Each `--replay-dir` (else `AUDIT_REPLAY_DIR`) is a
//! replay root holding `<service>-<instance>/seg-<unix ms>-<counter>.ndjson[.open]` files and
//! `quarantine/`. A segment's age comes from the time in its name. Any segment is a backlog
//! (warn); one older than [`OLD_AFTER_SECS`] means replay is stuck (fail), as the alert
//! `Caracal{STS,Gateway}AuditReplayBacklogOld` says.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use control_store::settings::Lookup;

use super::{
    DoctorOptions, age,
    report::{Check, Findings},
};

const ID: &str = "replay.backlog";
/// A segment older than this fails the check (15 min, storage §9.5).
const OLD_AFTER_SECS: f64 = 900.0;
/// The quarantine directory of a replay root.
const QUARANTINE: &str = "quarantine";

/// What one replay root holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Backlog {
    /// Segment files (sealed and open).
    pub(crate) segments: u64,
    /// Of those, still being written (`.open`).
    pub(crate) open: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// The oldest segment's time (unix ms, from its name).
    pub(crate) oldest_ms: Option<u64>,
    /// Files in `quarantine/`.
    pub(crate) quarantined: u64,
}

/// The time in a segment file name (`seg-<13 digits>-<6 digits>.ndjson`, optionally
/// `.open`), or `None` when the name is not a segment's.
pub(crate) fn segment_time(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".open").unwrap_or(name);
    let middle = stem.strip_prefix("seg-")?.strip_suffix(".ndjson")?;
    let (ms, counter) = middle.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms, 13) || !digits(counter, 6) {
        return None;
    }
    ms.parse().ok()
}

/// Adds the segments directly in `dir` to `backlog`.
fn scan_segments(dir: &Path, backlog: &mut Backlog) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(time) = segment_time(&name) else {
            continue;
        };
        if !entry.file_type()?.is_file() {
            continue;
        }
        backlog.segments += 1;
        if name.ends_with(".open") {
            backlog.open += 1;
        }
        backlog.bytes += entry.metadata()?.len();
        backlog.oldest_ms = Some(backlog.oldest_ms.map_or(time, |oldest| oldest.min(time)));
    }
    Ok(())
}

/// Scans a replay root: its own segments (a directory given at instance level), every
/// `<service>-<instance>/` below it, and `quarantine/`.
pub(crate) fn scan(root: &Path) -> io::Result<Backlog> {
    let mut backlog = Backlog::default();
    scan_segments(root, &mut backlog)?;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type()?.is_dir() {
            continue;
        }
        if name == QUARANTINE {
            backlog.quarantined +=
                u64::try_from(fs::read_dir(entry.path())?.count()).unwrap_or(u64::MAX);
        } else {
            scan_segments(&entry.path(), &mut backlog)?;
        }
    }
    Ok(backlog)
}

/// Runs `replay.backlog` on the directories of `options` (else `AUDIT_REPLAY_DIR`).
pub(crate) fn backlog(options: &DoctorOptions, lookup: Lookup<'_>) -> Check {
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let mut findings = Findings::new(ID);
    let dirs: Vec<PathBuf> = if options.replay_dirs.is_empty() {
        lookup("AUDIT_REPLAY_DIR")
            .map(PathBuf::from)
            .into_iter()
            .collect()
    } else {
        options.replay_dirs.clone()
    };
    if dirs.is_empty() {
        findings
            .ok("no replay directory given (--replay-dir, or AUDIT_REPLAY_DIR); nothing checked");
        return findings.finish();
    }
    let backlog_fix = "segments drain once Redis and the audit stream take events again (see audit.stream and redis.config); check the STS and gateway logs for replay errors";
    for dir in &dirs {
        let shown = dir.display();
        let backlog = match scan(dir) {
            Ok(backlog) => backlog,
            Err(error) => {
                findings.fail(
                    format!("{shown} cannot be read: {}", error.kind()),
                    "pass the replay root the STS or gateway writes to (their AUDIT_REPLAY_DIR), readable by this user",
                );
                continue;
            }
        };
        if backlog.segments == 0 {
            findings.ok(format!("{shown}: no segments"));
        } else {
            let oldest_secs = backlog
                .oldest_ms
                .map_or(0.0, |oldest| now_ms.saturating_sub(oldest) as f64 / 1000.0);
            let finding = format!(
                "{shown}: {} segment(s) ({} open), {} bytes not yet replayed, the oldest {} old",
                backlog.segments,
                backlog.open,
                backlog.bytes,
                age(oldest_secs)
            );
            if oldest_secs > OLD_AFTER_SECS {
                findings.fail(format!("{finding}: replay is stuck"), backlog_fix);
            } else {
                findings.warn(finding, backlog_fix);
            }
        }
        if backlog.quarantined > 0 {
            findings.warn(
                format!("{shown}: {} file(s) in {QUARANTINE}/ (lines that could not be parsed and were not replayed)", backlog.quarantined),
                "inspect the quarantined lines; they are kept as evidence and never replayed automatically",
            );
        }
    }
    findings.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_names_carry_a_time() {
        assert_eq!(
            segment_time("seg-1700000000000-000001.ndjson"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            segment_time("seg-1700000000000-000001.ndjson.open"),
            Some(1_700_000_000_000)
        );
        assert_eq!(segment_time("seg-1700000000000-000001.ndjson.cursor"), None);
        assert_eq!(segment_time("seg-17-000001.ndjson"), None);
        assert_eq!(segment_time("notes.txt"), None);
    }
}
