//! Differential tests: random operation sequences run on real cr-sqlite (the extension built
//! by ci/build-crsqlite.sh, loaded through rusqlite) and on this crate's engine must end in
//! identical rows and identical `crsql_changes` metadata.
//!
//! Each case runs the same operations in two universes of three replicas with fixed site ids:
//! a reference universe where every replica is real cr-sqlite, and a mixed one where replica 1
//! is the engine and 0 and 2 are real. Syncs move changes between replicas in random orders
//! (real → engine, engine → real, real → real), exactly as the node and browser will. After
//! every operation each mixed replica must equal its reference twin: same rows, same changes
//! (table, pk, cid, val, col_version, db_version, site_id, cl, seq), same db_version, and the
//! same success or failure.
//!
//! DIFF_CASES sets the number of random cases (default 2000); seeds in
//! tests/differential-regressions.txt are replayed first, every run.

use std::collections::HashMap;
use std::path::PathBuf;

use changeset::{Change, DbVersion, Replica, SiteId, TableSchema, Value, Write};
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

fn extension() -> PathBuf {
    let path = std::env::var_os("CRSQLITE_EXT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/todo-hybrid/crsqlite-0.16.3/crsqlite.so")
        });
    assert!(
        path.exists(),
        "cr-sqlite extension not found at {}: run ci/build-crsqlite.sh (or set CRSQLITE_EXT)",
        path.display()
    );
    path
}

#[derive(Clone, Copy)]
enum Schema {
    /// The app's table: NOT NULL columns with defaults.
    Todos,
    /// The oracle's default: nullable columns without defaults.
    Nullable,
}

impl Schema {
    /// The table the real extension gets: created from the same schema the engine is given.
    fn sql(self) -> String {
        self.engine().create_table_sql()
    }

    fn engine(self) -> TableSchema {
        match self {
            Self::Todos => TableSchema::todos(),
            Self::Nullable => {
                let mut t = TableSchema::todos();
                for c in &mut t.columns {
                    c.not_null = false;
                    c.default = Value::Null;
                }
                t
            }
        }
    }
}

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

fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

enum Node {
    Real(Connection),
    Engine(Replica),
}

struct Universe {
    nodes: Vec<Node>,
    sites: Vec<SiteId>,
    /// watermark[to][from]
    watermarks: HashMap<(usize, usize), u64>,
}

fn site(i: usize) -> SiteId {
    SiteId([i as u8 + 1; 16])
}

fn real(i: usize, schema: Schema, ext: &PathBuf) -> Connection {
    let c = Connection::open_in_memory().expect("memory db");
    // A fixed site id: cr-sqlite keeps a crsql_site_id row 0 that exists before it loads.
    c.execute_batch(
        "CREATE TABLE crsql_site_id (site_id BLOB NOT NULL, ordinal INTEGER PRIMARY KEY);
         CREATE UNIQUE INDEX crsql_site_id_site_id ON crsql_site_id (site_id);",
    )
    .expect("site table");
    c.execute(
        "INSERT INTO crsql_site_id VALUES (?1, 0)",
        [site(i).0.to_vec()],
    )
    .expect("site id");
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&c).expect("enable loading");
        c.load_extension(ext, Some("sqlite3_crsqlite_init"))
            .expect("load cr-sqlite");
    }
    c.execute_batch(&schema.sql()).expect("schema");
    c.query_row("SELECT crsql_as_crr('todos')", [], |_| Ok(()))
        .expect("as_crr");
    c
}

impl Universe {
    fn new(kinds: &[bool], schema: Schema, ext: &PathBuf) -> Self {
        let nodes = kinds
            .iter()
            .enumerate()
            .map(|(i, is_engine)| {
                if *is_engine {
                    Node::Engine(Replica::new(site(i), vec![schema.engine()]))
                } else {
                    Node::Real(real(i, schema, ext))
                }
            })
            .collect();
        Self {
            nodes,
            sites: (0..kinds.len()).map(site).collect(),
            watermarks: HashMap::new(),
        }
    }

    fn local(&mut self, r: usize, writes: &[Write]) -> bool {
        match &mut self.nodes[r] {
            Node::Engine(e) => e.write(writes).is_ok(),
            Node::Real(c) => {
                let tx = c.unchecked_transaction().expect("begin");
                let ok = writes.iter().all(|w| run_sql(&tx, w));
                if ok {
                    tx.commit().expect("commit");
                }
                ok
            }
        }
    }

