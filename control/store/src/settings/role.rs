//! Settings every role reads the same way: the deployment mode, the issuer URL, bounded
//! integers, the instance id. Each returns a one-line error naming the variable (never a
//! value); roles wrap it in their own configuration error.

use super::Lookup;

/// Deployment mode (`CARACAL_MODE`): `dev` relaxes key requirements with warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Development: missing HMAC keys are warnings; metrics are open.
    Dev,
    /// Release candidate or stable: every key is mandatory.
    Production,
}

/// `CARACAL_MODE`: unset or `dev`, `rc` or `stable`.
pub fn mode(lookup: Lookup<'_>) -> Result<Mode, String> {
    match lookup("CARACAL_MODE").as_deref() {
        None | Some("dev") => Ok(Mode::Dev),
        Some("rc" | "stable") => Ok(Mode::Production),
        Some(_) => Err("CARACAL_MODE must be dev, rc or stable".to_owned()),
    }
}

/// `ISSUER_URL`: an http(s) URL without a trailing slash (default `http://localhost:8080`).
pub fn issuer_url(lookup: Lookup<'_>) -> Result<String, String> {
    let url = lookup("ISSUER_URL").unwrap_or_else(|| "http://localhost:8080".to_owned());
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.ends_with('/') {
        return Err("ISSUER_URL must be an http(s) URL without a trailing slash".to_owned());
    }
    Ok(url)
}

/// An integer variable within `min..=max`, `default` when unset.
pub fn number(
    lookup: Lookup<'_>,
    var: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    match lookup(var) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| format!("{var} must be an integer between {min} and {max}")),
    }
}

/// A secret from `var` or from the file named by `file_var` (not both), trimmed; `None` when
/// neither is set. The error names the variables and the I/O error kind, never content.
pub fn secret(lookup: Lookup<'_>, var: &str, file_var: &str) -> Result<Option<String>, String> {
    match (lookup(var), lookup(file_var)) {
        (Some(_), Some(_)) => Err(format!("set {var} or {file_var}, not both")),
        (Some(value), None) => Ok(Some(value.trim().to_owned())),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|text| Some(text.trim().to_owned()))
            .map_err(|e| format!("{file_var} cannot be read: {}", e.kind())),
        (None, None) => Ok(None),
    }
}

/// `CARACAL_INSTANCE_ID`, else `HOSTNAME`, else `/etc/hostname`, else `fallback`.
pub fn instance_id(lookup: Lookup<'_>, fallback: &str) -> String {
    lookup("CARACAL_INSTANCE_ID")
        .or_else(|| lookup("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| fallback.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn each_reader_names_its_variable() {
        assert_eq!(mode(&env(&[])), Ok(Mode::Dev));
        assert_eq!(
            mode(&env(&[("CARACAL_MODE", "stable")])),
            Ok(Mode::Production)
        );
        assert!(mode(&env(&[("CARACAL_MODE", "prod")])).is_err_and(|e| e.contains("CARACAL_MODE")));
        assert!(
            issuer_url(&env(&[("ISSUER_URL", "http://x/")]))
                .is_err_and(|e| e.contains("ISSUER_URL"))
        );
        assert_eq!(number(&env(&[("N", " 7 ")]), "N", 1, 1, 10), Ok(7));
        assert!(
            number(&env(&[("N", "11")]), "N", 1, 1, 10).is_err_and(|e| e.contains("N must be"))
        );
        assert_eq!(
            instance_id(&env(&[("CARACAL_INSTANCE_ID", "i-1")]), "x"),
            "i-1"
        );
    }
}
