//! `caracal restore verify`: proves that a restored deployment is whole and usable
//! (storage-and-events.md §12.4), in the seed's six steps, each reported like a doctor check
//! (ok, warn or fail, with the fix) and the exit code 1 when any step failed.
//!
//! | step | check ids | what is compared |
//! | --- | --- | --- |
//! | 1. isolated | `restore.isolated` | the target against the manifest's source database and cluster |
//! | 2. secrets | `kek.match`, `restore.keys` | `ZONE_KEK` against every `dek_id` with a trial decrypt per zone; the audit and stream keys against the manifest's key ids |
//! | 3. migrations | `db.migrations` | `caracal migrate --verify` |
//! | 5. data | `restore.data`, `audit.chain`, `gateway.bindings` | row counts (sessions, agents, delegations, …), chain heads and policy set activations against the manifest; the chain verified; every routable resource bound |
//! | 4. services | `restore.ready` | `/ready` of every role: the URLs given, or a `caracal all` started against the target |
//! | 6. canary | `restore.canary` | a governed request end to end in a temporary zone, both audit events awaited ([`canary`]) |
//!
//! Step 5 runs before step 4: services started against the target write rows (outbox,
//! bootstrap tokens), which would spoil the row-count comparison.
//!
//! The keys come from `--env-file` (the `runtime.env` a restore wrote out), then the
//! environment; the database is always `--database-url`, never the file's `DATABASE_URL`
//! (that is the source's).

pub mod canary;
mod stack;

use std::{collections::HashMap, io::Write, path::PathBuf, time::Duration};

use control_store::{ops::backup as store, settings::Lookup};

use crate::{
    ExitStatus, OpsError,
    backup::{self, Manifest, Unseal},
    doctor::{
        self,
        report::{self, Check, Findings},
    },
};

/// Arguments of `caracal restore verify`.
#[derive(Debug, Clone)]
pub struct VerifyArgs {
    /// The archive the target was restored from.
    pub archive: PathBuf,
    /// How to open it.
    pub unseal: Unseal,
    /// The restored database.
    pub database_url: String,
    /// The restored `runtime.env`.
    pub env_file: Option<PathBuf>,
    /// Service base URLs to probe (`/ready`), by role name.
    pub service_urls: Vec<(String, String)>,
    /// Start `caracal all` against the target on free loopback ports, using this Redis
    /// (which must not be the source's), instead of probing given URLs.
    pub start_with_redis: Option<String>,
    /// A shared cluster or Redis is a failure, not a warning.
    pub strict: bool,
    /// One JSON object instead of text.
    pub json: bool,
}

/// The variables a verification reads from the environment as the target's.
const DATABASE_VARS: &[&str] = &["CARACAL_MIGRATE_DATABASE_URL", "DATABASE_URL"];

/// Runs the verification and prints the report.
pub async fn verify(
    args: &VerifyArgs,
    lookup: Lookup<'_>,
    out: &mut dyn Write,
) -> Result<ExitStatus, OpsError> {
    let manifest = backup::manifest_of(&args.archive, &args.unseal).await?;
    let file_env = match &args.env_file {
        Some(path) => read_env_file(path)?,
        None => HashMap::new(),
    };
    let target_lookup = |name: &str| {
        if DATABASE_VARS.contains(&name) {
            return Some(args.database_url.clone());
        }
        file_env.get(name).cloned().or_else(|| lookup(name))
    };
    let mut checks = Vec::new();
    let (mut cx, schema) = doctor::Context::open(&target_lookup).await?;
    if !schema {
        cx.close().await;
        return Err(OpsError::Refused(
            "the target database has no caracal schema: restore it first (caracal backup restore)"
                .to_owned(),
        ));
    }

    // 1. Isolation.
    let target = store::identity(&mut cx.db).await.map_err(|e| {
        OpsError::Unreachable(format!(
            "cannot read the target: {}",
            doctor::describe_db(&e)
        ))
    })?;
    checks.push(isolated(&manifest, &target, args.strict));
    // 2. Secrets.
    checks.push(doctor::guard("kek.match", doctor::keys::kek_match(&mut cx)).await);
    checks.push(keys(&manifest, &target_lookup));
    // 3. Migrations.
    checks.push(doctor::database::migrations(&cx).await);
    // 5. Data, before anything runs against the target.
    checks.push(data(&manifest, &mut cx.db).await);
    checks.push(doctor::guard("audit.chain", doctor::audit::chain(&mut cx)).await);
    checks.push(doctor::guard("gateway.bindings", doctor::gateway::bindings(&mut cx)).await);
    cx.close().await;
    // 4. Services: the given ones, or a `caracal all` of our own.
    let mut started = None;
    let service_urls = match &args.start_with_redis {
        None => args.service_urls.clone(),
        Some(redis_url) => {
            match stack::start(&args.database_url, redis_url, &file_env, lookup).await {
                Ok(stack) => {
                    let urls = stack.urls.clone();
                    started = Some(stack);
                    urls
                }
                Err(error) => {
                    let mut failed = Findings::new("restore.ready");
                    failed.fail(
                    format!("caracal all did not become ready against the target: {error}"),
                    "run `caracal doctor` against the restored database; the log lines above name the role",
                );
                    checks.push(failed.finish());
                    Vec::new()
                }
            }
        }
    };
    if args.start_with_redis.is_none() || started.is_some() {
        checks.push(ready(&service_urls).await);
    }
    // 6. Canary.
    checks.push(match canary_target(&service_urls, &target_lookup) {
        Ok(target) => canary::run(&target).await,
        Err(missing) => {
            let mut skipped = Findings::new("restore.canary");
            skipped.warn(
                format!("the canary did not run: {missing}"),
                "pass every service URL and the restored runtime.env (--env-file) holding CARACAL_ADMIN_TOKEN",
            );
            skipped.finish()
        }
    });

    if let Some(stack) = started {
        stack.stop().await;
    }

    if args.json {
        report::write_json(out, &checks)?;
    } else {
        report::write_human(out, "caracal restore verify", &checks)?;
    }
    Ok(if report::failed_count(&checks) > 0 {
        ExitStatus::Findings
    } else {
        ExitStatus::Success
    })
}

