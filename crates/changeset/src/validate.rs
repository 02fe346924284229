//! What a replica accepts from outside: one rule for every way changes come in (a form post
//! merged locally excepted: the replica writes that itself). The node applies it to
//! `POST /api/changes`, gossip and sync pages; the browser peer and the edge to what they merge
//! from others. A batch that fails any check is rejected whole: cr-sqlite would abort on an
//! unknown column anyway, but a NULL title, a mistyped pk or an absurd counter would be merged
//! and then spread to every replica.
//!
//! # Counters
//!
//! Counters are finite: browsers hold them as JavaScript numbers, exact to 2^53 − 1
//! ([`MAX_COUNTER`]). A replica must never emit a counter its peers refuse, or the cluster
//! splits for good: a node that accepted a `col_version` of 2^53 − 1 used to write 2^53 on its
//! next edit of that cell, which every other replica refused. cr-sqlite's counters grow in two
//! ways, and each is now held in range:
//!
//! - `db_version` is the sender's clock, and cr-sqlite moves the receiver's clock up to every
//!   db_version it merges (merge spec §6: `NEXT(v) = max(committed + 1, pending, v)`), so one
//!   forged db_version used to drag every replica to the end of the range. It decides no
//!   conflict (§5: causal length, col_version, value), and our sync pages by the *responder's*
//!   db_versions, so a replica has no use for the sender's clock: it merges every change with
//!   [`MERGE_DB_VERSION`] instead ([`detach_sender_clock`]), and each merge transaction takes
//!   the receiver's own next db_version. Clocks then move only by local transactions.
//! - `col_version` and `cl` (causal length) grow by one per write of a cell, or per delete and
//!   re-insert of a row; merging keeps them. Any cap a replica accepts up to, a local write on
//!   top of a value at the cap would pass, so instead a replica refuses a local write that would
//!   carry a counter past [`MAX_COUNTER`] ([`local_write_in_bounds`]): what it accepts it can
//!   forward, and what it writes every peer accepts. A cell whose counter a peer set to the cap
//!   can then no longer be edited (it can still be deleted, unless its `cl` is at the cap too):
//!   the data stays the same everywhere. Who may send changes at all is the membership design's
//!   concern.

use crate::change::{Change, SENTINEL_CID};
use crate::value::{DbVersion, Value};

/// Largest number of changes one gossip message, sync page or HTTP push may carry. A page of
/// todos is 3–4 changes per todo, so this is a few thousand todos per round trip.
pub const MAX_CHANGES_PER_BATCH: usize = 10_000;
/// Largest number of changes one transaction may make, on any replica. Bulk local writes
/// (clearing completed todos) and merges of large batches are split into transactions of at
/// most this many, so every db_version fits whole in a sync page, an HTTP push (at most about
/// 3.3 KB a change in JSON: 1,000 changes stay under the node's 8 MiB body limit) and a batch
/// ([`MAX_CHANGES_PER_BATCH`]): there is no transaction too large to replicate. The price is
/// atomicity: another replica may briefly show part of a bulk operation, never a different
/// end state (cr-sqlite merges each change on its own: merge spec §7).
pub const MAX_CHANGES_PER_TRANSACTION: usize = 1_000;
/// The largest counter anywhere: browsers hold counters as JavaScript numbers, exact only up to
/// 2^53 − 1.
pub const MAX_COUNTER: i64 = (1 << 53) - 1;
/// The db_version every incoming change is merged with: the lowest there is, so that cr-sqlite
/// stamps the merge with the receiver's own next db_version and no sender moves its clock.
pub const MERGE_DB_VERSION: DbVersion = DbVersion(1);
/// Longest todo id accepted in a pk (replicas write 36-character UUIDs).
pub const MAX_ID_BYTES: usize = 128;
/// A title is at most 500 characters; 4 bytes each in UTF-8 at worst.
pub const MAX_TITLE_BYTES: usize = 2_000;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
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
    #[error("{field} {value} is out of range {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error(
        "this write would take {field} past {MAX_COUNTER}, which no replica accepts; the todo \
         cannot be changed this way any more"
    )]
    CounterExhausted { field: &'static str },
    #[error(
        "a transaction of {0} changes is over the limit of {MAX_CHANGES_PER_TRANSACTION}; \
         split it"
    )]
    TransactionTooLarge(usize),
    #[error("sync page claims up_to {up_to} (more: {more}) but carries changes up to {carried}")]
    PageUpTo {
        up_to: u64,
        carried: u64,
        more: bool,
    },
}

