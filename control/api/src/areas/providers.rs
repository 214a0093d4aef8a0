//! `/v1/zones/{z}/providers`: credential sources (authority §7.1). A submitted `config_json`
//! is split into its public part, stored in clear, and its secret keys, sealed as one
//! document under `ZONE_KEK` in a `secrets` row (`provider_secret_config`, associated data
//! bound to that row) and never returned: rows list only the names (`secret_config_keys`).
//!
//! Secret keys. [`SECRET_KEYS`] are never stored in clear: the kind that uses a key seals
//! it, every other kind refuses it (400 `invalid_provider_config`).
//!
//! | Kind | Sealed keys | Needs |
//! | --- | --- | --- |
//! | `none`, `caracal_mandate` | — | — |
//! | `api_key` | `api_key` | `api_key`; `header_name` (header placement) or `query_param_name` (query) |
//! | `bearer_token` | `bearer_token` | `bearer_token` |
//! | `http_basic` | `password` | `password`, `username` |
//! | `oauth2_client_credentials` | `client_secret`, `private_key` | `token_endpoint` (https), `client_id`, `allowed_token_hosts` (holding the endpoint's host); `client_secret` for `client_secret_basic`/`client_secret_post`; `private_key` for `private_key_jwt` or `grant_type=jwt_bearer` |
//! | `oauth2_authorization_code` | `client_secret` | — (the connect flow's own fields pass through, except names that read like credentials) |
//!
//! Other kinds refuse fields they do not know, so a mistyped key does not pass silently.
//!
//! PATCH semantics. A `config_json` in a PATCH replaces the public part; a secret key it
//! carries replaces that sealed value, a secret key set to `null` removes it, and a secret key
//! it omits keeps its sealed value (the 1.0 client's `ensure_api_key_provider` relies on
//! this). A change of `kind` drops the sealed keys the new kind does not use.

use std::collections::{BTreeMap, BTreeSet};

use control_crypto::SealContext;
use control_store::admin::providers::{
    self, NewSealedDocument, ProviderRow, ProviderState, SealedDocument,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use http::Method;

use super::{Reply, check_len, open_zone, to_value, unique_or};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::{AdminRequest, printable},
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// The provider kinds (storage §1.2).
pub const KINDS: [&str; 7] = [
    "none",
    "caracal_mandate",
    "oauth2_authorization_code",
    "oauth2_client_credentials",
    "api_key",
    "bearer_token",
    "http_basic",
];

/// `config_json` keys whose values are never stored in clear, whatever the kind.
pub const SECRET_KEYS: [&str; 8] = [
    "access_token",
    "api_key",
    "bearer_token",
    "client_secret",
    "password",
    "private_key",
    "refresh_token",
    "token",
];

/// The longest secret value (a PEM private key fits).
const MAX_SECRET_CHARS: usize = 16_384;
/// The longest free-text public value.
const MAX_TEXT_CHARS: usize = 16_384;
/// At most this many entries in `allowed_token_hosts` and `scopes`.
const MAX_LIST: usize = 64;
/// The public configuration's size bound, compact JSON: Postgres prints jsonb with a space
/// after each `:` and `,`, so this keeps the column's 64 KiB CHECK out of reach.
const MAX_PUBLIC_BYTES: usize = 32_768;

/// A provider configuration as submitted: public fields and secret keys together. Its
/// `Debug` names the keys only, so a secret cannot reach a log line through it.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ConfigDocument(Map<String, Value>);

impl std::fmt::Debug for ConfigDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Body of `POST …/providers`: `name` or `identifier` (`provider://<slug>`, default from the
/// name); `kind` is one of the seven kinds; secret keys inside `config_json` are sealed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    name: Option<String>,
    identifier: Option<String>,
    kind: String,
    config_json: Option<ConfigDocument>,
}

/// Body of `PATCH …/providers/{id}`: a `config_json` replaces the public part; secret keys
/// it omits keep their sealed values, secret keys set to `null` are removed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchProvider {
    name: Option<String>,
    kind: Option<String>,
    config_json: Option<ConfigDocument>,
}

/// A sealed document's plaintext: secret key → value.
type SecretDoc = BTreeMap<String, Zeroizing<String>>;

/// A submitted `config_json`, split.
struct Split {
    public: Map<String, Value>,
    /// Secret keys: `Some(value)` sets, `None` (a JSON `null`) removes.
    secrets: BTreeMap<String, Option<Zeroizing<String>>>,
}

fn config_problem(path: &str, message: impl Into<String>) -> Problem {
    let path = if path.is_empty() {
        "config_json".to_owned()
    } else {
        format!("config_json.{}", printable(path))
    };
    Problem::new(
        400,
        "invalid_provider_config",
        "config_json is invalid for this kind",
    )
    .with_details(json!({"issues": [{"path": path, "message": message.into()}]}))
}

