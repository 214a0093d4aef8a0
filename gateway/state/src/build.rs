//! Builds a complete [`Snapshot`] from Postgres as `caracal_gateway`, off the request path
//! (authority §4.1, §7.1, §7.2, §8.3; storage §1.6, §5.5, §10).
//!
//! One cross-zone read transaction holds a handful of statements (one per kind of row, see
//! `control_store::gateway`): the binding revision first, so a change committed during the
//! build moves it and triggers another build; then zones, signing keys, applications,
//! resources with their rate limits, plugin hooks, providers with their sealed documents,
//! active policy bindings and, last, only the policy documents of bundles that must be
//! compiled. The transaction ends before anything is decrypted or compiled.
//!
//! What degrades instead of failing the build:
//! - a provider whose material cannot be used (archived, missing or undecryptable secret
//!   document, a bad field, an unsupported kind) gets [`Credential::Unavailable`] with a
//!   reason that never holds a secret, and requests through it fail at step 29;
//! - a signing key that does not open under `ZONE_KEK` still verifies (from its clear
//!   `public_jwk`) but is skipped as the signer;
//! - a zone whose bound policy version fails to build keeps the bundle the previous snapshot
//!   had for it, else gets [`PolicySlot::Failed`];
//! - an unparsable `upstream_url` counts as none (step 26), unparsable operations as none
//!   (so an enforced resource refuses every operation).
//!
//! Only a database error fails a build, and the caller then keeps the previous snapshot.
//! Bundles are reused across builds while a zone's active version is unchanged (no Rego is
//! recompiled), and every zone without an active binding shares one deny-all bundle.

use control_events::presence::{LoadState, PolicyStatus, StatusReporter};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use control_crypto::{KekRing, PublicKey, SealContext, ZoneSigningKey};
use control_policy::{Bundle, BundleSource, PolicyConfig, PolicyDocument};
use control_store::{
    StoreError,
    gateway::{
        self, ActivePolicyRow, GatewayApplicationRow, GatewayPluginBindingRow,
        GatewayPolicyVersionRow, GatewayProviderRow, GatewayResourceRow,
    },
    signing_keys::SigningKeyRow,
    zone::cross_zone_read,
};
use http::HeaderName;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use zeroize::Zeroizing;

use gateway_plugin_host::{PluginHost, World};

use crate::plugins::{
    InjectMode, Known, PluginHook, PluginSpec, build_plugins, digest as plugin_digest,
};
use crate::snapshot::{
    Application, Binding, Credential, KeyPlacement, OAuthClient, Operation, PluginRef, PolicySlot,
    Provider, RateLimit, Secret, Signer, Snapshot, ZoneState,
};

/// Domain of the OAuth client fingerprint (the token cache key).
const OAUTH_FINGERPRINT_DOMAIN: &str = "caracal.gateway.oauth_client.v1";

/// Inputs of a build.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// Opens zone signing keys and provider secret documents.
    pub kek: KekRing,
    /// Bundle build settings (evaluation time limit).
    pub policy: PolicyConfig,
    /// Retiring keys verify this long after `rotated_at` (`SIGNING_KEY_GRACE_HOURS`, 24 h).
    pub key_grace: Duration,
    /// `CONTROL_AUDIENCE`: the resource with this identifier is the control resource.
    pub control_audience: String,
    /// Where policy load attempts are reported (`caracal:policy:status:<zone>`); `None`
    /// reports nothing (tests, standalone mode).
    pub reporter: Option<StatusReporter>,
    /// Compiles and configures bound plugins; `None` makes every bound plugin fail closed.
    pub plugins: Option<PluginHost>,
}

/// Why a build failed. The previous snapshot stays in place; the message is one line and
/// never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Postgres could not be read.
    #[error("snapshot build failed: {0}")]
    Store(#[from] StoreError),
    /// `gateway_binding_revision` has no row: the database is not migrated.
    #[error(
        "snapshot build failed: gateway_binding_revision has no row (is the database migrated?)"
    )]
    NoRevision,
}

impl From<sqlx::Error> for BuildError {
    fn from(err: sqlx::Error) -> Self {
        BuildError::Store(StoreError::Database(err))
    }
}

