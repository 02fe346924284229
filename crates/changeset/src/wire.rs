//! The compact binary form of a batch of changes, for libp2p (gossip and sync).
//!
//! ```text
//! batch   := version:u8 (=1), strings, sites, count:varint, change*
//! strings := n:varint, (len:varint, utf8)*       table names and column names, used by index
//! sites   := n:varint, [u8; 16]*                 site ids, used by index
//! change  := table:varint, cid:varint, pk:bytes, val, col_version:zvarint,
//!            db_version:varint, site:varint, cl:zvarint, seq:zvarint
//! val     := 0 NULL | 1 zvarint | 2 f64 BE | 3 bytes (UTF-8) | 4 bytes
//! bytes   := len:varint, raw
//! ```
//! Names and sites repeat in almost every change of a batch, so they are sent once. Decoding
//! checks every count against what is left of the input (each item takes at least its smallest
//! encoding) and against the limits below, and names are short, so what a hostile batch makes
//! the decoder allocate is bounded: about its own size, plus at most
//! `MAX_CHANGES_PER_BATCH` × (a `Change` and two names) — a few MiB.

use crate::change::Change;
use crate::value::{DbVersion, SiteId, Value};

const VERSION_1: u8 = 1;
/// Longest table or column name: names are copied into every change that uses them, so their
/// length bounds how much a small batch can make the decoder allocate. SQL identifiers of this
/// app are a few bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most distinct names one batch may carry (tables and columns).
pub const MAX_NAMES: usize = 1_024;
/// The smallest encoding of one change: nine one-byte fields (indexes, pk length, value tag,
/// counters).
const MIN_CHANGE_BYTES: usize = 9;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty batch")]
    Empty,
    #[error("batch format version {0} is not supported (this build reads version {VERSION_1})")]
    Version(u8),
    #[error("batch truncated")]
    Truncated,
    #[error("malformed varint")]
    Varint,
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("index {index} out of range ({len} entries)")]
    Index { index: u64, len: usize },
    #[error("unknown value tag {0}")]
    ValueTag(u8),
    #[error("{0} bytes left over after the batch")]
    Trailing(usize),
    #[error("batch declares {count} {what}, over the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: usize,
    },
    #[error("a name of {0} bytes is over the limit of {MAX_NAME_BYTES}")]
    NameTooLong(usize),
}

pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut strings: Vec<&str> = Vec::new();
    let mut sites: Vec<SiteId> = Vec::new();
    for c in changes {
        if !strings.contains(&c.table.as_str()) {
            strings.push(&c.table);
        }
        if !strings.contains(&c.cid.as_str()) {
            strings.push(&c.cid);
        }
        if !sites.contains(&c.site_id) {
            sites.push(c.site_id);
        }
    }
    let mut out = vec![VERSION_1];
    put_varint(&mut out, strings.len() as u64);
    for s in &strings {
        put_bytes(&mut out, s.as_bytes());
    }
    put_varint(&mut out, sites.len() as u64);
    for s in &sites {
        out.extend_from_slice(&s.0);
    }
    put_varint(&mut out, changes.len() as u64);
    let index_of = |s: &str| strings.iter().position(|x| *x == s).unwrap_or(0) as u64;
    for c in changes {
        put_varint(&mut out, index_of(&c.table));
        put_varint(&mut out, index_of(&c.cid));
        put_bytes(&mut out, &c.pk);
        put_value(&mut out, &c.val);
        put_zigzag(&mut out, c.col_version);
        put_varint(&mut out, c.db_version.0);
        put_varint(
            &mut out,
            sites.iter().position(|s| *s == c.site_id).unwrap_or(0) as u64,
        );
        put_zigzag(&mut out, c.cl);
        put_zigzag(&mut out, c.seq);
    }
    out
}

pub(crate) fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Integer(i) => {
            out.push(1);
            put_zigzag(out, *i);
        }
        Value::Real(f) => {
            out.push(2);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Text(t) => {
            out.push(3);
            put_bytes(out, t.as_bytes());
        }
        Value::Blob(b) => {
            out.push(4);
            put_bytes(out, b);
        }
    }
}

