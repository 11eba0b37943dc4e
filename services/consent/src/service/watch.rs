//! The change stream: replays committed changes after a revision, then follows new ones, with a
//! heartbeat carrying the high water so that a quiet stream still proves it is current.

use super::{Service, ServiceError};
use crate::engine::Engine;
use crate::model::ChangeEvent;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc::Sender;
use tokio_stream::wrappers::ReceiverStream;

/// Changes are read from the store in pages of this many.
const PAGE: u32 = 500;

/// What a change stream carries.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A committed change.
    Change(ChangeEvent),
    /// Nothing new up to `high_water_revision` (sent every heartbeat interval).
    Heartbeat {
        /// Every change at or below it was sent.
        high_water_revision: u64,
        /// When the heartbeat was sent.
        sent_at: OffsetDateTime,
    },
}

/// A change stream: events until the watcher leaves, a store failure or shutdown (the last two
/// end it with an error).
pub type WatchStream = ReceiverStream<Result<WatchEvent, ServiceError>>;

impl Service {
    /// Starts a change stream after `after_revision`, with a heartbeat every `heartbeat`; a
    /// revision the database has not committed is refused before the stream opens
    /// ([`Engine::resumable_after`]).
    pub async fn watch(
        &self,
        after_revision: u64,
        heartbeat: Duration,
    ) -> Result<WatchStream, ServiceError> {
        self.engine.resumable_after(after_revision).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(follow(self.engine.clone(), after_revision, heartbeat, tx));
        Ok(ReceiverStream::new(rx))
    }
}

/// Serves one stream: replays from the store, then follows new commits. The engine wakes it
/// whenever its high water moves (a local write, or another replica's commit that the engine's
/// follower read), and only then does the stream read the store: a quiet stream costs the
/// database nothing. A heartbeat is sent only while the engine's view of the feed is current
/// ([`Engine::feed_current`]): a replica that lost its database falls silent, and the gates
/// following it let their leases run out instead of trusting it.
async fn follow(
    engine: Arc<Engine>,
    mut last: u64,
    interval: Duration,
    tx: Sender<Result<WatchEvent, ServiceError>>,
) {
    let mut woken = engine.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Some(mut high) = replay(&engine, &mut last, &tx).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if !engine.feed_current() {
                    continue;
                }
                let beat = WatchEvent::Heartbeat { high_water_revision: high, sent_at: OffsetDateTime::now_utc() };
                if tx.send(Ok(beat)).await.is_err() {
                    return;
                }
            }
            changed = woken.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(reached) = replay(&engine, &mut last, &tx).await else {
                    return;
                };
                high = high.max(reached);
            }
            _ = tx.closed() => return,
            _ = engine.closed() => {
                let _ = tx.send(Err(ServiceError::ShuttingDown)).await;
                return;
            }
        }
    }
}

/// Sends every change after `last`, page by page, advancing `last`; returns the high water, or
/// `None` when the stream is over (the watcher left, or the store failed and was reported).
async fn replay(
    engine: &Engine,
    last: &mut u64,
    tx: &Sender<Result<WatchEvent, ServiceError>>,
) -> Option<u64> {
    let mut high = *last;
    loop {
        let (events, page_high) = match engine.store().changes_after(*last, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return None;
            }
        };
        let full = events.len() == PAGE as usize;
        for e in events {
            *last = e.revision;
            tx.send(Ok(WatchEvent::Change(e))).await.ok()?;
        }
        high = high.max(page_high).max(*last);
        if !full {
            return Some(high);
        }
    }
}
