//! A lint over the service code (storage §3.2): `caracal.zone_id` is only ever set
//! transaction-locally (`set_config(…, true)`), never for the session, so a zone cannot
//! leak to the next user of a pooled connection.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            // Test code may do forbidden things on purpose to prove they fail.
            if !matches!(name, "target" | "tests" | ".git" | "vectors") {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".sql") {
            out.push(path);
        }
    }
}

#[test]
fn service_code_never_sets_the_zone_for_the_session() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["src", "control", "gateway", "migrations"] {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "the lint must see the code base");
    let mut offences = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let flat: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        for (i, _) in flat.match_indices("set_config('caracal.zone_id'") {
            let call = &flat[i..flat.len().min(i + 120)];
            let args = call.split(')').next().unwrap_or(call);
            if !args.trim_end().ends_with("true") {
                offences.push(format!("{}: {args})", file.display()));
            }
        }
        for forbidden in ["set caracal.zone_id", "set session caracal.zone_id"] {
            if flat.contains(forbidden) {
                offences.push(format!("{}: {forbidden}", file.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "session-wide zone settings:\n{}",
        offences.join("\n")
    );
}
