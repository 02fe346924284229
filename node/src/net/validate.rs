//! Checks on changes that arrive from the network, before they reach cr-sqlite. A batch that
//! fails any check is rejected whole (and its sender penalised): cr-sqlite would abort the
//! batch on an unknown column anyway, but a NULL title, a mistyped pk or an absurd version
//! would be merged — and then spread to every replica.

use changeset::{Change, Value};

/// Largest number of changes one gossip message or sync page may carry. A page of todos is
/// 3–4 changes per todo, so this is a few thousand todos per round trip.
pub const MAX_CHANGES_PER_BATCH: usize = 10_000;
/// Versions and counters above this are refused: browsers hold them as JavaScript numbers,
/// exact only up to 2^53 − 1, and an absurd db_version would drag every replica's clock up.
pub const MAX_COUNTER: i64 = (1 << 53) - 1;
/// Longest todo id accepted in a pk (the node writes 36-character UUIDs).
const MAX_ID_BYTES: usize = 128;
/// A title is at most 500 characters; 4 bytes each in UTF-8 at worst.
const MAX_TITLE_BYTES: usize = 2_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidChange {
    #[error("batch of {0} changes is over the limit of {MAX_CHANGES_PER_BATCH}")]
    TooMany(usize),
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    #[error("unknown column {0:?}")]
    UnknownColumn(String),
    #[error("malformed primary key: {0}")]
    BadPk(String),
    #[error("column {cid:?} cannot hold {value}")]
    BadValue { cid: String, value: String },
    #[error("{field} {value} is out of range")]
    OutOfRange { field: &'static str, value: i64 },
}

/// Validates a batch against the `todos` schema.
pub fn validate(changes: &[Change]) -> Result<(), InvalidChange> {
    if changes.len() > MAX_CHANGES_PER_BATCH {
        return Err(InvalidChange::TooMany(changes.len()));
    }
    changes.iter().try_for_each(validate_one)
}

fn validate_one(c: &Change) -> Result<(), InvalidChange> {
    if c.table != "todos" {
        return Err(InvalidChange::UnknownTable(c.table.clone()));
    }
    check_pk(&c.pk)?;
    let ok = match (c.cid.as_str(), &c.val) {
        ("-1", Value::Null) => true,
        ("title", Value::Text(t)) => t.len() <= MAX_TITLE_BYTES,
        ("completed", Value::Integer(0 | 1)) => true,
        ("created_at", Value::Integer(_)) => true,
        ("-1" | "title" | "completed" | "created_at", _) => false,
        (other, _) => return Err(InvalidChange::UnknownColumn(other.to_owned())),
    };
    if !ok {
        return Err(InvalidChange::BadValue {
            cid: c.cid.clone(),
            value: describe(&c.val),
        });
    }
    range("col_version", c.col_version, 1)?;
    range("cl", c.cl, 1)?;
    range("seq", c.seq, 0)?;
    range(
        "db_version",
        i64::try_from(c.db_version.0).unwrap_or(i64::MAX),
        1,
    )?;
    Ok(())
}

fn range(field: &'static str, value: i64, min: i64) -> Result<(), InvalidChange> {
    if (min..=MAX_COUNTER).contains(&value) {
        Ok(())
    } else {
        Err(InvalidChange::OutOfRange { field, value })
    }
}

/// The pk must be exactly one TEXT value (`todos.id`), packed as cr-sqlite packs it.
fn check_pk(pk: &[u8]) -> Result<(), InvalidChange> {
    let values = changeset::unpack_columns(pk).map_err(|e| InvalidChange::BadPk(e.to_string()))?;
    match values.as_slice() {
        [Value::Text(id)] if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(()),
        [other] => Err(InvalidChange::BadPk(format!(
            "id must be non-empty text, got {}",
            describe(other)
        ))),
        _ => Err(InvalidChange::BadPk(format!(
            "{} columns, expected 1",
            values.len()
        ))),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_owned(),
        Value::Integer(i) => format!("INTEGER {i}"),
        Value::Real(f) => format!("REAL {f}"),
        Value::Text(t) => format!("TEXT of {} bytes", t.len()),
        Value::Blob(b) => format!("BLOB of {} bytes", b.len()),
    }
}

#[cfg(test)]
mod tests {
    use changeset::{DbVersion, SiteId, pack_columns};

    use super::*;

    fn good(cid: &str, val: Value) -> Change {
        Change {
            table: "todos".into(),
            pk: pack_columns(&[Value::Text("0190a0b0-0000-7000-8000-000000000001".into())])
                .expect("pk"),
            cid: cid.into(),
            val,
            col_version: 1,
            db_version: DbVersion(1),
            site_id: SiteId([1; 16]),
            cl: 1,
            seq: 0,
        }
    }

    #[test]
    fn well_formed_changes_pass() {
        let batch = [
            good("title", Value::Text("milk".into())),
            good("completed", Value::Integer(1)),
            good("created_at", Value::Integer(1_700_000_000_000)),
            good("-1", Value::Null),
        ];
        assert_eq!(validate(&batch), Ok(()));
    }

    #[test]
    fn wrong_schema_is_rejected() {
        let mut c = good("title", Value::Text("x".into()));
        c.table = "users".into();
        assert!(matches!(
            validate(&[c]),
            Err(InvalidChange::UnknownTable(_))
        ));
        let c = good("priority", Value::Integer(1));
        assert!(matches!(
            validate(&[c]),
            Err(InvalidChange::UnknownColumn(_))
        ));
        for (cid, val) in [
            ("title", Value::Null),
            ("title", Value::Integer(5)),
            ("title", Value::Text("x".repeat(2_001))),
            ("completed", Value::Integer(2)),
            ("completed", Value::Text("1".into())),
            ("created_at", Value::Real(1.0)),
            ("-1", Value::Integer(1)),
        ] {
            assert!(
                matches!(
                    validate(&[good(cid, val.clone())]),
                    Err(InvalidChange::BadValue { .. })
                ),
                "{cid} = {val:?}"
            );
        }
    }

    #[test]
    fn malformed_or_mistyped_keys_are_rejected() {
        let mut c = good("title", Value::Text("x".into()));
        c.pk = vec![1, 0x0B, 9];
        assert!(matches!(
            validate(&[c.clone()]),
            Err(InvalidChange::BadPk(_))
        ));
        c.pk = pack_columns(&[Value::Integer(5)]).expect("pk");
        assert!(matches!(
            validate(&[c.clone()]),
            Err(InvalidChange::BadPk(_))
        ));
        c.pk = pack_columns(&[Value::Text("a".into()), Value::Text("b".into())]).expect("pk");
        assert!(matches!(validate(&[c]), Err(InvalidChange::BadPk(_))));
    }

    #[test]
    fn absurd_versions_and_oversized_batches_are_rejected() {
        let mut c = good("title", Value::Text("x".into()));
        c.db_version = DbVersion(u64::MAX);
        assert!(matches!(
            validate(&[c]),
            Err(InvalidChange::OutOfRange {
                field: "db_version",
                ..
            })
        ));
        let mut c = good("title", Value::Text("x".into()));
        c.col_version = 0;
        assert!(matches!(
            validate(&[c]),
            Err(InvalidChange::OutOfRange {
                field: "col_version",
                ..
            })
        ));
        let mut c = good("title", Value::Text("x".into()));
        c.cl = MAX_COUNTER + 1;
        assert!(matches!(
            validate(&[c]),
            Err(InvalidChange::OutOfRange { field: "cl", .. })
        ));
        let batch = vec![good("title", Value::Text("x".into())); MAX_CHANGES_PER_BATCH + 1];
        assert_eq!(
            validate(&batch),
            Err(InvalidChange::TooMany(MAX_CHANGES_PER_BATCH + 1))
        );
    }
}
