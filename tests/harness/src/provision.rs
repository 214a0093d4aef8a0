//! Provisioning through the admin connection (the admin API arrives in issue 4): zones,
//! applications with secrets, providers, resources, policies, agent sessions and edges.

use anyhow::Context as _;
use sqlx::{Connection, PgConnection};

use crate::TestDb;

/// Argon2id parameters cheap enough for tests (the PHC string carries them, so the STS
/// verifies with exactly these).
pub fn cheap_secret_hash(secret: &str) -> anyhow::Result<String> {
    let params = control_crypto::Argon2Params {
        m_kib: 8,
        t: 1,
        p: 1,
    };
    Ok(control_crypto::hash_secret(&params, secret.as_bytes())?)
}

/// A provisioning session on a test database.
pub struct Provision {
    conn: PgConnection,
}

impl Provision {
    /// Opens an admin connection (superuser: row-level security does not apply).
    pub async fn open(db: &TestDb) -> anyhow::Result<Self> {
        Self::from_connection(db.admin().await?).await
    }

    /// Provisions through any superuser connection to a migrated database (the benchmark
    /// creates its own database).
    pub async fn from_connection(mut conn: PgConnection) -> anyhow::Result<Self> {
        sqlx::raw_sql("SET search_path = caracal")
            .execute(&mut conn)
            .await?;
        Ok(Self { conn })
    }

    /// Runs a statement (for the odd fixture the helpers do not cover).
    pub async fn exec(&mut self, sql: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(sql).execute(&mut self.conn).await?;
        Ok(())
    }

    /// The connection.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// A zone.
    pub async fn zone(&mut self, id: &str) -> anyhow::Result<()> {
        let slug: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        sqlx::query("INSERT INTO zones (id, name, slug) VALUES ($1, $1, $2)")
            .bind(id)
            .bind(slug)
            .execute(&mut self.conn)
            .await
            .context("zone")?;
        Ok(())
    }

    /// A managed application with a client secret (cheaply hashed) and optional traits.
    pub async fn application(
        &mut self,
        zone: &str,
        id: &str,
        secret: &str,
        traits: &[&str],
    ) -> anyhow::Result<()> {
        self.application_with_hash(zone, id, &cheap_secret_hash(secret)?, traits)
            .await
    }

    /// A managed application whose secret hash (Argon2id PHC) the caller computed.
    pub async fn application_with_hash(
        &mut self,
        zone: &str,
        id: &str,
        secret_hash: &str,
        traits: &[&str],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO applications (id, zone_id, name, client_secret_hash, traits) VALUES ($1, $2, $1, $3, $4)",
        )
        .bind(id)
        .bind(zone)
        .bind(secret_hash)
        .bind(traits.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
        .execute(&mut self.conn)
        .await
        .context("application")?;
        Ok(())
    }

    /// A provider of kind `none`.
    pub async fn provider_none(&mut self, zone: &str, id: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO providers (id, zone_id, name, identifier, provider_kind) VALUES ($1, $2, $1, $3, 'none')")
            .bind(id)
            .bind(zone)
            .bind(format!("provider://{id}"))
            .execute(&mut self.conn)
            .await
            .context("provider")?;
        Ok(())
    }

    /// A provider of `kind` with the public `config` and, when `secrets` is given, its
    /// secret document (a JSON object of strings) sealed under
    /// [`crate::gateway::KEK_HEX`] in a `provider_secret_config` row, as the admin API
    /// stores it.
    pub async fn provider_with_secret(
        &mut self,
        zone: &str,
        id: &str,
        kind: &str,
        config: &serde_json::Value,
        secrets: Option<&serde_json::Value>,
    ) -> anyhow::Result<()> {
        self.provider_sealed_under(crate::gateway::KEK_HEX, zone, id, kind, config, secrets)
            .await
    }

