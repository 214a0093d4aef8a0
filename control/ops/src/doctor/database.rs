//! The database checks: `db.migrations` (storage §4.4, the same verification as `caracal
//! migrate --verify`), `db.roles` (§2.1, §2.4), `clock.skew` and `db.pool` (§13).

use std::time::Duration;

use control_store::{
    MAINTENANCE_ROLE, OWNER_ROLE, ServiceRole,
    migrate::{MigrationSet, VerifyOutcome},
    ops::doctor as store,
    settings::PoolSettings,
};

use super::{
    CheckError, Context, redis_link,
    report::{self, Check, Findings},
    sample,
};

/// How long `migrate --verify` may take to connect.
const VERIFY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A skew beyond this warns (storage §12.5: within 1 s).
const SKEW_WARN_SECS: f64 = 1.0;
/// A skew beyond this fails: token lifetimes and `nbf`/`exp` checks start to misfire.
const SKEW_FAIL_SECS: f64 = 60.0;
/// Headroom kept free of pools (storage §13).
const POOL_HEADROOM: i64 = 10;
/// Connections each process holds outside its pool (leader lock, LISTEN).
const PER_PROCESS_EXTRA: i64 = 2;
/// A server busier than this share of its connections warns.
const IN_USE_WARN: f64 = 0.9;

/// Runs `db.migrations`.
pub(crate) async fn migrations(cx: &Context<'_>) -> Check {
    const ID: &str = "db.migrations";
    let set = match MigrationSet::embedded() {
        Ok(set) => set,
        Err(error) => {
            return report::failed(
                ID,
                error.to_string(),
                "this binary's embedded migrations are broken; use a released build",
            );
        }
    };
    let verified =
        control_store::migrate::verify(&cx.verify_options, &set, VERIFY_CONNECT_TIMEOUT).await;
    let mut findings = Findings::new(ID);
    match verified {
        Err(error) => findings.fail(
            format!("the schema cannot be verified: {error}"),
            "run `caracal migrate --verify` as caracal_maintenance for details",
        ),
        Ok(verdict) => match verdict.outcome() {
            VerifyOutcome::Clean => findings.ok(format!(
                "schema is current at {:04} and matches this binary",
                set.latest()
            )),
            VerifyOutcome::Pending => findings.fail(
                format!(
                    "{} migration(s) pending: {}",
                    verdict.pending.len(),
                    sample(&verdict.pending, verdict.pending.len(), 3)
                ),
                "run `caracal migrate` (services stay unready with schema_version_mismatch until then)",
            ),
            VerifyOutcome::Drift => findings.fail(
                format!(
                    "schema drift ({} difference(s)): {}",
                    verdict.drift.len(),
                    sample(&verdict.drift, verdict.drift.len(), 3)
                ),
                "run `caracal migrate --verify` for the full list; `caracal migrate` recreates missing partitions, other drift needs the change undone or the database restored",
            ),
        },
    }
    findings.finish()
}

/// Runs `db.roles`.
pub(crate) async fn roles(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("db.roles");
    let me = store::current_role(&mut cx.db).await?;
    if me.superuser {
        findings.ok(format!(
            "doctor runs as the superuser {} (caracal_maintenance is enough)",
            me.name
        ));
    } else if !me.bypassrls {
        findings.fail(
            format!(
                "doctor runs as {}, which has no BYPASSRLS: zone tables look empty to it",
                me.name
            ),
            "connect doctor as caracal_maintenance (CARACAL_MIGRATE_DATABASE_URL)",
        );
    } else {
        findings.ok(format!("doctor runs as {}", me.name));
    }

    let services: Vec<&str> = ServiceRole::ALL.iter().map(|r| r.db_role()).collect();
    let mut names = services.clone();
    names.extend([OWNER_ROLE, MAINTENANCE_ROLE]);
    let found = store::roles(&mut cx.db, &names).await?;
    let fix = "run `caracal migrate` as a user allowed to create roles (it creates and corrects them), or ALTER ROLE as a superuser";
    for name in &names {
        let Some(role) = found.iter().find(|r| r.name == *name) else {
            findings.fail(format!("role {name} does not exist"), fix);
            continue;
        };
        if *name == OWNER_ROLE {
            if role.login || role.superuser || role.bypassrls {
                findings.fail(
                    format!("{name} must be NOLOGIN, NOSUPERUSER and NOBYPASSRLS"),
                    fix,
                );
            }
        } else if *name == MAINTENANCE_ROLE {
            if !role.bypassrls {
                findings.fail(
                    format!("{name} lacks BYPASSRLS: maintenance commands see no zone rows"),
                    fix,
                );
            }
        } else if role.superuser || role.bypassrls || role.owner_member {
            findings.fail(
                format!("db_role_too_powerful: {name} is a superuser, has BYPASSRLS or is a member of {OWNER_ROLE}; services refuse to start in production mode"),
                format!("ALTER ROLE {name} NOSUPERUSER NOBYPASSRLS, and REVOKE {OWNER_ROLE} FROM {name}"),
            );
        } else if !role.login {
            findings.fail(
                format!("{name} cannot log in"),
                format!("ALTER ROLE {name} LOGIN"),
            );
        }
    }
    findings.ok(format!(
        "{} Caracal roles have the expected attributes (grants and row-level security: see db.migrations)",
        names.len()
    ));
    Ok(findings.finish())
}

