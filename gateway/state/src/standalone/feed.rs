//! The tasks that keep a standalone gateway current: the periodic JWKS refresh, and the
//! authority view's freshness, from the revocation streams when Redis is configured or by
//! construction when it is not.

use std::{collections::HashMap, sync::Arc, time::Duration};

use control_events::fanout::{self, FanoutConfig, FanoutStats};
use tokio::{sync::watch, task::JoinHandle};

use super::Standalone;
use crate::{StateHandle, authority::AuthorityView, handle::GATEWAY_STREAMS};

/// How often every `jwks_url` is fetched again (an unknown `kid` also fetches, at most once
/// per 30 s).
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Without a revocation feed the view is marked fresh this often.
const FRESH_MARK_INTERVAL: Duration = Duration::from_secs(1);

/// The revocation streams a standalone gateway reads (the first three of
/// [`GATEWAY_STREAMS`]); the others only wake the Postgres builder.
const REVOCATION_STREAMS: usize = 3;

/// Fetches every `jwks_url` each [`KEY_REFRESH_INTERVAL`] and stores the resulting snapshot.
pub fn spawn_key_refresh(
    standalone: Arc<Standalone>,
    state: Arc<StateHandle>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(KEY_REFRESH_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            standalone.refresh_keys().await;
            state.store(standalone.snapshot());
        }
    })
}

/// Without Redis there is no revocation feed to be stale about: the view is marked fresh
/// now and every second until shutdown.
pub fn spawn_freshness(
    view: Arc<AuthorityView>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    view.mark_polled_now();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(FRESH_MARK_INTERVAL) => view.mark_polled_now(),
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// The counters of the revocation consumers; give them to [`AuthorityView::new`] so that
/// the view is fresh only while the consumers read.
pub fn revocation_stats() -> Vec<Arc<FanoutStats>> {
    (0..REVOCATION_STREAMS)
        .map(|_| Arc::new(FanoutStats::default()))
        .collect()
}

/// Creates the replica's groups on the revocation streams (best effort, bounded), marks
/// the view fresh once (as the Postgres mode's first poll does; nothing published from now
/// on is missed), then spawns one consumer per stream that sets the view's marks.
/// `stats` are the counters the view was built with ([`revocation_stats`]).
pub async fn spawn_revocation_feed(
    view: Arc<AuthorityView>,
    stats: &[Arc<FanoutStats>],
    client: redis::Client,
    template: FanoutConfig,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let configs: Vec<FanoutConfig> = GATEWAY_STREAMS
        .iter()
        .take(REVOCATION_STREAMS)
        .map(|(stream, base)| FanoutConfig {
            stream: (*stream).to_owned(),
            group_base: (*base).to_owned(),
            ..template.clone()
        })
        .collect();
    let conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await;
    match conn {
        Ok(Ok(mut conn)) => {
            for config in &configs {
                if let Err(error) = fanout::ensure_group(&mut conn, config).await {
                    tracing::warn!(stream = %config.stream, %error, "cannot create the consumer group yet; the consumer retries");
                }
            }
        }
        _ => tracing::warn!("Redis is unreachable at start; the revocation consumers retry"),
    }
    view.mark_polled_now();
    configs
        .into_iter()
        .zip(stats.iter())
        .map(|(config, stats)| {
            let view = Arc::clone(&view);
            let stream = config.stream.clone();
            let handler: fanout::Handler = Arc::new(move |fields: HashMap<String, String>| {
                let view = Arc::clone(&view);
                let stream = stream.clone();
                Box::pin(async move {
                    view.apply(&stream, &fields).await;
                    Ok(())
                })
            });
            fanout::spawn(
                client.clone(),
                config,
                handler,
                Arc::clone(stats),
                shutdown.clone(),
            )
        })
        .collect()
}
