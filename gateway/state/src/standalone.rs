//! Standalone sidecar mode (issue 5 item 4): the same [`Snapshot`] that [`crate::build`]
//! reads from Postgres, built from one TOML file instead (`caracal gateway --config FILE`).
//!
//! The file declares zones (trusted keys from `key_files` and/or a `jwks_url`, an optional
//! `signing_key_file`, policy files, applications with their labels), providers (secrets
//! from the environment or from files, never from the file itself) and resources. Relative
//! paths are resolved against the directory of the configuration file. A bad file fails
//! [`Standalone::load`] with one line naming the file, the table or key, and the problem;
//! it never holds a secret value.
//!
//! What differs from the Postgres mode (the decision record has the reasons):
//! - there are no authority records, agent sessions or edges: step 13 uses the revocation
//!   marks only (fed by `caracal.sessions.revoke` when Redis is configured), steps 16 and 17
//!   are not run, and the policy input has no delegation edge;
//! - step 14 checks the zone's `[[zones.applications]]` when it lists any, else accepts any
//!   well-formed `client_id` ([`Standalone::admits`]);
//! - `principal.labels` are the application's configured labels ([`Standalone::labels`]).
//!
//! The tasks that keep a standalone gateway current are in `feed`: the JWKS refresh, the
//! revocation consumers (with Redis) and the freshness mark (without).

mod feed;
mod keys;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use base64::Engine as _;
use chrono::Utc;
use control_crypto::PublicKey;
use control_policy::{Bundle, BundleSource, PolicyConfig, PolicyDocument};
use gateway_plugin_host::{CallLimits, CompiledPlugin, PluginHost, World};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

pub use feed::{
    KEY_REFRESH_INTERVAL, revocation_stats, spawn_freshness, spawn_key_refresh,
    spawn_revocation_feed,
};

use crate::plugins::{InjectMode, PluginHook, PluginState};
use crate::snapshot::{
    Application, Binding, Credential, KeyPlacement, OAuthClient, Operation, PluginRef, PolicySlot,
    Provider, RateLimit, Secret, Signer, Snapshot, ZoneState,
};

/// Domain of a standalone OAuth client's fingerprint (the token cache key).
const OAUTH_FINGERPRINT_DOMAIN: &str = "caracal.gateway.oauth_client.standalone.v1";

/// Reads one environment variable; `None` when unset or empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The configuration file cannot be used. `Display` is one line: the file, then the table
/// or key and the problem. It never holds a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {detail}")]
pub struct StandaloneError {
    /// The configuration file (as given).
    pub file: String,
    /// The table or key, and the problem.
    pub detail: String,
}

/// What a load needs besides the file.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Bundle build settings (evaluation time limit).
    pub policy: PolicyConfig,
    /// `CONTROL_AUDIENCE`: a resource with this identifier is the control resource.
    pub control_audience: String,
}

/// A loaded standalone configuration: the gateway settings the file sets, everything a
/// snapshot holds, and the keys fetched from the zones' JWKS URLs.
pub struct Standalone {
    file: PathBuf,
    listen: Option<SocketAddr>,
    issuer: Option<String>,
    redis_url: Option<String>,
    audit_replay_dir: Option<PathBuf>,
    zones: HashMap<String, ZoneParts>,
    /// Keys fetched from each zone's `jwks_url` (zone → kid → key); a failed fetch keeps
    /// the zone's previous set.
    fetched: ArcSwap<HashMap<String, HashMap<String, PublicKey>>>,
    jwks: Option<control_http::jwks::JwksClient>,
    refreshing: tokio::sync::Mutex<()>,
    /// Component bytes by digest, dropped once [`Standalone::load_plugins`] compiled them.
    components: HashMap<[u8; 32], Vec<u8>>,
}

impl fmt::Debug for Standalone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Standalone")
            .field("file", &self.file)
            .field("listen", &self.listen)
            .field("issuer", &self.issuer)
            .field("redis", &self.redis_url.is_some())
            .field("zones", &self.zones.len())
            .finish_non_exhaustive()
    }
}

/// One zone as the file declares it, ready to be put in a snapshot.
struct ZoneParts {
    file_keys: HashMap<String, PublicKey>,
    jwks_url: Option<url::Url>,
    signer: Option<Arc<Signer>>,
    /// `None` when the zone lists no application (any well-formed client is accepted).
    labels: Option<HashMap<String, Vec<String>>>,
    applications: HashMap<String, Application>,
    resources: HashMap<String, Arc<Binding>>,
    policy: PolicySlot,
}

impl Standalone {
    /// Reads, validates and builds `path`: key files, signing keys, secrets (through
    /// `lookup` for `secret_env`), policy bundles. Keys of `jwks_url`s are not fetched here
    /// ([`Standalone::refresh_keys`]).
    pub fn load(
        path: &Path,
        lookup: Lookup<'_>,
        settings: &LoadSettings,
    ) -> Result<Self, StandaloneError> {
        let ctx = Ctx {
            file: path,
            base: path.parent().unwrap_or_else(|| Path::new(".")),
            lookup,
            components: RefCell::new(HashMap::new()),
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ctx.fail(format!("cannot read the configuration file: {e}")))?;
        let raw: RawFile =
            toml::from_str(&text).map_err(|e| ctx.fail(describe_parse_error(&text, &e)))?;
        ctx.build(raw, settings)
    }