    /// [`Provision::provider_with_secret`] sealing under another `ZONE_KEK` (hex): a
    /// document a gateway with the fixtures' KEK cannot open.
    pub async fn provider_sealed_under(
        &mut self,
        kek_hex: &str,
        zone: &str,
        id: &str,
        kind: &str,
        config: &serde_json::Value,
        secrets: Option<&serde_json::Value>,
    ) -> anyhow::Result<()> {
        let mut secret_id = None;
        let mut secret_keys = Vec::new();
        if let Some(doc) = secrets {
            let row_id = format!("{id}-secret");
            let kek = control_crypto::KekRing::from_lookup(|name: &str| {
                (name == "ZONE_KEK").then(|| kek_hex.to_owned())
            })?;
            let plaintext = serde_json::to_vec(doc)?;
            let sealed = kek.seal(
                &control_crypto::SealContext {
                    table: "secrets",
                    column: "ciphertext",
                    zone_id: zone,
                    row_id: &row_id,
                },
                &plaintext,
            )?;
            sqlx::query(
                "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, version, status) \
                 VALUES ($1, $2, $3, 'provider_secret_config', 'password', $4, $5, $6, 1, 'active')",
            )
            .bind(&row_id)
            .bind(zone)
            .bind(id)
            .bind(&sealed.ciphertext)
            .bind(sealed.nonce.as_slice())
            .bind(sealed.dek_id.as_str())
            .execute(&mut self.conn)
            .await
            .context("provider secret")?;
            secret_keys = doc
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            secret_id = Some(row_id);
        }
        sqlx::query(
            "INSERT INTO providers (id, zone_id, name, identifier, provider_kind, config_json, secret_config_keys, secret_id) \
             VALUES ($1, $2, $1, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(zone)
        .bind(format!("provider://{id}"))
        .bind(kind)
        .bind(config)
        .bind(secret_keys)
        .bind(secret_id)
        .execute(&mut self.conn)
        .await
        .context("provider")?;
        Ok(())
    }

    /// A resource.
    pub async fn resource(
        &mut self,
        zone: &str,
        id: &str,
        identifier: &str,
        scopes: &[&str],
        upstream_url: Option<&str>,
        provider: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO resources (id, zone_id, name, identifier, upstream_url, credential_provider_id, scopes) \
             VALUES ($1, $2, $1, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(zone)
        .bind(identifier)
        .bind(upstream_url)
        .bind(provider)
        .bind(scopes.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .execute(&mut self.conn)
        .await
        .context("resource")?;
        Ok(())
    }

    /// Creates a policy, one version with `content`, a set with one version, and activates
    /// it. Returns the policy-set version id.
    pub async fn activate_policy(
        &mut self,
        zone: &str,
        name: &str,
        content: &str,
    ) -> anyhow::Result<String> {
        let policy = format!("{zone}-{name}-policy");
        let version = format!("{zone}-{name}-pv");
        let set = format!("{zone}-{name}-set");
        let set_version = format!("{zone}-{name}-psv");
        let mut tx = self.conn.begin().await?;
        sqlx::query("INSERT INTO policies (id, zone_id, name) VALUES ($1, $2, $3)")
            .bind(&policy)
            .bind(zone)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO policy_versions (id, zone_id, policy_id, version, content, content_sha256, schema_version) \
             VALUES ($1, $2, $3, 1, $4, $5, $6)",
        )
        .bind(&version)
        .bind(zone)
        .bind(&policy)
        .bind(content)
        .bind(control_policy::content_sha256(content))
        .bind(control_policy::SCHEMA_VERSION)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO policy_sets (id, zone_id, name) VALUES ($1, $2, $3)")
            .bind(&set)
            .bind(zone)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let manifest = serde_json::json!([{"policy_version_id": version}]);
        sqlx::query(
            "INSERT INTO policy_set_versions (id, zone_id, policy_set_id, version, manifest_json, manifest_sha256, schema_version) \
             VALUES ($1, $2, $3, 1, $4, $5, $6)",
        )
        .bind(&set_version)
        .bind(zone)
        .bind(&set)
        .bind(&manifest)
        .bind(control_policy::manifest_sha256(&[version.as_str()]))
        .bind(control_policy::SCHEMA_VERSION)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE policy_set_bindings SET active_version_id = NULL WHERE zone_id = $1")
            .bind(zone)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO policy_set_bindings (zone_id, policy_set_id, active_version_id) VALUES ($1, $2, $3)")
            .bind(zone)
            .bind(&set)
            .bind(&set_version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(set_version)
    }

    /// An active authority record (`sessions` row) of `kind` (`user` or `application`) for
    /// `subject`, expiring in an hour.
    pub async fn authority_record(
        &mut self,
        zone: &str,
        id: &str,
        kind: &str,
        subject: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id, zone_id, session_type, subject_id, root_id, status, expires_at) \
             VALUES ($1, $2, $3, $4, $1, 'active', now() + interval '1 hour')",
        )
        .bind(id)
        .bind(zone)
        .bind(kind)
        .bind(subject)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// An active `task` agent session (TTL one hour) with labels.
    pub async fn agent_session(
        &mut self,
        zone: &str,
        id: &str,
        application: &str,
        labels: &[&str],
    ) -> anyhow::Result<()> {
        self.agent_session_with_ttl(zone, id, application, labels, 3600)
            .await
    }

    /// An active `task` agent session with labels and a TTL in seconds.
    pub async fn agent_session_with_ttl(
        &mut self,
        zone: &str,
        id: &str,
        application: &str,
        labels: &[&str],
        ttl_seconds: i32,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO agent_sessions (id, zone_id, application_id, lifecycle, ttl_seconds, labels) \
             VALUES ($1, $2, $3, 'task', $4, $5)",
        )
        .bind(id)
        .bind(zone)
        .bind(application)
        .bind(ttl_seconds)
        .bind(labels.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>())
        .execute(&mut self.conn)
        .await
        .context("agent session")?;
        Ok(())
    }

    /// An active delegation edge expiring in `expires_in_seconds`.
    #[allow(
        clippy::too_many_arguments,
        reason = "a fixture mirrors the row's columns"
    )]
    pub async fn edge(
        &mut self,
        zone: &str,
        id: &str,
        (source, issuer): (&str, &str),
        (target, receiver): (&str, &str),
        scopes: &[&str],
        constraints: serde_json::Value,
        expires_in_seconds: i64,
        parent_edge: Option<&str>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO delegation_edges (id, zone_id, source_session_id, target_session_id, issuer_application_id, \
                                           receiver_application_id, scopes, constraints_json, expires_at, parent_edge_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), $10)",
        )
        .bind(id)
        .bind(zone)
        .bind(source)
        .bind(target)
        .bind(issuer)
        .bind(receiver)
        .bind(scopes.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .bind(constraints)
        .bind(expires_in_seconds as f64)
        .bind(parent_edge)
        .execute(&mut self.conn)
        .await
        .context("edge")?;
        sqlx::query(
            "INSERT INTO delegation_graph_epochs (zone_id, epoch) VALUES ($1, 1) \
             ON CONFLICT (zone_id) DO UPDATE SET epoch = delegation_graph_epochs.epoch + 1",
        )
        .bind(zone)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }
}
