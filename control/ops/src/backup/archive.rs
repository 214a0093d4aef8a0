//! The archive container: a tar stream encrypted in the `age` format (X25519 recipients or
//! a passphrase), with `SHA256SUMS` over every member.
//!
//! Writing goes to `<out>.partial`, fsynced and renamed into place, so a crash never
//! leaves a truncated archive under the final name. Reading unpacks into a private
//! directory, accepting only regular files under the known top-level names (no links, no
//! absolute or `..` paths), and checks every member against `SHA256SUMS`: a member missing
//! from the list, listed but absent, or with another hash refuses the archive.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::{Component, Path, PathBuf},
    str::FromStr,
};

use age::secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::OpsError;

/// The top-level names an archive may hold.
const MEMBERS: &[&str] = &[
    "manifest.json",
    "SHA256SUMS",
    "postgres",
    "secrets",
    "replay",
];

/// The checksum list's name.
pub const SUMS: &str = "SHA256SUMS";

/// How an archive is sealed.
#[derive(Debug, Clone)]
pub enum Seal {
    /// To these age X25519 recipients (`age1…`).
    Recipients(Vec<String>),
    /// Under the passphrase in this file (first line).
    PassphraseFile(PathBuf),
    /// Not at all (tests only; the command line requires an explicit flag).
    Unencrypted,
}

impl Seal {
    /// Checks the key before any work is done: recipients parse, the passphrase file reads.
    pub fn check(&self) -> Result<(), OpsError> {
        match self {
            Seal::Recipients(list) if list.is_empty() => {
                Err(OpsError::Config("no backup recipient given".to_owned()))
            }
            Seal::Recipients(list) => list.iter().try_for_each(|text| {
                age::x25519::Recipient::from_str(text)
                    .map(|_parsed| ())
                    .map_err(|_bad| {
                        OpsError::Config(format!("{text} is not an age X25519 recipient (age1…)"))
                    })
            }),
            Seal::PassphraseFile(path) => passphrase(path).map(|_secret| ()),
            Seal::Unencrypted => Ok(()),
        }
    }

    /// How the archive was sealed, for the report.
    pub fn describe(&self) -> String {
        match self {
            Seal::Recipients(list) => format!("age, {} recipient(s)", list.len()),
            Seal::PassphraseFile(_) => "age, passphrase".to_owned(),
            Seal::Unencrypted => "NOT ENCRYPTED".to_owned(),
        }
    }
}

/// How an archive is opened.
#[derive(Debug, Clone)]
pub enum Unseal {
    /// With the age identities (`AGE-SECRET-KEY-1…` lines) in this file.
    IdentityFile(PathBuf),
    /// With the passphrase in this file (first line).
    PassphraseFile(PathBuf),
    /// It is not encrypted.
    Unencrypted,
}

/// Reads recipients from a file: one `age1…` per line, `#` comments and blank lines skipped.
pub fn recipients_file(path: &Path) -> Result<Vec<String>, OpsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| OpsError::Config(format!("cannot read {}: {e}", path.display())))?;
    Ok(key_lines(&text).map(str::to_owned).collect())
}

fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

fn passphrase(path: &Path) -> Result<SecretString, OpsError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| OpsError::Config(format!("cannot read {}: {e}", path.display())))?,
    );
    let line = text.lines().next().unwrap_or_default();
    if line.len() < 12 {
        return Err(OpsError::Config(format!(
            "the passphrase in {} is shorter than 12 characters",
            path.display()
        )));
    }
    Ok(SecretString::from(line.to_owned()))
}

