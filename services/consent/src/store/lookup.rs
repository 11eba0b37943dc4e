//! What a run of consent writes reads before it writes anything: the idempotency records of
//! its keys, its subjects' tombstones, the source records its imports name, the ledger's head,
//! its subjects' rows and their link groups, and the current records of subjects with imports.
//! All of it is one statement for the whole run, on both backends: a `UNION ALL` of the same
//! indexed lookups, each branch tagged with a number and filling the columns of its kind, each
//! list one parameter (a JSON array, [`JsonList`]). Why: read one table at a time this was
//! eight round trips before a write wrote anything (to SQLite's worker thread, each a wake-up of
//! another thread; to PostgreSQL over its socket). And with a list's every value a parameter of
//! its own, the statement's text changed with the lists' lengths: PostgreSQL planned it anew on
//! every run (0.7–2 ms for the union, so it once read one kind at a time instead), and SQLite
//! bound each subject six times. With one parameter per list the text never changes: each
//! connection prepares it once, and PostgreSQL keeps one generic plan (BENCHMARKS.md, "twelfth"
//! and "seventeenth look").

use super::StoreError;
use super::batch::{JsonList, Statement};
use super::handles;
use super::sql::subject_of;
use crate::ledger::keys::LedgerKeys;
use crate::model::{Change, ImportOrigin, SubjectKey, Write};
use consentgate_store::{Dialect, Tx};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// An idempotency record as the lookup read it.
pub(super) struct Remembered {
    pub(super) fingerprint: Vec<u8>,
    /// When its key was first used (Unix microseconds): the idempotency window runs from here.
    pub(super) created_at: i64,
    pub(super) revision: i64,
    pub(super) records_deleted: Option<i64>,
}

/// A current record's key: subject, purpose, channel and scope (empty when none).
pub(super) type CurrentKey = (String, String, String, String);

/// What a run's writes are decided and written from.
#[derive(Default)]
pub(super) struct Lookup {
    /// The idempotency records of the run's live writes, by handle ([`handles::handle_of`]).
    pub(super) remembered: HashMap<Vec<u8>, Remembered>,
    /// The tombstones of the run's subjects that exist: those subjects were erased.
    pub(super) erased: BTreeSet<Vec<u8>>,
    /// Source records imported before, by import handle: their revision and stored fingerprint.
    pub(super) imported: HashMap<Vec<u8>, (i64, Vec<u8>)>,
    /// The ledger's last entry, sequence number and hash; `None` for an empty ledger.
    pub(super) head: Option<(i64, Vec<u8>)>,
    /// The rows of the run's subjects and of every key linked with them: the pseudonym key
    /// (none for a row written before migration 0015 gave it one) and the latest place in the
    /// subject's order (`order_micros`).
    pub(super) subjects: HashMap<String, (Option<Vec<u8>>, i64)>,
    /// Links (device, person) with a run's subject on either side, or its person's devices.
    links: Vec<(String, String)>,
    /// The current records of the subjects with imports in the run: order and revision.
    pub(super) current: BTreeMap<CurrentKey, (i64, i64)>,
    /// Each write's handle, in the run's order: its idempotency handle, or for an import its
    /// source record's ([`handles::import_key`]). Computed once for the lookup and the
    /// decisions.
    pub(super) handles: Vec<Vec<u8>>,
    /// Each write's subject's tombstone, in the run's order.
    pub(super) tombstones: Vec<Vec<u8>>,
}

/// The origin of an imported record's write (`None` for everything recorded live).
pub(super) fn import_of(write: &Write) -> Option<&ImportOrigin> {
    match &write.change {
        Change::Consent(c) => c.imported.as_ref(),
        _ => None,
    }
}

/// The lists one statement looks up, each of distinct values.
#[derive(Default)]
struct Lists {
    /// Idempotency handles of live writes (an import is remembered by its source record).
    handles: BTreeSet<Vec<u8>>,
    tombstones: BTreeSet<Vec<u8>>,
    imports: BTreeSet<Vec<u8>>,
    subjects: BTreeSet<String>,
    imported_subjects: BTreeSet<String>,
}

