//! The immutable snapshot a request decides from (design decision 4): per zone, the
//! verification keys and the signer, the applications, the resource bindings with their
//! providers (secrets decrypted), rate limits and plugin references, and the policy bundle.
//!
//! Everything here is built off the request path by [`crate::build`] (Postgres) and swapped
//! in whole by [`crate::StateHandle`]. The request path only looks things up and clones
//! `Arc`s.

use std::{collections::HashMap, fmt, sync::Arc};

use chrono::{DateTime, Utc};
use control_crypto::{PublicKey, ZoneSigningKey};
use control_policy::Bundle;
use http::HeaderName;

pub use crate::plugins::PluginRef;
use zeroize::Zeroizing;

/// Everything the gateway decides from, for every zone.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `gateway_binding_revision.version` read at the start of the build (0 for a
    /// standalone snapshot).
    pub revision: i64,
    /// When the build finished.
    pub built_at: Option<DateTime<Utc>>,
    /// Zones by id.
    pub zones: HashMap<String, Arc<ZoneState>>,
}

impl Snapshot {
    /// The zone's state, when the snapshot holds the zone.
    pub fn zone(&self, zone_id: &str) -> Option<&Arc<ZoneState>> {
        self.zones.get(zone_id)
    }

    /// Number of resource bindings across zones (metrics).
    pub fn binding_count(&self) -> usize {
        self.zones.values().map(|z| z.resources.len()).sum()
    }
}

/// One zone's part of the snapshot.
#[derive(Debug)]
pub struct ZoneState {
    /// Zone id.
    pub zone_id: String,
    /// Verification keys by `kid` (pending, active and retiring keys within their grace).
    pub keys: HashMap<String, PublicKey>,
    /// The key that signs gateway-minted resource mandates, when the zone has one that
    /// opened under `ZONE_KEK`.
    pub signer: Option<Arc<Signer>>,
    /// Applications by id.
    pub applications: HashMap<String, Application>,
    /// Resource bindings by identifier (the `X-Caracal-Resource` value).
    pub resources: HashMap<String, Arc<Binding>>,
    /// The zone's policy bundle.
    pub policy: PolicySlot,
}

/// A zone signing key able to sign.
pub struct Signer {
    /// Its `kid`.
    pub kid: String,
    /// The private key.
    pub key: ZoneSigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The zone's bundle, or why there is none.
#[derive(Debug, Clone)]
pub enum PolicySlot {
    /// Evaluate with this bundle (possibly the deny-all fallback of a zone without an
    /// active binding).
    Ready(Arc<Bundle>),
    /// The bound version failed to build and no earlier bundle exists: every evaluation in
    /// the zone fails closed (503 `policy_eval_failed`).
    Failed(Arc<str>),
}

/// An application as step 14 needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Id.
    pub id: String,
    /// `managed` or `dcr`.
    pub registration_method: String,
    /// Archived applications are refused.
    pub archived: bool,
    /// Expired applications are refused.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Application {
    /// Not archived and not expired at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        !self.archived && self.expires_at.is_none_or(|e| e > now)
    }
}

/// A resource as the gateway routes, authorizes and injects for it.
#[derive(Debug)]
pub struct Binding {
    /// Resource row id.
    pub resource_id: String,
    /// Resource identifier (`X-Caracal-Resource`).
    pub identifier: String,
    /// Declared scopes (policy input).
    pub scopes: Vec<String>,
    /// The parsed `upstream_url`; `None` when the resource has none (step 26).
    pub upstream: Option<url::Url>,
    /// `operation_enforcement = enforced`.
    pub enforced: bool,
    /// Declared operations (the operation floor, step 20).
    pub operations: Vec<Operation>,
    /// The control audience (step 21).
    pub is_control: bool,
    /// The credential provider.
    pub provider: Arc<Provider>,
    /// The per-resource rate limit (step 24).
    pub rate_limit: Option<RateLimit>,
    /// Plugins bound to the resource: authorizers by position, then injectors by position
    /// (steps 25 and 31).
    pub plugins: Vec<PluginRef>,
}

