//! `pg_dump` and `pg_restore` as child processes. The connection is handed over as libpq
//! environment variables (`PGHOST`, `PGUSER`, `PGPASSWORD`, …) derived from the URL, so a
//! password never appears on a command line; their stderr is passed on only when they
//! fail, trimmed to its last lines.

use std::{path::Path, process::Stdio};

use url::Url;
use zeroize::Zeroizing;

use crate::OpsError;

/// libpq settings of one database URL.
pub struct Libpq {
    vars: Vec<(&'static str, Zeroizing<String>)>,
    /// The database name.
    pub database: String,
}

impl std::fmt::Debug for Libpq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libpq")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The query parameters of a Postgres URL that map onto libpq variables.
const QUERY_VARS: &[(&str, &str)] = &[
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("application_name", "PGAPPNAME"),
];

impl Libpq {
    /// Parses `url` (`postgres://user:password@host:port/database?sslmode=…`). `var` names
    /// the setting in errors; the URL itself is never repeated.
    pub fn from_url(var: &str, url: &str) -> Result<Self, OpsError> {
        let bad = || OpsError::Config(format!("{var} is not a postgres:// URL with a database"));
        let parsed = Url::parse(url.trim()).map_err(|_parse| bad())?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad());
        }
        let decode = |raw: &str| {
            percent_decode(raw).ok_or_else(|| OpsError::Config(format!("{var} has a bad escape")))
        };
        let database = decode(parsed.path().trim_start_matches('/'))?;
        if database.is_empty() {
            return Err(bad());
        }
        let mut vars = vec![("PGDATABASE", Zeroizing::new(database.clone()))];
        if let Some(host) = parsed.host_str() {
            vars.push((
                "PGHOST",
                Zeroizing::new(host.trim_matches(['[', ']']).to_owned()),
            ));
        }
        if let Some(port) = parsed.port() {
            vars.push(("PGPORT", Zeroizing::new(port.to_string())));
        }
        if !parsed.username().is_empty() {
            vars.push(("PGUSER", Zeroizing::new(decode(parsed.username())?)));
        }
        if let Some(password) = parsed.password() {
            vars.push(("PGPASSWORD", Zeroizing::new(decode(password)?)));
        }
        for (key, value) in parsed.query_pairs() {
            if let Some((_, env)) = QUERY_VARS.iter().find(|(name, _)| *name == key) {
                vars.push((env, Zeroizing::new(value.into_owned())));
            }
        }
        Ok(Self { vars, database })
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> Self {
        let mut vars: Vec<_> = self
            .vars
            .iter()
            .filter(|(name, _)| *name != "PGDATABASE")
            .map(|(name, value)| (*name, value.clone()))
            .collect();
        vars.push(("PGDATABASE", Zeroizing::new(database.to_owned())));
        Self {
            vars,
            database: database.to_owned(),
        }
    }

    fn apply(&self, command: &mut tokio::process::Command) {
        // A password may come from the URL or, to keep it off the command line, from
        // PGPASSWORD in the environment (sqlx reads it too); other inherited settings that
        // could point the tool elsewhere are dropped.
        for name in ["PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGDATABASE"] {
            command.env_remove(name);
        }
        for (name, value) in &self.vars {
            command.env(name, value.as_str());
        }
    }
}

fn percent_decode(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// `pg_dump -Fc` of `db` into `out`, from the exported snapshot `snapshot` when given (so
/// the dump and the manifest read the same data).
pub async fn dump(db: &Libpq, snapshot: Option<&str>, out: &Path) -> Result<(), OpsError> {
    let program = std::env::var("CARACAL_PG_DUMP").unwrap_or_else(|_unset| "pg_dump".to_owned());
    let mut command = tokio::process::Command::new(&program);
    command.arg("--format=custom").arg("--no-password");
    if let Some(snapshot) = snapshot {
        command.arg(format!("--snapshot={snapshot}"));
    }
    command.arg(format!("--file={}", out.display()));
    db.apply(&mut command);
    run(&program, command).await
}

/// `pg_restore --exit-on-error --single-transaction` of `dump` into `db`.
pub async fn restore(db: &Libpq, dump: &Path) -> Result<(), OpsError> {
    let program =
        std::env::var("CARACAL_PG_RESTORE").unwrap_or_else(|_unset| "pg_restore".to_owned());
    let mut command = tokio::process::Command::new(&program);
    command
        .arg("--exit-on-error")
        .arg("--single-transaction")
        .arg("--no-password")
        .arg(format!("--dbname={}", db.database))
        .arg(dump);
    db.apply(&mut command);
    run(&program, command).await
}

async fn run(program: &str, mut command: tokio::process::Command) -> Result<(), OpsError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|e| {
        OpsError::Config(format!(
            "cannot run {program} ({e}); install the PostgreSQL client (postgresql-client) \
             or set CARACAL_PG_DUMP / CARACAL_PG_RESTORE"
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(OpsError::Refused(format!(
        "{program} failed ({}): {}",
        output.status,
        tail.join(" | ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(db: &Libpq) -> Vec<(String, String)> {
        db.vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_str().to_owned()))
            .collect()
    }

    #[test]
    fn a_url_becomes_libpq_variables_with_the_password_decoded() {
        let db = Libpq::from_url(
            "DATABASE_URL",
            "postgres://caracal_maintenance:p%40ss%2Fw@db.internal:6543/caracal?sslmode=verify-full",
        )
        .unwrap();
        let got = vars(&db);
        for (k, v) in [
            ("PGDATABASE", "caracal"),
            ("PGHOST", "db.internal"),
            ("PGPORT", "6543"),
            ("PGUSER", "caracal_maintenance"),
            ("PGPASSWORD", "p@ss/w"),
            ("PGSSLMODE", "verify-full"),
        ] {
            assert!(got.contains(&(k.to_owned(), v.to_owned())), "{k} missing");
        }
        let other = db.with_database("postgres");
        assert_eq!(other.database, "postgres");
        assert!(vars(&other).contains(&("PGDATABASE".to_owned(), "postgres".to_owned())));
        assert!(!vars(&other).contains(&("PGDATABASE".to_owned(), "caracal".to_owned())));
    }

    #[test]
    fn a_bad_url_is_named_without_repeating_it() {
        for url in [
            "mysql://u:secret@h/db",
            "postgres://u:secret@h",
            "not a url secret",
        ] {
            let error = Libpq::from_url("DATABASE_URL", url)
                .unwrap_err()
                .to_string();
            assert!(error.contains("DATABASE_URL"), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
