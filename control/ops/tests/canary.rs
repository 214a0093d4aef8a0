//! The restore canary (`caracal restore verify`, step 6) through real roles: an admin API,
//! an STS, a Coordinator, a gateway and the audit ledger on one migrated database and one
//! Redis database (the wiring of the conformance group `e2e`).
//!
//! A whole stack passes, leaving its temporary zone archived and its sessions ended. A
//! gateway that cannot be reached, or one that refuses, fails the check naming the gateway
//! step (with the status and code of a refusal), and the zone is archived all the same. A
//! refused admin token fails at the first step with its status and code. No finding holds a
//! token or a secret.

use std::time::Duration;

use control_ops::{
    doctor::{Check, Status},
    restore::canary::{self, CanaryTarget},
};
use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN},
    audit::{AuditFixture, INTERNAL_TOKEN, RedisLease},
    coordinator::CoordinatorFixture,
    gateway::GatewayFixture,
    sts::StsFixture,
};

/// Held by each test for its whole run: a stack is five roles on two shared cores.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every role on one database and one (leased) Redis database.
struct Stack {
    db: TestDb,
    audit: AuditFixture,
    sts: StsFixture,
    api: ApiFixture,
    coordinator: CoordinatorFixture,
    gateway: GatewayFixture,
}

impl Stack {
    async fn start() -> anyhow::Result<Self> {
        let db = TestDb::migrated().await?;
        // The ledger's Redis database (leased, flushed) is every role's.
        let audit = AuditFixture::start_on(&db, RedisLease::acquire().await?, &[]).await?;
        let redis = audit.redis.url.clone();
        let audit_url = format!("http://{}", audit.addr);
        let sts = StsFixture::start_with(&db, &[("REDIS_URL", redis.as_str())]).await?;
        let streams_key = sts.streams_key_hex.clone();
        let audit_key = sts.audit_key_hex.clone();
        let api = ApiFixture::start_with(
            &db,
            &[
                ("REDIS_URL", redis.as_str()),
                ("STREAMS_HMAC_KEY", streams_key.as_str()),
                ("CARACAL_AUDIT_URL", audit_url.as_str()),
                ("CARACAL_INTERNAL_TOKEN", INTERNAL_TOKEN),
                ("CARACAL_API_AUTH_FAILURES_PER_MINUTE", "1000000"),
            ],
        )
        .await?;
        let shared = [
            ("ISSUER_URL", sts.issuer.as_str()),
            ("REDIS_URL", redis.as_str()),
            ("STREAMS_HMAC_KEY", streams_key.as_str()),
            ("AUDIT_HMAC_KEY", audit_key.as_str()),
        ];
        let coordinator = CoordinatorFixture::start_with(&db, sts.addr, &shared).await?;
        let gateway = GatewayFixture::start_with(&db, &shared).await?;
        Ok(Self {
            db,
            audit,
            sts,
            api,
            coordinator,
            gateway,
        })
    }

    /// The canary's target with the bootstrap admin token.
    fn target(&self) -> CanaryTarget {
        CanaryTarget {
            api_url: format!("http://{}", self.api.addr),
            sts_url: format!("http://{}", self.sts.addr),
            coordinator_url: format!("http://{}", self.coordinator.addr),
            gateway_url: format!("http://{}", self.gateway.addr),
            admin_token: zeroize::Zeroizing::new(BOOTSTRAP_TOKEN.to_owned()),
        }
    }

    /// `(slug, archived)` of every zone the canary made.
    async fn canary_zones(&self) -> anyhow::Result<Vec<(String, bool)>> {
        let mut conn = self.db.admin().await?;
        Ok(sqlx::query_as::<_, (String, bool)>(
            "SELECT slug, archived_at IS NOT NULL FROM caracal.zones \
             WHERE slug LIKE 'canary-%' ORDER BY created_at",
        )
        .fetch_all(&mut conn)
        .await?)
    }

    /// Statuses of every agent session (the canary's are the only ones).
    async fn session_statuses(&self) -> anyhow::Result<Vec<String>> {
        let mut conn = self.db.admin().await?;
        Ok(
            sqlx::query_scalar("SELECT status FROM caracal.agent_sessions ORDER BY started_at")
                .fetch_all(&mut conn)
                .await?,
        )
    }

