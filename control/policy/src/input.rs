//! The policy input document, schema `2026-05-20` (`authority-and-policy.md` §5.3).
//!
//! Absent and `null` differ in Rego and the contract tests for presence, so every omission rule
//! of §5.3 is a `skip_serializing_if` here, and the golden tests pin the exact JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The policy input schema version, also the only accepted adopter-document `schema_version`.
pub const SCHEMA_VERSION: &str = "2026-05-20";

/// One policy input document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInput {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: String,
    /// The calling application or workload.
    pub principal: Principal,
    /// The resource the request is about.
    pub resource: Resource,
    /// What is being done.
    pub action: Action,
    /// The bound authority record; present only when one is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRef>,
    /// The delegation edge of the proof; present only with a delegation proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_edge: Option<DelegationEdge>,
    /// Claims and request context.
    pub context: Context,
}

impl PolicyInput {
    /// An input with the current schema version, no session and no delegation edge.
    pub fn new(principal: Principal, resource: Resource, action: Action, context: Context) -> Self {
        Self {
            schema_version: SCHEMA_VERSION.to_owned(),
            principal,
            resource,
            action,
            session: None,
            delegation_edge: None,
            context,
        }
    }

    /// Binds an authority record (`session.id`).
    #[must_use]
    pub fn with_session(mut self, session_id: impl Into<String>) -> Self {
        self.session = Some(SessionRef {
            id: session_id.into(),
        });
        self
    }

    /// Attaches the delegation edge of a delegation proof.
    #[must_use]
    pub fn with_delegation_edge(mut self, edge: DelegationEdge) -> Self {
        self.delegation_edge = Some(edge);
        self
    }

    /// The input as JSON, exactly as the contract sees it.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    /// What of this input the decision contract reads, as a string: two inputs with the same
    /// key get the same decision from one bundle. Adopter documents cannot read `input`
    /// (§5.1), the bundle's data is materialized once, and the contract calls no time,
    /// random or I/O built-in, so a bundle's decision is a function of exactly these paths:
    /// `principal.{type,id,labels}`, `action.id`, `resource.identifier`, whether
    /// `delegation_edge` is present with its `id` and `scopes`, whether
    /// `context.subject_claims` is present with its `scope`, `target` and
    /// `delegation_edge_id`, `context.requested_scopes` and `context.agent_session_id`.
    /// Everything else (the claims' `jti`, `iat` and `exp`, `trace_id`, the action's method
    /// and path, …) is left out, so fresh mandates of one caller share a key.
    /// `contract::tests::the_decision_key_covers_every_input_path_the_contract_reads` fails
    /// when the contract starts reading another path.
    pub(crate) fn decision_key(&self) -> Result<String, serde_json::Error> {
        /// The paths, borrowed. An absent `delegation_edge` or `subject_claims` serialises as
        /// `null`, which neither can be when present; a claim serialises as `[]` when absent
        /// and `[value]` when present, so a claim whose value is `null` (defined in Rego)
        /// keys apart from a missing one (undefined).
        #[derive(Serialize)]
        struct Key<'a> {
            principal: (PrincipalType, &'a str, &'a [String]),
            action: ActionId,
            resource: &'a str,
            delegation_edge: Option<(&'a str, &'a [String])>,
            subject_claims: Option<[&'a [Value]; 3]>,
            requested_scopes: &'a [String],
            agent_session_id: &'a str,
        }
        let claims = self
            .context
            .subject_claims
            .as_ref()
            .filter(|claims| !claims.is_empty())
            .map(|claims| {
                ["scope", "target", "delegation_edge_id"]
                    .map(|name| claims.get(name).map_or(&[][..], std::slice::from_ref))
            });
        serde_json::to_string(&Key {
            principal: (
                self.principal.principal_type,
                &self.principal.id,
                &self.principal.labels,
            ),
            action: self.action.id,
            resource: &self.resource.identifier,
            delegation_edge: self
                .delegation_edge
                .as_ref()
                .map(|edge| (edge.id.as_str(), edge.scopes.as_slice())),
            subject_claims: claims,
            requested_scopes: &self.context.requested_scopes,
            agent_session_id: &self.context.agent_session_id,
        })
    }

