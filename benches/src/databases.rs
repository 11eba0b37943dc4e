//! Where a generator's services keep their data: fresh SQLite files in the run's directory (the
//! embedded default), or fresh PostgreSQL databases on the server `CONSENTGATE_TEST_POSTGRES_URL`
//! names (`--postgres`: the production profile), dropped when the run ends.

use consentgate_consent::testing::{Backend, TestDb};
use std::path::{Path, PathBuf};

/// The databases of one run.
pub struct Databases {
    dir: PathBuf,
    postgres: bool,
    /// Fresh PostgreSQL databases, kept until the run ends (dropping one drops the database).
    made: Vec<TestDb>,
}

impl Databases {
    /// SQLite files under `dir`, or PostgreSQL databases when `postgres`.
    pub fn new(dir: &Path, postgres: bool) -> anyhow::Result<Databases> {
        anyhow::ensure!(
            !postgres || consentgate_consent::testing::backends().contains(&Backend::Postgres),
            "--postgres needs a server: set CONSENTGATE_TEST_POSTGRES_URL"
        );
        Ok(Databases {
            dir: dir.to_owned(),
            postgres,
            made: Vec::new(),
        })
    }

    /// A fresh database's URL for the data `name` names (`consent`, `profile-cached`…).
    pub async fn url(&mut self, name: &str) -> String {
        if self.postgres {
            let db = TestDb::new(Backend::Postgres).await;
            let url = db.url.clone();
            self.made.push(db);
            url
        } else {
            format!("sqlite://{}", self.dir.join(format!("{name}.db")).display())
        }
    }

    /// The report's marker in BENCHMARKS.md: `base`, or `base-postgres`.
    pub fn marker(&self, base: &str) -> String {
        if self.postgres {
            format!("{base}-postgres")
        } else {
            base.to_owned()
        }
    }
}