    fn changes_since(&self, r: usize, since: u64, exclude: SiteId) -> Vec<Change> {
        match &self.nodes[r] {
            Node::Engine(e) => e.changes_since(DbVersion(since), Some(exclude)),
            Node::Real(c) => read_changes(
                c,
                "WHERE db_version > ?1 AND site_id IS NOT ?2 ORDER BY db_version, seq",
                (since as i64, exclude.0.to_vec()),
            ),
        }
    }

    fn apply(&mut self, r: usize, changes: &[Change]) -> bool {
        match &mut self.nodes[r] {
            Node::Engine(e) => e.merge(changes).is_ok(),
            Node::Real(c) => {
                let tx = c.unchecked_transaction().expect("begin");
                let ok = changes.iter().all(|ch| {
                    tx.execute(
                        r#"INSERT INTO crsql_changes ("table", pk, cid, val, col_version, db_version, site_id, cl, seq) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"#,
                        rusqlite::params![ch.table, ch.pk, ch.cid, Sql(&ch.val), ch.col_version, ch.db_version.0 as i64, ch.site_id.0.to_vec(), ch.cl, ch.seq],
                    )
                    .is_ok()
                });
                if ok {
                    tx.commit().expect("commit");
                }
                ok
            }
        }
    }

    /// The oracle's sync: changes above the watermark, excluding the receiver's own, applied
    /// in one transaction; the watermark becomes the highest db_version sent.
    fn sync(&mut self, from: usize, to: usize) -> bool {
        let since = *self.watermarks.get(&(to, from)).unwrap_or(&0);
        let changes = self.changes_since(from, since, self.sites[to]);
        if changes.is_empty() {
            return true;
        }
        let ok = self.apply(to, &changes);
        if ok {
            let top = changes
                .iter()
                .map(|c| c.db_version.0)
                .max()
                .unwrap_or(since);
            self.watermarks.insert((to, from), top);
        }
        ok
    }

    /// Rows, every change (sorted, so ties in (db_version, seq) compare as sets), db_version.
    fn state(&self, r: usize) -> (Vec<Vec<Value>>, Vec<Change>, u64) {
        let (rows, mut changes, v) = match &self.nodes[r] {
            Node::Engine(e) => (
                e.rows("todos").expect("rows"),
                e.changes(),
                e.db_version().0,
            ),
            Node::Real(c) => {
                let mut stmt = c.prepare("SELECT * FROM todos ORDER BY 1").expect("select");
                let rows = stmt
                    .query_map([], |row| {
                        Ok((0..4)
                            .map(|i| from_sql(row.get_ref(i).expect("col")))
                            .collect())
                    })
                    .expect("rows")
                    .collect::<Result<Vec<Vec<Value>>, _>>()
                    .expect("rows");
                let v: i64 = c
                    .query_row("SELECT crsql_db_version()", [], |r| r.get(0))
                    .expect("v");
                (rows, read_changes(c, "", ()), v as u64)
            }
        };
        changes.sort_by(|a, b| {
            (a.db_version, a.seq, &a.pk, &a.cid).cmp(&(b.db_version, b.seq, &b.pk, &b.cid))
        });
        (rows, changes, v)
    }
}

