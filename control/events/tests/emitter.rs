//! The audit emitter against the real Redis on 127.0.0.1:6379 and real
//! replay directories: delivery, batching, spill, replay, recovery,
//! quarantine, refusal, and callers that never wait.
//!
//! Every test uses its own stream name (`test:control-events:<uuid>`) and
//! its own temporary replay directory, and deletes its stream.

use std::collections::HashSet;
use std::error::Error;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use control_crypto::{HmacKey, verify_hmac_sha256_hex};
use control_events::audit::{
    AuditDecision, AuditEmitter, AuditEmitterConfig, AuditEvent, AuditUnavailable,
};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type TestResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Nothing listens on port 1: connections are refused at once.
const DEAD_REDIS_URL: &str = "redis://127.0.0.1:1/";
const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const WAIT: Duration = Duration::from_secs(20);

fn key() -> TestResult<HmacKey> {
    Ok(HmacKey::from_hex(KEY_HEX)?)
}

fn unique_stream() -> String {
    format!("test:control-events:{}", uuid::Uuid::new_v4().simple())
}

fn test_config(root: &Path, instance: &str, stream: &str) -> TestResult<AuditEmitterConfig> {
    let mut config = AuditEmitterConfig::new("sts", instance);
    config.stream = stream.to_owned();
    config.hmac_key = Some(key()?);
    config.replay_dir = root.to_owned();
    config.replay_interval = Duration::from_millis(100);
    config.circuit_probe_interval = Duration::from_millis(200);
    config.dir_probe_interval = Duration::from_millis(200);
    config.shutdown_grace = Duration::from_secs(2);
    Ok(config)
}

/// A running emitter and the means to stop it.
struct Running {
    emitter: AuditEmitter,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn start(config: AuditEmitterConfig, url: &str) -> TestResult<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let client = redis::Client::open(url)?;
        let (emitter, task) = AuditEmitter::spawn(config, client, async move {
            let _either_way = stopped.await;
        })
        .await;
        Ok(Self {
            emitter,
            stop: Some(stop),
            task,
        })
    }

    async fn shutdown(mut self) -> TestResult<()> {
        if let Some(stop) = self.stop.take() {
            let _already_stopped = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task).await??;
        Ok(())
    }
}

async fn redis() -> TestResult<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(REDIS_URL)?
        .get_multiplexed_async_connection()
        .await?)
}

async fn xlen(stream: &str) -> TestResult<u64> {
    let mut conn = redis().await?;
    Ok(redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await?)
}

/// `(id, data, sig)` of every entry, in stream order.
async fn entries(stream: &str) -> TestResult<Vec<(String, String, String)>> {
    let mut conn = redis().await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let mut out = Vec::new();
    for entry in reply.ids {
        assert_eq!(entry.map.len(), 3, "exactly id, data, sig");
        let field = |name: &str| -> TestResult<String> {
            entry
                .get::<String>(name)
                .ok_or_else(|| format!("entry without {name}").into())
        };
        out.push((field("id")?, field("data")?, field("sig")?));
    }
    Ok(out)
}

async fn delete_stream(stream: &str) -> TestResult<()> {
    let mut conn = redis().await?;
    let _deleted: u64 = redis::cmd("DEL").arg(stream).query_async(&mut conn).await?;
    Ok(())
}

