//! cr-sqlite's primary-key packing (`crsql_pack_columns`, 0.16.3), byte-exact both ways.
//!
//! ```text
//! blob   := u8 ncols, column*
//! column := hdr:u8 = (n << 3) | type, payload      type: 1 INTEGER 2 REAL 3 TEXT 4 BLOB 5 NULL
//! INTEGER: n big-endian bytes; minimal for 0 <= v < 2^56 (n = 0 for 0), else 8 (two's complement)
//! REAL   : n = 0, then 8 bytes IEEE-754 big-endian
//! TEXT/BLOB: n bytes of big-endian length (minimal, 0 for empty), then the bytes
//! NULL   : no payload
//! ```
//! Trap (spec §4): 0.16.3 decodes n < 8 bytes **unsigned** (`09 80` is 128, not −128), and so
//! must we, or keys and lengths of 128–255 would come out negative.

use crate::value::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkError {
    #[error("a packed key holds at most 255 columns, got {0}")]
    TooManyColumns(usize),
    #[error("packed key is empty")]
    Empty,
    #[error("packed key ends early (column {column})")]
    Truncated { column: usize },
    #[error("unknown column type {kind} in packed key (column {column})")]
    BadType { kind: u8, column: usize },
    #[error("invalid length width {width} for {what} (column {column})")]
    BadWidth {
        width: u8,
        what: &'static str,
        column: usize,
    },
    #[error("TEXT in packed key is not UTF-8 (column {column})")]
    NotUtf8 { column: usize },
    #[error("{0} bytes left over after the packed key")]
    Trailing(usize),
}

/// Packs values as `crsql_pack_columns(...)` does.
pub fn pack_columns(values: &[Value]) -> Result<Vec<u8>, PkError> {
    let count = u8::try_from(values.len()).map_err(|_| PkError::TooManyColumns(values.len()))?;
    let mut out = vec![count];
    for v in values {
        match v {
            Value::Null => out.push(5),
            Value::Integer(i) => {
                let n = integer_width(*i);
                out.push((n << 3) | 1);
                out.extend_from_slice(&i.to_be_bytes()[8 - usize::from(n)..]);
            }
            Value::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Text(t) => push_bytes(&mut out, 3, t.as_bytes()),
            Value::Blob(b) => push_bytes(&mut out, 4, b),
        }
    }
    Ok(out)
}

fn integer_width(i: i64) -> u8 {
    if !(0..1 << 56).contains(&i) {
        8
    } else {
        (64 - i.leading_zeros()).div_ceil(8) as u8
    }
}

fn push_bytes(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    let len = bytes.len() as u64;
    let n = (64 - len.leading_zeros()).div_ceil(8) as u8;
    out.push((n << 3) | kind);
    out.extend_from_slice(&len.to_be_bytes()[8 - usize::from(n)..]);
    out.extend_from_slice(bytes);
}

