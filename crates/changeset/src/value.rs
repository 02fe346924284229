//! SQLite values as cr-sqlite carries them, and the ids and counters of changes.

use std::fmt;
use std::str::FromStr;

/// A value with its SQLite storage class. Comparisons between changes depend on the class
/// (INTEGER > REAL > TEXT > BLOB > NULL), so it always travels with the value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    /// SQLite's type code: 1 INTEGER, 2 REAL, 3 TEXT, 4 BLOB, 5 NULL.
    pub fn type_code(&self) -> u8 {
        match self {
            Self::Integer(_) => 1,
            Self::Real(_) => 2,
            Self::Text(_) => 3,
            Self::Blob(_) => 4,
            Self::Null => 5,
        }
    }
}

/// A replica's 16-byte id (cr-sqlite's `crsql_site_id()`); shown as 32 uppercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId(pub [u8; 16]);

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteId({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a site id is 32 hex digits, got {0:?}")]
pub struct SiteIdParseError(pub String);

impl FromStr for SiteId {
    type Err = SiteIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| SiteIdParseError(s.to_owned()))?;
        Ok(Self(out))
    }
}

/// A replica's logical clock (cr-sqlite's `db_version`): every committed transaction, local or
/// merged, is stamped with a higher one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DbVersion(pub u64);

impl fmt::Display for DbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
