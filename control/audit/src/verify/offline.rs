//! `caracal audit verify` (storage §8.9): every check of §8.6 over a database, a dump
//! (`--ndjson`) or an export (a directory or `s3://bucket/prefix`), with no service running. On exports it also checks
//! each object against its manifest, the chains across objects, and anchors across
//! retention gaps. Prints a report naming the first bad row; exit code 0 clean, 1 findings,
//! 2 usage or I/O error.
//!
//! Keys come from the environment (`AUDIT_HMAC_KEY` or the variable `--hmac-key-env`
//! names, `AUDIT_CHAIN_HMAC_KEY`, `AUDIT_HMAC_KEY_PREVIOUS`, each also as `_FILE`) and the
//! keyring file (`--keyring`, else `AUDIT_HMAC_KEYRING_FILE`). Without a key the HMAC and
//! signature checks are reported as skipped. Nothing of an event's content is printed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use chrono::{DateTime, Utc};
use control_crypto::HmacKey;
use control_model::ZoneId;
use control_store::audit::rows::{self, RowFilter};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use sha2::{Digest, Sha256};

use super::{
    AdminRow, AuditRow, ChainRow, Finding, Keyring, Link, SeenIds, Tally, Verifier,
    export::{self, Manifest, ManifestBuilder},
    object,
};
use crate::{
    config::{Lookup, read_keyring},
    objects::{ExportTarget, Object, ObjectStore, ObjectStoreError, S3Settings},
};

/// Exit code: every check passed.
pub const EXIT_CLEAN: i32 = 0;
/// Exit code: findings (tamper evidence, export objects that differ from their manifests).
pub const EXIT_FINDINGS: i32 = 1;
/// Exit code: usage or I/O error; nothing could be concluded.
pub const EXIT_ERROR: i32 = 2;

/// Rows read per page from a database.
const PAGE_ROWS: i64 = 1000;
/// Findings listed one by one in a report (all are counted).
const MAX_LISTED: usize = 1000;
/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The options of `caracal audit verify`. Exactly one source: `database_url`, `ndjson` or
/// `export`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfflineArgs {
    /// `--database-url`: read the live tables (read only; as `caracal_audit` or
    /// `caracal_maintenance`).
    pub database_url: Option<String>,
    /// `--ndjson FILE`: one row per line (from `caracal audit dump`).
    pub ndjson: Option<PathBuf>,
    /// `--export DIR | s3://bucket/prefix`: an export (the bucket's endpoint and credentials
    /// come from the environment, as for the export leader: `AUDIT_EXPORT_S3_ENDPOINT`,
    /// `AWS_ACCESS_KEY_ID`, …).
    pub export: Option<PathBuf>,
    /// `--zone Z`: only this zone's chain (`*` for the global admin chain with `--admin`).
    pub zone: Option<String>,
    /// `--since TIME` (RFC 3339): only rows ingested (admin: created) at or after it; the
    /// row before each chain's first is taken as known.
    pub since: Option<String>,
    /// `--from-seq N`: only rows with `chain_seq >= N`.
    pub from_seq: Option<i64>,
    /// `--admin`: the admin chain (`admin_audit_events`) instead of the ledger.
    pub admin: bool,
    /// `--keyring FILE`: more keys, one hex key per line.
    pub keyring: Option<PathBuf>,
    /// `--hmac-key-env NAME`: the variable holding the key instead of `AUDIT_HMAC_KEY`.
    pub hmac_key_env: Option<String>,
    /// `--json`: print the report as one JSON object.
    pub json: bool,
}

/// A partial chain start of a file source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialStart {
    /// The chain (zone id or `*`).
    pub zone_id: String,
    /// The `chain_seq` it starts at.
    pub chain_seq: i64,
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The source, e.g. `database`, `ndjson dump.ndjson`, `export /backups/audit`.
    pub source: String,
    /// `audit_events` or `admin_audit_events`.
    pub table: &'static str,
    /// How many keys were configured.
    pub keys: usize,
    /// Chains seen.
    pub chains: usize,
    /// What was checked and skipped.
    pub tally: Tally,
    /// Findings in all.
    pub findings_total: u64,
    /// Findings by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// The first findings, in the order found.
    pub findings: Vec<Finding>,
    /// The first bad row.
    pub first_bad_row: Option<Finding>,
    /// Problems with the source itself: objects that differ from their manifests, missing
    /// manifests, unreadable lines, bad anchor files.
    pub problems: Vec<String>,
    /// Chains of a file source that start after `chain_seq` 1 with nothing before them.
    pub partial_starts: Vec<PartialStart>,
    /// No finding and no problem.
    pub clean: bool,
}

