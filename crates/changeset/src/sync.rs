//! Sans-IO sync, the protocol logic apart from storage and transport (the shape of
//! automerge's `generate_sync_message` / `receive_sync_message`).
//!
//! The puller keeps, per source site, a watermark: the highest source db_version it has
//! applied. It asks for changes above it ([`SyncState::request`]); the source answers one
//! [`Page`] cut by [`page`] — bounded in changes and bytes, and never splitting a db_version
//! (a transaction) — and the puller applies it and only then advances the watermark
//! ([`SyncState::receive`]). The node does the same over libp2p with cr-sqlite as storage; the
//! browser and edge use it with [`Replica`].

use std::collections::BTreeMap;

use crate::change::Change;
use crate::engine::{EngineError, Replica};
use crate::value::{DbVersion, SiteId, Value};

/// Limits of one page. Defaults fit a libp2p message or an HTTP response comfortably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    pub max_changes: usize,
    pub max_bytes: usize,
}

impl Default for PageLimits {
    fn default() -> Self {
        Self {
            max_changes: 5_000,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub requester: SiteId,
    pub since: DbVersion,
    pub limits: PageLimits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The source's site id: the watermark is kept per source.
    pub source: SiteId,
    pub changes: Vec<Change>,
    /// Everything of the source up to here is in this and earlier pages.
    pub up_to: DbVersion,
    pub more: bool,
}

/// The puller's state: a watermark per source site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    watermarks: BTreeMap<SiteId, DbVersion>,
}

impl SyncState {
    pub fn watermark(&self, source: SiteId) -> DbVersion {
        self.watermarks.get(&source).copied().unwrap_or_default()
    }

    /// Every watermark, to persist the state.
    pub fn watermarks(&self) -> impl Iterator<Item = (SiteId, DbVersion)> + '_ {
        self.watermarks.iter().map(|(s, v)| (*s, *v))
    }

    /// What to ask `source` for next.
    pub fn request(&self, me: SiteId, source: SiteId, limits: PageLimits) -> Request {
        Request {
            requester: me,
            since: self.watermark(source),
            limits,
        }
    }

    /// Applies a page with `apply`; advances the watermark only if it succeeded. Returns
    /// whether more pages follow.
    pub fn receive<E>(
        &mut self,
        page: &Page,
        apply: impl FnOnce(&[Change]) -> Result<(), E>,
    ) -> Result<bool, E> {
        apply(&page.changes)?;
        let w = self.watermarks.entry(page.source).or_default();
        *w = (*w).max(page.up_to);
        Ok(page.more)
    }
}

impl FromIterator<(SiteId, DbVersion)> for SyncState {
    /// Restores a persisted state.
    fn from_iter<I: IntoIterator<Item = (SiteId, DbVersion)>>(iter: I) -> Self {
        Self {
            watermarks: iter.into_iter().collect(),
        }
    }
}

/// Rough encoded size of a change, to bound pages in bytes.
fn approx_size(c: &Change) -> usize {
    let val = match &c.val {
        Value::Text(t) => t.len(),
        Value::Blob(b) => b.len(),
        _ => 9,
    };
    c.table.len() + c.pk.len() + c.cid.len() + val + 48
}

/// What a source read to cut a page from: the changes above the asker's watermark, in
/// (db_version, seq) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// All of them; `current` is the source's db_version, so an empty answer still moves the
    /// puller's watermark up.
    All { current: DbVersion },
    /// A prefix of whole transactions, with more after it (a store that reads a bounded
    /// number of rows, like the node's cr-sqlite).
    Prefix,
}

