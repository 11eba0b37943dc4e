//! The SQL both profile stores share, over `sqlx::Any` with `$N` placeholders; what differs
//! (connection setup, how a write transaction begins, parameter style) is a [`Dialect`] from
//! `consentgate-store`.

use super::held::{self, Changed, Held, RecentEvents, ZeroParty};
use super::journal::{Entry, Journal};
use super::pools::Pools;
use super::{EventQuery, ProfileStore, StoreError};
use crate::access_log::entry as access_log;
use crate::model::{
    AccessDraft, AccessRecord, Answer, AnswerKind, Attribute, Collection, DsarRequest, Event,
    EventField, EventFields, EventKind, Holding, Requester, Source, Table, now_micros,
};
use consentgate_gate::Clearance;
use consentgate_store::{
    Dialect, Tx, begin_serialized, begin_write, placeholders, to_i64, to_u64, values,
};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};
use std::marker::PhantomData;
use std::sync::Arc;

/// Conflicts with INSERT, so other replicas' appends wait until this one commits: taken where
/// `BEGIN` does not already hold off every other writer (PostgreSQL; SQLite's `BEGIN IMMEDIATE`
/// does).
const CHAIN_LOCK: &str = "LOCK TABLE access_log IN SHARE ROW EXCLUSIVE MODE";

/// The most access-log rows in one INSERT statement; bigger batches are several statements in
/// one transaction. With numbered parameters on SQLite, sqlx looked each one up by a scan of the
/// statement's parameter names, so a 300-row statement stalled the process for ~100 ms; SQLite
/// now binds positional parameters (see [`Dialect::NUMBERED_PARAMETERS`]), and the cap keeps
/// statements of a size SQLite's statement cache and PostgreSQL's parameter limit handle well.
const ROWS_PER_INSERT: usize = 32;

/// A profile store over a dialect.
pub struct SqlStore<D> {
    pool: AnyPool,
    /// See [`Pools::log`].
    log_pool: AnyPool,
    /// This process's view of the access log's head `(seq, hash)`, held while appending. `None`
    /// until read; reset whenever another writer (a replica) is found to have moved it.
    head: tokio::sync::Mutex<Option<(u64, String)>>,
    /// Where reads are journaled before they are chained (SQLite files only).
    journal: Option<Journal>,
    /// What this process keeps in memory about subjects (zero-party data, newest events,
    /// pseudonym keys), and whether it may serve it now (see [`super::held`]).
    held: Arc<Held>,
    dialect: PhantomData<D>,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::corrupt(format!("unknown stored {what}"))
}

fn attribute_of(r: &AnyRow) -> Result<Attribute, StoreError> {
    Ok(Attribute {
        name: r.get(0),
        value: r.get(1),
        category: r.get(2),
        source: Source::parse(&r.get::<String, _>(3)).ok_or_else(|| corrupt("source"))?,
        partner: r.get(4),
        collection: Collection {
            purpose: r.get(5),
            notice_version: r.get(6),
        },
        collected_at: r.get(7),
        updated_at: r.get(8),
    })
}

const ATTRIBUTE_COLUMNS: &str =
    "name, value, category, source, partner, purpose, notice_version, collected_at, updated_at";

/// The `events` columns behind each optional field, in the order [`event_of`] reads them after
/// `kind, occurred_at`.
const EVENT_COLUMNS: [(EventField, &str); 8] = [
    (EventField::EventId, "event_id"),
    (EventField::ItemId, "item_id"),
    (EventField::Query, "query"),
    (EventField::Page, "page"),
    (EventField::AmountMinor, "amount_minor"),
    (EventField::Currency, "currency"),
    (EventField::Quantity, "quantity"),
    (EventField::Purpose, "purpose, notice_version"),
];

/// The select list for `fields`: `kind, occurred_at` and the columns of the fields asked for.
fn event_select(fields: EventFields) -> String {
    let mut list = String::from("kind, occurred_at");
    for (field, columns) in EVENT_COLUMNS {
        if fields.has(field) {
            list.push_str(", ");
            list.push_str(columns);
        }
    }
    list
}

/// An event from a row of [`event_select`]`(fields)`; the fields not read are left empty.
fn event_of(r: &AnyRow, fields: EventFields) -> Result<Event, StoreError> {
    let mut event = Event {
        event_id: String::new(),
        kind: EventKind::parse(&r.get::<String, _>(0)).ok_or_else(|| corrupt("event kind"))?,
        occurred_at: r.get(1),
        item_id: String::new(),
        query: String::new(),
        page: String::new(),
        amount_minor: 0,
        currency: String::new(),
        quantity: 0,
        collection: Collection {
            purpose: String::new(),
            notice_version: String::new(),
        },
    };
    let mut column = 2..;
    let mut next = || column.next().unwrap_or(usize::MAX);
    for (field, _) in EVENT_COLUMNS {
        if !fields.has(field) {
            continue;
        }
        match field {
            EventField::EventId => event.event_id = r.get(next()),
            EventField::ItemId => event.item_id = r.get(next()),
            EventField::Query => event.query = r.get(next()),
            EventField::Page => event.page = r.get(next()),
            EventField::AmountMinor => event.amount_minor = r.get(next()),
            EventField::Currency => event.currency = r.get(next()),
            EventField::Quantity => {
                event.quantity = u32::try_from(r.get::<i64, _>(next())).unwrap_or(0);
            }
            EventField::Purpose => {
                event.collection.purpose = r.get(next());
                event.collection.notice_version = r.get(next());
            }
            EventField::Kind | EventField::OccurredAt | EventField::DataCategory => {}
        }
    }
    Ok(event)
}