/// A fresh X25519 identity: (the identity file's text, its recipient).
pub fn generate_identity() -> (zeroize::Zeroizing<String>, String) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = zeroize::Zeroizing::new(format!(
        "# caracal backup key; recipient: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    ));
    (secret, recipient)
}

/// Writes an archive to `out` from `members` (archive path → file on disk), adding
/// `SHA256SUMS` last. Returns the number of bytes written.
pub fn write(out: &Path, seal: &Seal, members: &[(String, PathBuf)]) -> Result<u64, OpsError> {
    let partial = out.with_extension("partial");
    let io = |what: &str, e: std::io::Error| OpsError::Refused(format!("{what}: {e}"));
    let file = File::create(&partial).map_err(|e| io(&partial.display().to_string(), e))?;
    let result = write_into(BufWriter::new(file), seal, members);
    let file = match result {
        Ok(file) => file,
        Err(error) => {
            let _removed = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    file.sync_all().map_err(|e| io("fsync", e))?;
    let bytes = file.metadata().map_err(|e| io("stat", e))?.len();
    std::fs::rename(&partial, out).map_err(|e| io(&out.display().to_string(), e))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync of the directory", e))?;
    }
    Ok(bytes)
}

fn write_into(
    sink: BufWriter<File>,
    seal: &Seal,
    members: &[(String, PathBuf)],
) -> Result<File, OpsError> {
    let failed =
        |e: &dyn std::fmt::Display| OpsError::Refused(format!("cannot write the archive: {e}"));
    match seal {
        Seal::Unencrypted => {
            let sink = write_tar(sink, members)?;
            sink.into_inner().map_err(|e| failed(&e.error()))
        }
        Seal::Recipients(list) => {
            let mut parsed = Vec::with_capacity(list.len());
            for text in list {
                parsed.push(age::x25519::Recipient::from_str(text).map_err(|_bad| {
                    OpsError::Config(format!("{text} is not an age X25519 recipient (age1…)"))
                })?);
            }
            let encryptor =
                age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|_none| OpsError::Config("no backup recipient given".to_owned()))?;
            seal_tar(encryptor, sink, members)
        }
        Seal::PassphraseFile(path) => seal_tar(
            age::Encryptor::with_user_passphrase(passphrase(path)?),
            sink,
            members,
        ),
    }
}

fn seal_tar(
    encryptor: age::Encryptor,
    sink: BufWriter<File>,
    members: &[(String, PathBuf)],
) -> Result<File, OpsError> {
    let failed =
        |e: &dyn std::fmt::Display| OpsError::Refused(format!("cannot write the archive: {e}"));
    let writer = encryptor.wrap_output(sink).map_err(|e| failed(&e))?;
    let writer = write_tar(writer, members)?;
    let sink = writer.finish().map_err(|e| failed(&e))?;
    sink.into_inner().map_err(|e| failed(&e.error()))
}

/// The tar stream: every member, then `SHA256SUMS`.
fn write_tar<W: Write>(sink: W, members: &[(String, PathBuf)]) -> Result<W, OpsError> {
    let failed = |name: &str, e: std::io::Error| {
        OpsError::Refused(format!("cannot add {name} to the archive: {e}"))
    };
    let mut builder = tar::Builder::new(sink);
    let mut sums = String::new();
    for (name, path) in members {
        let file = File::open(path).map_err(|e| failed(name, e))?;
        let len = file.metadata().map_err(|e| failed(name, e))?.len();
        let mut hashing = HashingReader::new(BufReader::new(file));
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, &mut hashing)
            .map_err(|e| failed(name, e))?;
        sums.push_str(&format!("{}  {name}\n", hex::encode(hashing.finish())));
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(sums.len() as u64);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, SUMS, sums.as_bytes())
        .map_err(|e| failed(SUMS, e))?;
    builder.into_inner().map_err(|e| failed("the end", e))
}

/// Decrypts `archive` and unpacks it into `into` (a private, empty directory), then checks
/// every member against `SHA256SUMS`. Returns the member names.
pub fn unpack(archive: &Path, unseal: &Unseal, into: &Path) -> Result<Vec<String>, OpsError> {
    let file = File::open(archive)
        .map_err(|e| OpsError::Config(format!("cannot read {}: {e}", archive.display())))?;
    let reader = BufReader::new(file);
    let hashes = match unseal {
        Unseal::Unencrypted => unpack_tar(reader, into)?,
        Unseal::IdentityFile(path) => {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    OpsError::Config(format!("cannot read {}: {e}", path.display()))
                })?);
            let mut identities = Vec::new();
            for line in key_lines(&text) {
                identities.push(age::x25519::Identity::from_str(line).map_err(|_bad| {
                    OpsError::Config(format!(
                        "{} holds a line that is not an age identity (AGE-SECRET-KEY-1…)",
                        path.display()
                    ))
                })?);
            }
            let decryptor = decryptor(reader)?;
            let stream = decryptor
                .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
                .map_err(|_no_match| {
                    OpsError::Refused(
                        "the archive cannot be opened with this identity (wrong backup key)"
                            .to_owned(),
                    )
                })?;
            unpack_tar(stream, into)?
        }
        Unseal::PassphraseFile(path) => {
            let identity = age::scrypt::Identity::new(passphrase(path)?);
            let decryptor = decryptor(reader)?;
            let stream = decryptor
                .decrypt(std::iter::once(&identity as &dyn age::Identity))
                .map_err(|_no_match| {
                    OpsError::Refused(
                        "the archive cannot be opened with this passphrase".to_owned(),
                    )
                })?;
            unpack_tar(stream, into)?
        }
    };
    check_sums(into, &hashes)
}