    /// The input as the regorus value the contract sees: equal to converting [`Self::to_json`],
    /// with the same omission rules, but built directly (the JSON detour cost about 4.6 µs per
    /// evaluation). `tests::the_direct_regorus_value_equals_the_serde_conversion` pins the
    /// equality.
    pub(crate) fn to_regorus_value(&self) -> Result<regorus::Value, serde_json::Error> {
        let mut input = Fields::new();
        input.string("schema_version", &self.schema_version);
        input.put("principal", self.principal.to_regorus_value());
        input.put("resource", self.resource.to_regorus_value());
        input.put("action", self.action.to_regorus_value());
        if let Some(session) = &self.session {
            let mut fields = Fields::new();
            fields.string("id", &session.id);
            input.put("session", fields.finish());
        }
        if let Some(edge) = &self.delegation_edge {
            input.put("delegation_edge", edge.to_regorus_value()?);
        }
        input.put("context", self.context.to_regorus_value()?);
        Ok(input.finish())
    }
}

/// An object under construction for [`PolicyInput::to_regorus_value`].
struct Fields(regorus::value::Object);

impl Fields {
    const fn new() -> Self {
        Self(regorus::value::Object::new())
    }

    fn put(&mut self, key: &str, value: regorus::Value) {
        self.0.insert(regorus::Value::from(key), value);
    }

    fn string(&mut self, key: &str, value: &str) {
        self.put(key, regorus::Value::from(value));
    }

    /// A string that serde skips when empty.
    fn non_empty_string(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.string(key, value);
        }
    }

    /// A list of strings that serde skips when empty.
    fn non_empty_strings(&mut self, key: &str, values: &[String]) {
        if !values.is_empty() {
            self.put(key, strings(values));
        }
    }

    fn finish(self) -> regorus::Value {
        regorus::Value::from(self.0)
    }
}

fn strings(values: &[String]) -> regorus::Value {
    regorus::Value::from(
        values
            .iter()
            .map(|value| regorus::Value::from(value.as_str()))
            .collect::<Vec<_>>(),
    )
}

/// A JSON value as regorus reads it. Integers become numbers as regorus's own deserializer makes
/// them; any other number goes through that deserializer.
fn json_to_regorus(value: &Value) -> Result<regorus::Value, serde_json::Error> {
    Ok(match value {
        Value::Null => regorus::Value::Null,
        Value::Bool(flag) => regorus::Value::Bool(*flag),
        Value::String(text) => regorus::Value::from(text.as_str()),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                regorus::Value::from(unsigned)
            } else if let Some(signed) = number.as_i64() {
                regorus::Value::from(signed)
            } else {
                serde_json::from_value(value.clone())?
            }
        }
        Value::Array(items) => regorus::Value::from(
            items
                .iter()
                .map(json_to_regorus)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Value::Object(map) => object_to_regorus(map)?,
    })
}

fn object_to_regorus(map: &Map<String, Value>) -> Result<regorus::Value, serde_json::Error> {
    let mut fields = Fields::new();
    for (key, value) in map {
        fields.put(key, json_to_regorus(value)?);
    }
    Ok(fields.finish())
}

impl Principal {
    fn to_regorus_value(&self) -> regorus::Value {
        let mut fields = Fields::new();
        fields.string(
            "type",
            match self.principal_type {
                PrincipalType::Application => "Application",
                PrincipalType::Workload => "Workload",
            },
        );
        fields.string("id", &self.id);
        fields.string("zone_id", &self.zone_id);
        fields.non_empty_string("registration_method", &self.registration_method);
        fields.non_empty_string("agent_session_id", &self.agent_session_id);
        fields.non_empty_string("lifecycle", &self.lifecycle);
        fields.non_empty_strings("labels", &self.labels);
        fields.finish()
    }
}

