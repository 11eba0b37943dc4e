//! Retention: a background task deletes data older than its category's retention period in the
//! policy (docs/architecture.md §4). Attributes age from their last update, events from when they happened,
//! answers from when they were given.

use crate::observe::ProfileMetrics;
use crate::store::{ProfileStore, StoreError};
use consentgate_policy::Policy;
use std::sync::Arc;
use std::time::Duration;

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// Deletes everything past its category's retention as of `now` (µs); how many rows.
pub async fn sweep(store: &dyn ProfileStore, policy: &Policy, now: i64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for (key, category) in &policy.categories {
        if category.retention_days == 0 {
            continue;
        }
        let cutoff = now.saturating_sub(i64::from(category.retention_days) * MICROS_PER_DAY);
        deleted += store.purge_before(key, cutoff).await?;
    }
    Ok(deleted)
}

/// Runs [`sweep`] every `every`, for as long as the process lives.
pub fn spawn(
    store: Arc<dyn ProfileStore>,
    policy: Arc<Policy>,
    every: Duration,
    metrics: Arc<ProfileMetrics>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match sweep(store.as_ref(), &policy, crate::model::now_micros()).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics.retained(n);
                    tracing::info!(rows = n, "retention sweep deleted expired data");
                }
                Err(e) => tracing::error!(error = %e.log_safe(), "retention sweep failed"),
            }
        }
    });
}
