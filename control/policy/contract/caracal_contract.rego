# Caracal decision contract, semantics version 2026-07-12.
#
# Written from authority-and-policy.md section 5.4. The bundle supplies the six
# adopter roots as plain data under data.caracal.authz (app_ids, grants,
# confinement, restrict, risk, approval_tiers); this module must never define a
# rule with one of those names. `result` is always defined and has exactly one
# value: the request shape is classified first, then the guards of the decision
# table run top to bottom as one else-chain per shape.
#
# The module has two parts:
#
# 1. Data-derived values (`derive_values`). Everything the decision needs that
#    depends on the data alone: the malformed_risk / malformed_approval flags
#    (the second line of section 5.2), `restricted`, and lookup tables for the
#    mint diagnostics. They read data.caracal.authz only, never input. The
#    bundle build evaluates `derive_values` once and adds the value as
#    data.caracal.derived; `derived` reads it from there and falls back to
#    computing it here when that namespace is absent (hand-made data, the
#    start-up self check). This module is the only definition of these values.
#
# 2. The decision (`result`), evaluated per request.
#
# Written for regorus's tree-walking interpreter, which evaluates part 2 on
# every request. Measured costs at the pinned version (one request, 2-core
# build machine): about 3 us to evaluate a rule the first time, 0.5 us to read
# a rule or data value again, 1 us per built-in call, 1.5 us per user function
# call, 1 us per comprehension plus its iterations; reading input and local
# variables is nearly free. So the request path
# - evaluates few rules: the shape is classified inside `result`'s else-chain,
#   and each shape's guards are one else-chain rule;
# - builds result documents inline rather than through helper functions;
# - tests presence and emptiness with references instead of helper rules or
#   built-ins where the meaning is identical (see `not x == x` and `x[0]`);
# - does nothing per `risk` or `approval_tiers` entry.
#
# Because regorus raises an error for `some x in <scalar>`, every value a rule
# iterates over is first narrowed to the type it must have.
#
# No body of an else-chain iterates: existence checks over collections are
# comprehensions compared with []. This costs the interpreter nothing measurable
# and keeps the module correct on regorus's RVM (the `rvm` feature, not enabled
# in this workspace), which at the pinned version does not take the else after
# a body that iterates and fails. With that feature enabled locally, the module
# gave the same result documents as the interpreter on 4,000 generated cases.
package caracal.authz

import rego.v1

# ---------------------------------------------------------------------------
# 1. Data-derived values.
# ---------------------------------------------------------------------------

# Adopter roots that are iterated over, narrowed to arrays. An absent root
# counts as empty.
default confinement_entries := []

confinement_entries := data.caracal.authz.confinement if is_array(data.caracal.authz.confinement)

default risk_entries := []

risk_entries := data.caracal.authz.risk if is_array(data.caracal.authz.risk)

default approval_entries := []

approval_entries := data.caracal.authz.approval_tiers if is_array(data.caracal.authz.approval_tiers)

# restricted: restrict has at least one element or entry. A value that is not a
# collection cannot be read as "no restriction" (the bundle build rejects it;
# this is the second line), so it freezes the zone too.
default restricted := false

restricted if count(data.caracal.authz.restrict) > 0

restricted if {
	_ = data.caracal.authz.restrict
	not is_array(data.caracal.authz.restrict)
	not is_set(data.caracal.authz.restrict)
	not is_object(data.caracal.authz.restrict)
}

# malformed_risk: risk is not an array, an entry is not an object with
# non-empty string scope and tier, or a scope has two tiers.
#
# The field lists skip entries that are not objects or lack the field, so a
# count below the number of entries finds them; concat is undefined when any
# element is not a string; and a scope with two tiers gives more distinct
# (scope, tier) pairs than distinct scopes.
default malformed_risk := false