impl Resource {
    fn to_regorus_value(&self) -> regorus::Value {
        let mut fields = Fields::new();
        fields.string(
            "type",
            match self.resource_type {
                ResourceType::Resource => "Resource",
            },
        );
        fields.string("id", &self.id);
        fields.string("identifier", &self.identifier);
        fields.put("scopes", strings(&self.scopes));
        fields.finish()
    }
}

impl Action {
    fn to_regorus_value(&self) -> regorus::Value {
        let mut fields = Fields::new();
        fields.string(
            "id",
            match self.id {
                ActionId::TokenExchange => "TokenExchange",
                ActionId::CredentialInjection => "CredentialInjection",
            },
        );
        if let Some(method) = &self.method {
            fields.string("method", method);
        }
        if let Some(path) = &self.path {
            fields.string("path", path);
        }
        fields.finish()
    }
}

impl DelegationEdge {
    /// The input's `delegation_edge` for a §2.3 delegation proof: the edge's fields, the
    /// path root → leaf, the epoch read, and the constraints as stored. The STS and the
    /// gateway build it here, so they cannot disagree.
    pub fn from_proof(proof: &control_model::authority::DelegationProof) -> Self {
        let edge = &proof.edge;
        Self {
            id: edge.id.clone(),
            source_session_id: edge.source_session_id.clone(),
            target_session_id: edge.target_session_id.clone(),
            issuer_application_id: edge.issuer_application_id.clone(),
            receiver_application_id: edge.receiver_application_id.clone(),
            resource_id: edge.resource_id.clone().unwrap_or_default(),
            scopes: edge.scopes.clone(),
            edge_version: u64::try_from(edge.edge_version).unwrap_or(0),
            path: proof.path.clone(),
            graph_epoch: u64::try_from(proof.epoch).unwrap_or(0),
            constraints_json: edge
                .constraints_json
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn to_regorus_value(&self) -> Result<regorus::Value, serde_json::Error> {
        let mut fields = Fields::new();
        fields.non_empty_string("id", &self.id);
        fields.non_empty_string("source_session_id", &self.source_session_id);
        fields.non_empty_string("target_session_id", &self.target_session_id);
        fields.non_empty_string("issuer_application_id", &self.issuer_application_id);
        fields.non_empty_string("receiver_application_id", &self.receiver_application_id);
        fields.non_empty_string("resource_id", &self.resource_id);
        fields.non_empty_strings("scopes", &self.scopes);
        if !is_zero(&self.edge_version) {
            fields.put("edge_version", regorus::Value::from(self.edge_version));
        }
        fields.non_empty_strings("path", &self.path);
        if !is_zero(&self.graph_epoch) {
            fields.put("graph_epoch", regorus::Value::from(self.graph_epoch));
        }
        fields.put(
            "constraints_json",
            object_to_regorus(&self.constraints_json)?,
        );
        Ok(fields.finish())
    }
}

impl Context {
    fn to_regorus_value(&self) -> Result<regorus::Value, serde_json::Error> {
        let mut fields = Fields::new();
        fields.put("actor_claims", object_to_regorus(&self.actor_claims)?);
        if !is_absent_or_empty(&self.subject_claims)
            && let Some(claims) = &self.subject_claims
        {
            fields.put("subject_claims", object_to_regorus(claims)?);
        }
        fields.non_empty_string("trace_id", &self.trace_id);
        fields.non_empty_string("session_id", &self.session_id);
        fields.non_empty_string("agent_session_id", &self.agent_session_id);
        fields.non_empty_string("delegation_edge_id", &self.delegation_edge_id);
        fields.put(
            "challenge_resolved",
            regorus::Value::Bool(self.challenge_resolved),
        );
        fields.put("requested_scopes", strings(&self.requested_scopes));
        Ok(fields.finish())
    }
}

/// `principal.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrincipalType {
    /// A registered application (every token exchange).
    Application,
    /// A workload (credential injection).
    Workload,
}

/// The calling application or workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `Application` or `Workload`.
    #[serde(rename = "type")]
    pub principal_type: PrincipalType,
    /// The application (or workload) id.
    pub id: String,
    /// The zone the principal is registered in.
    pub zone_id: String,
    /// How the application was registered (for example `managed`); omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registration_method: String,
    /// The bound agent session; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_session_id: String,
    /// The bound agent session's lifecycle (`task`, `service`); omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lifecycle: String,
    /// The bound agent session's labels; omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl Principal {
    /// An application principal without an agent session.
    pub fn application(id: impl Into<String>, zone_id: impl Into<String>) -> Self {
        Self {
            principal_type: PrincipalType::Application,
            id: id.into(),
            zone_id: zone_id.into(),
            registration_method: String::new(),
            agent_session_id: String::new(),
            lifecycle: String::new(),
            labels: Vec::new(),
        }
    }

