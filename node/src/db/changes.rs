//! The replica's side of sync: reading `crsql_changes` (everything since a peer's watermark, or
//! this node's own new writes for gossip) and merging remote changes into it.
//!
//! Merges run in IMMEDIATE transactions on the writer connection, of at most
//! `MAX_CHANGES_PER_TRANSACTION` changes each; the source's watermark advances with the last
//! one, so it never runs ahead of the data (cr-sqlite aborts the whole statement on an unknown
//! table or column, and we roll back a transaction on any error; batches are validated before
//! any of it, so a bad batch applies nothing).

use changeset::sync::Fetched;
use changeset::{Change, DbVersion, Page, PageLimits, SiteId, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

const CHANGE_COLUMNS: &str = r#""table", pk, cid, val, col_version, db_version, site_id, cl, seq"#;

/// How far this node has pulled `source`'s changes from `peer` (a libp2p peer id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub peer: String,
    pub source: SiteId,
    pub version: DbVersion,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Changes that altered this replica (cr-sqlite's `crsql_rows_impacted()`).
    pub rows_impacted: i64,
}

impl Store {
    /// A page for a syncing peer (its own changes left out), with the db_version through
    /// which it is complete (the peer's next watermark), read in one snapshot so no write can
    /// fall between the two.
    pub fn sync_page(
        &self,
        since: DbVersion,
        requester: SiteId,
        limits: PageLimits,
    ) -> Result<Page, StoreError> {
        self.snapshot_page(since, Some(requester), limits)
    }

    /// Like [`Store::sync_page`], with every change (for HTTP clients without a site id yet).
    pub fn changes_page(&self, since: DbVersion, limits: PageLimits) -> Result<Page, StoreError> {
        self.snapshot_page(since, None, limits)
    }

    fn snapshot_page(
        &self,
        since: DbVersion,
        exclude: Option<SiteId>,
        limits: PageLimits,
    ) -> Result<Page, StoreError> {
        let conn = self.reader()?;
        let tx = conn.0.unchecked_transaction()?;
        let page = page(&tx, SiteId(self.site_id), since, exclude, limits)?;
        tx.commit()?;
        Ok(page)
    }

    /// This node's own writes with `db_version > since` (what gossip publishes).
    pub fn local_changes_since(&self, since: DbVersion) -> Result<Vec<Change>, StoreError> {
        let conn = self.reader()?;
        local_changes_after(&conn.0, since)
    }

    /// The highest db_version of `source` applied here from `peer` (0 when never synced).
    pub fn watermark(&self, peer: &str, source: SiteId) -> Result<DbVersion, StoreError> {
        let conn = self.reader()?;
        let v: Option<i64> = conn
            .0
            .prepare_cached(
                "SELECT version FROM sync_watermarks WHERE peer_id = ?1 AND site_id = ?2",
            )?
            .query_row(params![peer, source.0.to_vec()], |r| r.get(0))
            .optional()?;
        Ok(DbVersion(v.map_or(0, |v| u64::try_from(v).unwrap_or(0))))
    }

    /// Merges `changes` in transactions of at most `MAX_CHANGES_PER_TRANSACTION` (so that each
    /// local db_version replicates whole; see `changeset::validate`). With a watermark, the
    /// last of them also records that everything of its source up to its version is applied: a
    /// crash in between leaves the watermark behind the data, never ahead, and the next round
    /// merges those changes again, which changes nothing.
    pub fn merge(
        &self,
        changes: &[Change],
        watermark: Option<&Watermark>,
    ) -> Result<MergeOutcome, StoreError> {
        let mut chunks: Vec<&[Change]> = changes
            .chunks(changeset::MAX_CHANGES_PER_TRANSACTION)
            .collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut rows_impacted = 0;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let watermark = watermark.filter(|_| i == last);
            rows_impacted += self.write(false, |tx| merge_in(tx, chunk, watermark))?;
        }
        Ok(MergeOutcome { rows_impacted })
    }
}