    /// The configuration file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// `listen`, when the file sets it (it wins over `CARACAL_GATEWAY_ADDR`).
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// `issuer`, when the file sets it (it wins over `ISSUER_URL`).
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// `redis_url`, when the file sets it (it wins over `REDIS_URL`). May hold a password:
    /// never log it.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref()
    }

    /// `audit_replay_dir`, resolved, when the file sets it (it wins over
    /// `AUDIT_REPLAY_DIR`).
    pub fn audit_replay_dir(&self) -> Option<&Path> {
        self.audit_replay_dir.as_deref()
    }

    /// Compiles the plugins the file binds (on blocking threads) and runs each binding's
    /// `configure`. A component that is not a component of its hook's world, or a config its
    /// plugin refuses, fails the start with one line naming the resource and the plugin.
    pub async fn load_plugins(&mut self, host: &PluginHost) -> Result<(), StandaloneError> {
        let components = std::mem::take(&mut self.components);
        let file = self.file.display().to_string();
        let fail = |detail: String| StandaloneError {
            file: file.clone(),
            detail,
        };
        let mut compiled: HashMap<([u8; 32], World), Arc<CompiledPlugin>> = HashMap::new();
        for parts in self.zones.values_mut() {
            for binding in parts.resources.values_mut() {
                let Some(binding) = Arc::get_mut(binding) else {
                    return Err(fail(
                        "plugins must be loaded before the first snapshot".into(),
                    ));
                };
                let identifier = binding.identifier.clone();
                for plugin in &mut binding.plugins {
                    let key = format!("resources[{identifier}].plugins[{}]", plugin.name);
                    let world = plugin.hook.world();
                    let component = match compiled.get(&(plugin.digest, world)) {
                        Some(component) => Arc::clone(component),
                        None => {
                            let bytes = components.get(&plugin.digest).cloned().unwrap_or_default();
                            let component = crate::plugins::compile(host, world, bytes)
                                .await
                                .map_err(|cause| fail(format!("{key}.file: {cause}")))?;
                            compiled.insert((plugin.digest, world), Arc::clone(&component));
                            component
                        }
                    };
                    plugin.limits = host.limits(plugin.limits.deadline, plugin.limits.memory_bytes);
                    let needs = host
                        .configure(&component, &plugin.config, plugin.limits.for_configure())
                        .await
                        .map_err(|failure| {
                            fail(format!("{key}.config: the plugin refused it: {failure}"))
                        })?;
                    plugin.state = PluginState::Ready {
                        plugin: component,
                        needs,
                    };
                }
            }
        }
        Ok(())
    }

    /// Whether any zone names a `jwks_url`.
    pub fn has_jwks_urls(&self) -> bool {
        self.zones.values().any(|zone| zone.jwks_url.is_some())
    }

    /// A snapshot of the configuration with the keys fetched so far. Cheap: bindings,
    /// providers, signers and bundles are shared, not rebuilt.
    pub fn snapshot(&self) -> Snapshot {
        let fetched = self.fetched.load();
        let zones = self
            .zones
            .iter()
            .map(|(zone_id, parts)| {
                let mut keys = fetched.get(zone_id).cloned().unwrap_or_default();
                // A key file is the operator's own statement: it wins over a fetched key
                // with the same kid.
                keys.extend(
                    parts
                        .file_keys
                        .iter()
                        .map(|(kid, key)| (kid.clone(), key.clone())),
                );
                let state = ZoneState {
                    zone_id: zone_id.clone(),
                    keys,
                    signer: parts.signer.clone(),
                    applications: parts.applications.clone(),
                    resources: parts.resources.clone(),
                    policy: parts.policy.clone(),
                };
                (zone_id.clone(), Arc::new(state))
            })
            .collect();
        Snapshot {
            revision: 0,
            built_at: Some(Utc::now()),
            zones,
        }
    }

    /// Step 14 in standalone mode: the zone lists the application, or lists none (then any
    /// well-formed `client_id`, checked at step 9, is accepted). An unknown zone admits
    /// nobody.
    pub fn admits(&self, zone_id: &str, client_id: &str) -> bool {
        self.zones
            .get(zone_id)
            .is_some_and(|zone| match &zone.labels {
                None => true,
                Some(labels) => labels.contains_key(client_id),
            })
    }

    /// The configured labels of an application (the policy input's `principal.labels`);
    /// empty when it has none or is not listed.
    pub fn labels(&self, zone_id: &str, client_id: &str) -> &[String] {
        self.zones
            .get(zone_id)
            .and_then(|zone| zone.labels.as_ref())
            .and_then(|labels| labels.get(client_id))
            .map_or(&[], Vec::as_slice)
    }

    /// Fetches every zone's `jwks_url` once (concurrent calls share one round). A zone
    /// whose fetch fails keeps the keys it had (logged). Returns the number of failed
    /// fetches. The caller stores [`Standalone::snapshot`] afterwards.
    pub async fn refresh_keys(&self) -> usize {
        let Some(client) = self.jwks.as_ref() else {
            return 0;
        };
        let _one_round = self.refreshing.lock().await;
        let mut fetched = HashMap::clone(&self.fetched.load());
        let mut failures = 0;
        let mut urls: Vec<(&String, &url::Url)> = self
            .zones
            .iter()
            .filter_map(|(zone, parts)| parts.jwks_url.as_ref().map(|url| (zone, url)))
            .collect();
        urls.sort_by(|a, b| a.0.cmp(b.0));
        for (zone, url) in urls {
            match client.fetch(url).await {
                Ok(keys) => {
                    tracing::debug!(zone = %zone, keys = keys.len(), "zone JWKS fetched");
                    fetched.insert(zone.clone(), keys);
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(zone = %zone, jwks_url = %url, %error, "zone JWKS fetch failed; the previous keys stay");
                }
            }
        }
        self.fetched.store(Arc::new(fetched));
        failures
    }
}