fn decryptor<R: Read>(reader: R) -> Result<age::Decryptor<R>, OpsError> {
    age::Decryptor::new(reader).map_err(|_not_age| {
        OpsError::Refused("the archive is not an age-encrypted Caracal backup".to_owned())
    })
}

/// Unpacks regular files under the known top-level names; returns each member's SHA-256.
fn unpack_tar<R: Read>(reader: R, into: &Path) -> Result<BTreeMap<String, [u8; 32]>, OpsError> {
    let corrupt =
        |what: String| OpsError::Refused(format!("the archive is damaged or not a backup: {what}"));
    let mut archive = tar::Archive::new(reader);
    let mut hashes = BTreeMap::new();
    for entry in archive.entries().map_err(|e| corrupt(e.to_string()))? {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| corrupt(e.to_string()))?
            .into_owned();
        let name = member_name(&path)
            .ok_or_else(|| corrupt(format!("unexpected member {}", path.display())))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(corrupt(format!("{name} is not a regular file")));
        }
        if hashes.contains_key(&name) {
            return Err(corrupt(format!("{name} appears twice")));
        }
        let target = into.join(&path);
        if let Some(parent) = target.parent() {
            create_private_dir(parent).map_err(|e| corrupt(format!("{name}: {e}")))?;
        }
        let file = private_file(&target).map_err(|e| corrupt(format!("{name}: {e}")))?;
        let mut hashing = HashingWriter::new(BufWriter::new(file));
        std::io::copy(&mut entry, &mut hashing).map_err(|e| corrupt(format!("{name}: {e}")))?;
        let digest = hashing
            .finish()
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
        hashes.insert(name, digest);
    }
    // Read to the end, so the last sealed chunk is authenticated too.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(hashes)
}

/// `path` as a member name when it is relative, made only of normal components, and under
/// one of [`MEMBERS`].
fn member_name(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            _ => return None,
        }
    }
    let first = parts.first()?;
    MEMBERS.contains(first).then(|| parts.join("/"))
}

fn check_sums(into: &Path, hashes: &BTreeMap<String, [u8; 32]>) -> Result<Vec<String>, OpsError> {
    let refused =
        |what: String| OpsError::Refused(format!("the archive failed its checksums: {what}"));
    let sums = std::fs::read_to_string(into.join(SUMS))
        .map_err(|_missing| refused(format!("{SUMS} is missing")))?;
    let mut listed = BTreeMap::new();
    for line in sums.lines() {
        let (digest, name) = line
            .split_once("  ")
            .ok_or_else(|| refused(format!("malformed line in {SUMS}")))?;
        listed.insert(name.to_owned(), digest.to_owned());
    }
    for (name, digest) in hashes {
        if name == SUMS {
            continue;
        }
        match listed.get(name) {
            None => return Err(refused(format!("{name} is not listed"))),
            Some(expected) if *expected != hex::encode(digest) => {
                return Err(refused(format!("{name} does not match")));
            }
            Some(_) => {}
        }
    }
    if let Some(absent) = listed.keys().find(|name| !hashes.contains_key(*name)) {
        return Err(refused(format!("{absent} is listed but absent")));
    }
    Ok(hashes.keys().filter(|n| *n != SUMS).cloned().collect())
}

