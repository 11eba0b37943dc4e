//! The two ways load is applied. Closed loop: each worker sends its next request when the previous
//! one returns (finds the maximum throughput; latency is measured from the actual send). Open
//! loop: requests are due on a fixed schedule at a target rate whatever the responses do, and
//! latency is measured from each request's *intended* send time, so a stalled server shows up in
//! the tail instead of silently slowing the generator (no coordinated omission).

use crate::cpu::{Snapshot, Usage};
use crate::workload::{BATCH_CATEGORIES, BATCH_CHECKS, Clients, all_allowed};
use consentgate_consent::engine::Engine;
use consentgate_proto::consent::v1 as pb;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Which RPC a phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `grpc.health.v1.Health/Check`: the floor of the stack (transport, HTTP/2, tonic, auth layer).
    Health,
    /// `ConsentService/Check`.
    Check,
    /// `ConsentService/BatchCheck` of 1,000 checks × 3 categories.
    BatchCheck,
}

impl Rpc {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Health => "Health/Check",
            Rpc::Check => "ConsentService/Check",
            Rpc::BatchCheck => "ConsentService/BatchCheck",
        }
    }
}

/// What a phase sends: the RPC and pre-built request pools (built before timing starts).
#[derive(Clone)]
pub struct Workload {
    /// The RPC.
    pub rpc: Rpc,
    /// Check requests, used round-robin with a per-worker offset.
    pub checks: Arc<Vec<pb::CheckRequest>>,
    /// BatchCheck requests.
    pub batches: Arc<Vec<pb::BatchCheckRequest>>,
}

/// The outcome of one call: category decisions answered (0 for health), or why it failed.
pub type CallResult = Result<u64, String>;

impl Workload {
    /// Sends request `i` of the pool (round-robin) over `client` and checks the answer.
    pub async fn call(&self, client: &mut Clients, i: usize) -> CallResult {
        match self.rpc {
            Rpc::Health => client.health().await.map(|()| 0).map_err(|s| s.to_string()),
            Rpc::Check => {
                let request = self.checks[i % self.checks.len()].clone();
                let asked = request.data_categories.len();
                let response = client.check(request).await.map_err(|s| s.to_string())?;
                if all_allowed(&response, asked) {
                    Ok(asked as u64)
                } else {
                    Err(format!("unexpected decision: {response:?}"))
                }
            }
            Rpc::BatchCheck => {
                let request = self.batches[i % self.batches.len()].clone();
                let response = client
                    .batch_check(request)
                    .await
                    .map_err(|s| s.to_string())?;
                let ok = response.results.len() == BATCH_CHECKS
                    && response
                        .results
                        .iter()
                        .all(|r| all_allowed(r, BATCH_CATEGORIES));
                if ok {
                    Ok((BATCH_CHECKS * BATCH_CATEGORIES) as u64)
                } else {
                    Err("unexpected BatchCheck results".to_owned())
                }
            }
        }
    }
}

/// A new latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A duration in whole microseconds, at least 1 (the histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What one measured phase produced.
pub struct PhaseResult {
    /// Row label.
    pub label: String,
    /// The RPC.
    pub rpc: Rpc,
    /// How load was applied, in words.
    pub mode: String,
    /// The in-flight bound (closed loop: workers; open loop: the cap).
    pub in_flight: usize,
    /// HTTP/2 connections used.
    pub connections: usize,
    /// Measurement window.
    pub elapsed: Duration,
    /// Successful requests in the window.
    pub ok: u64,
    /// Failed requests in the window.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Category decisions answered in the window.
    pub decisions: u64,
    /// Latency of successful requests, µs (open loop: from the intended send time).
    pub latency: Histogram<u64>,
    /// Open loop: how late requests actually left vs their intended time, µs (generator lag).
    pub send_lag: Option<Histogram<u64>>,
    /// Open loop: requests never sent because the backlog behind the in-flight cap was full.
    pub dropped: u64,
    /// Store loads (cache misses that read the database) during the window.
    pub store_loads: u64,
    /// The most store loads in any 100 ms of the window (bursts: many entries expiring together).
    pub peak_loads: u64,
    /// CPU use during the window.
    pub cpu: Usage,
}