/// Cuts one page from `changes` (those above `since`, ordered by db_version): whole
/// db_versions only, within `limits`, but always at least one db_version so a transaction
/// larger than a page still goes through. The one page cutter: the node (over cr-sqlite),
/// the browser peer and the edge (over [`Replica`]) all answer with it.
pub fn page(
    source: SiteId,
    changes: Vec<Change>,
    since: DbVersion,
    fetched: Fetched,
    limits: PageLimits,
) -> Page {
    let mut end = 0;
    let (mut count, mut bytes) = (0, 0);
    let mut i = 0;
    while i < changes.len() {
        let version = changes[i].db_version;
        let group_end = changes[i..]
            .iter()
            .position(|c| c.db_version != version)
            .map_or(changes.len(), |n| i + n);
        let group_bytes: usize = changes[i..group_end].iter().map(approx_size).sum();
        let fits = count + (group_end - i) <= limits.max_changes
            && bytes + group_bytes <= limits.max_bytes;
        if end > 0 && !fits {
            break;
        }
        count += group_end - i;
        bytes += group_bytes;
        end = group_end;
        i = group_end;
    }
    let up_to = match fetched {
        Fetched::All { current } if end == changes.len() => current.max(since),
        _ if end == 0 => since,
        _ => changes[end - 1].db_version,
    };
    // An empty prefix would ask again from the same place for ever: treat it as the end.
    let more = end < changes.len() || (fetched == Fetched::Prefix && end > 0);
    let mut changes = changes;
    changes.truncate(end);
    Page {
        source,
        changes,
        up_to,
        more,
    }
}

impl Replica {
    /// Answers a sync request from this replica's state.
    pub fn serve(&self, request: &Request) -> Page {
        page(
            self.site_id(),
            self.changes_since(request.since, Some(request.requester)),
            request.since,
            Fetched::All {
                current: self.db_version(),
            },
            request.limits,
        )
    }

    /// Pulls everything `source` has that this replica lacks, page by page.
    pub fn pull_from(
        &mut self,
        state: &mut SyncState,
        source: &Replica,
        limits: PageLimits,
    ) -> Result<usize, EngineError> {
        let mut pages = 0;
        loop {
            let request = state.request(self.site_id(), source.site_id(), limits);
            let page = source.serve(&request);
            pages += 1;
            if !state.receive(&page, |changes| self.merge(changes).map(|_| ()))? {
                return Ok(pages);
            }
        }
    }
}

/// The byte form of sync messages, as nodes send them over libp2p (wire version 1):
///
/// ```text
/// request := version:u8 (=1), requester:[u8; 16], since:u64 BE, max_changes:u32 BE
/// page    := version:u8 (=1), source:[u8; 16], up_to:u64 BE, more:u8, batch (crate::wire)
/// ```
pub mod wire {
    use super::{Page, PageLimits, Request};
    use crate::value::{DbVersion, SiteId};
    use crate::wire::{WireError, decode_changes, encode_changes};

