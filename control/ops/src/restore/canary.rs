//! Step 6 of `caracal restore verify`: the canary, a governed request end to end through a
//! restored stack (storage-and-events.md §12.4).
//!
//! In order, each step named in the finding when it fails:
//!
//! 1. an echo upstream starts on 127.0.0.1:0 in this process ([`echo`]);
//! 2. through the admin API, with the admin token: a temporary zone `canary-<random>`, an
//!    application with its client secret, a provider of kind `none`, a resource whose
//!    upstream is the echo (one declared operation, `GET /canary`), a grants document
//!    giving the application's sessions labelled `canary` the scope `canary:read`, a policy
//!    set version holding it, its activation, and the wait until every live STS and gateway
//!    reports it loaded;
//! 3. a bootstrap exchange at the STS (`agent:lifecycle`), two task sessions at the
//!    Coordinator and a delegation between them for the resource (what the 1.0 library's
//!    application transport does), a delegated mint for the target session, and
//!    `GET /canary` through the gateway: 2xx, and the echo must have received it;
//! 4. the wait until both `token_exchange` and `gateway_resource_request` events of the
//!    gateway's request id are in the ledger (admin API, audit by request);
//! 5. whatever happened: the sessions are ended and the zone archived.
//!
//! Every call has a deadline and every wait a bound, so the canary ends. A finding names the
//! step, the status and the catalog code of a refusal, and the request id to look up; it
//! never holds the admin token, the client secret or a mandate (each is scrubbed from any
//! text the servers sent back, too).

mod echo;

use std::{collections::BTreeSet, fmt, time::Duration};

use http::Method;
use serde_json::{Value, json};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::{
    doctor::report::{Check, Findings},
    http_probe::{Answer, HttpClient, Outbound, ProbeError},
};
use echo::Echo;

/// Where the restored services are and the credentials the canary provisions with.
#[derive(Debug, Clone)]
pub struct CanaryTarget {
    /// Admin API base URL (`http://host:3000`).
    pub api_url: String,
    /// STS base URL.
    pub sts_url: String,
    /// Coordinator base URL.
    pub coordinator_url: String,
    /// Gateway base URL.
    pub gateway_url: String,
    /// The bootstrap admin token (`CARACAL_ADMIN_TOKEN` of the restored runtime.env).
    pub admin_token: zeroize::Zeroizing<String>,
}

/// The check's id.
const CHECK_ID: &str = "restore.canary";
/// Deadline of every HTTP call.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Bound of the wait for every live STS and gateway to load the canary's policy set.
const ACTIVATION_DEADLINE: Duration = Duration::from_secs(30);
/// Bound of the wait for both audit events in the ledger.
const AUDIT_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two polls of a wait.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Lifetime of the canary's sessions and delegation, should their ending fail.
const SESSION_TTL_SECONDS: u64 = 600;
/// The operation the canary calls, as the gateway and the echo see it.
const CANARY_PATH: &str = "/canary";
/// The resource's one scope.
const CANARY_SCOPE: &str = "canary:read";
/// The session label the grants document turns into a role holding [`CANARY_SCOPE`].
const CANARY_LABEL: &str = "canary";
/// The resource's identifier (unique per zone; the zone is the canary's own).
const CANARY_RESOURCE: &str = "resource://restore-canary";
/// The application's key in the grants document.
const APP_KEY: &str = "canary-agent";
/// The scope of a bootstrap (Coordinator) mandate.
const LIFECYCLE_SCOPE: &str = "agent:lifecycle";
/// The token-exchange grant type.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The audit events the gateway's request must leave.
const AUDIT_EVENTS: [&str; 2] = ["token_exchange", "gateway_resource_request"];
/// The longest piece of server text a finding quotes.
const QUOTE_LIMIT: usize = 200;