impl PhaseResult {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Adds another measurement of the same row (an interleaved round) to this one: counts,
    /// windows, CPU and histograms add up, so the row reads as one long window.
    pub fn absorb(&mut self, other: PhaseResult) {
        let (a, b) = (self.elapsed.as_secs_f64(), other.elapsed.as_secs_f64());
        self.cpu = Usage {
            server: self.cpu.server + other.cpu.server,
            server_wait: self.cpu.server_wait + other.cpu.server_wait,
            generator: self.cpu.generator + other.cpu.generator,
            others: if a + b > 0.0 {
                (self.cpu.others * a + other.cpu.others * b) / (a + b)
            } else {
                0.0
            },
            valid: self.cpu.valid && other.cpu.valid,
        };
        self.elapsed += other.elapsed;
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.decisions += other.decisions;
        self.latency
            .add(&other.latency)
            .expect("rows share histogram bounds");
        self.send_lag = match (self.send_lag.take(), other.send_lag) {
            (Some(mut x), Some(y)) => {
                x.add(&y).expect("rows share histogram bounds");
                Some(x)
            }
            (x, y) => x.or(y),
        };
        self.dropped += other.dropped;
        self.store_loads += other.store_loads;
        self.peak_loads = self.peak_loads.max(other.peak_loads);
    }