fn read_changes(c: &Connection, filter: &str, params: impl rusqlite::Params) -> Vec<Change> {
    let mut stmt = c
        .prepare(&format!(
            r#"SELECT "table", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes {filter}"#
        ))
        .expect("changes");
    stmt.query_map(params, |r| {
        let site: Vec<u8> = r.get(6)?;
        Ok(Change {
            table: r.get(0)?,
            pk: r.get(1)?,
            cid: r.get(2)?,
            val: from_sql(r.get_ref(3)?),
            col_version: r.get(4)?,
            db_version: DbVersion(r.get::<_, i64>(5)? as u64),
            site_id: SiteId(site.try_into().expect("16-byte site")),
            cl: r.get(7)?,
            seq: r.get(8)?,
        })
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn run_sql(c: &Connection, w: &Write) -> bool {
    let cols = |values: &[(String, Value)]| {
        values
            .iter()
            .map(|(n, _)| format!("\"{n}\""))
            .collect::<Vec<_>>()
    };
    match w {
        Write::Insert { pk, values, .. } | Write::Upsert { pk, values, .. } => {
            let mut names = vec!["\"id\"".to_owned()];
            names.extend(cols(values));
            let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
            let mut sql = format!(
                "INSERT INTO todos ({}) VALUES ({})",
                names.join(", "),
                marks.join(", ")
            );
            if matches!(w, Write::Upsert { .. }) {
                let sets: Vec<String> = values
                    .iter()
                    .map(|(n, _)| format!("\"{n}\" = excluded.\"{n}\""))
                    .collect();
                sql += &if sets.is_empty() {
                    " ON CONFLICT(id) DO NOTHING".to_owned()
                } else {
                    format!(" ON CONFLICT(id) DO UPDATE SET {}", sets.join(", "))
                };
            }
            let mut params: Vec<Sql<'_>> = vec![Sql(&pk[0])];
            params.extend(values.iter().map(|(_, v)| Sql(v)));
            c.execute(&sql, rusqlite::params_from_iter(params)).is_ok()
        }
        Write::Update { pk, values, .. } => {
            let sets: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, (n, _))| format!("\"{n}\" = ?{}", i + 2))
                .collect();
            let mut params: Vec<Sql<'_>> = vec![Sql(&pk[0])];
            params.extend(values.iter().map(|(_, v)| Sql(v)));
            c.execute(
                &format!("UPDATE todos SET {} WHERE id = ?1", sets.join(", ")),
                rusqlite::params_from_iter(params),
            )
            .is_ok()
        }
        Write::Delete { pk, .. } => c
            .execute("DELETE FROM todos WHERE id = ?1", [Sql(&pk[0])])
            .is_ok(),
    }
}

/// splitmix64: small, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone)]
enum Op {
    Local(usize, Vec<Write>),
    Sync(usize, usize),
}

fn value_for(rng: &mut Rng, column: &str, allow_null: bool) -> Value {
    if allow_null && rng.below(12) == 0 {
        return Value::Null;
    }
    match column {
        "title" => match rng.below(10) {
            0 => Value::Integer(rng.below(20) as i64),
            1 => Value::Real(1.5),
            2 => Value::Blob(vec![rng.below(3) as u8]),
            _ => Value::Text(
                rng.pick(&["milk", "Milk", "eggs", "é", "zz", "", "5", "a longer title"])
                    .to_string(),
            ),
        },
        "completed" => match rng.below(8) {
            0 => Value::Text(rng.pick(&["1", "0", "yes"]).to_string()),
            1 => Value::Real(rng.pick(&[1.0, 0.5]).to_owned()),
            _ => Value::Integer(rng.below(2) as i64),
        },
        _ => match rng.below(8) {
            0 => Value::Real(2.5),
            1 => Value::Text("later".into()),
            _ => Value::Integer(rng.below(4) as i64 * 1000),
        },
    }
}

fn random_write(rng: &mut Rng, allow_null: bool) -> Write {
    let pk = vec![Value::Text(rng.pick(&["a", "b", "c", "d"]).to_string())];
    let table = "todos".to_owned();
    let columns = ["title", "completed", "created_at"];
    let some_values = |rng: &mut Rng| -> Vec<(String, Value)> {
        let mut v = Vec::new();
        for c in columns {
            if rng.below(2) == 0 {
                v.push((c.to_owned(), value_for(rng, c, allow_null)));
            }
        }
        v
    };
    match rng.below(10) {
        0..=2 => Write::Insert {
            table,
            pk,
            values: some_values(rng),
        },
        3..=4 => Write::Upsert {
            table,
            pk,
            values: some_values(rng),
        },
        5..=7 => {
            let mut values = some_values(rng);
            if values.is_empty() {
                values.push(("title".into(), value_for(rng, "title", allow_null)));
            }
            Write::Update { table, pk, values }
        }
        _ => Write::Delete { table, pk },
    }
}

fn random_ops(rng: &mut Rng, replicas: usize, allow_null: bool) -> Vec<Op> {
    let n = 5 + rng.below(30) as usize;
    (0..n)
        .map(|_| {
            if rng.below(3) == 0 {
                let from = rng.below(replicas as u64) as usize;
                let to = (from + 1 + rng.below(replicas as u64 - 1) as usize) % replicas;
                Op::Sync(from, to)
            } else {
                let r = rng.below(replicas as u64) as usize;
                let k = if rng.below(5) == 0 {
                    2 + rng.below(3) as usize
                } else {
                    1
                };
                Op::Local(r, (0..k).map(|_| random_write(rng, allow_null)).collect())
            }
        })
        .collect()
}

/// Runs one seeded case; returns a description of the first divergence.
fn run_case(seed: u64, ext: &PathBuf) -> Result<(), String> {
    let mut rng = Rng(seed);
    let schema = if rng.below(2) == 0 {
        Schema::Todos
    } else {
        Schema::Nullable
    };
    let mut ops = random_ops(&mut rng, 3, true);
    // End with a full mesh of syncs, twice, so every case also checks convergence.
    for _ in 0..2 {
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    ops.push(Op::Sync(from, to));
                }
            }
        }
    }
    let mut reference = Universe::new(&[false, false, false], schema, ext);
    let mut mixed = Universe::new(&[false, true, false], schema, ext);
    for (i, op) in ops.iter().enumerate() {
        let (a, b) = match op {
            Op::Local(r, w) => (reference.local(*r, w), mixed.local(*r, w)),
            Op::Sync(f, t) => (reference.sync(*f, *t), mixed.sync(*f, *t)),
        };
        let fail = |what: String| {
            Err(format!(
                "seed {seed}: op {i} {op:?}: {what}\nops:\n{}",
                ops.iter()
                    .enumerate()
                    .map(|(i, o)| format!("  {i}: {o:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        };
        if a != b {
            return fail(format!("real succeeded={a}, mixed succeeded={b}"));
        }
        for r in 0..3 {
            let (want, got) = (reference.state(r), mixed.state(r));
            if want.0 != got.0 {
                return fail(format!(
                    "replica {r} rows differ:\n real {:?}\n mixed {:?}",
                    want.0, got.0
                ));
            }
            if want.1 != got.1 {
                return fail(format!(
                    "replica {r} changes differ:\n real  {:?}\n mixed {:?}",
                    want.1, got.1
                ));
            }
            if want.2 != got.2 {
                return fail(format!("replica {r} db_version {} vs {}", want.2, got.2));
            }
        }
    }
    // And the replicas agree with each other after the final syncs.
    let rows0 = reference.state(0).0;
    for r in 1..3 {
        if reference.state(r).0 != rows0 {
            return Err(format!("seed {seed}: real replicas did not converge"));
        }
    }
    Ok(())
}

#[test]
fn engine_matches_real_crsqlite_on_random_operation_sequences() {
    let ext = extension();
    let regressions = include_str!("differential-regressions.txt");
    let seeds: Vec<u64> = regressions
        .lines()
        .filter_map(|l| l.split('#').next().and_then(|s| s.trim().parse().ok()))
        .collect();
    for seed in &seeds {
        if let Err(e) = run_case(*seed, &ext) {
            panic!("regression seed failed: {e}");
        }
    }
    let cases: u64 = std::env::var("DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let base: u64 = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED);
    for i in 0..cases {
        if let Err(e) = run_case(base + i, &ext) {
            panic!("{e}\n(add the seed to tests/differential-regressions.txt once fixed)");
        }
    }
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => Value::Null,
        1 => Value::Integer(match rng.below(4) {
            0 => rng.below(300) as i64,
            1 => -(rng.below(300) as i64),
            2 => (rng.next() >> rng.below(64)) as i64,
            _ => *rng.pick(&[0, 127, 128, 255, 256, i64::MAX, i64::MIN, 1 << 55, 1 << 56]),
        }),
        2 => Value::Real(*rng.pick(&[0.0, -0.0, 1.5, -2.25, 1e300, 3.0])),
        3 => {
            let len = *rng.pick(&[0usize, 1, 5, 127, 128, 255, 256, 300, 70_000]);
            Value::Text(
                (0..len)
                    .map(|i| ["a", "é", "z"][(i + rng.below(3) as usize) % 3])
                    .collect(),
            )
        }
        _ => Value::Blob((0..rng.below(300)).map(|_| rng.below(256) as u8).collect()),
    }
}

/// spec §4: our `pack_columns` is byte-for-byte `crsql_pack_columns`, and `unpack_columns`
/// reads the extension's bytes back to the same values, on thousands of random tuples.
#[test]
fn pk_codec_matches_crsql_pack_columns_byte_for_byte() {
    let c = real(0, Schema::Todos, &extension());
    let mut rng = Rng(0xC0DE);
    for _ in 0..3_000 {
        let n = 1 + rng.below(3) as usize;
        let values: Vec<Value> = (0..n).map(|_| random_value(&mut rng)).collect();
        let placeholders: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        let theirs: Vec<u8> = c
            .query_row(
                &format!("SELECT crsql_pack_columns({})", placeholders.join(", ")),
                rusqlite::params_from_iter(values.iter().map(Sql)),
                |r| r.get(0),
            )
            .expect("crsql_pack_columns");
        let ours = changeset::pack_columns(&values).expect("pack");
        assert_eq!(ours, theirs, "packing {values:?}");
        let back = changeset::unpack_columns(&theirs).expect("unpack");
        let same = back.iter().zip(&values).all(|(a, b)| match (a, b) {
            (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        });
        assert!(
            same && back.len() == values.len(),
            "unpacking {values:?} gave {back:?}"
        );
    }
}