/// Runs the canary and reports it as the check `restore.canary`.
pub async fn run(target: &CanaryTarget) -> Check {
    let mut findings = Findings::new(CHECK_ID);
    let echo = match Echo::start(CANARY_PATH).await {
        Ok(echo) => echo,
        Err(error) => {
            findings.fail(
                format!("canary failed at the echo upstream: cannot listen on 127.0.0.1 ({error})"),
                "run restore verify where it may open a loopback port",
            );
            return findings.finish();
        }
    };
    let mut canary = Canary::new(target);
    let outcome = canary.exercise(&echo).await;
    let cleanup = canary.clean_up().await;
    echo.stop().await;
    match outcome {
        Ok(landed) => findings.ok(format!(
            "canary: exchange, session, delegated mint and gateway request passed; both audit events landed in {} ms",
            landed.as_millis()
        )),
        Err(failure) => findings.fail(canary.describe(&failure), failure.step.fix()),
    }
    for (severity, failure) in cleanup {
        let finding = canary.describe(&failure);
        match severity {
            Severity::Warn => findings.warn(finding, failure.step.fix()),
            Severity::Fail => findings.fail(finding, failure.step.fix()),
        }
    }
    findings.finish()
}

/// The canary's steps, as findings name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Zone,
    Application,
    Provider,
    Resource,
    Policy,
    PolicySet,
    Activation,
    Bootstrap,
    SessionStart,
    Delegation,
    DelegatedMint,
    Gateway,
    Audit,
    SessionEnd,
    ZoneArchive,
}

impl Step {
    /// The step's name in a finding.
    fn name(self) -> &'static str {
        match self {
            Step::Zone => "zone creation (admin API)",
            Step::Application => "application creation (admin API)",
            Step::Provider => "provider creation (admin API)",
            Step::Resource => "resource creation (admin API)",
            Step::Policy => "grants policy creation (admin API)",
            Step::PolicySet => "policy set version (admin API)",
            Step::Activation => "policy activation",
            Step::Bootstrap => "bootstrap exchange (STS)",
            Step::SessionStart => "session start (Coordinator)",
            Step::Delegation => "delegation (Coordinator)",
            Step::DelegatedMint => "delegated mint (STS)",
            Step::Gateway => "gateway request",
            Step::Audit => "audit events (ledger)",
            Step::SessionEnd => "session end (Coordinator)",
            Step::ZoneArchive => "zone archive (admin API)",
        }
    }

    /// What to do when the step fails.
    fn fix(self) -> &'static str {
        match self {
            Step::Zone
            | Step::Application
            | Step::Provider
            | Step::Resource
            | Step::Policy
            | Step::PolicySet => {
                "check --api-url and that CARACAL_ADMIN_TOKEN is the restored runtime.env's; look up the request id, when one is named, in the admin API's log"
            }
            Step::Activation => {
                "a live STS or gateway did not load the canary's policy set: read their logs; `caracal doctor` names stale replicas and outbox problems"
            }
            Step::Bootstrap | Step::DelegatedMint => {
                "check --sts-url and look up the request id, when one is named, in the STS log; `caracal doctor` checks ZONE_KEK and the signing keys"
            }
            Step::SessionStart | Step::Delegation => {
                "check --coordinator-url and look up the request id, when one is named, in the Coordinator's log; its CARACAL_STS_URL and ISSUER_URL must reach and name the restored STS"
            }
            Step::Gateway => {
                "check --gateway-url and look up the request id, when one is named, in the gateway's log; the gateway must reach the canary's echo upstream on 127.0.0.1 of this host (run restore verify beside it) and allow loopback upstreams (UPSTREAM_HOST_ALLOWLIST)"
            }
            Step::Audit => {
                "the ledger did not record the gateway's request: check the audit service, the API's way to it (CARACAL_AUDIT_URL and CARACAL_INTERNAL_TOKEN when the roles run apart), and `caracal doctor` (consumer lag, dead letters)"
            }
            Step::SessionEnd => "the canary's sessions end on their own within 10 minutes",
            Step::ZoneArchive => {
                "archive the canary zone named above by hand (DELETE /v1/zones/{id})"
            }
        }
    }
}

/// Why a step failed.
#[derive(Debug)]
enum Cause {
    /// No answer.
    Unreachable { url: String, error: ProbeError },
    /// An answer other than the expected status.
    Refused {
        status: u16,
        code: Option<String>,
        description: Option<String>,
        request_id: Option<String>,
    },
    /// Anything else, said in words.
    Other(String),
}

/// A failed step.
#[derive(Debug)]
struct StepFailure {
    step: Step,
    cause: Cause,
}

impl StepFailure {
    fn other(step: Step, what: impl Into<String>) -> Self {
        Self {
            step,
            cause: Cause::Other(what.into()),
        }
    }

