//! The replayer task (`storage-and-events.md` §9.4): sends sealed segments of
//! any instance back to the stream, under an exclusive file lock, with a
//! durable cursor, at a capped rate.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};

use super::event::SignedAuditEvent;
use super::link::RedisLink;
use super::recovery::recover_open_segments;
use super::segment::{
    MAX_LINE_BYTES, QUARANTINE_DIR, SegmentHeader, create_private_file, cursor_path, instance_dirs,
    is_sealed_segment_name, parse_event_line, quarantine_line, sync_dir, try_lock_exclusive,
};
use super::shared::Shared;
use super::writer::stopped;

pub(crate) struct Replayer {
    shared: Arc<Shared>,
    link: RedisLink,
    stop: watch::Receiver<bool>,
}

enum Progress {
    /// The segment was drained and deleted.
    Drained,
    /// Stop for now (Redis error, threshold, shutdown, I/O problem).
    Paused,
}

impl Replayer {
    pub(crate) fn new(shared: Arc<Shared>, link: RedisLink, stop: watch::Receiver<bool>) -> Self {
        Self { shared, link, stop }
    }

    pub(crate) async fn run(mut self) {
        let mut ticker = interval(self.shared.config.replay_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => return,
                _ = ticker.tick() => {}
            }
            self.recover_orphans().await;
            if self.may_replay() {
                self.drain_segments().await;
            }
        }
    }

    fn may_replay(&self) -> bool {
        !*self.stop.borrow() && self.shared.stream_can_take()
    }

    /// Seals `.open` segments no live process holds (a crashed
    /// predecessor's, or one this process abandoned).
    async fn recover_orphans(&self) {
        let shared = Arc::clone(&self.shared);
        let done = tokio::task::spawn_blocking(move || {
            recover_open_segments(
                &shared.config.replay_dir,
                &shared.own_dir,
                shared.config.orphan_segment_age,
            )
            .map(|outcome| shared.count_quarantined(outcome.quarantined))
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "audit replay recovery scan failed"),
            Err(err) => tracing::error!(error = %err, "audit replay recovery task failed"),
        }
    }

    async fn drain_segments(&mut self) {
        while self.may_replay() {
            let root = self.shared.config.replay_dir.clone();
            let job = match tokio::task::spawn_blocking(move || take_oldest_segment(&root)).await {
                Ok(Ok(Some(job))) => job,
                Ok(Ok(None)) => return,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "audit replay: listing segments failed");
                    return;
                }
                Err(err) => {
                    tracing::error!(error = %err, "audit replay listing task failed");
                    return;
                }
            };
            match self.replay_segment(job).await {
                Progress::Drained => {}
                Progress::Paused => return,
            }
        }
    }

    async fn replay_segment(&mut self, mut job: ReplayJob) -> Progress {
        let batch_max = self.shared.config.batch_max.max(1);
        let rate = u64::from(self.shared.config.replay_rate.max(1));
        let stream = self.shared.config.stream.clone();
        let root = self.shared.config.replay_dir.clone();
        tracing::info!(segment = %job.path.display(), offset = job.offset, "replaying audit segment");
        loop {
            if !self.may_replay() {
                return Progress::Paused;
            }
            let started = Instant::now();
            let read = tokio::task::spawn_blocking(move || {
                let batch = job.read_batch(batch_max);
                (job, batch)
            })
            .await;
            let (returned, batch) = match read {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::error!(error = %err, "audit replay read task failed");
                    return Progress::Paused;
                }
            };
            job = returned;
            let batch = match batch {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::error!(segment = %job.path.display(), error = %err, "audit replay read failed");
                    return Progress::Paused;
                }
            };
            if !batch.events.is_empty()
                && let Err(err) = self.link.xadd_all(&stream, &batch.events).await
            {
                tracing::warn!(
                    segment = %job.path.display(),
                    error = %err,
                    "audit replay XADD failed; will resume from the cursor"
                );
                return Progress::Paused;
            }
            // Acknowledged: quarantine bad lines, then move the cursor.
            let events = batch.events.len();
            let bad_lines = batch.bad.len() as u64;
            let quarantine_root = root.clone();
            let committed = tokio::task::spawn_blocking(move || {
                let result = job.commit(&quarantine_root, &batch);
                (job, result)
            })
            .await;
            let (returned, result) = match committed {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::error!(error = %err, "audit replay commit task failed");
                    return Progress::Paused;
                }
            };
            job = returned;
            if let Err(err) = result {
                tracing::error!(segment = %job.path.display(), error = %err, "audit replay cursor update failed");
                return Progress::Paused;
            }
            self.shared.count_replayed(events);
            self.shared.count_quarantined(bad_lines);
            if job.eof {
                let path = job.path.clone();
                let deleted = tokio::task::spawn_blocking(move || job.delete()).await;
                return match deleted {
                    Ok(Ok(())) => {
                        tracing::info!(segment = %path.display(), "audit segment replayed and deleted");
                        Progress::Drained
                    }
                    Ok(Err(err)) => {
                        tracing::error!(segment = %path.display(), error = %err, "deleting a replayed segment failed");
                        Progress::Paused
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "audit replay delete task failed");
                        Progress::Paused
                    }
                };
            }
            // Rate cap: `events` lines take at least events / rate seconds.
            let floor = Duration::from_micros((events as u64).saturating_mul(1_000_000) / rate);
            sleep_until(started + floor).await;
        }
    }
}