/// Reads what `run` needs, in one statement ([`read_in_one_statement`]).
pub(super) async fn read<D: Dialect>(
    tx: &mut Tx<'_>,
    keys: &LedgerKeys,
    run: &[&Write],
) -> Result<Lookup, StoreError> {
    let mut lookup = Lookup::default();
    let mut lists = Lists::default();
    for write in run {
        let subject = write.change.subject();
        let tombstone = keys.tombstone(subject);
        lists.tombstones.insert(tombstone.clone());
        lookup.tombstones.push(tombstone);
        lists.subjects.insert(subject.storage());
        let handle = match import_of(write) {
            Some(origin) => {
                lists.imported_subjects.insert(subject.storage());
                let handle = handles::import_key(origin);
                lists.imports.insert(handle.clone());
                handle
            }
            None => {
                let handle = handles::handle_of(write);
                lists.handles.insert(handle.clone());
                handle
            }
        };
        lookup.handles.push(handle);
    }
    read_in_one_statement::<D>(tx, lists, &mut lookup).await?;
    Ok(lookup)
}

/// The columns every branch fills, with their types: the tag of the branch, then two byte
/// strings, four texts and three integers, each branch using those its kind needs.
const COLUMNS: [(&str, &str); 10] = [
    ("part", "BIGINT"),
    ("b1", "BYTEA"),
    ("b2", "BYTEA"),
    ("t1", "TEXT"),
    ("t2", "TEXT"),
    ("t3", "TEXT"),
    ("t4", "TEXT"),
    ("i1", "BIGINT"),
    ("i2", "BIGINT"),
    ("i3", "BIGINT"),
];

/// The branches' tags.
const IDEMPOTENCY: i64 = 0;
const TOMBSTONE: i64 = 1;
const IMPORTED: i64 = 2;
const HEAD: i64 = 3;
const LINK: i64 = 4;
const SUBJECT: i64 = 5;
const CURRENT: i64 = 6;

/// One lookup statement for `lists`, of any length, its rows sorted into `lookup`.
async fn read_in_one_statement<D: Dialect>(
    tx: &mut Tx<'_>,
    lists: Lists,
    lookup: &mut Lookup,
) -> Result<(), StoreError> {
    // Each list is one parameter, a JSON array the statement unpacks (`json_each`): the text
    // stays the same whatever the lists hold, so it is prepared once for runs of any length,
    // and SQLite binds ten values, not one per entry per branch (the subjects' list appears
    // six times): a quarter of a bulk import's time went to this lookup (BENCHMARKS.md).
    let handles = JsonList::bytes(lists.handles);
    let tombstones = JsonList::bytes(lists.tombstones);
    let imports = JsonList::bytes(lists.imports);
    let subjects = JsonList::texts(lists.subjects);
    let imported_subjects = JsonList::texts(lists.imported_subjects);

    let mut s = Statement::<D>::new("");
    // The persons the subjects are linked to (a subject that is no device is its own person).
    let persons = |s: &mut Statement<D>| {
        s.in_open()
            .push("subject FROM links WHERE device")
            .in_json(&subjects)
            .in_close();
    };
    branch(
        &mut s,
        IDEMPOTENCY,
        &[
            ("b1", "handle"),
            ("b2", "fingerprint"),
            ("i1", "created_at"),
            ("i2", "revision"),
            ("i3", "records_deleted"),
        ],
        "idempotency WHERE handle",
    );
    s.in_json(&handles);
    branch(
        &mut s,
        TOMBSTONE,
        &[("b1", "tombstone")],
        "tombstones WHERE tombstone",
    );
    s.in_json(&tombstones);
    branch(
        &mut s,
        IMPORTED,
        &[("b1", "handle"), ("b2", "fingerprint"), ("i2", "revision")],
        "imported WHERE handle",
    );
    s.in_json(&imports);
    branch(
        &mut s,
        HEAD,
        &[("b1", "hash"), ("i1", "seq")],
        "ledger WHERE seq = (SELECT MAX(seq) FROM ledger)",
    );
    // Links: the subjects' own (as device or as person), and their persons' other devices.
    let link = [("t1", "device"), ("t2", "subject")];
    branch(&mut s, LINK, &link, "links WHERE device");
    s.in_json(&subjects);
    branch(&mut s, LINK, &link, "links WHERE subject");
    s.in_json(&subjects);
    branch(&mut s, LINK, &link, "links WHERE subject");
    persons(&mut s);
    // Subjects' rows: the subjects, their persons, and the devices of either.
    let subject = [("b1", "key"), ("t1", "subject"), ("i1", "order_micros")];
    branch(&mut s, SUBJECT, &subject, "subjects WHERE subject");
    s.in_json(&subjects);
    branch(&mut s, SUBJECT, &subject, "subjects WHERE subject");
    persons(&mut s);
    branch(&mut s, SUBJECT, &subject, "subjects WHERE subject");
    s.in_open()
        .push("device FROM links WHERE subject")
        .in_json(&subjects)
        .in_close();
    branch(&mut s, SUBJECT, &subject, "subjects WHERE subject");
    s.in_open().push("device FROM links WHERE subject");
    persons(&mut s);
    s.in_close();
    branch(
        &mut s,
        CURRENT,
        &[
            ("t1", "subject"),
            ("t2", "purpose"),
            ("t3", "channel"),
            ("t4", "scope"),
            ("i1", "order_micros"),
            ("i2", "revision"),
        ],
        "consent_current WHERE subject",
    );
    s.in_json(&imported_subjects);

    for row in s.fetch_all(tx).await? {
        lookup.absorb(&row)?;
    }
    Ok(())
}

