//! Commit notices between replicas that share a PostgreSQL database (`LISTEN`/`NOTIFY`), so that
//! one replica learns of another's commits within milliseconds instead of at its next poll.
//!
//! The writer sends one notice per committing transaction, *inside* the transaction
//! ([`Dialect::NOTIFY`]): PostgreSQL delivers it on commit and drops it on rollback, so a notice
//! never announces what did not commit. Its payload is the highest revision the transaction
//! wrote; the listener reads what changed from the service's own revision-ordered feed.
//!
//! Notices are not a log: PostgreSQL forgets them for a listener whose connection drops. The
//! listener says so the moment it sees the connection fail ([`Notice::Lost`]: until it listens
//! again, whoever follows it may be missing commits and must not vouch for its view) and again
//! once it listens ([`Notice::Resumed`]: catch up from the feed now). A connection that dies
//! silently (a partition, no reset) goes unnoticed until TCP gives up, which is why followers
//! keep a slow poll as a safety net.
//!
//! [`Dialect::NOTIFY`]: crate::Dialect::NOTIFY

use crate::error::Error;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a replica hears about commits made through the shared database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A transaction committed changes up to this revision (perhaps this replica's own).
    Committed(u64),
    /// The listener's connection failed: until [`Notice::Resumed`], commits by other replicas
    /// may go unheard (the database may be unreachable altogether).
    Lost,
    /// The listener lost its connection and listens again: notices sent meanwhile are lost, so
    /// the follower must catch up from the feed.
    Resumed,
}

/// The receiving end of a listener task; the task ends when this is dropped.
pub type Notices = mpsc::Receiver<Notice>;

/// How long the listener waits before trying again after failing to reconnect.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Starts listening on `channel` of the PostgreSQL database at `url`, on a connection of its
/// own, and returns the notices as they arrive. Fails only if the first connection fails;
/// afterwards it reconnects by itself, reporting each gap as [`Notice::Resumed`].
pub(crate) async fn listen(url: &str, channel: &'static str) -> Result<Notices, Error> {
    let mut listener = connect(url, channel).await?;
    let url = url.to_owned();
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let notice = tokio::select! {
                received = listener.try_recv() => received,
                () = tx.closed() => return,
            };
            let notice = match notice {
                Ok(Some(n)) => match n.payload().parse::<u64>() {
                    Ok(revision) => Notice::Committed(revision),
                    // Not ours (someone else notifying on the channel): a wake-up all the same.
                    Err(_) => Notice::Resumed,
                },
                // Reconnected (sqlx re-listens before answering): something may have been missed.
                Ok(None) => Notice::Resumed,
                Err(e) => {
                    tracing::warn!(error = %Error::from(e).log_safe(), "commit notices: the listener failed; reconnecting");
                    // Said at once, not when listening again (which may take as long as the
                    // outage): the follower stops vouching for its view now.
                    if tx.send(Notice::Lost).await.is_err() {
                        return;
                    }
                    // sqlx keeps a connection it does not know to be dead (a reset, say): start
                    // over on a new listener rather than retry on it.
                    match reconnect(&url, channel, &tx).await {
                        Some(fresh) => listener = fresh,
                        None => return,
                    }
                    tracing::info!("commit notices: listening again");
                    Notice::Resumed
                }
            };
            if tx.send(notice).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// A listener on `channel` over a connection of its own.
async fn connect(url: &str, channel: &'static str) -> Result<PgListener, Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// A new listener, retried every [`RETRY_EVERY`] until one listens; `None` when nobody wants
/// notices any more.
async fn reconnect(
    url: &str,
    channel: &'static str,
    tx: &mpsc::Sender<Notice>,
) -> Option<PgListener> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RETRY_EVERY) => {}
            () = tx.closed() => return None,
        }
        if let Ok(listener) = connect(url, channel).await {
            return Some(listener);
        }
    }
}
