//! In-process breakdown of the Check hot path (no sockets): the same engine the server runs,
//! called directly on one thread, to show where a Check's time goes — cache lookup, decision,
//! protobuf conversion and encoding, the whole handler — and how large the answers are.

use crate::workload::{Rng, Subjects, random_batch, random_check};
use consentgate_consent::convert::decision_pb;
use consentgate_consent::engine::{CheckQuery, Engine};
use consentgate_consent::grpc::ConsentApi;
use consentgate_consent::model::SubjectKey;
use consentgate_proto::common::v1::subject_ref::Id;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_server::ConsentService;
use consentgate_runtime::CallerIdentity;
use prost::Message;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The enforcer the benchmark checks as.
pub const CALLER: &str = "recommendation-service";

/// One measured step.
pub struct Step {
    /// What was timed.
    pub what: &'static str,
    /// Mean nanoseconds per operation.
    pub ns_per_op: f64,
}

/// The breakdown.
pub struct Breakdown {
    /// Timed steps, in hot-path order.
    pub steps: Vec<Step>,
    /// Mean encoded size of a Check answer (bytes).
    pub check_response_bytes: f64,
    /// Of which the `explanation` trace (bytes).
    pub explanation_bytes: f64,
    /// Encoded size of one BatchCheck answer of 1,000 × 3 (bytes).
    pub batch_response_bytes: usize,
    /// Store loads while timing (should be 0: every lookup a cache hit).
    pub store_loads: u64,
    /// Sizes in bytes of the futures a Check creates: (`ConsentApi::check`, `Engine::check`,
    /// `Engine::state`). Every poll works on, and every move copies, the whole state machine,
    /// which includes the cold store-load path.
    pub future_bytes: (usize, usize, usize),
}

fn query_of(request: &pb::CheckRequest) -> CheckQuery {
    let subject = match request.subject.as_ref().and_then(|s| s.id.as_ref()) {
        Some(Id::DeviceId(d)) => SubjectKey::Device(d.clone()),
        Some(Id::SubjectId(s)) => SubjectKey::Subject(s.clone()),
        None => SubjectKey::Subject(String::new()),
    };
    CheckQuery {
        subject,
        purpose: request.purpose.clone(),
        categories: request.data_categories.clone(),
        channel: request.channel.clone(),
        jurisdiction: String::new(),
        gpc: false,
        at_least_as_fresh: 0,
        explain: request.include_explanation,
    }
}

/// Times `op`: `n / 10` untimed calls, then 5 rounds of `n / 5` calls; the mean ns per call of
/// the fastest round (the one least disturbed by other work on the machine).
async fn time_async<F, Fut>(n: usize, mut op: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..n / 10 {
        op(i).await;
    }
    let per_round = (n / 5).max(1);
    let mut best = f64::INFINITY;
    for round in 0..5 {
        let start = Instant::now();
        for i in 0..per_round {
            op(round * per_round + i).await;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / per_round as f64);
    }
    best
}

/// Re-reads every subject so that its cache entry is fresh (entries have a time-to-live), and
/// tells how many loads the timed steps caused besides.
struct Fresh<'a> {
    engine: &'a Engine,
    subjects: &'a Subjects,
    timed_loads: u64,
    mark: u64,
}

impl Fresh<'_> {
    async fn before_step(&mut self) -> anyhow::Result<()> {
        // `reload` bypasses the cache: every entry is re-inserted, with a full time-to-live.
        for i in 0..self.subjects.count() {
            self.engine
                .reload(&SubjectKey::Subject(self.subjects.id(i)))
                .await?;
        }
        self.mark = self.engine.store_loads();
        Ok(())
    }

    fn after_step(&mut self) {
        self.timed_loads += self.engine.store_loads() - self.mark;
    }
}

