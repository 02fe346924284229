//! SQLite column affinity: how a declared type converts values on storage (spec §8). cr-sqlite
//! compares an incoming value *as sent* with the local value *as stored*, so a replica that
//! skipped this step would pick different winners than cr-sqlite does.

use crate::value::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// SQLite's rules (datatype3.html §3.1), in order.
    pub fn of_declared_type(declared: &str) -> Self {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Self::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Self::Text
        } else if t.contains("BLOB") || t.trim().is_empty() {
            Self::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Self::Real
        } else {
            Self::Numeric
        }
    }

    /// The value as SQLite would store it in a column of this affinity.
    pub fn apply(self, v: Value) -> Value {
        match (self, v) {
            (Self::Text, Value::Integer(i)) => Value::Text(i.to_string()),
            (Self::Text, Value::Real(f)) => Value::Text(real_to_text(f)),
            (Self::Integer | Self::Numeric, Value::Text(t)) => match parse_numeric(&t) {
                Some(n) => integral(n),
                None => Value::Text(t),
            },
            (Self::Integer | Self::Numeric, Value::Real(f)) => integral(Value::Real(f)),
            (Self::Real, Value::Text(t)) => match parse_numeric(&t) {
                Some(Value::Integer(i)) => Value::Real(i as f64),
                Some(n) => n,
                None => Value::Text(t),
            },
            (Self::Real, Value::Integer(i)) => Value::Real(i as f64),
            (_, v) => v,
        }
    }
}

/// A REAL that is exactly an integer in range is stored as INTEGER (NUMERIC/INTEGER affinity).
fn integral(v: Value) -> Value {
    match v {
        Value::Real(f)
            if f.fract() == 0.0
                && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&f) =>
        {
            Value::Integer(f as i64)
        }
        other => other,
    }
}

/// A well-formed integer or real literal (surrounding spaces allowed), as SQLite accepts it.
fn parse_numeric(t: &str) -> Option<Value> {
    let s = t.trim_matches(|c: char| c.is_ascii_whitespace());
    if s.is_empty() {
        return None;
    }
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Some(Value::Integer(i));
        }
        return s.parse::<f64>().ok().map(Value::Real);
    }
    let looks_real = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && !digits.starts_with(['e', 'E']);
    if looks_real {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Real)
    } else {
        None
    }
}

/// SQLite renders a REAL as text with "%!.15g": 15 significant digits, and ".0" kept on
/// integral values.
pub fn real_to_text(f: f64) -> String {
    if f.is_nan() {
        return String::new();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    let exp = if f == 0.0 {
        0
    } else {
        f.abs().log10().floor() as i32
    };
    if !(-5..15).contains(&exp) {
        let s = format!("{:.14e}", f);
        let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = trim_fraction(mantissa);
        let e: i32 = e.parse().unwrap_or(0);
        let mantissa = if mantissa.contains('.') {
            mantissa
        } else {
            format!("{mantissa}.0")
        };
        return format!("{mantissa}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let decimals = (14 - exp).max(0) as usize;
    let s = trim_fraction(&format!("{f:.decimals$}"));
    if s.contains('.') { s } else { format!("{s}.0") }
}

fn trim_fraction(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_like_sqlite() {
        assert_eq!(Affinity::of_declared_type("INTEGER"), Affinity::Integer);
        assert_eq!(Affinity::of_declared_type("varchar(10)"), Affinity::Text);
        assert_eq!(Affinity::of_declared_type(""), Affinity::Blob);
        assert_eq!(Affinity::of_declared_type("DOUBLE"), Affinity::Real);
        assert_eq!(Affinity::of_declared_type("DECIMAL"), Affinity::Numeric);
    }

    /// Spec E11: '7' in an INTEGER column becomes 7, 5 in a TEXT column '5', 1.0 becomes 1.
    #[test]
    fn rule_affinity_converts_as_sqlite_stores() {
        assert_eq!(
            Affinity::Integer.apply(Value::Text("7".into())),
            Value::Integer(7)
        );
        assert_eq!(
            Affinity::Integer.apply(Value::Text(" 7 ".into())),
            Value::Integer(7)
        );
        assert_eq!(
            Affinity::Integer.apply(Value::Text("7a".into())),
            Value::Text("7a".into())
        );
        assert_eq!(Affinity::Integer.apply(Value::Real(1.0)), Value::Integer(1));
        assert_eq!(Affinity::Integer.apply(Value::Real(1.5)), Value::Real(1.5));
        assert_eq!(
            Affinity::Text.apply(Value::Integer(5)),
            Value::Text("5".into())
        );
        assert_eq!(
            Affinity::Text.apply(Value::Real(1.5)),
            Value::Text("1.5".into())
        );
        assert_eq!(
            Affinity::Text.apply(Value::Real(2.0)),
            Value::Text("2.0".into())
        );
        assert_eq!(Affinity::Real.apply(Value::Integer(2)), Value::Real(2.0));
        assert_eq!(
            Affinity::Blob.apply(Value::Text("7".into())),
            Value::Text("7".into())
        );
        assert_eq!(Affinity::Integer.apply(Value::Null), Value::Null);
    }
}
