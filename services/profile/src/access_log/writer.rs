//! The access log's writer: one task records whatever reads are waiting in one go (group
//! commit), committed to the table, or, on a SQLite file, appended to the store's journal and
//! chained into the table every 100 ms (see `store::journal`). A read's data is returned only
//! after its entry is durable: if the log cannot be written, the read fails.

use crate::model::AccessDraft;
use crate::observe::ProfileMetrics;
use crate::store::ProfileStore;
use consentgate_runtime::Tracing;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// The most entries committed in one transaction.
const MAX_BATCH: usize = 512;

/// How often journaled entries are chained into the log (where the store journals).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

struct Pending {
    draft: AccessDraft,
    done: oneshot::Sender<Result<(), String>>,
}

/// The group-committing writer. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Pending>,
}

impl AccessLog {
    /// Starts the writer task over `store`, timing its commits and flushes into `metrics`; each
    /// flush is a root span of `tracing` (no request is its parent: reads that wait for it show
    /// the wait inside their own `access_log.append` span).
    pub fn start(
        store: Arc<dyn ProfileStore>,
        metrics: Arc<ProfileMetrics>,
        tracing: Tracing,
    ) -> AccessLog {
        let (queue, mut incoming) = mpsc::channel::<Pending>(8192);
        let waiting = queue.downgrade();
        metrics.queue_depth(move || {
            waiting
                .upgrade()
                .map_or(0, |q| q.max_capacity() - q.capacity())
        });
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    next = incoming.recv() => match next {
                        Some(first) => first,
                        None => break,
                    },
                    // The flush runs here, between groups of reads, not in a task of its own:
                    // run concurrently, it slowed every read that overlapped it (GetProfile p99
                    // ~2.9x the health floor instead of ~1.7x on 2 cores, BENCHMARKS.md);
                    // inline, a few reads wait for it once per interval.
                    _ = flush.tick() => {
                        let started = Instant::now();
                        let flushed = tracing
                            .in_root_span("consentgate.profile.access_log.flush", store.flush_access())
                            .await;
                        metrics.flushed(started.elapsed(), flushed.is_ok());
                        if let Err(e) = flushed {
                            tracing::error!(error = %e.log_safe(), "chaining the access journal failed; retrying");
                        }
                        continue;
                    }
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let drafts: Vec<AccessDraft> = batch.iter().map(|p| p.draft.clone()).collect();
                let started = Instant::now();
                let outcome = store.append_access(&drafts).await.map_err(|e| e.log_safe());
                metrics.appended(started.elapsed(), outcome.is_ok());
                if let Err(why) = &outcome {
                    tracing::error!(error = %why, entries = batch.len(), "access log write failed; the reads fail");
                }
                for p in batch {
                    let _ = p.done.send(outcome.clone());
                }
            }
        });
        AccessLog { queue }
    }

    /// Records one read durably; returns once its entry is committed or journaled.
    pub async fn record(&self, draft: AccessDraft) -> Result<(), String> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(Pending { draft, done })
            .await
            .map_err(|_| "the access log writer stopped".to_owned())?;
        committed
            .await
            .map_err(|_| "the access log writer stopped".to_owned())?
    }
}