/// One segment being replayed; holds the exclusive lock for its lifetime.
pub(crate) struct ReplayJob {
    path: PathBuf,
    reader: BufReader<File>,
    /// Byte offset of the next unread line.
    offset: u64,
    /// The last read reached the end of the file.
    eof: bool,
    /// Quarantine tag prefix: `<subdir>.<segment stem>`.
    tag: String,
}

/// Lines read for one pipelined batch.
pub(crate) struct ReplayBatch {
    events: Vec<SignedAuditEvent>,
    /// Unparseable lines with their start offsets.
    bad: Vec<(u64, Vec<u8>)>,
    /// Offset after the last line read.
    end: u64,
}

/// Lists sealed segments of every subdirectory, oldest name first, and
/// returns the first one this process can lock. `None` when there is none.
pub(crate) fn take_oldest_segment(root: &Path) -> io::Result<Option<ReplayJob>> {
    for path in list_sealed_segments(root)? {
        match ReplayJob::open(&path) {
            Ok(Some(job)) => return Ok(Some(job)),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(segment = %path.display(), error = %err, "cannot open audit segment for replay");
            }
        }
    }
    Ok(None)
}

/// Sealed segments under every subdirectory of `root` (except
/// `quarantine/`), sorted by file name (creation time) then path.
pub(crate) fn list_sealed_segments(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for (_name, dir) in instance_dirs(root)? {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) => {
                tracing::debug!(dir = %dir.display(), error = %err, "skipping unreadable replay dir");
                continue;
            }
        };
        for entry in entries {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if is_sealed_segment_name(&file_name) {
                found.push((file_name, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

impl ReplayJob {
    /// Opens and locks `path`; `None` when another process holds it or it
    /// is gone.
    fn open(path: &Path) -> io::Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        if !try_lock_exclusive(&file)? {
            return Ok(None);
        }
        // Another replayer may have drained and deleted it between our
        // open and our lock: replay only the file still at `path`.
        let ours = file.metadata()?;
        match fs::metadata(path) {
            Ok(there) if there.ino() == ours.ino() && there.dev() == ours.dev() => {}
            Ok(_) => return Ok(None),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        }
        let offset = read_cursor(&cursor_path(path))?;
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(offset))?;
        let subdir = path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".ndjson").to_owned())
            .unwrap_or_default();
        Ok(Some(Self {
            path: path.to_owned(),
            reader,
            offset,
            eof: false,
            tag: format!("{subdir}.{stem}"),
        }))
    }

    /// Reads up to `max` event lines (skipping the header at offset 0).
    fn read_batch(&mut self, max: usize) -> io::Result<ReplayBatch> {
        let mut batch = ReplayBatch {
            events: Vec::new(),
            bad: Vec::new(),
            end: self.offset,
        };
        let mut line = Vec::new();
        while batch.events.len() < max {
            let start = batch.end;
            line.clear();
            let (consumed, complete) = read_line_limited(&mut self.reader, &mut line)?;
            if consumed == 0 {
                self.eof = true;
                break;
            }
            batch.end += consumed;
            let text = if complete {
                &line[..line.len() - 1]
            } else {
                &line[..]
            };
            if text.is_empty() {
                continue;
            }
            if start == 0 && SegmentHeader::parse(text).is_some() {
                continue;
            }
            match parse_event_line(text) {
                Some(event) => batch.events.push(event),
                None => batch.bad.push((start, text.to_vec())),
            }
        }
        Ok(batch)
    }

    /// After Redis acknowledged `batch`: quarantine its bad lines, then
    /// persist the cursor (temporary file, fsync, rename).
    fn commit(&mut self, root: &Path, batch: &ReplayBatch) -> io::Result<()> {
        if !batch.bad.is_empty() {
            for (offset, line) in &batch.bad {
                let tag = format!("{}.offset-{offset}", self.tag);
                let copy = quarantine_line(root, &tag, line)?;
                tracing::error!(
                    segment = %self.path.display(),
                    offset,
                    quarantined_as = %copy.display(),
                    "unparseable audit replay line quarantined"
                );
            }
            sync_dir(&root.join(QUARANTINE_DIR))?;
        }
        if batch.end != self.offset {
            write_cursor(&self.path, batch.end)?;
            self.offset = batch.end;
        }
        Ok(())
    }

    /// Deletes the drained segment and its cursor: unlink, fsync the
    /// directory.
    fn delete(self) -> io::Result<()> {
        fs::remove_file(&self.path)?;
        match fs::remove_file(cursor_path(&self.path)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Reads one line into `line` (LF included when present), at most
/// [`MAX_LINE_BYTES`] + 1 bytes kept; the rest of an oversized line is
/// consumed and discarded. Returns (bytes consumed, ended with LF).
fn read_line_limited(reader: &mut BufReader<File>, line: &mut Vec<u8>) -> io::Result<(u64, bool)> {
    let limit = (MAX_LINE_BYTES + 1) as u64;
    let mut consumed = (&mut *reader).take(limit).read_until(b'\n', line)? as u64;
    if line.last() == Some(&b'\n') || consumed < limit {
        return Ok((consumed, line.last() == Some(&b'\n')));
    }
    // Oversized: skip to the end of the line.
    let mut sink = Vec::new();
    loop {
        sink.clear();
        let n = (&mut *reader).take(limit).read_until(b'\n', &mut sink)? as u64;
        consumed += n;
        if n == 0 || sink.last() == Some(&b'\n') {
            break;
        }
    }
    Ok((consumed, false))
}

fn read_cursor(path: &Path) -> io::Result<u64> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse::<u64>().unwrap_or_else(|_bad| {
            tracing::warn!(cursor = %path.display(), "unreadable replay cursor; replaying the segment from its start");
            0
        })),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err),
    }
}