impl Report {
    fn new(source: String, admin: bool, keys: usize) -> Self {
        Self {
            source,
            table: if admin {
                "admin_audit_events"
            } else {
                "audit_events"
            },
            keys,
            chains: 0,
            tally: Tally::default(),
            findings_total: 0,
            by_kind: BTreeMap::new(),
            findings: Vec::new(),
            first_bad_row: None,
            problems: Vec::new(),
            partial_starts: Vec::new(),
            clean: true,
        }
    }

    fn add(&mut self, findings: impl IntoIterator<Item = Finding>) {
        for finding in findings {
            self.findings_total += 1;
            *self
                .by_kind
                .entry(finding.kind.as_str().to_owned())
                .or_default() += 1;
            if self.first_bad_row.is_none() {
                self.first_bad_row = Some(finding.clone());
            }
            if self.findings.len() < MAX_LISTED {
                self.findings.push(finding);
            }
        }
    }

    fn finish(mut self, verifier: &Verifier) -> Self {
        self.tally = verifier.tally().clone();
        self.chains = verifier.chains();
        self.partial_starts = verifier
            .partial_starts()
            .iter()
            .map(|(zone_id, chain_seq)| PartialStart {
                zone_id: zone_id.clone(),
                chain_seq: *chain_seq,
            })
            .collect();
        self.clean = self.findings_total == 0 && self.problems.is_empty();
        self
    }
}

/// A usage or I/O error: the message names the option or file, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

/// Runs `caracal audit verify` with the process environment; writes the report to `out`
/// and returns the exit code.
pub async fn offline(args: OfflineArgs, out: &mut dyn Write) -> i32 {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    offline_with_env(args, out, &env).await
}

/// [`offline`] with the environment read through `env`.
pub async fn offline_with_env(args: OfflineArgs, out: &mut dyn Write, env: Lookup<'_>) -> i32 {
    let json = args.json;
    let outcome = match prepare(args, env) {
        Ok(plan) => run(plan).await,
        Err(error) => Err(error),
    };
    let (code, written) = match outcome {
        Ok(report) => {
            let code = if report.clean {
                EXIT_CLEAN
            } else {
                EXIT_FINDINGS
            };
            (code, write_report(out, &report, json))
        }
        Err(error) => (EXIT_ERROR, write_error(out, &error, json)),
    };
    match written {
        Ok(()) => code,
        Err(_unwritable) => EXIT_ERROR,
    }
}

/// Where to read and what to admit, validated.
#[derive(Debug)]
struct Plan {
    source: Source,
    filter: RowFilter,
    admin: bool,
    keys: Keyring,
}

#[derive(Debug)]
enum Source {
    Database(String),
    Ndjson(PathBuf),
    Export(ExportTarget),
}

