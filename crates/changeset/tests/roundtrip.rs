//! Property tests: every wire type decodes to what was encoded (binary batches, JSON changes,
//! packed keys, snapshots), for any values. Failing cases are kept by proptest in
//! proptest-regressions/ and replayed first.

use changeset::{
    Change, DbVersion, Replica, SiteId, TableSchema, Value, Write, decode_changes, encode_changes,
    pack_columns, unpack_columns,
};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Real),
        ".{0,40}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    (
        "[a-z]{1,8}",
        proptest::collection::vec(value(), 1..3),
        prop_oneof![Just("-1".to_owned()), "[a-z_]{1,10}"],
        value(),
        (
            any::<i64>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<i64>(),
            any::<i64>(),
        ),
    )
        .prop_map(|(table, pk, cid, val, (cv, dbv, site, cl, seq))| Change {
            table,
            pk: pack_columns(&pk).expect("pack"),
            cid,
            val,
            col_version: cv,
            db_version: DbVersion(dbv),
            site_id: SiteId(site),
            cl,
            seq,
        })
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

proptest! {
    #[test]
    fn binary_batches_round_trip(batch in proptest::collection::vec(change(), 0..20)) {
        let back = decode_changes(&encode_changes(&batch)).expect("decode");
        prop_assert_eq!(back.len(), batch.len());
        for (a, b) in back.iter().zip(&batch) {
            prop_assert!(same_value(&a.val, &b.val));
            prop_assert_eq!((&a.table, &a.pk, &a.cid, a.col_version, a.db_version, a.site_id, a.cl, a.seq),
                            (&b.table, &b.pk, &b.cid, b.col_version, b.db_version, b.site_id, b.cl, b.seq));
        }
    }

    #[test]
    fn json_changes_round_trip(c in change()) {
        let back: Change = serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
        prop_assert!(same_value(&back.val, &c.val), "{:?} came back as {:?}", c.val, back.val);
        prop_assert_eq!((&back.pk, back.db_version, back.site_id), (&c.pk, c.db_version, c.site_id));
    }

    #[test]
    fn packed_keys_round_trip(values in proptest::collection::vec(value(), 1..5)) {
        let back = unpack_columns(&pack_columns(&values).expect("pack")).expect("unpack");
        prop_assert_eq!(back.len(), values.len());
        for (a, b) in back.iter().zip(&values) {
            prop_assert!(same_value(a, b));
        }
    }

    #[test]
    fn snapshots_round_trip(titles in proptest::collection::vec(".{0,20}", 0..20), deletes in proptest::collection::vec(any::<usize>(), 0..5)) {
        let mut r = Replica::new(SiteId([3; 16]), vec![TableSchema::todos()]);
        for (i, t) in titles.iter().enumerate() {
            r.write(&[Write::Insert { table: "todos".into(), pk: vec![Value::Text(format!("t{i}"))], values: vec![("title".into(), Value::Text(t.clone()))] }]).expect("insert");
        }
        for d in deletes {
            let i = d % titles.len().max(1);
            r.write(&[Write::Delete { table: "todos".into(), pk: vec![Value::Text(format!("t{i}"))] }]).expect("delete");
        }
        let back = Replica::from_snapshot(&r.to_snapshot(), vec![TableSchema::todos()]).expect("restore");
        prop_assert_eq!(back.changes(), r.changes());
        prop_assert_eq!(back.rows("todos").expect("rows"), r.rows("todos").expect("rows"));
    }
}
