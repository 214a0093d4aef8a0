//! Shape checks of the materialized data roots (`authority-and-policy.md` §5.2 step 3).
//!
//! Top-level types as in the §5.1 table; `risk` and `approval_tiers` entries as §5.2 asks; and
//! `confinement` entries (`{label_prefix, scopes[]}`), because OPA semantics would silently skip
//! an entry whose prefix is not a string. The contract checks `risk` and `approval_tiers` again at
//! every evaluation, as a second line, and fails closed on malformed `grants`, `app_ids` and
//! `confinement` entries by itself.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Why a materialized root has the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShapeError {
    /// The root, for example `risk`.
    pub(crate) root: &'static str,
    /// What is wrong with it.
    pub(crate) detail: String,
}

fn shape_error(root: &'static str, detail: impl Into<String>) -> ShapeError {
    ShapeError {
        root,
        detail: detail.into(),
    }
}

/// Checks every present root; absent roots are fine.
pub(crate) fn check_roots(roots: &Map<String, Value>) -> Result<(), ShapeError> {
    if let Some(value) = roots.get("app_ids") {
        require_object("app_ids", value)?;
    }
    if let Some(value) = roots.get("grants") {
        require_object("grants", value)?;
    }
    if let Some(value) = roots.get("confinement") {
        check_confinement(require_array("confinement", value)?)?;
    }
    if let Some(value) = roots.get("restrict") {
        // A set materializes as an array. A scalar is not "no restriction" (§11 item 11).
        if !(value.is_array() || value.is_object()) {
            return Err(shape_error(
                "restrict",
                format!("must be an array, set or object, got {}", type_name(value)),
            ));
        }
    }
    if let Some(value) = roots.get("risk") {
        check_risk(require_array("risk", value)?)?;
    }
    if let Some(value) = roots.get("approval_tiers") {
        check_approval_tiers(require_array("approval_tiers", value)?)?;
    }
    Ok(())
}

fn require_object<'a>(
    root: &'static str,
    value: &'a Value,
) -> Result<&'a Map<String, Value>, ShapeError> {
    value
        .as_object()
        .ok_or_else(|| shape_error(root, format!("must be an object, got {}", type_name(value))))
}

fn require_array<'a>(root: &'static str, value: &'a Value) -> Result<&'a [Value], ShapeError> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| shape_error(root, format!("must be an array, got {}", type_name(value))))
}

/// `confinement` entries need a string `label_prefix` and an array of string `scopes`.
fn check_confinement(entries: &[Value]) -> Result<(), ShapeError> {
    for (index, entry) in entries.iter().enumerate() {
        let prefix_ok = entry.get("label_prefix").is_some_and(Value::is_string);
        let scopes_ok = entry
            .get("scopes")
            .and_then(Value::as_array)
            .is_some_and(|scopes| scopes.iter().all(Value::is_string));
        if !(prefix_ok && scopes_ok) {
            return Err(shape_error(
                "confinement",
                format!("entry {index} needs a string label_prefix and an array of string scopes"),
            ));
        }
    }
    Ok(())
}