fn prepare(args: OfflineArgs, env: Lookup<'_>) -> Result<Plan, VerifyError> {
    let usage = |text: &str| Err(VerifyError(text.to_owned()));
    let source = match (args.database_url, args.ndjson, args.export) {
        (Some(url), None, None) => Source::Database(url),
        (None, Some(path), None) => Source::Ndjson(path),
        (None, None, Some(export)) => Source::Export(export_target(&export, env)?),
        _ => return usage("exactly one of --database-url, --ndjson and --export is required"),
    };
    if matches!(source, Source::Export(_)) && args.admin {
        return usage(
            "--admin: exports hold only audit_events; verify the admin chain with --database-url or --ndjson",
        );
    }
    let since = match args.since.as_deref() {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|_malformed| {
                    VerifyError(
                        "--since must be an RFC 3339 time, e.g. 2026-05-21T00:00:00Z".to_owned(),
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    if args.from_seq.is_some_and(|seq| seq < 1) {
        return usage("--from-seq must be 1 or more");
    }
    if let Some(zone) = &args.zone {
        let global = args.admin && zone == "*";
        if !global && ZoneId::parse(zone).is_err() {
            return usage("--zone must be a zone id (or * with --admin)");
        }
    }
    let keys = load_keys(args.keyring.as_deref(), args.hmac_key_env.as_deref(), env)?;
    Ok(Plan {
        source,
        filter: RowFilter {
            zone: args.zone,
            since,
            until: None,
            from_seq: args.from_seq,
        },
        admin: args.admin,
        keys,
    })
}

/// `--export`: a directory, or `s3://bucket/prefix` with the rest from the environment.
fn export_target(export: &Path, env: Lookup<'_>) -> Result<ExportTarget, VerifyError> {
    let text = export.to_string_lossy();
    let Some(location) = text.strip_prefix("s3://") else {
        return Ok(ExportTarget::Dir(export.to_path_buf()));
    };
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    S3Settings::from_env(env, bucket, prefix)
        .map(|settings| ExportTarget::S3(Box::new(settings)))
        .map_err(|error| VerifyError(format!("--export {text}: {error}")))
}

/// The keys of the environment and the keyring file.
fn load_keys(
    keyring: Option<&Path>,
    key_env: Option<&str>,
    env: Lookup<'_>,
) -> Result<Keyring, VerifyError> {
    let mut ring = Keyring::default();
    let primary = key_env.unwrap_or("AUDIT_HMAC_KEY");
    if key_env.is_some() && env(primary).is_none() && env(&format!("{primary}_FILE")).is_none() {
        return Err(VerifyError(format!("--hmac-key-env: {primary} is not set")));
    }
    for var in [primary, "AUDIT_CHAIN_HMAC_KEY", "AUDIT_HMAC_KEY_PREVIOUS"] {
        match HmacKey::from_lookup(var, env) {
            Ok(Some(key)) => ring.add(key),
            Ok(None) => {}
            Err(error) => return Err(VerifyError(error.to_string())),
        }
    }
    let file = keyring
        .map(|path| (path.to_string_lossy().into_owned(), "--keyring"))
        .or_else(|| env("AUDIT_HMAC_KEYRING_FILE").map(|path| (path, "AUDIT_HMAC_KEYRING_FILE")));
    if let Some((path, origin)) = file {
        let keys = read_keyring(&path).map_err(|error| {
            VerifyError(
                error
                    .to_string()
                    .replacen("AUDIT_HMAC_KEYRING_FILE", origin, 1),
            )
        })?;
        for key in keys {
            ring.add(key);
        }
    }
    Ok(ring)
}

async fn run(plan: Plan) -> Result<Report, VerifyError> {
    match &plan.source {
        Source::Database(url) => from_database(url, &plan).await,
        Source::Ndjson(path) => from_ndjson(path, &plan),
        Source::Export(target) => from_export(target, &plan).await,
    }
}

// ---------------------------------------------------------------------------------------
// Database

async fn from_database(url: &str, plan: &Plan) -> Result<Report, VerifyError> {
    let options = PgConnectOptions::from_str(url).map_err(|_malformed| {
        VerifyError("--database-url is not a valid postgres:// URL".to_owned())
    })?;
    let mut conn =
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                return Err(VerifyError(format!(
                    "cannot connect to the database: {}",
                    describe(&error)
                )));
            }
            Err(_elapsed) => {
                return Err(VerifyError(
                    "cannot connect to the database: timed out".to_owned(),
                ));
            }
        };
    let query =
        |error: sqlx::Error| VerifyError(format!("database read failed: {}", describe(&error)));
    rows::begin_verifier_read(&mut conn).await.map_err(query)?;
    let mut report = Report::new("database".to_owned(), plan.admin, plan.keys.len());
    let mut verifier = Verifier::new(plan.keys.clone());
    let mut cursor: Option<rows::Cursor> = None;
    loop {
        if plan.admin {
            let page = rows::admin_page(&mut conn, &plan.filter, cursor.as_ref(), PAGE_ROWS)
                .await
                .map_err(query)?;
            let Some(last) = page.last() else { break };
            cursor = Some((
                last.zone_id.clone().unwrap_or_else(|| "*".to_owned()),
                last.chain_seq,
            ));
            for stored in page {
                let row = AdminRow::from(stored);
                if verifier.needs_predecessor(&row)
                    && let Some(previous) =
                        rows::admin_row(&mut conn, row.chain(), row.chain_seq - 1)
                            .await
                            .map_err(query)?
                {
                    verifier.seed(row.chain(), Link::of(&AdminRow::from(previous)));
                }
                report.add(verifier.check(&row));
            }
        } else {
            let page = rows::page(&mut conn, &plan.filter, cursor.as_ref(), PAGE_ROWS)
                .await
                .map_err(query)?;
            let Some(last) = page.last() else { break };
            cursor = Some((last.zone_id.clone(), last.chain_seq));
            let findings = crate::sweep::check_stored_page(&mut conn, &mut verifier, page)
                .await
                .map_err(query)?;
            report.add(findings);
        }
    }
    rows::end_verifier_read(&mut conn).await.map_err(query)?;
    let _closed = conn.close().await;
    Ok(report.finish(&verifier))
}

/// A database error described without the URL.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(_) => "TLS handshake failed".to_owned(),
        sqlx::Error::Configuration(_) => "invalid connection settings".to_owned(),
        sqlx::Error::Protocol(_) => "protocol error".to_owned(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Files

/// Whether `filter` admits a row; rows of other chains are not wanted at all.
enum Admit {
    Check,
    PassOver,
    Ignore,
}

fn admit<R: ChainRow>(row: &R, filter: &RowFilter, inserted_at: DateTime<Utc>) -> Admit {
    if filter
        .zone
        .as_deref()
        .is_some_and(|zone| zone != row.chain())
    {
        return Admit::Ignore;
    }
    let before_since = filter.since.is_some_and(|since| inserted_at < since);
    let before_seq = filter.from_seq.is_some_and(|from| row.chain_seq() < from);
    if before_since || before_seq {
        Admit::PassOver
    } else {
        Admit::Check
    }
}

/// Checks one row of a file source.
fn check_file_row<R: ChainRow>(
    row: &R,
    inserted_at: DateTime<Utc>,
    plan: &Plan,
    verifier: &mut Verifier,
    seen: &mut SeenIds,
    anchors: &HashMap<(String, i64), export::AnchorRecord>,
    report: &mut Report,
) {
    match admit(row, &plan.filter, inserted_at) {
        Admit::Ignore => {}
        Admit::PassOver => verifier.pass_over(row),
        Admit::Check => {
            if verifier.needs_predecessor(row)
                && let Some(anchor) = anchors.get(&(row.chain().to_owned(), row.chain_seq() - 1))
            {
                verifier.seed(row.chain(), anchor.link());
            }
            report.add(verifier.check(row));
            report.add(seen.observe(row));
        }
    }
}

/// One line of a file: a row, or why it is not one (with no content quoted).
fn parse_line<R: DeserializeOwned>(line: &[u8]) -> Result<R, String> {
    serde_json::from_slice(line).map_err(|error| {
        let what = match error.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
            serde_json::error::Category::Data => "not a row of the expected columns",
            serde_json::error::Category::Io => "unreadable",
        };
        format!("{what} (column {})", error.column())
    })
}

/// Reads `reader` line by line: `each(line number, trimmed bytes)`; blank lines are passed
/// empty.
fn for_each_line(reader: impl BufRead, mut each: impl FnMut(u64, &[u8])) -> std::io::Result<()> {
    let mut reader = reader;
    let mut buffer = Vec::new();
    let mut number = 0u64;
    loop {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer)? == 0 {
            return Ok(());
        }
        number += 1;
        let trimmed = buffer.trim_ascii();
        each(number, trimmed);
    }
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, VerifyError> {
    std::fs::File::open(path)
        .map(|file| BufReader::with_capacity(1 << 20, file))
        .map_err(|error| VerifyError(format!("{}: {}", path.display(), error.kind())))
}

fn from_ndjson(path: &Path, plan: &Plan) -> Result<Report, VerifyError> {
    let reader = open(path)?;
    let mut report = Report::new(
        format!("ndjson {}", path.display()),
        plan.admin,
        plan.keys.len(),
    );
    let mut verifier = Verifier::new(plan.keys.clone()).accepting_partial_starts();
    let mut seen = SeenIds::default();
    let anchors = HashMap::new();
    let name = path.display().to_string();
    for_each_line(reader, |number, line| {
        if line.is_empty() {
            return;
        }
        if plan.admin {
            match parse_line::<AdminRow>(line) {
                Ok(row) => {
                    let at = row.created_at;
                    check_file_row(
                        &row,
                        at,
                        plan,
                        &mut verifier,
                        &mut seen,
                        &anchors,
                        &mut report,
                    );
                }
                Err(why) => report.problems.push(format!("{name} line {number}: {why}")),
            }
        } else {
            match parse_line::<AuditRow>(line) {
                Ok(row) => {
                    let at = row.ingested_at;
                    check_file_row(
                        &row,
                        at,
                        plan,
                        &mut verifier,
                        &mut seen,
                        &anchors,
                        &mut report,
                    );
                }
                Err(why) => report.problems.push(format!("{name} line {number}: {why}")),
            }
        }
    })
    .map_err(|error| VerifyError(format!("{name}: {}", error.kind())))?;
    Ok(report.finish(&verifier))
}

async fn from_export(target: &ExportTarget, plan: &Plan) -> Result<Report, VerifyError> {
    let store = ObjectStore::open(target).map_err(VerifyError)?;
    let names = store.list().await.map_err(|error| {
        VerifyError(format!(
            "{target}: not a readable export (no audit/ tree?): {error}"
        ))
    })?;
    let listing = export::classify(names);
    let read = |error: ObjectStoreError| VerifyError(error.to_string());
    let mut report = Report::new(format!("export {target}"), false, plan.keys.len());
    report.problems.extend(listing.problems.iter().cloned());
    for orphan in &listing.orphan_manifests {
        report.problems.push(format!(
            "{orphan}: manifest without its object (object deleted?)"
        ));
    }
    let mut anchors = HashMap::new();
    for name in &listing.anchor_files {
        if let Some(bytes) = store.get(name).await.map_err(read)? {
            export::read_anchors(name, &bytes, &mut anchors, &mut report.problems);
        }
    }
    let mut verifier = Verifier::new(plan.keys.clone()).accepting_partial_starts();
    let mut seen = SeenIds::default();
    let mut hours: HashSet<&str> = HashSet::new();
    for name in &listing.objects {
        if !hours.insert(name.rsplit('/').next().unwrap_or_default()) {
            report
                .problems
                .push(format!("{name}: a second object for the same hour"));
        }
        let manifest_name = export::manifest_name(name);
        let manifest = match store.get(&manifest_name).await.map_err(read)? {
            Some(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(manifest) => Some(manifest),
                Err(_malformed) => {
                    report
                        .problems
                        .push(format!("{manifest_name}: manifest is not valid"));
                    None
                }
            },
            None => {
                report.problems.push(format!("{name}: no manifest"));
                None
            }
        };
        let Some(object) = store.read(name).await.map_err(read)? else {
            report
                .problems
                .push(format!("{name}: listed but gone when read"));
            continue;
        };
        let mut described = ManifestBuilder::new();
        let mut each = |row: AuditRow| {
            described.add(&row);
            check_file_row(
                &row,
                row.ingested_at,
                plan,
                &mut verifier,
                &mut seen,
                &anchors,
                &mut report,
            );
        };
        let (sha, decoded) = match object {
            Object::File(mut file) => {
                let sha = file_sha256(&mut file)
                    .map_err(|error| VerifyError(format!("{name}: {}", error.kind())))?;
                (sha, object::decode(file, &mut each))
            }
            Object::Bytes(bytes) => (
                Sha256::digest(&bytes).into(),
                object::decode(bytes, &mut each),
            ),
        };
        match decoded {
            Ok(problems) => report
                .problems
                .extend(problems.iter().map(|why| format!("{name} {why}"))),
            Err(why) => report.problems.push(format!("{name}: {why}")),
        }
        if let Some(manifest) = manifest {
            compare_manifest(
                name,
                &manifest,
                &described.finish(sha),
                &mut report.problems,
            );
        }
    }
    Ok(report.finish(&verifier))
}

/// The SHA-256 of a file's bytes, read from its start; the file is left at its start.
fn file_sha256(file: &mut std::fs::File) -> std::io::Result<[u8; 32]> {
    use std::io::{Read, Seek};
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    file.rewind()?;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(buffer.get(..read).unwrap_or_default());
    }
    file.rewind()?;
    Ok(hasher.finalize().into())
}