/// Runs `clock.skew`: this host's clock against the database's, corrected for the round
/// trip.
pub(crate) async fn clock_skew(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("clock.skew");
    let before = chrono::Utc::now();
    let database = store::database_clock(&mut cx.db).await?;
    let after = chrono::Utc::now();
    let round_trip = (after - before).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let midpoint = before + (after - before) / 2;
    let skew = (database - midpoint).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
    let shown = if skew.abs() < 0.0005 { 0.0 } else { skew };
    let text = format!(
        "the database's clock is {shown:+.3} s from this host's (round trip {:.0} ms)",
        round_trip * 1000.0
    );
    let fix = "synchronise both hosts with NTP (chrony, systemd-timesyncd); token expiry and audit times depend on it";
    if skew.abs() > SKEW_FAIL_SECS {
        findings.fail(text, fix);
    } else if skew.abs() > SKEW_WARN_SECS + round_trip / 2.0 {
        findings.warn(text, fix);
    } else {
        findings.ok(text);
    }
    Ok(findings.finish())
}

/// Runs `db.pool`: Σ(live processes × pool max) + 2 per process + 10 headroom against
/// `max_connections`, with the pool maxima of this environment and the live instances of
/// `caracal:instances:<service>` (the admin API does not heartbeat, so it is not counted).
pub(crate) async fn pool(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("db.pool");
    let usage = store::connections(&mut cx.db).await?;
    let available = usage.max_connections - usage.reserved;
    let share = if available > 0 {
        usage.in_use as f64 / available as f64
    } else {
        1.0
    };
    let now_text = format!(
        "{} of {} connections in use now ({} by Caracal)",
        usage.in_use, available, usage.caracal
    );
    if share > IN_USE_WARN {
        findings.warn(
            now_text.clone(),
            "raise max_connections or lower CARACAL_DB_POOL_MAX (pools wait, then fail with 503, when the server refuses connections)",
        );
    } else {
        findings.ok(now_text);
    }

    let mut conn = match cx.redis.conn() {
        Ok(conn) => conn,
        Err(_unreachable) => {
            findings.ok("live processes unknown (Redis cannot be reached)");
            return Ok(findings.finish());
        }
    };
    let mut needed = POOL_HEADROOM;
    let mut processes = 0_i64;
    let mut parts = Vec::new();
    for role in ServiceRole::ALL {
        if role == ServiceRole::Api {
            continue;
        }
        let live = i64::try_from(
            redis_link::live_instances(&mut conn, role.service())
                .await?
                .len(),
        )
        .unwrap_or(i64::MAX);
        if live == 0 {
            continue;
        }
        let max = match PoolSettings::from_lookup(role, cx.lookup) {
            Ok(settings) => i64::from(settings.max_connections),
            Err(error) => {
                findings.warn(
                    format!(
                        "the pool settings of {} cannot be read here: {error}",
                        role.service()
                    ),
                    "run doctor with the services' environment",
                );
                continue;
            }
        };
        processes += live;
        needed += live * (max + PER_PROCESS_EXTRA);
        parts.push(format!("{live} {} × {max}", role.service()));
    }
    if processes == 0 {
        findings.ok("no live process in caracal:instances:*");
    } else if needed >= available {
        findings.fail(
            format!(
                "the live processes may open {needed} connections ({} + {PER_PROCESS_EXTRA} each + {POOL_HEADROOM} headroom) but the server allows {available}",
                parts.join(", ")
            ),
            "raise max_connections, or lower CARACAL_DB_POOL_MAX (per service: CARACAL_<SERVICE>_DB_POOL_MAX), or put a pooler in front",
        );
    } else {
        findings.ok(format!(
            "the live processes may open {needed} of {available} connections ({})",
            parts.join(", ")
        ));
    }
    Ok(findings.finish())
}
