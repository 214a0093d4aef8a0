//! The pure rules of delegation create (authority §2.2): the constraint object's fields and
//! bounds, the expiry requirement, broad edges, and "a child only narrows its parent".
//! Database reads (sessions, resources, the parent edge, the cycle search) happen in
//! [`crate::delegations`]; everything decided here is a function of values, so it is tested
//! table by table.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use control_model::authority::{Constraints, MAX_HOPS};
use serde_json::{Map, Value};

use crate::error::{Problem, refuse};

/// The most resources an edge may name.
const MAX_RESOURCES: usize = 64;
/// The longest edge TTL.
const MAX_TTL_SECONDS: i64 = 86_400;
/// The largest budget.
const MAX_BUDGET: i64 = 64;
/// The longest `broad_reason`, in characters.
const MAX_BROAD_REASON: usize = 256;
/// The warning a broad edge carries.
pub const BROAD_WARNING: &str = "resource_null_delegation_broadens_resource_matching";
/// The default `broad_reason` of a broad edge.
pub const BROAD_REASON: &str = "resource_null_delegation";

/// The constraints of a create request after step 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The validated constraint object, as stored.
    pub object: Map<String, Value>,
    /// The same, typed.
    pub parsed: Constraints,
    /// An explicit `expires_at`.
    pub expires_at: Option<DateTime<Utc>>,
}

fn invalid(field: &str) -> Problem {
    Problem::new(
        400,
        format!("invalid_{field}"),
        format!("constraint {field} is invalid"),
    )
}

fn int_in(value: &Value, min: i64, max: i64) -> Option<i64> {
    value.as_i64().filter(|v| (min..=max).contains(v))
}

/// Step 1: merges `constraints_json` with `constraints` (the latter wins per field), lets
/// the body's `ttl_seconds` fill a missing constraint `ttl_seconds` and the body's
/// `expires_at` take the place of the constraint's, and checks every field:
/// unknown fields are 400 `invalid_delegation_constraint`, a bad field 400
/// `invalid_<field>`, `max_hops` and `max_depth` that differ 400 `invalid_max_hops`, and an
/// edge with neither `expires_at` nor `ttl_seconds` 400 `delegation_expiry_required`.
pub fn normalize(
    constraints_json: Option<&Value>,
    constraints: Option<&Value>,
    body_ttl: Option<&Value>,
    body_expires_at: Option<&Value>,
) -> Result<Normalized, Problem> {
    let mut object = Map::new();
    for source in [constraints_json, constraints].into_iter().flatten() {
        match source {
            Value::Object(members) => {
                object.extend(members.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Value::Null => {}
            _ => return Err(refuse(400, "invalid_delegation_constraint")),
        }
    }
    if let Some(ttl) = body_ttl.filter(|t| !t.is_null())
        && !object.contains_key("ttl_seconds")
    {
        object.insert("ttl_seconds".to_owned(), ttl.clone());
    }
    if let Some(expires_at) = body_expires_at.filter(|e| !e.is_null()) {
        object.insert("expires_at".to_owned(), expires_at.clone());
    }
    object.retain(|_, v| !v.is_null());
    for (name, value) in &object {
        let ok = match name.as_str() {
            "resources" => value.as_array().is_some_and(|items| {
                items.len() <= MAX_RESOURCES
                    && items
                        .iter()
                        .all(|i| i.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 512))
            }),
            "max_hops" | "max_depth" => {
                if int_in(value, 1, i64::try_from(MAX_HOPS).unwrap_or(10)).is_none() {
                    return Err(invalid("max_hops"));
                }
                true
            }
            "ttl_seconds" => int_in(value, 1, MAX_TTL_SECONDS).is_some(),
            "expires_at" => value
                .as_str()
                .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok()),
            "budget" => int_in(value, 1, MAX_BUDGET).is_some(),
            "policy_approved" => value.is_boolean(),
            "broad_reason" => value.as_str().is_some_and(|s| {
                let n = s.chars().count();
                (1..=MAX_BROAD_REASON).contains(&n)
            }),
            _ => return Err(refuse(400, "invalid_delegation_constraint")),
        };
        if !ok {
            return Err(invalid(name));
        }
    }
    if let (Some(a), Some(b)) = (object.get("max_hops"), object.get("max_depth"))
        && a != b
    {
        return Err(invalid("max_hops"));
    }
    let parsed = Constraints::parse(&Value::Object(object.clone()))
        .map_err(|_bad| refuse(400, "invalid_delegation_constraint"))?;
    let expires_at = parsed.expires_at().map_err(|_bad| invalid("expires_at"))?;
    if expires_at.is_none() && parsed.ttl_seconds.is_none() {
        return Err(refuse(400, "delegation_expiry_required"));
    }
    Ok(Normalized {
        object,
        parsed,
        expires_at,
    })
}