    const VERSION_1: u8 = 1;
    /// A request is exactly this long; a longer frame is refused before it is read.
    pub const REQUEST_BYTES: usize = 1 + 16 + 8 + 4;
    /// The largest page read: a full page with the longest titles fits.
    pub const MAX_PAGE_BYTES: usize = 32 * 1024 * 1024;
    const PAGE_HEADER_BYTES: usize = 1 + 16 + 8 + 1;

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum SyncWireError {
        #[error("empty message")]
        Empty,
        #[error("wire version {0} is not supported (this build speaks {VERSION_1})")]
        Version(u8),
        #[error("a {what} of {len} bytes, expected {expected}")]
        Length {
            what: &'static str,
            len: usize,
            expected: &'static str,
        },
        #[error("change batch: {0}")]
        Changes(#[from] WireError),
    }

    pub fn encode_request(r: &Request) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_BYTES);
        out.push(VERSION_1);
        out.extend_from_slice(&r.requester.0);
        out.extend_from_slice(&r.since.0.to_be_bytes());
        let max = u32::try_from(r.limits.max_changes).unwrap_or(u32::MAX);
        out.extend_from_slice(&max.to_be_bytes());
        out
    }

    /// A request; its byte limit is not on the wire and reads as the default.
    pub fn decode_request(bytes: &[u8]) -> Result<Request, SyncWireError> {
        let body = strip_version(bytes)?;
        let (Some(site), Some(since), Some(max), true) = (
            body.get(..16),
            body.get(16..24),
            body.get(24..28),
            body.len() == REQUEST_BYTES - 1,
        ) else {
            return Err(SyncWireError::Length {
                what: "request",
                len: bytes.len(),
                expected: "29",
            });
        };
        let mut requester = [0; 16];
        requester.copy_from_slice(site);
        let mut since_bytes = [0; 8];
        since_bytes.copy_from_slice(since);
        let mut max_bytes = [0; 4];
        max_bytes.copy_from_slice(max);
        Ok(Request {
            requester: SiteId(requester),
            since: DbVersion(u64::from_be_bytes(since_bytes)),
            limits: PageLimits {
                max_changes: u32::from_be_bytes(max_bytes) as usize,
                ..PageLimits::default()
            },
        })
    }

    pub fn encode_page(p: &Page) -> Vec<u8> {
        let mut out = vec![VERSION_1];
        out.extend_from_slice(&p.source.0);
        out.extend_from_slice(&p.up_to.0.to_be_bytes());
        out.push(u8::from(p.more));
        out.extend(encode_changes(&p.changes));
        out
    }

    pub fn decode_page(bytes: &[u8]) -> Result<Page, SyncWireError> {
        let body = strip_version(bytes)?;
        if bytes.len() < PAGE_HEADER_BYTES || bytes.len() > MAX_PAGE_BYTES {
            return Err(SyncWireError::Length {
                what: "page",
                len: bytes.len(),
                expected: "26 to 32 MiB",
            });
        }
        let (site, rest) = body.split_at(16);
        let (up_to, rest) = rest.split_at(8);
        let (more, changes) = rest.split_at(1);
        let mut source = [0; 16];
        source.copy_from_slice(site);
        let mut up_to_bytes = [0; 8];
        up_to_bytes.copy_from_slice(up_to);
        Ok(Page {
            source: SiteId(source),
            up_to: DbVersion(u64::from_be_bytes(up_to_bytes)),
            more: more[0] != 0,
            changes: decode_changes(changes)?,
        })
    }

    fn strip_version(bytes: &[u8]) -> Result<&[u8], SyncWireError> {
        match bytes.split_first() {
            None => Err(SyncWireError::Empty),
            Some((&VERSION_1, body)) => Ok(body),
            Some((&v, _)) => Err(SyncWireError::Version(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{TableSchema, Write};

    fn replica(site: u8, todos: usize) -> Replica {
        let mut r = Replica::new(SiteId([site; 16]), vec![TableSchema::todos()]);
        for i in 0..todos {
            r.write(&[Write::Insert {
                table: "todos".into(),
                pk: vec![Value::Text(format!("{site}-{i}"))],
                values: vec![("title".into(), Value::Text(format!("todo {i}")))],
            }])
            .expect("insert");
        }
        r
    }

    /// Two sans-IO peers looped in memory converge, in small pages, and a second round moves
    /// nothing.
    #[test]
    fn two_peers_converge_through_bounded_pages() {
        let (mut a, mut b) = (replica(1, 40), replica(2, 25));
        let (mut a_state, mut b_state) = (SyncState::default(), SyncState::default());
        let small = PageLimits {
            max_changes: 10,
            max_bytes: 1 << 20,
        };
        let pages = b.pull_from(&mut b_state, &a, small).expect("b pulls");
        assert!(pages >= 12, "40 todos × 3 changes in pages of ≤10: {pages}");
        a.pull_from(&mut a_state, &b, small).expect("a pulls");
        assert_eq!(a.rows("todos"), b.rows("todos"));
        assert_eq!(a.rows("todos").expect("rows").len(), 65);
        assert_eq!(b.pull_from(&mut b_state, &a, small).expect("again"), 1);
        assert_eq!(b_state.watermark(a.site_id()), a.db_version());
    }

    #[test]
    fn pages_never_split_a_transaction_and_always_make_progress() {
        let mut a = Replica::new(SiteId([1; 16]), vec![TableSchema::todos()]);
        let writes: Vec<Write> = (0..5)
            .map(|i| Write::Insert {
                table: "todos".into(),
                pk: vec![Value::Text(format!("t{i}"))],
                values: vec![],
            })
            .collect();
        a.write(&writes).expect("one transaction of 15 changes");
        let limits = PageLimits {
            max_changes: 4,
            max_bytes: 1 << 20,
        };
        let p = a.serve(&Request {
            requester: SiteId([2; 16]),
            since: DbVersion(0),
            limits,
        });
        assert_eq!(
            p.changes.len(),
            15,
            "a transaction larger than a page goes whole"
        );
        assert!(!p.more);
        assert_eq!(p.up_to, DbVersion(1));
    }

    #[test]
    fn a_prefix_always_has_more_and_ends_at_its_last_whole_transaction() {
        let a = replica(1, 4); // four transactions of 3 changes (db_versions 1..=4)
        let all = a.changes_since(DbVersion(0), None);
        let prefix: Vec<Change> = all
            .iter()
            .filter(|c| c.db_version.0 <= 2)
            .cloned()
            .collect();
        let roomy = PageLimits::default();
        let p = page(
            a.site_id(),
            prefix.clone(),
            DbVersion(0),
            Fetched::Prefix,
            roomy,
        );
        assert_eq!((p.changes.len(), p.up_to, p.more), (6, DbVersion(2), true));
        // Limits still cut inside the prefix, on whole transactions.
        let four = PageLimits {
            max_changes: 4,
            ..roomy
        };
        let p = page(a.site_id(), prefix, DbVersion(0), Fetched::Prefix, four);
        assert_eq!((p.changes.len(), p.up_to, p.more), (3, DbVersion(1), true));
        // And by bytes.
        let tiny = PageLimits {
            max_bytes: 1,
            ..roomy
        };
        let current = Fetched::All {
            current: a.db_version(),
        };
        let p = page(a.site_id(), all.clone(), DbVersion(0), current, tiny);
        assert_eq!((p.changes.len(), p.up_to, p.more), (3, DbVersion(1), true));
        let p = page(a.site_id(), all, DbVersion(0), current, roomy);
        assert_eq!(
            (p.changes.len(), p.up_to, p.more),
            (12, DbVersion(4), false)
        );
        // An empty prefix cannot make the asker loop.
        let p = page(a.site_id(), vec![], DbVersion(7), Fetched::Prefix, roomy);
        assert_eq!((p.up_to, p.more), (DbVersion(7), false));
    }

    #[test]
    fn a_failed_apply_does_not_advance_the_watermark() {
        let a = replica(1, 3);
        let mut state = SyncState::default();
        let page = a.serve(&state.request(SiteId([2; 16]), a.site_id(), PageLimits::default()));
        let result: Result<bool, &str> = state.receive(&page, |_| Err("disk full"));
        assert_eq!(result, Err("disk full"));
        assert_eq!(state.watermark(a.site_id()), DbVersion(0));
    }

    #[test]
    fn sync_messages_round_trip_and_damage_is_an_error() {
        let request = Request {
            requester: SiteId([9; 16]),
            since: DbVersion(u64::MAX - 1),
            limits: PageLimits {
                max_changes: 5_000,
                ..PageLimits::default()
            },
        };
        let bytes = wire::encode_request(&request);
        assert_eq!(bytes.len(), wire::REQUEST_BYTES);
        assert_eq!(wire::decode_request(&bytes), Ok(request));
        let a = replica(1, 2);
        let page = a.serve(&request_from_zero());
        let bytes = wire::encode_page(&page);
        assert_eq!(wire::decode_page(&bytes), Ok(page));
        for cut in 0..bytes.len() {
            assert!(wire::decode_page(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            wire::decode_request(&[2; 29]),
            Err(wire::SyncWireError::Version(2))
        );
        assert!(wire::decode_request(&[1; 30]).is_err());
    }

    fn request_from_zero() -> Request {
        Request {
            requester: SiteId([2; 16]),
            since: DbVersion(0),
            limits: PageLimits::default(),
        }
    }
}