    fn refused(step: Step, answer: &Answer) -> Self {
        Self {
            step,
            cause: Cause::Refused {
                status: answer.status,
                code: answer.error_code(),
                description: answer.error_description(),
                request_id: answer.request_id.clone(),
            },
        }
    }
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "canary failed at the {}: ", self.step.name())?;
        match &self.cause {
            Cause::Unreachable { url, error } => write!(f, "{url}: {error}"),
            Cause::Refused {
                status,
                code,
                description,
                request_id,
            } => {
                write!(f, "answered {status}")?;
                if let Some(code) = code {
                    write!(f, " {}", quote(code))?;
                }
                if let Some(description) = description {
                    write!(f, " ({})", quote(description))?;
                }
                if let Some(request_id) = request_id {
                    write!(f, ", request id {}", quote(request_id))?;
                }
                Ok(())
            }
            Cause::Other(what) => f.write_str(what),
        }
    }
}

/// Server text cut to [`QUOTE_LIMIT`] characters.
fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_LIMIT {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(QUOTE_LIMIT).collect();
    cut.push('…');
    cut
}

/// `text` with every occurrence of each secret replaced by `[redacted]`.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut clean = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        clean = clean.replace(secret, "[redacted]");
    }
    clean
}

/// How bad a clean-up failure is.
#[derive(Debug, Clone, Copy)]
enum Severity {
    Warn,
    Fail,
}

/// What the canary made and holds.
struct Canary<'a> {
    target: &'a CanaryTarget,
    http: HttpClient,
    /// `(id, slug)` of the temporary zone once it exists.
    zone: Option<(String, String)>,
    /// The sessions started, in order.
    sessions: Vec<String>,
    client_secret: Option<Zeroizing<String>>,
    bootstrap: Option<Zeroizing<String>>,
    mandate: Option<Zeroizing<String>>,
}

/// The ids provisioning produced.
struct Provisioned {
    zone: String,
    application: String,
    resource: String,
}

impl<'a> Canary<'a> {
    fn new(target: &'a CanaryTarget) -> Self {
        Self {
            target,
            http: HttpClient::new(),
            zone: None,
            sessions: Vec::new(),
            client_secret: None,
            bootstrap: None,
            mandate: None,
        }
    }

    /// A failure as a finding, with every credential the canary holds scrubbed.
    fn describe(&self, failure: &StepFailure) -> String {
        let mut secrets: Vec<&str> = vec![self.target.admin_token.as_str()];
        for held in [&self.client_secret, &self.bootstrap, &self.mandate]
            .into_iter()
            .flatten()
        {
            secrets.push(held.as_str());
        }
        let mut text = failure.to_string();
        if failure.step == Step::ZoneArchive
            && let Some((id, slug)) = &self.zone
        {
            text.push_str(&format!(" (zone {slug}, id {id})"));
        }
        scrub(&text, &secrets)
    }

    /// Steps 2 to 4; how long the audit events took to land after the gateway answered.
    async fn exercise(&mut self, echo: &Echo) -> Result<Duration, StepFailure> {
        let ids = self.provision(echo).await?;
        let target_session = self.start_sessions(&ids).await?;
        let edge = self.delegate(&ids, &target_session).await?;
        self.mint(&ids, &target_session, &edge).await?;
        let request_id = self.call_gateway(echo).await?;
        let answered = Instant::now();
        self.await_audit(&ids.zone, &request_id).await?;
        Ok(answered.elapsed())
    }

    /// Sends one request; no answer is a failure of `step`.
    async fn send(&self, step: Step, outbound: &Outbound<'_>) -> Result<Answer, StepFailure> {
        self.http
            .send(outbound, CALL_DEADLINE)
            .await
            .map_err(|error| StepFailure {
                step,
                cause: Cause::Unreachable {
                    url: outbound.url.to_owned(),
                    error,
                },
            })
    }

