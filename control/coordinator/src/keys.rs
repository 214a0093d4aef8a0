//! The zone public keys that verify session mandates: the STS key set of each zone
//! (`GET {CARACAL_STS_URL}/.well-known/jwks.json?zone_id=Z`, wire-contract §2.9), cached for
//! five minutes (the set's `max-age`), fetched again at most every 30 s when a mandate names
//! a `kid` the cached set lacks (a key just rotated in).

use std::{collections::HashMap, sync::Arc, time::Duration};

use control_crypto::PublicKey;
use control_http::jwks::{FetchError, JwksClient};
use tokio::time::Instant;

use crate::error::CoordError;

/// How long a fetched set is used.
const SET_TTL: Duration = Duration::from_secs(300);
/// The least time between two fetches of one zone's set for an unknown `kid`.
const REFETCH_COOLDOWN: Duration = Duration::from_secs(30);

/// One zone's fetched set; `None` when the STS knows no key set for the zone.
#[derive(Debug)]
struct KeySet {
    keys: Option<HashMap<String, PublicKey>>,
    fetched_at: Instant,
}

/// The zone key sets.
pub struct ZoneKeys {
    client: JwksClient,
    base: url::Url,
    sets: moka::future::Cache<String, Arc<KeySet>>,
}

impl ZoneKeys {
    /// Key sets fetched from the STS at `base`.
    #[must_use]
    pub fn new(base: url::Url) -> Self {
        Self {
            client: JwksClient::new(),
            base,
            sets: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(SET_TTL)
                .build(),
        }
    }

    /// The key `kid` of `zone`, or `None` when the zone has no such key (the mandate is then
    /// invalid).
    ///
    /// # Errors
    ///
    /// [`CoordError::KeySet`] when the STS cannot be reached or answers unusably: the
    /// mandate cannot be verified, so the caller fails closed.
    pub async fn key(&self, zone: &str, kid: &str) -> Result<Option<PublicKey>, CoordError> {
        let set = self.set(zone).await?;
        if let Some(key) = set.keys.as_ref().and_then(|keys| keys.get(kid)) {
            return Ok(Some(key.clone()));
        }
        if set.fetched_at.elapsed() < REFETCH_COOLDOWN {
            return Ok(None);
        }
        self.sets.invalidate(zone).await;
        let set = self.set(zone).await?;
        Ok(set.keys.as_ref().and_then(|keys| keys.get(kid)).cloned())
    }

    async fn set(&self, zone: &str) -> Result<Arc<KeySet>, CoordError> {
        self.sets
            .try_get_with(zone.to_owned(), self.fetch(zone))
            .await
            .map_err(|error| CoordError::KeySet(error.to_string()))
    }

    async fn fetch(&self, zone: &str) -> Result<Arc<KeySet>, FetchError> {
        let mut url = self.base.clone();
        let path = format!(
            "{}/.well-known/jwks.json",
            self.base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        url.query_pairs_mut().clear().append_pair("zone_id", zone);
        let keys = match self.client.fetch(&url).await {
            Ok(keys) => Some(keys),
            // No key set for the zone (unknown zone or no key yet): no mandate verifies.
            Err(FetchError::Status(404)) => None,
            Err(error) => {
                tracing::warn!(%zone, %error, "zone key set fetch failed");
                return Err(error);
            }
        };
        Ok(Arc::new(KeySet {
            keys,
            fetched_at: Instant::now(),
        }))
    }
}