impl Binding {
    /// The declared operation matching `(UPPER(method), path)` exactly.
    pub fn operation(&self, method: &str, path: &str) -> Option<&Operation> {
        self.operations
            .iter()
            .find(|op| op.method.eq_ignore_ascii_case(method) && op.path == path)
    }
}

/// A declared operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Upper-case method.
    pub method: String,
    /// Exact path.
    pub path: String,
    /// The scope the mandate must carry.
    pub scope: String,
}

/// A per-resource rate limit (authority §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Window length in seconds (> 0).
    pub window_seconds: u32,
    /// Requests allowed per window (> 0).
    pub max_requests: u64,
    /// One budget per application (`true`) or one for everyone.
    pub per_application: bool,
}

/// A credential provider with its decrypted material.
#[derive(Debug)]
pub struct Provider {
    /// Row id.
    pub id: String,
    /// `provider://…` identifier.
    pub identifier: String,
    /// `provider_kind` as stored.
    pub kind: String,
    /// How the credential is attached.
    pub credential: Credential,
    /// `allowed_token_hosts` (lower-case); empty means unrestricted (step 28).
    pub allowed_token_hosts: Vec<String>,
    /// `forward_caracal_identity`.
    pub forward_caracal_identity: bool,
}

impl Provider {
    /// The audit `auth_mode` of the provider kind (authority §7.1).
    pub fn auth_mode(&self) -> &'static str {
        match self.credential {
            Credential::None => "none",
            Credential::CaracalMandate => "caracal_jwt",
            Credential::ApiKey { .. } => "provider_apikey",
            Credential::Bearer { .. }
            | Credential::Basic { .. }
            | Credential::OAuthClientCredentials(_)
            | Credential::Unavailable(_) => "provider_oauth",
        }
    }
}

/// How a provider's credential is attached to the outbound request (authority §7.1).
#[derive(Debug)]
pub enum Credential {
    /// Nothing is attached.
    None,
    /// `Authorization: Bearer <use=resource mandate minted by the gateway>`.
    CaracalMandate,
    /// An API key in a header or the query.
    ApiKey {
        /// Where it goes.
        placement: KeyPlacement,
        /// The key.
        key: Secret,
    },
    /// `<header>: <scheme> <token>`.
    Bearer {
        /// Header (default `Authorization`).
        header: HeaderName,
        /// Scheme (default `Bearer`).
        scheme: String,
        /// The token.
        token: Secret,
    },
    /// `Authorization: Basic base64(username:password)`, precomputed.
    Basic {
        /// The full header value `Basic …`.
        value: Secret,
    },
    /// OAuth 2 client credentials: the token is fetched, cached and refreshed by the proxy.
    OAuthClientCredentials(Arc<OAuthClient>),
    /// The material cannot be used; every request through the provider answers step 29
    /// with this reason (never a secret).
    Unavailable(String),
}

/// Where an API key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlacement {
    /// `<name>: [<scheme> ]<key>`.
    Header {
        /// Header name.
        name: HeaderName,
        /// Optional scheme.
        scheme: Option<String>,
    },
    /// `?<param>=<key>`, replacing any caller parameter of that name.
    Query {
        /// Parameter name.
        param: String,
    },
}

/// The public and sealed parts of an `oauth2_client_credentials` provider.
#[derive(Debug)]
pub struct OAuthClient {
    /// Token endpoint (https).
    pub token_endpoint: url::Url,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (absent for `none`).
    pub client_secret: Option<Secret>,
    /// `client_secret_basic` (default), `client_secret_post` or `none`.
    pub client_auth_method: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// `audience` parameter.
    pub audience: Option<String>,
    /// `resource` parameter.
    pub resource: Option<String>,
    /// Extra form parameters (validated at the admin API).
    pub token_params: Vec<(String, String)>,
    /// Header the token goes in (default `Authorization`).
    pub header: HeaderName,
    /// Scheme (default `Bearer`).
    pub scheme: String,
    /// Whether `auth_scheme` was configured (a non-Bearer `token_type` is then accepted).
    pub scheme_configured: bool,
    /// Cache key: a fingerprint of the kind, the public config and the secret digest.
    pub fingerprint: String,
}

/// Secret bytes: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret, for placement into an outbound request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}
