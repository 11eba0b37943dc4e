//! A run of consent records and signals inside one group commit, applied with a few statements
//! for the whole run instead of a dozen per write: one lookup statement for everything the run
//! reads ([`lookup`]), and one multi-row INSERT per table, all tables in one round trip when
//! they fit ([`Rows::insert_together`]). Each write still gets its own revision, ledger entry,
//! change event and idempotency record, in queue order. Why: at a dozen round trips per write
//! the statements, not the durable commit, set the cost of a write, and batching the commit
//! alone gained nothing (BENCHMARKS.md, "Issue 16: reading the write numbers"). A large run (an
//! import's chunk) is built and inserted [`SHAPES`]`[0]` writes at a time, each chunk's rows
//! built while the chunk before is being inserted ([`Built`]).
//!
//! Links, restrictions and erasures change what the lookups read (the link groups, the
//! tombstones), so they are applied one by one between runs (`sql::apply`); a key repeated in a
//! batch ends a run, so the second write under it is answered from the first.

use super::lookup::{self, Lookup, import_of};
use super::sql::{answer_from_record, rebuilt, rfc3339, unix_micros};
use super::{StoreError, handles, record};
use crate::ledger::entry::{self, CHECKPOINT_EVERY};
use crate::ledger::keys::{LedgerKeys, random_key};
use crate::model::{Change, StoredRecord, SubjectKey, Write, WriteOutcome};
use crate::receipt::Receipt;
use consentgate_chain::{GENESIS_HASH, checkpoint_message};
use consentgate_store::{Backend, Dialect, Tx, to_i64, to_u64};
use sqlx::AssertSqlSafe;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use time::OffsetDateTime;

/// Whether a change can join a run: it writes rows of its own subject only and changes nothing
/// a later write's lookups read.
pub(super) fn joins_a_run(change: &Change) -> bool {
    matches!(change, Change::Consent(_) | Change::Signal { .. })
}

/// One bound value of a generated statement.
#[derive(Clone)]
pub(super) enum Value {
    Text(String),
    Int(i64),
    MaybeInt(Option<i64>),
    Bytes(Vec<u8>),
    MaybeBytes(Option<Vec<u8>>),
}

/// A list of values bound as one parameter, a JSON array of texts (byte strings in hex), for
/// [`Statement::in_json`]: a statement looking up lists of any length keeps one text, and
/// binds one value per list instead of one per entry.
pub(super) struct JsonList {
    json: String,
    /// Whether the values are byte strings, in hex.
    hex: bool,
}

impl JsonList {
    pub(super) fn texts<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> JsonList {
        let values: Vec<S> = values.into_iter().collect();
        let values: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
        JsonList {
            // A list of strings always serializes.
            json: serde_json::to_string(&values).unwrap_or_else(|_| "[]".into()),
            hex: false,
        }
    }

    pub(super) fn bytes<B: AsRef<[u8]>>(values: impl IntoIterator<Item = B>) -> JsonList {
        let mut json = String::from("[");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push('"');
            json.push_str(&hex::encode(v));
            json.push('"');
        }
        json.push(']');
        JsonList { json, hex: true }
    }
}

/// A statement with its values, built for a run.
pub(super) struct Statement<D> {
    sql: String,
    values: Vec<Value>,
    dialect: std::marker::PhantomData<D>,
}

impl<D: Dialect> Statement<D> {
    pub(super) fn new(sql: &str) -> Self {
        Statement {
            sql: sql.to_owned(),
            values: Vec::new(),
            dialect: std::marker::PhantomData,
        }
    }

    /// Appends the next parameter's placeholder to the SQL and keeps its value.
    fn param(&mut self, value: Value) -> &mut Self {
        self.values.push(value);
        if D::NUMBERED_PARAMETERS {
            self.sql.push_str(&format!("${}", self.values.len()));
        } else {
            self.sql.push('?');
        }
        self
    }

    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Whether no SQL has been written yet.
    pub(super) fn is_empty(&self) -> bool {
        self.sql.is_empty()
    }

    /// `(v1, v2, …)`.
    fn tuple(&mut self, values: Vec<Value>) -> &mut Self {
        self.push("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.param(v);
        }
        self.push(")")
    }

