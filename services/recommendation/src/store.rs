//! The recommendation service's own database (SQLite embedded, PostgreSQL in production): each
//! recommendation's tier and the outcomes recorded against it, so that `GetStats` survives
//! restarts and is shared by replicas. It holds no subject ids and no profile data.
//!
//! Recommendations are written in batches by a background task (a `Recommend` never waits for
//! the database); an outcome is written before `RecordOutcome` answers.

use crate::tier::Tier;
use consentgate_store::{
    Backend, Dialect, Migrations, Postgres, Setup, Sqlite, SqliteSynchronous, to_u64, values,
};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The recommendation schema, for both backends.
static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

/// Statistics, not promises: SQLite migrates under `synchronous=NORMAL` and pooled connections
/// keep SQLite's defaults. Writes come from one batching task, so a few connections serve.
static SETUP: Setup = Setup {
    synchronous: SqliteSynchronous::Normal,
    sqlite_pragmas: &[],
    sqlite_connections: 4,
    postgres_connections: 8,
};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database or its URL failed.
    #[error(transparent)]
    Store(#[from] consentgate_store::Error),
    /// The background writer stopped.
    #[error("the recommendation writer stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Store(e.into())
    }
}

impl StoreError {
    /// Whether the call's deadline passed before the store work began (see
    /// [`consentgate_store::Error::is_deadline_exceeded`]).
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, StoreError::Store(e) if e.is_deadline_exceeded())
    }

    /// A description safe for logs (see [`consentgate_store::Error::log_safe`]).
    pub fn log_safe(&self) -> String {
        match self {
            StoreError::Store(e) => e.log_safe(),
            StoreError::WriterStopped => self.to_string(),
        }
    }
}

/// Counts of one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierTotals {
    /// Recommendations made.
    pub recommendations: u64,
    /// Impressions recorded.
    pub impressions: u64,
    /// Clicks recorded.
    pub clicks: u64,
    /// Conversions recorded.
    pub conversions: u64,
    /// Conversion value, minor units.
    pub value_minor: i64,
}

enum Job {
    Record(String, Tier),
    Flush(oneshot::Sender<()>),
}

/// The store and its batching writer. Cheap to clone.
#[derive(Clone)]
pub struct RecommendationStore {
    pool: AnyPool,
    jobs: mpsc::Sender<Job>,
}

fn tier_of(text: &str) -> Option<Tier> {
    [
        Tier::Profiled,
        Tier::Limited,
        Tier::Segment,
        Tier::Contextual,
        Tier::Popular,
    ]
    .into_iter()
    .find(|t| t.as_str() == text)
}

/// Now, in microseconds since the Unix epoch: how this service stores and compares times.
pub(crate) fn now_micros() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

impl RecommendationStore {
    /// Opens (and migrates) the database a URL names: `sqlite://…` or `postgres://…`.
    pub async fn open(url: &str) -> Result<RecommendationStore, StoreError> {
        match consentgate_store::backend(url).map_err(consentgate_store::Error::from)? {
            Backend::Sqlite => Self::start::<Sqlite>(url).await,
            Backend::Postgres => Self::start::<Postgres>(url).await,
        }
    }

    /// Opens the database on `D` and starts the batching writer.
    async fn start<D: Dialect>(url: &str) -> Result<RecommendationStore, StoreError> {
        let pool = consentgate_store::open::<D>(url, &MIGRATIONS, &SETUP)
            .await?
            .into_pool();
        let (jobs, incoming) = mpsc::channel(65_536);
        tokio::spawn(write_batches::<D>(pool.clone(), incoming));
        Ok(RecommendationStore { pool, jobs })
    }

