//! One row of cr-sqlite's `crsql_changes`, and its JSON form.
//!
//! JSON (the HTTP API, and the format the cr-sqlite oracle's `apply` op accepts verbatim):
//! `{"table":"todos","pk":"010B027431","cid":"title","val":["text","x"],"col_version":1,
//!   "db_version":1,"site_id":"0101…","cl":1,"seq":0}`; values are `[type, value]` with type
//! null|integer|real|text|blob and blobs as hex; pk and site id are uppercase hex (lowercase is
//! accepted). JSON has no NaN or infinity, and SQLite stores NaN as NULL: a non-finite REAL is
//! refused with an error rather than silently changed.

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::value::{DbVersion, SiteId, Value};

/// The causal-length sentinel's column name: the row was created (odd cl) or deleted (even cl).
pub const SENTINEL_CID: &str = "-1";

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: String,
    /// The primary key, packed as `crsql_pack_columns` packs it (see [`crate::pk`]).
    pub pk: Vec<u8>,
    /// Column name, or [`SENTINEL_CID`].
    pub cid: String,
    pub val: Value,
    pub col_version: i64,
    pub db_version: DbVersion,
    /// The site that made the winning write (kept when a change is forwarded).
    pub site_id: SiteId,
    /// Causal length of the row: odd while it exists, even once deleted.
    pub cl: i64,
    /// Position of the change in its originating transaction.
    pub seq: i64,
}

impl Change {
    pub fn is_sentinel(&self) -> bool {
        self.cid == SENTINEL_CID
    }
}

#[derive(Serialize, Deserialize)]
struct ChangeJson {
    table: String,
    pk: String,
    cid: String,
    val: ValueJson,
    col_version: i64,
    db_version: u64,
    site_id: String,
    cl: i64,
    seq: i64,
}

/// `[type, value]`.
#[derive(Serialize, Deserialize)]
struct ValueJson(String, serde_json::Value);

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        value_to_json(self).map_err(S::Error::custom)?.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        value_from_json(ValueJson::deserialize(d)?).map_err(D::Error::custom)
    }
}

fn value_to_json(v: &Value) -> Result<ValueJson, String> {
    Ok(match v {
        Value::Null => ValueJson("null".into(), serde_json::Value::Null),
        Value::Integer(i) => ValueJson("integer".into(), (*i).into()),
        Value::Real(f) => {
            let n = serde_json::Number::from_f64(*f)
                .ok_or_else(|| format!("REAL {f} cannot be written as JSON"))?;
            ValueJson("real".into(), serde_json::Value::Number(n))
        }
        Value::Text(t) => ValueJson("text".into(), t.clone().into()),
        Value::Blob(b) => ValueJson("blob".into(), hex::encode_upper(b).into()),
    })
}

fn value_from_json(ValueJson(kind, v): ValueJson) -> Result<Value, String> {
    let bad = |what: &str| format!("a {kind} value must be {what}, got {v}");
    Ok(match kind.as_str() {
        "null" if v.is_null() => Value::Null,
        "null" => return Err(bad("null")),
        "integer" => Value::Integer(v.as_i64().ok_or_else(|| bad("a 64-bit integer"))?),
        "real" => Value::Real(v.as_f64().ok_or_else(|| bad("a number"))?),
        "text" => Value::Text(v.as_str().ok_or_else(|| bad("a string"))?.to_owned()),
        "blob" => Value::Blob(
            hex::decode(v.as_str().ok_or_else(|| bad("a hex string"))?)
                .map_err(|_| bad("a hex string"))?,
        ),
        other => return Err(format!("unknown value type {other:?}")),
    })
}

impl Serialize for Change {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ChangeJson {
            table: self.table.clone(),
            pk: hex::encode_upper(&self.pk),
            cid: self.cid.clone(),
            val: value_to_json(&self.val).map_err(S::Error::custom)?,
            col_version: self.col_version,
            db_version: self.db_version.0,
            site_id: self.site_id.to_string(),
            cl: self.cl,
            seq: self.seq,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Change {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = ChangeJson::deserialize(d)?;
        Ok(Self {
            table: j.table,
            pk: hex::decode(&j.pk).map_err(|_| D::Error::custom("pk must be hex"))?,
            cid: j.cid,
            val: value_from_json(j.val).map_err(D::Error::custom)?,
            col_version: j.col_version,
            db_version: DbVersion(j.db_version),
            site_id: j.site_id.parse().map_err(D::Error::custom)?,
            cl: j.cl,
            seq: j.seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(val: Value) -> Change {
        Change {
            table: "todos".into(),
            pk: vec![0x01, 0x0B, 0x02, b't', b'1'],
            cid: "title".into(),
            val,
            col_version: 1,
            db_version: DbVersion(1),
            site_id: SiteId([0x0A; 16]),
            cl: 1,
            seq: 0,
        }
    }

    #[test]
    fn json_matches_the_oracle_format() {
        let json = serde_json::to_value(sample(Value::Text("x".into()))).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"table":"todos","pk":"010B027431","cid":"title","val":["text","x"],
                "col_version":1,"db_version":1,"site_id":"0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A","cl":1,"seq":0})
        );
    }

    #[test]
    fn every_value_type_round_trips_through_json() {
        for v in [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Real(1.5),
            Value::Text("é\u{0}".into()),
            Value::Blob(vec![0, 0xFF]),
        ] {
            let c = sample(v);
            let back: Change =
                serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
            assert_eq!(back, c);
        }
    }

    #[test]
    fn lowercase_hex_is_accepted() {
        let c: Change = serde_json::from_str(
            r#"{"table":"todos","pk":"010b027431","cid":"-1","val":["null",null],"col_version":2,"db_version":3,"site_id":"0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a","cl":2,"seq":0}"#,
        )
        .expect("parse");
        assert!(c.is_sentinel());
        assert_eq!(c.site_id, SiteId([0x0A; 16]));
    }

    #[test]
    fn non_finite_reals_and_bad_types_are_errors() {
        assert!(serde_json::to_string(&sample(Value::Real(f64::INFINITY))).is_err());
        assert!(serde_json::from_str::<Value>(r#"["integer","7"]"#).is_err());
        assert!(serde_json::from_str::<Value>(r#"["date",1]"#).is_err());
        assert!(serde_json::from_str::<Value>(r#"["blob","xyz"]"#).is_err());
    }
}
