//! The access log's journal, for a SQLite store: a read's "who read my data" entry is appended
//! to a file of this process (one `write(2)`, no thread hand-off) before the read is answered,
//! and a background flush chains journaled entries into the `access_log` table in batches.
//!
//! Why it is as durable as the table: the profile database runs `synchronous=NORMAL`, where a
//! commit is a `write(2)` to SQLite's WAL file that survives a crash of the process but not of
//! the machine; an entry in the journal has exactly that guarantee. An entry is never answered
//! before it is in the journal; if the journal cannot be written, the read fails.
//!
//! Each store instance writes its own file, `<database>.access-journal-<uuid>`, locked
//! (`flock`) while the instance lives. A file whose lock can be taken belongs to a process that
//! is gone: the next store to open the database chains its entries into the table and deletes
//! it. Chaining a journal records its file name in the table in the same statement, so a file
//! found again (a crash after that commit and before the deletion) is deleted, not chained a
//! second time. Entries hold the subject's pseudonym, never its id, like the table. The chain itself is
//! built only in the database, under its write lock, so replicas never fork it.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// A gated read as journaled: an access-log entry before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub read_at: i64,
    pub pseudonym: String,
    pub caller: String,
    pub enforced_by: String,
    pub purpose: String,
    pub categories: String,
    pub revision: u64,
    pub operation: String,
    pub items: u64,
}

/// Journaled entries taken for chaining, with the file they were read from (deleted once the
/// entries are committed to the table).
pub(crate) struct Batch {
    pub entries: Vec<Entry>,
    path: PathBuf,
    _file: File,
}

impl Batch {
    /// The journal's file name (unique: it ends in a uuid), recorded in `access_log` by the
    /// statement that chains the entries, so that the file found again after a crash before its
    /// deletion is recognised as chained.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// The entries are in the table: the file is no longer needed.
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// The file being appended to, and what it holds.
struct Active {
    file: File,
    path: PathBuf,
    entries: Vec<Entry>,
}

/// This store instance's journal.
pub(crate) struct Journal {
    database: PathBuf,
    active: std::sync::Mutex<Active>,
    /// Batches whose chaining failed, retried first by the next flush.
    stalled: std::sync::Mutex<Vec<Batch>>,
    /// One flush at a time.
    pub flushing: tokio::sync::Mutex<()>,
}

fn prefix(database: &Path) -> String {
    format!(
        "{}.access-journal-",
        database
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    )
}

fn create(database: &Path) -> std::io::Result<(File, PathBuf)> {
    let path = database.with_file_name(format!(
        "{}{}",
        prefix(database),
        uuid::Uuid::now_v7().simple()
    ));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    file.try_lock().map_err(std::io::Error::other)?;
    Ok((file, path))
}

/// The entries of a journal file, in order. A last line cut short (a crash in mid-write) holds
/// no complete entry and is skipped; a damaged line elsewhere is an error.
fn read(file: &File) -> std::io::Result<Vec<Entry>> {
    let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
    let mut entries = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(entry) => entries.push(entry),
            Err(_) if i + 1 == lines.len() => {
                tracing::warn!("access journal: skipping a torn last line");
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("access journal line {}: {e}", i + 1),
                ));
            }
        }
    }
    Ok(entries)
}

impl Journal {
    /// Starts this instance's journal next to `database`.
    pub fn open(database: &Path) -> std::io::Result<Journal> {
        let (file, path) = create(database)?;
        Ok(Journal {
            database: database.to_owned(),
            active: std::sync::Mutex::new(Active {
                file,
                path,
                entries: Vec::new(),
            }),
            stalled: std::sync::Mutex::new(Vec::new()),
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    /// Journals left behind by instances that are gone (their lock could be taken), oldest
    /// first, each with its entries.
    pub fn orphans(database: &Path) -> std::io::Result<Vec<Batch>> {
        let dir = match database.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let prefix = prefix(database);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        // uuid v7 names sort by creation time.
        paths.sort();
        let mut batches = Vec::new();
        for path in paths {
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            if file.try_lock().is_err() {
                continue; // a live instance's
            }
            let entries = read(&file)?;
            batches.push(Batch {
                entries,
                path,
                _file: file,
            });
        }
        Ok(batches)
    }

    /// Appends entries (one write); they are as durable as a committed row once this returns.
    pub fn append(&self, entries: &[Entry]) -> std::io::Result<()> {
        let mut text = String::with_capacity(entries.len() * 320);
        for e in entries {
            text.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        active.file.write_all(text.as_bytes())?;
        active.entries.extend_from_slice(entries);
        Ok(())
    }

    /// What to chain now: stalled batches first, then the active file's entries (appends move to
    /// a fresh file, so that none is lost while these are committed).
    pub fn take(&self) -> std::io::Result<Vec<Batch>> {
        let mut batches: Vec<Batch> = std::mem::take(
            &mut *self
                .stalled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !active.entries.is_empty() {
            let (file, path) = create(&self.database)?;
            let old = std::mem::replace(
                &mut *active,
                Active {
                    file,
                    path,
                    entries: Vec::new(),
                },
            );
            batches.push(Batch {
                entries: old.entries,
                path: old.path,
                _file: old.file,
            });
        }
        Ok(batches)
    }

    /// Batches that could not be chained now, to retry.
    pub fn stall(&self, batches: Vec<Batch>) {
        self.stalled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(batches);
    }
}
