//! Commit notices between replicas that share a PostgreSQL database (`LISTEN`/`NOTIFY`), so that
//! one replica learns of another's commits within milliseconds instead of at its next poll.
//!
//! The writer sends one notice per committing transaction, *inside* the transaction
//! ([`Dialect::NOTIFY`]): PostgreSQL delivers it on commit and drops it on rollback, so a notice
//! never announces what did not commit. The consent service's payload is the highest revision the
//! transaction wrote, and its listener reads what changed from its revision-ordered feed
//! ([`Notice`]); the profile service's names the subjects that changed ([`Heard`]).
//!
//! Notices are not a log: PostgreSQL forgets them for a listener whose connection drops. The
//! listener says so the moment it sees the connection fail ([`Notice::Lost`]: until it listens
//! again, whoever follows it may be missing commits and must not vouch for its view) and again
//! once it listens ([`Notice::Resumed`]: catch up now). A connection that dies silently (a partition, no reset)
//! goes unnoticed until TCP gives up, which is why followers keep a safety net (the consent
//! service polls its feed; the profile service beats through the channel to itself).
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

/// What a listener hears, for services whose payloads are not revisions (the profile service
/// announces which subjects changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A notification's payload, as sent.
    Payload(String),
    /// The listener's connection failed: until [`Heard::Resumed`], notifications go unheard.
    Lost,
    /// The listener listens again on a new connection: whatever was sent since [`Heard::Lost`]
    /// is lost, and everything sent from now on will be heard.
    Resumed,
}

/// The receiving end of a payload listener; the task ends when this is dropped.
pub type Payloads = mpsc::Receiver<Heard>;

/// What the listener task reports, before a service's listener turns it into its own type.
enum Event<'a> {
    Payload(&'a str),
    Lost,
    Resumed,
}

/// How long the listener waits before trying again after failing to reconnect.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Starts listening on `channel` of the PostgreSQL database at `url`, on a connection of its
/// own, and returns the notices as they arrive. Fails only if the first connection fails;
/// afterwards it reconnects by itself, reporting each gap as [`Notice::Lost`] when it begins
/// and [`Notice::Resumed`] once it listens again.
pub(crate) async fn listen(url: &str, channel: &'static str) -> Result<Notices, Error> {
    spawn_listener(url, channel, |event| match event {
        Event::Payload(payload) => match payload.parse::<u64>() {
            Ok(revision) => Notice::Committed(revision),
            // Not ours (someone else notifying on the channel): a wake-up all the same.
            Err(_) => Notice::Resumed,
        },
        Event::Lost => Notice::Lost,
        Event::Resumed => Notice::Resumed,
    })
    .await
}

/// Like [`listen`], handing over every payload as sent ([`Heard::Payload`]).
pub(crate) async fn listen_payloads(url: &str, channel: &'static str) -> Result<Payloads, Error> {
    spawn_listener(url, channel, |event| match event {
        Event::Payload(payload) => Heard::Payload(payload.to_owned()),
        Event::Lost => Heard::Lost,
        Event::Resumed => Heard::Resumed,
    })
    .await
}

/// The listener task: what it hears goes through `heard`. A failed connection is reported at
/// once ([`Event::Lost`]: whoever follows stops vouching for its view now, not when listening
/// again, which may take as long as the outage), and [`Event::Resumed`] only once a new
/// connection *listens*, so that nothing sent after it can go unheard.
async fn spawn_listener<T: Send + 'static>(
    url: &str,
    channel: &'static str,
    heard: fn(Event<'_>) -> T,
) -> Result<mpsc::Receiver<T>, Error> {
    let mut listener = connect(url, channel).await?;
    let url = url.to_owned();
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = tx.closed() => return,
            };
            match received {
                Ok(Some(n)) => {
                    if tx.send(heard(Event::Payload(n.payload()))).await.is_err() {
                        return;
                    }
                    continue;
                }
                // sqlx saw the connection close; it would re-listen only inside the next
                // `try_recv`, which waits for a notification, so a gap could not be reported
                // as over when it is: start over on a listener of our own instead.
                Ok(None) => tracing::warn!(
                    channel,
                    "notices: the listener's connection closed; reconnecting"
                ),
                Err(e) => {
                    tracing::warn!(error = %Error::from(e).log_safe(), channel, "notices: the listener failed; reconnecting")
                }
            }
            if tx.send(heard(Event::Lost)).await.is_err() {
                return;
            }
            // sqlx keeps a connection it does not know to be dead (a reset, say): start over on
            // a new listener rather than retry on it.
            match reconnect(&url, channel, &tx).await {
                Some(fresh) => listener = fresh,
                None => return,
            }
            tracing::info!(channel, "notices: listening again");
            if tx.send(heard(Event::Resumed)).await.is_err() {
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
async fn reconnect<T>(
    url: &str,
    channel: &'static str,
    tx: &mpsc::Sender<T>,
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
