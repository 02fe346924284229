//! A replica kept as rows: the `crsql_changes` listing of a replica (one row per clock: the
//! sentinel and each column of each row, with its value) is its whole state, so a store that
//! keeps those rows — the edge's Durable Object keeps them in SQLite — rebuilds the replica
//! exactly from them, and after a write or a merge rewrites only the rows of the primary keys
//! it touched ([`Replica::rows_of`]), never the whole replica.

use std::collections::BTreeSet;

use crate::change::{Change, SENTINEL_CID};
use crate::engine::{Clock, EngineError, Replica, TableSchema};
use crate::pk::unpack_columns;
use crate::value::SiteId;

impl Replica {
    /// The replica whose `changes()` are `rows`: every clock as stored, values of existing
    /// rows from their columns' changes (columns without a clock keep their default, as they
    /// do in the engine). Like a reopened database, its db_version is the highest clock's.
    /// Rows of unknown tables or columns, or with malformed keys, are an error.
    pub fn from_changes(
        site_id: SiteId,
        schema: Vec<TableSchema>,
        rows: &[Change],
    ) -> Result<Self, EngineError> {
        let mut replica = Replica::new(site_id, schema);
        let mut grouped: std::collections::BTreeMap<(&str, &[u8]), Vec<&Change>> =
            std::collections::BTreeMap::new();
        for c in rows {
            grouped
                .entry((c.table.as_str(), c.pk.as_slice()))
                .or_default()
                .push(c);
        }
        for ((table, pk), changes) in grouped {
            let schema = replica
                .schema()
                .iter()
                .find(|t| t.name == table)
                .ok_or_else(|| EngineError::UnknownTable(table.to_owned()))?
                .clone();
            let pk_values = unpack_columns(pk)?;
            let clock = |c: &Change| Clock {
                col_version: c.col_version,
                db_version: c.db_version.0,
                seq: c.seq,
                site: c.site_id,
            };
            let mut sentinel = None;
            let mut clocks = Vec::new();
            let mut values: Vec<_> = schema.columns.iter().map(|c| c.default.clone()).collect();
            // Every change of a row carries the row's causal length: odd while it exists.
            let cl = changes.first().map_or(1, |c| c.cl);
            for c in &changes {
                if c.cid == SENTINEL_CID {
                    sentinel = Some(clock(c));
                    continue;
                }
                let (index, column) = schema.column(&c.cid)?;
                values[index] = c.val.clone();
                clocks.push((column.name.clone(), clock(c)));
            }
            let values = (cl % 2 == 1).then_some(values);
            replica.restore_row(table, pk.to_vec(), pk_values, values, sentinel, clocks);
        }
        Ok(replica)
    }

    /// The `crsql_changes` rows of the given (table, packed pk) rows only: what a store of
    /// rows rewrites for them after a transaction touched them (an absent row has none).
    pub fn rows_of<'a>(&self, keys: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<Change> {
        let keys: BTreeSet<(&str, &[u8])> = keys.into_iter().collect();
        let mut out = Vec::new();
        for (table, pk) in keys {
            out.extend(self.row_changes(table, pk));
        }
        out
    }
}

/// The (table, pk) rows a list of changes touches.
pub fn touched(changes: &[Change]) -> Vec<(String, Vec<u8>)> {
    changes
        .iter()
        .map(|c| (c.table.clone(), c.pk.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Write;
    use crate::value::{DbVersion, Value};

    fn todo(id: &str, title: &str) -> Write {
        Write::Insert {
            table: "todos".into(),
            pk: vec![Value::Text(id.into())],
            values: vec![("title".into(), Value::Text(title.into()))],
        }
    }

    fn restored(r: &Replica) -> Replica {
        Replica::from_changes(r.site_id(), vec![TableSchema::todos()], &r.changes())
            .expect("restores")
    }

    #[test]
    fn a_replica_is_rebuilt_exactly_from_its_changes() {
        let mut a = Replica::new(SiteId([1; 16]), vec![TableSchema::todos()]);
        let mut b = Replica::new(SiteId([2; 16]), vec![TableSchema::todos()]);
        a.write(&[todo("x", "one"), todo("y", "two")])
            .expect("write");
        b.write(&[todo("z", "three")]).expect("write");
        a.merge(&b.changes()).expect("merge");
        a.write(&[Write::Delete {
            table: "todos".into(),
            pk: vec![Value::Text("y".into())],
        }])
        .expect("delete");
        a.write(&[Write::Update {
            table: "todos".into(),
            pk: vec![Value::Text("z".into())],
            values: vec![("completed".into(), Value::Integer(1))],
        }])
        .expect("update");
        // Deleted, then created again: causal length 3.
        a.write(&[todo("y", "again")]).expect("resurrect");
        let r = restored(&a);
        assert_eq!(r.changes(), a.changes());
        assert_eq!(r.rows("todos").ok(), a.rows("todos").ok());
        assert_eq!(r.db_version(), a.db_version());
        // And it goes on like the original: the same next write makes the same changes.
        let (mut a2, mut r2) = (a.clone(), r);
        let w = [todo("w", "next")];
        assert_eq!(r2.write(&w).ok(), a2.write(&w).ok());
    }

    #[test]
    fn rows_of_lists_only_the_touched_rows() {
        let mut a = Replica::new(SiteId([1; 16]), vec![TableSchema::todos()]);
        a.write(&[todo("x", "one"), todo("y", "two")])
            .expect("write");
        let before = a.db_version();
        let made = a
            .write(&[Write::Delete {
                table: "todos".into(),
                pk: vec![Value::Text("x".into())],
            }])
            .expect("delete");
        assert!(made.iter().all(|c| c.db_version > before));
        let keys = touched(&made);
        let rows = a.rows_of(keys.iter().map(|(t, p)| (t.as_str(), p.as_slice())));
        // The deleted row is its sentinel alone now: its column clocks are gone.
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cid, SENTINEL_CID);
        assert_eq!(rows[0].cl, 2);
        assert!(rows[0].db_version > DbVersion(0));
    }

    #[test]
    fn unknown_tables_are_refused() {
        let mut a = Replica::new(SiteId([1; 16]), vec![TableSchema::todos()]);
        a.write(&[todo("x", "one")]).expect("write");
        let mut rows = a.changes();
        rows[0].table = "users".into();
        assert!(Replica::from_changes(SiteId([1; 16]), vec![TableSchema::todos()], &rows).is_err());
    }
}
