//! Embeds every file of `migrations/` into the binary: generates a table of
//! `(file name, include_str!(path))` pairs in file-name order. Validation of names and
//! numbering happens at run time in `migrate::MigrationSet`, so that a bad file produces the
//! same error whether it is embedded or read with `--dir`.

use std::{env, fs, io, path::PathBuf};

fn main() -> io::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(io::Error::other)?);
    let dir = manifest_dir.join("../../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());

    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "sql"));
    files.sort();

    let mut out = String::from("/// Migration files embedded at build time, in file-name order.\n");
    out.push_str("pub(crate) static EMBEDDED: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other(format!("non-UTF-8 file name in {}", dir.display())))?;
        let abs = fs::canonicalize(path)?;
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    out.push_str("];\n");

    let out_path = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?)
        .join("embedded_migrations.rs");
    fs::write(out_path, out)
}