    /// ` IN (SELECT …`, opening a match against a subquery's rows; [`Statement::in_close`]
    /// closes it. On PostgreSQL ` = ANY(ARRAY(SELECT …))`: a prepared statement keeps a
    /// generic plan, made with the statistics of the moment, and an `IN` subquery planned
    /// while a table was empty stays a scan of the whole table for every value as the table
    /// grows, where `= ANY` of an array is always a probe of the index per value.
    pub(super) fn in_open(&mut self) -> &mut Self {
        match D::BACKEND {
            Backend::Sqlite => self.push(" IN (SELECT "),
            Backend::Postgres => self.push(" = ANY(ARRAY(SELECT "),
        }
    }

    /// Closes what [`Statement::in_open`] opened.
    pub(super) fn in_close(&mut self) -> &mut Self {
        match D::BACKEND {
            Backend::Sqlite => self.push(")"),
            Backend::Postgres => self.push("))"),
        }
    }

    /// Matches a list bound as one parameter, a JSON array the database unpacks (SQLite's
    /// `json_each`, PostgreSQL's `jsonb_array_elements_text`).
    pub(super) fn in_json(&mut self, list: &JsonList) -> &mut Self {
        let (elements, close, hex) = match D::BACKEND {
            Backend::Sqlite => ("json_each(", ")", "unhex(value)"),
            Backend::Postgres => (
                "jsonb_array_elements_text(CAST(",
                " AS jsonb))",
                "decode(value, 'hex')",
            ),
        };
        self.in_open()
            .push(if list.hex { hex } else { "value" })
            .push(" FROM ")
            .push(elements)
            .param(Value::Text(list.json.clone()))
            .push(close)
            .in_close()
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.sql.as_str()));
        for v in &self.values {
            q = match v {
                Value::Text(s) => q.bind(s.as_str()),
                Value::Int(i) => q.bind(*i),
                Value::MaybeInt(i) => q.bind(*i),
                Value::Bytes(b) => q.bind(b.as_slice()),
                Value::MaybeBytes(b) => q.bind(b.as_deref()),
            };
        }
        q
    }

    async fn execute(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        self.query().execute(&mut **tx).await?;
        Ok(())
    }

    pub(super) async fn fetch_all(
        &self,
        tx: &mut Tx<'_>,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        Ok(self.query().fetch_all(&mut **tx).await?)
    }
}

/// Rows for one multi-row INSERT, written as a few statements of [`SHAPES`] rows each.
pub(super) struct Rows {
    /// `INTO table (columns) VALUES `: the INSERT keyword is the dialect's.
    head: &'static str,
    tail: &'static str,
    pub(super) rows: Vec<Vec<Value>>,
}

/// The row counts generated INSERTs come in, largest first. Each driver connection caches a
/// bounded number of prepared statements (sqlx keeps 100) keyed by their text: a statement for
/// every batch size would keep evicting each other and be parsed and planned anew on each use,
/// so a batch is written in chunks of these sizes (37 rows: 16, 16, 4, 1). Lookups need none:
/// a list is one parameter ([`JsonList`]). The largest stays well under every backend's parameter
/// limit (SQLite's 32,766, PostgreSQL's 65,535) at any of these tables' widths.
pub(super) const SHAPES: [usize; 5] = [256, 64, 16, 4, 1];

/// The largest shape that fits `n` (≥ 1).
fn chunk_for(n: usize) -> usize {
    SHAPES.into_iter().find(|&s| s <= n).unwrap_or(1)
}

impl Rows {
    pub(super) fn new(head: &'static str, tail: &'static str) -> Rows {
        // The keyword is the dialect's (`write_insert`): a head of its own would be doubled.
        debug_assert!(head.starts_with("INTO "), "an INSERT head begins at INTO");
        Rows {
            head,
            tail,
            rows: Vec::new(),
        }
    }

    pub(super) async fn insert<D: Dialect>(self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        let mut rows = self.rows.into_iter();
        while rows.len() > 0 {
            let mut statement = Statement::<D>::new("");
            let n = chunk_for(rows.len());
            write_insert(&mut statement, self.head, rows.by_ref().take(n), self.tail);
            statement.execute(tx).await?;
        }
        Ok(())
    }