/// Reads only `gateway_binding_revision.version` (for the healing poll).
pub async fn current_revision(pool: &PgPool) -> Result<i64, BuildError> {
    let mut conn = pool.acquire().await?;
    gateway::binding_revision(&mut conn)
        .await?
        .map(|revision| revision.version)
        .ok_or(BuildError::NoRevision)
}

/// Everything one build reads, in one transaction.
struct Rows {
    revision: i64,
    now: DateTime<Utc>,
    zones: Vec<String>,
    keys: Vec<SigningKeyRow>,
    applications: Vec<GatewayApplicationRow>,
    resources: Vec<GatewayResourceRow>,
    plugins: Vec<GatewayPluginBindingRow>,
    components: HashMap<[u8; 32], Vec<u8>>,
    known: Known,
    providers: Vec<GatewayProviderRow>,
    policies: HashMap<String, PolicyPlan>,
    documents: Vec<GatewayPolicyVersionRow>,
}

/// Builds a full snapshot. `previous` lets unchanged policy bundles be reused (same
/// `policy_set_version_id`: the `Arc<Bundle>` is cloned, no Rego is recompiled). A zone whose
/// bound version fails to build keeps the previous snapshot's bundle for that zone if there
/// was one, else gets [`PolicySlot::Failed`].
pub async fn build(
    pool: &PgPool,
    config: &BuildConfig,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, BuildError> {
    let rows = read(pool, previous).await?;
    Ok(assemble(rows, config, previous).await)
}

/// Runs the statements of one build in one cross-zone read.
async fn read(pool: &PgPool, previous: Option<&Snapshot>) -> Result<Rows, BuildError> {
    let mut tx = cross_zone_read(pool).await?;
    let revision = gateway::binding_revision(&mut tx)
        .await?
        .ok_or(BuildError::NoRevision)?;
    let zones = gateway::live_zones(&mut tx).await?;
    let keys = gateway::signing_keys(&mut tx).await?;
    let applications = gateway::applications(&mut tx).await?;
    let resources = gateway::resources(&mut tx).await?;
    let plugins = gateway::plugin_bindings(&mut tx).await?;
    let known = Known::from_snapshot(previous);
    let mut missing: Vec<Vec<u8>> = plugins
        .iter()
        .filter(|row| known.needs_bytes(&plugin_digest(&row.component_sha256)))
        .map(|row| row.component_sha256.clone())
        .collect();
    missing.sort();
    missing.dedup();
    let components = gateway::plugin_components(&mut tx, &missing)
        .await?
        .into_iter()
        .map(|row| (plugin_digest(&row.component_sha256), row.component))
        .collect();
    let providers = gateway::providers(&mut tx).await?;
    let policies: HashMap<String, PolicyPlan> = gateway::active_policies(&mut tx)
        .await?
        .into_iter()
        .map(|row| (row.zone_id.clone(), plan_policy(row, previous)))
        .collect();
    let wanted: Vec<(String, String)> = policies
        .iter()
        .filter_map(|(zone, plan)| match plan {
            PolicyPlan::Compile { manifest, .. } => Some((zone, manifest)),
            PolicyPlan::Reuse(_) | PolicyPlan::Invalid { .. } => None,
        })
        .flat_map(|(zone, manifest)| manifest.iter().map(|id| (zone.clone(), id.clone())))
        .collect();
    let documents = gateway::policy_versions(&mut tx, &wanted).await?;
    tx.finish().await?;
    Ok(Rows {
        revision: revision.version,
        now: revision.now,
        zones,
        keys,
        applications,
        resources,
        plugins,
        components,
        known,
        providers,
        policies,
        documents,
    })
}

/// Turns the rows into zone states: decrypts, parses and compiles.
async fn assemble(rows: Rows, config: &BuildConfig, previous: Option<&Snapshot>) -> Snapshot {
    let Rows {
        revision,
        now,
        zones: zone_ids,
        keys,
        applications,
        resources,
        plugins,
        components,
        known,
        providers,
        mut policies,
        documents,
    } = rows;

    let mut keys_by_zone: HashMap<String, Vec<SigningKeyRow>> = HashMap::new();
    for row in keys {
        keys_by_zone
            .entry(row.zone_id.clone())
            .or_default()
            .push(row);
    }
    let mut apps_by_zone: HashMap<String, HashMap<String, Application>> = HashMap::new();
    for row in applications {
        apps_by_zone.entry(row.zone_id).or_default().insert(
            row.id.clone(),
            Application {
                id: row.id,
                registration_method: row.registration_method,
                archived: row.archived,
                expires_at: row.expires_at,
            },
        );
    }
    let providers: HashMap<(String, String), Arc<Provider>> = providers
        .into_iter()
        .map(|row| {
            let key = (row.zone_id.clone(), row.id.clone());
            (key, Arc::new(build_provider(row, &config.kek)))
        })
        .collect();
    let specs = plugins.into_iter().filter_map(plugin_spec).collect();
    let mut plugins_by_resource =
        build_plugins(specs, components, config.plugins.as_ref(), known).await;
    let mut resources_by_zone: HashMap<String, HashMap<String, Arc<Binding>>> = HashMap::new();
    for row in resources {
        let zone_id = row.zone_id.clone();
        if let Some(binding) = build_binding(row, config, &providers, &mut plugins_by_resource) {
            resources_by_zone
                .entry(zone_id)
                .or_default()
                .insert(binding.identifier.clone(), Arc::new(binding));
        }
    }
    let mut documents_by_zone: HashMap<String, Vec<GatewayPolicyVersionRow>> = HashMap::new();
    for row in documents {
        documents_by_zone
            .entry(row.zone_id.clone())
            .or_default()
            .push(row);
    }
    let deny_all = previous
        .and_then(shared_deny_all)
        .unwrap_or_else(|| Arc::new(Bundle::deny_all()));
    let grace = TimeDelta::from_std(config.key_grace).unwrap_or(TimeDelta::hours(24));

    let mut zones = HashMap::with_capacity(zone_ids.len());
    for zone_id in zone_ids {
        let (keys, signer) = build_keys(
            keys_by_zone.remove(&zone_id).unwrap_or_default(),
            &config.kek,
            now,
            grace,
        );
        let policy = match policies.remove(&zone_id) {
            None => PolicySlot::Ready(deny_all.clone()),
            Some(plan) => {
                let documents = documents_by_zone.remove(&zone_id).unwrap_or_default();
                let previous_slot = previous
                    .and_then(|snapshot| snapshot.zone(&zone_id))
                    .map(|zone| &zone.policy);
                build_policy(&zone_id, plan, documents, previous_slot, config).await
            }
        };
        let state = ZoneState {
            zone_id: zone_id.clone(),
            keys,
            signer,
            applications: apps_by_zone.remove(&zone_id).unwrap_or_default(),
            resources: resources_by_zone.remove(&zone_id).unwrap_or_default(),
            policy,
        };
        zones.insert(zone_id, Arc::new(state));
    }
    let snapshot = Snapshot {
        revision,
        built_at: Some(Utc::now()),
        zones,
    };
    tracing::info!(
        revision,
        zones = snapshot.zones.len(),
        bindings = snapshot.binding_count(),
        "gateway snapshot built"
    );
    snapshot
}

// ---------------------------------------------------------------------------------------
// Zone signing keys (storage §10.4)
// ---------------------------------------------------------------------------------------

/// The verification keys of a zone at `now` and its signer: the highest version that is
/// `active`, or `pending` and due, among the keys whose private half opens.
fn build_keys(
    rows: Vec<SigningKeyRow>,
    kek: &KekRing,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> (HashMap<String, PublicKey>, Option<Arc<Signer>>) {
    let mut keys = HashMap::new();
    let mut signer: Option<(i32, Signer)> = None;
    for row in rows {
        let verifies = match row.status.as_str() {
            "pending" | "active" => true,
            "retiring" => row.rotated_at.is_none_or(|rotated| {
                rotated
                    .checked_add_signed(grace)
                    .is_none_or(|end| now < end)
            }),
            _ => false,
        };
        let may_sign =
            row.status == "active" || (row.status == "pending" && row.activates_at <= now);
        let outranks = signer
            .as_ref()
            .is_none_or(|(version, _)| row.version > *version);
        let private = if may_sign && outranks {
            open_signing_key(&row, kek)
        } else {
            None
        };
        let public = match (&row.public_jwk, &private) {
            (Some(jwk), _) => match PublicKey::from_jwk(jwk) {
                Ok(public) => Some(public),
                Err(error) => {
                    tracing::error!(kid = %row.id, %error, "zone signing key has an unusable public_jwk");
                    private.as_ref().map(ZoneSigningKey::public_key)
                }
            },
            (None, Some(key)) => Some(key.public_key()),
            (None, None) => None,
        };
        let Some(public) = public else {
            tracing::error!(kid = %row.id, "zone signing key has no usable public key; skipped");
            continue;
        };
        if let Some(key) = private {
            signer = Some((
                row.version,
                Signer {
                    kid: row.id.clone(),
                    key,
                },
            ));
        }
        if verifies {
            keys.insert(row.id, public);
        }
    }
    (keys, signer.map(|(_, signer)| Arc::new(signer)))
}

/// The private half of a key, or `None` (logged by `kid`, never with material) when it does
/// not open under `ZONE_KEK` or does not decode.
fn open_signing_key(row: &SigningKeyRow, kek: &KekRing) -> Option<ZoneSigningKey> {
    let context = SealContext {
        table: "secrets",
        column: "ciphertext",
        zone_id: &row.zone_id,
        row_id: &row.id,
    };
    match kek.open(&context, &row.nonce, &row.ciphertext, &row.dek_id) {
        Ok(der) => match ZoneSigningKey::from_pkcs8_der(&der) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::error!(kid = %row.id, %error, "zone signing key does not decode; not used to sign");
                None
            }
        },
        Err(error) => {
            tracing::error!(kid = %row.id, %error, "zone signing key cannot be opened with ZONE_KEK; not used to sign");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Resources (steps 18-26)
// ---------------------------------------------------------------------------------------

/// A declared operation as stored.
#[derive(serde::Deserialize)]
struct StoredOperation {
    method: String,
    path: String,
    scope: String,
}

/// A resource's binding, or `None` when it cannot be routed safely (logged).
fn build_binding(
    row: GatewayResourceRow,
    config: &BuildConfig,
    providers: &HashMap<(String, String), Arc<Provider>>,
    plugins: &mut HashMap<(String, String), Vec<PluginRef>>,
) -> Option<Binding> {
    let key = (row.zone_id.clone(), row.credential_provider_id.clone());
    let Some(provider) = providers.get(&key).cloned() else {
        tracing::error!(resource_id = %row.id, "resource names a provider the snapshot does not hold; left out");
        return None;
    };
    let rate_limit = match (
        row.rate_limit_window_seconds,
        row.rate_limit_max_requests,
        row.rate_limit_key_by.as_deref(),
    ) {
        (Some(window), Some(max), Some(key_by)) => {
            match (u32::try_from(window), u64::try_from(max)) {
                (Ok(window_seconds), Ok(max_requests))
                    if window_seconds > 0 && max_requests > 0 =>
                {
                    Some(RateLimit {
                        window_seconds,
                        max_requests,
                        per_application: key_by != "resource",
                    })
                }
                _ => {
                    // Routing it without its limit would fail open.
                    tracing::error!(resource_id = %row.id, "resource rate limit is out of range; resource left out");
                    return None;
                }
            }
        }
        _ => None,
    };
    let upstream = row
        .upstream_url
        .as_deref()
        .and_then(|raw| match url::Url::parse(raw) {
            Ok(url) => Some(url),
            Err(error) => {
                tracing::warn!(resource_id = %row.id, %error, "upstream_url does not parse; treated as unset");
                None
            }
        });
    let operations = match serde_json::from_value::<Vec<StoredOperation>>(row.operations) {
        Ok(ops) => ops
            .into_iter()
            .map(|op| Operation {
                method: op.method.to_ascii_uppercase(),
                path: op.path,
                scope: op.scope,
            })
            .collect(),
        Err(error) => {
            tracing::warn!(resource_id = %row.id, %error, "operations do not parse; none declared");
            Vec::new()
        }
    };
    let plugins = plugins
        .remove(&(row.zone_id, row.id.clone()))
        .unwrap_or_default();
    Some(Binding {
        is_control: row.identifier == config.control_audience,
        resource_id: row.id,
        identifier: row.identifier,
        scopes: row.scopes,
        upstream,
        enforced: row.operation_enforcement == "enforced",
        operations,
        provider,
        rate_limit,
        plugins,
    })
}

/// A stored plugin binding as the plugin builder takes it; a row with an unknown hook (the
/// store's CHECK forbids it) is dropped with a warning.
fn plugin_spec(row: GatewayPluginBindingRow) -> Option<PluginSpec> {
    let Some(hook) = PluginHook::parse(&row.hook) else {
        tracing::warn!(resource_id = %row.resource_id, hook = %row.hook, "unknown plugin hook; binding ignored");
        return None;
    };
    let mode = match row.mode.as_deref() {
        Some("replace") => InjectMode::Replace,
        _ => InjectMode::Augment,
    };
    Some(PluginSpec {
        zone_id: row.zone_id,
        resource_id: row.resource_id,
        plugin_id: row.plugin_id,
        name: row.plugin_name,
        world: World::parse(&row.plugin_world),
        archived: row.plugin_archived,
        digest: plugin_digest(&row.component_sha256),
        hook,
        mode,
        config: row.config_text,
        deadline: Duration::from_millis(u64::try_from(row.deadline_ms).unwrap_or(5)),
        memory_bytes: u64::try_from(row.memory_limit_bytes).unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------
// Providers (authority §7.1, §7.2)
// ---------------------------------------------------------------------------------------

/// A provider with its credential decrypted, or [`Credential::Unavailable`] with the reason.
fn build_provider(row: GatewayProviderRow, kek: &KekRing) -> Provider {
    let empty = Map::new();
    let public = row.config_json.as_object().unwrap_or(&empty);
    let hosts = allowed_token_hosts(public);
    let forward = match public.get("forward_caracal_identity") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(forward)) => Ok(*forward),
        Some(_) => Err("forward_caracal_identity is not a boolean".to_owned()),
    };
    let credential = if row.archived {
        Err("the provider is archived".to_owned())
    } else if !row.config_json.is_object() {
        Err("the provider's public configuration is not a JSON object".to_owned())
    } else if let Err(reason) = &hosts {
        Err(reason.clone())
    } else if let Err(reason) = &forward {
        Err(reason.clone())
    } else {
        credential(&row, public, kek)
    };
    let credential = credential.unwrap_or_else(|reason| {
        tracing::warn!(provider_id = %row.id, %reason, "provider credential unavailable");
        Credential::Unavailable(reason)
    });
    Provider {
        id: row.id,
        identifier: row.identifier,
        kind: row.provider_kind,
        credential,
        allowed_token_hosts: hosts.unwrap_or_default(),
        forward_caracal_identity: forward.unwrap_or(false),
    }
}

/// `allowed_token_hosts`, lower-cased; empty when unset.
fn allowed_token_hosts(public: &Map<String, Value>) -> Result<Vec<String>, String> {
    match public.get("allowed_token_hosts") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(hosts)) => hosts
            .iter()
            .map(|host| {
                host.as_str()
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| "allowed_token_hosts holds a non-string entry".to_owned())
            })
            .collect(),
        Some(_) => Err("allowed_token_hosts is not an array".to_owned()),
    }
}

/// The credential of a live provider, or why it is unavailable.
fn credential(
    row: &GatewayProviderRow,
    public: &Map<String, Value>,
    kek: &KekRing,
) -> Result<Credential, String> {
    match row.provider_kind.as_str() {
        "none" => Ok(Credential::None),
        "caracal_mandate" => Ok(Credential::CaracalMandate),
        "api_key" => {
            let placement = match text(public, "auth_location")?.unwrap_or("header") {
                "header" => KeyPlacement::Header {
                    name: header(public, "header_name")?
                        .ok_or_else(|| "header_name is not configured".to_owned())?,
                    scheme: text(public, "auth_scheme")?.map(str::to_owned),
                },
                "query" => KeyPlacement::Query {
                    param: text(public, "query_param_name")?
                        .ok_or_else(|| "query_param_name is not configured".to_owned())?
                        .to_owned(),
                },
                _ => return Err("auth_location must be header or query".to_owned()),
            };
            let mut doc = SecretDocument::open(row, kek)?;
            Ok(Credential::ApiKey {
                placement,
                key: doc.take("api_key")?,
            })
        }
        "bearer_token" => {
            let header = header(public, "auth_header")?.unwrap_or(http::header::AUTHORIZATION);
            let scheme = text(public, "auth_scheme")?.unwrap_or("Bearer").to_owned();
            let mut doc = SecretDocument::open(row, kek)?;
            Ok(Credential::Bearer {
                header,
                scheme,
                token: doc.take("bearer_token")?,
            })
        }
        "http_basic" => {
            let username =
                text(public, "username")?.ok_or_else(|| "username is not configured".to_owned())?;
            let mut doc = SecretDocument::open(row, kek)?;
            let password = doc.take("password")?;
            let pair = Zeroizing::new(format!("{username}:{}", password.expose()));
            let encoded =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
            Ok(Credential::Basic {
                value: Secret::new(format!("Basic {}", encoded.as_str())),
            })
        }
        "oauth2_client_credentials" => oauth_client(row, public, kek)
            .map(|client| Credential::OAuthClientCredentials(Arc::new(client))),
        "oauth2_authorization_code" => {
            Err("authorization-code grants are not supported by this gateway yet".to_owned())
        }
        other => Err(format!("provider kind {other} is not supported")),
    }
}

/// The client-credentials client of an `oauth2_client_credentials` provider.
fn oauth_client(
    row: &GatewayProviderRow,
    public: &Map<String, Value>,
    kek: &KekRing,
) -> Result<OAuthClient, String> {
    if text(public, "grant_type")?.is_some_and(|grant| grant == "jwt_bearer") {
        return Err("jwt_bearer grants are not supported by this gateway yet".to_owned());
    }
    let client_auth_method = text(public, "client_auth_method")?
        .unwrap_or("client_secret_basic")
        .to_owned();
    let needs_secret = match client_auth_method.as_str() {
        "client_secret_basic" | "client_secret_post" => true,
        "none" => false,
        "private_key_jwt" => {
            return Err("private_key_jwt is not supported by this gateway yet".to_owned());
        }
        _ => return Err("client_auth_method is not supported".to_owned()),
    };
    let token_endpoint = text(public, "token_endpoint")?
        .ok_or_else(|| "token_endpoint is not configured".to_owned())
        .and_then(|raw| {
            url::Url::parse(raw).map_err(|_unparsable| "token_endpoint is not a URL".to_owned())
        })?;
    if token_endpoint.scheme() != "https" {
        return Err("token_endpoint is not an https URL".to_owned());
    }
    let client_id = text(public, "client_id")?
        .ok_or_else(|| "client_id is not configured".to_owned())?
        .to_owned();
    let scopes = match public.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(scopes)) => scopes
            .iter()
            .map(|scope| scope.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "scopes holds a non-string entry".to_owned())?,
        Some(_) => return Err("scopes is not an array".to_owned()),
    };
    let token_params = match public.get("token_params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(params)) => params
            .iter()
            .map(|(name, value)| value.as_str().map(|v| (name.clone(), v.to_owned())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "token_params holds a non-string value".to_owned())?,
        Some(_) => return Err("token_params is not an object".to_owned()),
    };
    let header = header(public, "auth_header")?.unwrap_or(http::header::AUTHORIZATION);
    let configured_scheme = text(public, "auth_scheme")?;
    // The document is opened whenever there is one, so its digest keys the token cache even
    // for `none` (a changed document then starts a fresh token).
    let mut doc = match (&row.secret_id, needs_secret) {
        (None, false) => None,
        _ => Some(SecretDocument::open(row, kek)?),
    };
    let client_secret = match (&mut doc, needs_secret) {
        (Some(doc), true) => Some(doc.take("client_secret")?),
        _ => None,
    };
    let secret_digest = doc
        .as_ref()
        .map(|doc| hex::encode(doc.digest))
        .unwrap_or_default();
    let fingerprint = control_crypto::content_sha256(
        OAUTH_FINGERPRINT_DOMAIN,
        &serde_json::json!({
            "kind": row.provider_kind,
            "public_config": Value::Object(public.clone()),
            "secret_document_sha256": secret_digest,
        }),
    )
    .map(hex::encode)
    .map_err(|_unserialisable| "the public configuration cannot be canonicalized".to_owned())?;
    Ok(OAuthClient {
        token_endpoint,
        client_id,
        client_secret,
        client_auth_method,
        scopes,
        audience: text(public, "audience")?.map(str::to_owned),
        resource: text(public, "resource")?.map(str::to_owned),
        token_params,
        header,
        scheme: configured_scheme.unwrap_or("Bearer").to_owned(),
        scheme_configured: configured_scheme.is_some(),
        fingerprint,
    })
}

