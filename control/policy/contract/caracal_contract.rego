# Caracal decision contract, semantics version 2026-07-12.
#
# Written from authority-and-policy.md section 5.4. The bundle supplies the six
# adopter roots as plain data under data.caracal.authz (app_ids, grants,
# confinement, restrict, risk, approval_tiers); this module must never define a
# rule with one of those names. `result` is always defined and has exactly one
# value: the request shape is classified first, then the guards of the decision
# table run top to bottom as one else-chain.
#
# Written for regorus, which evaluates this module on every request:
# - regorus (unlike OPA) raises an error for `some x in <scalar>`, so every
#   iterated root is first narrowed to the type it must have;
# - each rule, call and loop iteration costs time on the request path, so the
#   per-entry checks of risk and approval_tiers are done over whole arrays with
#   built-ins where the meaning allows, and no user function runs per entry.
package caracal.authz

import rego.v1

# ---------------------------------------------------------------------------
# Adopter data. An absent root counts as empty. The roots that rules iterate
# over are narrowed to arrays first; app_ids and grants are only ever indexed,
# which is undefined (never an error) on a value of the wrong type.
# ---------------------------------------------------------------------------

default confinement_entries := []

confinement_entries := data.caracal.authz.confinement if is_array(data.caracal.authz.confinement)

default risk_entries := []

risk_entries := data.caracal.authz.risk if is_array(data.caracal.authz.risk)

default approval_entries := []

approval_entries := data.caracal.authz.approval_tiers if is_array(data.caracal.authz.approval_tiers)

# ---------------------------------------------------------------------------
# Request fields.
# ---------------------------------------------------------------------------

# R: the requested scopes, in the order sent.
default requested := []

requested := input.context.requested_scopes if is_array(input.context.requested_scopes)

# S: the set of requested scopes.
requested_set := {s | some s in requested}

# P: the non-empty tokens of subject_claims.scope split on single spaces.
default presented := set()

presented := {t | some t in split(input.context.subject_claims.scope, " "); t != ""} if {
	is_string(input.context.subject_claims.scope)
}

default principal_labels := []

principal_labels := input.principal.labels if is_array(input.principal.labels)

default edge_scopes := []

edge_scopes := input.delegation_edge.scopes if is_array(input.delegation_edge.scopes)

default mandate_targets := []

mandate_targets := input.context.subject_claims.target if is_array(input.context.subject_claims.target)

# has(x): the field is present, whatever its value (null and false included).
has_subject_claims if {
	_ = input.context.subject_claims
}

has_delegation_edge if {
	_ = input.delegation_edge
}

has_delegation_edge_id if {
	_ = input.delegation_edge.id
}

has_agent_session if {
	_ = input.context.agent_session_id
}

non_empty_string(x) if {
	is_string(x)
	x != ""
}

# ---------------------------------------------------------------------------
# Derived values.
# ---------------------------------------------------------------------------

# G = grants[resource.identifier]
grant := data.caracal.authz.grants[input.resource.identifier]

# keys = { k | app_ids[k] == principal.id }
keys contains k if {
	app_ids := data.caracal.authz.app_ids
	is_object(app_ids)
	some k, id in app_ids
	id == input.principal.id
}

# owns := G.application in keys, computed as one lookup instead of a scan:
# G.application is in keys exactly when app_ids[G.application] == principal.id.
owns if data.caracal.authz.app_ids[grant.application] == input.principal.id

narrowed if {
	every s in requested {
		s in edge_scopes
	}
}

# A confinement entry applies when one of the session's labels starts with its
# prefix; then every requested scope must be among its scopes. The bundle build
# rejects entries of the wrong shape; as a second line, an entry whose prefix is
# not a string applies to every session, scopes that are not an array allow
# nothing, and confinement that is not an array confines everything.
confinement_violated if {
	some c in confinement_entries
	some l in principal_labels
	startswith(l, c.label_prefix)
	some s in requested
	not s in c.scopes
}

confinement_violated if {
	some c in confinement_entries
	not is_string(c.label_prefix)
	count(requested) > 0
}

confinement_violated if {
	confinement := data.caracal.authz.confinement
	not is_array(confinement)
}

confined if not confinement_violated

role_ok(xs) if {
	some l in principal_labels
	role_scopes := grant.roles[l]
	is_array(role_scopes)
	every x in xs {
		x in role_scopes
	}
}

# Any element or entry freezes the zone. A value that is not a collection
# cannot be read as "no restriction" (the bundle build rejects it; this is the
# second line), so it freezes the zone too.
restricted if count(data.caracal.authz.restrict) > 0

restricted if {
	restrict := data.caracal.authz.restrict
	not is_array(restrict)
	not is_set(restrict)
	not is_object(restrict)
}

# malformed_risk: risk is not an array, an entry is not an object with
# non-empty string scope and tier, or a scope has two tiers.
#
# The field lists skip entries that are not objects or lack the field, so a
# count below the number of entries finds them; concat is undefined when any
# element is not a string; and a scope with two tiers gives more distinct
# (scope, tier) pairs than distinct scopes.
malformed_risk if {
	risk := data.caracal.authz.risk
	not is_array(risk)
}

malformed_risk if not risk_entries_well_formed