/// `event` with only what a read of `fields` gives (as [`event_of`] would have read it).
fn project(event: &Event, fields: EventFields) -> Event {
    let text = |field, value: &String| {
        if fields.has(field) {
            value.clone()
        } else {
            String::new()
        }
    };
    Event {
        event_id: text(EventField::EventId, &event.event_id),
        kind: event.kind,
        occurred_at: event.occurred_at,
        item_id: text(EventField::ItemId, &event.item_id),
        query: text(EventField::Query, &event.query),
        page: text(EventField::Page, &event.page),
        amount_minor: if fields.has(EventField::AmountMinor) {
            event.amount_minor
        } else {
            0
        },
        currency: text(EventField::Currency, &event.currency),
        quantity: if fields.has(EventField::Quantity) {
            event.quantity
        } else {
            0
        },
        collection: Collection {
            purpose: text(EventField::Purpose, &event.collection.purpose),
            notice_version: text(EventField::Purpose, &event.collection.notice_version),
        },
    }
}

fn answer_of(r: &AnyRow) -> Result<Answer, StoreError> {
    Ok(Answer {
        answer_id: r.get(0),
        kind: AnswerKind::parse(&r.get::<String, _>(1)).ok_or_else(|| corrupt("answer kind"))?,
        question_id: r.get(2),
        question: r.get(3),
        answer: r.get(4),
        item_id: r.get(5),
        collection: Collection {
            purpose: r.get(6),
            notice_version: r.get(7),
        },
        collected_at: r.get(8),
    })
}

fn access_of(r: &AnyRow) -> AccessRecord {
    AccessRecord {
        seq: to_u64(r.get(0)),
        read_at: r.get(1),
        pseudonym: r.get(2),
        caller: r.get(3),
        enforced_by: r.get(4),
        purpose: r.get(5),
        categories: r.get(6),
        revision: to_u64(r.get(7)),
        operation: r.get(8),
        items: to_u64(r.get(9)),
        prev_hash: r.get(10),
        hash: r.get(11),
    }
}

const ACCESS_COLUMNS: &str = "seq, read_at, pseudonym, caller, enforced_by, purpose, categories, revision, operation, items, prev_hash, hash";

/// The `dsar_requests` columns [`request_of`] reads, in its order.
const REQUEST_COLUMNS: &str =
    "request_id, kind, state, requested_at, completed_at, detail, requested_by, note";

fn request_of(r: &AnyRow) -> DsarRequest {
    DsarRequest {
        request_id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        requested_at: r.get(3),
        completed_at: r.get(4),
        detail: r.get(5),
        requested_by: r.get(6),
        note: r.get(7),
    }
}

