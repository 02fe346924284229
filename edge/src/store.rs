//! The edge's state in its Durable Object's SQLite storage.
//!
//! - `changes`: the replica's change log as rows, one per clock — exactly its `crsql_changes`
//!   listing (clocks and values), keyed by (table, pk, cid). Loading reads them all and rebuilds
//!   the replica with `changeset::Replica::from_changes`; a write or a merge rewrites only the
//!   rows of the primary keys it touched (`Replica::rows_of`), so it costs O(its changes), not
//!   O(the list).
//! - `meta`: the edge's site id (made once, random).
//! - `nodes`: per node URL, the node's site id, how far the edge has pulled from it and how
//!   far it has pushed to it.
//!
//! Everything here is plain data and SQL text, so it is tested natively; the worker runs the
//! statements (`worker_main`). Blobs are kept as hex text and values as the change JSON's
//! `["type", value]`, which round-trip through JavaScript exactly (counters stay below 2^53 by
//! the changeset rules).

use changeset::{Change, DbVersion, SiteId, Value};
use serde::{Deserialize, Serialize};

/// The tables, created when missing (one statement each).
pub const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS changes(
        tbl TEXT NOT NULL, pk TEXT NOT NULL, cid TEXT NOT NULL, val TEXT NOT NULL,
        col_version INTEGER NOT NULL, db_version INTEGER NOT NULL, site_id TEXT NOT NULL,
        cl INTEGER NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (tbl, pk, cid)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS nodes(url TEXT PRIMARY KEY NOT NULL, site_id TEXT,
        pulled_up_to INTEGER NOT NULL DEFAULT 0, pushed_up_to INTEGER NOT NULL DEFAULT 0)",
];

pub const SELECT_CHANGES: &str =
    "SELECT tbl, pk, cid, val, col_version, db_version, site_id, cl, seq FROM changes";
pub const DELETE_ROW: &str = "DELETE FROM changes WHERE tbl = ? AND pk = ?";
pub const INSERT_CHANGE: &str = "INSERT INTO changes
    (tbl, pk, cid, val, col_version, db_version, site_id, cl, seq)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
pub const SELECT_SITE: &str = "SELECT value FROM meta WHERE key = 'site_id'";
pub const INSERT_SITE: &str = "INSERT INTO meta(key, value) VALUES ('site_id', ?)";
pub const SELECT_NODES: &str = "SELECT url, site_id, pulled_up_to, pushed_up_to FROM nodes";
pub const UPSERT_NODE: &str = "INSERT INTO nodes(url, site_id, pulled_up_to, pushed_up_to)
    VALUES (?, ?, ?, ?) ON CONFLICT (url) DO UPDATE SET site_id = excluded.site_id,
    pulled_up_to = excluded.pulled_up_to, pushed_up_to = excluded.pushed_up_to";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRow {
    pub tbl: String,
    pub pk: String,
    pub cid: String,
    pub val: String,
    pub col_version: i64,
    pub db_version: i64,
    pub site_id: String,
    pub cl: i64,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub url: String,
    pub site_id: Option<String>,
    pub pulled_up_to: i64,
    pub pushed_up_to: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("stored change row is damaged: {0}")]
pub struct DamagedRow(String);

impl From<&Change> for ChangeRow {
    fn from(c: &Change) -> Self {
        Self {
            tbl: c.table.clone(),
            pk: hex::encode(&c.pk),
            cid: c.cid.clone(),
            val: serde_json::to_string(&c.val).unwrap_or_else(|_| "[\"null\",null]".into()),
            col_version: c.col_version,
            db_version: i64::try_from(c.db_version.0).unwrap_or(i64::MAX),
            site_id: c.site_id.to_string(),
            cl: c.cl,
            seq: c.seq,
        }
    }
}

impl TryFrom<ChangeRow> for Change {
    type Error = DamagedRow;

    fn try_from(r: ChangeRow) -> Result<Self, DamagedRow> {
        let damaged = |what: &str, e: &dyn std::fmt::Display| DamagedRow(format!("{what}: {e}"));
        Ok(Change {
            table: r.tbl,
            pk: hex::decode(&r.pk).map_err(|e| damaged("pk", &e))?,
            cid: r.cid,
            val: serde_json::from_str::<Value>(&r.val).map_err(|e| damaged("val", &e))?,
            col_version: r.col_version,
            db_version: DbVersion(
                u64::try_from(r.db_version).map_err(|e| damaged("db_version", &e))?,
            ),
            site_id: r.site_id.parse().map_err(|e| damaged("site_id", &e))?,
            cl: r.cl,
            seq: r.seq,
        })
    }
}

/// The bindings of [`INSERT_CHANGE`], in order, as JSON values (the worker converts them).
pub fn insert_bindings(row: &ChangeRow) -> [serde_json::Value; 9] {
    [
        row.tbl.clone().into(),
        row.pk.clone().into(),
        row.cid.clone().into(),
        row.val.clone().into(),
        row.col_version.into(),
        row.db_version.into(),
        row.site_id.clone().into(),
        row.cl.into(),
        row.seq.into(),
    ]
}

/// A site id for a new edge from 16 random bytes.
pub fn new_site_id(random: [u8; 16]) -> SiteId {
    SiteId(random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use changeset::{Replica, TableSchema, Write};

    #[test]
    fn changes_round_trip_through_rows() {
        let mut r = Replica::new(SiteId([3; 16]), vec![TableSchema::todos()]);
        r.write(&[Write::Insert {
            table: "todos".into(),
            pk: vec![Value::Text("a".into())],
            values: vec![("title".into(), Value::Text("ünïcode \"q\"".into()))],
        }])
        .expect("write");
        let rows: Vec<ChangeRow> = r.changes().iter().map(ChangeRow::from).collect();
        let back: Vec<Change> = rows
            .into_iter()
            .map(Change::try_from)
            .collect::<Result<_, _>>()
            .expect("rows read back");
        assert_eq!(back, r.changes());
        let restored =
            Replica::from_changes(r.site_id(), vec![TableSchema::todos()], &back).expect("loads");
        assert_eq!(restored.rows("todos").ok(), r.rows("todos").ok());
        let mut bad = ChangeRow::from(&r.changes()[0]);
        bad.pk = "zz".into();
        assert!(Change::try_from(bad).is_err());
    }
}