    /// An admin API call with the admin token that must answer `expected`; its JSON body.
    async fn admin(
        &self,
        step: Step,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> Result<Value, StepFailure> {
        let url = format!("{}{path}", self.target.api_url);
        let mut outbound = Outbound::new(method, &url).bearer(self.target.admin_token.as_str());
        if let Some(body) = body {
            outbound = outbound.json(body);
        }
        let answer = self.send(step, &outbound).await?;
        if answer.status != expected {
            return Err(StepFailure::refused(step, &answer));
        }
        if answer.body.is_empty() {
            return Ok(Value::Null);
        }
        answer.json().ok_or_else(|| {
            StepFailure::other(step, format!("answered {expected} without a JSON body"))
        })
    }

    /// Step 2: the zone and everything in it, activated and loaded.
    async fn provision(&mut self, echo: &Echo) -> Result<Provisioned, StepFailure> {
        let slug = format!(
            "canary-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let zone = self
            .admin(
                Step::Zone,
                Method::POST,
                "/v1/zones",
                Some(json!({"name": "Restore canary", "slug": slug})),
                201,
            )
            .await?;
        let zone = id_in(&zone, "id", Step::Zone)?;
        self.zone = Some((zone.clone(), slug));
        let base = format!("/v1/zones/{zone}");

        let app = self
            .admin(
                Step::Application,
                Method::POST,
                &format!("{base}/applications"),
                Some(json!({"name": APP_KEY, "registration_method": "managed", "traits": []})),
                201,
            )
            .await?;
        let application = id_in(&app, "id", Step::Application)?;
        let secret = app
            .get("client_secret")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                StepFailure::other(Step::Application, "the answer has no client_secret")
            })?;
        self.client_secret = Some(Zeroizing::new(secret.to_owned()));
        drop(app);

        let provider = self
            .admin(
                Step::Provider,
                Method::POST,
                &format!("{base}/providers"),
                Some(json!({"name": "canary-none", "kind": "none"})),
                201,
            )
            .await?;
        let provider = id_in(&provider, "id", Step::Provider)?;

        let resource = self
            .admin(
                Step::Resource,
                Method::POST,
                &format!("{base}/resources"),
                Some(json!({
                    "name": "restore-canary",
                    "identifier": CANARY_RESOURCE,
                    "upstream_url": echo.url(),
                    "scopes": [CANARY_SCOPE],
                    "credential_provider_id": provider,
                    "operations": [{"method": "GET", "path": CANARY_PATH, "scope": CANARY_SCOPE}],
                })),
                201,
            )
            .await?;
        let resource = id_in(&resource, "id", Step::Resource)?;

        let policy = self
            .admin(
                Step::Policy,
                Method::POST,
                &format!("{base}/policies"),
                Some(json!({"name": "canary-grants", "content": grants_document(&application)})),
                201,
            )
            .await?;
        let policy_version = id_in(&policy, "version_id", Step::Policy)?;

        let set = self
            .admin(
                Step::PolicySet,
                Method::POST,
                &format!("{base}/policy-sets"),
                Some(json!({"name": "canary"})),
                201,
            )
            .await?;
        let set = id_in(&set, "id", Step::PolicySet)?;
        let version = self
            .admin(
                Step::PolicySet,
                Method::POST,
                &format!("{base}/policy-sets/{set}/versions"),
                Some(json!({"manifest": [{"policy_version_id": policy_version}]})),
                201,
            )
            .await?;
        let version = id_in(&version, "version_id", Step::PolicySet)?;

        let activation = self
            .admin(
                Step::Activation,
                Method::POST,
                &format!("{base}/policy-sets/{set}/activate"),
                Some(json!({"version_id": version})),
                202,
            )
            .await?;
        let outbox = id_in(&activation, "outbox_id", Step::Activation)?;
        self.await_loaded(&format!(
            "{base}/policy-sets/{set}/activation-status?version_id={version}&outbox_id={outbox}"
        ))
        .await?;
        Ok(Provisioned {
            zone,
            application,
            resource,
        })
    }