    /// Inserts every table's rows in one round trip when each table's rows are one of the
    /// [`SHAPES`] (so that the statement's text is one of a few, and stays prepared): the
    /// INSERTs as statements of one query, or on PostgreSQL as the `WITH` clauses of one
    /// statement ([`Dialect::STATEMENTS_IN_ONE_QUERY`]). Why: a lone write's six INSERTs were
    /// six round trips, more than its durable commit took. Otherwise each table as
    /// [`Rows::insert`] writes it.
    pub(super) async fn insert_together<D: Dialect>(
        tables: Vec<Rows>,
        tx: &mut Tx<'_>,
    ) -> Result<(), StoreError> {
        let tables: Vec<Rows> = tables.into_iter().filter(|t| !t.rows.is_empty()).collect();
        if tables.len() < 2 || tables.iter().any(|t| !SHAPES.contains(&t.rows.len())) {
            for table in tables {
                table.insert::<D>(tx).await?;
            }
            return Ok(());
        }
        let mut statement = Statement::<D>::new("");
        for (i, table) in tables.into_iter().enumerate() {
            if D::STATEMENTS_IN_ONE_QUERY {
                if i > 0 {
                    statement.push("; ");
                }
                write_insert(
                    &mut statement,
                    table.head,
                    table.rows.into_iter(),
                    table.tail,
                );
            } else {
                statement.push(&format!("{} w{i} AS (", if i == 0 { "WITH" } else { "," }));
                write_insert(
                    &mut statement,
                    table.head,
                    table.rows.into_iter(),
                    table.tail,
                );
                statement.push(")");
            }
        }
        if !D::STATEMENTS_IN_ONE_QUERY {
            statement.push(" SELECT 1");
        }
        statement.execute(tx).await
    }
}

/// `INSERT head (…), (…), … tail`: one multi-row INSERT of `rows` appended to `statement`,
/// begun as the dialect begins one inside a transaction ([`Dialect::INSERT`]).
fn write_insert<D: Dialect>(
    statement: &mut Statement<D>,
    head: &str,
    rows: impl Iterator<Item = Vec<Value>>,
    tail: &str,
) {
    statement.push(D::INSERT).push(" ").push(head);
    for (i, row) in rows.enumerate() {
        if i > 0 {
            statement.push(", ");
        }
        statement.tuple(row);
    }
    statement.push(tail);
}

/// Writes between yields while rows are built beside the inserts of the writes before.
const YIELD_EVERY: usize = 16;

/// The rows each write of a run adds to the tables that take one row per write (or none): built
/// a chunk of writes at a time, and inserted while the next chunk is built.
struct Built {
    records: Rows,
    signals: Rows,
    ledger: Rows,
    checkpoints: Rows,
    idempotency: Rows,
    imports: Rows,
}

impl Built {
    fn new() -> Built {
        Built {
            records: Rows::new(
                "INTO consent_records (revision, record_id, subject, body, receipt_context, receipt_signature) VALUES ",
                "",
            ),
            signals: Rows::new(
                "INTO signals (subject, revision, kind, value, recorded_at, collection_method, order_micros) VALUES ",
                "",
            ),
            // The subject beside the entry is the change stream's (migration 0013), not hashed.
            ledger: Rows::new("INTO ledger (seq, hash, event, subject) VALUES ", ""),
            checkpoints: Rows::new("INTO checkpoints (seq, hash, signature, kid) VALUES ", ""),
            idempotency: Rows::new(
                "INTO idempotency (revision, created_at, handle, fingerprint, records_deleted) VALUES ",
                "",
            ),
            imports: Rows::new("INTO imported (handle, revision, fingerprint) VALUES ", ""),
        }
    }

    async fn insert<D: Dialect>(self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        for rows in self.tables() {
            rows.insert::<D>(tx).await?;
        }
        Ok(())
    }

    fn tables(self) -> [Rows; 6] {
        [
            self.records,
            self.signals,
            self.ledger,
            self.checkpoints,
            self.idempotency,
            self.imports,
        ]
    }
}

/// Each write's answer when it is known before anything is written (a retry, a refusal);
/// `None` for a write to be written.
type Decided = Option<Result<WriteOutcome, StoreError>>;

