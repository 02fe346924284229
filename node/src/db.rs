//! The node's replica: SQLite with the cr-sqlite extension, the `todos` table made a CRR.
//!
//! One writer connection serialises local writes and merges (SQLite allows one writer anyway);
//! a few reader connections serve pages concurrently thanks to WAL. Every connection loads the
//! embedded extension and calls `crsql_finalize()` before it closes. All calls block: async
//! callers run them on the blocking pool.

mod changes;
mod extension;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use app::Todo;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

pub use changes::{MergeOutcome, Watermark};
pub use extension::{CRSQLITE_VERSION, CRSQLITE_VERSION_NUMBER};

/// File name of the database inside DATA_DIR.
pub const DB_FILE: &str = "todos.db";
/// Reader connections: enough for a 2-core machine to keep both cores busy rendering pages.
const READERS: usize = 4;
/// How long a connection waits for a lock held by another before giving up with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The node's own tables; the replicated one, `todos`, is created from
/// `changeset::TableSchema::todos()` (see [`schema_sql`]).
const LOCAL_TABLES: &str = "
-- How far this node has pulled from each peer (anti-entropy): keyed by the peer's libp2p id,
-- which its connection authenticates, and the site id it claims, so a peer that claims another
-- node's site can only move its own entry. Local bookkeeping, not replicated.
CREATE TABLE IF NOT EXISTS sync_watermarks(
    peer_id TEXT NOT NULL,
    site_id BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (peer_id, site_id)
) WITHOUT ROWID;
";

/// The replicated table as the change engine (and so the browser peer) defines it, made a
/// cr-sqlite CRR, then the node's local tables.
fn schema_sql() -> String {
    let todos = changeset::TableSchema::todos();
    format!(
        "{};\nSELECT crsql_as_crr('{}');\n{LOCAL_TABLES}",
        todos.create_table_sql(),
        todos.name
    )
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no todo with id {0:?}")]
    NotFound(String),
    /// A local write that would emit changes no peer accepts (see `changeset::validate`).
    #[error("{0}")]
    Refused(changeset::InvalidChange),
    #[error("cr-sqlite extension: {0}")]
    Extension(String),
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("a database lock was poisoned by a panic")]
    Poisoned,
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// A connection with cr-sqlite loaded; finalizes the extension when dropped.
struct CrConnection(Connection);

impl Drop for CrConnection {
    fn drop(&mut self) {
        if let Err(error) = self.0.query_row("SELECT crsql_finalize()", [], |_| Ok(())) {
            tracing::warn!(%error, "crsql_finalize failed");
        }
    }
}

/// Facts about this replica for /health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaInfo {
    pub site_id: String,
    pub db_version: i64,
    pub todos: i64,
}

pub struct Store {
    writer: Mutex<CrConnection>,
    readers: Vec<Mutex<CrConnection>>,
    next_reader: AtomicUsize,
    site_id: [u8; 16],
    path: PathBuf,
    /// The db_version of the latest committed local write: gossip waits on it.
    local_writes: tokio::sync::watch::Sender<u64>,
    /// The replica's db_version after its latest commit, local or merged: what a page shows
    /// can only have changed when this has, so pages are tagged with it (see http/etag.rs).
    committed: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// Opens (creating if needed) the replica in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Extension(format!("creating data dir {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(DB_FILE);
        let extension = extension::path(data_dir)?;