/// Validates a batch against the `todos` schema and the counter rules.
pub fn validate(changes: &[Change]) -> Result<(), InvalidChange> {
    if changes.len() > MAX_CHANGES_PER_BATCH {
        return Err(InvalidChange::TooMany(changes.len()));
    }
    changes.iter().try_for_each(validate_one)
}

/// Checks a sync page's claim `up_to` (everything of the responder up to there is in this and
/// earlier pages: the puller's next watermark) against what the page carried. A page with more
/// to come ends exactly at its last change; a last page may claim more than it carried (the
/// responder's later db_versions can all be the puller's own changes, left out), but never less,
/// and never past [`MAX_COUNTER`]. Whose watermark it moves is the caller's concern: key it by
/// something the responder cannot forge (the node keys it by the peer's authenticated libp2p
/// id), so a peer can only ever stall its own catch-up.
pub fn page_up_to(
    changes: &[Change],
    up_to: DbVersion,
    more: bool,
) -> Result<DbVersion, InvalidChange> {
    let carried = changes.iter().map(|c| c.db_version).max();
    let consistent = match carried {
        Some(last) if more => up_to == last,
        Some(last) => up_to >= last,
        None => !more,
    };
    if !consistent || up_to.0 > MAX_COUNTER as u64 {
        return Err(InvalidChange::PageUpTo {
            up_to: up_to.0,
            carried: carried.map_or(0, |v| v.0),
            more,
        });
    }
    Ok(up_to)
}

/// Replaces each change's db_version (the sender's clock) with [`MERGE_DB_VERSION`], so merging
/// them moves this replica's clock by one transaction, however far ahead the sender claims to
/// be. The module documentation says why nothing depends on the sender's clock.
pub fn detach_sender_clock(changes: &mut [Change]) {
    for change in changes {
        change.db_version = MERGE_DB_VERSION;
    }
}

/// Checks the changes a local write made before it commits: at most
/// [`MAX_CHANGES_PER_TRANSACTION`] of them, and every counter within what peers accept.
pub fn local_write_in_bounds(made: &[Change]) -> Result<(), InvalidChange> {
    if made.len() > MAX_CHANGES_PER_TRANSACTION {
        return Err(InvalidChange::TransactionTooLarge(made.len()));
    }
    for c in made {
        if c.col_version > MAX_COUNTER {
            return Err(InvalidChange::CounterExhausted {
                field: "col_version",
            });
        }
        if c.cl > MAX_COUNTER {
            return Err(InvalidChange::CounterExhausted { field: "cl" });
        }
    }
    Ok(())
}

fn validate_one(c: &Change) -> Result<(), InvalidChange> {
    if c.table != "todos" {
        return Err(InvalidChange::UnknownTable(c.table.clone()));
    }
    check_pk(&c.pk)?;
    let ok = match (c.cid.as_str(), &c.val) {
        (SENTINEL_CID, Value::Null) => true,
        ("title", Value::Text(t)) => t.len() <= MAX_TITLE_BYTES,
        ("completed", Value::Integer(0 | 1)) => true,
        ("created_at", Value::Integer(_)) => true,
        (SENTINEL_CID | "title" | "completed" | "created_at", _) => false,
        (other, _) => return Err(InvalidChange::UnknownColumn(other.to_owned())),
    };
    if !ok {
        return Err(InvalidChange::BadValue {
            cid: c.cid.clone(),
            value: describe(&c.val),
        });
    }
    // The sender's clock is not merged (see detach_sender_clock), but it pages the sender's
    // answers and must be one a browser can hold.
    let db_version = i64::try_from(c.db_version.0).unwrap_or(i64::MAX);
    range("db_version", db_version, 1, MAX_COUNTER)?;
    range("col_version", c.col_version, 1, MAX_COUNTER)?;
    range("cl", c.cl, 1, MAX_COUNTER)?;
    range("seq", c.seq, 0, MAX_COUNTER)?;
    Ok(())
}

