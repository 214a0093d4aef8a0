//! Recovery of `.open` segments left by a crash (`storage-and-events.md`
//! §9.3): cut back to the last complete, parseable line and seal; copy every
//! unparseable complete line to `quarantine/` and count it.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::segment::{
    OPEN_SUFFIX, QUARANTINE_DIR, SegmentHeader, create_private_file, instance_dirs,
    is_open_segment_name, parse_event_line, quarantine_line, sync_dir, try_lock_exclusive,
};

/// What one recovery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveryOutcome {
    /// Segments sealed.
    pub(crate) sealed: u64,
    /// Segments removed because they held no event.
    pub(crate) removed: u64,
    /// Lines copied to `quarantine/`.
    pub(crate) quarantined: u64,
}

/// Recovers the `.open` segments under every subdirectory of `root` that no
/// process holds locked: all of those in `own_dir`, and those elsewhere
/// unmodified for `orphan_age` (a younger one may be a segment another
/// process has just created and not yet locked).
pub(crate) fn recover_open_segments(
    root: &Path,
    own_dir: &Path,
    orphan_age: Duration,
) -> io::Result<RecoveryOutcome> {
    let mut outcome = RecoveryOutcome::default();
    for (name, dir) in instance_dirs(root)? {
        let own = dir == own_dir;
        let mut touched = false;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy().into_owned();
            if !is_open_segment_name(&file_name) {
                continue;
            }
            if !own {
                let age = entry
                    .metadata()?
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .unwrap_or_default();
                if age < orphan_age {
                    continue;
                }
            }
            match recover_file(root, &dir, &name, &file_name) {
                Ok(Some(one)) => {
                    touched = true;
                    outcome.sealed += one.sealed;
                    outcome.removed += one.removed;
                    outcome.quarantined += one.quarantined;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(
                        segment = %dir.join(&file_name).display(),
                        error = %err,
                        "audit replay segment recovery failed; will retry"
                    );
                }
            }
        }
        if touched {
            sync_dir(&dir)?;
        }
    }
    Ok(outcome)
}

/// One complete line of a segment: its bytes (without LF) and where it ends
/// (after the LF).
struct Line<'a> {
    bytes: &'a [u8],
    end: usize,
}