/// What the canary needs: every role's URL and the admin token.
fn canary_target(
    urls: &[(String, String)],
    lookup: Lookup<'_>,
) -> Result<canary::CanaryTarget, String> {
    let url = |role: &str| {
        urls.iter()
            .find(|(name, _)| name == role)
            .map(|(_, url)| url.trim_end_matches('/').to_owned())
            .ok_or_else(|| format!("no --{role}-url"))
    };
    let admin_token =
        lookup("CARACAL_ADMIN_TOKEN").ok_or_else(|| "CARACAL_ADMIN_TOKEN is not set".to_owned())?;
    Ok(canary::CanaryTarget {
        api_url: url("api")?,
        sts_url: url("sts")?,
        coordinator_url: url("coordinator")?,
        gateway_url: url("gateway")?,
        admin_token: zeroize::Zeroizing::new(admin_token),
    })
}

/// Step 1: the target is not the source, and (with `--strict`) not in its cluster.
fn isolated(manifest: &Manifest, target: &store::DatabaseIdentity, strict: bool) -> Check {
    let mut check = Findings::new("restore.isolated");
    let same_cluster = !target.system_identifier.is_empty()
        && target.system_identifier == manifest.source.system_identifier;
    if same_cluster && target.name == manifest.source.database {
        check.fail(
            format!(
                "the target is the backup's source database {} itself",
                target.name
            ),
            "verify a restore made into another database (caracal backup restore --into)",
        );
    } else if same_cluster {
        let finding = format!(
            "the target {} shares the source's cluster (system_identifier {})",
            target.name, target.system_identifier
        );
        let fix = "restore into a separate cluster to prove the backup stands alone";
        if strict {
            check.fail(finding, fix);
        } else {
            check.warn(finding, fix);
        }
    } else {
        check.ok(format!(
            "database {} is apart from the source {} (another cluster)",
            target.name, manifest.source.database
        ));
    }
    check.finish()
}

