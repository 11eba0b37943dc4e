//! CPU accounting per phase from `/proc` (Linux): on-CPU time of the server's threads (its Tokio
//! workers and the SQLite worker threads) and of the generator's (what a caller pays, e.g. for a
//! TLS handshake), and how busy the rest of the machine was — so a row
//! can say what a request costs the server and whether other processes were competing.

use std::time::Duration;

/// A point-in-time reading.
#[derive(Clone, Copy, Default)]
pub struct Snapshot {
    /// On-CPU nanoseconds of the server's threads (`consent-server*`, `sqlx-sqlite*`).
    server_ns: u64,
    /// Nanoseconds the server's threads waited for a CPU (run queue).
    server_wait_ns: u64,
    /// On-CPU nanoseconds of the generator's threads (`loadgen*`).
    generator_ns: u64,
    /// Busy ticks of the whole machine (`/proc/stat`).
    machine_busy: u64,
    /// All ticks of the whole machine.
    machine_total: u64,
    /// Busy ticks of this process (`/proc/self/stat` utime + stime).
    self_busy: u64,
    /// Whether `/proc` could be read.
    valid: bool,
}

/// CPU use between two snapshots.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    /// On-CPU time of the server's threads.
    pub server: Duration,
    /// Run-queue wait of the server's threads.
    pub server_wait: Duration,
    /// On-CPU time of the generator's threads (the calling side).
    pub generator: Duration,
    /// Share of the machine's CPU capacity used by other processes (0..1).
    pub others: f64,
    /// Whether the numbers are real.
    pub valid: bool,
}

impl Snapshot {
    /// Reads `/proc` now; an invalid snapshot where `/proc` is missing.
    pub fn now() -> Snapshot {
        read().unwrap_or_default()
    }

    /// Usage from `self` to `later`.
    pub fn until(&self, later: &Snapshot) -> Usage {
        if !(self.valid && later.valid) {
            return Usage::default();
        }
        let total = later
            .machine_total
            .saturating_sub(self.machine_total)
            .max(1);
        let busy = later.machine_busy.saturating_sub(self.machine_busy);
        let ours = later.self_busy.saturating_sub(self.self_busy);
        Usage {
            server: Duration::from_nanos(later.server_ns.saturating_sub(self.server_ns)),
            server_wait: Duration::from_nanos(
                later.server_wait_ns.saturating_sub(self.server_wait_ns),
            ),
            generator: Duration::from_nanos(later.generator_ns.saturating_sub(self.generator_ns)),
            others: (busy.saturating_sub(ours) as f64 / total as f64).clamp(0.0, 1.0),
            valid: true,
        }
    }
}

fn read() -> Option<Snapshot> {
    let mut snapshot = Snapshot {
        valid: true,
        ..Snapshot::default()
    };
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let server = comm.starts_with("consent-server") || comm.starts_with("sqlx-sqlite");
        if !server && !comm.starts_with("loadgen") {
            continue;
        }
        // A thread may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let mut fields = stat
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        let on_cpu = fields.next().unwrap_or(0);
        if server {
            snapshot.server_ns += on_cpu;
            snapshot.server_wait_ns += fields.next().unwrap_or(0);
        } else {
            snapshot.generator_ns += on_cpu;
        }
    }
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    snapshot.machine_total = total;
    snapshot.machine_busy = total.saturating_sub(idle);
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &own[own.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    snapshot.self_busy =
        fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(snapshot)
}

/// On-CPU nanoseconds of the calling thread plus the SQLite worker threads: what a store load
/// issued from this thread costs in CPU, wherever sqlx runs it.
pub fn caller_and_store_ns() -> Option<u64> {
    let on_cpu = |path: &std::path::Path| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut total = on_cpu(std::path::Path::new("/proc/thread-self/schedstat"))?;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("sqlx-sqlite") {
            total += on_cpu(&dir.join("schedstat")).unwrap_or(0);
        }
    }
    Some(total)
}