/// Applies `run` (writes that [`joins_a_run`], each idempotency key once) in the group
/// commit's transaction `tx`; answers each write, in order. `Err` is a failure of the
/// transaction, which fails the whole batch; a write refused on its own (a reused key with
/// other content, an erased subject) is an `Err` inside the answers and writes nothing.
pub(super) async fn apply_run<D: Dialect>(
    tx: &mut Tx<'_>,
    keys: &LedgerKeys,
    run: &[&Write],
    now: OffsetDateTime,
    remembered_since: i64,
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    let mut lookup = lookup::read::<D>(tx, keys, run).await?;
    let mut decided = decide(tx, run, &mut lookup, remembered_since).await?;
    let fresh: Vec<usize> = (0..run.len()).filter(|&i| decided[i].is_none()).collect();
    if !fresh.is_empty() {
        let outcomes = write_fresh::<D>(
            tx,
            keys,
            &fresh.iter().map(|&i| run[i]).collect::<Vec<_>>(),
            now,
            lookup,
        )
        .await?;
        for (i, outcome) in fresh.into_iter().zip(outcomes) {
            decided[i] = Some(Ok(outcome));
        }
    }
    Ok(decided
        .into_iter()
        .map(|d| {
            d.unwrap_or_else(|| {
                Err(StoreError::GroupCommitFailed(
                    "a write of the run was left unanswered".into(),
                ))
            })
        })
        .collect())
}