/// Measures the hot path with `iterations` calls per step over random seeded subjects.
pub async fn measure(
    engine: &Arc<Engine>,
    subjects: &Subjects,
    seed: u64,
    iterations: usize,
) -> anyhow::Result<Breakdown> {
    let mut rng = Rng::new(seed ^ 0xB4EA_4D0E);
    let requests: Vec<pb::CheckRequest> = (0..4096)
        .map(|_| random_check(subjects, &mut rng))
        .collect();
    let queries: Vec<CheckQuery> = requests.iter().map(query_of).collect();
    let identity = Arc::new(CallerIdentity {
        name: CALLER.to_owned(),
        roles: vec!["enforcer".to_owned()],
    });
    let api = ConsentApi::new(
        engine.clone(),
        std::sync::Arc::new(consentgate_consent::observe::ConsentMetrics::new(
            &consentgate_runtime::Metrics::disabled(),
        )),
    );
    let q = |i: usize| &queries[i % queries.len()];
    let mut fresh = Fresh {
        engine,
        subjects,
        timed_loads: 0,
        mark: 0,
    };
    let mut steps = Vec::new();

    fresh.before_step().await?;
    let ns = time_async(iterations, |i| {
        let query = q(i);
        async move {
            black_box(engine.validate_check(query).is_ok());
        }
    })
    .await;
    fresh.after_step();
    steps.push(Step {
        what: "Engine::validate_check (rule 1: purpose, categories, jurisdiction exist)",
        ns_per_op: ns,
    });

    fresh.before_step().await?;
    let ns = time_async(iterations, |i| {
        let query = q(i);
        async move {
            black_box(engine.state(&query.subject, 0).await.is_ok());
        }
    })
    .await;
    fresh.after_step();
    steps.push(Step {
        what: "Engine::state, cache hit (moka future cache get)",
        ns_per_op: ns,
    });

    // A miss: `reload` bypasses the cache, so the state is read from the store.
    let misses = (iterations / 100).clamp(50, 1000);
    let cpu_before = crate::cpu::caller_and_store_ns();
    let loads_before_misses = engine.store_loads();
    let ns = time_async(misses, |i| {
        let query = q(i);
        async move {
            black_box(engine.reload(&query.subject).await.is_ok());
        }
    })
    .await;
    let miss_cpu_ns = match (cpu_before, crate::cpu::caller_and_store_ns()) {
        (Some(a), Some(b)) => {
            let loads = (engine.store_loads() - loads_before_misses).max(1);
            Some((b - a) as f64 / loads as f64)
        }
        _ => None,
    };
    steps.push(Step {
        what: "Engine::state, cache miss (store load_subject + to_state + cache insert)",
        ns_per_op: ns,
    });
    if let Some(cpu) = miss_cpu_ns {
        steps.push(Step {
            what: "… CPU per cache miss (this thread + SQLite worker threads)",
            ns_per_op: cpu,
        });
    }

    fresh.before_step().await?;
    let mut states = Vec::with_capacity(queries.len());
    for query in &queries {
        states.push(engine.state(&query.subject, 0).await?);
    }
    let ns = time_async(iterations, |i| {
        let (query, state) = (q(i), &states[i % states.len()]);
        async move {
            black_box(engine.decide(CALLER, query, &state.state).is_ok());
        }
    })
    .await;
    fresh.after_step();
    steps.push(Step {
        what: "Engine::decide (policy decision function and personalization ladder; no trace, as Check builds it by default)",
        ns_per_op: ns,
    });

    fresh.before_step().await?;
    let ns = time_async(iterations, |i| {
        let query = q(i);
        async move {
            black_box(engine.check(CALLER, query).await.is_ok());
        }
    })
    .await;
    fresh.after_step();
    steps.push(Step {
        what: "Engine::check (state + decide), cache hit",
        ns_per_op: ns,
    });

    let decisions: Vec<_> = queries
        .iter()
        .zip(&states)
        .map(|(query, state)| engine.decide(CALLER, query, &state.state))
        .collect::<Result<_, _>>()?;
    let ns = time_async(iterations, |i| {
        let d = &decisions[i % decisions.len()];
        async move {
            black_box(decision_pb(d, false));
        }
    })
    .await;
    steps.push(Step {
        what: "decision_pb (Decision → CheckResponse)",
        ns_per_op: ns,
    });

    let ns = time_async(iterations, |i| {
        let d = &decisions[i % decisions.len()];
        async move {
            black_box(decision_pb(d, false).encode_to_vec());
        }
    })
    .await;
    steps.push(Step {
        what: "decision_pb + prost encode",
        ns_per_op: ns,
    });

    fresh.before_step().await?;
    let ns = time_async(iterations, |i| {
        let request = requests[i % requests.len()].clone();
        let (api, identity) = (&api, identity.clone());
        async move {
            let mut request = tonic::Request::new(request);
            request.extensions_mut().insert(identity);
            black_box(api.check(request).await.is_ok());
        }
    })
    .await;
    fresh.after_step();
    steps.push(Step {
        what: "ConsentApi::check, whole handler without transport (validation, engine, conversion)",
        ns_per_op: ns,
    });

    // What the answer costs the caller: decoding it, with and without the explanation trace.
    // The same decisions with the trace and allow details built, as `include_explanation` asks.
    let explained: Vec<_> = queries
        .iter()
        .zip(&states)
        .map(|(query, state)| {
            let mut query = query.clone();
            query.explain = true;
            engine.decide(CALLER, &query, &state.state)
        })
        .collect::<Result<_, _>>()?;
    let encoded: Vec<Vec<u8>> = explained
        .iter()
        .map(|d| decision_pb(d, true).encode_to_vec())
        .collect();
    let trimmed: Vec<Vec<u8>> = decisions
        .iter()
        .map(|d| {
            let mut response = decision_pb(d, false);
            response.explanation.clear();
            response.encode_to_vec()
        })
        .collect();
    for (what, bytes) in [
        (
            "Caller side: prost decode of a CheckResponse with `include_explanation`",
            &encoded,
        ),
        (
            "Caller side: prost decode of the default CheckResponse (no explanation)",
            &trimmed,
        ),
    ] {
        let ns = time_async(iterations, |i| {
            let b = &bytes[i % bytes.len()];
            async move {
                black_box(pb::CheckResponse::decode(b.as_slice()).is_ok());
            }
        })
        .await;
        steps.push(Step {
            what,
            ns_per_op: ns,
        });
    }

    let batch = random_batch(subjects, &mut rng);
    let batch_iterations = (iterations / 1000).max(5);
    fresh.before_step().await?;
    let ns = time_async(batch_iterations, |_| {
        let request = batch.clone();
        let (api, identity) = (&api, identity.clone());
        async move {
            let mut request = tonic::Request::new(request);
            request.extensions_mut().insert(identity);
            black_box(api.batch_check(request).await.is_ok());
        }
    })
    .await;
    fresh.after_step();
    steps.push(Step {
        what: "ConsentApi::batch_check, 1,000 × 3, whole handler without transport (per call)",
        ns_per_op: ns,
    });

    let sizes: Vec<(usize, usize)> = explained
        .iter()
        .map(|d| {
            let mut response = decision_pb(d, true);
            let full = response.encoded_len();
            response.explanation.clear();
            (full, full - response.encoded_len())
        })
        .collect();
    let n = sizes.len() as f64;
    let mut request = tonic::Request::new(batch.clone());
    request.extensions_mut().insert(identity.clone());
    let batch_response_bytes = api
        .batch_check(request)
        .await
        .map(|r| r.into_inner().encoded_len())
        .unwrap_or(0);
    let future_bytes = {
        let mut request = tonic::Request::new(requests[0].clone());
        request.extensions_mut().insert(identity.clone());
        let handler = api.check(request);
        let check = engine.check(CALLER, &queries[0]);
        let state = engine.state(&queries[0].subject, 0);
        (
            std::mem::size_of_val(&*handler),
            std::mem::size_of_val(&check),
            std::mem::size_of_val(&state),
        )
    };
    Ok(Breakdown {
        steps,
        future_bytes,
        check_response_bytes: sizes.iter().map(|s| s.0 as f64).sum::<f64>() / n,
        explanation_bytes: sizes.iter().map(|s| s.1 as f64).sum::<f64>() / n,
        batch_response_bytes,
        store_loads: fresh.timed_loads,
    })
}

/// Formats nanoseconds for the report.
pub fn format_ns(ns: f64) -> String {
    let d = Duration::from_nanos(ns as u64);
    if d >= Duration::from_millis(1) {
        format!("{:.2} ms", ns / 1e6)
    } else if d >= Duration::from_micros(10) {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} µs", ns / 1e3)
    }
}