/// Step 2 (beyond the KEK): the audit chain keys cover the manifest's `chain_key_id`s and
/// the stream key is set.
fn keys(manifest: &Manifest, lookup: Lookup<'_>) -> Check {
    let mut check = Findings::new("restore.keys");
    let configured = match doctor::audit::configured_key_ids(lookup) {
        Ok(ids) => ids,
        Err(error) => {
            check.fail(
                error,
                "fix the audit key variable named above (hex, at least 32 bytes)",
            );
            Vec::new()
        }
    };
    let missing: Vec<&String> = manifest
        .chain_key_ids
        .iter()
        .filter(|id| !configured.contains(id))
        .collect();
    if missing.is_empty() {
        check.ok(format!(
            "the audit keys cover the backup's {} chain key id(s)",
            manifest.chain_key_ids.len()
        ));
    } else {
        check.fail(
            format!(
                "no configured audit key has chain key id(s) {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "set AUDIT_HMAC_KEY (or AUDIT_CHAIN_HMAC_KEY, AUDIT_HMAC_KEYRING_FILE) from the backup's runtime.env",
        );
    }
    if lookup("STREAMS_HMAC_KEY").is_none() && lookup("STREAMS_HMAC_KEY_FILE").is_none() {
        check.fail(
            "STREAMS_HMAC_KEY is not set",
            "set STREAMS_HMAC_KEY from the backup's runtime.env",
        );
    }
    check.finish()
}

/// Step 5: the restored rows and chain heads are the backup's.
async fn data(manifest: &Manifest, conn: &mut sqlx::PgConnection) -> Check {
    let mut check = Findings::new("restore.data");
    let read = async {
        let counts = store::row_counts(conn).await?;
        let heads = store::audit_chain_heads(conn).await?;
        let activations = store::policy_activations(conn).await?;
        Ok::<_, sqlx::Error>((counts, heads, activations))
    };
    let (counts, heads, activations) = match read.await {
        Ok(read) => read,
        Err(error) => {
            check.fail(
                format!("cannot read the target: {}", doctor::describe_db(&error)),
                "check that --database-url reaches the restored database",
            );
            return check.finish();
        }
    };
    let differing: Vec<String> = manifest
        .row_counts
        .iter()
        .filter(|(table, n)| counts.get(*table) != Some(n))
        .map(|(table, n)| {
            format!(
                "{table} ({n} in the backup, {} restored)",
                counts.get(table).copied().unwrap_or(0)
            )
        })
        .collect();
    if !differing.is_empty() {
        check.fail(
            format!("row counts differ: {}", differing.join(", ")),
            "restore again into an empty database; do not start services before verifying",
        );
    }
    let restored = backup::manifest::heads(heads);
    if restored != manifest.audit_chain_heads {
        let zones: Vec<&String> = manifest
            .audit_chain_heads
            .keys()
            .chain(restored.keys())
            .filter(|zone| manifest.audit_chain_heads.get(*zone) != restored.get(*zone))
            .collect();
        check.fail(
            format!(
                "audit chain heads differ from the backup's in zone(s) {}",
                zones
                    .iter()
                    .map(|z| z.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "the restore is partial or rows were added after it: restore again",
        );
    }
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".to_owned());
    let moved: Vec<String> = manifest
        .policy_activations
        .keys()
        .chain(activations.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter_map(|key| {
            let (backup, restored) = (manifest.policy_activations.get(key), activations.get(key));
            (backup != restored).then(|| {
                let active = |a: Option<&store::PolicyActivation>| {
                    a.map_or_else(
                        || "no binding".to_owned(),
                        |a| version(&a.active_version_id),
                    )
                };
                format!(
                    "{key} (active {} in the backup, {} restored)",
                    active(backup),
                    active(restored)
                )
            })
        })
        .collect();
    if !moved.is_empty() {
        check.fail(
            format!("policy set activations differ: {}", moved.join(", ")),
            "restore again into an empty database; an activation made after the restore must be made again through the admin API once verified",
        );
    }
    check.ok(format!(
        "{} tables, {} audit chain heads and {} policy set activations match the backup of {}",
        manifest.row_counts.len(),
        manifest.audit_chain_heads.len(),
        manifest.policy_activations.len(),
        manifest.created_at.to_rfc3339()
    ));
    check.finish()
}

/// How long each `/ready` probe may take.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Step 4: every given service answers `/ready` with 200.
async fn ready(urls: &[(String, String)]) -> Check {
    let mut check = Findings::new("restore.ready");
    if urls.is_empty() {
        check.warn(
            "no service URL given, so no service was probed",
            "start the roles against the restored database and pass --api-url, --sts-url, --coordinator-url, --gateway-url and --audit-url",
        );
        return check.finish();
    }
    for (role, base) in urls {
        match crate::http_probe::get_status(
            &format!("{}/ready", base.trim_end_matches('/')),
            READY_TIMEOUT,
        )
        .await
        {
            Ok(200) => check.ok(format!("{role} ready")),
            Ok(status) => check.fail(
                format!("{role} at {base} answers /ready with {status}"),
                format!(
                    "read the {role}'s /ready body and logs; `caracal doctor` names most causes"
                ),
            ),
            Err(error) => check.fail(
                format!("{role} at {base} cannot be reached: {error}"),
                format!("start the {role} against the restored database"),
            ),
        }
    }
    check.finish()
}

/// `NAME=value` lines; `#` comments and blank lines skipped.
fn read_env_file(path: &std::path::Path) -> Result<HashMap<String, String>, OpsError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| OpsError::Config(format!("cannot read {}: {e}", path.display())))?,
    );
    let mut vars = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or_else(|| {
            OpsError::Config(format!(
                "{} line {} is not NAME=value",
                path.display(),
                n + 1
            ))
        })?;
        vars.insert(name.trim().to_owned(), value.to_owned());
    }
    Ok(vars)
}
