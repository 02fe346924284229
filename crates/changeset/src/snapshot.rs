//! A replica's whole state as bytes, for the browser to keep in OPFS and restore on load.
//!
//! ```text
//! snapshot := "CSNP" version:u8(=1) site:[u8;16] flags:u8 ntables:varint table*
//! table    := name:bytes nrows:varint row*
//! row      := pk:bytes has_values:u8 [n:varint value*] has_sentinel:u8 [clock] nclocks:varint (cid:bytes clock)*
//! clock    := col_version:zvarint db_version:varint seq:zvarint site:[u8;16]
//! ```
//! Restoring checks the bytes against the schema the app declares, so a snapshot of another
//! schema, or damaged bytes, is an error that names the problem, never a half-loaded replica.
//! The connection's db_version cache is not kept: a restored replica, like a reopened
//! database, reads its db_version from the clocks.

use crate::engine::{Clock, Replica, TableSchema};
use crate::pk::unpack_columns;
use crate::value::SiteId;
use crate::wire::{Reader, WireError, put_bytes, put_value, put_varint, put_zigzag};

const MAGIC: &[u8; 4] = b"CSNP";
const VERSION_1: u8 = 1;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a replica snapshot (bad magic bytes)")]
    Magic,
    #[error("snapshot format version {0} is not supported (this build reads version {VERSION_1})")]
    Version(u8),
    #[error("snapshot is damaged: {0}")]
    Damaged(#[from] WireError),
    #[error("snapshot holds table {0:?}, which the schema does not declare")]
    UnknownTable(String),
    #[error("snapshot row of {table} has {got} values, the schema declares {expected} columns")]
    Columns {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("snapshot row of {table} has a clock for unknown column {column:?}")]
    UnknownColumn { table: String, column: String },
    #[error("snapshot row has a malformed primary key: {0}")]
    Pk(String),
}

fn put_clock(out: &mut Vec<u8>, c: &Clock) {
    put_zigzag(out, c.col_version);
    put_varint(out, c.db_version);
    put_zigzag(out, c.seq);
    out.extend_from_slice(&c.site.0);
}

fn read_clock(r: &mut Reader<'_>) -> Result<Clock, WireError> {
    let col_version = r.zigzag()?;
    let db_version = r.varint()?;
    let seq = r.zigzag()?;
    let mut site = [0u8; 16];
    site.copy_from_slice(r.take(16)?);
    Ok(Clock {
        col_version,
        db_version,
        seq,
        site: SiteId(site),
    })
}