/// Creates `dir` and its parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` (which must not exist) with mode 0600.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(mut self) -> std::io::Result<[u8; 32]> {
        self.inner.flush()?;
        Ok(self.hasher.finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(dir: &Path) -> Vec<(String, PathBuf)> {
        let manifest = dir.join("m.json");
        std::fs::write(&manifest, br#"{"format":1}"#).unwrap();
        let dump = dir.join("dump");
        std::fs::write(&dump, vec![7u8; 100_000]).unwrap();
        vec![
            ("manifest.json".to_owned(), manifest),
            ("postgres/dump.pgc".to_owned(), dump),
        ]
    }

    #[test]
    fn an_archive_sealed_to_a_recipient_opens_only_with_its_identity() {
        let work = tempfile::tempdir().unwrap();
        let (identity, recipient) = generate_identity();
        let id_file = work.path().join("backup.key");
        std::fs::write(&id_file, identity.as_bytes()).unwrap();
        let out = work.path().join("b.caracal");
        write(
            &out,
            &Seal::Recipients(vec![recipient]),
            &members(work.path()),
        )
        .unwrap();
        assert!(!out.with_extension("partial").exists());

        let into = work.path().join("open");
        create_private_dir(&into).unwrap();
        let names = unpack(&out, &Unseal::IdentityFile(id_file), &into).unwrap();
        assert_eq!(names, vec!["manifest.json", "postgres/dump.pgc"]);
        assert_eq!(
            std::fs::read(into.join("postgres/dump.pgc")).unwrap(),
            vec![7u8; 100_000]
        );

        let (other, _) = generate_identity();
        let other_file = work.path().join("other.key");
        std::fs::write(&other_file, other.as_bytes()).unwrap();
        let elsewhere = work.path().join("elsewhere");
        create_private_dir(&elsewhere).unwrap();
        let error = unpack(&out, &Unseal::IdentityFile(other_file), &elsewhere).unwrap_err();
        assert!(error.to_string().contains("wrong backup key"), "{error}");
    }

    #[test]
    fn a_passphrase_archive_needs_the_passphrase() {
        let work = tempfile::tempdir().unwrap();
        let pass = work.path().join("pass");
        std::fs::write(&pass, "correct horse battery staple\n").unwrap();
        let out = work.path().join("b.caracal");
        write(
            &out,
            &Seal::PassphraseFile(pass.clone()),
            &members(work.path()),
        )
        .unwrap();
        let into = work.path().join("open");
        create_private_dir(&into).unwrap();
        unpack(&out, &Unseal::PassphraseFile(pass), &into).unwrap();

        let wrong = work.path().join("wrong");
        std::fs::write(&wrong, "incorrect horse battery\n").unwrap();
        let elsewhere = work.path().join("elsewhere");
        create_private_dir(&elsewhere).unwrap();
        assert!(unpack(&out, &Unseal::PassphraseFile(wrong), &elsewhere).is_err());

        let short = work.path().join("short");
        std::fs::write(&short, "short\n").unwrap();
        let error = write(&out, &Seal::PassphraseFile(short), &members(work.path())).unwrap_err();
        assert!(error.to_string().contains("shorter than 12"), "{error}");
    }

    #[test]
    fn a_tampered_member_fails_the_checksums() {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("b.tar");
        write(&out, &Seal::Unencrypted, &members(work.path())).unwrap();
        // Flip one byte inside the dump's data (tar: 512-byte header per member).
        let mut bytes = std::fs::read(&out).unwrap();
        let at = bytes.windows(4).position(|w| w == [7, 7, 7, 7]).unwrap() + 10;
        bytes[at] = 8;
        std::fs::write(&out, &bytes).unwrap();
        let into = work.path().join("open");
        create_private_dir(&into).unwrap();
        let error = unpack(&out, &Unseal::Unencrypted, &into).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("postgres/dump.pgc does not match"),
            "{error}"
        );
    }

    #[test]
    fn members_outside_the_known_names_are_refused() {
        assert_eq!(
            member_name(Path::new("postgres/dump.pgc")).as_deref(),
            Some("postgres/dump.pgc")
        );
        assert_eq!(member_name(Path::new("../etc/passwd")), None);
        assert_eq!(member_name(Path::new("/etc/passwd")), None);
        assert_eq!(member_name(Path::new("replay/../../x")), None);
        assert_eq!(member_name(Path::new("other/file")), None);
    }
}