fn secret_required(key: &str, kind: &str) -> Problem {
    Problem::new(
        400,
        "provider_secret_required",
        "the kind needs a secret that is neither submitted nor sealed",
    )
    .with_details(json!({"issues": [{
        "path": format!("config_json.{key}"),
        "message": format!("kind {kind} needs {key}"),
    }]}))
}

fn identifier_conflict() -> Problem {
    Problem::new(
        409,
        "provider_identifier_conflict",
        "a live provider in this zone has this identifier",
    )
}

/// The kind, or 400 `invalid_provider_kind`.
fn parse_kind(kind: &str) -> Result<&'static str, Problem> {
    KINDS.iter().copied().find(|k| *k == kind).ok_or_else(|| {
        Problem::new(
            400,
            "invalid_provider_kind",
            "kind must be none, caracal_mandate, oauth2_authorization_code, \
                 oauth2_client_credentials, api_key, bearer_token or http_basic",
        )
    })
}

/// The sealed keys a kind uses.
fn sealed_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "api_key" => &["api_key"],
        "bearer_token" => &["bearer_token"],
        "http_basic" => &["password"],
        "oauth2_client_credentials" => &["client_secret", "private_key"],
        "oauth2_authorization_code" => &["client_secret"],
        _ => &[],
    }
}

/// How a public field is checked.
#[derive(Debug, Clone, Copy)]
enum Field {
    Bool,
    Text,
    HeaderName,
    Scheme,
    QueryParam,
    Hosts,
    HttpsUrl,
    Scopes,
    TokenParams,
    Choice(&'static [&'static str]),
}

/// The public fields a kind knows (besides `forward_caracal_identity`), and whether it
/// passes unknown ones through (only the authorization-code kind, whose connect flow
/// defines its own fields).
fn public_fields(kind: &str) -> (&'static [(&'static str, Field)], bool) {
    match kind {
        "api_key" => (
            &[
                ("auth_location", Field::Choice(&["header", "query"])),
                ("header_name", Field::HeaderName),
                ("auth_scheme", Field::Scheme),
                ("query_param_name", Field::QueryParam),
                ("allowed_token_hosts", Field::Hosts),
                ("allow_runtime_injection", Field::Bool),
            ],
            false,
        ),
        "bearer_token" => (
            &[
                ("auth_header", Field::HeaderName),
                ("auth_scheme", Field::Scheme),
                ("allowed_token_hosts", Field::Hosts),
                ("allow_runtime_injection", Field::Bool),
            ],
            false,
        ),
        "http_basic" => (
            &[
                ("username", Field::Text),
                ("allowed_token_hosts", Field::Hosts),
            ],
            false,
        ),
        "oauth2_client_credentials" => (
            &[
                ("token_endpoint", Field::HttpsUrl),
                ("client_id", Field::Text),
                (
                    "client_auth_method",
                    Field::Choice(&[
                        "client_secret_basic",
                        "client_secret_post",
                        "private_key_jwt",
                        "none",
                    ]),
                ),
                (
                    "grant_type",
                    Field::Choice(&["client_credentials", "jwt_bearer"]),
                ),
                ("scopes", Field::Scopes),
                ("audience", Field::Text),
                ("resource", Field::Text),
                ("token_params", Field::TokenParams),
                ("assertion_subject", Field::Text),
                ("assertion_audience", Field::Text),
                ("key_id", Field::Text),
                ("certificate", Field::Text),
                ("auth_header", Field::HeaderName),
                ("auth_scheme", Field::Scheme),
                ("allowed_token_hosts", Field::Hosts),
                ("allow_runtime_injection", Field::Bool),
            ],
            false,
        ),
        "oauth2_authorization_code" => (
            &[
                ("authorization_endpoint", Field::HttpsUrl),
                ("token_endpoint", Field::HttpsUrl),
                ("client_id", Field::Text),
                ("scopes", Field::Scopes),
                ("auth_header", Field::HeaderName),
                ("auth_scheme", Field::Scheme),
                ("allowed_token_hosts", Field::Hosts),
                ("allow_runtime_injection", Field::Bool),
            ],
            true,
        ),
        _ => (&[], false),
    }
}

/// Whether a field name reads like a credential (the substrings the 1.0 client redacts).
/// The authorization-code kind passes unknown fields through in clear, so such a name is
/// refused there.
fn looks_secret(key: &str) -> bool {
    const MARKERS: [&str; 14] = [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "cookie",
        "private_key",
        "signing_key",
        "hmac_key",
        "encryption_key",
        "session",
        "credential",
    ];
    let lower = key.to_ascii_lowercase();
    MARKERS.iter().any(|m| lower.contains(m))
}

