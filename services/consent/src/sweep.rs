//! Forgets idempotency keys past the idempotency window (issue 16): a background task on every
//! replica, a bounded batch at a time, so that the table holds a window of writes, not all of
//! them. A key past the window is already treated as new by the write path whether or not the
//! sweep has reached it; the sweep only reclaims the space. Replicas sweeping the same database
//! at once delete disjoint or already-deleted rows: harmless.

use crate::engine::Engine;
use std::sync::Arc;
use std::time::Duration;

/// How often a replica sweeps: often enough that the table never holds much more than the
/// window, rarely enough to cost nothing measurable.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Oldest keys looked at per statement: short transactions beside the writers.
const BATCH: u32 = 1000;

/// Sweeps at start and every `every` until the process ends.
pub async fn forget_expired_idempotency_keys(engine: Arc<Engine>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut forgotten = 0u64;
        loop {
            match engine.store().sweep_idempotency(BATCH).await {
                Ok(n) => {
                    forgotten += n;
                    // Each call looks at the oldest BATCH keys and forgets the expired ones
                    // among them: done when none of the oldest has expired.
                    if n == 0 {
                        break;
                    }
                    // Let the writers in between batches.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "forgetting expired idempotency keys failed; next try at the next sweep");
                    break;
                }
            }
        }
        if forgotten > 0 {
            tracing::info!(forgotten, "idempotency keys past the window forgotten");
        }
    }
}