/// Step 4: an edge is broad when it names no resource at all.
pub fn is_broad(resource_id: Option<&str>, constraints: &Constraints) -> bool {
    resource_id.is_none() && constraints.resources.as_ref().is_none_or(Vec::is_empty)
}

/// A broad edge that passed step 4: `policy_approved` is forced to `true` and
/// `broad_reason` defaults to [`BROAD_REASON`].
pub fn mark_broad(normalized: &mut Normalized) {
    normalized
        .object
        .insert("policy_approved".to_owned(), Value::Bool(true));
    normalized
        .object
        .entry("broad_reason")
        .or_insert_with(|| Value::String(BROAD_REASON.to_owned()));
    normalized.parsed.policy_approved = Some(true);
    if normalized.parsed.broad_reason.is_none() {
        normalized.parsed.broad_reason = Some(BROAD_REASON.to_owned());
    }
}

/// A resource named by an edge: row id and identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedResource {
    /// Row id.
    pub id: String,
    /// `resource://…` identifier.
    pub identifier: String,
}

/// One side of the narrowing comparison.
#[derive(Debug, Clone)]
pub struct Side<'a> {
    /// Scopes.
    pub scopes: &'a [String],
    /// Expiry: the parent's stored one; the child's explicit one, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// The edge's `resource_id`, resolved.
    pub resource: Option<&'a NamedResource>,
    /// Its constraints.
    pub constraints: &'a Constraints,
}

impl Side<'_> {
    /// Every resource identifier the edge names: its `resource_id` and its
    /// `constraints.resources`.
    fn resource_identifiers(&self) -> BTreeSet<&str> {
        let mut all: BTreeSet<&str> = self
            .constraints
            .resources
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if let Some(resource) = self.resource {
            all.insert(&resource.identifier);
        }
        all
    }

    /// `budget`, or the number of scopes when it has none.
    fn budget(&self) -> i64 {
        self.constraints
            .budget
            .unwrap_or_else(|| i64::try_from(self.scopes.len()).unwrap_or(i64::MAX))
    }
}