    /// A workload principal; workloads carry no registration method, session or labels.
    pub fn workload(id: impl Into<String>, zone_id: impl Into<String>) -> Self {
        Self {
            principal_type: PrincipalType::Workload,
            ..Self::application(id, zone_id)
        }
    }

    /// Sets the registration method.
    #[must_use]
    pub fn with_registration_method(mut self, method: impl Into<String>) -> Self {
        self.registration_method = method.into();
        self
    }

    /// Binds an agent session with its lifecycle and labels.
    #[must_use]
    pub fn with_agent_session(
        mut self,
        agent_session_id: impl Into<String>,
        lifecycle: impl Into<String>,
        labels: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.agent_session_id = agent_session_id.into();
        self.lifecycle = lifecycle.into();
        self.labels = labels.into_iter().map(Into::into).collect();
        self
    }
}

/// `resource.type`: always `Resource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ResourceType {
    /// The only resource type.
    #[default]
    Resource,
}

/// The resource a request is about; every field is always present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Always `Resource`.
    #[serde(rename = "type", default)]
    pub resource_type: ResourceType,
    /// The resource row id.
    pub id: String,
    /// The resource identifier (for example `resource://crm`), the key into `grants`.
    pub identifier: String,
    /// The declared scopes of the resource (1–64 entries).
    pub scopes: Vec<String>,
}

impl Resource {
    /// A resource with its row id, identifier and declared scopes.
    pub fn new(
        id: impl Into<String>,
        identifier: impl Into<String>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            resource_type: ResourceType::Resource,
            id: id.into(),
            identifier: identifier.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
        }
    }
}

/// `action.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionId {
    /// A token exchange at the STS (or a gateway decision about one).
    TokenExchange,
    /// A workload's credential injection.
    CredentialInjection,
}

/// What is being done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// `TokenExchange` or `CredentialInjection`.
    pub id: ActionId,
    /// HTTP method; only on gateway decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path; only on gateway decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Action {
    /// A token exchange at the STS.
    pub const fn token_exchange() -> Self {
        Self {
            id: ActionId::TokenExchange,
            method: None,
            path: None,
        }
    }

    /// A workload's credential injection.
    pub const fn credential_injection() -> Self {
        Self {
            id: ActionId::CredentialInjection,
            method: None,
            path: None,
        }
    }

    /// A gateway decision about a token-exchange request for `method path`.
    pub fn gateway(method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            id: ActionId::TokenExchange,
            method: Some(method.into()),
            path: Some(path.into()),
        }
    }
}

/// `session`: the bound authority record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The authority record id.
    pub id: String,
}

