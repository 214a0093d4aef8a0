//! Replay segment files (`storage-and-events.md` §9.2, §9.3): names, the
//! header and event lines, and the writer that appends fsynced batches and
//! seals segments.
//!
//! Everything here is blocking file I/O: the async tasks call it through
//! `spawn_blocking`, and the synchronous spill path of a full queue calls it
//! directly.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::event::{SignedAuditEvent, format_occurred_at};

/// Version written in the header's `caracal_replay` member.
pub(crate) const REPLAY_FORMAT_VERSION: u64 = 1;
/// Longest accepted line, newline excluded (§9.2).
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;
/// Name of the quarantine directory under the replay root.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// The per-instance directories under the replay root (`<service>-<instance>/`), with their
/// names: every subdirectory except `quarantine/` and hidden ones. A missing root has none.
pub(crate) fn instance_dirs(root: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == QUARANTINE_DIR || name.starts_with('.') || !entry.file_type()?.is_dir() {
            continue;
        }
        dirs.push((name, entry.path()));
    }
    Ok(dirs)
}
/// Suffix of a segment still being written.
pub(crate) const OPEN_SUFFIX: &str = ".open";
/// Suffix of a sealed segment.
pub(crate) const SEGMENT_SUFFIX: &str = ".ndjson";
/// Suffix of a replay cursor file (appended to the sealed segment's name).
pub(crate) const CURSOR_SUFFIX: &str = ".cursor";

/// Line 1 of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentHeader {
    pub(crate) caracal_replay: u64,
    pub(crate) service: String,
    pub(crate) instance: String,
    pub(crate) created_at: String,
}

impl SegmentHeader {
    pub(crate) fn new(service: &str, instance: &str) -> Self {
        Self {
            caracal_replay: REPLAY_FORMAT_VERSION,
            service: service.to_owned(),
            instance: instance.to_owned(),
            created_at: format_occurred_at(Utc::now()),
        }
    }

    /// Parses a header line (without its newline); `None` when it is not a
    /// version-1 header.
    pub(crate) fn parse(line: &[u8]) -> Option<Self> {
        let header: Self = serde_json::from_slice(line).ok()?;
        (header.caracal_replay == REPLAY_FORMAT_VERSION).then_some(header)
    }

    /// The header line, newline included.
    pub(crate) fn to_line(&self) -> io::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Appends the line of `event` (`{"id","data","sig"}` + LF) to `buf`.
pub(crate) fn push_event_line(buf: &mut Vec<u8>, event: &SignedAuditEvent) -> io::Result<()> {
    serde_json::to_writer(&mut *buf, event)?;
    buf.push(b'\n');
    Ok(())
}

/// Parses an event line (without its newline); `None` when it is not a
/// complete `{"id","data","sig"}` object of strings.
pub(crate) fn parse_event_line(line: &[u8]) -> Option<SignedAuditEvent> {
    if line.len() > MAX_LINE_BYTES {
        return None;
    }
    serde_json::from_slice(line).ok()
}

/// `seg-<13-digit unix ms>-<6-digit counter>.ndjson`.
pub(crate) fn segment_file_name(unix_ms: u64, counter: u32) -> String {
    format!("seg-{unix_ms:013}-{counter:06}{SEGMENT_SUFFIX}")
}

/// Whether `name` is a sealed segment name.
pub(crate) fn is_sealed_segment_name(name: &str) -> bool {
    segment_stem(name, SEGMENT_SUFFIX)
}

/// Whether `name` is an open segment name (`….ndjson.open`).
pub(crate) fn is_open_segment_name(name: &str) -> bool {
    name.strip_suffix(OPEN_SUFFIX)
        .is_some_and(|sealed| segment_stem(sealed, SEGMENT_SUFFIX))
}

fn segment_stem(name: &str, suffix: &str) -> bool {
    let Some(middle) = name
        .strip_prefix("seg-")
        .and_then(|rest| rest.strip_suffix(suffix))
    else {
        return false;
    };
    let bytes = middle.as_bytes();
    bytes.len() == 13 + 1 + 6
        && bytes[13] == b'-'
        && bytes[..13].iter().all(u8::is_ascii_digit)
        && bytes[14..].iter().all(u8::is_ascii_digit)
}

/// Path of the cursor file of a sealed segment.
pub(crate) fn cursor_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(CURSOR_SUFFIX);
    PathBuf::from(name)
}

/// Creates `dir` (and missing parents) with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates a new file with mode 0600, failing if it exists.
pub(crate) fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// fsyncs a directory, making renames and unlinks in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an error from `try_lock` means "someone else holds it".
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(err)) => Err(err),
    }
}