// ---------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<String>,
    issuer: Option<String>,
    redis_url: Option<String>,
    audit_replay_dir: Option<String>,
    #[serde(default)]
    zones: Vec<RawZone>,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    resources: Vec<RawResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    id: String,
    #[serde(default)]
    key_files: Vec<String>,
    jwks_url: Option<String>,
    signing_key_file: Option<String>,
    signing_key_id: Option<String>,
    #[serde(default)]
    policy_files: Vec<String>,
    #[serde(default)]
    applications: Vec<RawApplication>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    id: String,
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    id: String,
    zone: String,
    kind: String,
    identifier: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    #[serde(default)]
    allowed_token_hosts: Vec<String>,
    #[serde(default)]
    forward_caracal_identity: bool,
    // api_key
    auth_location: Option<String>,
    header_name: Option<String>,
    query_param_name: Option<String>,
    // api_key, bearer_token, oauth2_client_credentials
    auth_scheme: Option<String>,
    // bearer_token, oauth2_client_credentials
    auth_header: Option<String>,
    // http_basic
    username: Option<String>,
    // oauth2_client_credentials
    token_endpoint: Option<String>,
    client_id: Option<String>,
    client_auth_method: Option<String>,
    scopes: Option<Vec<String>>,
    audience: Option<String>,
    resource: Option<String>,
    token_params: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    zone: String,
    identifier: String,
    id: Option<String>,
    upstream: Option<String>,
    provider: String,
    scopes: Vec<String>,
    enforcement: Option<String>,
    #[serde(default)]
    operations: Vec<RawOperation>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    plugins: Vec<RawPlugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    method: String,
    path: String,
    scope: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    window_seconds: u32,
    max_requests: u64,
    key_by: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: String,
    hook: String,
    /// The component file (relative paths from the configuration file's directory).
    file: String,
    /// `augment` (default) or `replace`; injectors only.
    mode: Option<String>,
    /// Handed to the plugin as JSON object text.
    config: Option<toml::Table>,
    deadline_ms: Option<u32>,
    memory_limit_bytes: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// Validation and building
// ---------------------------------------------------------------------------------------

/// The file being loaded: where errors point and relative paths start.
struct Ctx<'a> {
    file: &'a Path,
    base: &'a Path,
    lookup: Lookup<'a>,
    /// Component bytes read from the plugins' files, by digest, until `load_plugins`.
    components: RefCell<HashMap<[u8; 32], Vec<u8>>>,
}