/// Which writes of the run are retries (answered from their first write), refused, or new,
/// from the run's lookup.
async fn decide(
    tx: &mut Tx<'_>,
    run: &[&Write],
    lookup: &mut Lookup,
    remembered_since: i64,
) -> Result<Vec<Decided>, StoreError> {
    let mut decided = Vec::with_capacity(run.len());
    for (i, w) in run.iter().enumerate() {
        let handle = &lookup.handles[i];
        if import_of(w).is_some() {
            // Imported before: permanently, whatever the idempotency window.
            if let Some((revision, fingerprint)) = lookup.imported.get(handle) {
                if fingerprint.as_slice() != handles::stored_fingerprint(&w.fingerprint) {
                    decided.push(Some(Err(StoreError::IdempotencyConflict)));
                } else {
                    decided.push(Some(Ok(rebuilt(tx, *revision, None).await?)));
                }
                continue;
            }
        } else if let Some(remembered) = lookup.remembered.remove(handle) {
            // The answer of the first write; nothing when its key was forgotten (and deleted).
            match answer_from_record(tx, w, &remembered, remembered_since).await {
                Ok(Some(outcome)) => {
                    decided.push(Some(Ok(outcome)));
                    continue;
                }
                Ok(None) => {}
                Err(StoreError::IdempotencyConflict) => {
                    decided.push(Some(Err(StoreError::IdempotencyConflict)));
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if lookup.erased.contains(&lookup.tombstones[i]) {
            decided.push(Some(Err(StoreError::SubjectErased)));
        } else {
            decided.push(None);
        }
    }
    Ok(decided)
}

/// The time the next live change of a subject takes in its order: its own time, or just past
/// the latest change of the subject (or any key linked with it) when that is later, since
/// replicas' clocks differ and a withdrawal must never sort before the grant it withdraws.
/// An imported record keeps its own time.
fn ordered_micros(own: i64, latest: Option<i64>, imported: bool) -> i64 {
    match latest {
        Some(latest) if !imported => own.max(latest.saturating_add(1)),
        _ => own,
    }
}

/// Writes the new writes of a run: revisions, ledger entries and rows, a multi-row INSERT per
/// table and chunk of writes, each chunk's inserts overlapping the building of the next.
async fn write_fresh<D: Dialect>(
    tx: &mut Tx<'_>,
    keys: &LedgerKeys,
    writes: &[&Write],
    now: OffsetDateTime,
    lookup: Lookup,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let subjects: BTreeSet<String> = writes
        .iter()
        .map(|w| w.change.subject().storage())
        .collect();

    let (prev_seq, mut prev_hash) = lookup.head.clone().unwrap_or((0, GENESIS_HASH.to_vec()));
    let mut seq = to_u64(prev_seq);

    // Pseudonym keys (a column of the subject's row since migration 0015), created for
    // subjects seen for the first time and written with the subjects' rows below.
    let mut subject_keys: HashMap<String, Vec<u8>> = HashMap::new();
    for s in &subjects {
        let held = lookup.subjects.get(s).and_then(|(key, _)| key.clone());
        subject_keys.insert(s.clone(), held.unwrap_or_else(|| random_key().to_vec()));
    }
    let groups: HashMap<String, Vec<SubjectKey>> = subjects
        .iter()
        .map(|s| Ok((s.clone(), lookup.group_of(s)?)))
        .collect::<Result<_, StoreError>>()?;

    // Each key's latest place in its order, and for subjects with imports, where their current
    // records stand: an imported record older than the current one lands in history only.
    let mut latest: HashMap<String, i64> = groups
        .values()
        .flatten()
        .filter_map(|k| {
            let k = k.storage();
            let held = lookup.subjects.get(&k)?.1;
            Some((k, held))
        })
        .collect();
    let mut current = lookup.current;
    let mut current_changed: BTreeSet<(String, String, String, String)> = BTreeSet::new();

    // Each context once per batch; most are stored already, and the conflict leaves them be.
    let mut contexts: BTreeMap<[u8; 16], String> = BTreeMap::new();
    let mut revisions: BTreeMap<String, i64> = BTreeMap::new();
    let committed_micros = unix_micros(now);

    let mut outcomes = Vec::with_capacity(writes.len());
    // One write's revision, ledger entry and rows, added to `built`.
    let mut add = |write: &Write, built: &mut Built| -> Result<(), StoreError> {
        seq += 1;
        let rev = to_i64(seq);
        let subject = write.change.subject();
        let subject_s = subject.storage();
        let pseudonym = entry::pseudonym(&subject_keys[&subject_s], subject);
        let mut affected = groups.get(&subject_s).cloned().unwrap_or_default();
        let mut record = None;
        let mut history_only = false;
        let imported = import_of(write);
        let own = match &write.change {
            Change::Consent(c) => unix_micros(c.collected_at),
            _ => unix_micros(now),
        };
        let previous = affected
            .iter()
            .filter_map(|k| latest.get(&k.storage()).copied())
            .max();
        let ordered = ordered_micros(own, previous, imported.is_some());
        for key in &affected {
            let held = latest.entry(key.storage()).or_insert(ordered);
            *held = (*held).max(ordered);
        }
        match &write.change {
            Change::Consent(c) => {
                let body = record::encode(c)?;
                // A grant keeps its receipt's signature and context digest in its row
                // (migration 0014); the context itself once per batch in `receipt_contexts`.
                let (context, signature) = match &c.receipt {
                    Some(Receipt::Derived { context, signature }) => {
                        let digest = context.digest();
                        contexts.entry(digest).or_insert_with(|| context.encode());
                        (Some(digest.to_vec()), Some(signature.clone()))
                    }
                    // An imported grant's: signed when first asked for (`SqlStore::receipt`).
                    Some(Receipt::Unsigned { context }) => {
                        let digest = context.digest();
                        contexts.entry(digest).or_insert_with(|| context.encode());
                        (Some(digest.to_vec()), None)
                    }
                    // Only a receipt read back from before migration 0008 is stored whole.
                    Some(Receipt::Stored { .. }) => {
                        return Err(StoreError::GroupCommitFailed(
                            "a new grant carried a receipt stored whole".into(),
                        ));
                    }
                    None => (None, None),
                };
                built.records.rows.push(vec![
                    Value::Int(rev),
                    Value::Text(c.record_id.clone()),
                    Value::Text(subject_s.clone()),
                    Value::Text(body),
                    Value::MaybeBytes(context),
                    Value::MaybeBytes(signature),
                ]);
                let key = (
                    subject_s.clone(),
                    c.purpose.clone(),
                    c.channel.clone().unwrap_or_default(),
                    c.scope.clone().unwrap_or_default(),
                );
                // The current record per key is the latest in the subject's order (a live
                // record always is); one row per key in the upsert, as PostgreSQL refuses a
                // statement that updates a row twice.
                if current.get(&key).is_none_or(|&held| held < (ordered, rev)) {
                    current.insert(key.clone(), (ordered, rev));
                    current_changed.insert(key);
                } else {
                    history_only = true;
                }
                if let Some(origin) = imported {
                    built.imports.rows.push(vec![
                        Value::Bytes(handles::import_key(origin)),
                        Value::Int(rev),
                        Value::Bytes(handles::stored_fingerprint(&write.fingerprint).to_vec()),
                    ]);
                }
                record = Some(StoredRecord {
                    consent: c.clone(),
                    revision: seq,
                    // As history reads it back (and a retry answers it): only the current
                    // state, which decisions read, says where a record stands.
                    ordered_at: None,
                });
            }
            Change::Signal {
                kind,
                value,
                collection_method,
                ..
            } => {
                built.signals.rows.push(vec![
                    Value::Text(subject_s.clone()),
                    Value::Int(rev),
                    Value::Text(kind.clone()),
                    Value::Text(value.clone()),
                    Value::Text(rfc3339(now)),
                    Value::Text(collection_method.as_str().to_owned()),
                    Value::Int(ordered),
                ]);
            }
            Change::Link { .. } | Change::Restrict { .. } | Change::Erase { .. } => {
                return Err(StoreError::GroupCommitFailed(
                    "a link, restriction or erasure joined a run".into(),
                ));
            }
        }
        // The subject and every key linked with it move to this revision.
        revisions.insert(subject_s.clone(), rev);
        for key in &affected {
            revisions.insert(key.storage(), rev);
        }

        let event = entry::canonical_event(
            seq,
            now,
            &write.change,
            &pseudonym,
            None,
            write
                .delegate
                .as_deref()
                .map(|d| consentgate_runtime::delegation::on_behalf_of(d, &write.caller)),
        );
        let hash = entry::chain_hash(&prev_hash, &event);
        if seq.is_multiple_of(CHECKPOINT_EVERY) {
            built.checkpoints.rows.push(vec![
                Value::Int(rev),
                Value::Bytes(hash.clone()),
                Value::Bytes(keys.sign(&checkpoint_message(seq, &hash)).to_vec()),
                Value::Text(keys.kid().to_owned()),
            ]);
        }
        // The link to the entry before is not stored: it is that entry's hash (migration 0012).
        prev_hash.clone_from(&hash);
        built.ledger.rows.push(vec![
            Value::Int(rev),
            Value::Bytes(hash),
            Value::Text(event),
            Value::Text(subject_s),
        ]);
        // An import is remembered for good by its source record id (above), not by a key.
        if imported.is_none() {
            // No subject: erasure finds the record through this revision's ledger entry.
            built.idempotency.rows.push(vec![
                Value::Int(rev),
                Value::Int(committed_micros),
                Value::Bytes(handles::handle_of(write)),
                Value::Bytes(handles::stored_fingerprint(&write.fingerprint).to_vec()),
                Value::MaybeInt(None),
            ]);
        }

        affected.sort_by_key(SubjectKey::storage);
        affected.dedup();
        outcomes.push(WriteOutcome {
            revision: seq,
            record,
            records_deleted: 0,
            committed_at: now,
            affected,
            replayed: false,
            history_only,
        });
        Ok(())
    };

    // The rows of the next writes are built while the last ones' are inserted: the database
    // works on one core while this task builds on the other, instead of each waiting for the
    // other (a bulk import's batch: BENCHMARKS.md). A yield every few writes lets the inserts
    // send their next statement as soon as the one before is done.
    let mut chunks = writes.chunks(SHAPES[0]);
    let mut ready = Built::new();
    for write in chunks.next().unwrap_or_default() {
        add(write, &mut ready)?;
    }
    for chunk in chunks {
        let mut next = Built::new();
        let building = async {
            for (i, write) in chunk.iter().enumerate() {
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    tokio::task::yield_now().await;
                }
                add(write, &mut next)?;
            }
            Ok::<_, StoreError>(())
        };
        let (inserted, built) = futures::join!(ready.insert::<D>(tx), building);
        inserted?;
        built?;
        ready = next;
    }

    // Only forward in the order, whatever was read above: the writes are serialized, so this
    // guard never fires, and a current row never moves back if they one day are not.
    let mut current_rows = Rows::new(
        "INTO consent_current (subject, purpose, channel, scope, order_micros, revision) VALUES ",
        " ON CONFLICT (subject, purpose, channel, scope) DO UPDATE \
         SET order_micros = excluded.order_micros, revision = excluded.revision \
         WHERE excluded.order_micros > consent_current.order_micros \
            OR (excluded.order_micros = consent_current.order_micros AND excluded.revision > consent_current.revision)",
    );
    for key in current_changed {
        let (ordered, rev) = current[&key];
        let (subject, purpose, channel, scope) = key;
        current_rows.rows.push(vec![
            Value::Text(subject),
            Value::Text(purpose),
            Value::Text(channel),
            Value::Text(scope),
            Value::Int(ordered),
            Value::Int(rev),
        ]);
    }
    // Every writer's row carries its pseudonym key (new or as read); a linked key's row is
    // moved to the revision with its key left as it is.
    let mut subject_rows = Rows::new(
        "INTO subjects (subject, revision, restricted, order_micros, key) VALUES ",
        " ON CONFLICT (subject) DO UPDATE SET revision = excluded.revision, order_micros = excluded.order_micros, \
         key = COALESCE(excluded.key, subjects.key)",
    );
    for (subject, rev) in revisions {
        let ordered = latest.get(&subject).copied().unwrap_or(0);
        let key = subject_keys.remove(&subject);
        subject_rows.rows.push(vec![
            Value::Text(subject),
            Value::Int(rev),
            Value::Int(0),
            Value::Int(ordered),
            Value::MaybeBytes(key),
        ]);
    }

    let mut context_rows = Rows::new(
        "INTO receipt_contexts (digest, body) VALUES ",
        " ON CONFLICT (digest) DO NOTHING",
    );
    for (digest, body) in contexts {
        context_rows
            .rows
            .push(vec![Value::Bytes(digest.to_vec()), Value::Text(body)]);
    }

    // The last chunk's rows and the run's current records, receipt contexts and subjects'
    // rows: one round trip when they fit (a live write's).
    let mut tables: Vec<Rows> = ready.tables().into();
    tables.extend([current_rows, context_rows, subject_rows]);
    Rows::insert_together::<D>(tables, tx).await?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_list_is_one_array_of_texts_or_of_hex() {
        let texts = JsonList::texts(["s:a\"b", "d:\\é"]);
        let parsed: Vec<String> = serde_json::from_str(&texts.json).expect("a JSON array");
        assert_eq!(parsed, ["s:a\"b", "d:\\é"]);
        assert!(!texts.hex);
        let bytes = JsonList::bytes([vec![0u8, 255], vec![]]);
        assert_eq!(bytes.json, r#"["00ff",""]"#);
        assert!(bytes.hex);
        assert_eq!(JsonList::texts(Vec::<String>::new()).json, "[]");
    }

    #[test]
    fn rows_are_written_in_chunks_of_the_shapes_only() {
        for n in 1..=600 {
            let mut left = n;
            let mut sizes = Vec::new();
            while left > 0 {
                let c = chunk_for(left);
                sizes.push(c);
                left -= c;
            }
            assert!(sizes.iter().all(|s| SHAPES.contains(s)), "{n}: {sizes:?}");
            assert_eq!(sizes.iter().sum::<usize>(), n);
        }
        assert_eq!(chunk_for(37), 16);
    }

    /// SQLite's INSERTs keep no statement journal (a failed statement fails the transaction);
    /// PostgreSQL's are plain.
    #[test]
    fn inserts_begin_as_the_dialect_says() {
        fn sql<D: Dialect>() -> String {
            let mut statement = Statement::<D>::new("");
            write_insert(
                &mut statement,
                "INTO t (a, b) VALUES ",
                [vec![Value::Int(1), Value::Int(2)]].into_iter(),
                "",
            );
            statement.sql
        }
        assert_eq!(
            sql::<consentgate_store::Sqlite>(),
            "INSERT OR FAIL INTO t (a, b) VALUES (?, ?)"
        );
        assert_eq!(
            sql::<consentgate_store::Postgres>(),
            "INSERT INTO t (a, b) VALUES ($1, $2)"
        );
    }
}