fn range(field: &'static str, value: i64, min: i64, max: i64) -> Result<(), InvalidChange> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InvalidChange::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

/// The pk must be exactly one TEXT value (`todos.id`), packed as cr-sqlite packs it.
fn check_pk(pk: &[u8]) -> Result<(), InvalidChange> {
    let values = crate::unpack_columns(pk).map_err(|e| InvalidChange::BadPk(e.to_string()))?;
    match values.as_slice() {
        [Value::Text(id)] if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(()),
        [other] => Err(InvalidChange::BadPk(format!(
            "id must be non-empty text of at most {MAX_ID_BYTES} bytes, got {}",
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
    use super::*;
    use crate::engine::{TableSchema, Write};
    use crate::{Replica, SiteId, pack_columns};

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

    fn out_of_range(result: Result<(), InvalidChange>) -> Option<&'static str> {
        match result {
            Err(InvalidChange::OutOfRange { field, .. }) => Some(field),
            _ => None,
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
            ("title", Value::Text("x".repeat(MAX_TITLE_BYTES + 1))),
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
    fn absurd_counters_and_oversized_batches_are_rejected() {
        for (field, set) in [
            (
                "db_version",
                (|c: &mut Change| c.db_version = DbVersion(u64::MAX)) as fn(&mut Change),
            ),
            ("db_version", |c| c.db_version = DbVersion(0)),
            ("col_version", |c| c.col_version = 0),
            ("col_version", |c| c.col_version = MAX_COUNTER + 1),
            ("cl", |c| c.cl = MAX_COUNTER + 1),
            ("seq", |c| c.seq = -1),
        ] {
            let mut c = good("title", Value::Text("x".into()));
            set(&mut c);
            assert_eq!(out_of_range(validate(&[c.clone()])), Some(field), "{c:?}");
        }
        let batch = vec![good("title", Value::Text("x".into())); MAX_CHANGES_PER_BATCH + 1];
        assert_eq!(
            validate(&batch),
            Err(InvalidChange::TooMany(MAX_CHANGES_PER_BATCH + 1))
        );
    }

    #[test]
    fn a_page_may_not_claim_more_than_it_carried() {
        let mut c = good("title", Value::Text("x".into()));
        c.db_version = DbVersion(7);
        let page = [c];
        assert_eq!(page_up_to(&page, DbVersion(7), true), Ok(DbVersion(7)));
        assert_eq!(page_up_to(&page, DbVersion(9), false), Ok(DbVersion(9)));
        assert_eq!(page_up_to(&[], DbVersion(9), false), Ok(DbVersion(9)));
        for (changes, up_to, more) in [
            (&page[..], 9, true),
            (&page[..], 6, false),
            (&[][..], 9, true),
            (&[][..], u64::MAX, false),
        ] {
            assert!(
                matches!(
                    page_up_to(changes, DbVersion(up_to), more),
                    Err(InvalidChange::PageUpTo { .. })
                ),
                "up_to {up_to}, more {more}"
            );
        }
    }

    fn todo_replica(site: u8) -> Replica {
        Replica::new(SiteId([site; 16]), vec![TableSchema::todos()])
    }

    fn rename(replica: &mut Replica, title: &str) -> Vec<Change> {
        replica
            .write(&[Write::Upsert {
                table: "todos".into(),
                pk: vec![Value::Text("0190a0b0-0000-7000-8000-000000000001".into())],
                values: vec![("title".into(), Value::Text(title.into()))],
            }])
            .expect("local write")
    }

    /// The request that once split a cluster: a todo pushed with col_version 2^53 − 1 and a
    /// db_version of 2^53 − 1. It is accepted (it is in range), but the receiver's clock does
    /// not move, and its next edit of that cell is refused before it is written, so it never
    /// emits a change its peers would refuse.
    #[test]
    fn a_replica_never_emits_a_counter_its_peers_refuse() {
        let mut poison = good("title", Value::Text("poisoned".into()));
        poison.col_version = MAX_COUNTER;
        poison.db_version = DbVersion(MAX_COUNTER as u64);
        let mut sentinel = good("-1", Value::Null);
        sentinel.db_version = poison.db_version;
        let mut incoming = vec![sentinel, poison];
        assert_eq!(validate(&incoming), Ok(()));

        let mut a = todo_replica(2);
        detach_sender_clock(&mut incoming);
        a.merge(&incoming).expect("merge");
        assert_eq!(
            a.db_version(),
            DbVersion(1),
            "the sender's clock does not drag ours"
        );

        let mut edit = a.clone();
        let made = rename(&mut edit, "mine");
        assert_eq!(
            local_write_in_bounds(&made),
            Err(InvalidChange::CounterExhausted {
                field: "col_version"
            })
        );
        // Every change this replica can still emit passes its peers' validation.
        assert_eq!(validate(&a.changes()), Ok(()));
        // An ordinary edit passes.
        let mut b = todo_replica(3);
        let made = rename(&mut b, "fine");
        assert_eq!(local_write_in_bounds(&made), Ok(()));
        assert_eq!(validate(&made), Ok(()));
    }
}