/// Recovers one `.open` file; `Ok(None)` when another process holds it.
fn recover_file(
    root: &Path,
    dir: &Path,
    subdir_name: &str,
    file_name: &str,
) -> io::Result<Option<RecoveryOutcome>> {
    let open_path = dir.join(file_name);
    let mut file = OpenOptions::new().read(true).write(true).open(&open_path)?;
    if !try_lock_exclusive(&file)? {
        return Ok(None);
    }
    // Still there after we took the lock (not sealed or removed meanwhile)?
    if !open_path.exists() {
        return Ok(None);
    }
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;

    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(pos) = content[start..].iter().position(|&b| b == b'\n') {
        let end = start + pos + 1;
        lines.push(Line {
            bytes: &content[start..end - 1],
            end,
        });
        start = end;
    }
    let torn_tail = content.len() - start;

    let sealed_name = file_name.trim_end_matches(OPEN_SUFFIX);
    let sealed_path = dir.join(sealed_name);
    let mut outcome = RecoveryOutcome::default();

    let header = lines.first().and_then(|l| SegmentHeader::parse(l.bytes));
    let body = if header.is_some() {
        &lines[1..]
    } else {
        &lines[..]
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut last_good_end = lines
        .first()
        .filter(|_| header.is_some())
        .map_or(0, |l| l.end);
    for (index, line) in body.iter().enumerate() {
        let number = index + if header.is_some() { 2 } else { 1 };
        if parse_event_line(line.bytes).is_some() {
            good.push(line);
            last_good_end = line.end;
        } else if !line.bytes.is_empty() {
            bad.push((number, line));
        }
    }

    let stem = sealed_name.trim_end_matches(".ndjson");
    for (number, line) in &bad {
        let tag = format!("{subdir_name}.{stem}.line-{number}");
        let copy = quarantine_line(root, &tag, line.bytes)?;
        tracing::error!(
            segment = %open_path.display(),
            line = number,
            quarantined_as = %copy.display(),
            "unparseable audit replay line quarantined"
        );
    }
    if !bad.is_empty() {
        sync_dir(&root.join(QUARANTINE_DIR))?;
        outcome.quarantined = bad.len() as u64;
    }
    if torn_tail > 0 {
        tracing::warn!(
            segment = %open_path.display(),
            bytes = torn_tail,
            "torn last line of an unsealed audit replay segment cut off (never acknowledged)"
        );
    }

    if good.is_empty() {
        // Nothing to replay: the bad lines (if any) are in quarantine.
        fs::remove_file(&open_path)?;
        outcome.removed = 1;
        return Ok(Some(outcome));
    }

    if bad.is_empty() && header.is_some() {
        // Common case: only a torn tail (or nothing) to cut.
        file.set_len(last_good_end as u64)?;
        file.sync_all()?;
        fs::rename(&open_path, &sealed_path)?;
    } else {
        // Rewrite without the quarantined lines, under a fresh header when
        // the original one is unreadable.
        let header = match header {
            Some(header) => header,
            None => {
                let (service, instance) = subdir_name.split_once('-').unwrap_or((subdir_name, ""));
                SegmentHeader::new(service, instance)
            }
        };
        let mut rewritten = header.to_line()?;
        for line in &good {
            rewritten.extend_from_slice(line.bytes);
            rewritten.push(b'\n');
        }
        let tmp_path = dir.join(format!("{sealed_name}.tmp"));
        if tmp_path.exists() {
            fs::remove_file(&tmp_path)?;
        }
        let mut tmp = create_private_file(&tmp_path)?;
        tmp.write_all(&rewritten)?;
        tmp.sync_all()?;
        fs::rename(&tmp_path, &sealed_path)?;
        sync_dir(dir)?;
        fs::remove_file(&open_path)?;
    }
    outcome.sealed = 1;
    tracing::info!(
        segment = %sealed_path.display(),
        events = good.len(),
        "leftover audit replay segment recovered and sealed"
    );
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use super::recover_open_segments;
    use crate::audit::event::AuditEvent;
    use crate::audit::segment::{SegmentHeader, push_event_line};

    fn segment_bytes(events: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut all = SegmentHeader::new("sts", "i0").to_line().unwrap();
        let mut lines = Vec::new();
        for _ in 0..events {
            let mut line = Vec::new();
            push_event_line(&mut line, &AuditEvent::new("z", "t").sign(None)).unwrap();
            all.extend_from_slice(&line);
            lines.push(line);
        }
        (all, lines)
    }

    #[test]
    fn torn_last_line_is_cut_and_segment_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sts-i0");
        fs::create_dir_all(&dir).unwrap();
        let (mut bytes, _) = segment_bytes(3);
        let intact = bytes.clone();
        bytes.extend_from_slice(br#"{"id":"abc","data":"{\"id\":"#);
        fs::write(dir.join("seg-0000000000001-000000.ndjson.open"), &bytes).unwrap();

        let outcome = recover_open_segments(tmp.path(), &dir, Duration::from_secs(30)).unwrap();
        assert_eq!((outcome.sealed, outcome.quarantined), (1, 0));
        assert!(!dir.join("seg-0000000000001-000000.ndjson.open").exists());
        assert_eq!(
            fs::read(dir.join("seg-0000000000001-000000.ndjson")).unwrap(),
            intact
        );
    }

    #[test]
    fn unparseable_middle_line_is_quarantined_not_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sts-i0");
        fs::create_dir_all(&dir).unwrap();
        let (_, lines) = segment_bytes(2);
        let mut bytes = SegmentHeader::new("sts", "i0").to_line().unwrap();
        bytes.extend_from_slice(&lines[0]);
        bytes.extend_from_slice(b"garbage line\n");
        bytes.extend_from_slice(&lines[1]);
        fs::write(dir.join("seg-0000000000002-000000.ndjson.open"), &bytes).unwrap();

        let outcome = recover_open_segments(tmp.path(), &dir, Duration::from_secs(30)).unwrap();
        assert_eq!((outcome.sealed, outcome.quarantined), (1, 1));
        let sealed = fs::read(dir.join("seg-0000000000002-000000.ndjson")).unwrap();
        let text = String::from_utf8(sealed).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(!text.contains("garbage"));
        let quarantine: Vec<_> = fs::read_dir(tmp.path().join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(quarantine.len(), 1);
        assert_eq!(fs::read(&quarantine[0]).unwrap(), b"garbage line\n");
        assert!(
            quarantine[0]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with("line-3")
        );
    }

    #[test]
    fn header_only_segment_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sts-i0");
        fs::create_dir_all(&dir).unwrap();
        let (bytes, _) = segment_bytes(0);
        fs::write(dir.join("seg-0000000000003-000000.ndjson.open"), &bytes).unwrap();
        let outcome = recover_open_segments(tmp.path(), &dir, Duration::from_secs(30)).unwrap();
        assert_eq!(outcome.removed, 1);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn young_segment_of_another_instance_and_locked_segments_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("sts-i0");
        let other = tmp.path().join("sts-i1");
        fs::create_dir_all(&own).unwrap();
        fs::create_dir_all(&other).unwrap();
        let (bytes, _) = segment_bytes(1);
        let young = other.join("seg-0000000000004-000000.ndjson.open");
        fs::write(&young, &bytes).unwrap();
        let locked = own.join("seg-0000000000005-000000.ndjson.open");
        fs::write(&locked, &bytes).unwrap();
        let holder = fs::File::open(&locked).unwrap();
        holder.try_lock().unwrap();

        let outcome = recover_open_segments(tmp.path(), &own, Duration::from_secs(30)).unwrap();
        assert_eq!(outcome, super::RecoveryOutcome::default());
        assert!(young.exists());
        assert!(locked.exists());

        drop(holder);
        let outcome = recover_open_segments(tmp.path(), &own, Duration::ZERO).unwrap();
        assert_eq!(outcome.sealed, 2);
    }
}