malformed_risk if {
	_ = data.caracal.authz.risk
	not is_array(data.caracal.authz.risk)
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

# malformed_approval: approval_tiers is not an array, or an entry is not a
# valid declaration. valid_decl(d) := d is an object, d.tier a non-empty
# string, d.approver (default operator) in {operator, subject, any}, d.privacy
# (default identified) in {identified, pseudonymous, anonymous}, and
# d.ttl_seconds (default 1800, for this check only) a number with
# ttl == round(ttl) and ttl > 0.
#
# Checked over all entries at once: a field reference and object.get are
# undefined for an entry that is not an object, which shortens the lists below.
default malformed_approval := false

malformed_approval if {
	_ = data.caracal.authz.approval_tiers
	not is_array(data.caracal.authz.approval_tiers)
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

# confinement_malformed: confinement is not an array, or an entry's prefix is
# not a string. The bundle build rejects both; as a second line, such an entry
# applies to every session (and a mint always requests at least one scope),
# and confinement that is not an array confines everything.
default confinement_malformed := false

confinement_malformed if {
	_ = data.caracal.authz.confinement
	not is_array(data.caracal.authz.confinement)
}

confinement_malformed if {
	some c in confinement_entries
	not is_string(c.label_prefix)
}

# The label prefixes of the confinement entries, for a one-call pre-check of
# whether any entry applies to a session. Read only when confinement is not
# malformed, so every prefix is a string.
default confinement_prefixes := []

confinement_prefixes := [c.label_prefix | some c in confinement_entries] if not confinement_malformed

# tier(s) as the classified {"scope", "tier"} pair, and the approval_tiers
# entries (exactly as declared) whose tier is tier(s), both keyed by scope.
# Read only after the malformed_risk and malformed_approval guards, so each
# scope has one tier and every declaration has a string tier.
default risk_of := {}

risk_of := {e.scope: {"scope": e.scope, "tier": e.tier} | some e in risk_entries} if {
	not malformed_risk
	not malformed_approval
}

default step_up_of := {}

step_up_of := {e.scope: {d | some d in approval_entries; d.tier == e.tier} | some e in risk_entries} if {
	not malformed_risk
	not malformed_approval
}

# Everything above, as one document. The bundle build stores it as
# data.caracal.derived.
derive_values := {
	"restricted": restricted,
	"malformed_risk": malformed_risk,
	"malformed_approval": malformed_approval,
	"confinement_malformed": confinement_malformed,
	"confinement_prefixes": confinement_prefixes,
	"risk_of": risk_of,
	"step_up_of": step_up_of,
}

derived := data.caracal.derived if {
	_ = data.caracal.derived
} else := derive_values

# ---------------------------------------------------------------------------
# 2. The decision.
#
# Notation of section 5.4: R is input.context.requested_scopes, S its set, P
# the non-empty tokens of subject_claims.scope split on single spaces,
# G = grants[resource.identifier].
#
# has(x) is written `_ = x`, and not has(x) is written `not x == x`: a
# reference that is present equals itself whatever its value (null and false
# included), and an absent one makes the comparison undefined. For a JSON
# input, `R[0]` is defined exactly when R is a non-empty array.
#
# owns := G.application in keys, computed as one lookup instead of a scan:
# G.application is in keys exactly when app_ids[G.application] == principal.id.
# Both lookups are written from `data` (as in the notation) rather than through
# local variables, because regorus converts a number index into a string key
# only on references rooted at `data`.
# ---------------------------------------------------------------------------

# R narrowed to an array (the workload shape does not require one).
default requested := []

requested := input.context.requested_scopes if is_array(input.context.requested_scopes)

# Shape first (the first match classifies the request), then each shape's
# guards. A restriction denies every shape.
result := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "restriction_active"}]} if {
	derived.restricted
} else := workload_result if {
	# workload: principal.type == "Workload", action.id == "CredentialInjection",
	# no subject_claims, no delegation_edge, no context.agent_session_id.
	input.principal.type == "Workload"
	input.action.id == "CredentialInjection"
	not input.context.subject_claims == input.context.subject_claims
	not input.delegation_edge == input.delegation_edge
	not input.context.agent_session_id == input.context.agent_session_id
} else := use_result if {
	# use: subject_claims.delegation_edge_id is a non-empty string, |R| = 0,
	# |P| > 0 (split is undefined when the scope claim is not a string).
	input.context.subject_claims.delegation_edge_id != ""
	is_string(input.context.subject_claims.delegation_edge_id)
	not input.context.requested_scopes[0] == input.context.requested_scopes[0]
	[t | some t in split(input.context.subject_claims.scope, " "); t != ""] != []
} else := mint_result if {
	# mint: has(delegation_edge.id), has(context.agent_session_id), no
	# subject_claims, |R| > 0, "agent:lifecycle" not in R.
	_ = input.delegation_edge.id
	_ = input.context.agent_session_id
	not input.context.subject_claims == input.context.subject_claims
	_ = input.context.requested_scopes[0]
	not "agent:lifecycle" in input.context.requested_scopes
} else := {"decision": "allow", "evaluation_status": "complete", "determining_policies": [{"policy": "caracal-bootstrap"}], "diagnostics": []} if {
	# bootstrap: S == {"agent:lifecycle"}, no subject_claims, no
	# delegation_edge, no context.agent_session_id; allowed when owned, with
	# no role check. A bootstrap failing ownership falls through to the
	# default deny.
	is_array(input.context.requested_scopes)
	{s | some s in input.context.requested_scopes} == {"agent:lifecycle"}
	not input.context.subject_claims == input.context.subject_claims
	not input.delegation_edge == input.delegation_edge
	not input.context.agent_session_id == input.context.agent_session_id
	data.caracal.authz.app_ids[data.caracal.authz.grants[input.resource.identifier].application] == input.principal.id
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "no_rule_matched"}]}

