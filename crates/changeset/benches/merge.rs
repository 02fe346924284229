//! Benchmark: changes applied per second by the engine, next to real cr-sqlite merging the same
//! batch (`INSERT INTO crsql_changes` in one transaction, in-memory database).
//!
//! The batch: N changes made on a source replica as N/3 todo inserts (3 columns each), titles
//! from a fixed pattern — deterministic, no RNG. Each figure is the best of 3 runs.
//!
//! cargo bench -p changeset --bench merge [-- --sizes 10000,100000]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use changeset::{Change, Replica, SiteId, TableSchema, Value, Write};
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

struct Sql<'a>(&'a Value);

impl rusqlite::ToSql for Sql<'_> {
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

fn batch(changes: usize) -> Vec<Change> {
    let mut source = Replica::new(SiteId([1; 16]), vec![TableSchema::todos()]);
    let writes: Vec<Write> = (0..changes.div_ceil(3))
        .map(|i| Write::Insert {
            table: "todos".into(),
            pk: vec![Value::Text(format!("0190a0b0-0000-7000-8000-{i:012}"))],
            values: vec![
                (
                    "title".into(),
                    Value::Text(format!("todo number {i} with a realistic title")),
                ),
                ("completed".into(), Value::Integer((i % 2) as i64)),
                (
                    "created_at".into(),
                    Value::Integer(1_700_000_000_000 + i as i64),
                ),
            ],
        })
        .collect();
    // One transaction per 100 todos, like a busy node.
    for chunk in writes.chunks(100) {
        source.write(chunk).expect("source writes");
    }
    source.changes()
}

fn real_merge(ext: &PathBuf, changes: &[Change]) -> Duration {
    let c = Connection::open_in_memory().expect("db");
    unsafe {
        let _g = rusqlite::LoadExtensionGuard::new(&c).expect("enable");
        c.load_extension(ext, Some("sqlite3_crsqlite_init"))
            .expect("load");
    }
    c.execute_batch(&format!(
        "{}; SELECT crsql_as_crr('todos');",
        changeset::TableSchema::todos().create_table_sql()
    ))
    .expect("schema");
    let started = Instant::now();
    let tx = c.unchecked_transaction().expect("begin");
    {
        let mut stmt = tx
            .prepare(r#"INSERT INTO crsql_changes ("table", pk, cid, val, col_version, db_version, site_id, cl, seq) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"#)
            .expect("prepare");
        for ch in changes {
            stmt.execute(rusqlite::params![
                ch.table,
                ch.pk,
                ch.cid,
                Sql(&ch.val),
                ch.col_version,
                ch.db_version.0 as i64,
                ch.site_id.0.to_vec(),
                ch.cl,
                ch.seq
            ])
            .expect("merge");
        }
    }
    tx.commit().expect("commit");
    let elapsed = started.elapsed();
    let _ = c.query_row("SELECT crsql_finalize()", [], |_| Ok(()));
    elapsed
}

fn engine_merge(changes: &[Change]) -> Duration {
    let mut r = Replica::new(SiteId([2; 16]), vec![TableSchema::todos()]);
    let started = Instant::now();
    r.merge(changes).expect("merge");
    started.elapsed()
}

fn best_of_3(mut f: impl FnMut() -> Duration) -> Duration {
    (0..3).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    let mut sizes = vec![10_000, 100_000];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--sizes" {
            sizes = args
                .next()
                .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or(sizes);
        }
    }
    let ext = std::env::var_os("CRSQLITE_EXT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/todo-hybrid/crsqlite-0.16.3/crsqlite.so")
        });
    assert!(
        ext.exists(),
        "{} missing: run ci/build-crsqlite.sh",
        ext.display()
    );
    println!(
        "{:>8}  {:>14}  {:>14}  {:>8}",
        "changes", "engine/s", "cr-sqlite/s", "ratio"
    );
    for n in sizes {
        let changes = batch(n);
        let engine = best_of_3(|| engine_merge(&changes));
        let real = best_of_3(|| real_merge(&ext, &changes));
        let per_sec = |d: Duration| changes.len() as f64 / d.as_secs_f64();
        println!(
            "{:>8}  {:>14.0}  {:>14.0}  {:>7.2}x",
            changes.len(),
            per_sec(engine),
            per_sec(real),
            per_sec(engine) / per_sec(real)
        );
        println!(
            "{{\"bench\":\"merge\",\"changes\":{},\"engine_per_sec\":{:.0},\"crsqlite_per_sec\":{:.0}}}",
            changes.len(),
            per_sec(engine),
            per_sec(real)
        );
    }
}