/// A string field of the public configuration (`null` counts as absent).
fn text<'a>(public: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match public.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(format!("{key} is not a string")),
    }
}

/// A header-name field of the public configuration.
fn header(public: &Map<String, Value>, key: &str) -> Result<Option<HeaderName>, String> {
    text(public, key)?
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_invalid| format!("{key} is not a valid header name"))
        })
        .transpose()
}

/// A provider's opened secret document: key → value, and the SHA-256 of its sealed
/// plaintext.
struct SecretDocument {
    values: BTreeMap<String, Zeroizing<String>>,
    digest: [u8; 32],
}

impl SecretDocument {
    /// Opens the provider's `provider_secret_config` row. Failures are logged with ids only
    /// and come back as a reason fit for a client.
    fn open(row: &GatewayProviderRow, kek: &KekRing) -> Result<Self, String> {
        let Some(secret_id) = &row.secret_id else {
            return Err("the provider has no sealed secret document".to_owned());
        };
        let (Some(nonce), Some(ciphertext), Some(dek_id)) = (
            &row.secret_nonce,
            &row.secret_ciphertext,
            &row.secret_dek_id,
        ) else {
            return Err("the provider's sealed secret document is missing".to_owned());
        };
        let context = SealContext {
            table: "secrets",
            column: "ciphertext",
            zone_id: &row.zone_id,
            row_id: secret_id,
        };
        let plaintext = kek
            .open(&context, nonce, ciphertext, dek_id)
            .map_err(|error| {
                tracing::error!(provider_id = %row.id, %secret_id, %error, "provider secret document cannot be opened");
                "the provider's sealed secret document cannot be opened with ZONE_KEK".to_owned()
            })?;
        let digest: [u8; 32] = Sha256::digest(plaintext.as_slice()).into();
        let values = serde_json::from_slice::<BTreeMap<String, String>>(&plaintext)
            .map_err(|_not_json| {
                "the provider's sealed secret document is not a JSON object of strings".to_owned()
            })?
            .into_iter()
            .map(|(key, value)| (key, Zeroizing::new(value)))
            .collect();
        Ok(Self { values, digest })
    }