fn write_cursor(segment: &Path, offset: u64) -> io::Result<()> {
    let cursor = cursor_path(segment);
    let mut tmp_name = cursor.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mut file = create_private_file(&tmp)?;
    file.write_all(format!("{offset}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, &cursor)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{ReplayJob, list_sealed_segments, take_oldest_segment, write_cursor};
    use crate::audit::event::AuditEvent;
    use crate::audit::segment::{SegmentHeader, push_event_line};

    fn write_segment(path: &std::path::Path, events: usize) -> Vec<Vec<u8>> {
        let mut bytes = SegmentHeader::new("sts", "i0").to_line().unwrap();
        let mut lines = Vec::new();
        for _ in 0..events {
            let mut line = Vec::new();
            push_event_line(&mut line, &AuditEvent::new("z", "t").sign(None)).unwrap();
            bytes.extend_from_slice(&line);
            lines.push(line);
        }
        fs::write(path, bytes).unwrap();
        lines
    }

    #[test]
    fn oldest_segment_of_any_instance_comes_first_and_locked_ones_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["sts-a", "gateway-b", "quarantine"] {
            fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        let newer = tmp.path().join("sts-a/seg-0000000000002-000000.ndjson");
        let older = tmp.path().join("gateway-b/seg-0000000000001-000005.ndjson");
        write_segment(&newer, 1);
        write_segment(&older, 1);
        write_segment(
            &tmp.path()
                .join("quarantine/seg-0000000000000-000000.ndjson"),
            1,
        );
        fs::write(
            tmp.path()
                .join("sts-a/seg-0000000000000-000001.ndjson.open"),
            b"",
        )
        .unwrap();

        assert_eq!(
            list_sealed_segments(tmp.path()).unwrap(),
            vec![older.clone(), newer.clone()]
        );
        let first = take_oldest_segment(tmp.path()).unwrap().unwrap();
        assert_eq!(first.path, older);
        // While `first` holds its lock, the next one is taken.
        let second = take_oldest_segment(tmp.path()).unwrap().unwrap();
        assert_eq!(second.path, newer);
    }

    #[test]
    fn batches_resume_from_the_cursor() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("sts-a")).unwrap();
        let path = tmp.path().join("sts-a/seg-0000000000001-000000.ndjson");
        let lines = write_segment(&path, 5);

        let mut job = ReplayJob::open(&path).unwrap().unwrap();
        let batch = job.read_batch(2).unwrap();
        assert_eq!(batch.events.len(), 2);
        assert!(!job.eof);
        job.commit(tmp.path(), &batch).unwrap();
        drop(job);

        let mut job = ReplayJob::open(&path).unwrap().unwrap();
        let batch = job.read_batch(10).unwrap();
        assert_eq!(batch.events.len(), 3);
        assert!(job.eof);
        let mut third = Vec::new();
        push_event_line(&mut third, &batch.events[0]).unwrap();
        assert_eq!(third, lines[2]);
        job.commit(tmp.path(), &batch).unwrap();
        job.delete().unwrap();
        assert_eq!(fs::read_dir(tmp.path().join("sts-a")).unwrap().count(), 0);
    }

    #[test]
    fn cursor_write_replaces_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let segment = tmp.path().join("seg-0000000000001-000000.ndjson");
        write_cursor(&segment, 10).unwrap();
        write_cursor(&segment, 20).unwrap();
        let cursor = tmp.path().join("seg-0000000000001-000000.ndjson.cursor");
        assert_eq!(fs::read_to_string(cursor).unwrap(), "20\n");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