/// The delegation edge of a delegation proof. Empty strings and arrays are omitted, and so are
/// `edge_version` and `graph_epoch` when 0.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DelegationEdge {
    /// The edge id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The issuing session.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_session_id: String,
    /// The receiving session.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_session_id: String,
    /// The issuing application.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_application_id: String,
    /// The receiving application.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub receiver_application_id: String,
    /// The resource row id the edge delegates.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_id: String,
    /// The delegated scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The edge version; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edge_version: u64,
    /// Edge ids from the root edge to this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    /// The zone's graph epoch; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub graph_epoch: u64,
    /// The stored constraints object.
    #[serde(default)]
    pub constraints_json: Map<String, Value>,
}

impl DelegationEdge {
    /// An edge with its id and delegated scopes; fill in the other fields as needed.
    pub fn new(id: impl Into<String>, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            id: id.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// Claims and request context.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Context {
    /// Claims of the actor (always present, for example `caracal_client_id`).
    pub actor_claims: Map<String, Value>,
    /// All verified claims of the subject token; omitted without one, and never `{}`.
    #[serde(default, skip_serializing_if = "is_absent_or_empty")]
    pub subject_claims: Option<Map<String, Value>>,
    /// The request id; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// The bound authority record; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_id: String,
    /// The bound agent session; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_session_id: String,
    /// The delegation edge of the proof; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delegation_edge_id: String,
    /// Whether a step-up challenge was resolved; always a boolean.
    #[serde(default)]
    pub challenge_resolved: bool,
    /// The `scope` form field split on whitespace, in the order sent; always an array.
    #[serde(default)]
    pub requested_scopes: Vec<String>,
}

impl Context {
    /// A context with the actor's claims and nothing else.
    pub fn new(actor_claims: Map<String, Value>) -> Self {
        Self {
            actor_claims,
            ..Self::default()
        }
    }

    /// A context whose actor claims hold only `caracal_client_id`.
    pub fn for_client(client_id: impl Into<String>) -> Self {
        let mut actor_claims = Map::new();
        actor_claims.insert(
            "caracal_client_id".to_owned(),
            Value::String(client_id.into()),
        );
        Self::new(actor_claims)
    }

    /// Sets `requested_scopes` from the raw `scope` form field (split on whitespace, in order).
    #[must_use]
    pub fn with_scope_field(mut self, scope_field: &str) -> Self {
        self.requested_scopes = split_scope_field(scope_field);
        self
    }

    /// Sets `requested_scopes`.
    #[must_use]
    pub fn with_requested_scopes(
        mut self,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.requested_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the subject token's verified claims; an empty map stays omitted.
    #[must_use]
    pub fn with_subject_claims(mut self, claims: Map<String, Value>) -> Self {
        self.subject_claims = Some(claims);
        self
    }

    /// Sets the request id.
    #[must_use]
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = trace_id.into();
        self
    }

    /// Sets the bound authority record id.
    #[must_use]
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = session_id.into();
        self
    }

    /// Sets the bound agent session id.
    #[must_use]
    pub fn with_agent_session_id(mut self, agent_session_id: impl Into<String>) -> Self {
        self.agent_session_id = agent_session_id.into();
        self
    }

    /// Sets the delegation edge id of the proof.
    #[must_use]
    pub fn with_delegation_edge_id(mut self, delegation_edge_id: impl Into<String>) -> Self {
        self.delegation_edge_id = delegation_edge_id.into();
        self
    }

    /// Records whether a step-up challenge was resolved.
    #[must_use]
    pub const fn with_challenge_resolved(mut self, resolved: bool) -> Self {
        self.challenge_resolved = resolved;
        self
    }
}

/// Splits the `scope` form field on whitespace, keeping the order sent.
pub(crate) fn split_scope_field(scope_field: &str) -> Vec<String> {
    scope_field.split_whitespace().map(str::to_owned).collect()
}

const fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_absent_or_empty(claims: &Option<Map<String, Value>>) -> bool {
    claims.as_ref().is_none_or(Map::is_empty)
}

#[cfg(test)]
mod tests;
