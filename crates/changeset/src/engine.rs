//! An in-memory replica that writes and merges exactly as cr-sqlite 0.16.3 does (spec §3, §5,
//! §6), for peers that cannot load the extension (the browser, the edge).
//!
//! State per table: the base rows (values stored with column affinity) and the clocks — per
//! (row, column) `(col_version, db_version, seq, site)`, plus the optional sentinel clock `-1`
//! whose col_version is the row's causal length. `changes()` reads them back as
//! `crsql_changes` rows. A batch of local writes or merges is one transaction: it either
//! applies whole or, on any error, leaves the replica as it was.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::affinity::Affinity;
use crate::change::{Change, SENTINEL_CID};
use crate::pk::{PkError, pack_columns, unpack_columns};
use crate::value::{DbVersion, SiteId, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("no table {0:?}")]
    UnknownTable(String),
    #[error("table {table:?} has no column {column:?}")]
    UnknownColumn { table: String, column: String },
    #[error("NOT NULL constraint failed: {table}.{column}")]
    NotNull { table: String, column: String },
    #[error("UNIQUE constraint failed: {table} already has that primary key")]
    Duplicate { table: String },
    #[error("no row with that primary key in {0}")]
    NoRow(String),
    #[error("primary key: {0}")]
    Pk(#[from] PkError),
    #[error("primary key of {table} has {expected} columns, got {got}")]
    PkArity {
        table: String,
        expected: usize,
        got: usize,
    },
    /// A local write whose changes peers would refuse (see [`crate::validate`]).
    #[error("{0}")]
    Refused(#[from] crate::validate::InvalidChange),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// As written in CREATE TABLE (`TEXT`, `INTEGER`, ...).
    pub declared_type: String,
    pub affinity: Affinity,
    pub not_null: bool,
    pub default: Value,
}

impl Column {
    /// A column with a declared SQL type (affinity follows SQLite's rules).
    pub fn new(name: &str, declared_type: &str, not_null: bool, default: Value) -> Self {
        Self {
            name: name.to_owned(),
            declared_type: declared_type.to_owned(),
            affinity: Affinity::of_declared_type(declared_type),
            not_null,
            default,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub name: String,
    /// Primary-key columns, in declaration order.
    pub pk: Vec<Column>,
    /// The other columns, in declaration order.
    pub columns: Vec<Column>,
}

impl TableSchema {
    pub(crate) fn column(&self, name: &str) -> Result<(usize, &Column), EngineError> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
            .ok_or_else(|| EngineError::UnknownColumn {
                table: self.name.clone(),
                column: name.to_owned(),
            })
    }

    /// `CREATE TABLE IF NOT EXISTS` for this schema: what a SQLite replica (the node, the
    /// oracle) creates, so the table is defined in one place, here.
    pub fn create_table_sql(&self) -> String {
        let column = |c: &Column| {
            let mut sql = format!("{} {}", c.name, c.declared_type);
            if c.not_null {
                sql.push_str(" NOT NULL");
            }
            if c.default != Value::Null {
                sql.push_str(&format!(" DEFAULT {}", sql_literal(&c.default)));
            }
            sql
        };
        let mut parts: Vec<String> = self.pk.iter().chain(&self.columns).map(column).collect();
        let pk: Vec<&str> = self.pk.iter().map(|c| c.name.as_str()).collect();
        parts.push(format!("PRIMARY KEY ({})", pk.join(", ")));
        format!(
            "CREATE TABLE IF NOT EXISTS {}({})",
            self.name,
            parts.join(", ")
        )
    }

    /// The app's table: `todos(id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL DEFAULT '',
    /// completed INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL DEFAULT 0)`.
    pub fn todos() -> Self {
        Self {
            name: "todos".into(),
            pk: vec![Column::new("id", "TEXT", true, Value::Null)],
            columns: vec![
                Column::new("title", "TEXT", true, Value::Text(String::new())),
                Column::new("completed", "INTEGER", true, Value::Integer(0)),
                Column::new("created_at", "INTEGER", true, Value::Integer(0)),
            ],
        }
    }
}

/// A value as an SQL literal (for DEFAULT clauses).
fn sql_literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Value::Blob(b) => format!(
            "X'{}'",
            b.iter()
                .map(|byte| format!("{byte:02X}"))
                .collect::<String>()
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub col_version: i64,
    pub db_version: u64,
    pub seq: i64,
    pub site: SiteId,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct RowState {
    pk_values: Vec<Value>,
    /// Base-table values in column order; `None` when the row does not exist.
    values: Option<Vec<Value>>,
    sentinel: Option<Clock>,
    clocks: BTreeMap<String, Clock>,
}

impl RowState {
    fn local_cl(&self) -> i64 {
        match (&self.sentinel, self.clocks.is_empty()) {
            (Some(s), _) => s.col_version,
            (None, false) => 1,
            (None, true) => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
struct TableState {
    /// Keyed by the packed pk, which matches typed equality like cr-sqlite's lookaside.
    rows: BTreeMap<Vec<u8>, RowState>,
}

/// One replica's state. Cheap to clone (used to make batches atomic).
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    site_id: SiteId,
    schema: Vec<TableSchema>,
    tables: BTreeMap<String, TableState>,
    /// The connection's cached db_version. cr-sqlite's commit hook sets it to the transaction's
    /// pending version even when nothing was pending, which means "read max(db_version) of the
    /// clocks again"; an UPDATE that changed nothing still takes a version (see `local_update`).
    cached_db_version: Option<u64>,
    merge_equal_values: bool,
}

/// A local write, as the app issues it.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// INSERT of a new row (fails if the pk exists); columns not named get their defaults.
    Insert {
        table: String,
        pk: Vec<Value>,
        values: Vec<(String, Value)>,
    },
    /// INSERT … ON CONFLICT DO UPDATE SET the named columns.
    Upsert {
        table: String,
        pk: Vec<Value>,
        values: Vec<(String, Value)>,
    },
    /// UPDATE of an existing row (a missing row changes nothing, like SQL).
    Update {
        table: String,
        pk: Vec<Value>,
        values: Vec<(String, Value)>,
    },
    Delete {
        table: String,
        pk: Vec<Value>,
    },
}

impl Write {
    /// The table and primary key the write names.
    fn target(&self) -> (&str, &[Value]) {
        match self {
            Write::Insert { table, pk, .. }
            | Write::Upsert { table, pk, .. }
            | Write::Update { table, pk, .. }
            | Write::Delete { table, pk } => (table, pk),
        }
    }
}

/// Pending state of one transaction: cr-sqlite's `next_db_version` and `seq` (spec §3, §6).
struct Tx {
    committed: u64,
    pending: Option<u64>,
    seq: i64,
}

impl Tx {
    /// `max(committed + 1, pending, v)`, which also raises pending for the rest of the tx.
    fn next(&mut self, v: u64) -> u64 {
        let n = (self.committed + 1).max(self.pending.unwrap_or(0)).max(v);
        self.pending = Some(n);
        n
    }

    fn next_seq(&mut self) -> i64 {
        let s = self.seq;
        self.seq += 1;
        s
    }
}

impl Replica {
    pub fn new(site_id: SiteId, schema: Vec<TableSchema>) -> Self {
        let tables = schema
            .iter()
            .map(|t| (t.name.clone(), TableState::default()))
            .collect();
        Self {
            site_id,
            schema,
            tables,
            cached_db_version: None,
            merge_equal_values: false,
        }
    }

    /// cr-sqlite's `merge-equal-values` setting: break ties of equal values by site id.
    pub fn set_merge_equal_values(&mut self, on: bool) {
        self.merge_equal_values = on;
    }

    pub fn site_id(&self) -> SiteId {
        self.site_id
    }

    pub fn schema(&self) -> &[TableSchema] {
        &self.schema
    }

    /// `crsql_db_version()`: the highest committed db_version.
    pub fn db_version(&self) -> DbVersion {
        DbVersion(
            self.cached_db_version
                .unwrap_or_else(|| self.stored_db_version()),
        )
    }

    /// The highest db_version of any clock: what cr-sqlite reads from storage.
    fn stored_db_version(&self) -> u64 {
        self.tables
            .values()
            .flat_map(|t| t.rows.values())
            .flat_map(|r| r.sentinel.iter().chain(r.clocks.values()))
            .map(|c| c.db_version)
            .max()
            .unwrap_or(0)
    }

    fn begin(&self) -> Tx {
        Tx {
            committed: self.db_version().0,
            pending: None,
            seq: 0,
        }
    }

    fn table_schema(&self, name: &str) -> Result<&TableSchema, EngineError> {
        self.schema
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| EngineError::UnknownTable(name.to_owned()))
    }

    /// Runs local writes as one transaction; returns the changes it made, as peers will see
    /// them. On error nothing is applied.
    pub fn write(&mut self, writes: &[Write]) -> Result<Vec<Change>, EngineError> {
        self.write_checked(writes, |_| Ok(()))
    }

    /// Like [`Replica::write`], but commits only if `check` accepts the changes the write made
    /// (e.g. [`crate::validate::local_write_in_bounds`]); otherwise nothing is applied.
    pub fn write_checked(
        &mut self,
        writes: &[Write],
        check: impl FnOnce(&[Change]) -> Result<(), EngineError>,
    ) -> Result<Vec<Change>, EngineError> {
        let mut next = self.clone();
        let mut tx = next.begin();
        for w in writes {
            next.apply_write(w, &mut tx)?;
        }
        next.cached_db_version = tx.pending;
        // Only the rows the writes name can hold this transaction's changes: list those, not
        // the whole replica, so a write costs O(its rows) here.
        let keys: Vec<(&str, Vec<u8>)> = writes
            .iter()
            .filter_map(|w| {
                let (table, pk) = w.target();
                next.packed_pk(table, pk)
                    .ok()
                    .map(|(_, _, key)| (table, key))
            })
            .collect();
        let made: Vec<Change> = tx
            .pending
            .map(|v| {
                let mut made: Vec<Change> = next
                    .rows_of(keys.iter().map(|(t, k)| (*t, k.as_slice())))
                    .into_iter()
                    .filter(|c| c.db_version.0 == v && c.site_id == next.site_id)
                    .collect();
                sort_as_listed(&mut made);
                made
            })
            .unwrap_or_default();
        check(&made)?;
        *self = next;
        Ok(made)
    }

    fn apply_write(&mut self, w: &Write, tx: &mut Tx) -> Result<(), EngineError> {
        match w {
            Write::Insert { table, pk, values } => self.local_insert(table, pk, values, false, tx),
            Write::Upsert { table, pk, values } => self.local_insert(table, pk, values, true, tx),
            Write::Update { table, pk, values } => self.local_update(table, pk, values, tx),
            Write::Delete { table, pk } => self.local_delete(table, pk, tx),
        }
    }

    fn packed_pk(
        &self,
        table: &str,
        pk: &[Value],
    ) -> Result<(TableSchema, Vec<Value>, Vec<u8>), EngineError> {
        let schema = self.table_schema(table)?.clone();
        if pk.len() != schema.pk.len() {
            return Err(EngineError::PkArity {
                table: table.to_owned(),
                expected: schema.pk.len(),
                got: pk.len(),
            });
        }
        let stored: Vec<Value> = pk
            .iter()
            .zip(&schema.pk)
            .map(|(v, c)| c.affinity.apply(v.clone()))
            .collect();
        if let Some((_, c)) = stored
            .iter()
            .zip(&schema.pk)
            .find(|(v, _)| **v == Value::Null)
        {
            return Err(EngineError::NotNull {
                table: table.to_owned(),
                column: c.name.clone(),
            });
        }
        let packed = pack_columns(&stored)?;
        Ok((schema, stored, packed))
    }

    fn local_insert(
        &mut self,
        table: &str,
        pk: &[Value],
        values: &[(String, Value)],
        upsert: bool,
        tx: &mut Tx,
    ) -> Result<(), EngineError> {
        let (schema, pk_values, key) = self.packed_pk(table, pk)?;
        let exists = self.row(table, &key).is_some_and(|r| r.values.is_some());
        if exists {
            if upsert {
                // ON CONFLICT DO NOTHING when there is nothing to set: no UPDATE, no trigger.
                if values.is_empty() {
                    return Ok(());
                }
                return self.local_update(table, pk, values, tx);
            }
            return Err(EngineError::Duplicate {
                table: table.to_owned(),
            });
        }
        let mut row_values: Vec<Value> = schema.columns.iter().map(|c| c.default.clone()).collect();
        for (name, v) in values {
            let (i, c) = schema.column(name)?;
            row_values[i] = c.affinity.apply(v.clone());
        }
        check_not_null(&schema, &row_values)?;
        let site = self.site_id;
        let row = self.row_mut(table, &key, pk_values);
        row.values = Some(row_values);
        // A pk-only table, or a row that was deleted before, records (re)creation in the
        // sentinel: +1 from an even (deleted) cl, +2 from an odd one (spec §3, E2).
        let resurrect = row.sentinel.map(|s| s.col_version);
        if schema.columns.is_empty() || resurrect.is_some() {
            let cl = match resurrect {
                Some(cl) if cl % 2 == 0 => cl + 1,
                Some(cl) => cl + 2,
                None => 1,
            };
            let db_version = tx.next(0);
            let seq = tx.next_seq();
            row.sentinel = Some(Clock {
                col_version: cl,
                db_version,
                seq,
                site,
            });
        }
        for c in &schema.columns {
            let col_version = row.clocks.get(&c.name).map_or(1, |k| k.col_version + 1);
            let db_version = tx.next(0);
            let seq = tx.next_seq();
            row.clocks.insert(
                c.name.clone(),
                Clock {
                    col_version,
                    db_version,
                    seq,
                    site,
                },
            );
        }
        Ok(())
    }

    fn local_update(
        &mut self,
        table: &str,
        pk: &[Value],
        values: &[(String, Value)],
        tx: &mut Tx,
    ) -> Result<(), EngineError> {
        let (schema, _, key) = self.packed_pk(table, pk)?;
        let mut updates = Vec::new();
        for (name, v) in values {
            let (i, c) = schema.column(name)?;
            updates.push((i, c.name.clone(), c.affinity.apply(v.clone())));
        }
        let site = self.site_id;
        let Some(row) = self
            .tables
            .get_mut(table)
            .and_then(|t| t.rows.get_mut(&key))
            .filter(|r| r.values.is_some())
        else {
            return Ok(()); // UPDATE of no row changes nothing
        };
        let mut new_values = row.values.clone().unwrap_or_default();
        for (i, _, v) in &updates {
            new_values[*i] = v.clone();
        }
        check_not_null(&schema, &new_values)?;
        let old = row.values.replace(new_values.clone()).unwrap_or_default();
        // The update trigger takes the next db_version whether or not anything changed (so an
        // UPDATE to the same values still moves this connection's db_version on), then bumps
        // only the columns whose stored value changed, by type and value (spec §3, E1).
        let db_version = tx.next(0);
        for (i, c) in schema.columns.iter().enumerate() {
            if compare_values(&new_values[i], &old[i]) == Ordering::Equal {
                continue;
            }
            let col_version = row.clocks.get(&c.name).map_or(1, |k| k.col_version + 1);
            let seq = tx.next_seq();
            row.clocks.insert(
                c.name.clone(),
                Clock {
                    col_version,
                    db_version,
                    seq,
                    site,
                },
            );
        }
        Ok(())
    }

    fn local_delete(&mut self, table: &str, pk: &[Value], tx: &mut Tx) -> Result<(), EngineError> {
        let (_, _, key) = self.packed_pk(table, pk)?;
        let site = self.site_id;
        let Some(row) = self
            .tables
            .get_mut(table)
            .and_then(|t| t.rows.get_mut(&key))
            .filter(|r| r.values.is_some())
        else {
            return Ok(());
        };
        row.values = None;
        let cl = row.sentinel.map_or(2, |s| s.col_version + 1);
        let db_version = tx.next(0);
        let seq = tx.next_seq();
        row.sentinel = Some(Clock {
            col_version: cl,
            db_version,
            seq,
            site,
        });
        row.clocks.clear();
        Ok(())
    }

    fn row(&self, table: &str, key: &[u8]) -> Option<&RowState> {
        self.tables.get(table).and_then(|t| t.rows.get(key))
    }

    fn row_mut(&mut self, table: &str, key: &[u8], pk_values: Vec<Value>) -> &mut RowState {
        self.tables
            .entry(table.to_owned())
            .or_default()
            .rows
            .entry(key.to_vec())
            .or_insert_with(|| RowState {
                pk_values,
                ..RowState::default()
            })
    }

    /// Merges remote changes as one transaction (`INSERT INTO crsql_changes`): idempotent, in
    /// any order. Returns `crsql_rows_impacted()`. On error (unknown table or column, a NULL in
    /// a NOT NULL column) nothing is applied, as cr-sqlite aborts the whole statement.
    pub fn merge(&mut self, changes: &[Change]) -> Result<u64, EngineError> {
        let mut next = self.clone();
        let mut tx = next.begin();
        let mut impacted = 0;
        for c in changes {
            impacted += next.merge_one(c, &mut tx)?;
        }
        next.cached_db_version = tx.pending;
        *self = next;
        Ok(impacted)
    }

    fn merge_one(&mut self, c: &Change, tx: &mut Tx) -> Result<u64, EngineError> {
        let schema = self.table_schema(&c.table)?.clone();
        let pk_values = unpack_columns(&c.pk)?;
        if pk_values.len() != schema.pk.len() {
            return Err(EngineError::PkArity {
                table: c.table.clone(),
                expected: schema.pk.len(),
                got: pk_values.len(),
            });
        }
        let column = if c.cid == SENTINEL_CID {
            None
        } else {
            Some(schema.column(&c.cid)?)
        };
        let merge_equal = self.merge_equal_values;
        let row = self.row_mut(&c.table, &c.pk, pk_values);
        let local_cl = row.local_cl();
        if c.cl < local_cl {
            return Ok(0);
        }
        let clock = |tx: &mut Tx, col_version: i64| Clock {
            col_version,
            db_version: tx.next(c.db_version.0),
            seq: c.seq,
            site: c.site_id,
        };
        if c.cl % 2 == 0 {
            if c.cl == local_cl {
                return Ok(0);
            }
            row.values = None;
            row.sentinel = Some(clock(tx, c.col_version));
            row.clocks.clear();
            return Ok(1);
        }
        let Some((index, column)) = column else {
            if c.cl == local_cl {
                return Ok(0);
            }
            resurrect(row, &schema, tx, c.db_version.0);
            row.sentinel = Some(clock(tx, c.col_version));
            return Ok(1);
        };
        let needs_resurrect = c.cl > local_cl;
        if needs_resurrect && (local_cl != 0 || c.cl > 1) {
            // A column that arrives before its row's (re)creation sentinel (spec E9c, E10a).
            resurrect(row, &schema, tx, c.db_version.0);
            row.sentinel = Some(clock(tx, c.cl));
        }
        let wins = needs_resurrect
            || local_cl == 0
            || did_cid_win(row, index, &column.name, c, merge_equal);
        if !wins {
            return Ok(0);
        }
        let stored = column.affinity.apply(c.val.clone());
        if column.not_null && stored == Value::Null {
            return Err(EngineError::NotNull {
                table: c.table.clone(),
                column: column.name.clone(),
            });
        }
        let values = row.values.get_or_insert_with(|| {
            schema
                .columns
                .iter()
                .map(|col| col.default.clone())
                .collect()
        });
        values[index] = stored;
        let clock = clock(tx, c.col_version);
        row.clocks.insert(column.name.clone(), clock);
        Ok(1)
    }

    pub(crate) fn merge_equal_values(&self) -> bool {
        self.merge_equal_values
    }

    /// Every row's state, for snapshots: (pk, values, sentinel, column clocks).
    #[allow(clippy::type_complexity)]
    pub(crate) fn table_states(
        &self,
    ) -> Vec<(
        &str,
        Vec<(
            &[u8],
            Option<&Vec<Value>>,
            Option<&Clock>,
            Vec<(&str, &Clock)>,
        )>,
    )> {
        self.tables
            .iter()
            .map(|(name, t)| {
                let rows = t
                    .rows
                    .iter()
                    .map(|(pk, r)| {
                        (
                            pk.as_slice(),
                            r.values.as_ref(),
                            r.sentinel.as_ref(),
                            r.clocks.iter().map(|(c, k)| (c.as_str(), k)).collect(),
                        )
                    })
                    .collect();
                (name.as_str(), rows)
            })
            .collect()
    }

    pub(crate) fn restore_row(
        &mut self,
        table: &str,
        pk: Vec<u8>,
        pk_values: Vec<Value>,
        values: Option<Vec<Value>>,
        sentinel: Option<Clock>,
        clocks: Vec<(String, Clock)>,
    ) {
        let row = self.row_mut(table, &pk, pk_values);
        row.values = values;
        row.sentinel = sentinel;
        row.clocks = clocks.into_iter().collect();
    }

    /// `crsql_changes`, ordered by db_version then seq (then table, pk, cid, so the order is
    /// total).
    pub fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for schema in &self.schema {
            let Some(table) = self.tables.get(&schema.name) else {
                continue;
            };
            for (key, row) in &table.rows {
                let cl = row.sentinel.map_or(1, |s| s.col_version);
                let mut push = |cid: &str, clock: &Clock, val: Value| {
                    out.push(Change {
                        table: schema.name.clone(),
                        pk: key.clone(),
                        cid: cid.to_owned(),
                        val,
                        col_version: clock.col_version,
                        db_version: DbVersion(clock.db_version),
                        site_id: clock.site,
                        cl,
                        seq: clock.seq,
                    });
                };
                if let Some(s) = &row.sentinel {
                    push(SENTINEL_CID, s, Value::Null);
                }
                for (i, col) in schema.columns.iter().enumerate() {
                    if let Some(clock) = row.clocks.get(&col.name) {
                        let val = row.values.as_ref().map_or(Value::Null, |v| v[i].clone());
                        push(&col.name, clock, val);
                    }
                }
            }
        }
        sort_as_listed(&mut out);
        out
    }

    /// The `crsql_changes` rows of one row of `table` (by packed pk), in column order.
    pub fn row_changes(&self, table: &str, pk: &[u8]) -> Vec<Change> {
        let Some((schema, row)) = self
            .schema
            .iter()
            .find(|t| t.name == table)
            .zip(self.tables.get(table).and_then(|t| t.rows.get(pk)))
        else {
            return Vec::new();
        };
        let cl = row.sentinel.map_or(1, |s| s.col_version);
        let change = |cid: &str, clock: &Clock, val: Value| Change {
            table: schema.name.clone(),
            pk: pk.to_vec(),
            cid: cid.to_owned(),
            val,
            col_version: clock.col_version,
            db_version: DbVersion(clock.db_version),
            site_id: clock.site,
            cl,
            seq: clock.seq,
        };
        let mut out = Vec::new();
        if let Some(s) = &row.sentinel {
            out.push(change(SENTINEL_CID, s, Value::Null));
        }
        for (i, col) in schema.columns.iter().enumerate() {
            if let Some(clock) = row.clocks.get(&col.name) {
                let val = row.values.as_ref().map_or(Value::Null, |v| v[i].clone());
                out.push(change(&col.name, clock, val));
            }
        }
        out
    }

    /// What `SELECT … FROM crsql_changes WHERE db_version > since AND site_id IS NOT exclude`
    /// returns.
    pub fn changes_since(&self, since: DbVersion, exclude: Option<SiteId>) -> Vec<Change> {
        self.changes()
            .into_iter()
            .filter(|c| c.db_version > since && Some(c.site_id) != exclude)
            .collect()
    }

    /// The rows of `table` (pk columns, then the others), ordered by pk as `ORDER BY 1` would
    /// for single-column text or integer keys.
    pub fn rows(&self, table: &str) -> Result<Vec<Vec<Value>>, EngineError> {
        self.table_schema(table)?;
        let mut rows: Vec<Vec<Value>> = self
            .tables
            .get(table)
            .into_iter()
            .flat_map(|t| t.rows.values())
            .filter_map(|r| {
                r.values.as_ref().map(|v| {
                    let mut row = r.pk_values.clone();
                    row.extend(v.iter().cloned());
                    row
                })
            })
            .collect();
        rows.sort_by(|a, b| compare_for_order(&a[0], &b[0]));
        Ok(rows)
    }
}

/// `INSERT OR IGNORE INTO T(pk)` (defaults if the row was gone; stale values kept if not) and
/// the "zero clocks" of spec §5: every column clock of the row drops to col_version 0.
fn resurrect(row: &mut RowState, schema: &TableSchema, tx: &mut Tx, incoming: u64) {
    if row.values.is_none() {
        row.values = Some(schema.columns.iter().map(|c| c.default.clone()).collect());
    }
    if !row.clocks.is_empty() {
        let db_version = tx.next(incoming);
        for clock in row.clocks.values_mut() {
            clock.col_version = 0;
            clock.db_version = db_version;
        }
    }
}

fn did_cid_win(row: &RowState, index: usize, cid: &str, c: &Change, merge_equal: bool) -> bool {
    let Some(local) = row.clocks.get(cid) else {
        return true;
    };
    if c.col_version != local.col_version {
        return c.col_version > local.col_version;
    }
    let current = row
        .values
        .as_ref()
        .map_or(Value::Null, |v| v[index].clone());
    match compare_values(&c.val, &current) {
        Ordering::Equal if merge_equal => c.site_id.0 > local.site.0,
        ordering => ordering == Ordering::Greater,
    }
}

/// cr-sqlite's `compare_values.rs`: across types INTEGER > REAL > TEXT > BLOB > NULL; within a
/// type numerically, or bytewise for text and blobs (spec §5 rule 3, E4).
pub fn compare_values(incoming: &Value, local: &Value) -> Ordering {
    match (incoming, local) {
        (Value::Integer(a), Value::Integer(b)) => a.cmp(b),
        (Value::Real(a), Value::Real(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
        (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        (Value::Blob(a), Value::Blob(b)) => a.cmp(b),
        (Value::Null, Value::Null) => Ordering::Equal,
        (a, b) => b.type_code().cmp(&a.type_code()),
    }
}

/// SQLite's ORDER BY across storage classes: NULL < numbers < TEXT < BLOB.
fn compare_for_order(a: &Value, b: &Value) -> Ordering {
    let class = |v: &Value| match v {
        Value::Null => 0,
        Value::Integer(_) | Value::Real(_) => 1,
        Value::Text(_) => 2,
        Value::Blob(_) => 3,
    };
    match (a, b) {
        (Value::Integer(x), Value::Real(y)) => {
            (*x as f64).partial_cmp(y).unwrap_or(Ordering::Equal)
        }
        (Value::Real(x), Value::Integer(y)) => {
            x.partial_cmp(&(*y as f64)).unwrap_or(Ordering::Equal)
        }
        _ if class(a) != class(b) => class(a).cmp(&class(b)),
        _ => compare_values(a, b),
    }
}

fn check_not_null(schema: &TableSchema, values: &[Value]) -> Result<(), EngineError> {
    match schema
        .columns
        .iter()
        .zip(values)
        .find(|(c, v)| c.not_null && **v == Value::Null)
    {
        Some((c, _)) => Err(EngineError::NotNull {
            table: schema.name.clone(),
            column: c.name.clone(),
        }),
        None => Ok(()),
    }
}

/// The order `crsql_changes` lists changes in: by db_version, then seq (then the row and
/// column, to be total).
fn sort_as_listed(changes: &mut [Change]) {
    changes.sort_by(|a, b| {
        (a.db_version, a.seq, &a.table, &a.pk, &a.cid).cmp(&(
            b.db_version,
            b.seq,
            &b.table,
            &b.pk,
            &b.cid,
        ))
    });
}

#[cfg(test)]
mod tests {
    //! One named test per rule of shared/research/crsqlite-merge-spec.md (experiment ids in
    //! the names' doc comments). The differential test checks all of them against the real
    //! extension on random inputs; these pin each rule down on its own.
    use super::*;

    const A: SiteId = SiteId([0x0A; 16]);
    const B: SiteId = SiteId([0x0B; 16]);

    #[test]
    fn the_todos_table_is_created_from_its_schema() {
        assert_eq!(
            TableSchema::todos().create_table_sql(),
            "CREATE TABLE IF NOT EXISTS todos(id TEXT NOT NULL, title TEXT NOT NULL DEFAULT '', \
             completed INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL DEFAULT 0, \
             PRIMARY KEY (id))"
        );
        let odd = TableSchema {
            name: "t".into(),
            pk: vec![
                Column::new("a", "BLOB", true, Value::Null),
                Column::new("b", "INTEGER", true, Value::Null),
            ],
            columns: vec![
                Column::new("q", "TEXT", false, Value::Text("it's".into())),
                Column::new("r", "REAL", false, Value::Real(0.5)),
                Column::new("s", "BLOB", false, Value::Blob(vec![0xAB, 1])),
            ],
        };
        assert_eq!(
            odd.create_table_sql(),
            "CREATE TABLE IF NOT EXISTS t(a BLOB NOT NULL, b INTEGER NOT NULL, \
             q TEXT DEFAULT 'it''s', r REAL DEFAULT 0.5, s BLOB DEFAULT X'AB01', PRIMARY KEY (a, b))"
        );
    }

    fn replica(site: SiteId) -> Replica {
        let mut t = TableSchema::todos();
        for c in &mut t.columns {
            c.not_null = false;
            c.default = Value::Null;
        }
        Replica::new(site, vec![t])
    }

    fn id(s: &str) -> Vec<Value> {
        vec![Value::Text(s.into())]
    }

    fn insert(r: &mut Replica, key: &str, title: Value) -> Vec<Change> {
        r.write(&[Write::Insert {
            table: "todos".into(),
            pk: id(key),
            values: vec![
                ("title".into(), title),
                ("completed".into(), Value::Integer(0)),
                ("created_at".into(), Value::Integer(100)),
            ],
        }])
        .expect("insert")
    }

    fn set(r: &mut Replica, key: &str, col: &str, v: Value) {
        r.write(&[Write::Update {
            table: "todos".into(),
            pk: id(key),
            values: vec![(col.into(), v)],
        }])
        .expect("update");
    }

    fn delete(r: &mut Replica, key: &str) {
        r.write(&[Write::Delete {
            table: "todos".into(),
            pk: id(key),
        }])
        .expect("delete");
    }

    /// Full incremental sync both ways, as the oracle's `sync_all`.
    fn sync(a: &mut Replica, b: &mut Replica) {
        let to_b = a.changes_since(DbVersion(0), Some(b.site_id()));
        b.merge(&to_b).expect("merge into b");
        let to_a = b.changes_since(DbVersion(0), Some(a.site_id()));
        a.merge(&to_a).expect("merge into a");
    }

    fn title(r: &Replica, key: &str) -> Option<Value> {
        r.rows("todos")
            .expect("rows")
            .into_iter()
            .find(|row| row[0] == Value::Text(key.into()))
            .map(|row| row[1].clone())
    }

    fn summary(changes: &[Change]) -> Vec<(String, i64, u64, i64, i64)> {
        changes
            .iter()
            .map(|c| (c.cid.clone(), c.col_version, c.db_version.0, c.cl, c.seq))
            .collect()
    }

    /// §3, E1: an insert clocks every column at col_version 1, one seq each, no sentinel.
    #[test]
    fn rule_local_insert_clocks_every_column_without_sentinel() {
        let mut a = replica(A);
        let made = insert(&mut a, "t1", Value::Text("x".into()));
        assert_eq!(
            summary(&made),
            [
                ("title".into(), 1, 1, 1, 0),
                ("completed".into(), 1, 1, 1, 1),
                ("created_at".into(), 1, 1, 1, 2)
            ]
        );
        assert!(made.iter().all(|c| c.site_id == A));
    }

    /// §3, E1: an update bumps only the columns whose value changed, by type and value.
    #[test]
    fn rule_update_bumps_only_changed_columns() {
        let mut a = replica(A);
        insert(&mut a, "t1", Value::Text("x".into()));
        set(&mut a, "t1", "title", Value::Text("y".into()));
        set(&mut a, "t1", "completed", Value::Integer(0));
        let c = a.changes();
        assert_eq!(
            c.iter().find(|c| c.cid == "title").map(|c| c.col_version),
            Some(2)
        );
        assert_eq!(
            c.iter()
                .find(|c| c.cid == "completed")
                .map(|c| c.col_version),
            Some(1)
        );
    }

    /// §3, E2: a delete leaves only the sentinel, cl 2; a re-insert makes it 3 and restarts
    /// the columns at col_version 1.
    #[test]
    fn rule_delete_leaves_a_sentinel_and_reinsert_makes_cl_odd() {
        let mut a = replica(A);
        insert(&mut a, "t1", Value::Text("x".into()));
        delete(&mut a, "t1");
        assert_eq!(summary(&a.changes()), [("-1".into(), 2, 2, 2, 0)]);
        insert(&mut a, "t1", Value::Text("again".into()));
        assert_eq!(
            summary(&a.changes()),
            [
                ("-1".into(), 3, 3, 3, 0),
                ("title".into(), 1, 3, 3, 1),
                ("completed".into(), 1, 3, 3, 2),
                ("created_at".into(), 1, 3, 3, 3)
            ]
        );
    }

    /// §5 rule 2, E3a: the higher col_version wins whatever the value.
    #[test]
    fn rule_higher_col_version_wins() {
        let (mut a, mut b) = (replica(A), replica(B));
        insert(&mut a, "t1", Value::Text("a".into()));
        sync(&mut a, &mut b);
        set(&mut b, "t1", "title", Value::Text("B1".into()));
        set(&mut b, "t1", "title", Value::Text("B2".into()));
        set(&mut a, "t1", "title", Value::Text("zzz".into()));
        sync(&mut a, &mut b);
        assert_eq!(title(&a, "t1"), Some(Value::Text("B2".into())));
        assert_eq!(title(&b, "t1"), title(&a, "t1"));
    }

    /// §5 rule 3, E3b: at equal col_version the larger value wins, text compared bytewise.
    #[test]
    fn rule_equal_col_version_larger_value_wins_bytewise() {
        let (mut a, mut b) = (replica(A), replica(B));
        insert(&mut a, "t1", Value::Text("x".into()));
        sync(&mut a, &mut b);
        set(&mut a, "t1", "title", Value::Text("apple".into()));
        set(&mut b, "t1", "title", Value::Text("Zebra".into()));
        sync(&mut a, &mut b);
        assert_eq!(title(&a, "t1"), Some(Value::Text("apple".into())));
        assert_eq!(title(&b, "t1"), title(&a, "t1"));
    }

    /// §5 rule 3, E4: across types INTEGER > REAL > TEXT > BLOB > NULL. (E4's column has no
    /// declared type, so values keep their own class; a TEXT column would store 1 as '1'.)
    #[test]
    fn rule_value_order_across_types() {
        use Value::*;
        let untyped = |site| {
            let mut r = replica(site);
            r.schema[0].columns[0].affinity = Affinity::Blob;
            r
        };
        for (winner, loser) in [
            (Integer(1), Text("zzz".into())),
            (Integer(1), Real(2.5)),
            (Real(0.5), Text("a".into())),
            (Text("a".into()), Blob(vec![0xFF])),
            (Blob(vec![0]), Null),
        ] {
            for (first, second) in [(&winner, &loser), (&loser, &winner)] {
                let (mut a, mut b) = (untyped(A), untyped(B));
                insert(&mut a, "t1", Text("x".into()));
                sync(&mut a, &mut b);
                set(&mut a, "t1", "title", first.clone());
                set(&mut b, "t1", "title", second.clone());
                sync(&mut a, &mut b);
                assert_eq!(
                    title(&a, "t1"),
                    Some(winner.clone()),
                    "{winner:?} vs {loser:?}"
                );
                assert_eq!(title(&b, "t1"), Some(winner.clone()));
            }
        }
    }

    /// §5 rule 1, E6a: a delete (cl 2) beats any number of concurrent updates (cl 1).
    #[test]
    fn rule_causal_length_delete_beats_concurrent_updates() {
        let (mut a, mut b) = (replica(A), replica(B));
        insert(&mut a, "t1", Value::Text("x".into()));
        sync(&mut a, &mut b);
        for i in 0..5 {
            set(&mut b, "t1", "title", Value::Text(format!("edit {i}")));
        }
        delete(&mut a, "t1");
        sync(&mut a, &mut b);
        assert_eq!(title(&a, "t1"), None);
        assert_eq!(title(&b, "t1"), None);
    }

    /// §5 rule 1, E6b: a re-insert (cl 3) beats a delete (cl 2).
    #[test]
    fn rule_causal_length_reinsert_beats_delete() {
        let (mut a, mut b) = (replica(A), replica(B));
        insert(&mut a, "t1", Value::Text("x".into()));
        delete(&mut a, "t1");
        insert(&mut a, "t1", Value::Text("back".into()));
        sync(&mut a, &mut b);
        let mut c = replica(SiteId([0x0C; 16]));
        c.merge(&a.changes()).expect("merge");
        assert_eq!(title(&b, "t1"), Some(Value::Text("back".into())));
        assert_eq!(title(&c, "t1"), Some(Value::Text("back".into())));
    }

    /// §5: a change with a lower causal length than the local row is ignored.
    #[test]
    fn rule_stale_causal_length_is_ignored() {
        let (mut a, mut b) = (replica(A), replica(B));
        let created = insert(&mut a, "t1", Value::Text("x".into()));
        b.merge(&created).expect("merge");
        delete(&mut b, "t1");
        assert_eq!(b.merge(&created).expect("merge"), 0);
        assert_eq!(title(&b, "t1"), None);
    }

    /// §5, R6: with merge-equal-values, equal values tie-break on the larger site id.
    /// Both replicas write the same title concurrently; returns whose site each one's title
    /// clock names afterwards.
    fn equal_concurrent_titles(merge_equal_values: bool) -> (Option<SiteId>, Option<SiteId>) {
        let (mut a, mut b) = (replica(A), replica(B));
        a.set_merge_equal_values(merge_equal_values);
        b.set_merge_equal_values(merge_equal_values);
        insert(&mut a, "t1", Value::Text("x".into()));
        sync(&mut a, &mut b);
        set(&mut a, "t1", "title", Value::Text("same".into()));
        set(&mut b, "t1", "title", Value::Text("same".into()));
        sync(&mut a, &mut b);
        let site_of = |r: &Replica| {
            r.changes()
                .into_iter()
                .find(|c| c.cid == "title")
                .map(|c| c.site_id)
        };
        (site_of(&a), site_of(&b))
    }

    #[test]
    fn rule_merge_equal_values_breaks_ties_by_site_id() {
        assert_eq!(equal_concurrent_titles(true), (Some(B), Some(B)));
    }

    /// §5, R6b: without the setting an equal value is a no-op; each keeps its own clock.
    #[test]
    fn rule_equal_values_without_the_setting_keep_local_clocks() {
        assert_eq!(equal_concurrent_titles(false), (Some(A), Some(B)));
    }

    /// §6, E7: merged rows get the receiver's NEXT db_version (at least the incoming one),
    /// keep the incoming seq and origin site, and the receiver's clock jumps forward.
    #[test]
    fn rule_merged_rows_are_restamped_and_keep_origin() {
        let (mut a, mut b) = (replica(A), replica(B));
        for k in ["t1", "t2", "t3"] {
            insert(&mut a, k, Value::Text(k.into()));
        }
        let latest = a.changes_since(DbVersion(2), None);
        assert_eq!(b.merge(&latest).expect("merge"), 3);
        assert_eq!(b.db_version(), DbVersion(3));
        let mut c = replica(SiteId([0x0C; 16]));
        c.merge(&b.changes()).expect("forward");
        assert!(
            c.changes()
                .iter()
                .all(|ch| ch.site_id == A && ch.db_version == DbVersion(3))
        );
        assert_eq!(
            summary(&c.changes())
                .iter()
                .map(|s| s.4)
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    /// §5, E9c/E10a: a column that arrives before its row's re-creation sentinel resurrects
    /// the row (sentinel := its cl) and applies.
    #[test]
    fn rule_column_before_its_sentinel_resurrects_the_row() {
        let (mut a, mut b) = (replica(A), replica(B));
        insert(&mut a, "t1", Value::Text("x".into()));
        sync(&mut a, &mut b);
        delete(&mut a, "t1");
        sync(&mut a, &mut b);
        insert(&mut a, "t1", Value::Text("back".into()));
        let title_only: Vec<Change> = a
            .changes()
            .into_iter()
            .filter(|c| c.cid == "title")
            .collect();
        assert_eq!(b.merge(&title_only).expect("merge"), 1);
        assert_eq!(title(&b, "t1"), Some(Value::Text("back".into())));
        let sentinel = b
            .changes()
            .into_iter()
            .find(|c| c.cid == "-1")
            .expect("sentinel");
        assert_eq!(sentinel.col_version, 3);
    }

    /// §5, E12: an unknown table or column aborts the whole batch.
    #[test]
    fn rule_unknown_table_or_column_aborts_the_whole_batch() {
        let mut a = replica(A);
        let mut good = insert(&mut a, "t1", Value::Text("x".into()));
        let mut b = replica(B);
        let mut bad = good[0].clone();
        bad.cid = "priority".into();
        good.push(bad);
        assert!(matches!(
            b.merge(&good),
            Err(EngineError::UnknownColumn { .. })
        ));
        assert_eq!(b.changes(), vec![]);
        good.pop();
        let mut bad = good[0].clone();
        bad.table = "lists".into();
        good.push(bad);
        assert!(matches!(b.merge(&good), Err(EngineError::UnknownTable(_))));
        assert_eq!(b.db_version(), DbVersion(0));
    }

    /// R8: merging the same changes again changes nothing.
    #[test]
    fn rule_merge_is_idempotent() {
        let (mut a, mut b) = (replica(A), replica(B));
        insert(&mut a, "t1", Value::Text("x".into()));
        set(&mut a, "t1", "title", Value::Text("y".into()));
        let all = a.changes();
        assert_eq!(b.merge(&all).expect("first"), 3);
        let before = b.clone();
        assert_eq!(b.merge(&all).expect("again"), 0);
        assert_eq!(b.changes(), before.changes());
    }

    /// §8, E11: values are stored with column affinity, and a tie compares the incoming raw
    /// value with the stored one: '9' (TEXT) loses to a stored 7 (INTEGER), 9 wins.
    #[test]
    fn rule_affinity_before_comparison() {
        let mut b = replica(B);
        let pk = pack_columns(&id("t1")).expect("pk");
        let mk = |val: Value, site: SiteId| Change {
            table: "todos".into(),
            pk: pk.clone(),
            cid: "completed".into(),
            val,
            col_version: 1,
            db_version: DbVersion(1),
            site_id: site,
            cl: 1,
            seq: 0,
        };
        b.merge(&[mk(Value::Text("7".into()), A)]).expect("merge");
        assert_eq!(b.rows("todos").expect("rows")[0][2], Value::Integer(7));
        b.merge(&[mk(Value::Text("9".into()), SiteId([0x0C; 16]))])
            .expect("merge");
        assert_eq!(b.rows("todos").expect("rows")[0][2], Value::Integer(7));
        b.merge(&[mk(Value::Integer(9), SiteId([0x0C; 16]))])
            .expect("merge");
        assert_eq!(b.rows("todos").expect("rows")[0][2], Value::Integer(9));
    }

    /// §4, E11b: a TEXT '5' key and an INTEGER 5 key are different rows' keys.
    #[test]
    fn rule_pk_type_matters() {
        let text = pack_columns(&[Value::Text("5".into())]).expect("pk");
        let int = pack_columns(&[Value::Integer(5)]).expect("pk");
        assert_ne!(text, int);
    }

    /// §3, E16 and the commit hook: an UPDATE that changes nothing still takes a db_version
    /// for this connection; a transaction that wrote nothing makes it re-read the clocks.
    #[test]
    fn rule_db_version_cache_follows_the_commit_hook() {
        let mut a = replica(A);
        insert(&mut a, "t1", Value::Text("x".into()));
        set(&mut a, "t1", "title", Value::Text("x".into()));
        assert_eq!(a.db_version(), DbVersion(2));
        delete(&mut a, "nope");
        assert_eq!(a.db_version(), DbVersion(1));
    }
}