/// Merges `changes` (and records `watermark`) inside `tx`; returns `crsql_rows_impacted()`.
fn merge_in(
    tx: &rusqlite::Transaction<'_>,
    changes: &[Change],
    watermark: Option<&Watermark>,
) -> Result<i64, StoreError> {
    let mut insert = tx.prepare_cached(&format!(
        "INSERT INTO crsql_changes ({CHANGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?;
    for c in changes {
        insert.execute(params![
            c.table,
            c.pk,
            c.cid,
            SqlValue(&c.val),
            c.col_version,
            // The sender's clock stays out of ours (changeset::validate explains why).
            since_param(changeset::validate::MERGE_DB_VERSION),
            c.site_id.0.to_vec(),
            c.cl,
            c.seq,
        ])?;
    }
    if let Some(w) = watermark {
        tx.prepare_cached(
            "INSERT INTO sync_watermarks (peer_id, site_id, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (peer_id, site_id) DO UPDATE SET version = max(version, excluded.version)",
        )?
        .execute(params![w.peer, w.source.0.to_vec(), since_param(w.version)])?;
    }
    Ok(tx.query_row("SELECT crsql_rows_impacted()", [], |r| r.get(0))?)
}

/// This replica's own changes with `db_version > since`, on `conn` (inside a transaction, its
/// pending changes too).
pub(super) fn local_changes_after(
    conn: &rusqlite::Connection,
    since: DbVersion,
) -> Result<Vec<Change>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHANGE_COLUMNS} FROM crsql_changes
         WHERE db_version > ?1 AND site_id = crsql_site_id() ORDER BY db_version, seq"
    ))?;
    let rows = stmt.query_map([since_param(since)], change_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `crsql_db_version()` on `conn`: the highest committed db_version.
pub(super) fn db_version(conn: &rusqlite::Connection) -> Result<DbVersion, StoreError> {
    let v: i64 = conn.query_row("SELECT crsql_db_version()", [], |r| r.get(0))?;
    Ok(DbVersion(u64::try_from(v).unwrap_or(0)))
}

/// Reads the changes above `since` on `conn` and cuts a page of them with
/// `changeset::sync::page`, the cutter the browser peer and the edge use too. SQL reads whole
/// transactions only: at most `limits.max_changes` rows, or the first transaction whole when
/// it alone is larger.
fn page(
    conn: &rusqlite::Connection,
    source: SiteId,
    since: DbVersion,
    exclude: Option<SiteId>,
    limits: PageLimits,
) -> Result<Page, StoreError> {
    let max = limits.max_changes.max(1);
    let exclude_param = exclude.map(|s| s.0.to_vec());
    let limit = i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHANGE_COLUMNS} FROM crsql_changes
         WHERE db_version > ?1 AND site_id IS NOT ?2 ORDER BY db_version, seq LIMIT ?3"
    ))?;
    let mut changes = stmt
        .query_map(
            params![since_param(since), exclude_param, limit],
            change_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let fetched = if changes.len() <= max {
        let current: i64 = conn.query_row("SELECT crsql_db_version()", [], |r| r.get(0))?;
        Fetched::All {
            current: DbVersion(u64::try_from(current).unwrap_or(0)),
        }
    } else {
        // The row past the limit belongs to a transaction that may go on beyond it.
        let partial = changes[max].db_version;
        if changes[0].db_version == partial {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CHANGE_COLUMNS} FROM crsql_changes
                 WHERE db_version = ?1 AND site_id IS NOT ?2 ORDER BY seq"
            ))?;
            changes = stmt
                .query_map(
                    params![since_param(partial), exclude_param],
                    change_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
        } else {
            changes.retain(|c| c.db_version < partial);
        }
        Fetched::Prefix
    };
    Ok(changeset::sync::page(
        source, changes, since, fetched, limits,
    ))
}

fn since_param(v: DbVersion) -> i64 {
    i64::try_from(v.0).unwrap_or(i64::MAX)
}

struct SqlValue<'a>(&'a Value);

impl rusqlite::ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn change_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    let val = match row.get_ref(3)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    };
    let site: Vec<u8> = row.get(6)?;
    let site_id = SiteId(site.try_into().map_err(|v: Vec<u8>| {
        rusqlite::Error::FromSqlConversionFailure(
            6,
            rusqlite::types::Type::Blob,
            format!("site id of {} bytes", v.len()).into(),
        )
    })?);
    let db_version: i64 = row.get(5)?;
    Ok(Change {
        table: row.get(0)?,
        pk: row.get(1)?,
        cid: row.get(2)?,
        val,
        col_version: row.get(4)?,
        db_version: DbVersion(u64::try_from(db_version).unwrap_or(0)),
        site_id,
        cl: row.get(7)?,
        seq: row.get(8)?,
    })
}