/// Polls `check` every 20 ms until it holds or [`WAIT`] passes.
async fn wait_until<F, Fut>(what: &str, mut check: F) -> TestResult<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = TestResult<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Files (recursively) under `dir`, excluding `quarantine/`.
fn segment_files(dir: &Path) -> TestResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "quarantine") {
                continue;
            }
            out.extend(segment_files(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn sample_event(n: usize) -> AuditEvent {
    AuditEvent::new("zone-1", "token_exchange")
        .request_id(format!("req-{n}"))
        .decision(AuditDecision::Allow)
        .policy_set_id("ps-1")
        .metadata_json(serde_json::json!({ "n": n, "text": "line\nbreak \"quoted\"" }))
}

/// Writes a segment file by hand, as a crashed process would have left it.
fn handmade_segment(
    path: &Path,
    events: &[control_events::audit::SignedAuditEvent],
    middle_garbage: Option<&str>,
    torn_tail: Option<&str>,
) -> TestResult<()> {
    let mut text = String::from(
        r#"{"caracal_replay":1,"service":"sts","instance":"old","created_at":"2026-05-21T12:00:00.000000Z"}"#,
    );
    text.push('\n');
    for (i, event) in events.iter().enumerate() {
        text.push_str(&serde_json::to_string(&serde_json::json!({
            "id": event.id(), "data": event.data(), "sig": event.sig(),
        }))?);
        text.push('\n');
        if i == 0
            && let Some(garbage) = middle_garbage
        {
            text.push_str(garbage);
            text.push('\n');
        }
    }
    if let Some(torn) = torn_tail {
        text.push_str(torn);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, text)?;
    Ok(())
}

/// A TCP proxy to Redis that can be switched off (connections refused and
/// cut), standing in for Redis going away and coming back.
struct SwitchableProxy {
    url: String,
    up: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl SwitchableProxy {
    async fn start() -> TestResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("redis://{}/", listener.local_addr()?);
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (flag, registry) = (Arc::clone(&up), Arc::clone(&links));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:6379").await {
                        let _closed = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut all) = registry.lock() {
                    all.push(link);
                }
            }
        });
        Ok(Self {
            url,
            up,
            links,
            accept,
        })
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up && let Ok(mut all) = self.links.lock() {
            for link in all.drain(..) {
                link.abort();
            }
        }
    }
}

