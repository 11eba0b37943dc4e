//! Open-loop pacing for the generators: request `i` is due at `start + i / rate`, released by a
//! plain thread rather than a Tokio timer. Tokio's timer wheel has 1 ms resolution, so
//! `sleep_until` wakes up to a millisecond late and releases requests in bursts; since latency is
//! measured from the due time (no coordinated omission), that lateness would be charged to the
//! server: about 1 ms on every request of every phase, floor included.

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The due times of `count` requests at `rate` per second from `start`, each sent on the
/// returned channel as `(i, due)` when it falls due (at once when the thread is late, so a late
/// thread shows up as latency, never as a lower rate).
pub fn due_times(
    rate: f64,
    count: usize,
    start: Instant,
) -> mpsc::UnboundedReceiver<(usize, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / rate);
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for i in 0..count {
                let due = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send((i, due)).is_err() {
                    return;
                }
            }
        })
        .expect("the pacing thread starts");
    rx
}