/// Unpacks a key packed by cr-sqlite (or by [`pack_columns`]).
pub fn unpack_columns(packed: &[u8]) -> Result<Vec<Value>, PkError> {
    let (&count, mut rest) = packed.split_first().ok_or(PkError::Empty)?;
    let mut out = Vec::with_capacity(usize::from(count));
    for column in 0..usize::from(count) {
        let (&hdr, tail) = rest.split_first().ok_or(PkError::Truncated { column })?;
        rest = tail;
        let (kind, n) = (hdr & 7, hdr >> 3);
        let mut take = |len: usize| -> Result<&[u8], PkError> {
            if rest.len() < len {
                return Err(PkError::Truncated { column });
            }
            let (head, tail) = rest.split_at(len);
            rest = tail;
            Ok(head)
        };
        let value = match kind {
            1 => {
                if n > 8 {
                    return Err(PkError::BadWidth {
                        width: n,
                        what: "INTEGER",
                        column,
                    });
                }
                let bytes = take(usize::from(n))?;
                if n == 8 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(bytes);
                    Value::Integer(i64::from_be_bytes(b))
                } else {
                    Value::Integer(bytes.iter().fold(0i64, |acc, b| (acc << 8) | i64::from(*b)))
                }
            }
            2 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(take(8)?);
                Value::Real(f64::from_be_bytes(b))
            }
            3 | 4 => {
                if n > 4 {
                    return Err(PkError::BadWidth {
                        width: n,
                        what: "length",
                        column,
                    });
                }
                let len = take(usize::from(n))?
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                let bytes = take(len)?.to_vec();
                if kind == 3 {
                    Value::Text(String::from_utf8(bytes).map_err(|_| PkError::NotUtf8 { column })?)
                } else {
                    Value::Blob(bytes)
                }
            }
            5 => Value::Null,
            other => {
                return Err(PkError::BadType {
                    kind: other,
                    column,
                });
            }
        };
        out.push(value);
    }
    if !rest.is_empty() {
        return Err(PkError::Trailing(rest.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(values: &[Value]) -> String {
        hex::encode_upper(pack_columns(values).expect("pack"))
    }

    /// The worked examples of the spec (§4), each reproduced there by the real extension.
    #[test]
    fn spec_examples_pack_byte_exact() {
        use Value::*;
        assert_eq!(hex(&[Text("t1".into())]), "010B027431");
        assert_eq!(hex(&[Integer(1)]), "010901");
        assert_eq!(hex(&[Integer(0)]), "0101");
        assert_eq!(hex(&[Integer(128)]), "010980");
        assert_eq!(hex(&[Integer(256)]), "01110100");
        assert_eq!(hex(&[Integer(-1)]), "0141FFFFFFFFFFFFFFFF");
        assert_eq!(hex(&[Real(1.5)]), "01023FF8000000000000");
        assert_eq!(hex(&[Blob(vec![0xCA, 0xFE])]), "010C02CAFE");
        assert_eq!(hex(&[Text(String::new())]), "0103");
        assert_eq!(hex(&[Null]), "0105");
        assert_eq!(
            hex(&[Text("a".into()), Integer(2), Blob(vec![0xFF])]),
            "030B016109020C01FF"
        );
        assert!(hex(&[Text("x".repeat(128))]).starts_with("010B8078"));
        assert!(hex(&[Text("x".repeat(300))]).starts_with("0113012C78"));
        // Checked against the extension: `SELECT hex(crsql_pack_columns(72057594037927936))`.
        assert_eq!(hex(&[Integer(1 << 56)]), "01410100000000000000");
    }

    #[test]
    fn small_widths_decode_unsigned() {
        assert_eq!(
            unpack_columns(&[0x01, 0x09, 0x80]).expect("unpack"),
            vec![Value::Integer(128)]
        );
        let mut long = vec![0x01, 0x0B, 0x80];
        long.extend(std::iter::repeat_n(b'x', 128));
        assert_eq!(
            unpack_columns(&long).expect("unpack"),
            vec![Value::Text("x".repeat(128))]
        );
    }

    #[test]
    fn text_and_integer_keys_differ() {
        assert_ne!(
            pack_columns(&[Value::Text("5".into())]),
            pack_columns(&[Value::Integer(5)])
        );
    }

    #[test]
    fn malformed_keys_are_errors() {
        assert_eq!(unpack_columns(&[]), Err(PkError::Empty));
        assert_eq!(unpack_columns(&[1]), Err(PkError::Truncated { column: 0 }));
        assert_eq!(
            unpack_columns(&[1, 0x0B, 5, b'a']),
            Err(PkError::Truncated { column: 0 })
        );
        assert_eq!(
            unpack_columns(&[1, 0x06]),
            Err(PkError::BadType { kind: 6, column: 0 })
        );
        assert_eq!(unpack_columns(&[1, 0x05, 0]), Err(PkError::Trailing(1)));
        assert_eq!(
            unpack_columns(&[1, 0x0B, 1, 0xFF]),
            Err(PkError::NotUtf8 { column: 0 })
        );
    }
}