/// Splits a submitted `config_json` into its public part and its secret keys. A `null`
/// public value counts as absent.
fn split(config: Map<String, Value>) -> Result<Split, Problem> {
    let mut public = Map::new();
    let mut secrets = BTreeMap::new();
    for (key, value) in config {
        let lower = key.to_ascii_lowercase();
        if SECRET_KEYS.contains(&lower.as_str()) && lower != key {
            return Err(config_problem(
                &key,
                "secret keys are spelled in lower case",
            ));
        }
        if SECRET_KEYS.contains(&key.as_str()) {
            let value = match value {
                Value::Null => None,
                Value::String(s)
                    if !s.is_empty()
                        && s.chars().count() <= MAX_SECRET_CHARS
                        && !s.chars().any(char::is_control) =>
                {
                    Some(Zeroizing::new(s))
                }
                _ => {
                    return Err(config_problem(
                        &key,
                        format!(
                            "a secret is a non-empty string of at most {MAX_SECRET_CHARS} \
                             characters without control characters, or null to remove it"
                        ),
                    ));
                }
            };
            secrets.insert(key, value);
        } else if !value.is_null() {
            public.insert(key, value);
        }
    }
    Ok(Split { public, secrets })
}

/// RFC 7230 `token` characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Header names the gateway sets or strips itself (wire-contract §4.5).
fn reserved_header(name: &str) -> bool {
    const EXACT: [&str; 15] = [
        "baggage",
        "connection",
        "expect",
        "forwarded",
        "host",
        "keep-alive",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
        "x-real-ip",
        "x-request-id",
    ];
    const PREFIXES: [&str; 4] = ["content-", "proxy-", "x-caracal-", "x-forwarded-"];
    let lower = name.to_ascii_lowercase();
    EXACT.contains(&lower.as_str()) || PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// A lowercase DNS name of at most 253 characters.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// An OAuth scope token (RFC 6749 §3.3).
pub(crate) fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 256
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The host of an absolute `http`/`https` URL without userinfo or fragment, or why not.
pub(crate) fn absolute_url_host(raw: &str, https_only: bool) -> Result<String, &'static str> {
    if raw.is_empty()
        || raw.len() > 2048
        || raw.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("must be an absolute URL of at most 2048 characters without whitespace");
    }
    if raw.contains('#') {
        return Err("must not carry a fragment");
    }
    let uri: http::Uri = raw
        .parse()
        .map_err(|_bad| "must be an absolute http or https URL")?;
    let scheme_ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => !https_only,
        _ => false,
    };
    if !scheme_ok {
        return Err(if https_only {
            "must be an https URL"
        } else {
            "must be an absolute http or https URL"
        });
    }
    let authority = uri.authority().ok_or("must name a host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry userinfo");
    }
    let host = authority.host();
    if host.is_empty() {
        return Err("must name a host");
    }
    Ok(host.to_ascii_lowercase())
}