/// Inserts a request row; `pseudonym` links it to the subject it is about.
async fn insert_request(
    tx: &mut Tx<'_>,
    request: &DsarRequest,
    idempotency: Option<&str>,
    pseudonym: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO dsar_requests (request_id, kind, idempotency, state, requested_at, completed_at, detail, requested_by, note, pseudonym) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(&request.request_id)
        .bind(&request.kind)
        .bind(idempotency.map(str::to_owned))
        .bind(&request.state)
        .bind(request.requested_at)
        .bind(request.completed_at)
        .bind(&request.detail)
        .bind(&request.requested_by)
        .bind(&request.note)
        .bind(pseudonym.map(str::to_owned))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl<D: Dialect> SqlStore<D> {
    /// The pseudonym a subject's access-log entries and requests are filed under, from its stored
    /// key (`None`: no key, so nothing was ever filed, or it was erased).
    async fn pseudonym_of(&self, decision: &Clearance) -> Result<Option<String>, StoreError> {
        let subject_key = decision.subject_key();
        let row = sqlx::query("SELECT secret FROM subject_keys WHERE subject = $1")
            .bind(subject_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| access_log::pseudonym(&row.get::<String, _>(0), subject_key)))
    }

    /// Connects and migrates.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pools = Pools::open::<D>(url).await?;
        let database = pools.journal.clone();
        let held = match pools.notices {
            Some(heard) => Held::followed(heard, pools.main.clone()),
            None => Held::exclusive(),
        };
        let mut store = SqlStore {
            journal: None,
            pool: pools.main,
            log_pool: pools.log,
            head: tokio::sync::Mutex::new(None),
            held,
            dialect: PhantomData,
        };
        if let Some(database) = database {
            // Entries journaled by instances that are gone go into the chain first.
            for orphan in Journal::orphans(&database).map_err(journal_error)? {
                store
                    .append_chained(&orphan.entries, Some(&orphan.name()))
                    .await?;
                orphan.remove().map_err(journal_error)?;
            }
            store.journal = Some(Journal::open(&database).map_err(journal_error)?);
        }
        Ok(store)
    }

    /// Whether memory may serve reads now: always for the only writer; for a replica on
    /// PostgreSQL, while its listener is proven current (see [`super::held`]).
    pub fn memory_current(&self) -> bool {
        self.held.current()
    }

    /// Waits until every write committed anywhere before this call is reflected in this
    /// replica's memory, at most `within`; whether it is (for tests and benchmarks that must
    /// know, and for a caller that wants read-your-writes across replicas).
    pub async fn memory_settled(&self, within: std::time::Duration) -> bool {
        self.held.settled(within).await
    }

    /// How many times this replica dropped its memory because its listener lost the
    /// connection (announcements sent meanwhile are lost).
    pub fn memory_gaps(&self) -> u64 {
        self.held.gaps()
    }

    /// The underlying pool (tests count rows through it).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The subject's pseudonym key, created on first use (a racing replica's key wins).
    async fn subject_secret(&self, subject_key: &str) -> Result<String, StoreError> {
        let pool = &self.pool;
        let read = move || async move {
            Ok(
                sqlx::query("SELECT secret FROM subject_keys WHERE subject = $1")
                    .bind(subject_key)
                    .fetch_optional(pool)
                    .await?
                    .map(|row| row.get::<String, _>(0)),
            )
        };
        if let Some(secret) = self.held.secret(subject_key, read()).await? {
            return Ok(secret);
        }
        sqlx::query("INSERT INTO subject_keys (subject, secret) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING")
            .bind(subject_key)
            .bind(new_secret()?)
            .execute(&self.pool)
            .await?;
        self.held
            .secret(subject_key, read())
            .await?
            .ok_or_else(|| StoreError::corrupt("a pseudonym key vanished as it was made".into()))
    }

    /// The decision's subject's zero-party data from memory (loaded and kept on a miss), or
    /// `None` while memory may not serve (a replica whose listener is not proven current: then
    /// every read queries just what it needs). Callers filter by the decision before anything
    /// leaves the store; taking the decision keeps this read behind the gate like every other.
    async fn zero_party(&self, decision: &Clearance) -> Result<Option<Arc<ZeroParty>>, StoreError> {
        if !self.held.current() {
            return Ok(None);
        }
        let subject_key = decision.subject_key();
        self.held
            .zero_party(subject_key, async {
                Ok(ZeroParty {
                    attributes: self.attribute_rows(subject_key).await?,
                    answers: self.answer_rows(subject_key, None).await?,
                })
            })
            .await
            .map(Some)
    }

    /// Every attribute row of a subject, all categories, ordered by name.
    async fn attribute_rows(&self, subject_key: &str) -> Result<Vec<Attribute>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTRIBUTE_COLUMNS} FROM attributes WHERE subject = $1 ORDER BY name"
        )))
        .bind(subject_key)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(attribute_of)
        .collect()
    }

    /// A subject's answers in `categories` (`None`: all), oldest first.
    async fn answer_rows(
        &self,
        subject_key: &str,
        categories: Option<&[&str]>,
    ) -> Result<Vec<Answer>, StoreError> {
        let mut sql = "SELECT answer_id, kind, question_id, question, answer, item_id, purpose, notice_version, collected_at FROM answers WHERE subject = $1".to_owned();
        if let Some(categories) = categories {
            sql.push_str(&format!(
                " AND category IN ({})",
                placeholders(2, categories.len())
            ));
        }
        sql.push_str(" ORDER BY collected_at, answer_id");
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(subject_key);
        for c in categories.unwrap_or_default() {
            q = q.bind(*c);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(answer_of)
            .collect()
    }

    /// Chains entries after the log's head and commits them in one statement: the fast path
    /// numbers them after the head this process knows; if another writer (a replica) moved it,
    /// the primary key on `seq` refuses them, and the locked path reads the true head under a
    /// lock that holds every other writer off until it commits, so it always makes progress.
    ///
    /// `journal` names the journal file the entries come from: it is recorded on the first
    /// entry (a unique column), so a journal already chained is refused by the fast path and
    /// found, then skipped, by the locked one. Its entries are in the log at most once whatever
    /// a crash interrupts: the file's deletion comes only after this commit.
    async fn append_chained(
        &self,
        entries: &[Entry],
        journal: Option<&str>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut head = self.head.lock().await;
        if entries.len() <= ROWS_PER_INSERT
            && let Some((seq, prev)) = head.take()
        {
            let (records, last) = chain(entries, seq, prev);
            match insert_records::<D>(&records, journal)
                .execute(&self.log_pool)
                .await
            {
                Ok(_) => {
                    *head = Some(last);
                    return Ok(());
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut tx = begin_serialized::<D>(&self.log_pool, CHAIN_LOCK).await?;
        let (seq, prev) =
            match sqlx::query("SELECT seq, hash FROM access_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(r) => (to_u64(r.get(0)), r.get(1)),
                None => (0, access_log::GENESIS.to_owned()),
            };
        if let Some(journal) = journal
            && sqlx::query("SELECT 1 FROM access_log WHERE journal = $1")
                .bind(journal)
                .fetch_optional(&mut *tx)
                .await?
                .is_some()
        {
            // Chained before a crash that came ahead of the file's deletion.
            tracing::info!("access journal already chained: deleted, not chained again");
            tx.commit().await?;
            *head = Some((seq, prev));
            return Ok(());
        }
        // Chained and inserted a statement's worth at a time: hashing a whole flush at once
        // (hundreds of entries) would hold the runtime's thread for a millisecond, in front of
        // the reads waiting for it.
        let mut last = (seq, prev);
        let mut journal = journal;
        for part in entries.chunks(ROWS_PER_INSERT) {
            let (records, next) = chain(part, last.0, std::mem::take(&mut last.1));
            insert_records::<D>(&records, journal.take())
                .execute(&mut *tx)
                .await?;
            last = next;
        }
        tx.commit().await?;
        *head = Some(last);
        Ok(())
    }

    /// In a write's transaction: tells the other replicas sharing the database (PostgreSQL)
    /// which subjects it changed (`None`: anyone), delivered only if it commits.
    async fn announce(&self, tx: &mut Tx<'_>, subjects: Option<&[&str]>) -> Result<(), StoreError> {
        if let Some(notify) = D::NOTIFY {
            sqlx::query(notify)
                .bind(held::CHANNEL)
                .bind(held::announcement(subjects))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The decision's subject's newest events as held in memory (read and kept on a miss), or
    /// `None` when this process does not own the store. Like [`SqlStore::zero_party`], callers
    /// filter by the decision before anything leaves the store.
    async fn recent_events(
        &self,
        decision: &Clearance,
    ) -> Result<Option<Arc<RecentEvents>>, StoreError> {
        if !self.held.current() {
            return Ok(None);
        }
        let subject_key = decision.subject_key();
        self.held.recent_events(subject_key, async {
            let mut events: Vec<Event> = sqlx::query(AssertSqlSafe(format!(
                "SELECT {} FROM events WHERE subject = $1 ORDER BY occurred_at DESC, event_id DESC LIMIT $2",
                event_select(EventFields::ALL)
            )))
            .bind(subject_key)
            .bind(to_i64(held::RECENT_EVENTS as u64 + 1))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| event_of(r, EventFields::ALL))
            .collect::<Result<_, _>>()?;
            let complete = events.len() <= held::RECENT_EVENTS;
            events.truncate(held::RECENT_EVENTS);
            Ok(RecentEvents { events, complete })
        })
        .await
        .map(Some)
    }

    async fn begin_write(&self) -> Result<Tx<'static>, StoreError> {
        Ok(begin_write::<D>(&self.pool).await?)
    }
}

/// Refuses an item whose category the decision does not allow (defense in depth: the service
/// checked already).
fn covered(decision: &Clearance, category: &str) -> Result<(), StoreError> {
    if decision.is_allowed(category) {
        Ok(())
    } else {
        Err(StoreError::NotAllowed(format!(
            "category {category} under purpose {}",
            decision.purpose()
        )))
    }
}

#[async_trait::async_trait]
impl<D: Dialect> ProfileStore for SqlStore<D> {
    async fn put_attributes(&self, items: &[(&Clearance, Attribute)]) -> Result<(), StoreError> {
        for (decision, a) in items {
            covered(decision, &a.category)?;
        }
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        for (decision, a) in items {
            sqlx::query("INSERT INTO attributes (subject, name, value, category, source, partner, purpose, notice_version, collected_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (subject, name) DO UPDATE SET value = excluded.value, category = excluded.category, source = excluded.source, partner = excluded.partner, purpose = excluded.purpose, notice_version = excluded.notice_version, collected_at = excluded.collected_at, updated_at = excluded.updated_at")
                .bind(decision.subject_key())
                .bind(&a.name)
                .bind(&a.value)
                .bind(&a.category)
                .bind(a.source.as_str())
                .bind(&a.partner)
                .bind(&a.collection.purpose)
                .bind(&a.collection.notice_version)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let subjects: Vec<&str> = items.iter().map(|(d, _)| d.subject_key()).collect();
        self.announce(&mut tx, Some(&subjects)).await?;
        tx.commit().await?;
        self.held.changed(Changed::Subjects(&subjects));
        Ok(())
    }

    async fn put_events(&self, decision: &Clearance, events: &[Event]) -> Result<(), StoreError> {
        for e in events {
            covered(decision, e.kind.category())?;
        }
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        // Multi-row inserts: one statement per 50 events keeps ingest fast on both databases.
        for chunk in events.chunks(50) {
            let rows = values::<D>(chunk.len(), 14);
            let sql = format!(
                "INSERT INTO events (event_id, subject, kind, category, occurred_at, item_id, query, page, amount_minor, currency, quantity, purpose, notice_version, recorded_at) VALUES {rows}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(&e.event_id)
                    .bind(decision.subject_key())
                    .bind(e.kind.as_str())
                    .bind(e.kind.category())
                    .bind(e.occurred_at)
                    .bind(&e.item_id)
                    .bind(&e.query)
                    .bind(&e.page)
                    .bind(e.amount_minor)
                    .bind(&e.currency)
                    .bind(i64::from(e.quantity))
                    .bind(&e.collection.purpose)
                    .bind(&e.collection.notice_version)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        self.announce(&mut tx, Some(&[decision.subject_key()]))
            .await?;
        tx.commit().await?;
        self.held
            .changed(Changed::Subjects(&[decision.subject_key()]));
        Ok(())
    }

    async fn put_answers(
        &self,
        decision: &Clearance,
        answers: &[Answer],
    ) -> Result<(), StoreError> {
        for a in answers {
            covered(decision, a.kind.category())?;
        }
        let mut tx = self.begin_write().await?;
        for a in answers {
            sqlx::query("INSERT INTO answers (answer_id, subject, kind, category, question_id, question, answer, item_id, purpose, notice_version, collected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
                .bind(&a.answer_id)
                .bind(decision.subject_key())
                .bind(a.kind.as_str())
                .bind(a.kind.category())
                .bind(&a.question_id)
                .bind(&a.question)
                .bind(&a.answer)
                .bind(&a.item_id)
                .bind(&a.collection.purpose)
                .bind(&a.collection.notice_version)
                .bind(a.collected_at)
                .execute(&mut *tx)
                .await?;
        }
        self.announce(&mut tx, Some(&[decision.subject_key()]))
            .await?;
        tx.commit().await?;
        self.held
            .changed(Changed::Subjects(&[decision.subject_key()]));
        Ok(())
    }

    async fn attributes(&self, decision: &Clearance) -> Result<Vec<Attribute>, StoreError> {
        let allowed = decision.allowed_categories();
        if allowed.is_empty() {
            return Ok(Vec::new());
        }
        let rows = match self.zero_party(decision).await? {
            Some(cached) => cached.attributes.clone(),
            None => self.attribute_rows(decision.subject_key()).await?,
        };
        // Values of categories the decision does not allow never leave this function.
        Ok(rows
            .into_iter()
            .filter(|a| decision.is_allowed(&a.category))
            .collect())
    }

    async fn profile_view(
        &self,
        decision: &Clearance,
    ) -> Result<(Vec<Attribute>, Vec<Holding>), StoreError> {
        let cached = self.zero_party(decision).await?;
        let queried;
        let rows = match &cached {
            Some(cached) => &cached.attributes,
            None => {
                queried = self.attribute_rows(decision.subject_key()).await?;
                &queried
            }
        };
        let mut allowed = Vec::new();
        let mut holdings: Vec<Holding> = Vec::new();
        for attribute in rows.iter() {
            match holdings
                .iter_mut()
                .find(|h| h.category == attribute.category && h.source == attribute.source)
            {
                Some(h) => h.items += 1,
                None => holdings.push(Holding {
                    category: attribute.category.clone(),
                    source: attribute.source,
                    items: 1,
                    table: Table::Attributes,
                }),
            }
            // Values of categories the decision does not allow never leave this function.
            if decision.is_allowed(&attribute.category) {
                allowed.push(attribute.clone());
            }
        }
        Ok((allowed, holdings))
    }

    async fn events(
        &self,
        decision: &Clearance,
        query: &EventQuery,
    ) -> Result<Vec<Event>, StoreError> {
        let allowed: Vec<&str> = decision.allowed_categories();
        let kinds: Vec<EventKind> = EventKind::ALL
            .into_iter()
            .filter(|k| query.kinds.is_empty() || query.kinds.contains(k))
            .filter(|k| allowed.contains(&k.category()))
            .collect();
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let newest = query.since.is_none() && query.until.is_none() && query.after.is_none();
        if newest
            && query.limit as usize <= held::RECENT_EVENTS
            && let Some(recent) = self.recent_events(decision).await?
        {
            // Events of kinds the decision denies never leave this function.
            let limit = query.limit as usize;
            let found: Vec<Event> = recent
                .events
                .iter()
                .filter(|e| kinds.contains(&e.kind))
                .take(limit)
                .map(|e| project(e, query.fields))
                .collect();
            // Unless the newest events held too few of these kinds and older ones exist.
            if found.len() == limit || recent.complete {
                return Ok(found);
            }
        }
        let kinds: Vec<&str> = kinds.into_iter().map(EventKind::as_str).collect();
        let mut sql = format!(
            "SELECT {} FROM events WHERE subject = $1 AND kind IN ({})",
            event_select(query.fields),
            placeholders(2, kinds.len())
        );
        let mut next = 2 + kinds.len();
        if query.since.is_some() {
            sql.push_str(&format!(" AND occurred_at >= ${next}"));
            next += 1;
        }
        if query.until.is_some() {
            sql.push_str(&format!(" AND occurred_at < ${next}"));
            next += 1;
        }
        if query.after.is_some() {
            sql.push_str(&format!(
                " AND (occurred_at < ${next} OR (occurred_at = ${next} AND event_id < ${}))",
                next + 1
            ));
            next += 2;
        }
        sql.push_str(&format!(
            " ORDER BY occurred_at DESC, event_id DESC LIMIT ${next}"
        ));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(decision.subject_key());
        for k in &kinds {
            q = q.bind(*k);
        }
        if let Some(since) = query.since {
            q = q.bind(since);
        }
        if let Some(until) = query.until {
            q = q.bind(until);
        }
        if let Some((at, id)) = &query.after {
            q = q.bind(*at).bind(id.clone());
        }
        q = q.bind(i64::from(query.limit));
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| event_of(r, query.fields))
            .collect()
    }

    async fn answers(&self, decision: &Clearance) -> Result<Vec<Answer>, StoreError> {
        let allowed = decision.allowed_categories();
        if allowed.is_empty() {
            return Ok(Vec::new());
        }
        match self.zero_party(decision).await? {
            // Answers of categories the decision does not allow never leave this function.
            Some(cached) => Ok(cached
                .answers
                .iter()
                .filter(|a| decision.is_allowed(a.kind.category()))
                .cloned()
                .collect()),
            None => {
                self.answer_rows(decision.subject_key(), Some(&allowed))
                    .await
            }
        }
    }

    async fn holdings(
        &self,
        decision: &Clearance,
        table: Table,
    ) -> Result<Vec<Holding>, StoreError> {
        let sql = match table {
            Table::Attributes => {
                "SELECT category, source, COUNT(*) FROM attributes WHERE subject = $1 GROUP BY category, source"
            }
            Table::Events => {
                "SELECT category, 'first_party', COUNT(*) FROM events WHERE subject = $1 GROUP BY category"
            }
            Table::Answers => {
                "SELECT category, 'zero_party', COUNT(*) FROM answers WHERE subject = $1 GROUP BY category"
            }
        };
        sqlx::query(sql)
            .bind(decision.subject_key())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Holding {
                    category: r.get(0),
                    source: Source::parse(&r.get::<String, _>(1))
                        .ok_or_else(|| corrupt("source"))?,
                    items: to_u64(r.get(2)),
                    table,
                })
            })
            .collect()
    }

    async fn rectify(
        &self,
        decision: &Clearance,
        name: &str,
        value: &str,
        requester: &Requester,
    ) -> Result<Option<(Attribute, DsarRequest)>, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTRIBUTE_COLUMNS} FROM attributes WHERE subject = $1 AND name = $2"
        )))
        .bind(decision.subject_key())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let mut attribute = attribute_of(&row)?;
        covered(decision, &attribute.category)?;
        attribute.value = value.to_owned();
        attribute.updated_at = now_micros();
        sqlx::query(
            "UPDATE attributes SET value = $1, updated_at = $2 WHERE subject = $3 AND name = $4",
        )
        .bind(value)
        .bind(attribute.updated_at)
        .bind(decision.subject_key())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        // The subject's pseudonym key, created here if the subject has none yet (in the
        // transaction, so that a correction of nothing creates no key).
        sqlx::query("INSERT INTO subject_keys (subject, secret) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING")
            .bind(decision.subject_key())
            .bind(new_secret()?)
            .execute(&mut *tx)
            .await?;
        let secret: String = sqlx::query("SELECT secret FROM subject_keys WHERE subject = $1")
            .bind(decision.subject_key())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        let request = DsarRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            kind: "rectify".into(),
            state: "completed".into(),
            requested_at: attribute.updated_at,
            completed_at: attribute.updated_at,
            // What was corrected, never the value (old or new).
            detail: serde_json::json!({
                "attribute": attribute.name,
                "data_category": attribute.category,
            })
            .to_string(),
            requested_by: requester.caller.clone(),
            note: requester.note.clone(),
        };
        let pseudonym = access_log::pseudonym(&secret, decision.subject_key());
        insert_request(&mut tx, &request, None, Some(&pseudonym)).await?;
        self.announce(&mut tx, Some(&[decision.subject_key()]))
            .await?;
        tx.commit().await?;
        self.held
            .changed(Changed::Subjects(&[decision.subject_key()]));
        self.held.remember_secret(decision.subject_key(), secret);
        Ok(Some((attribute, request)))
    }

    async fn erase_subject(&self, subject_key: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        // The subject's requests stay (their completion is provable) but lose their link to the
        // subject and the free-text reasons that might describe it.
        if let Some(row) = sqlx::query("SELECT secret FROM subject_keys WHERE subject = $1")
            .bind(subject_key)
            .fetch_optional(&mut *tx)
            .await?
        {
            let pseudonym = access_log::pseudonym(&row.get::<String, _>(0), subject_key);
            sqlx::query(
                "UPDATE dsar_requests SET note = '', pseudonym = NULL WHERE pseudonym = $1",
            )
            .bind(pseudonym)
            .execute(&mut *tx)
            .await?;
        }
        let mut deleted = 0;
        for sql in [
            "DELETE FROM attributes WHERE subject = $1",
            "DELETE FROM events WHERE subject = $1",
            "DELETE FROM answers WHERE subject = $1",
            "DELETE FROM subject_keys WHERE subject = $1",
        ] {
            deleted += sqlx::query(sql)
                .bind(subject_key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        self.announce(&mut tx, Some(&[subject_key])).await?;
        tx.commit().await?;
        self.held.changed(Changed::Subjects(&[subject_key]));
        Ok(deleted)
    }

    async fn keep_tombstones(&self, tombstones: &[String]) -> Result<u64, StoreError> {
        if tombstones.is_empty() {
            return Ok(0);
        }
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        let mut kept = 0;
        for t in tombstones {
            kept += sqlx::query("INSERT INTO erasure_tombstones (tombstone, recorded_at) VALUES ($1, $2) ON CONFLICT (tombstone) DO NOTHING")
                .bind(t)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(kept)
    }

    async fn tombstones_after(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query(
            "SELECT tombstone FROM erasure_tombstones WHERE tombstone > $1 ORDER BY tombstone LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn subjects_after(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        // Per table (each reads an index on subject and stops at the limit), then merged: the
        // first `limit` of the union are among the first `limit` of each.
        let mut subjects = Vec::new();
        for sql in [
            "SELECT DISTINCT subject FROM attributes WHERE subject > $1 ORDER BY subject LIMIT $2",
            "SELECT DISTINCT subject FROM events WHERE subject > $1 ORDER BY subject LIMIT $2",
            "SELECT DISTINCT subject FROM answers WHERE subject > $1 ORDER BY subject LIMIT $2",
            "SELECT subject FROM subject_keys WHERE subject > $1 ORDER BY subject LIMIT $2",
        ] {
            for r in sqlx::query(sql)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            {
                subjects.push(r.get::<String, _>(0));
            }
        }
        subjects.sort();
        subjects.dedup();
        subjects.truncate(limit as usize);
        Ok(subjects)
    }

    async fn purge_before(&self, category: &str, cutoff: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut deleted = 0;
        for sql in [
            "DELETE FROM attributes WHERE category = $1 AND updated_at < $2",
            "DELETE FROM events WHERE category = $1 AND occurred_at < $2",
            "DELETE FROM answers WHERE category = $1 AND collected_at < $2",
        ] {
            deleted += sqlx::query(sql)
                .bind(category)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if deleted > 0 {
            self.announce(&mut tx, None).await?;
        }
        tx.commit().await?;
        if deleted > 0 {
            self.held.changed(Changed::Everyone);
        }
        Ok(deleted)
    }

    async fn append_access(&self, drafts: &[AccessDraft]) -> Result<(), StoreError> {
        if drafts.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let secret = self.subject_secret(&draft.subject_key).await?;
            entries.push(Entry {
                read_at: draft.read_at,
                pseudonym: access_log::pseudonym(&secret, &draft.subject_key),
                caller: draft.caller.clone(),
                enforced_by: draft.enforced_by.clone(),
                purpose: draft.purpose.clone(),
                categories: draft.categories.join(","),
                revision: draft.revision,
                operation: draft.operation.clone(),
                items: draft.items,
            });
        }
        match &self.journal {
            Some(journal) => journal.append(&entries).map_err(journal_error),
            None => self.append_chained(&entries, None).await,
        }
    }

    async fn flush_access(&self) -> Result<(), StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let _one = journal.flushing.lock().await;
        let mut batches = journal.take().map_err(journal_error)?.into_iter();
        while let Some(batch) = batches.next() {
            if let Err(e) = self
                .append_chained(&batch.entries, Some(&batch.name()))
                .await
            {
                // Kept, in order, for the next flush: nothing journaled is dropped.
                journal.stall(std::iter::once(batch).chain(batches).collect());
                return Err(e);
            }
            batch.remove().map_err(journal_error)?;
        }
        Ok(())
    }
    async fn access_entries(&self, decision: &Clearance) -> Result<Vec<AccessRecord>, StoreError> {
        self.flush_access().await?;
        let Some(pseudonym) = self.pseudonym_of(decision).await? else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query(AssertSqlSafe(format!(
            "SELECT {ACCESS_COLUMNS} FROM access_log WHERE pseudonym = $1 ORDER BY seq"
        )))
        .bind(pseudonym)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(access_of)
        .collect())
    }

    async fn access_log_page(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AccessRecord>, StoreError> {
        self.flush_access().await?;
        Ok(sqlx::query(AssertSqlSafe(format!(
            "SELECT {ACCESS_COLUMNS} FROM access_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(access_of)
        .collect())
    }

    async fn begin_request(
        &self,
        kind: &str,
        idempotency: &[&str],
        requester: &Requester,
    ) -> Result<(DsarRequest, bool), StoreError> {
        let mut tx = self.begin_write().await?;
        for key in idempotency {
            let existing = sqlx::query(AssertSqlSafe(format!(
                "SELECT {REQUEST_COLUMNS} FROM dsar_requests WHERE idempotency = $1"
            )))
            .bind(*key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = existing {
                tx.commit().await?;
                return Ok((request_of(&r), false));
            }
        }
        let request = DsarRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            kind: kind.to_owned(),
            state: "in_progress".into(),
            requested_at: now_micros(),
            completed_at: 0,
            detail: "{}".into(),
            requested_by: requester.caller.clone(),
            note: requester.note.clone(),
        };
        insert_request(&mut tx, &request, idempotency.first().copied(), None).await?;
        tx.commit().await?;
        Ok((request, true))
    }

    async fn update_request(&self, request: &DsarRequest) -> Result<(), StoreError> {
        sqlx::query("UPDATE dsar_requests SET state = $1, completed_at = $2, detail = $3 WHERE request_id = $4")
            .bind(&request.state)
            .bind(request.completed_at)
            .bind(&request.detail)
            .bind(&request.request_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn request(&self, request_id: &str) -> Result<Option<DsarRequest>, StoreError> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM dsar_requests WHERE request_id = $1"
        )))
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(request_of))
    }

    async fn subject_requests(&self, decision: &Clearance) -> Result<Vec<DsarRequest>, StoreError> {
        let Some(pseudonym) = self.pseudonym_of(decision).await? else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query(AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM dsar_requests WHERE pseudonym = $1 ORDER BY requested_at, request_id"
        )))
        .bind(pseudonym)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(request_of)
        .collect())
    }
}