    /// Moves one value out of the document.
    fn take(&mut self, key: &str) -> Result<Secret, String> {
        match self.values.get_mut(key) {
            Some(value) if !value.is_empty() => Ok(Secret::new(std::mem::take(&mut **value))),
            _ => Err(format!("the sealed secret document holds no {key}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Policy (authority §5.6, §5.7)
// ---------------------------------------------------------------------------------------

/// What a zone's active binding needs.
enum PolicyPlan {
    /// The previous snapshot holds this very version.
    Reuse(Arc<Bundle>),
    /// Compile it from these documents.
    Compile {
        binding: ActivePolicyRow,
        manifest: Vec<String>,
    },
    /// The stored version is unusable before compiling.
    Invalid { version: String, reason: String },
}

/// Decides, before the documents are read, whether the zone's bundle is reused or compiled.
fn plan_policy(row: ActivePolicyRow, previous: Option<&Snapshot>) -> PolicyPlan {
    let reusable = previous
        .and_then(|snapshot| snapshot.zone(&row.zone_id))
        .and_then(|zone| match &zone.policy {
            PolicySlot::Ready(bundle)
                if bundle.provenance().policy_set_version_id == row.policy_set_version_id =>
            {
                Some(bundle.clone())
            }
            _ => None,
        });
    if let Some(bundle) = reusable {
        return PolicyPlan::Reuse(bundle);
    }
    match manifest_ids(&row.manifest_json) {
        Ok(manifest) => PolicyPlan::Compile {
            binding: row,
            manifest,
        },
        Err(reason) => PolicyPlan::Invalid {
            version: row.policy_set_version_id,
            reason,
        },
    }
}

/// The policy version ids of a manifest, in order.
fn manifest_ids(manifest: &Value) -> Result<Vec<String>, String> {
    manifest
        .as_array()
        .ok_or_else(|| "manifest is not an array".to_owned())?
        .iter()
        .map(|entry| {
            entry
                .get("policy_version_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| "manifest entry without policy_version_id".to_owned())
        })
        .collect()
}

/// The zone's slot: the reused or freshly compiled bundle, else the previous snapshot's
/// bundle for the zone, else a failure every evaluation reports.
async fn build_policy(
    zone_id: &str,
    plan: PolicyPlan,
    documents: Vec<GatewayPolicyVersionRow>,
    previous: Option<&PolicySlot>,
    config: &BuildConfig,
) -> PolicySlot {
    let (version, manifest_sha256, result) = match plan {
        PolicyPlan::Reuse(bundle) => return PolicySlot::Ready(bundle),
        PolicyPlan::Invalid { version, reason } => (version, String::new(), Err(reason)),
        PolicyPlan::Compile { binding, manifest } => {
            let version = binding.policy_set_version_id.clone();
            let sha = binding.manifest_sha256.clone();
            (
                version,
                sha,
                compile(binding, manifest, documents, config.policy).await,
            )
        }
    };
    // Every load attempt of a bound version is reported (authority §5.7), so the admin API
    // can tell when every gateway replica serves an activation.
    if let Some(reporter) = &config.reporter {
        let (state, error) = match &result {
            Ok(_) => (LoadState::Loaded, None),
            Err(reason) => (LoadState::Failed, Some(reason.clone())),
        };
        reporter.report(
            zone_id,
            PolicyStatus::new(&version, &manifest_sha256, state, error),
        );
    }
    match result {
        Ok(bundle) => {
            tracing::info!(zone = zone_id, %version, "policy bundle loaded");
            PolicySlot::Ready(Arc::new(bundle))
        }
        Err(reason) => {
            tracing::warn!(zone = zone_id, %version, %reason, "policy bundle rejected");
            match previous {
                Some(PolicySlot::Ready(bundle)) if !is_deny_all(bundle) => {
                    PolicySlot::Ready(bundle.clone())
                }
                _ => PolicySlot::Failed(Arc::from(reason.as_str())),
            }
        }
    }
}

/// Compiles a bundle on the blocking pool.
async fn compile(
    binding: ActivePolicyRow,
    manifest: Vec<String>,
    documents: Vec<GatewayPolicyVersionRow>,
    config: PolicyConfig,
) -> Result<Bundle, String> {
    let named: HashSet<&str> = manifest.iter().map(String::as_str).collect();
    let documents = documents
        .into_iter()
        .filter(|row| named.contains(row.id.as_str()))
        .map(|row| PolicyDocument {
            id: row.id,
            content: row.content,
            content_sha256: row.content_sha256,
            schema_version: row.schema_version,
        })
        .collect();
    let source = BundleSource {
        policy_set_id: binding.policy_set_id,
        policy_set_version_id: binding.policy_set_version_id,
        manifest,
        manifest_sha256: binding.manifest_sha256,
        documents,
    };
    tokio::task::spawn_blocking(move || Bundle::build(source, &config))
        .await
        .map_err(|error| format!("bundle build task failed: {error}"))?
        .map_err(|error| error.to_string())
}

/// The deny-all fallback (empty provenance).
fn is_deny_all(bundle: &Bundle) -> bool {
    bundle.provenance().policy_set_version_id.is_empty()
}

/// The previous snapshot's deny-all bundle, so every build shares one.
fn shared_deny_all(previous: &Snapshot) -> Option<Arc<Bundle>> {
    previous.zones.values().find_map(|zone| match &zone.policy {
        PolicySlot::Ready(bundle) if is_deny_all(bundle) => Some(bundle.clone()),
        _ => None,
    })
}