impl Drop for SwitchableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_up(false);
    }
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn events_reach_the_stream_with_id_data_and_a_verifiable_sig() {
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let running = Running::start(
        test_config(root.path(), "deliver", &stream).unwrap(),
        REDIS_URL,
    )
    .await
    .unwrap();
    assert!(running.emitter.health().redis_ok);

    let mut sent = Vec::new();
    for n in 0..3 {
        let event = sample_event(n);
        sent.push(event.id().to_owned());
        let slot = running.emitter.reserve().unwrap();
        assert!(!slot.is_spill());
        slot.emit(event);
    }
    wait_until("3 entries", || async { Ok(xlen(&stream).await? == 3) })
        .await
        .unwrap();

    let key = key().unwrap();
    let got = entries(&stream).await.unwrap();
    for ((id, data, sig), expected_id) in got.iter().zip(&sent) {
        assert_eq!(id, expected_id);
        assert!(
            verify_hmac_sha256_hex(&key, &[data.as_bytes()], sig),
            "sig over exact data"
        );
        let json: Value = serde_json::from_str(data).unwrap();
        assert_eq!(json["id"], *id);
        assert_eq!(json["zone_id"], "zone-1");
        assert_eq!(json["decision"], "allow");
        assert_eq!(json.as_object().unwrap().len(), 13);
        let at = json["occurred_at"].as_str().unwrap();
        assert_eq!(at.len(), 27, "{at}");
        assert!(at.ends_with('Z'));
    }
    let health = running.emitter.health();
    assert_eq!(health.xadded_total, 3);
    assert_eq!(health.spilled_total, 0);
    assert_eq!(health.ready_failure(), None);

    running.shutdown().await.unwrap();
    assert!(
        segment_files(root.path()).unwrap().is_empty(),
        "nothing spilled"
    );
    delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn a_burst_is_sent_as_pipelined_batches_of_500_in_order() {
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let running = Running::start(
        test_config(root.path(), "batch", &stream).unwrap(),
        REDIS_URL,
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for n in 0..1000 {
        let event = sample_event(n);
        ids.push(event.id().to_owned());
        running.emitter.emit(event).unwrap();
    }
    wait_until("1000 entries", || async {
        Ok(xlen(&stream).await? == 1000)
    })
    .await
    .unwrap();
    let got: Vec<String> = entries(&stream)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(got, ids);
    // This test runs on one thread and emits without yielding, so the writer
    // finds all 1000 queued and sends exactly two full pipelines.
    assert_eq!(running.emitter.health().xadd_batches_total, 2);
    running.shutdown().await.unwrap();
    delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn unreachable_redis_spills_to_segments_that_a_second_emitter_replays_exactly() {
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let key = key().unwrap();

    // 1. Redis unreachable: events spill.
    let first = Running::start(
        test_config(root.path(), "spill", &stream).unwrap(),
        DEAD_REDIS_URL,
    )
    .await
    .unwrap();
    let health = first.emitter.health();
    assert!(!health.redis_ok);
    assert!(health.replay_writable);
    let mut ids = Vec::new();
    for n in 0..7 {
        let event = sample_event(n);
        ids.push(event.id().to_owned());
        first.emitter.emit(event).unwrap();
    }
    wait_until("7 spilled", || async {
        Ok(first.emitter.health().spilled_total == 7)
    })
    .await
    .unwrap();

    let dir = root.path().join("sts-spill");
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files = segment_files(root.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let segment = &files[0];
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    // seg-<13 digits>-<6 digits>.ndjson(.open)
    let stem = name.strip_prefix("seg-").unwrap();
    assert!(stem[..13].bytes().all(|b| b.is_ascii_digit()), "{name}");
    assert_eq!(&stem[13..14], "-");
    assert!(stem[14..20].bytes().all(|b| b.is_ascii_digit()), "{name}");
    assert!(stem[20..].starts_with(".ndjson"), "{name}");
    assert_eq!(
        fs::metadata(segment).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let text = fs::read_to_string(segment).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["caracal_replay"], 1);
    assert_eq!(header["service"], "sts");
    assert_eq!(header["instance"], "spill");
    assert!(
        lines[0].starts_with(
            r#"{"caracal_replay":1,"service":"sts","instance":"spill","created_at":""#
        )
    );
    assert_eq!(header["created_at"].as_str().unwrap().len(), 27);
    let mut spilled = Vec::new();
    for (line, id) in lines[1..].iter().zip(&ids) {
        assert!(line.starts_with(r#"{"id":""#), "{line}");
        let value: Value = serde_json::from_str(line).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 3);
        let (data, sig) = (
            object["data"].as_str().unwrap(),
            object["sig"].as_str().unwrap(),
        );
        assert_eq!(object["id"], *id);
        assert!(verify_hmac_sha256_hex(&key, &[data.as_bytes()], sig));
        spilled.push((id.clone(), data.to_owned(), sig.to_owned()));
    }

    // Graceful shutdown seals the segment.
    first.shutdown().await.unwrap();
    let files = segment_files(root.path()).unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().ends_with(".ndjson"), "{files:?}");
    assert_eq!(fs::read_to_string(&files[0]).unwrap(), text);

    // 2. Another instance with Redis adopts and replays the segment.
    let second = Running::start(
        test_config(root.path(), "adopter", &stream).unwrap(),
        REDIS_URL,
    )
    .await
    .unwrap();
    wait_until("7 replayed", || async { Ok(xlen(&stream).await? == 7) })
        .await
        .unwrap();
    wait_until("segment deleted", || async {
        Ok(segment_files(root.path())?.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(
        entries(&stream).await.unwrap(),
        spilled,
        "same id, data and sig, in order"
    );
    assert_eq!(second.emitter.health().replayed_total, 7);
    second.shutdown().await.unwrap();
    delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn leftover_open_segment_with_a_torn_last_line_is_recovered_and_replayed() {
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let key = key().unwrap();
    let events: Vec<_> = (0..3).map(|n| sample_event(n).sign(Some(&key))).collect();
    let leftover = root
        .path()
        .join("sts-crashed/seg-1700000000000-000000.ndjson.open");
    handmade_segment(
        &leftover,
        &events,
        None,
        Some(r#"{"id":"torn","data":"{\"id\""#),
    )
    .unwrap();

    // Same instance name: recovered at start-up.
    let running = Running::start(
        test_config(root.path(), "crashed", &stream).unwrap(),
        REDIS_URL,
    )
    .await
    .unwrap();
    wait_until("3 replayed", || async { Ok(xlen(&stream).await? == 3) })
        .await
        .unwrap();
    wait_until("segment deleted", || async {
        Ok(segment_files(root.path())?.is_empty())
    })
    .await
    .unwrap();
    let got = entries(&stream).await.unwrap();
    let expected: Vec<_> = events
        .iter()
        .map(|e| (e.id().to_owned(), e.data().to_owned(), e.sig().to_owned()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(running.emitter.health().quarantined_total, 0);
    running.shutdown().await.unwrap();
    delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn corrupt_middle_line_is_quarantined_and_the_others_replayed() {
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let key = key().unwrap();
    let events: Vec<_> = (0..2).map(|n| sample_event(n).sign(Some(&key))).collect();
    let leftover = root
        .path()
        .join("sts-corrupt/seg-1700000000000-000001.ndjson.open");
    handmade_segment(&leftover, &events, Some("{\"id\":\"x\", not json"), None).unwrap();

    let running = Running::start(
        test_config(root.path(), "corrupt", &stream).unwrap(),
        REDIS_URL,
    )
    .await
    .unwrap();
    assert_eq!(running.emitter.health().quarantined_total, 1);
    wait_until("2 replayed", || async { Ok(xlen(&stream).await? == 2) })
        .await
        .unwrap();
    let ids: Vec<String> = entries(&stream)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        ids,
        vec![events[0].id().to_owned(), events[1].id().to_owned()]
    );

    let quarantine: Vec<_> = fs::read_dir(root.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantine.len(), 1);
    assert_eq!(
        fs::read_to_string(&quarantine[0]).unwrap(),
        "{\"id\":\"x\", not json\n"
    );
    running.shutdown().await.unwrap();
    delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn reserve_fails_only_when_redis_and_the_replay_volume_are_both_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let regular_file = tmp.path().join("not-a-directory");
    fs::write(&regular_file, b"x").unwrap();
    // Root runs the tests, so permissions cannot make a directory
    // unwritable; a path below a regular file can never be created.
    let unwritable = regular_file.join("replay");
    let stream = unique_stream();

    // Redis down, volume unwritable: refused.
    let neither = Running::start(
        test_config(&unwritable, "neither", &stream).unwrap(),
        DEAD_REDIS_URL,
    )
    .await
    .unwrap();
    let health = neither.emitter.health();
    assert!(!health.redis_ok && !health.replay_writable);
    assert!(!health.can_accept());
    assert_eq!(neither.emitter.reserve().unwrap_err(), AuditUnavailable);
    assert_eq!(neither.emitter.emit(sample_event(0)), Err(AuditUnavailable));
    let health = neither.emitter.health();
    assert!(health.evidence_lost);
    assert_eq!(health.refused_total, 2);
    assert_eq!(health.ready_failure(), Some("audit_evidence_lost"));
    neither.shutdown().await.unwrap();

    // Redis down, volume writable: accepted (spilled).
    let spill_root = tmp.path().join("replay");
    let volume_only = Running::start(
        test_config(&spill_root, "volume", &stream).unwrap(),
        DEAD_REDIS_URL,
    )
    .await
    .unwrap();
    volume_only.emitter.reserve().unwrap().emit(sample_event(1));
    wait_until("1 spilled", || async {
        Ok(volume_only.emitter.health().spilled_total == 1)
    })
    .await
    .unwrap();
    assert_eq!(volume_only.emitter.health().ready_failure(), None);
    volume_only.shutdown().await.unwrap();

    // Redis up, volume unwritable: accepted (sent), but not ready.
    let redis_only = Running::start(
        test_config(&unwritable, "redis", &stream).unwrap(),
        REDIS_URL,
    )
    .await
    .unwrap();
    let event = sample_event(2);
    let id = event.id().to_owned();
    redis_only.emitter.reserve().unwrap().emit(event);
    wait_until("1 entry", || async { Ok(xlen(&stream).await? == 1) })
        .await
        .unwrap();
    assert_eq!(entries(&stream).await.unwrap()[0].0, id);
    assert_eq!(
        redis_only.emitter.health().ready_failure(),
        Some("audit_replay_unavailable")
    );
    redis_only.shutdown().await.unwrap();
    delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn a_full_queue_spills_synchronously_instead_of_refusing() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let mut config = test_config(&tmp.path().join("replay"), "full", &stream).unwrap();
    config.buffer_capacity = 1;
    let running = Running::start(config, REDIS_URL).await.unwrap();

    let queued = running.emitter.reserve().unwrap();
    assert!(!queued.is_spill());
    assert_eq!(running.emitter.health().buffered, 1);
    let overflow = running.emitter.reserve().unwrap();
    assert!(overflow.is_spill());
    let overflow_event = sample_event(0);
    let overflow_id = overflow_event.id().to_owned();
    overflow.emit(overflow_event);
    // Synchronous: on disk and fsynced when `emit` returns.
    assert_eq!(running.emitter.health().spilled_total, 1);
    let files = segment_files(&tmp.path().join("replay")).unwrap();
    assert_eq!(files.len(), 1);
    assert!(
        fs::read_to_string(&files[0])
            .unwrap()
            .contains(&overflow_id)
    );

    let queued_event = sample_event(1);
    let queued_id = queued_event.id().to_owned();
    queued.emit(queued_event);
    // The queued event goes to Redis; the spilled one is replayed once its
    // segment is sealed (5 s of age), so both arrive without loss.
    wait_until("both events on the stream", || async {
        Ok(xlen(&stream).await? == 2)
    })
    .await
    .unwrap();
    let ids: HashSet<String> = entries(&stream)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(ids, HashSet::from([overflow_id, queued_id]));
    running.shutdown().await.unwrap();

    // Full queue and no writable volume: shed at admission.
    let regular_file = tmp.path().join("file");
    fs::write(&regular_file, b"x").unwrap();
    let mut config = test_config(&regular_file.join("replay"), "shed", &stream).unwrap();
    config.buffer_capacity = 1;
    let running = Running::start(config, REDIS_URL).await.unwrap();
    let held = running.emitter.reserve().unwrap();
    assert_eq!(running.emitter.reserve().unwrap_err(), AuditUnavailable);
    drop(held);
    assert!(running.emitter.reserve().is_ok());
    running.shutdown().await.unwrap();
    delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn callers_never_wait_for_a_stalled_redis() {
    // A "Redis" that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let black_hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let mut config = test_config(root.path(), "stalled", &stream).unwrap();
    config.xadd_timeout = Duration::from_millis(200);
    let running = Running::start(config, &url).await.unwrap();
    assert!(!running.emitter.health().redis_ok);

    // `emit` is synchronous: it cannot wait on Redis.
    for n in 0..50 {
        running.emitter.emit(sample_event(n)).unwrap();
    }
    // Sync mode waits only for acceptance by the volume.
    tokio::time::timeout(
        Duration::from_secs(5),
        running.emitter.emit_accepted(sample_event(50)),
    )
    .await
    .unwrap()
    .unwrap();
    wait_until("51 spilled", || async {
        Ok(running.emitter.health().spilled_total == 51)
    })
    .await
    .unwrap();
    assert_eq!(running.emitter.health().dropped_total, 0);
    running.shutdown().await.unwrap();
    black_hole.abort();
}

#[tokio::test]
async fn graceful_shutdown_drains_the_buffer() {
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let running = Running::start(
        test_config(root.path(), "drain", &stream).unwrap(),
        REDIS_URL,
    )
    .await
    .unwrap();
    for n in 0..300 {
        running.emitter.emit(sample_event(n)).unwrap();
    }
    running.shutdown().await.unwrap();
    assert_eq!(xlen(&stream).await.unwrap(), 300);
    delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_emitter_spills_while_redis_is_away_and_replays_when_it_returns() {
    let proxy = SwitchableProxy::start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let stream = unique_stream();
    let running = Running::start(
        test_config(root.path(), "flap", &stream).unwrap(),
        &proxy.url,
    )
    .await
    .unwrap();
    running.emitter.emit(sample_event(0)).unwrap();
    wait_until("first entry", || async { Ok(xlen(&stream).await? == 1) })
        .await
        .unwrap();

    proxy.set_up(false);
    for n in 1..=20 {
        running.emitter.emit(sample_event(n)).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("20 spilled", || async {
        Ok(running.emitter.health().spilled_total == 20)
    })
    .await
    .unwrap();
    assert!(!running.emitter.health().redis_ok);
    assert_eq!(xlen(&stream).await.unwrap(), 1);

    proxy.set_up(true);
    wait_until("all 21 on the stream", || async {
        Ok(xlen(&stream).await? == 21)
    })
    .await
    .unwrap();
    wait_until("segments deleted", || async {
        Ok(segment_files(root.path())?.is_empty())
    })
    .await
    .unwrap();
    let health = running.emitter.health();
    assert!(health.redis_ok);
    assert_eq!(health.replayed_total, 20);
    let ids: HashSet<String> = entries(&stream)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(ids.len(), 21);
    running.shutdown().await.unwrap();
    delete_stream(&stream).await.unwrap();
}