/// Chains `entries` after `(seq, prev)`; the records and the new head.
fn chain(entries: &[Entry], mut seq: u64, mut prev: String) -> (Vec<AccessRecord>, (u64, String)) {
    let mut records = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let mut record = AccessRecord {
            seq,
            read_at: e.read_at,
            pseudonym: e.pseudonym.clone(),
            caller: e.caller.clone(),
            enforced_by: e.enforced_by.clone(),
            purpose: e.purpose.clone(),
            categories: e.categories.clone(),
            revision: e.revision,
            operation: e.operation.clone(),
            items: e.items,
            prev_hash: prev,
            hash: String::new(),
        };
        record.hash = access_log::chain_hash(&record);
        prev = record.hash.clone();
        records.push(record);
    }
    (records, (seq, prev))
}

/// A fresh per-subject key; a store error when the system has no randomness to make one.
fn new_secret() -> Result<String, StoreError> {
    access_log::new_secret()
        .map_err(|e| StoreError::corrupt(format!("no randomness for a key: {e}")))
}

/// A journal failure as a store error (no personal data: paths and OS errors only).
fn journal_error(e: std::io::Error) -> StoreError {
    StoreError::corrupt(format!("access journal: {e}"))
}

/// One multi-row INSERT of chained records; `journal` (the file they were journaled in) goes on
/// the first, and `NULL` on the others (see [`SqlStore::append_chained`]).
fn insert_records<D: Dialect>(
    records: &[AccessRecord],
    mut journal: Option<&str>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let rows = values::<D>(records.len(), 13);
    let mut q = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO access_log ({ACCESS_COLUMNS}, journal) VALUES {rows}"
    )));
    for r in records {
        q = q
            .bind(to_i64(r.seq))
            .bind(r.read_at)
            .bind(r.pseudonym.clone())
            .bind(r.caller.clone())
            .bind(r.enforced_by.clone())
            .bind(r.purpose.clone())
            .bind(r.categories.clone())
            .bind(to_i64(r.revision))
            .bind(r.operation.clone())
            .bind(to_i64(r.items))
            .bind(r.prev_hash.clone())
            .bind(r.hash.clone())
            .bind(journal.take().map(str::to_owned));
    }
    q
}