/// Step 9: whether `child` narrows `parent` in every respect. Otherwise the create is 403
/// `delegation_exceeds_parent_authority`.
pub fn narrows(parent: &Side<'_>, child: &Side<'_>) -> bool {
    let scopes = child.scopes.iter().all(|s| parent.scopes.contains(s));
    let expiry = match (child.expires_at, parent.expires_at) {
        (Some(c), Some(p)) => c <= p,
        _ => true,
    };
    let child_resources = child.resource_identifiers();
    let resources = match (parent.resource, &parent.constraints.resources) {
        (Some(parent_resource), _) => {
            child.resource.is_some_and(|r| r.id == parent_resource.id)
                || (!child_resources.is_empty()
                    && child_resources
                        .iter()
                        .all(|r| *r == parent_resource.identifier))
        }
        (None, Some(list)) if !list.is_empty() => {
            !child_resources.is_empty()
                && child_resources.iter().all(|r| list.iter().any(|p| p == r))
        }
        _ => true,
    };
    let hops =
        parent.constraints.hops() > 1 && child.constraints.hops() < parent.constraints.hops();
    let ttl = match parent.constraints.ttl_seconds {
        Some(p) => child.constraints.ttl_seconds.is_some_and(|c| c <= p),
        None => true,
    };
    let budget = match parent.constraints.budget {
        Some(p) => child.budget() <= p,
        None => true,
    };
    scopes && expiry && resources && hops && ttl && budget
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;

    use super::*;

    fn normalized(constraints: Value) -> Result<Normalized, Problem> {
        normalize(None, Some(&constraints), None, None)
    }

    #[test]
    fn step_one_merges_fills_and_checks_every_field() {
        let merged = normalize(
            Some(&json!({"ttl_seconds": 60, "budget": 2})),
            Some(&json!({"budget": 3})),
            None,
            None,
        )
        .unwrap();
        assert_eq!(merged.parsed.budget, Some(3));
        assert_eq!(merged.parsed.ttl_seconds, Some(60));
        let filled = normalize(None, None, Some(&json!(120)), None).unwrap();
        assert_eq!(filled.parsed.ttl_seconds, Some(120));
        let kept = normalize(
            None,
            Some(&json!({"ttl_seconds": 30})),
            Some(&json!(120)),
            None,
        )
        .unwrap();
        assert_eq!(kept.parsed.ttl_seconds, Some(30));
        let body_expiry = normalize(
            None,
            Some(&json!({"expires_at": "2031-01-01T00:00:00Z"})),
            None,
            Some(&json!("2030-01-01T00:00:00Z")),
        )
        .unwrap();
        assert_eq!(
            body_expiry.parsed.expires_at.as_deref(),
            Some("2030-01-01T00:00:00Z")
        );

        let cases: [(Value, &str); 14] = [
            (
                json!({"ttl_seconds": 60, "colour": "red"}),
                "invalid_delegation_constraint",
            ),
            (json!({"ttl_seconds": 0}), "invalid_ttl_seconds"),
            (json!({"ttl_seconds": 86401}), "invalid_ttl_seconds"),
            (
                json!({"ttl_seconds": 60, "max_hops": 0}),
                "invalid_max_hops",
            ),
            (
                json!({"ttl_seconds": 60, "max_depth": 11}),
                "invalid_max_hops",
            ),
            (
                json!({"ttl_seconds": 60, "max_hops": 2, "max_depth": 3}),
                "invalid_max_hops",
            ),
            (json!({"ttl_seconds": 60, "budget": 65}), "invalid_budget"),
            (
                json!({"ttl_seconds": 60, "resources": [""]}),
                "invalid_resources",
            ),
            (
                json!({"ttl_seconds": 60, "resources": vec!["r"; 65]}),
                "invalid_resources",
            ),
            (
                json!({"ttl_seconds": 60, "policy_approved": "yes"}),
                "invalid_policy_approved",
            ),
            (
                json!({"ttl_seconds": 60, "broad_reason": ""}),
                "invalid_broad_reason",
            ),
            (json!({"expires_at": "tomorrow"}), "invalid_expires_at"),
            (json!({"budget": 2}), "delegation_expiry_required"),
            (json!({}), "delegation_expiry_required"),
        ];
        for (constraints, code) in cases {
            let problem = normalized(constraints.clone()).unwrap_err();
            assert_eq!(problem.code, code, "{constraints}");
            assert_eq!(problem.status, 400);
        }
        assert_eq!(
            normalize(None, Some(&json!([1])), None, None)
                .unwrap_err()
                .code,
            "invalid_delegation_constraint"
        );
        let explicit = normalized(json!({"expires_at": "2030-01-01T00:00:00Z"})).unwrap();
        assert!(explicit.expires_at.is_some());
    }

    #[test]
    fn broad_edges_are_marked() {
        let mut n = normalized(json!({"ttl_seconds": 60})).unwrap();
        assert!(is_broad(None, &n.parsed));
        assert!(!is_broad(Some("r1"), &n.parsed));
        mark_broad(&mut n);
        assert_eq!(n.object["policy_approved"], json!(true));
        assert_eq!(n.object["broad_reason"], json!(BROAD_REASON));
        let named = normalized(json!({"ttl_seconds": 60, "resources": ["resource://a"]})).unwrap();
        assert!(!is_broad(None, &named.parsed));
    }

    struct Edge {
        scopes: Vec<String>,
        expires_at: Option<DateTime<Utc>>,
        resource: Option<NamedResource>,
        constraints: Constraints,
    }

    impl Edge {
        fn side(&self) -> Side<'_> {
            Side {
                scopes: &self.scopes,
                expires_at: self.expires_at,
                resource: self.resource.as_ref(),
                constraints: &self.constraints,
            }
        }
    }

    fn edge(scopes: &[&str], constraints: Value) -> Edge {
        Edge {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_at: None,
            resource: None,
            constraints: Constraints::parse(&constraints).unwrap(),
        }
    }

    fn resource(id: &str) -> NamedResource {
        NamedResource {
            id: id.to_owned(),
            identifier: format!("resource://{id}"),
        }
    }

    #[test]
    fn a_child_narrows_its_parent_in_every_respect() {
        let now = Utc::now();
        let parent = || {
            let mut p = edge(
                &["read", "write"],
                json!({"max_hops": 3, "ttl_seconds": 600, "budget": 2, "resources": ["resource://a", "resource://b"]}),
            );
            p.expires_at = Some(now + Duration::hours(1));
            p
        };
        let good = || {
            edge(
                &["read"],
                json!({"max_hops": 2, "ttl_seconds": 300, "resources": ["resource://a"]}),
            )
        };
        assert!(narrows(&parent().side(), &good().side()));

        // (description, child) pairs that must be refused.
        let mut wider_scope = good();
        wider_scope.scopes.push("admin".into());
        let mut later = good();
        later.expires_at = Some(now + Duration::hours(2));
        let outside = edge(
            &["read"],
            json!({"max_hops": 2, "ttl_seconds": 300, "resources": ["resource://c"]}),
        );
        let no_resources = edge(&["read"], json!({"max_hops": 2, "ttl_seconds": 300}));
        let same_hops = edge(
            &["read"],
            json!({"max_hops": 3, "ttl_seconds": 300, "resources": ["resource://a"]}),
        );
        let no_ttl = edge(
            &["read"],
            json!({"max_hops": 2, "resources": ["resource://a"]}),
        );
        let longer_ttl = edge(
            &["read"],
            json!({"max_hops": 2, "ttl_seconds": 601, "resources": ["resource://a"]}),
        );
        let bigger_budget = edge(
            &["read"],
            json!({"max_hops": 2, "ttl_seconds": 300, "budget": 3, "resources": ["resource://a"]}),
        );
        let cases = [
            ("scope outside the parent's", wider_scope),
            ("expiry after the parent's", later),
            ("resource outside the parent's list", outside),
            ("no resource under a listing parent", no_resources),
            ("as many hops as the parent", same_hops),
            ("no ttl under a ttl parent", no_ttl),
            ("a longer ttl", longer_ttl),
            ("a bigger budget", bigger_budget),
        ];
        for (what, child) in cases {
            assert!(
                !narrows(&parent().side(), &child.side()),
                "{what} was allowed"
            );
        }
        // A one-hop parent allows no child at all.
        let exhausted = edge(&["read"], json!({"max_hops": 1}));
        assert!(!narrows(
            &exhausted.side(),
            &edge(&["read"], json!({})).side()
        ));
        // Without a budget the child's scope count is its budget.
        let budget_one = edge(&["read", "write"], json!({"max_hops": 2, "budget": 1}));
        assert!(!narrows(
            &budget_one.side(),
            &edge(&["read", "write"], json!({})).side()
        ));
        assert!(narrows(
            &budget_one.side(),
            &edge(&["read"], json!({})).side()
        ));
    }

    #[test]
    fn a_parent_resource_id_binds_the_child_to_that_resource() {
        let mut parent = edge(&["read"], json!({"max_hops": 2}));
        parent.resource = Some(resource("a"));
        let mut same_id = edge(&["read"], json!({}));
        same_id.resource = Some(resource("a"));
        assert!(narrows(&parent.side(), &same_id.side()));
        let by_identifier = edge(&["read"], json!({"resources": ["resource://a"]}));
        assert!(narrows(&parent.side(), &by_identifier.side()));
        let mut other = edge(&["read"], json!({}));
        other.resource = Some(resource("b"));
        assert!(!narrows(&parent.side(), &other.side()));
        assert!(!narrows(&parent.side(), &edge(&["read"], json!({})).side()));
    }
}