    /// Polls the activation status until `loaded`; `failed` or the bound is a failure.
    async fn await_loaded(&self, status_path: &str) -> Result<(), StepFailure> {
        let url = format!("{}{status_path}", self.target.api_url);
        let until = Instant::now() + ACTIVATION_DEADLINE;
        loop {
            let outbound =
                Outbound::new(Method::GET, &url).bearer(self.target.admin_token.as_str());
            let answer = self.send(Step::Activation, &outbound).await?;
            let last = match answer.status {
                200 => {
                    let status = answer.json().unwrap_or(Value::Null);
                    match status["propagation_status"].as_str() {
                        Some("loaded") => return Ok(()),
                        Some("failed") => {
                            return Err(StepFailure::other(
                                Step::Activation,
                                format!("propagation failed ({})", replicas(&status)),
                            ));
                        }
                        Some(other) => format!("{} ({})", quote(other), replicas(&status)),
                        None => "an answer without propagation_status".to_owned(),
                    }
                }
                // The API could not read Redis this time: keep polling.
                500.. => StepFailure::refused(Step::Activation, &answer).to_string(),
                _ => return Err(StepFailure::refused(Step::Activation, &answer)),
            };
            if Instant::now() >= until {
                return Err(StepFailure::other(
                    Step::Activation,
                    format!(
                        "not loaded within {} s; last status: {last}",
                        ACTIVATION_DEADLINE.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// One token exchange at the STS with the application's credentials plus `extra`; the
    /// minted token.
    async fn exchange(
        &self,
        step: Step,
        zone: &str,
        application: &str,
        extra: &[(&str, &str)],
    ) -> Result<Zeroizing<String>, StepFailure> {
        let secret = self
            .client_secret
            .as_ref()
            .ok_or_else(|| StepFailure::other(step, "no client secret yet"))?;
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", GRANT_TYPE)
            .append_pair("zone_id", zone)
            .append_pair("application_id", application)
            .append_pair("client_secret", secret.as_str());
        for (name, value) in extra {
            form.append_pair(name, value);
        }
        let form = Zeroizing::new(form.finish());
        let url = format!("{}/oauth/2/token", self.target.sts_url);
        let outbound = Outbound::new(Method::POST, &url).form(form.to_string());
        let answer = self.send(step, &outbound).await?;
        if answer.status != 200 {
            return Err(StepFailure::refused(step, &answer));
        }
        answer
            .json()
            .and_then(|body| body.get("access_token")?.as_str().map(str::to_owned))
            .filter(|token| !token.is_empty())
            .map(Zeroizing::new)
            .ok_or_else(|| StepFailure::other(step, "answered 200 without an access_token"))
    }

    /// Step 3a: the bootstrap mandate and the source and target sessions; the target's id.
    async fn start_sessions(&mut self, ids: &Provisioned) -> Result<String, StepFailure> {
        let bootstrap = self
            .exchange(
                Step::Bootstrap,
                &ids.zone,
                &ids.application,
                &[("scope", LIFECYCLE_SCOPE), ("resource", CANARY_RESOURCE)],
            )
            .await?;
        self.bootstrap = Some(bootstrap);
        let url = format!("{}/zones/{}/agents", self.target.coordinator_url, ids.zone);
        let body = json!({
            "application_id": ids.application,
            "lifecycle": "task",
            "ttl_seconds": SESSION_TTL_SECONDS,
            "labels": [CANARY_LABEL],
        });
        for _ in 0..2 {
            let answer = {
                let bearer = self.bearer(Step::SessionStart)?;
                let outbound = Outbound::new(Method::POST, &url)
                    .bearer(bearer)
                    .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                    .json(body.clone());
                self.send(Step::SessionStart, &outbound).await?
            };
            if answer.status != 201 {
                return Err(StepFailure::refused(Step::SessionStart, &answer));
            }
            let session = id_in(
                &answer.json().unwrap_or(Value::Null),
                "agent_session_id",
                Step::SessionStart,
            )?;
            self.sessions.push(session);
        }
        self.sessions
            .last()
            .cloned()
            .ok_or_else(|| StepFailure::other(Step::SessionStart, "no session started"))
    }

    /// The bootstrap mandate, the Coordinator's bearer.
    fn bearer(&self, step: Step) -> Result<&str, StepFailure> {
        self.bootstrap
            .as_ref()
            .map(|token| token.as_str())
            .ok_or_else(|| StepFailure::other(step, "no bootstrap mandate"))
    }

    /// Step 3b: the source session delegates the canary scope on the resource to the target.
    async fn delegate(&self, ids: &Provisioned, target: &str) -> Result<String, StepFailure> {
        let source = self
            .sessions
            .first()
            .ok_or_else(|| StepFailure::other(Step::Delegation, "no source session"))?;
        let url = format!(
            "{}/zones/{}/delegations",
            self.target.coordinator_url, ids.zone
        );
        let outbound = Outbound::new(Method::POST, &url)
            .bearer(self.bearer(Step::Delegation)?)
            .json(json!({
                "issuer_application_id": ids.application,
                "receiver_application_id": ids.application,
                "source_session_id": source,
                "target_session_id": target,
                "scopes": [CANARY_SCOPE],
                "resource_id": ids.resource,
                "ttl_seconds": SESSION_TTL_SECONDS,
            }));
        let answer = self.send(Step::Delegation, &outbound).await?;
        if answer.status != 201 {
            return Err(StepFailure::refused(Step::Delegation, &answer));
        }
        id_in(
            &answer.json().unwrap_or(Value::Null),
            "delegation_edge_id",
            Step::Delegation,
        )
    }

    /// Step 3c: the single-use gateway mandate of the target session over the edge.
    async fn mint(
        &mut self,
        ids: &Provisioned,
        target: &str,
        edge: &str,
    ) -> Result<(), StepFailure> {
        let mandate = self
            .exchange(
                Step::DelegatedMint,
                &ids.zone,
                &ids.application,
                &[
                    ("scope", CANARY_SCOPE),
                    ("resource", CANARY_RESOURCE),
                    ("agent_session_id", target),
                    ("delegation_edge_id", edge),
                ],
            )
            .await?;
        self.mandate = Some(mandate);
        Ok(())
    }

    /// Step 3d: `GET /canary` through the gateway; the gateway's request id.
    async fn call_gateway(&self, echo: &Echo) -> Result<String, StepFailure> {
        let mandate = self
            .mandate
            .as_ref()
            .ok_or_else(|| StepFailure::other(Step::Gateway, "no mandate"))?;
        let before = echo.hits();
        let url = format!("{}{CANARY_PATH}", self.target.gateway_url);
        let outbound = Outbound::new(Method::GET, &url)
            .bearer(mandate.as_str())
            .header("x-caracal-resource", CANARY_RESOURCE);
        let answer = self.send(Step::Gateway, &outbound).await?;
        if !(200..300).contains(&answer.status) {
            return Err(StepFailure::refused(Step::Gateway, &answer));
        }
        if echo.hits() == before {
            return Err(StepFailure::other(
                Step::Gateway,
                format!(
                    "answered {} but the canary's echo upstream received no GET {CANARY_PATH}",
                    answer.status
                ),
            ));
        }
        answer
            .request_id
            .filter(|id| plain_id(id))
            .ok_or_else(|| StepFailure::other(Step::Gateway, "answered without an X-Request-Id"))
    }

    /// Step 4: polls the audit of `request_id` until both events are there.
    async fn await_audit(&self, zone: &str, request_id: &str) -> Result<(), StepFailure> {
        let url = format!(
            "{}/v1/zones/{zone}/audit/by-request/{request_id}",
            self.target.api_url
        );
        let until = Instant::now() + AUDIT_DEADLINE;
        loop {
            let outbound =
                Outbound::new(Method::GET, &url).bearer(self.target.admin_token.as_str());
            let answer = self.send(Step::Audit, &outbound).await?;
            let last = match answer.status {
                200 => {
                    let items = answer.json().unwrap_or(Value::Null);
                    let seen: BTreeSet<&str> = items
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|item| item["event_type"].as_str())
                        .collect();
                    if AUDIT_EVENTS.iter().all(|wanted| seen.contains(wanted)) {
                        return Ok(());
                    }
                    format!(
                        "events so far: {}",
                        seen.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }
                // Nothing ingested yet.
                404 if answer.error_code().as_deref() == Some("request_not_found") => {
                    "no event yet".to_owned()
                }
                500.. => StepFailure::refused(Step::Audit, &answer).to_string(),
                _ => return Err(StepFailure::refused(Step::Audit, &answer)),
            };
            if Instant::now() >= until {
                return Err(StepFailure::other(
                    Step::Audit,
                    format!(
                        "{} and {} of request {request_id} not both in the ledger within {} s; {last}",
                        AUDIT_EVENTS[0],
                        AUDIT_EVENTS[1],
                        AUDIT_DEADLINE.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Step 5: ends the sessions (latest first) and archives the zone; what went wrong.
    async fn clean_up(&mut self) -> Vec<(Severity, StepFailure)> {
        let mut problems = Vec::new();
        let Some((zone, _)) = self.zone.clone() else {
            return problems;
        };
        if let Some(bearer) = self.bootstrap.as_ref() {
            for session in self.sessions.iter().rev() {
                let url = format!(
                    "{}/zones/{zone}/agents/{session}",
                    self.target.coordinator_url
                );
                let outbound = Outbound::new(Method::DELETE, &url).bearer(bearer.as_str());
                match self.send(Step::SessionEnd, &outbound).await {
                    // 404: ended with its source already.
                    Ok(answer) if answer.status == 204 || answer.status == 404 => {}
                    Ok(answer) => {
                        problems.push((
                            Severity::Warn,
                            StepFailure::refused(Step::SessionEnd, &answer),
                        ));
                    }
                    Err(failure) => problems.push((Severity::Warn, failure)),
                }
            }
        }
        if let Err(failure) = self
            .admin(
                Step::ZoneArchive,
                Method::DELETE,
                &format!("/v1/zones/{zone}"),
                None,
                204,
            )
            .await
        {
            problems.push((Severity::Fail, failure));
        }
        problems
    }
}

/// The `sts` and `gateways` counts of an activation status, e.g. `sts 1/1, gateways 0/2
/// loaded`.
fn replicas(status: &Value) -> String {
    let count = |group: &str, what: &str| status[group][what].as_u64().unwrap_or(0);
    format!(
        "sts {}/{} loaded, gateways {}/{} loaded",
        count("sts", "loaded"),
        count("sts", "live"),
        count("gateways", "loaded"),
        count("gateways", "live"),
    )
}

/// An id a server answered, fit to stand in a URL path (letters, digits, `.`, `_`, `:`,
/// `-`; as the zone id pattern of wire-contract §4.2).
fn plain_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The id member `name` of an answer, checked with [`plain_id`].
fn id_in(body: &Value, name: &str, step: Step) -> Result<String, StepFailure> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|id| plain_id(id))
        .map(str::to_owned)
        .ok_or_else(|| StepFailure::other(step, format!("the answer has no usable {name}")))
}

/// The zone's grants document: the application owns the canary resource, and its sessions
/// labelled [`CANARY_LABEL`] may hold [`CANARY_SCOPE`] on it.
fn grants_document(application: &str) -> String {
    let app_ids = json!({ APP_KEY: application });
    let grants = json!({
        CANARY_RESOURCE: {"application": APP_KEY, "roles": {CANARY_LABEL: [CANARY_SCOPE]}}
    });
    format!(
        "package caracal.authz\nimport rego.v1\n# caracal:data-document\n\napp_ids := {app_ids}\n\ngrants := {grants}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_removes_every_credential_the_canary_holds() {
        let text = "refused cs_secret123 and eyJhbGciOi.x.y twice: cs_secret123";
        let clean = scrub(text, &["cs_secret123", "eyJhbGciOi.x.y", ""]);
        assert_eq!(clean, "refused [redacted] and [redacted] twice: [redacted]");
    }

    #[test]
    fn a_refusal_names_step_status_code_description_and_request_id() {
        let failure = StepFailure {
            step: Step::Gateway,
            cause: Cause::Refused {
                status: 403,
                code: Some("access_denied".to_owned()),
                description: Some("policy denied (no_rule_matched)".to_owned()),
                request_id: Some("0190-abc".to_owned()),
            },
        };
        assert_eq!(
            failure.to_string(),
            "canary failed at the gateway request: answered 403 access_denied (policy denied (no_rule_matched)), request id 0190-abc"
        );
    }

    #[test]
    fn long_server_text_is_cut() {
        let long = "x".repeat(500);
        assert_eq!(quote(&long).chars().count(), QUOTE_LIMIT + 1);
        assert_eq!(quote("short"), "short");
    }

    #[test]
    fn ids_that_could_change_a_path_are_refused() {
        assert!(plain_id("0190a3b2-7c4e-7d1f-9a2b-3c4d5e6f7a8b"));
        assert!(!plain_id("../v1/zones"));
        assert!(!plain_id("a/b"));
        assert!(!plain_id("a?b"));
        assert!(!plain_id(""));
    }

    #[test]
    fn the_grants_document_is_a_data_document_granting_the_label() {
        let document = grants_document("app-1");
        assert!(document.contains("# caracal:data-document"));
        assert!(
            document.contains(r#"app_ids := {"canary-agent":"app-1"}"#),
            "{document}"
        );
        assert!(
            document.contains(r#""roles":{"canary":["canary:read"]}"#),
            "{document}"
        );
    }
}