    /// Queues a recommendation's tier (written within ~50 ms; a full queue drops the record
    /// rather than slowing recommendations, and says so in the log).
    pub fn record(&self, recommendation_id: String, tier: Tier) {
        if self
            .jobs
            .try_send(Job::Record(recommendation_id, tier))
            .is_err()
        {
            tracing::warn!("recommendation statistics queue full; one recommendation not counted");
        }
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, flushed) = oneshot::channel();
        self.jobs
            .send(Job::Flush(done))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        flushed.await.map_err(|_| StoreError::WriterStopped)
    }

    /// The tier a recommendation was made in.
    pub async fn tier(&self, recommendation_id: &str) -> Result<Option<Tier>, StoreError> {
        Ok(
            sqlx::query("SELECT tier FROM recommendations WHERE recommendation_id = $1")
                .bind(recommendation_id)
                .fetch_optional(&self.pool)
                .await?
                .and_then(|r| tier_of(&r.get::<String, _>(0))),
        )
    }

    /// Records an outcome against a recommendation.
    pub async fn record_outcome(
        &self,
        recommendation_id: &str,
        kind: &str,
        value_minor: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO outcomes (recommendation_id, kind, value_minor, recorded_at) VALUES ($1, $2, $3, $4)")
            .bind(recommendation_id)
            .bind(kind)
            .bind(value_minor)
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Totals per tier.
    pub async fn totals(&self) -> Result<Vec<(Tier, TierTotals)>, StoreError> {
        self.flush().await?;
        let mut totals: Vec<(Tier, TierTotals)> = [
            Tier::Profiled,
            Tier::Limited,
            Tier::Segment,
            Tier::Contextual,
            Tier::Popular,
        ]
        .into_iter()
        .map(|t| (t, TierTotals::default()))
        .collect();
        for r in sqlx::query("SELECT tier, COUNT(*) FROM recommendations GROUP BY tier")
            .fetch_all(&self.pool)
            .await?
        {
            if let Some(t) = tier_of(&r.get::<String, _>(0))
                && let Some(entry) = totals.iter_mut().find(|(x, _)| *x == t)
            {
                entry.1.recommendations = to_u64(r.get(1));
            }
        }
        for r in sqlx::query("SELECT r.tier, o.kind, COUNT(*), CAST(COALESCE(SUM(o.value_minor), 0) AS BIGINT) FROM outcomes o JOIN recommendations r ON r.recommendation_id = o.recommendation_id GROUP BY r.tier, o.kind")
            .fetch_all(&self.pool)
            .await?
        {
            let Some(t) = tier_of(&r.get::<String, _>(0)) else {
                continue;
            };
            let Some(entry) = totals.iter_mut().find(|(x, _)| *x == t) else {
                continue;
            };
            let n = to_u64(r.get(2));
            match r.get::<String, _>(1).as_str() {
                "impression" => entry.1.impressions = n,
                "click" => entry.1.clicks = n,
                "conversion" => {
                    entry.1.conversions = n;
                    entry.1.value_minor = r.get(3);
                }
                _ => {}
            }
        }
        Ok(totals)
    }
}

/// Writes queued recommendations in multi-row batches.
async fn write_batches<D: Dialect>(pool: AnyPool, mut incoming: mpsc::Receiver<Job>) {
    while let Some(first) = incoming.recv().await {
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        fn push(
            job: Job,
            records: &mut Vec<(String, Tier)>,
            flushes: &mut Vec<oneshot::Sender<()>>,
        ) {
            match job {
                Job::Record(id, tier) => records.push((id, tier)),
                Job::Flush(done) => flushes.push(done),
            }
        }
        push(first, &mut records, &mut flushes);
        // Gather what arrives within a short window (and whatever is already queued).
        let window = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(window);
        loop {
            tokio::select! {
                _ = &mut window => break,
                job = incoming.recv() => match job {
                    Some(job) => push(job, &mut records, &mut flushes),
                    None => break,
                },
            }
            if records.len() >= 2_000 || !flushes.is_empty() {
                while let Ok(job) = incoming.try_recv() {
                    push(job, &mut records, &mut flushes);
                }
                break;
            }
        }
        let now = now_micros();
        for chunk in records.chunks(300) {
            let rows = values::<D>(chunk.len(), 3);
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO recommendations (recommendation_id, tier, created_at) VALUES {rows}"
            )));
            for (id, tier) in chunk {
                q = q.bind(id.clone()).bind(tier.as_str()).bind(now);
            }
            if let Err(e) = q.execute(&pool).await {
                let code = match &e {
                    sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                    _ => None,
                };
                tracing::error!(code = ?code, rows = chunk.len(), "writing recommendation statistics failed");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
