//! The deadline of the call a task serves.
//!
//! A gRPC caller states how long it will wait (`grpc-timeout`); past that moment it has given
//! up, and work done for it is waste at best and, for a write, an outcome nobody hears. The
//! server's edge runs each call's handler [`within`] its deadline; the places where work
//! *starts* ask [`time_left`] first: a store transaction is never begun after the caller's
//! deadline, and a call to another service carries what remains of it ([`budget`]), so the
//! deadline holds end to end.
//!
//! The deadline lives in a task-local: it follows the handler's own future and nothing else.
//! Work a handler hands to a background task (a batching writer, a change feed) is not bound by
//! one caller's deadline, which is what such shared work needs.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as the deadline of the call it serves (`None`: the caller set
/// none, and [`time_left`] always answers `Ok`).
pub async fn within<F: Future>(deadline: Option<Instant>, work: F) -> F::Output {
    match deadline {
        Some(deadline) => DEADLINE.scope(deadline, work).await,
        None => work.await,
    }
}

/// The deadline of the call the current task serves, if it has one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// How long until the current call's deadline (`None`: no deadline; zero once it passed).
pub fn remaining() -> Option<Duration> {
    current().map(|deadline| deadline.saturating_duration_since(Instant::now()))
}

/// `Err` once the current call's deadline has passed: asked before work starts that the caller
/// can no longer be waiting for.
pub fn time_left() -> Result<(), Expired> {
    match current() {
        Some(deadline) if Instant::now() >= deadline => Err(Expired),
        _ => Ok(()),
    }
}

/// The time an outgoing call may take: `limit` (the service's own bound for that call), cut to
/// what remains of the current call's deadline.
pub fn budget(limit: Duration) -> Duration {
    match remaining() {
        Some(left) => left.min(limit),
        None => limit,
    }
}

/// The caller's deadline passed before the work started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the caller's deadline passed before the work started")
    }
}

impl std::error::Error for Expired {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_sees_its_own_deadline_and_nothing_outside_it() {
        assert_eq!(current(), None);
        assert_eq!(time_left(), Ok(()));
        assert_eq!(budget(Duration::from_secs(2)), Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_millis(500);
        within(Some(deadline), async {
            assert_eq!(current(), Some(deadline));
            assert_eq!(budget(Duration::from_secs(2)), Duration::from_millis(500));
            assert_eq!(
                budget(Duration::from_millis(100)),
                Duration::from_millis(100)
            );
            assert_eq!(time_left(), Ok(()));
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(time_left(), Err(Expired));
            assert_eq!(remaining(), Some(Duration::ZERO));
        })
        .await;
        assert_eq!(current(), None, "the deadline ends with the work");
    }

    #[tokio::test(start_paused = true)]
    async fn a_spawned_task_is_not_bound_by_the_deadline_of_the_call_that_spawned_it() {
        let deadline = Instant::now();
        let seen_by_spawned = within(Some(deadline), async {
            assert_eq!(time_left(), Err(Expired));
            tokio::spawn(async { current() }).await.expect("joined")
        })
        .await;
        assert_eq!(seen_by_spawned, None);
    }
}