pub fn decode_changes(bytes: &[u8]) -> Result<Vec<Change>, WireError> {
    let mut r = Reader(bytes);
    match r.byte().map_err(|_| WireError::Empty)? {
        VERSION_1 => {}
        v => return Err(WireError::Version(v)),
    }
    let n = r.count("names", 1, MAX_NAMES)?;
    let mut strings = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string()?;
        if name.len() > MAX_NAME_BYTES {
            return Err(WireError::NameTooLong(name.len()));
        }
        strings.push(name);
    }
    let n = r.count("sites", 16, crate::MAX_CHANGES_PER_BATCH)?;
    let mut sites = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = [0u8; 16];
        s.copy_from_slice(r.take(16)?);
        sites.push(SiteId(s));
    }
    let n = r.count("changes", MIN_CHANGE_BYTES, crate::MAX_CHANGES_PER_BATCH)?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        let table = pick(&strings, r.varint()?)?.clone();
        let cid = pick(&strings, r.varint()?)?.clone();
        let pk = r.bytes()?.to_vec();
        let val = r.value()?;
        let col_version = r.zigzag()?;
        let db_version = DbVersion(r.varint()?);
        let site_id = *pick(&sites, r.varint()?)?;
        let cl = r.zigzag()?;
        let seq = r.zigzag()?;
        changes.push(Change {
            table,
            pk,
            cid,
            val,
            col_version,
            db_version,
            site_id,
            cl,
            seq,
        });
    }
    if !r.0.is_empty() {
        return Err(WireError::Trailing(r.0.len()));
    }
    Ok(changes)
}

fn pick<T>(items: &[T], index: u64) -> Result<&T, WireError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| items.get(i))
        .ok_or(WireError::Index {
            index,
            len: items.len(),
        })
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Varint)
    }

    pub(crate) fn zigzag(&mut self) -> Result<i64, WireError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of items that each take at least `min_bytes`: never more than the bytes left
    /// could hold, nor more than `limit`.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        min_bytes: usize,
        limit: usize,
    ) -> Result<usize, WireError> {
        let n = self.varint()?;
        let count = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        if count > limit {
            return Err(WireError::TooMany {
                what,
                count: n,
                limit,
            });
        }
        if count > self.0.len() / min_bytes.max(1) {
            return Err(WireError::Truncated);
        }
        Ok(count)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        self.take(n)
    }

    pub(crate) fn value(&mut self) -> Result<Value, WireError> {
        Ok(match self.byte()? {
            0 => Value::Null,
            1 => Value::Integer(self.zigzag()?),
            2 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(self.take(8)?);
                Value::Real(f64::from_be_bytes(b))
            }
            3 => Value::Text(self.string()?),
            4 => Value::Blob(self.bytes()?.to_vec()),
            tag => return Err(WireError::ValueTag(tag)),
        })
    }

    pub(crate) fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| WireError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: i64, val: Value) -> Change {
        Change {
            table: "todos".into(),
            pk: crate::pk::pack_columns(&[Value::Text(format!("id{i}"))]).expect("pk"),
            cid: if i % 2 == 0 {
                "title".into()
            } else {
                "-1".into()
            },
            val,
            col_version: i + 1,
            db_version: DbVersion(i as u64 * 1000),
            site_id: SiteId([(i % 3) as u8; 16]),
            cl: i * 2 + 1,
            seq: i,
        }
    }

    #[test]
    fn batches_round_trip() {
        let batch: Vec<Change> = [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Real(-0.5),
            Value::Text("é".into()),
            Value::Blob(vec![1, 2, 3]),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, v)| change(i as i64, v))
        .collect();
        assert_eq!(
            decode_changes(&encode_changes(&batch)).expect("decode"),
            batch
        );
        assert_eq!(decode_changes(&encode_changes(&[])).expect("empty"), vec![]);
    }

    #[test]
    fn damaged_batches_are_errors_not_panics() {
        let bytes = encode_changes(&[change(1, Value::Text("hello".into()))]);
        for cut in 0..bytes.len() {
            assert!(decode_changes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode_changes(&extra), Err(WireError::Trailing(1)));
        let mut future = bytes;
        future[0] = 9;
        assert_eq!(decode_changes(&future), Err(WireError::Version(9)));
        // A count far beyond the bytes present must not allocate.
        assert!(matches!(
            decode_changes(&[1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
            Err(WireError::TooMany { what: "names", .. })
        ));
        assert_eq!(decode_changes(&[1, 0x05, 0, 0]), Err(WireError::Truncated));
    }
}