    /// The live zones the admin API lists.
    async fn listed_zone_slugs(&self) -> anyhow::Result<Vec<String>> {
        let answer = self.api.admin("GET", "/v1/zones", None).await?;
        anyhow::ensure!(answer.status == 200, "GET /v1/zones: {}", answer.status);
        Ok(answer.json()?["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|zone| zone["slug"].as_str().map(str::to_owned))
            .collect())
    }

    async fn stop(self) {
        self.gateway.stop().await;
        self.coordinator.stop().await;
        self.sts.stop().await;
        self.api.stop().await;
        drop(self.audit.stop().await);
        drop(self.db);
    }
}

/// No finding or fix may carry the admin token, a client secret (`cs_…`) or a JWT.
fn assert_no_secret(check: &Check) {
    let text = format!(
        "{} {}",
        check.finding,
        check.fix.as_deref().unwrap_or_default()
    );
    assert!(!text.contains(BOOTSTRAP_TOKEN), "{text}");
    assert!(!text.contains("cs_"), "{text}");
    assert!(!text.contains("eyJ"), "{text}");
}

/// A port nothing listens on.
async fn closed_port() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_passes_through_a_whole_stack_and_archives_its_zone() -> anyhow::Result<()> {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::start().await?;

    let check =
        tokio::time::timeout(Duration::from_secs(120), canary::run(&stack.target())).await?;

    let zones = stack.canary_zones().await?;
    let sessions = stack.session_statuses().await?;
    let listed = stack.listed_zone_slugs().await?;
    stack.stop().await;

    assert_eq!(check.id, "restore.canary");
    assert_eq!(check.status, Status::Ok, "{check:?}");
    assert!(
        check.finding.starts_with(
            "canary: exchange, session, delegated mint and gateway request passed; both audit events landed in "
        ) && check.finding.ends_with(" ms"),
        "{}",
        check.finding
    );
    assert_eq!(check.fix, None);
    assert_eq!(zones.len(), 1, "one temporary zone: {zones:?}");
    assert!(zones[0].1, "the temporary zone was not archived: {zones:?}");
    assert!(
        !listed.iter().any(|slug| slug.starts_with("canary-")),
        "the admin API still lists a canary zone: {listed:?}"
    );
    assert_eq!(
        sessions.len(),
        2,
        "a source and a target session: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|status| status == "terminated"),
        "the canary's sessions were left running: {sessions:?}"
    );
    assert_no_secret(&check);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_fails_the_canary_is_named_and_the_zone_is_archived_all_the_same()
-> anyhow::Result<()> {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let stack = Stack::start().await?;

    // 1. Nothing listens at the gateway URL.
    let mut unreachable = stack.target();
    unreachable.gateway_url = format!("http://127.0.0.1:{}", closed_port().await?);
    let gone = tokio::time::timeout(Duration::from_secs(120), canary::run(&unreachable)).await?;

    // 2. Something answers there, but it is no gateway: the STS refuses `GET /canary`.
    let mut refusing = stack.target();
    refusing.gateway_url = format!("http://{}", stack.sts.addr);
    let refused = tokio::time::timeout(Duration::from_secs(120), canary::run(&refusing)).await?;

    // 3. The admin API refuses the token: nothing is created.
    let mut wrong_token = stack.target();
    wrong_token.admin_token =
        zeroize::Zeroizing::new("not-the-admin-token-0123456789abcdef".to_owned());
    let denied = tokio::time::timeout(Duration::from_secs(60), canary::run(&wrong_token)).await?;

    let zones = stack.canary_zones().await?;
    let sessions = stack.session_statuses().await?;
    stack.stop().await;

    assert_eq!(gone.status, Status::Fail, "{gone:?}");
    assert!(
        gone.finding
            .starts_with("canary failed at the gateway request: http://127.0.0.1:"),
        "{}",
        gone.finding
    );
    assert!(gone.finding.contains("request failed"), "{}", gone.finding);
    assert!(
        gone.fix
            .as_deref()
            .is_some_and(|fix| fix.contains("gateway")),
        "{gone:?}"
    );

    assert_eq!(refused.status, Status::Fail, "{refused:?}");
    assert!(
        refused
            .finding
            .starts_with("canary failed at the gateway request: answered 4"),
        "{}",
        refused.finding
    );
    assert!(
        refused.finding.contains("request id "),
        "{}",
        refused.finding
    );

    assert_eq!(denied.status, Status::Fail, "{denied:?}");
    assert!(
        denied.finding.starts_with(
            "canary failed at the zone creation (admin API): answered 401 invalid_admin_token"
        ),
        "{}",
        denied.finding
    );
    assert!(
        !denied.finding.contains("not-the-admin-token"),
        "{}",
        denied.finding
    );

    // The two runs that got as far as the gateway made a zone each, and archived it.
    assert_eq!(zones.len(), 2, "{zones:?}");
    assert!(zones.iter().all(|(_, archived)| *archived), "{zones:?}");
    assert_eq!(sessions.len(), 4, "{sessions:?}");
    assert!(
        sessions.iter().all(|status| status == "terminated"),
        "{sessions:?}"
    );
    for check in [&gone, &refused, &denied] {
        assert_no_secret(check);
    }
    Ok(())
}