/// Copies one unparseable line to `<root>/quarantine/<tag>` (mode 0600,
/// fsynced). The caller fsyncs the quarantine directory.
pub(crate) fn quarantine_line(root: &Path, tag: &str, line: &[u8]) -> io::Result<PathBuf> {
    let dir = root.join(QUARANTINE_DIR);
    create_private_dir(&dir)?;
    let mut path = dir.join(tag);
    let mut n = 0_u32;
    let mut file = loop {
        match create_private_file(&path) {
            Ok(file) => break file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                n += 1;
                path = dir.join(format!("{tag}.{n}"));
            }
            Err(err) => return Err(err),
        }
    };
    file.write_all(line)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(path)
}

/// Sum of the sizes of the segment files (open and sealed) in `dir`; 0 when
/// it does not exist.
pub(crate) fn segment_bytes_in(dir: &Path) -> io::Result<u64> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut total = 0_u64;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_sealed_segment_name(&name) || is_open_segment_name(&name) {
            total = total.saturating_add(entry.metadata().map_or(0, |m| m.len()));
        }
    }
    Ok(total)
}

/// Sealing thresholds of one segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentLimits {
    pub(crate) max_bytes: u64,
    pub(crate) max_events: u64,
    pub(crate) max_age: Duration,
    /// Bound on all segment bytes of the instance directory.
    pub(crate) dir_max_bytes: u64,
    /// Free bytes the file system must keep after a write (`AUDIT_REPLAY_MIN_FREE_BYTES`).
    pub(crate) min_free_bytes: u64,
}

/// Why a batch could not be written to the replay volume.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpillError {
    /// `AUDIT_REPLAY_MAX_BYTES` would be exceeded.
    #[error("replay directory bound reached ({used} of {max} bytes used)")]
    Full { used: u64, max: u64 },
    /// The write would leave less than `AUDIT_REPLAY_MIN_FREE_BYTES` free on the volume.
    #[error("replay volume low on space ({free} bytes free, {min} must stay free)")]
    LowSpace { free: u64, min: u64 },
    /// The file system refused.
    #[error("replay volume I/O failed: {0}")]
    Io(#[from] io::Error),
}

struct OpenSegment {
    file: File,
    open_path: PathBuf,
    sealed_path: PathBuf,
    len: u64,
    events: u64,
    created: Instant,
}

/// Writes this instance's segments under `<root>/<service>-<instance>/`.
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    service: String,
    instance: String,
    limits: SegmentLimits,
    dir_bytes: u64,
    counter: u32,
    current: Option<OpenSegment>,
}

impl SegmentWriter {
    pub(crate) fn new(dir: PathBuf, service: &str, instance: &str, limits: SegmentLimits) -> Self {
        Self {
            dir,
            service: service.to_owned(),
            instance: instance.to_owned(),
            limits,
            dir_bytes: 0,
            counter: 0,
            current: None,
        }
    }

    /// Bytes of segments in the instance directory (as last counted).
    pub(crate) fn dir_bytes(&self) -> u64 {
        self.dir_bytes
    }

    /// Whether the directory bound is reached or the volume keeps no more than its
    /// free-space reserve.
    pub(crate) fn is_full(&self) -> bool {
        self.dir_bytes >= self.limits.dir_max_bytes
            || self
                .free_bytes()
                .is_ok_and(|free| free <= self.limits.min_free_bytes)
    }

    /// Bytes available to this process on the volume of the replay directory (its parent
    /// while the directory does not exist yet).
    pub(crate) fn free_bytes(&self) -> io::Result<u64> {
        let stat = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat,
            Err(_missing) => {
                let parent = self.dir.parent().unwrap_or(&self.dir);
                rustix::fs::statvfs(parent).map_err(io::Error::from)?
            }
        };
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Recounts the bytes in the instance directory (the replayer deletes
    /// drained segments behind the writer's back).
    pub(crate) fn refresh_dir_bytes(&mut self) -> io::Result<u64> {
        self.dir_bytes = segment_bytes_in(&self.dir)?;
        Ok(self.dir_bytes)
    }

    /// Whether a segment is open.
    pub(crate) fn has_open_segment(&self) -> bool {
        self.current.is_some()
    }

    /// Appends `events` to the current segment (opening one if needed) and
    /// `fdatasync`s it: only when this returns `Ok` are the events accepted.
    /// Seals the segment when it reaches its size or event bound.
    pub(crate) fn append(&mut self, events: &[SignedAuditEvent]) -> Result<(), SpillError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(events.len() * 512);
        for event in events {
            push_event_line(&mut buf, event)?;
        }
        let extra = buf.len() as u64;
        if self.dir_bytes.saturating_add(extra) > self.limits.dir_max_bytes {
            // Maybe the replayer drained some segments meanwhile.
            self.refresh_dir_bytes()?;
            if self.dir_bytes.saturating_add(extra) > self.limits.dir_max_bytes {
                return Err(SpillError::Full {
                    used: self.dir_bytes,
                    max: self.limits.dir_max_bytes,
                });
            }
        }
        if self.limits.min_free_bytes > 0 {
            let free = self.free_bytes()?;
            if free.saturating_sub(extra) < self.limits.min_free_bytes {
                return Err(SpillError::LowSpace {
                    free,
                    min: self.limits.min_free_bytes,
                });
            }
        }
        if self.current.is_none() {
            self.open_segment()?;
        }
        let Some(segment) = self.current.as_mut() else {
            return Err(SpillError::Io(io::Error::other("no open segment")));
        };
        let written = segment
            .file
            .write_all(&buf)
            .and_then(|()| segment.file.sync_data());
        if let Err(err) = written {
            // Cut a torn batch off so the segment stays line-aligned; if even
            // that fails, leave the file to start-up recovery.
            let start = segment.len;
            let cut = segment
                .file
                .set_len(start)
                .and_then(|()| segment.file.sync_data());
            if cut.is_err() {
                self.abandon();
            }
            return Err(SpillError::Io(err));
        }
        segment.len += extra;
        segment.events += events.len() as u64;
        self.dir_bytes = self.dir_bytes.saturating_add(extra);
        if segment.len >= self.limits.max_bytes || segment.events >= self.limits.max_events {
            self.seal()?;
        }
        Ok(())
    }