/// `risk` entries need non-empty string `scope` and `tier`, one tier per scope.
fn check_risk(entries: &[Value]) -> Result<(), ShapeError> {
    let mut tiers: BTreeMap<&str, &str> = BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let scope = non_empty_string(entry, "scope");
        let tier = non_empty_string(entry, "tier");
        let (Some(scope), Some(tier)) = (scope, tier) else {
            return Err(shape_error(
                "risk",
                format!("entry {index} needs non-empty string scope and tier"),
            ));
        };
        match tiers.insert(scope, tier) {
            Some(previous) if previous != tier => {
                return Err(shape_error(
                    "risk",
                    format!("scope {scope:?} has two tiers, {previous:?} and {tier:?}"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `approval_tiers` entries must be valid declarations (the contract's `valid_decl`).
fn check_approval_tiers(entries: &[Value]) -> Result<(), ShapeError> {
    for (index, entry) in entries.iter().enumerate() {
        if let Err(problem) = check_declaration(entry) {
            return Err(shape_error(
                "approval_tiers",
                format!("entry {index} {problem}"),
            ));
        }
    }
    Ok(())
}

fn check_declaration(entry: &Value) -> Result<(), &'static str> {
    if !entry.is_object() {
        return Err("must be an object");
    }
    if non_empty_string(entry, "tier").is_none() {
        return Err("needs a non-empty string tier");
    }
    if let Some(approver) = entry.get("approver")
        && !matches!(approver.as_str(), Some("operator" | "subject" | "any"))
    {
        return Err("has an approver other than operator, subject or any");
    }
    if let Some(privacy) = entry.get("privacy")
        && !matches!(
            privacy.as_str(),
            Some("identified" | "pseudonymous" | "anonymous")
        )
    {
        return Err("has a privacy other than identified, pseudonymous or anonymous");
    }
    if let Some(ttl) = entry.get("ttl_seconds") {
        let positive_integer = ttl
            .as_f64()
            .is_some_and(|ttl| ttl > 0.0 && ttl.is_finite() && ttl.fract() == 0.0);
        if !positive_integer {
            return Err("has a ttl_seconds that is not a positive integer");
        }
    }
    Ok(())
}

fn non_empty_string<'a>(entry: &'a Value, key: &str) -> Option<&'a str> {
    entry
        .get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(roots: Value) -> Result<(), ShapeError> {
        match roots {
            Value::Object(map) => check_roots(&map),
            _ => Ok(()),
        }
    }

    #[test]
    fn well_formed_roots_pass() {
        let roots = json!({
            "app_ids": {"crm": "app-1"},
            "grants": {"resource://crm": {"application": "crm", "roles": {"r": ["crm:read"]}}},
            "confinement": [{"label_prefix": "x", "scopes": []}],
            "restrict": {},
            "risk": [{"scope": "crm:read", "tier": "high"}, {"scope": "crm:read", "tier": "high"}],
            "approval_tiers": [
                {"tier": "high"},
                {"tier": "low", "approver": "any", "privacy": "anonymous", "ttl_seconds": 60.0}
            ]
        });
        assert_eq!(check(roots), Ok(()));
        assert_eq!(check(json!({})), Ok(()));
    }

    #[test]
    fn top_level_types_are_enforced() {
        for (root, value) in [
            ("app_ids", json!([])),
            ("grants", json!("x")),
            ("confinement", json!({})),
            ("risk", json!({})),
            ("approval_tiers", json!(null)),
        ] {
            let err = check(json!({ root: value })).unwrap_err();
            assert_eq!(err.root, root);
        }
    }

    #[test]
    fn confinement_entries_need_a_string_prefix_and_string_scopes() {
        for entry in [
            json!("sandbox-"),
            json!({"scopes": ["a"]}),
            json!({"label_prefix": 1, "scopes": ["a"]}),
            json!({"label_prefix": "x", "scopes": "a"}),
            json!({"label_prefix": "x", "scopes": [1]}),
        ] {
            assert_eq!(
                check(json!({"confinement": [entry]})).unwrap_err().root,
                "confinement"
            );
        }
    }

    #[test]
    fn scalar_restrict_is_rejected() {
        for value in [json!(true), json!(1), json!("frozen"), json!(null)] {
            assert_eq!(
                check(json!({"restrict": value})).unwrap_err().root,
                "restrict"
            );
        }
        assert_eq!(check(json!({"restrict": ["x"]})), Ok(()));
    }

    #[test]
    fn risk_entries_need_scope_and_tier_strings() {
        for entry in [
            json!("crm:read"),
            json!({"scope": "crm:read"}),
            json!({"scope": "", "tier": "high"}),
            json!({"scope": "crm:read", "tier": 3}),
        ] {
            assert_eq!(check(json!({"risk": [entry]})).unwrap_err().root, "risk");
        }
    }

    #[test]
    fn a_scope_with_two_tiers_is_rejected() {
        let err = check(json!({"risk": [
            {"scope": "crm:read", "tier": "high"},
            {"scope": "crm:read", "tier": "low"}
        ]}))
        .unwrap_err();
        assert_eq!(err.root, "risk");
        assert!(err.detail.contains("two tiers"), "{}", err.detail);
    }

    #[test]
    fn invalid_approval_declarations_are_rejected() {
        for entry in [
            json!("high"),
            json!({"approver": "operator"}),
            json!({"tier": ""}),
            json!({"tier": "high", "approver": "root"}),
            json!({"tier": "high", "privacy": "public"}),
            json!({"tier": "high", "ttl_seconds": 0}),
            json!({"tier": "high", "ttl_seconds": 1.5}),
            json!({"tier": "high", "ttl_seconds": "60"}),
        ] {
            assert_eq!(
                check(json!({"approval_tiers": [entry]})).unwrap_err().root,
                "approval_tiers"
            );
        }
    }
}