risk_entries_well_formed if {
	scopes := [e.scope | some e in risk_entries]
	tiers := [e.tier | some e in risk_entries]
	count(scopes) == count(risk_entries)
	count(tiers) == count(risk_entries)
	concat("", scopes)
	concat("", tiers)
	not "" in scopes
	not "" in tiers
	count({[e.scope, e.tier] | some e in risk_entries}) == count({s | some s in scopes})
}

# valid_decl(d) := d is an object, d.tier a non-empty string, d.approver
# (default operator) in {operator, subject, any}, d.privacy (default identified)
# in {identified, pseudonymous, anonymous}, and d.ttl_seconds (default 1800,
# for this check only) a number with ttl == round(ttl) and ttl > 0.
#
# Checked over all entries at once: a field reference and object.get are
# undefined for an entry that is not an object, which shortens the lists below.
malformed_approval if {
	approval_tiers := data.caracal.authz.approval_tiers
	not is_array(approval_tiers)
}

malformed_approval if not approval_entries_well_formed

approval_entries_well_formed if {
	names := [d.tier | some d in approval_entries]
	approvers := {object.get(d, "approver", "operator") | some d in approval_entries}
	privacies := {object.get(d, "privacy", "identified") | some d in approval_entries}
	ttls := [object.get(d, "ttl_seconds", 1800) | some d in approval_entries]
	count(names) == count(approval_entries)
	count(ttls) == count(approval_entries)
	concat("", names)
	not "" in names
	count(approvers - {"operator", "subject", "any"}) == 0
	count(privacies - {"identified", "pseudonymous", "anonymous"}) == 0
	every ttl in ttls {
		is_number(ttl)
		ttl == round(ttl)
		ttl > 0
	}
}

# tier(s) for every classified requested scope, as {"scope", "tier"} pairs.
# Only read after the malformed_risk guard, so each scope has one tier here.
classified contains {"scope": e.scope, "tier": e.tier} if {
	some e in risk_entries
	e.scope in requested_set
}

classified_tiers := {c.tier | some c in classified}

# M: the approval_tiers entries, exactly as declared, whose tier classifies a
# requested scope.
matching_tiers contains d if {
	some d in approval_entries
	d.tier in classified_tiers
}

default step_up_diagnostics := []

step_up_diagnostics := [{"step_up_required": {"type": "human_approval", "tiers": sort(matching_tiers)}}] if {
	count(matching_tiers) > 0
}

default risk_diagnostics := []

risk_diagnostics := [{"risk": sort(classified)}] if count(classified) > 0

mint_diagnostics := array.concat(step_up_diagnostics, risk_diagnostics)

# ---------------------------------------------------------------------------
# Shape: the first match classifies the request.
# ---------------------------------------------------------------------------

shape := "workload" if {
	input.principal.type == "Workload"
	input.action.id == "CredentialInjection"
	not has_subject_claims
	not has_delegation_edge
	not has_agent_session
} else := "use" if {
	non_empty_string(input.context.subject_claims.delegation_edge_id)
	count(requested) == 0
	count(presented) > 0
} else := "mint" if {
	has_delegation_edge_id
	has_agent_session
	not has_subject_claims
	count(requested) > 0
	not "agent:lifecycle" in requested_set
} else := "bootstrap" if {
	requested_set == {"agent:lifecycle"}
	not has_subject_claims
	not has_delegation_edge
	not has_agent_session
} else := "none"

mint_or_workload if shape == "workload"

mint_or_workload if shape == "mint"

# ---------------------------------------------------------------------------
# Result documents.
# ---------------------------------------------------------------------------

deny_result(reason) := {
	"decision": "deny",
	"evaluation_status": "complete",
	"determining_policies": [],
	"diagnostics": [{"reason": reason}],
}

allow_result(policy, diagnostics) := {
	"decision": "allow",
	"evaluation_status": "complete",
	"determining_policies": [{"policy": policy}],
	"diagnostics": diagnostics,
}

# ---------------------------------------------------------------------------
# The decision table, top to bottom.
# ---------------------------------------------------------------------------

result := deny_result("restriction_active") if {
	restricted
} else := deny_result("malformed_risk_data") if {
	mint_or_workload
	malformed_risk
} else := deny_result("malformed_approval_data") if {
	mint_or_workload
	malformed_approval
} else := allow_result("caracal-workload-mint", mint_diagnostics) if {
	shape == "workload"
} else := deny_result("resource_not_granted") if {
	shape == "mint"
	not owns
} else := deny_result("delegation_scope_exceeded") if {
	shape == "mint"
	not narrowed
} else := deny_result("confinement_violation") if {
	shape == "mint"
	not confined
} else := deny_result("role_scope_mismatch") if {
	shape == "mint"
	not role_ok(requested_set)
} else := allow_result(concat("", ["caracal-", grant.application, "-mint"]), mint_diagnostics) if {
	shape == "mint"
} else := deny_result("mandate_target_mismatch") if {
	shape == "use"
	not input.resource.identifier in mandate_targets
} else := deny_result("resource_not_granted") if {
	shape == "use"
	not owns
} else := deny_result("role_scope_mismatch") if {
	shape == "use"
	not role_ok(presented)
} else := allow_result(concat("", ["caracal-", grant.application, "-use"]), []) if {
	shape == "use"
} else := allow_result("caracal-bootstrap", []) if {
	shape == "bootstrap"
	owns
} else := deny_result("no_rule_matched")