/// Each difference between an object's manifest and what the object holds.
fn compare_manifest(
    name: &str,
    manifest: &Manifest,
    actual: &Manifest,
    problems: &mut Vec<String>,
) {
    if manifest.object_sha256 != actual.object_sha256 {
        problems.push(format!(
            "{name}: SHA-256 {} differs from the manifest's {}",
            actual.object_sha256, manifest.object_sha256
        ));
    }
    if manifest.rows != actual.rows {
        problems.push(format!(
            "{name}: {} rows, the manifest says {}",
            actual.rows, manifest.rows
        ));
    }
    for (zone, stated) in &manifest.zones {
        match actual.zones.get(zone) {
            None => problems.push(format!("{name}: zone {zone} is in the manifest but not in the object")),
            Some(found) if found != stated => problems.push(format!(
                "{name}: zone {zone} spans chain_seq {}..{} (last {}), the manifest says {}..{} (last {})",
                found.first_seq, found.last_seq, found.last_hash, stated.first_seq, stated.last_seq, stated.last_hash
            )),
            Some(_) => {}
        }
    }
    for zone in actual.zones.keys() {
        if !manifest.zones.contains_key(zone) {
            problems.push(format!(
                "{name}: zone {zone} is in the object but not in the manifest"
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Output

fn write_report(out: &mut dyn Write, report: &Report, json: bool) -> std::io::Result<()> {
    if json {
        let text = serde_json::to_string(report).map_err(std::io::Error::other)?;
        return writeln!(out, "{text}");
    }
    writeln!(
        out,
        "caracal audit verify: {} ({})",
        report.source, report.table
    )?;
    writeln!(
        out,
        "rows checked: {} in {} chain(s); keys configured: {}",
        report.tally.rows, report.chains, report.keys
    )?;
    let t = &report.tally;
    writeln!(
        out,
        "chain HMAC: {} verified, {} skipped",
        t.hmac_verified, t.hmac_skipped
    )?;
    if report.table == "audit_events" {
        writeln!(
            out,
            "ingest signature: {} verified, {} skipped",
            t.signatures_verified, t.signatures_skipped
        )?;
    }
    if report.keys == 0 && (t.hmac_skipped > 0 || t.signatures_skipped > 0) {
        writeln!(
            out,
            "note: no key configured (AUDIT_HMAC_KEY, AUDIT_CHAIN_HMAC_KEY, --keyring): HMACs and signatures were NOT verified"
        )?;
    }
    if t.anchors_used > 0 {
        writeln!(out, "retention gaps bridged by anchors: {}", t.anchors_used)?;
    }
    for start in &report.partial_starts {
        writeln!(
            out,
            "note: zone {} starts at chain_seq {} in this source (earlier rows are not in it)",
            start.zone_id, start.chain_seq
        )?;
    }
    if let Some(first) = &report.first_bad_row {
        writeln!(
            out,
            "FIRST BAD ROW: zone {} chain_seq {} id {}: {} ({})",
            first.zone_id, first.chain_seq, first.event_id, first.kind, first.detail
        )?;
    }
    if report.findings_total > 0 {
        let kinds: Vec<String> = report
            .by_kind
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        writeln!(
            out,
            "findings: {} ({})",
            report.findings_total,
            kinds.join(", ")
        )?;
        for finding in &report.findings {
            writeln!(
                out,
                "  {} zone={} chain_seq={} id={}: {}",
                finding.kind, finding.zone_id, finding.chain_seq, finding.event_id, finding.detail
            )?;
        }
        let listed = u64::try_from(report.findings.len()).unwrap_or(u64::MAX);
        if report.findings_total > listed {
            writeln!(out, "  … and {} more", report.findings_total - listed)?;
        }
    }
    if !report.problems.is_empty() {
        writeln!(out, "problems: {}", report.problems.len())?;
        for problem in &report.problems {
            writeln!(out, "  {problem}")?;
        }
    }
    if report.clean {
        writeln!(out, "result: OK, no findings")
    } else {
        writeln!(
            out,
            "result: FAILED, {} finding(s), {} problem(s)",
            report.findings_total,
            report.problems.len()
        )
    }
}

fn write_error(out: &mut dyn Write, error: &VerifyError, json: bool) -> std::io::Result<()> {
    if json {
        let text = serde_json::json!({ "error": error.0, "exit_code": EXIT_ERROR });
        writeln!(out, "{text}")
    } else {
        writeln!(out, "caracal audit verify: error: {error}")
    }
}