/// Appends ` UNION ALL ` (unless first) and `SELECT <tag>, <columns> FROM <from>`: the named
/// columns from the table, every other one a typed NULL (PostgreSQL types a `UNION`'s columns
/// from its branches, and an untyped NULL inside a subquery would be text).
fn branch<D: Dialect>(s: &mut Statement<D>, tag: i64, columns: &[(&str, &str)], from: &str) {
    if !s.is_empty() {
        s.push(" UNION ALL ");
    }
    s.push(&format!("SELECT CAST({tag} AS BIGINT) AS part"));
    for (name, ty) in &COLUMNS[1..] {
        match columns.iter().find(|(c, _)| c == name) {
            Some((_, expression)) => s.push(&format!(", {expression} AS {name}")),
            None => s.push(&format!(", CAST(NULL AS {ty}) AS {name}")),
        };
    }
    s.push(" FROM ").push(from);
}

impl Lookup {
    /// Sorts one row of a lookup statement into its place, by the tag of its branch.
    fn absorb(&mut self, row: &sqlx::any::AnyRow) -> Result<(), StoreError> {
        match row.get::<i64, _>(0) {
            IDEMPOTENCY => {
                self.remembered.insert(
                    row.get(1),
                    Remembered {
                        fingerprint: row.get(2),
                        created_at: row.get(7),
                        revision: row.get(8),
                        records_deleted: row.get(9),
                    },
                );
            }
            TOMBSTONE => {
                self.erased.insert(row.get(1));
            }
            IMPORTED => {
                self.imported.insert(row.get(1), (row.get(8), row.get(2)));
            }
            HEAD => self.head = Some((row.get(7), row.get(1))),
            LINK => {
                let link: (String, String) = (row.get(3), row.get(4));
                if !self.links.contains(&link) {
                    self.links.push(link);
                }
            }
            SUBJECT => {
                self.subjects.insert(row.get(3), (row.get(1), row.get(7)));
            }
            CURRENT => {
                self.current.insert(
                    (row.get(3), row.get(4), row.get(5), row.get(6)),
                    (row.get(7), row.get(8)),
                );
            }
            other => {
                return Err(StoreError::GroupCommitFailed(format!(
                    "the run's lookup returned a row of unknown kind {other}"
                )));
            }
        }
        Ok(())
    }

    /// The person `subject`'s device is linked to, or `subject` itself.
    fn person_of<'a>(&'a self, subject: &'a str) -> &'a str {
        self.links
            .iter()
            .find(|(device, _)| device == subject)
            .map_or(subject, |(_, person)| person.as_str())
    }

    /// `subject`'s link group (as `sql::link_group` finds one subject's): the subject, the
    /// person its device is linked to, and that person's devices.
    pub(super) fn group_of(&self, subject: &str) -> Result<Vec<SubjectKey>, StoreError> {
        let person = self.person_of(subject);
        let mut group = vec![subject_of(subject)?];
        if person != subject {
            group.push(subject_of(person)?);
        }
        for (device, _) in self.links.iter().filter(|(_, p)| p == person) {
            let device = subject_of(device)?;
            if !group.contains(&device) {
                group.push(device);
            }
        }
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_group_is_the_subject_its_person_and_the_persons_devices() {
        let person = SubjectKey::Subject("p".into());
        let phone = SubjectKey::Device("phone".into());
        let laptop = SubjectKey::Device("laptop".into());
        let lookup = Lookup {
            links: vec![
                (phone.storage(), person.storage()),
                (laptop.storage(), person.storage()),
            ],
            ..Lookup::default()
        };
        let group = lookup.group_of(&phone.storage()).expect("a group");
        assert_eq!(group, [phone.clone(), person.clone(), laptop.clone()]);
        let group = lookup.group_of(&person.storage()).expect("a group");
        assert_eq!(group, [person, phone, laptop]);
        let alone = SubjectKey::Subject("q".into());
        assert_eq!(lookup.group_of(&alone.storage()).expect("a group"), [alone]);
    }
}