impl Ctx<'_> {
    fn fail(&self, detail: impl Into<String>) -> StandaloneError {
        StandaloneError {
            file: self.file.display().to_string(),
            detail: detail.into(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// Reads a file the configuration names; `key` says which key named it.
    fn read(&self, key: &str, path: &str) -> Result<Zeroizing<Vec<u8>>, StandaloneError> {
        std::fs::read(self.resolve(path))
            .map(Zeroizing::new)
            .map_err(|e| self.fail(format!("{key} ({path}): cannot read: {e}")))
    }

    fn build(&self, raw: RawFile, settings: &LoadSettings) -> Result<Standalone, StandaloneError> {
        let listen = raw
            .listen
            .map(|listen| {
                listen.parse::<SocketAddr>().map_err(|_bad| {
                    self.fail("listen: must be host:port, for example 0.0.0.0:8081")
                })
            })
            .transpose()?;
        let issuer = raw
            .issuer
            .map(|issuer| {
                let valid = (issuer.starts_with("http://") || issuer.starts_with("https://"))
                    && !issuer.ends_with('/')
                    && url::Url::parse(&issuer).is_ok();
                if valid {
                    Ok(issuer)
                } else {
                    Err(self.fail("issuer: must be an http(s) URL without a trailing slash"))
                }
            })
            .transpose()?;
        let redis_url = raw
            .redis_url
            .map(|url| {
                let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
                if known.iter().any(|scheme| url.starts_with(scheme)) {
                    Ok(url)
                } else {
                    // The value may hold a password: it is not repeated.
                    Err(self.fail("redis_url: must be a redis:// or rediss:// URL"))
                }
            })
            .transpose()?;
        let audit_replay_dir = raw.audit_replay_dir.map(|dir| self.resolve(&dir));
        if raw.zones.is_empty() {
            return Err(self.fail("the file declares no [[zones]]"));
        }

        let deny_all = Arc::new(Bundle::deny_all());
        let mut zones = HashMap::new();
        for (index, zone) in raw.zones.into_iter().enumerate() {
            let table = match is_id(&zone.id) {
                true => format!("zones[{}]", zone.id),
                false => {
                    return Err(self.fail(format!(
                        "zones #{}: id must match [A-Za-z0-9._:-]{{1,128}}",
                        index + 1
                    )));
                }
            };
            if zones.contains_key(&zone.id) {
                return Err(self.fail(format!("{table}: the zone is declared twice")));
            }
            let parts = self.build_zone(&table, &zone, settings, &deny_all)?;
            zones.insert(zone.id, parts);
        }

        let mut providers: HashMap<String, (String, Arc<Provider>)> = HashMap::new();
        for (index, provider) in raw.providers.into_iter().enumerate() {
            if provider.id.is_empty() {
                return Err(self.fail(format!("providers #{}: id is empty", index + 1)));
            }
            let table = format!("providers[{}]", provider.id);
            if providers.contains_key(&provider.id) {
                return Err(self.fail(format!("{table}: the provider is declared twice")));
            }
            let Some(zone) = zones.get(&provider.zone) else {
                return Err(self.fail(format!(
                    "{table}.zone: no [[zones]] has id {}",
                    provider.zone
                )));
            };
            let built = self.build_provider(&table, &provider, zone.signer.is_some())?;
            providers.insert(provider.id, (provider.zone, Arc::new(built)));
        }

        for (index, resource) in raw.resources.into_iter().enumerate() {
            if resource.identifier.is_empty() {
                return Err(self.fail(format!("resources #{}: identifier is empty", index + 1)));
            }
            let table = format!("resources[{}]", resource.identifier);
            let Some(zone) = zones.get_mut(&resource.zone) else {
                return Err(self.fail(format!(
                    "{table}.zone: no [[zones]] has id {}",
                    resource.zone
                )));
            };
            if zone.resources.contains_key(&resource.identifier) {
                return Err(self.fail(format!(
                    "{table}: the resource is declared twice in zone {}",
                    resource.zone
                )));
            }
            let provider = match providers.get(&resource.provider) {
                Some((provider_zone, provider)) if *provider_zone == resource.zone => {
                    Arc::clone(provider)
                }
                Some((provider_zone, _)) => {
                    return Err(self.fail(format!(
                        "{table}.provider: provider {} belongs to zone {provider_zone}, not {}",
                        resource.provider, resource.zone
                    )));
                }
                None => {
                    return Err(self.fail(format!(
                        "{table}.provider: no [[providers]] has id {}",
                        resource.provider
                    )));
                }
            };
            let binding = self.build_binding(&table, resource, provider, settings)?;
            zone.resources
                .insert(binding.identifier.clone(), Arc::new(binding));
        }

        let jwks = if zones.values().any(|zone| zone.jwks_url.is_some()) {
            Some(control_http::jwks::JwksClient::new())
        } else {
            None
        };
        Ok(Standalone {
            file: self.file.to_path_buf(),
            listen,
            issuer,
            redis_url,
            audit_replay_dir,
            zones,
            fetched: ArcSwap::from_pointee(HashMap::new()),
            jwks,
            refreshing: tokio::sync::Mutex::new(()),
            components: self.components.take(),
        })
    }

    fn build_zone(
        &self,
        table: &str,
        zone: &RawZone,
        settings: &LoadSettings,
        deny_all: &Arc<Bundle>,
    ) -> Result<ZoneParts, StandaloneError> {
        let mut file_keys = HashMap::new();
        for (index, path) in zone.key_files.iter().enumerate() {
            let key = format!("{table}.key_files[{index}]");
            let bytes = self.read(&key, path)?;
            let parsed = keys::key_document(&bytes)
                .map_err(|reason| self.fail(format!("{key} ({path}): {reason}")))?;
            for (kid, public) in parsed {
                if file_keys.insert(kid.clone(), public).is_some() {
                    return Err(self.fail(format!("{key} ({path}): kid {kid} appears twice")));
                }
            }
        }
        let jwks_url = zone
            .jwks_url
            .as_deref()
            .map(|raw| {
                url::Url::parse(raw)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                    .ok_or_else(|| self.fail(format!("{table}.jwks_url: must be an http(s) URL")))
            })
            .transpose()?;
        if file_keys.is_empty() && jwks_url.is_none() {
            return Err(self.fail(format!(
                "{table}: needs key_files or jwks_url (the keys that verify its mandates)"
            )));
        }
        if zone.signing_key_id.is_some() && zone.signing_key_file.is_none() {
            return Err(self.fail(format!(
                "{table}.signing_key_id: set only together with signing_key_file"
            )));
        }
        let signer = match &zone.signing_key_file {
            None => None,
            Some(path) => {
                let key = format!("{table}.signing_key_file");
                let bytes = self.read(&key, path)?;
                let signing = keys::signing_key(&bytes)
                    .map_err(|reason| self.fail(format!("{key} ({path}): {reason}")))?;
                let kid = match &zone.signing_key_id {
                    Some(kid) if !kid.is_empty() => kid.clone(),
                    Some(_) => return Err(self.fail(format!("{table}.signing_key_id: is empty"))),
                    None => keys::thumbprint(&signing.public_key()),
                };
                Some(Arc::new(Signer { kid, key: signing }))
            }
        };
        let (labels, applications) = if zone.applications.is_empty() {
            (None, HashMap::new())
        } else {
            let mut labels = HashMap::new();
            let mut applications = HashMap::new();
            for (index, app) in zone.applications.iter().enumerate() {
                if !is_id(&app.id) {
                    return Err(self.fail(format!(
                        "{table}.applications #{}: id must match [A-Za-z0-9._:-]{{1,128}}",
                        index + 1
                    )));
                }
                if app.labels.iter().any(String::is_empty) {
                    return Err(self.fail(format!(
                        "{table}.applications[{}].labels: holds an empty label",
                        app.id
                    )));
                }
                if labels.insert(app.id.clone(), app.labels.clone()).is_some() {
                    return Err(self.fail(format!(
                        "{table}.applications[{}]: the application is listed twice",
                        app.id
                    )));
                }
                applications.insert(
                    app.id.clone(),
                    Application {
                        id: app.id.clone(),
                        registration_method: "managed".to_owned(),
                        archived: false,
                        expires_at: None,
                    },
                );
            }
            (Some(labels), applications)
        };
        let policy = self.build_policy(table, &zone.id, &zone.policy_files, settings, deny_all)?;
        Ok(ZoneParts {
            file_keys,
            jwks_url,
            signer,
            labels,
            applications,
            resources: HashMap::new(),
            policy,
        })
    }

    /// The zone's bundle from its policy files, in order; none is the deny-all bundle.
    fn build_policy(
        &self,
        table: &str,
        zone_id: &str,
        files: &[String],
        settings: &LoadSettings,
        deny_all: &Arc<Bundle>,
    ) -> Result<PolicySlot, StandaloneError> {
        if files.is_empty() {
            return Ok(PolicySlot::Ready(Arc::clone(deny_all)));
        }
        let mut documents = Vec::with_capacity(files.len());
        let mut version = Sha256::new();
        for (index, path) in files.iter().enumerate() {
            let key = format!("{table}.policy_files[{index}]");
            if files[..index].contains(path) {
                return Err(self.fail(format!("{key} ({path}): listed twice")));
            }
            let bytes = self.read(&key, path)?;
            let content = String::from_utf8(bytes.to_vec())
                .map_err(|_not_utf8| self.fail(format!("{key} ({path}): is not UTF-8")))?;
            let content_sha256 = control_policy::content_sha256(&content);
            version.update(content_sha256.as_bytes());
            documents.push(PolicyDocument {
                id: path.clone(),
                content,
                content_sha256,
                schema_version: control_policy::SCHEMA_VERSION.to_owned(),
            });
        }
        let manifest: Vec<String> = files.to_vec();
        let manifest_sha256 = control_policy::manifest_sha256(&manifest);
        version.update(manifest_sha256.as_bytes());
        let version = hex::encode(version.finalize());
        let source = BundleSource {
            policy_set_id: format!("standalone:{zone_id}"),
            policy_set_version_id: format!("standalone:{zone_id}:{}", &version[..16]),
            manifest,
            manifest_sha256,
            documents,
        };
        let bundle = Bundle::build(source, &settings.policy)
            .map_err(|e| self.fail(format!("{table}.policy_files: the bundle is rejected: {e}")))?;
        tracing::info!(zone = zone_id, version = %bundle.provenance().policy_set_version_id, "policy bundle loaded from files");
        Ok(PolicySlot::Ready(Arc::new(bundle)))
    }

    fn build_provider(
        &self,
        table: &str,
        raw: &RawProvider,
        zone_has_signer: bool,
    ) -> Result<Provider, StandaloneError> {
        let kind = raw.kind.as_str();
        let set: [(&str, bool); 15] = [
            ("auth_location", raw.auth_location.is_some()),
            ("header_name", raw.header_name.is_some()),
            ("query_param_name", raw.query_param_name.is_some()),
            ("auth_scheme", raw.auth_scheme.is_some()),
            ("auth_header", raw.auth_header.is_some()),
            ("username", raw.username.is_some()),
            ("token_endpoint", raw.token_endpoint.is_some()),
            ("client_id", raw.client_id.is_some()),
            ("client_auth_method", raw.client_auth_method.is_some()),
            ("scopes", raw.scopes.is_some()),
            ("audience", raw.audience.is_some()),
            ("resource", raw.resource.is_some()),
            ("token_params", raw.token_params.is_some()),
            ("secret_env", raw.secret_env.is_some()),
            ("secret_file", raw.secret_file.is_some()),
        ];
        let applies: &[&str] = match kind {
            "none" | "caracal_mandate" => &[],
            "api_key" => &[
                "auth_location",
                "header_name",
                "query_param_name",
                "auth_scheme",
                "secret_env",
                "secret_file",
            ],
            "bearer_token" => &["auth_header", "auth_scheme", "secret_env", "secret_file"],
            "http_basic" => &["username", "secret_env", "secret_file"],
            "oauth2_client_credentials" => &[
                "token_endpoint",
                "client_id",
                "client_auth_method",
                "scopes",
                "audience",
                "resource",
                "token_params",
                "auth_header",
                "auth_scheme",
                "secret_env",
                "secret_file",
            ],
            _ => {
                return Err(self.fail(format!(
                    "{table}.kind: must be none, caracal_mandate, api_key, bearer_token, \
                     http_basic or oauth2_client_credentials"
                )));
            }
        };
        if let Some((field, _)) = set
            .iter()
            .find(|(field, is_set)| *is_set && !applies.contains(field))
        {
            return Err(self.fail(format!("{table}.{field}: does not apply to kind {kind}")));
        }
        let needs_signer = kind == "caracal_mandate" || raw.forward_caracal_identity;
        if needs_signer && !zone_has_signer {
            return Err(self.fail(format!(
                "{table}: kind caracal_mandate and forward_caracal_identity need the zone's \
                 signing_key_file (zones[{}])",
                raw.zone
            )));
        }
        let hosts = raw
            .allowed_token_hosts
            .iter()
            .map(|host| {
                if host.is_empty() || host.contains(['/', ' ', ':']) {
                    Err(self.fail(format!(
                        "{table}.allowed_token_hosts: {host:?} is not a host name"
                    )))
                } else {
                    Ok(host.to_ascii_lowercase())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header = |key: &str,
                      value: &Option<String>|
         -> Result<Option<HeaderName>, StandaloneError> {
            value
                .as_deref()
                .map(|name| {
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_bad| self.fail(format!("{table}.{key}: is not a header name")))
                })
                .transpose()
        };
        let credential = match kind {
            "none" => Credential::None,
            "caracal_mandate" => Credential::CaracalMandate,
            "api_key" => {
                let placement = match raw.auth_location.as_deref().unwrap_or("header") {
                    "header" => {
                        if raw.query_param_name.is_some() {
                            return Err(self.fail(format!(
                                "{table}.query_param_name: applies to auth_location = \"query\" only"
                            )));
                        }
                        KeyPlacement::Header {
                            name: header("header_name", &raw.header_name)?.ok_or_else(|| {
                                self.fail(format!("{table}.header_name: is required"))
                            })?,
                            scheme: raw.auth_scheme.clone(),
                        }
                    }
                    "query" => {
                        if raw.header_name.is_some() || raw.auth_scheme.is_some() {
                            return Err(self.fail(format!(
                                "{table}: header_name and auth_scheme apply to auth_location = \"header\" only"
                            )));
                        }
                        KeyPlacement::Query {
                            param: raw
                                .query_param_name
                                .clone()
                                .filter(|param| !param.is_empty())
                                .ok_or_else(|| {
                                    self.fail(format!("{table}.query_param_name: is required"))
                                })?,
                        }
                    }
                    _ => {
                        return Err(
                            self.fail(format!("{table}.auth_location: must be header or query"))
                        );
                    }
                };
                let key = self.secret(table, raw, true)?;
                Credential::ApiKey { placement, key }
            }
            "bearer_token" => Credential::Bearer {
                header: header("auth_header", &raw.auth_header)?
                    .unwrap_or(http::header::AUTHORIZATION),
                scheme: raw
                    .auth_scheme
                    .clone()
                    .unwrap_or_else(|| "Bearer".to_owned()),
                token: self.secret(table, raw, true)?,
            },
            "http_basic" => {
                let username = raw
                    .username
                    .as_deref()
                    .filter(|name| !name.is_empty() && !name.contains(':'))
                    .ok_or_else(|| {
                        self.fail(format!("{table}.username: is required and holds no colon"))
                    })?;
                let password = self.secret(table, raw, false)?;
                let pair = Zeroizing::new(format!("{username}:{}", password.expose()));
                let encoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
                );
                Credential::Basic {
                    value: Secret::new(format!("Basic {}", encoded.as_str())),
                }
            }
            _ => Credential::OAuthClientCredentials(Arc::new(self.oauth_client(table, raw)?)),
        };
        Ok(Provider {
            id: raw.id.clone(),
            identifier: raw
                .identifier
                .clone()
                .unwrap_or_else(|| format!("provider://{}", raw.id)),
            kind: raw.kind.clone(),
            credential,
            allowed_token_hosts: hosts,
            forward_caracal_identity: raw.forward_caracal_identity,
        })
    }

    fn oauth_client(&self, table: &str, raw: &RawProvider) -> Result<OAuthClient, StandaloneError> {
        let client_auth_method = raw
            .client_auth_method
            .clone()
            .unwrap_or_else(|| "client_secret_basic".to_owned());
        let needs_secret = match client_auth_method.as_str() {
            "client_secret_basic" | "client_secret_post" => true,
            "none" => false,
            _ => {
                return Err(self.fail(format!(
                    "{table}.client_auth_method: must be client_secret_basic, client_secret_post or none"
                )));
            }
        };
        let token_endpoint = raw
            .token_endpoint
            .as_deref()
            .and_then(|raw| url::Url::parse(raw).ok())
            .filter(|url| url.scheme() == "https" && url.has_host())
            .ok_or_else(|| {
                self.fail(format!(
                    "{table}.token_endpoint: is required and must be an https URL"
                ))
            })?;
        let client_id = raw
            .client_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| self.fail(format!("{table}.client_id: is required")))?;
        let client_secret = if needs_secret {
            Some(self.secret(table, raw, false)?)
        } else if raw.secret_env.is_some() || raw.secret_file.is_some() {
            return Err(self.fail(format!(
                "{table}: client_auth_method none takes no secret_env or secret_file"
            )));
        } else {
            None
        };
        let header = raw
            .auth_header
            .as_deref()
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_bad| self.fail(format!("{table}.auth_header: is not a header name")))
            })
            .transpose()?
            .unwrap_or(http::header::AUTHORIZATION);
        let token_params: Vec<(String, String)> = raw
            .token_params
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let secret_digest = client_secret
            .as_ref()
            .map(|secret| hex::encode(Sha256::digest(secret.expose().as_bytes())))
            .unwrap_or_default();
        let fingerprint = control_crypto::content_sha256(
            OAUTH_FINGERPRINT_DOMAIN,
            &serde_json::json!({
                "provider": raw.id,
                "token_endpoint": token_endpoint.as_str(),
                "client_id": client_id,
                "client_auth_method": client_auth_method,
                "scopes": raw.scopes,
                "audience": raw.audience,
                "resource": raw.resource,
                "token_params": raw.token_params,
                "secret_sha256": secret_digest,
            }),
        )
        .map(hex::encode)
        .map_err(|_unserialisable| self.fail(format!("{table}: cannot be fingerprinted")))?;
        Ok(OAuthClient {
            token_endpoint,
            client_id,
            client_secret,
            client_auth_method,
            scopes: raw.scopes.clone().unwrap_or_default(),
            audience: raw.audience.clone(),
            resource: raw.resource.clone(),
            token_params,
            header,
            scheme: raw
                .auth_scheme
                .clone()
                .unwrap_or_else(|| "Bearer".to_owned()),
            scheme_configured: raw.auth_scheme.is_some(),
            fingerprint,
        })
    }

    /// The provider's secret from `secret_env` (through the lookup) or `secret_file` (one
    /// trailing newline dropped). `in_header`: it is placed as a header value as is.
    fn secret(
        &self,
        table: &str,
        raw: &RawProvider,
        in_header: bool,
    ) -> Result<Secret, StandaloneError> {
        let value = match (&raw.secret_env, &raw.secret_file) {
            (Some(_), Some(_)) => {
                return Err(self.fail(format!("{table}: set secret_env or secret_file, not both")));
            }
            (None, None) => {
                return Err(self.fail(format!(
                    "{table}: kind {} needs secret_env or secret_file",
                    raw.kind
                )));
            }
            (Some(var), None) => Zeroizing::new((self.lookup)(var).unwrap_or_default()),
            (None, Some(path)) => {
                let bytes = self.read(&format!("{table}.secret_file"), path)?;
                let text = std::str::from_utf8(&bytes).map_err(|_not_utf8| {
                    self.fail(format!("{table}.secret_file ({path}): is not UTF-8"))
                })?;
                let text = text.strip_suffix('\n').unwrap_or(text);
                Zeroizing::new(text.strip_suffix('\r').unwrap_or(text).to_owned())
            }
        };
        let source = match (&raw.secret_env, &raw.secret_file) {
            (Some(var), _) => format!("{table}.secret_env: {var}"),
            (_, Some(path)) => format!("{table}.secret_file ({path})"),
            _ => table.to_owned(),
        };
        if value.is_empty() {
            return Err(self.fail(format!("{source} is not set or empty")));
        }
        if in_header && HeaderValue::from_str(&value).is_err() {
            return Err(self.fail(format!("{source}: the secret is not a valid header value")));
        }
        Ok(Secret::new(value.to_string()))
    }

    fn build_binding(
        &self,
        table: &str,
        raw: RawResource,
        provider: Arc<Provider>,
        settings: &LoadSettings,
    ) -> Result<Binding, StandaloneError> {
        if raw.scopes.is_empty() || raw.scopes.len() > 64 {
            return Err(self.fail(format!("{table}.scopes: must hold 1 to 64 scopes")));
        }
        if let Some(bad) = raw
            .scopes
            .iter()
            .find(|scope| scope.is_empty() || scope.contains(char::is_whitespace))
        {
            return Err(self.fail(format!("{table}.scopes: {bad:?} is not a scope")));
        }
        let upstream = raw
            .upstream
            .as_deref()
            .map(|raw| {
                url::Url::parse(raw)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                    .ok_or_else(|| self.fail(format!("{table}.upstream: must be an http(s) URL")))
            })
            .transpose()?;
        let enforced = match raw.enforcement.as_deref().unwrap_or("enforced") {
            "enforced" => true,
            "transport_uniform" => false,
            _ => {
                return Err(self.fail(format!(
                    "{table}.enforcement: must be enforced or transport_uniform"
                )));
            }
        };
        let mut operations = Vec::with_capacity(raw.operations.len());
        for (index, op) in raw.operations.iter().enumerate() {
            let key = format!("{table}.operations[{index}]");
            let method = op.method.to_ascii_uppercase();
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(self.fail(format!("{key}.method: is not an HTTP method")));
            }
            if !op.path.starts_with('/') {
                return Err(self.fail(format!("{key}.path: must start with /")));
            }
            if !raw.scopes.contains(&op.scope) {
                return Err(self.fail(format!(
                    "{key}.scope: {} is not one of the resource's scopes",
                    op.scope
                )));
            }
            operations.push(Operation {
                method,
                path: op.path.clone(),
                scope: op.scope.clone(),
            });
        }
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .map(|limit| {
                if limit.window_seconds == 0 || limit.max_requests == 0 {
                    return Err(self.fail(format!(
                        "{table}.rate_limit: window_seconds and max_requests must be positive"
                    )));
                }
                let per_application = match limit.key_by.as_deref().unwrap_or("application") {
                    "application" => true,
                    "resource" => false,
                    _ => {
                        return Err(self.fail(format!(
                            "{table}.rate_limit.key_by: must be application or resource"
                        )));
                    }
                };
                Ok(RateLimit {
                    window_seconds: limit.window_seconds,
                    max_requests: limit.max_requests,
                    per_application,
                })
            })
            .transpose()?;
        let mut plugins = Vec::with_capacity(raw.plugins.len());
        for (index, plugin) in raw.plugins.iter().enumerate() {
            plugins.push(self.build_plugin(&format!("{table}.plugins[{index}]"), plugin)?);
        }
        // Authorizers run in the declared order, then injectors (steps 25 and 31).
        plugins.sort_by_key(|p| p.hook == PluginHook::Injector);
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = plugins.iter().find(|p| !names.insert(p.name.as_str())) {
            return Err(self.fail(format!(
                "{table}.plugins: {} is bound twice (a plugin is bound at most once per resource)",
                twice.name
            )));
        }
        let replacing = plugins
            .iter()
            .filter(|p| p.hook == PluginHook::Injector && p.mode == InjectMode::Replace)
            .count();
        if replacing > 1 {
            return Err(self.fail(format!(
                "{table}.plugins: at most one injector may have mode replace"
            )));
        }
        let resource_id = match raw.id {
            Some(id) if is_id(&id) => id,
            Some(_) => {
                return Err(self.fail(format!("{table}.id: must match [A-Za-z0-9._:-]{{1,128}}")));
            }
            None => raw.identifier.clone(),
        };
        Ok(Binding {
            is_control: raw.identifier == settings.control_audience,
            resource_id,
            identifier: raw.identifier,
            scopes: raw.scopes,
            upstream,
            enforced,
            operations,
            provider,
            rate_limit,
            plugins,
        })
    }

    /// One `plugins` entry: checked, its file read and hashed; the plugin is compiled and
    /// configured later, by [`Standalone::load_plugins`].
    fn build_plugin(&self, key: &str, plugin: &RawPlugin) -> Result<PluginRef, StandaloneError> {
        if !is_plugin_name(&plugin.name) {
            return Err(self.fail(format!(
                "{key}.name: must match ^[a-z0-9][a-z0-9._-]{{0,63}}$"
            )));
        }
        let hook = PluginHook::parse(&plugin.hook)
            .ok_or_else(|| self.fail(format!("{key}.hook: must be authorizer or injector")))?;
        let mode = match (hook, plugin.mode.as_deref()) {
            (_, None) | (PluginHook::Injector, Some("augment")) => InjectMode::Augment,
            (PluginHook::Injector, Some("replace")) => InjectMode::Replace,
            (PluginHook::Injector, Some(_)) => {
                return Err(self.fail(format!("{key}.mode: must be augment or replace")));
            }
            (PluginHook::Authorizer, Some(_)) => {
                return Err(self.fail(format!("{key}.mode: only injectors have a mode")));
            }
        };
        let deadline_ms = plugin.deadline_ms.unwrap_or(5);
        if !(1..=1000).contains(&deadline_ms) {
            return Err(self.fail(format!("{key}.deadline_ms: must be between 1 and 1000")));
        }
        let memory_bytes = plugin.memory_limit_bytes.unwrap_or(16 * 1024 * 1024);
        if !(65_536..=1_073_741_824).contains(&memory_bytes) {
            return Err(self.fail(format!(
                "{key}.memory_limit_bytes: must be between 65536 and 1073741824"
            )));
        }
        let config = serde_json::to_string(&plugin.config.clone().unwrap_or_default()).map_err(
            |_unrepresentable| self.fail(format!("{key}.config: cannot be written as JSON")),
        )?;
        let path = self.base.join(&plugin.file);
        let bytes = std::fs::read(&path)
            .map_err(|e| self.fail(format!("{key}.file: cannot read {}: {e}", path.display())))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        self.components.borrow_mut().insert(digest, bytes);
        Ok(PluginRef {
            plugin_id: plugin.name.clone(),
            name: plugin.name.clone(),
            hook,
            mode,
            digest,
            config: Arc::from(config),
            limits: CallLimits {
                deadline: Duration::from_millis(u64::from(deadline_ms)),
                memory_bytes,
            },
            state: PluginState::Failed(Arc::from("the plugin has not been loaded")),
        })
    }
}

