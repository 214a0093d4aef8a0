//! The migration files: embedded at build time, or read from a directory in development.

use std::path::Path;

use sha2::{Digest, Sha256};

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The number in the file name (`0007` → 7).
    pub version: i32,
    /// The whole file name (`0007_agents.sql`).
    pub name: String,
    /// The SQL text.
    pub sql: String,
    /// SHA-256 of the file bytes with CRLF normalised to LF.
    pub checksum: [u8; 32],
    /// True when the file starts with `-- caracal:no-transaction`.
    pub no_transaction: bool,
}

/// The files are malformed: every problem names the file.
#[derive(Debug, thiserror::Error)]
pub enum MigrationSetError {
    /// A file name does not follow `NNNN_snake_case.sql`.
    #[error("{0}: migration files are named NNNN_snake_case.sql")]
    BadName(String),
    /// Numbers are not contiguous from 0001.
    #[error("{file}: expected migration number {expected:04} (numbers are contiguous from 0001)")]
    Gap {
        /// The file.
        file: String,
        /// The number it should have.
        expected: i32,
    },
    /// A no-transaction file holds more than one statement.
    #[error("{0}: a `-- caracal:no-transaction` file holds exactly one statement")]
    NoTransactionMultiple(String),
    /// There are no files at all.
    #[error("no migration files found")]
    Empty,
    /// The directory could not be read.
    #[error("cannot read migrations from {dir}: {source}")]
    Io {
        /// The directory.
        dir: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// An ordered, validated set of migration files.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_migrations.rs"));
}

/// The marker that makes a file run outside a transaction.
const NO_TRANSACTION_MARKER: &str = "-- caracal:no-transaction";

impl MigrationSet {
    /// The files embedded in this binary.
    pub fn embedded() -> Result<Self, MigrationSetError> {
        Self::from_files(
            embedded::EMBEDDED
                .iter()
                .map(|(n, s)| ((*n).to_owned(), (*s).to_owned())),
        )
    }

    /// The `.sql` files of a directory (`caracal migrate --dir`, development only).
    pub fn from_dir(dir: &Path) -> Result<Self, MigrationSetError> {
        let io_err = |source| MigrationSetError::Io {
            dir: dir.display().to_string(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.extension().is_some_and(|e| e == "sql") {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| MigrationSetError::BadName(path.display().to_string()))?;
                files.push((name, std::fs::read_to_string(&path).map_err(io_err)?));
            }
        }
        Self::from_files(files)
    }

    /// Validates and orders `(file name, contents)` pairs.
    pub fn from_files(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, MigrationSetError> {
        let mut migrations = files
            .into_iter()
            .map(|(name, sql)| parse_file(name, sql))
            .collect::<Result<Vec<_>, _>>()?;
        migrations.sort_by_key(|m| m.version);
        if migrations.is_empty() {
            return Err(MigrationSetError::Empty);
        }
        for (expected, m) in (1..).zip(&migrations) {
            if m.version != expected {
                return Err(MigrationSetError::Gap {
                    file: m.name.clone(),
                    expected,
                });
            }
        }
        Ok(Self { migrations })
    }

    /// The migrations in order.
    pub fn iter(&self) -> impl Iterator<Item = &Migration> {
        self.migrations.iter()
    }

    /// The highest version.
    pub fn latest(&self) -> i32 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// The migration with this version.
    pub fn get(&self, version: i32) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.version == version)
    }
}

fn parse_file(name: String, sql: String) -> Result<Migration, MigrationSetError> {
    let Some(stem) = name.strip_suffix(".sql") else {
        return Err(MigrationSetError::BadName(name));
    };
    let (digits, rest) = stem.split_at_checked(4).unwrap_or(("", ""));
    let well_formed = digits.len() == 4
        && digits.bytes().all(|b| b.is_ascii_digit())
        && rest.len() > 1
        && rest.starts_with('_')
        && rest[1..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let version = match digits.parse::<i32>() {
        Ok(v) if well_formed && v > 0 => v,
        _ => return Err(MigrationSetError::BadName(name)),
    };
    let no_transaction = sql.starts_with(NO_TRANSACTION_MARKER);
    if no_transaction && statement_count(&sql) != 1 {
        return Err(MigrationSetError::NoTransactionMultiple(name));
    }
    Ok(Migration {
        version,
        checksum: checksum(&sql),
        name,
        sql,
        no_transaction,
    })
}

/// SHA-256 of the file with CRLF normalised to LF, so a checkout on Windows does not count
/// as an edit.
pub(crate) fn checksum(sql: &str) -> [u8; 32] {
    Sha256::digest(sql.replace("\r\n", "\n").as_bytes()).into()
}

/// Statements in a file, counted by their terminating `;` outside comments (enough for the
/// single-statement rule of no-transaction files, which hold `CREATE INDEX CONCURRENTLY`).
fn statement_count(sql: &str) -> usize {
    sql.lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .map(|code| code.matches(';').count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> Result<MigrationSet, MigrationSetError> {
        MigrationSet::from_files(
            names
                .iter()
                .map(|n| ((*n).to_owned(), "SELECT 1;".to_owned())),
        )
    }

    #[test]
    fn embedded_files_are_contiguous_and_checksummed() {
        let set = MigrationSet::embedded().unwrap();
        assert!(set.latest() >= 8);
        assert_eq!(set.iter().next().unwrap().name, "0001_foundation.sql");
    }

    #[test]
    fn names_must_follow_the_pattern() {
        for bad in [
            "1_x.sql",
            "0001.sql",
            "0001_X.sql",
            "0001-x.sql",
            "abcd_x.sql",
            "0000_x.sql",
        ] {
            assert!(
                matches!(set(&[bad]), Err(MigrationSetError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn gaps_are_refused_naming_the_file() {
        let err = set(&["0001_a.sql", "0003_c.sql"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0003_c.sql: expected migration number 0002 (numbers are contiguous from 0001)"
        );
    }

    #[test]
    fn crlf_does_not_change_the_checksum() {
        assert_eq!(checksum("a\r\nb\r\n"), checksum("a\nb\n"));
        assert_ne!(checksum("a\nb\n"), checksum("a\nc\n"));
    }

    #[test]
    fn no_transaction_files_hold_one_statement() {
        let one =
            format!("{NO_TRANSACTION_MARKER}\nCREATE INDEX CONCURRENTLY i ON t (c); -- ok;\n");
        let two = format!("{NO_TRANSACTION_MARKER}\nSELECT 1;\nSELECT 2;\n");
        assert!(
            MigrationSet::from_files([("0001_a.sql".to_owned(), one)])
                .unwrap()
                .iter()
                .all(|m| m.no_transaction)
        );
        assert!(matches!(
            MigrationSet::from_files([("0001_a.sql".to_owned(), two)]),
            Err(MigrationSetError::NoTransactionMultiple(_))
        ));
    }

    /// The released checksums are frozen: editing a released file must fail this test
    /// (add a new file instead). `migrations/released.sha256` lists `<hex>  <file>`.
    #[test]
    fn released_migrations_are_unchanged() {
        let released = include_str!("../../../../migrations/released.sha256");
        let set = MigrationSet::embedded().unwrap();
        for line in released
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (hex_sum, name) = line.split_once("  ").unwrap();
            let m = set
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} is released but missing"));
            assert_eq!(
                hex::encode(m.checksum),
                hex_sum,
                "{name} was edited after release"
            );
        }
    }
}