    /// Category decisions per second.
    pub fn decisions_per_sec(&self) -> f64 {
        self.decisions as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU (Tokio workers + SQLite threads) per successful request, and the time those
    /// threads waited for a CPU per request, µs.
    pub fn server_cpu_per_request_us(&self) -> Option<(f64, f64)> {
        (self.cpu.valid && self.ok > 0).then(|| {
            (
                self.cpu.server.as_secs_f64() * 1e6 / self.ok as f64,
                self.cpu.server_wait.as_secs_f64() * 1e6 / self.ok as f64,
            )
        })
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    decisions: u64,
}

impl Tally {
    fn record(&mut self, result: CallResult) -> bool {
        match result {
            Ok(d) => {
                self.ok += 1;
                self.decisions += d;
                true
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                false
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.decisions += other.decisions;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Watches the measured window until `end`: store loads (total and the most in any 100 ms
/// tick) and CPU use.
async fn observe(engine: &Engine, end: Instant) -> (u64, u64, Usage) {
    let first = engine.store_loads();
    let cpu_before = Snapshot::now();
    let mut last = first;
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(end.into()) => {}
        }
        let now = engine.store_loads();
        peak = peak.max(now - last);
        last = now;
    }
    (last - first, peak, cpu_before.until(&Snapshot::now()))
}

/// Timing of a phase: an unrecorded warm-up, then the measured window.
#[derive(Clone, Copy)]
pub struct Window {
    /// Unrecorded lead-in (connections, allocator and caches settle).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// Closed loop: `workers` tasks, spread over `clients` (one connection each), each sending its
/// next request as soon as the previous one returns. Latency from the actual send.
pub async fn closed_loop(
    label: &str,
    workload: &Workload,
    clients: &[Clients],
    workers: usize,
    window: Window,
    engine: &Engine,
) -> PhaseResult {
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let mut client = clients[w % clients.len()].clone();
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut tally = Tally::default();
            // Spread the workers over the request pool.
            let mut i = w.wrapping_mul(7919);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = workload.call(&mut client, i).await;
                let done = Instant::now();
                i = i.wrapping_add(1);
                if sent >= measure_from && tally.record(result) {
                    latency.saturating_record(micros(done - sent));
                }
            }
            (latency, tally)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let (loads, peak_loads, cpu) = observe(engine, end).await;
    let mut latency = histogram();
    let mut tally = Tally::default();
    for task in tasks {
        let (h, t) = task.await.expect("a load worker panicked");
        latency.add(&h).expect("same histogram bounds");
        tally.merge(t);
    }
    PhaseResult {
        label: label.to_owned(),
        rpc: workload.rpc,
        mode: if workers == 1 {
            "closed loop, sequential".to_owned()
        } else {
            format!("closed loop, {workers} workers")
        },
        in_flight: workers,
        connections: clients.len().min(workers),
        elapsed: window.duration,
        ok: tally.ok,
        errors: tally.errors,
        first_error: tally.first_error,
        decisions: tally.decisions,
        latency,
        send_lag: None,
        dropped: 0,
        store_loads: loads,
        peak_loads,
        cpu,
    }
}

struct OpenState {
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    tally: Tally,
}

/// Open loop at `rate` requests/s, at most `in_flight` outstanding over `clients`. A dispatcher
/// thread releases request `k` at `start + k / rate` whatever has come back; a request that finds
/// the cap reached waits for a slot, and that wait counts in its latency (measured from the
/// intended time). Beyond `max_backlog` waiting requests, further ones are dropped and counted.
#[allow(clippy::too_many_arguments)]
pub async fn open_loop(
    label: &str,
    workload: &Workload,
    clients: &[Clients],
    rate: f64,
    in_flight: usize,
    max_backlog: usize,
    window: Window,
    engine: &Engine,
) -> PhaseResult {
    let handle = tokio::runtime::Handle::current();
    let slots = Arc::new(Semaphore::new(in_flight));
    let pending = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let state = Arc::new(Mutex::new(OpenState {
        latency: histogram(),
        send_lag: histogram(),
        tally: Tally::default(),
    }));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let connections = clients.len();
    let clients: Vec<Clients> = clients.to_vec();
    let dispatcher = {
        let (workload, slots, pending, dropped, state) = (
            workload.clone(),
            slots.clone(),
            pending.clone(),
            dropped.clone(),
            state.clone(),
        );
        // A plain thread, not a Tokio timer: Tokio's timer wheel has 1 ms resolution, which would
        // release requests in 1 ms bursts. The thread sleeps to each due time (or catches up
        // without sleeping when late), and its lateness is measured, not hidden.
        tokio::task::spawn_blocking(move || {
            let mut k: u64 = 0;
            loop {
                let intended = start + interval.mul_f64(k as f64);
                if intended >= end {
                    break;
                }
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                let measured = intended >= measure_from;
                if pending.load(Ordering::Relaxed) >= max_backlog {
                    if measured {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    k += 1;
                    continue;
                }
                pending.fetch_add(1, Ordering::Relaxed);
                let mut client = clients[k as usize % clients.len()].clone();
                let (workload, slots, pending, state) = (
                    workload.clone(),
                    slots.clone(),
                    pending.clone(),
                    state.clone(),
                );
                let i = k as usize;
                handle.spawn(async move {
                    let permit = slots.acquire_owned().await.expect("semaphore never closed");
                    let sent = Instant::now();
                    let result = workload.call(&mut client, i).await;
                    let done = Instant::now();
                    drop(permit);
                    if measured {
                        let mut s = state.lock().expect("state lock");
                        if s.tally.record(result) {
                            s.latency.saturating_record(micros(done - intended));
                            s.send_lag.saturating_record(micros(sent - intended));
                        }
                    }
                    pending.fetch_sub(1, Ordering::Relaxed);
                });
                k += 1;
            }
        })
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let (loads, peak_loads, cpu) = observe(engine, end).await;
    dispatcher.await.expect("the dispatcher panicked");
    while pending.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = std::mem::replace(
        &mut *state.lock().expect("state lock"),
        OpenState {
            latency: histogram(),
            send_lag: histogram(),
            tally: Tally::default(),
        },
    );
    PhaseResult {
        label: label.to_owned(),
        rpc: workload.rpc,
        mode: format!("open loop, {rate:.0} req/s"),
        in_flight,
        connections,
        elapsed: window.duration,
        ok: s.tally.ok,
        errors: s.tally.errors,
        first_error: s.tally.first_error,
        decisions: s.tally.decisions,
        latency: s.latency,
        send_lag: Some(s.send_lag),
        dropped: dropped.load(Ordering::Relaxed),
        store_loads: loads,
        peak_loads,
        cpu,
    }
}