impl Replica {
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION_1);
        out.extend_from_slice(&self.site_id().0);
        out.push(u8::from(self.merge_equal_values()));
        let tables = self.table_states();
        put_varint(&mut out, tables.len() as u64);
        for (name, rows) in tables {
            put_bytes(&mut out, name.as_bytes());
            put_varint(&mut out, rows.len() as u64);
            for (pk, values, sentinel, clocks) in rows {
                put_bytes(&mut out, pk);
                match values {
                    Some(values) => {
                        out.push(1);
                        put_varint(&mut out, values.len() as u64);
                        values.iter().for_each(|v| put_value(&mut out, v));
                    }
                    None => out.push(0),
                }
                match sentinel {
                    Some(c) => {
                        out.push(1);
                        put_clock(&mut out, c);
                    }
                    None => out.push(0),
                }
                put_varint(&mut out, clocks.len() as u64);
                for (cid, c) in clocks {
                    put_bytes(&mut out, cid.as_bytes());
                    put_clock(&mut out, c);
                }
            }
        }
        out
    }

    /// Restores a replica saved by [`Replica::to_snapshot`], checked against `schema`.
    pub fn from_snapshot(bytes: &[u8], schema: Vec<TableSchema>) -> Result<Self, SnapshotError> {
        if bytes.len() < 4 || &bytes[..4] != MAGIC {
            return Err(SnapshotError::Magic);
        }
        let mut r = Reader(&bytes[4..]);
        match r.byte()? {
            VERSION_1 => {}
            v => return Err(SnapshotError::Version(v)),
        }
        let mut site = [0u8; 16];
        site.copy_from_slice(r.take(16)?);
        let mut replica = Replica::new(SiteId(site), schema);
        replica.set_merge_equal_values(r.byte()? != 0);
        for _ in 0..r.count("tables", 1, usize::MAX)? {
            let name = r.string()?;
            let table = replica
                .schema()
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| SnapshotError::UnknownTable(name.clone()))?;
            for _ in 0..r.count("rows", 1, usize::MAX)? {
                let pk = r.bytes()?.to_vec();
                let pk_values =
                    unpack_columns(&pk).map_err(|e| SnapshotError::Pk(e.to_string()))?;
                let values = if r.byte()? == 1 {
                    let n = r.count("values", 1, usize::MAX)?;
                    let mut values = Vec::with_capacity(n);
                    for _ in 0..n {
                        values.push(r.value()?);
                    }
                    if n != table.columns.len() {
                        return Err(SnapshotError::Columns {
                            table: name.clone(),
                            expected: table.columns.len(),
                            got: n,
                        });
                    }
                    Some(values)
                } else {
                    None
                };
                let sentinel = if r.byte()? == 1 {
                    Some(read_clock(&mut r)?)
                } else {
                    None
                };
                let mut clocks = Vec::new();
                for _ in 0..r.count("clocks", 1, usize::MAX)? {
                    let cid = r.string()?;
                    if !table.columns.iter().any(|c| c.name == cid) {
                        return Err(SnapshotError::UnknownColumn {
                            table: name.clone(),
                            column: cid,
                        });
                    }
                    clocks.push((cid, read_clock(&mut r)?));
                }
                replica.restore_row(&name, pk, pk_values, values, sentinel, clocks);
            }
        }
        if !r.0.is_empty() {
            return Err(SnapshotError::Damaged(WireError::Trailing(r.0.len())));
        }
        Ok(replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Write;
    use crate::value::{DbVersion, Value};

    fn sample() -> Replica {
        let mut r = Replica::new(SiteId([7; 16]), vec![TableSchema::todos()]);
        for (i, t) in ["milk", "eggs", "é"].iter().enumerate() {
            r.write(&[Write::Insert {
                table: "todos".into(),
                pk: vec![Value::Text(format!("id{i}"))],
                values: vec![("title".into(), Value::Text((*t).into()))],
            }])
            .expect("insert");
        }
        r.write(&[Write::Delete {
            table: "todos".into(),
            pk: vec![Value::Text("id1".into())],
        }])
        .expect("delete");
        r
    }

    #[test]
    fn snapshots_round_trip() {
        let r = sample();
        let back =
            Replica::from_snapshot(&r.to_snapshot(), vec![TableSchema::todos()]).expect("restore");
        assert_eq!(back.changes(), r.changes());
        assert_eq!(back.rows("todos"), r.rows("todos"));
        assert_eq!(back.db_version(), DbVersion(4));
        assert_eq!(back.site_id(), r.site_id());
    }

    #[test]
    fn damaged_or_foreign_snapshots_are_errors() {
        let bytes = sample().to_snapshot();
        assert_eq!(
            Replica::from_snapshot(b"nope", vec![TableSchema::todos()]).err(),
            Some(SnapshotError::Magic)
        );
        for cut in 4..bytes.len() {
            assert!(
                Replica::from_snapshot(&bytes[..cut], vec![TableSchema::todos()]).is_err(),
                "cut at {cut}"
            );
        }
        let mut future = bytes.clone();
        future[4] = 9;
        assert_eq!(
            Replica::from_snapshot(&future, vec![TableSchema::todos()]).err(),
            Some(SnapshotError::Version(9))
        );
        let mut other = TableSchema::todos();
        other.name = "lists".into();
        assert!(matches!(
            Replica::from_snapshot(&bytes, vec![other]),
            Err(SnapshotError::UnknownTable(_))
        ));
    }
}