/// `gateway_plugins.name`'s rule.
fn is_plugin_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

/// `^[A-Za-z0-9._:-]{1,128}$`: what steps 8 and 9 accept as a zone or client id.
fn is_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

// ---------------------------------------------------------------------------------------
// Parse errors in one line
// ---------------------------------------------------------------------------------------

/// `line L, column C, in [[table]] #n, key k: message`, with quoted values in the message
/// replaced by `"…"` (a mistyped value could be a secret pasted in the wrong place).
fn describe_parse_error(text: &str, error: &toml::de::Error) -> String {
    let message = redact_quoted(error.message().trim());
    let message = message.replace('\n', "; ");
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_index = before.matches('\n').count();
    let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
    let mut place = format!("line {}, column {column}", line_index + 1);
    // The enclosing table header, and which occurrence of it (array tables repeat).
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut header: Option<(&str, usize)> = None;
    for line in text.lines().take(line_index + 1) {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let name = trimmed.split('#').next().unwrap_or(trimmed).trim();
            let count = seen.entry(name).or_default();
            *count += 1;
            header = Some((name, *count));
        }
    }
    if let Some((name, ordinal)) = header {
        place.push_str(", in ");
        place.push_str(name);
        if name.starts_with("[[") {
            place.push_str(&format!(" #{ordinal}"));
        }
    }
    if let Some(line) = text.lines().nth(line_index)
        && let Some((key, _value)) = line.split_once('=')
    {
        let key = key.trim();
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'"'));
        if plain && !line.trim_start().starts_with('[') {
            place.push_str(", key ");
            place.push_str(key);
        }
    }
    format!("{place}: {message}")
}

/// Replaces every `"…"` in `message` by `"…"` so no configured value is repeated.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