fn check_field(key: &str, field: Field, value: &Value) -> Result<(), Problem> {
    let text = || {
        value
            .as_str()
            .ok_or_else(|| config_problem(key, "must be a string"))
    };
    match field {
        Field::Bool => {
            if !value.is_boolean() {
                return Err(config_problem(key, "must be true or false"));
            }
        }
        Field::Text => {
            let s = text()?;
            if s.is_empty() || s.chars().count() > MAX_TEXT_CHARS {
                return Err(config_problem(
                    key,
                    format!("must be 1 to {MAX_TEXT_CHARS} characters"),
                ));
            }
        }
        Field::HeaderName => {
            let s = text()?;
            if s.is_empty() || s.len() > 256 || !s.bytes().all(is_tchar) {
                return Err(config_problem(key, "must be an RFC 7230 header name"));
            }
            if reserved_header(s) {
                return Err(config_problem(
                    key,
                    "names a header the gateway sets or strips itself",
                ));
            }
        }
        Field::Scheme => {
            let s = text()?;
            let mut bytes = s.bytes();
            let ok = s.len() <= 64
                && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(config_problem(
                    key,
                    "must be a letter followed by letters, digits or '-'",
                ));
            }
        }
        Field::QueryParam => {
            let s = text()?;
            let ok = !s.is_empty()
                && s.len() <= 256
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
            if !ok {
                return Err(config_problem(key, "must use only [A-Za-z0-9._~-]"));
            }
        }
        Field::Hosts => {
            let hosts = value
                .as_array()
                .ok_or_else(|| config_problem(key, "must be an array of host names"))?;
            if hosts.is_empty() || hosts.len() > MAX_LIST {
                return Err(config_problem(
                    key,
                    format!("must hold 1 to {MAX_LIST} host names"),
                ));
            }
            if !hosts.iter().all(|h| h.as_str().is_some_and(is_dns_name)) {
                return Err(config_problem(
                    key,
                    "each entry must be a lowercase DNS name of at most 253 characters",
                ));
            }
        }
        Field::HttpsUrl => {
            absolute_url_host(text()?, true).map_err(|why| config_problem(key, why))?;
        }
        Field::Scopes => {
            let scopes = value
                .as_array()
                .ok_or_else(|| config_problem(key, "must be an array of scopes"))?;
            if scopes.len() > MAX_LIST
                || !scopes
                    .iter()
                    .all(|s| s.as_str().is_some_and(is_scope_token))
            {
                return Err(config_problem(
                    key,
                    format!("must hold at most {MAX_LIST} scope tokens"),
                ));
            }
        }
        Field::TokenParams => {
            const FORBIDDEN: [&str; 10] = [
                "client_assertion",
                "client_assertion_type",
                "client_id",
                "client_secret",
                "code",
                "code_verifier",
                "grant_type",
                "redirect_uri",
                "refresh_token",
                "scope",
            ];
            let params = value
                .as_object()
                .ok_or_else(|| config_problem(key, "must be an object of strings"))?;
            for (name, v) in params {
                if FORBIDDEN.contains(&name.as_str()) || SECRET_KEYS.contains(&name.as_str()) {
                    return Err(config_problem(
                        &format!("{key}.{name}"),
                        "may not be set through token_params",
                    ));
                }
                if name.is_empty() || name.len() > 128 || !v.is_string() {
                    return Err(config_problem(key, "must be an object of strings"));
                }
            }
        }
        Field::Choice(allowed) => {
            let s = text()?;
            if !allowed.contains(&s) {
                return Err(config_problem(
                    key,
                    format!("must be one of {}", allowed.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

fn str_field<'a>(public: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    public.get(key).and_then(Value::as_str)
}

fn require(public: &Map<String, Value>, key: &str, kind: &str) -> Result<(), Problem> {
    if public.contains_key(key) {
        Ok(())
    } else {
        Err(config_problem(key, format!("kind {kind} needs {key}")))
    }
}

fn forbid(public: &Map<String, Value>, key: &str, why: &str) -> Result<(), Problem> {
    if public.contains_key(key) {
        Err(config_problem(key, why.to_owned()))
    } else {
        Ok(())
    }
}

/// The public part against the kind: known fields and their types, then the rules that
/// tie fields together.
fn check_public(kind: &str, public: &Map<String, Value>) -> Result<(), Problem> {
    if public.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)) {
        return Err(config_problem("", "must not contain NUL characters"));
    }
    let size = serde_json::to_vec(public).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_PUBLIC_BYTES {
        return Err(config_problem(
            "",
            "the public configuration takes more than 32 KiB",
        ));
    }
    let (fields, open) = public_fields(kind);
    for (key, value) in public {
        let field = if key == "forward_caracal_identity" {
            Some(Field::Bool)
        } else {
            fields.iter().find(|(k, _)| k == key).map(|(_, f)| *f)
        };
        match field {
            Some(field) => check_field(key, field, value)?,
            None if open && looks_secret(key) => {
                return Err(config_problem(
                    key,
                    format!("looks like a secret, which kind {kind} would keep in clear"),
                ));
            }
            None if open => {}
            None => {
                return Err(config_problem(
                    key,
                    format!("kind {kind} has no such field"),
                ));
            }
        }
    }
    match kind {
        "api_key" => {
            if str_field(public, "auth_location") == Some("query") {
                require(public, "query_param_name", kind)?;
                forbid(public, "header_name", "only for header placement")?;
                forbid(public, "auth_scheme", "only for header placement")?;
            } else {
                require(public, "header_name", kind)?;
                forbid(public, "query_param_name", "only for query placement")?;
            }
        }
        "http_basic" => {
            require(public, "username", kind)?;
            if str_field(public, "username").is_some_and(|u| u.contains(':')) {
                return Err(config_problem("username", "must not contain ':'"));
            }
        }
        "oauth2_client_credentials" => {
            require(public, "token_endpoint", kind)?;
            require(public, "client_id", kind)?;
            require(public, "allowed_token_hosts", kind)?;
            let host = str_field(public, "token_endpoint")
                .and_then(|url| absolute_url_host(url, true).ok())
                .unwrap_or_default();
            let allowed = public
                .get("allowed_token_hosts")
                .and_then(Value::as_array)
                .is_some_and(|hosts| hosts.iter().any(|h| h.as_str() == Some(host.as_str())));
            if !allowed {
                return Err(config_problem(
                    "token_endpoint",
                    "its host must be listed in allowed_token_hosts",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every submitted secret value must be one the kind seals.
fn check_submitted_secrets<'a>(
    kind: &str,
    mut submitted: impl Iterator<Item = &'a String>,
) -> Result<(), Problem> {
    let allowed = sealed_keys(kind);
    match submitted.find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(config_problem(
            key,
            format!("is a secret kind {kind} does not use"),
        )),
        None => Ok(()),
    }
}

/// The secrets the kind needs with this public configuration are all sealed.
fn check_required_secrets(
    kind: &str,
    public: &Map<String, Value>,
    sealed: &BTreeSet<String>,
) -> Result<(), Problem> {
    let mut needed: Vec<&str> = Vec::new();
    match kind {
        "api_key" | "bearer_token" => needed.push(kind),
        "http_basic" => needed.push("password"),
        "oauth2_client_credentials" => {
            let grant = str_field(public, "grant_type").unwrap_or("client_credentials");
            let default_method = if grant == "jwt_bearer" {
                "none"
            } else {
                "client_secret_basic"
            };
            let method = str_field(public, "client_auth_method").unwrap_or(default_method);
            if matches!(method, "client_secret_basic" | "client_secret_post") {
                needed.push("client_secret");
            }
            if method == "private_key_jwt" || grant == "jwt_bearer" {
                needed.push("private_key");
            }
        }
        _ => {}
    }
    match needed.into_iter().find(|k| !sealed.contains(*k)) {
        Some(key) => Err(secret_required(key, kind)),
        None => Ok(()),
    }
}

/// A name: 1 to 256 characters, no control characters (Postgres text holds no NUL).
pub(crate) fn check_name(name: &str) -> Result<(), Problem> {
    check_len("name", name, 1, 256)?;
    if name.chars().any(char::is_control) {
        return Err(Problem::invalid_body(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Whether a JSON value holds a NUL character in a key or a string (jsonb cannot store it).
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Lowercase `[a-z0-9]` runs joined by `-` (the 1.0 client's identifier slug), at most 200
/// characters; `fallback` when nothing is left.
pub(crate) fn slug(name: &str, fallback: &str) -> String {
    let mut slug = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if slug.len() + word.len() + 1 > 200 {
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    if slug.is_empty() {
        fallback.to_owned()
    } else {
        slug
    }
}

/// `provider://` followed by lowercase alphanumeric runs joined by `-` (the 1.0 client's
/// pattern), at most 512 characters.
fn valid_provider_identifier(identifier: &str) -> bool {
    identifier.len() <= 512
        && identifier.strip_prefix("provider://").is_some_and(|rest| {
            !rest.is_empty()
                && rest.split('-').all(|run| {
                    !run.is_empty()
                        && run
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
        })
}

/// A name given or derived from the identifier, and an identifier given or derived from
/// the name.
fn naming(name: Option<String>, identifier: Option<String>) -> Result<(String, String), Problem> {
    if let Some(name) = &name {
        check_name(name)?;
    }
    let identifier = match (identifier, &name) {
        (Some(identifier), _) => {
            if !valid_provider_identifier(&identifier) {
                return Err(Problem::new(
                    400,
                    "invalid_identifier",
                    "identifier must match ^provider://[a-z0-9]+(-[a-z0-9]+)*$ (at most 512 characters)",
                ));
            }
            identifier
        }
        (None, Some(name)) => format!("provider://{}", slug(name, "provider")),
        (None, None) => {
            return Err(Problem::invalid_body(
                "name",
                "name or identifier is required",
            ));
        }
    };
    let name = name.unwrap_or_else(|| identifier.chars().take(256).collect());
    Ok((name, identifier))
}

fn seal_context<'a>(zone_id: &'a str, secret_id: &'a str) -> SealContext<'a> {
    SealContext {
        table: "secrets",
        column: "ciphertext",
        zone_id,
        row_id: secret_id,
    }
}

/// Seals `doc` (compact JSON) for the `secrets` row `secret_id`.
fn seal(
    api: &Api,
    zone_id: &str,
    secret_id: &str,
    doc: &SecretDoc,
) -> Result<control_crypto::Sealed, ApiError> {
    let plain: BTreeMap<&str, &str> = doc.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bytes =
        Zeroizing::new(serde_json::to_vec(&plain).map_err(|e| ApiError::Internal(e.to_string()))?);
    api.config
        .kek
        .seal(&seal_context(zone_id, secret_id), &bytes)
        .map_err(|e| ApiError::Crypto(e.to_string()))
}

/// Opens a provider's sealed document.
fn open(api: &Api, sealed: &SealedDocument) -> Result<SecretDoc, ApiError> {
    let bytes = api
        .config
        .kek
        .open(
            &seal_context(&sealed.zone_id, &sealed.id),
            &sealed.nonce,
            &sealed.ciphertext,
            &sealed.dek_id,
        )
        .map_err(|e| ApiError::Crypto(e.to_string()))?;
    let doc: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|_not_json| {
        ApiError::Crypto(format!(
            "sealed provider document {} is not a JSON object",
            sealed.id
        ))
    })?;
    Ok(doc
        .into_iter()
        .map(|(k, v)| (k, Zeroizing::new(v)))
        .collect())
}

/// `GET …/providers`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    super::zone_page(api, zone, &req.page()?, providers::list).await
}

/// `POST …/providers`.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreateProvider = req.json()?;
    let kind = parse_kind(&body.kind)?;
    let (name, identifier) = naming(body.name, body.identifier)?;
    let Split { public, secrets } = split(body.config_json.unwrap_or_default().0)?;
    let secrets: SecretDoc = secrets
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    check_public(kind, &public)?;
    check_submitted_secrets(kind, secrets.keys())?;
    let keys: BTreeSet<String> = secrets.keys().cloned().collect();
    check_required_secrets(kind, &public, &keys)?;
    let keys: Vec<String> = keys.into_iter().collect();

    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if providers::identifier_taken(&mut tx, &identifier, None).await? {
        return Err(identifier_conflict().into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let secret_id = if secrets.is_empty() {
        None
    } else {
        let secret_id = uuid::Uuid::now_v7().to_string();
        let sealed = seal(api, zone_id.as_str(), &secret_id, &secrets)?;
        providers::insert_secret(
            &mut tx,
            &NewSealedDocument {
                id: &secret_id,
                zone_id: zone_id.as_str(),
                provider_id: &id,
                nonce: &sealed.nonce,
                ciphertext: &sealed.ciphertext,
                dek_id: sealed.dek_id.as_str(),
            },
            &req.principal.id,
        )
        .await?;
        Some(secret_id)
    };
    let row = unique_or(
        providers::insert(
            &mut tx,
            &id,
            zone_id.as_str(),
            &identifier,
            &ProviderState {
                name: &name,
                kind,
                config_json: &public,
                secret_config_keys: &keys,
                secret_id: secret_id.as_deref(),
            },
            &req.principal.id,
        )
        .await,
        identifier_conflict,
    )?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "provider",
            &id,
            201,
            json!({
                "name": name,
                "identifier": identifier,
                "kind": kind,
                "config_json": public,
                "secret_config_keys": keys,
            }),
        ),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::Json(201, to_value(&row)?))
}

/// `GET …/providers/{id}`.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    super::zone_row(api, zone, "provider", async |c| providers::get(c, id).await).await
}

/// The sealed document after a change: `Some(doc)` to write (possibly empty: drop the row),
/// `None` when the stored one stays as it is.
async fn next_document(
    api: &Api,
    tx: &mut control_store::zone::ZoneTx,
    row: &ProviderRow,
    submitted: BTreeMap<String, Option<Zeroizing<String>>>,
    keys: &BTreeSet<String>,
) -> Result<Option<SecretDoc>, ApiError> {
    let old_keys: BTreeSet<String> = row.secret_config_keys.iter().cloned().collect();
    let new_values = submitted.values().any(Option::is_some);
    if !new_values && *keys == old_keys {
        return Ok(None);
    }
    let mut doc = SecretDoc::new();
    let kept: Vec<&String> = keys
        .iter()
        .filter(|k| !submitted.get(*k).is_some_and(Option::is_some))
        .collect();
    if !kept.is_empty() {
        let broken = || {
            ApiError::Internal(format!(
                "provider {} lists sealed keys but its document is missing",
                row.id
            ))
        };
        let secret_id = row.secret_id.as_deref().ok_or_else(broken)?;
        let sealed = providers::load_secret(tx, secret_id)
            .await?
            .ok_or_else(broken)?;
        let mut old = open(api, &sealed)?;
        for key in kept {
            let value = old.remove(key).ok_or_else(broken)?;
            doc.insert(key.clone(), value);
        }
    }
    for (key, value) in submitted {
        if let Some(value) = value
            && keys.contains(&key)
        {
            doc.insert(key, value);
        }
    }
    Ok(Some(doc))
}

/// `PATCH …/providers/{id} {name?, kind?, config_json?}`.
pub async fn patch(api: &Api, req: &AdminRequest, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let body: PatchProvider = req.json()?;
    let new_kind = body.kind.as_deref().map(parse_kind).transpose()?;
    if let Some(name) = &body.name {
        check_name(name)?;
    }
    let submitted = body.config_json.map(|c| split(c.0)).transpose()?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let row = providers::lock(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("provider"))?;
    let kind = match new_kind {
        Some(kind) => kind,
        None => parse_kind(&row.kind)
            .map_err(|_stored| ApiError::Internal(format!("provider {id} has an unknown kind")))?,
    };
    let (public, secrets) = match submitted {
        Some(Split { public, secrets }) => (public, secrets),
        None => (row.config_json.clone(), BTreeMap::new()),
    };
    check_public(kind, &public)?;
    check_submitted_secrets(
        kind,
        secrets.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k),
    )?;
    let allowed = sealed_keys(kind);
    let mut keys: BTreeSet<String> = row.secret_config_keys.iter().cloned().collect();
    for (key, value) in &secrets {
        if value.is_some() {
            keys.insert(key.clone());
        } else {
            keys.remove(key);
        }
    }
    keys.retain(|k| allowed.contains(&k.as_str()));
    check_required_secrets(kind, &public, &keys)?;
    let changed: Vec<String> = secrets.keys().cloned().collect();

    let mut secret_id = row.secret_id.clone();
    let mut drop_secret = None;
    if let Some(doc) = next_document(api, &mut tx, &row, secrets, &keys).await? {
        if doc.is_empty() {
            drop_secret = secret_id.take();
        } else {
            let target = secret_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let sealed = seal(api, zone_id.as_str(), &target, &doc)?;
            let new_doc = NewSealedDocument {
                id: &target,
                zone_id: zone_id.as_str(),
                provider_id: id,
                nonce: &sealed.nonce,
                ciphertext: &sealed.ciphertext,
                dek_id: sealed.dek_id.as_str(),
            };
            if secret_id.is_some() {
                if !providers::replace_secret(&mut tx, &new_doc, &req.principal.id).await? {
                    return Err(ApiError::Internal(format!(
                        "provider {id}'s sealed document vanished"
                    )));
                }
            } else {
                providers::insert_secret(&mut tx, &new_doc, &req.principal.id).await?;
                secret_id = Some(target);
            }
        }
    }
    let keys: Vec<String> = keys.into_iter().collect();
    let name = body.name.clone().unwrap_or_else(|| row.name.clone());
    let updated = providers::update(
        &mut tx,
        id,
        &ProviderState {
            name: &name,
            kind,
            config_json: &public,
            secret_config_keys: &keys,
            secret_id: secret_id.as_deref(),
        },
        &req.principal.id,
    )
    .await?
    .ok_or_else(|| Problem::not_found("provider"))?;
    if let Some(old) = drop_secret {
        providers::delete_secret(&mut tx, &old).await?;
    }
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "provider",
            id,
            200,
            json!({
                "name": body.name,
                "kind": body.kind.as_ref().map(|_| kind),
                "config_json": public,
                "secret_config_keys": keys,
                "secret_keys_changed": changed,
            }),
        ),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::Json(200, to_value(&updated)?))
}

/// `DELETE …/providers/{id}`: archives it and destroys its sealed document; 409
/// `provider_in_use` while a live resource uses it.
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let row = providers::lock(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("provider"))?;
    if providers::in_use(&mut tx, id).await? {
        return Err(Problem::new(
            409,
            "provider_in_use",
            "a live resource uses this provider; rebind or delete it first",
        )
        .into());
    }
    if !providers::archive(&mut tx, id, &req.principal.id).await? {
        return Err(Problem::not_found("provider").into());
    }
    if let Some(secret_id) = &row.secret_id {
        providers::delete_secret(&mut tx, secret_id).await?;
    }
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "provider", id, 204, json!({})),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::NoContent)
}

const NOT_FOUND: (u16, &str) = (404, "provider_not_found");
const BAD_CONFIG: (u16, &str) = (400, "invalid_provider_config");
const BAD_KIND: (u16, &str) = (400, "invalid_provider_kind");
const SECRET_REQUIRED: (u16, &str) = (400, "provider_secret_required");

/// The area's operations (`POST …/{id}/test` and `POST …/discovery` are not served).
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/providers",
        op: "providers.list",
        summary: "List providers",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<ProviderRow>),
        query: &[],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/providers",
        op: "providers.create",
        summary: "Create a provider; secret keys of config_json are sealed, never returned",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreateProvider>),
        answer: Answer::Json(201, schema_of::<ProviderRow>),
        query: &[],
        refusals: &[
            (400, "invalid_identifier"),
            BAD_KIND,
            BAD_CONFIG,
            SECRET_REQUIRED,
            (404, "zone_not_found"),
            (409, "provider_identifier_conflict"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/providers/{provider_id}",
        op: "providers.get",
        summary: "Read a provider (sealed keys by name only)",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<ProviderRow>),
        query: &[],
        refusals: &[NOT_FOUND],
    },
    Route {
        method: Method::PATCH,
        path: "/zones/{zone_id}/providers/{provider_id}",
        op: "providers.patch",
        summary: "Change a provider; sealed keys a config_json omits are kept",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<PatchProvider>),
        answer: Answer::Json(200, schema_of::<ProviderRow>),
        query: &[],
        refusals: &[BAD_KIND, BAD_CONFIG, SECRET_REQUIRED, NOT_FOUND],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/providers/{provider_id}",
        op: "providers.delete",
        summary: "Archive a provider and destroy its sealed secrets",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[NOT_FOUND, (409, "provider_in_use")],
    },
];

/// Runs operation `op` with its path parameters.
pub async fn handle(
    api: &Api,
    req: &AdminRequest,
    op: &str,
    p: &[&str],
) -> Result<Reply, ApiError> {
    match (op, p) {
        ("providers.list", [z]) => list(api, req, z).await,
        ("providers.create", [z]) => create(api, req, z).await,
        ("providers.get", [z, id]) => get(api, z, id).await,
        ("providers.patch", [z, id]) => patch(api, req, z, id).await,
        ("providers.delete", [z, id]) => delete(api, req, z, id).await,
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn code(result: Result<(), Problem>) -> String {
        result
            .err()
            .map(|p| p.code.into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn public_configs_are_checked_per_kind() {
        let cases = [
            ("none", json!({}), ""),
            ("none", json!({"forward_caracal_identity": true}), ""),
            (
                "none",
                json!({"header_name": "X-Key"}),
                "invalid_provider_config",
            ),
            ("api_key", json!({"header_name": "X-Api-Key"}), ""),
            ("api_key", json!({}), "invalid_provider_config"),
            (
                "api_key",
                json!({"header_name": "Host"}),
                "invalid_provider_config",
            ),
            (
                "api_key",
                json!({"header_name": "X-Caracal-Key"}),
                "invalid_provider_config",
            ),
            (
                "api_key",
                json!({"header_name": "bad header"}),
                "invalid_provider_config",
            ),
            (
                "api_key",
                json!({"auth_location": "query", "query_param_name": "key"}),
                "",
            ),
            (
                "api_key",
                json!({"auth_location": "query", "query_param_name": "k y"}),
                "invalid_provider_config",
            ),
            (
                "api_key",
                json!({"auth_location": "query", "query_param_name": "k", "auth_scheme": "Token"}),
                "invalid_provider_config",
            ),
            (
                "api_key",
                json!({"header_name": "Authorization", "auth_scheme": "9x"}),
                "invalid_provider_config",
            ),
            (
                "api_key",
                json!({"header_name": "X-K", "allowed_token_hosts": ["API.example.com"]}),
                "invalid_provider_config",
            ),
            (
                "api_key",
                json!({"header_name": "X-K", "allowed_token_hosts": ["api.example.com"]}),
                "",
            ),
            ("http_basic", json!({"username": "svc"}), ""),
            (
                "http_basic",
                json!({"username": "a:b"}),
                "invalid_provider_config",
            ),
            ("http_basic", json!({}), "invalid_provider_config"),
            (
                "oauth2_client_credentials",
                json!({"token_endpoint": "https://idp.example/token", "client_id": "c", "allowed_token_hosts": ["idp.example"]}),
                "",
            ),
            (
                "oauth2_client_credentials",
                json!({"token_endpoint": "http://idp.example/token", "client_id": "c", "allowed_token_hosts": ["idp.example"]}),
                "invalid_provider_config",
            ),
            (
                "oauth2_client_credentials",
                json!({"token_endpoint": "https://idp.example/token", "client_id": "c", "allowed_token_hosts": ["other.example"]}),
                "invalid_provider_config",
            ),
            (
                "oauth2_client_credentials",
                json!({"token_endpoint": "https://idp.example/token", "client_id": "c", "allowed_token_hosts": ["idp.example"], "token_params": {"grant_type": "x"}}),
                "invalid_provider_config",
            ),
            (
                "oauth2_authorization_code",
                json!({"anything": "goes", "token_endpoint": "https://idp/t"}),
                "",
            ),
            (
                "oauth2_authorization_code",
                json!({"refresh_token_value": "x"}),
                "invalid_provider_config",
            ),
        ];
        for (kind, value, want) in cases {
            assert_eq!(
                code(check_public(kind, &config(value.clone()))),
                want,
                "{kind} {value}"
            );
        }
    }

    #[test]
    fn secrets_are_split_out_and_required_per_kind() {
        let Split { public, secrets } = split(config(
            json!({"header_name": "X-K", "api_key": "sk-1", "token": null}),
        ))
        .unwrap();
        assert_eq!(public, config(json!({"header_name": "X-K"})));
        assert_eq!(secrets.len(), 2);
        assert!(split(config(json!({"api_key": 5}))).is_err());
        assert!(split(config(json!({"API_KEY": "x"}))).is_err());
        assert!(split(config(json!({"api_key": ""}))).is_err());
        let none = BTreeSet::new();
        let api_key: BTreeSet<String> = ["api_key".to_owned()].into();
        assert_eq!(
            code(check_required_secrets("api_key", &Map::new(), &none)),
            "provider_secret_required"
        );
        assert_eq!(
            code(check_required_secrets("api_key", &Map::new(), &api_key)),
            ""
        );
        let public_client = config(json!({"client_auth_method": "none"}));
        assert_eq!(
            code(check_required_secrets(
                "oauth2_client_credentials",
                &public_client,
                &none
            )),
            ""
        );
        let jwt = config(json!({"grant_type": "jwt_bearer"}));
        assert_eq!(
            code(check_required_secrets(
                "oauth2_client_credentials",
                &jwt,
                &none
            )),
            "provider_secret_required"
        );
        let keys = ["api_key".to_owned()];
        assert_eq!(
            code(check_submitted_secrets("bearer_token", keys.iter())),
            "invalid_provider_config"
        );
    }

    #[test]
    fn identifiers_follow_the_client_pattern() {
        assert_eq!(slug("My CRM  v2!", "provider"), "my-crm-v2");
        assert_eq!(slug("***", "provider"), "provider");
        assert!(valid_provider_identifier("provider://echo-1"));
        for bad in [
            "provider://",
            "provider://Echo",
            "provider://a--b",
            "resource://x",
            "provider://a-",
        ] {
            assert!(!valid_provider_identifier(bad), "{bad}");
        }
        let (name, identifier) = naming(None, Some("provider://x".to_owned())).unwrap();
        assert_eq!(
            (name.as_str(), identifier.as_str()),
            ("provider://x", "provider://x")
        );
        assert!(naming(None, None).is_err());
    }

    #[test]
    fn config_debug_names_keys_only() {
        let doc = ConfigDocument(config(json!({"api_key": "sk-secret-value"})));
        let text = format!("{doc:?}");
        assert!(
            text.contains("api_key") && !text.contains("sk-secret-value"),
            "{text}"
        );
    }
}