# workload: no grants check (the workload binding is the grant).
workload_result := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "malformed_risk_data"}]} if {
	derived.malformed_risk
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "malformed_approval_data"}]} if {
	derived.malformed_approval
} else := {"decision": "allow", "evaluation_status": "complete", "determining_policies": [{"policy": "caracal-workload-mint"}], "diagnostics": mint_diagnostics(requested)}

# mint: R is a non-empty array here.
mint_result := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "malformed_risk_data"}]} if {
	derived.malformed_risk
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "malformed_approval_data"}]} if {
	derived.malformed_approval
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "resource_not_granted"}]} if {
	# not owns
	not data.caracal.authz.app_ids[data.caracal.authz.grants[input.resource.identifier].application] == input.principal.id
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "delegation_scope_exceeded"}]} if {
	# not narrowed: delegated scopes that are not an array delegate nothing.
	not is_array(input.delegation_edge.scopes)
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "delegation_scope_exceeded"}]} if {
	[s | some s in input.context.requested_scopes; not s in input.delegation_edge.scopes] != []
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "confinement_violation"}]} if {
	derived.confinement_malformed
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "confinement_violation"}]} if {
	# not confined: an entry applies when one of the session's labels starts
	# with its prefix; then every requested scope must be among its scopes.
	# Labels that are not an array are none. The pre-check is exactly false
	# when no label starts with any prefix (undefined when a label is not a
	# string, which then goes through the loop like the others).
	not strings.any_prefix_match(input.principal.labels, derived.confinement_prefixes) == false
	is_array(input.principal.labels)
	[s |
		some c in data.caracal.authz.confinement
		some l in input.principal.labels
		startswith(l, c.label_prefix)
		some s in input.context.requested_scopes
		not s in c.scopes
	] != []
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "role_scope_mismatch"}]} if {
	# not role_ok(S): no label whose role in G is an array holding every
	# requested scope. Labels that are not an array are none.
	not is_array(input.principal.labels)
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "role_scope_mismatch"}]} if {
	grant := data.caracal.authz.grants[input.resource.identifier]
	[l |
		some l in input.principal.labels
		role_scopes := grant.roles[l]
		is_array(role_scopes)
		every s in input.context.requested_scopes {
			s in role_scopes
		}
	] == []
} else := {"decision": "allow", "evaluation_status": "complete", "determining_policies": [{"policy": concat("", ["caracal-", data.caracal.authz.grants[input.resource.identifier].application, "-mint"])}], "diagnostics": mint_diagnostics(input.context.requested_scopes)}

# use: P is non-empty here.
use_result := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "mandate_target_mismatch"}]} if {
	# resource.identifier not in subject_claims.target (an array, else empty).
	not is_array(input.context.subject_claims.target)
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "mandate_target_mismatch"}]} if {
	not input.resource.identifier in input.context.subject_claims.target
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "resource_not_granted"}]} if {
	# not owns
	not data.caracal.authz.app_ids[data.caracal.authz.grants[input.resource.identifier].application] == input.principal.id
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "role_scope_mismatch"}]} if {
	# not role_ok(P)
	not is_array(input.principal.labels)
} else := {"decision": "deny", "evaluation_status": "complete", "determining_policies": [], "diagnostics": [{"reason": "role_scope_mismatch"}]} if {
	grant := data.caracal.authz.grants[input.resource.identifier]
	presented := {t | some t in split(input.context.subject_claims.scope, " "); t != ""}
	[l |
		some l in input.principal.labels
		role_scopes := grant.roles[l]
		is_array(role_scopes)
		every t in presented {
			t in role_scopes
		}
	] == []
} else := {"decision": "allow", "evaluation_status": "complete", "determining_policies": [{"policy": concat("", ["caracal-", data.caracal.authz.grants[input.resource.identifier].application, "-use"])}], "diagnostics": []}

# Mint diagnostics for the requested scopes: [step_up_required] when M is
# non-empty, then [risk] when a scope is classified. M is the sorted set of
# approval_tiers entries whose tier classifies a requested scope; risk lists
# the sorted distinct {"scope", "tier"} pairs. Only read after the malformed
# guards.
mint_diagnostics(scopes) := array.concat(
	[{"step_up_required": {"type": "human_approval", "tiers": sort(matching)}} | matching != set()],
	[{"risk": sort(classified)} | classified != set()],
) if {
	ds := derived
	classified := {pair | some s in scopes; pair := ds.risk_of[s]}
	matching := {d | some pair in classified; some d in ds.step_up_of[pair.scope]}
}

# keys = { k | app_ids[k] == principal.id }, as in section 5.4. The decision
# uses the equivalent single lookup (see owns above); this rule documents the
# notation and is evaluated only when asked for.
keys contains k if {
	is_object(data.caracal.authz.app_ids)
	some k, id in data.caracal.authz.app_ids
	id == input.principal.id
}