    /// Seals the current segment if it is older than the age bound.
    pub(crate) fn seal_if_old(&mut self, now: Instant) -> io::Result<bool> {
        let old = self
            .current
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.created) >= self.limits.max_age);
        if old {
            self.seal()?;
        }
        Ok(old)
    }

    /// Seals the current segment, if any: fsync the file, rename it without
    /// `.open`, fsync the directory. On failure the file is left `.open` and
    /// unlocked, for recovery.
    pub(crate) fn seal(&mut self) -> io::Result<()> {
        let Some(segment) = self.current.take() else {
            return Ok(());
        };
        segment.file.sync_all()?;
        fs::rename(&segment.open_path, &segment.sealed_path)?;
        sync_dir(&self.dir)?;
        drop(segment.file); // releases the lock only once sealed
        tracing::debug!(
            segment = %segment.sealed_path.display(),
            events = segment.events,
            bytes = segment.len,
            "audit replay segment sealed"
        );
        Ok(())
    }

    /// Writability probe: create, write, fsync and unlink a file in the
    /// instance directory (creating it if needed).
    pub(crate) fn probe(&self) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let path = self
            .dir
            .join(format!(".probe-{}", uuid::Uuid::new_v4().simple()));
        let mut file = create_private_file(&path)?;
        let written = file.write_all(b"probe\n").and_then(|()| file.sync_data());
        let removed = fs::remove_file(&path);
        written?;
        removed?;
        sync_dir(&self.dir)
    }

    fn open_segment(&mut self) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let unix_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        for _ in 0..1000 {
            let counter = self.counter;
            self.counter = (self.counter + 1) % 1_000_000;
            let sealed_path = self.dir.join(segment_file_name(unix_ms, counter));
            let mut open_name = sealed_path.as_os_str().to_owned();
            open_name.push(OPEN_SUFFIX);
            let open_path = PathBuf::from(open_name);
            if sealed_path.exists() {
                continue;
            }
            let mut file = match create_private_file(&open_path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            };
            // Hold the lock for as long as the segment is open: recovery and
            // other processes skip locked files.
            if !try_lock_exclusive(&file)? {
                continue;
            }
            let header = SegmentHeader::new(&self.service, &self.instance).to_line()?;
            if let Err(err) = file.write_all(&header) {
                drop(file);
                let _ignored = fs::remove_file(&open_path);
                return Err(err);
            }
            // The new directory entry must survive a crash before the
            // first batch counts as accepted.
            sync_dir(&self.dir)?;
            let len = header.len() as u64;
            self.dir_bytes = self.dir_bytes.saturating_add(len);
            self.current = Some(OpenSegment {
                file,
                open_path,
                sealed_path,
                len,
                events: 0,
                created: Instant::now(),
            });
            return Ok(());
        }
        Err(io::Error::other("no free segment name"))
    }

    /// Gives up on the current segment without sealing it; recovery will cut
    /// it back to its last complete line.
    fn abandon(&mut self) {
        if let Some(segment) = self.current.take() {
            tracing::error!(
                segment = %segment.open_path.display(),
                "audit replay segment abandoned after a write failure; start-up recovery will seal it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::audit::event::AuditEvent;

    fn limits() -> SegmentLimits {
        SegmentLimits {
            max_bytes: 16 << 20,
            max_events: 10_000,
            max_age: Duration::from_secs(5),
            dir_max_bytes: 1 << 30,
            min_free_bytes: 0,
        }
    }

    #[test]
    fn names_are_recognised() {
        let name = segment_file_name(1_700_000_000_000, 7);
        assert_eq!(name, "seg-1700000000000-000007.ndjson");
        assert!(is_sealed_segment_name(&name));
        assert!(!is_open_segment_name(&name));
        assert!(is_open_segment_name(&format!("{name}.open")));
        assert!(!is_sealed_segment_name(&format!("{name}.cursor")));
        assert!(!is_sealed_segment_name("seg-17-000007.ndjson"));
    }

    #[tokio::test]
    async fn append_writes_header_and_lines_with_private_modes_then_seals() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("root").join("sts-i0");
        let mut writer = SegmentWriter::new(dir.clone(), "sts", "i0", limits());
        let events: Vec<_> = (0..3)
            .map(|_| AuditEvent::new("zone-1", "token_exchange").sign(None))
            .collect();
        writer.append(&events).unwrap();

        let files: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let open = &files[0];
        assert!(is_open_segment_name(
            &open.file_name().unwrap().to_string_lossy()
        ));
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(open).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let text = fs::read_to_string(open).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with(
                r#"{"caracal_replay":1,"service":"sts","instance":"i0","created_at":""#
            )
        );
        let header = SegmentHeader::parse(lines[0].as_bytes()).unwrap();
        assert_eq!(header.created_at.len(), "2026-05-21T12:00:00.000000Z".len());
        for (line, event) in lines[1..].iter().zip(&events) {
            assert!(line.starts_with(r#"{"id":""#));
            assert_eq!(parse_event_line(line.as_bytes()).as_ref(), Some(event));
        }
        assert!(text.ends_with('\n'));

        writer.seal().unwrap();
        let sealed: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(sealed.len(), 1);
        assert!(is_sealed_segment_name(
            &sealed[0].file_name().unwrap().to_string_lossy()
        ));
        assert_eq!(fs::read_to_string(&sealed[0]).unwrap(), text);
    }

    #[tokio::test]
    async fn segment_is_sealed_at_the_event_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sts-i0");
        let mut writer = SegmentWriter::new(
            dir.clone(),
            "sts",
            "i0",
            SegmentLimits {
                max_events: 2,
                ..limits()
            },
        );
        let events: Vec<_> = (0..5)
            .map(|_| AuditEvent::new("z", "t").sign(None))
            .collect();
        for event in &events {
            writer.append(std::slice::from_ref(event)).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3);
        assert!(is_sealed_segment_name(&names[0]));
        assert!(is_sealed_segment_name(&names[1]));
        assert!(is_open_segment_name(&names[2]));
    }

    /// `AUDIT_REPLAY_MIN_FREE_BYTES`: a write that would eat into the volume's reserve is
    /// refused and nothing is written; with the reserve within reach it is accepted.
    #[tokio::test]
    async fn the_free_space_reserve_refuses_the_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sts-i0");
        let probe = SegmentWriter::new(dir.clone(), "sts", "i0", limits());
        let free = probe.free_bytes().unwrap();
        assert!(free > 0);
        let event = AuditEvent::new("z", "t").sign(None);

        let mut refused = SegmentWriter::new(
            dir.clone(),
            "sts",
            "i0",
            SegmentLimits {
                min_free_bytes: free.saturating_add(1 << 30),
                ..limits()
            },
        );
        let err = refused.append(std::slice::from_ref(&event)).unwrap_err();
        assert!(matches!(err, SpillError::LowSpace { .. }), "{err}");
        assert!(refused.is_full());
        assert!(!dir.exists(), "nothing was written");

        let mut accepted = SegmentWriter::new(
            dir.clone(),
            "sts",
            "i0",
            SegmentLimits {
                min_free_bytes: 1,
                ..limits()
            },
        );
        accepted.append(std::slice::from_ref(&event)).unwrap();
        assert!(!accepted.is_full());
    }

    #[tokio::test]
    async fn directory_bound_refuses_the_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = SegmentWriter::new(
            tmp.path().join("sts-i0"),
            "sts",
            "i0",
            SegmentLimits {
                dir_max_bytes: 600,
                min_free_bytes: 0,
                ..limits()
            },
        );
        let event = AuditEvent::new("z", "t").sign(None);
        writer.append(std::slice::from_ref(&event)).unwrap();
        let err = writer
            .append(&[event.clone(), event.clone(), event])
            .unwrap_err();
        assert!(matches!(err, SpillError::Full { .. }), "{err}");
    }

    #[test]
    fn probe_fails_under_a_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"x").unwrap();
        let writer = SegmentWriter::new(file.join("sts-i0"), "sts", "i0", limits());
        assert!(writer.probe().is_err());
        let ok = SegmentWriter::new(tmp.path().join("sts-i0"), "sts", "i0", limits());
        ok.probe().unwrap();
        assert_eq!(fs::read_dir(tmp.path().join("sts-i0")).unwrap().count(), 0);
    }
}
