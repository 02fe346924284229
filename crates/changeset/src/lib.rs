//! A cr-sqlite 0.16.3 compatible change format that runs anywhere (native and wasm32).
//!
//! - [`value`]: SQLite values with their storage class, site ids and db_versions;
//! - [`change`]: one row of `crsql_changes`, and its JSON form for HTTP;
//! - [`http`]: the JSON of the HTTP sync API (pages pulled, pushes), for every replica;
//! - [`pk`]: the primary-key packing of `crsql_pack_columns`, byte-exact;
//! - [`wire`]: the compact, versioned binary form of a batch of changes, for libp2p;
//! - [`affinity`]: SQLite column affinity, applied before values are stored or compared;
//! - [`engine`]: an in-memory replica that writes and merges exactly as cr-sqlite does;
//! - [`snapshot`]: a replica's whole state as bytes (what the browser keeps in OPFS);
//! - [`stored`]: a replica rebuilt from its `crsql_changes` rows, and the rows one write touched;
//! - [`sync`]: sans-IO pull sync: watermarks per source site, pages cut on whole db_versions;
//! - [`validate`]: what a replica accepts from outside: the schema and the counter rules.
//!
//! The rules are those of shared/research/crsqlite-merge-spec.md; section numbers in comments
//! refer to it.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod affinity;
pub mod change;
pub mod engine;
pub mod http;
pub mod pk;
pub mod snapshot;
pub mod stored;
pub mod sync;
pub mod validate;
pub mod value;
pub mod wire;

pub use affinity::Affinity;
pub use change::{Change, SENTINEL_CID};
pub use engine::{Column, EngineError, Replica, TableSchema, Write};
pub use pk::{PkError, pack_columns, unpack_columns};
pub use snapshot::SnapshotError;
pub use sync::{Page, PageLimits, Request, SyncState};
pub use validate::{
    InvalidChange, MAX_CHANGES_PER_BATCH, MAX_CHANGES_PER_TRANSACTION, detach_sender_clock,
    local_write_in_bounds, validate,
};
pub use value::{DbVersion, SiteId, SiteIdParseError, Value};
pub use wire::{WireError, decode_changes, encode_changes};
