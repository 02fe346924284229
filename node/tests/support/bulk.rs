//! Many completed todos as another replica (site 0x42) pushes them: three column changes each,
//! one transaction per todo. Shared by node/tests/large.rs and node/benches/replication.rs.

use changeset::{Change, DbVersion, SiteId, Value, pack_columns};

/// `count` completed todos with ids `<prefix>-00000`, `<prefix>-00001`, …
pub fn completed_todos(prefix: &str, count: usize) -> Vec<Change> {
    (0..count)
        .flat_map(|i| {
            let pk = pack_columns(&[Value::Text(format!("{prefix}-{i:06}"))]).expect("pk");
            [
                ("title", Value::Text(format!("done {i}"))),
                ("completed", Value::Integer(1)),
                ("created_at", Value::Integer(i as i64)),
            ]
            .into_iter()
            .enumerate()
            .map(move |(seq, (cid, val))| Change {
                table: "todos".into(),
                pk: pk.clone(),
                cid: cid.into(),
                val,
                col_version: 1,
                db_version: DbVersion(i as u64 + 1),
                site_id: SiteId([0x42; 16]),
                cl: 1,
                seq: seq as i64,
            })
        })
        .collect()
}