        let writer = open_connection(&path, &extension, true)?;
        writer.0.execute_batch(&schema_sql())?;
        check_version(&writer.0)?;
        let site_id: Vec<u8> = writer
            .0
            .query_row("SELECT crsql_site_id()", [], |r| r.get(0))?;
        let site_id: [u8; 16] = site_id.try_into().map_err(|v: Vec<u8>| {
            StoreError::Extension(format!("site id has {} bytes, expected 16", v.len()))
        })?;
        let db_version: i64 = writer
            .0
            .query_row("SELECT crsql_db_version()", [], |r| r.get(0))?;
        let readers = (0..READERS)
            .map(|_| open_connection(&path, &extension, false).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            site_id,
            path,
            local_writes: tokio::sync::watch::Sender::new(u64::try_from(db_version).unwrap_or(0)),
            committed: tokio::sync::watch::Sender::new(u64::try_from(db_version).unwrap_or(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn site_id(&self) -> [u8; 16] {
        self.site_id
    }

    /// Changes whenever a local write commits; holds that write's db_version.
    pub fn subscribe_local_writes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.local_writes.subscribe()
    }

    /// The replica's db_version as of its latest commit, without asking SQLite.
    pub fn committed_version(&self) -> u64 {
        *self.committed.borrow()
    }

    fn reader(&self) -> Result<MutexGuard<'_, CrConnection>, StoreError> {
        // Prefer an idle reader; otherwise queue on the next one in turn.
        for reader in &self.readers {
            if let Ok(guard) = reader.try_lock() {
                return Ok(guard);
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock().map_err(|_| StoreError::Poisoned)
    }

    fn writer(&self) -> Result<MutexGuard<'_, CrConnection>, StoreError> {
        self.writer.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Every todo, oldest first.
    pub fn list(&self) -> Result<Vec<Todo>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.0.prepare_cached(
            "SELECT id, title, completed, created_at FROM todos ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], todo_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, id: &str) -> Result<Todo, StoreError> {
        let conn = self.reader()?;
        conn.0
            .prepare_cached("SELECT id, title, completed, created_at FROM todos WHERE id = ?1")?
            .query_row([id], todo_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))
    }

    pub fn info(&self) -> Result<ReplicaInfo, StoreError> {
        let conn = self.reader()?;
        let (db_version, todos) = conn.0.query_row(
            "SELECT crsql_db_version(), (SELECT count(*) FROM todos)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(ReplicaInfo {
            site_id: hex::encode_upper(self.site_id),
            db_version,
            todos,
        })
    }

    /// Adds a todo, with a fresh UUIDv7 id unless the client chose one. A client-chosen id
    /// that exists already leaves that todo as it is (the post was a retry), so adding is
    /// idempotent. Returns the todo as stored.
    pub fn add(
        &self,
        title: &str,
        created_at: i64,
        client_id: Option<String>,
    ) -> Result<Todo, StoreError> {
        let todo = Todo {
            id: client_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            title: title.to_owned(),
            completed: false,
            created_at,
        };
        self.write(true, |tx| {
            tx.prepare_cached(
                "INSERT INTO todos (id, title, completed, created_at) VALUES (?1, ?2, 0, ?3)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![todo.id, todo.title, todo.created_at])?;
            Ok(())
        })?;
        Ok(todo)
    }

    pub fn set_completed(&self, id: &str, completed: bool) -> Result<(), StoreError> {
        self.update_one(
            "UPDATE todos SET completed = ?2 WHERE id = ?1",
            params![id, i64::from(completed)],
            id,
        )
    }

    pub fn set_title(&self, id: &str, title: &str) -> Result<(), StoreError> {
        self.update_one(
            "UPDATE todos SET title = ?2 WHERE id = ?1",
            params![id, title],
            id,
        )
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.update_one("DELETE FROM todos WHERE id = ?1", params![id], id)
    }

    /// Deletes every completed todo; returns how many. A delete is one change, so this runs in
    /// transactions of at most `MAX_CHANGES_PER_TRANSACTION` rows, each of which replicates
    /// whole (see `changeset::validate`); a crash part-way leaves the rest for the next click.
    pub fn clear_completed(&self) -> Result<usize, StoreError> {
        let chunk = i64::try_from(changeset::MAX_CHANGES_PER_TRANSACTION).unwrap_or(i64::MAX);
        let mut cleared = 0;
        loop {
            let deleted = self.write(true, |tx| {
                Ok(tx
                    .prepare_cached(
                        "DELETE FROM todos WHERE id IN
                         (SELECT id FROM todos WHERE completed = 1 LIMIT ?1)",
                    )?
                    .execute([chunk])?)
            })?;
            cleared += deleted;
            if deleted == 0 {
                return Ok(cleared);
            }
        }
    }

    fn update_one(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        id: &str,
    ) -> Result<(), StoreError> {
        self.write(true, |tx| {
            match tx.prepare_cached(sql)?.execute(params)? {
                0 => Err(StoreError::NotFound(id.to_owned())),
                _ => Ok(()),
            }
        })
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer; commits only if it returns Ok.
    /// With synchronous=FULL, a write that returned is on disk and survives a crash. A `local`
    /// write (one made here, not merged from a peer) is checked before it commits — the changes
    /// it made must carry counters every peer accepts — and announced to gossip after.
    fn write<T>(
        &self,
        local: bool,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let committed = if local {
            Some(changes::db_version(&tx)?)
        } else {
            None
        };
        let out = f(&tx)?;
        if let Some(committed) = committed {
            changeset::local_write_in_bounds(&changes::local_changes_after(&tx, committed)?)
                .map_err(StoreError::Refused)?;
        }
        tx.commit()?;
        let db_version: i64 = conn
            .0
            .query_row("SELECT crsql_db_version()", [], |r| r.get(0))?;
        let db_version = u64::try_from(db_version).unwrap_or(0);
        self.committed.send_if_modified(|v| {
            let advanced = *v != db_version;
            *v = db_version;
            advanced
        });
        if local {
            self.local_writes.send_replace(db_version);
        }
        Ok(out)
    }
}

fn todo_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Todo> {
    Ok(Todo {
        id: row.get(0)?,
        title: row.get(1)?,
        completed: row.get::<_, i64>(2)? != 0,
        created_at: row.get(3)?,
    })
}

fn open_connection(
    path: &Path,
    extension: &Path,
    writer: bool,
) -> Result<CrConnection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    if writer {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "could not switch the database to WAL");
        }
    }
    // FULL: a commit is fsynced before it returns, so an acknowledged write survives power loss.
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(open_error)?;
    // SAFETY: the extension is our own embedded, checksummed cr-sqlite build; loading is
    // switched off again straight after, so SQL cannot load anything else.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&conn)?;
        conn.load_extension(extension, Some(extension::ENTRY_POINT))
            .map_err(|e| StoreError::Extension(format!("loading: {e}")))?;
    }
    Ok(CrConnection(conn))
}

fn check_version(conn: &Connection) -> Result<(), StoreError> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT value FROM crsql_master WHERE key = 'crsqlite_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match found {
        Some(v) if v == CRSQLITE_VERSION_NUMBER => Ok(()),
        other => Err(StoreError::Extension(format!(
            "this node needs cr-sqlite {CRSQLITE_VERSION} ({CRSQLITE_VERSION_NUMBER}); the database or extension reports {other:?}"
        ))),
    }
}
