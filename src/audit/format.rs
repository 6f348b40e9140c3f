//! The bytes of a record: its line (fixed header fields first, then the body's), its hash,
//! a chain-start seed, and the UTC timestamps the records and rotated file names carry.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// The fields the writer sets on every record; a body's fields of the same name are dropped.
pub const RESERVED: [&str; 4] = ["seq", "time", "kind", "prev"];

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of `bytes`, 64 lowercase hex digits: the hash of a line is this of its bytes
/// without the newline.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A new chain-start seed: 32 bytes (two UUID v4s, 244 random bits) as 64 hex digits.
pub fn new_seed() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    hex(&bytes)
}

/// One record as a line without its newline: `{"seq":…,"time":…,"kind":…,"prev":…,` then
/// the body's fields in the body's order (minus [`RESERVED`] ones). A body that is not an
/// object is kept whole under `body`; `null` adds nothing. serde_json never writes a raw
/// newline, so the line is one line.
pub fn line(seq: u64, time: &str, kind: &str, prev: &str, body: &Value) -> String {
    let json = |v: &Value| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let string = |s: &str| json(&Value::from(s));
    let mut out = format!(
        "{{\"seq\":{seq},\"time\":{},\"kind\":{},\"prev\":{}",
        string(time),
        string(kind),
        string(prev)
    );
    let mut field = |k: &str, v: &Value| {
        out.push(',');
        out.push_str(&string(k));
        out.push(':');
        out.push_str(&json(v));
    };
    match body {
        Value::Object(map) => {
            for (k, v) in map {
                if !RESERVED.contains(&k.as_str()) {
                    field(k, v);
                }
            }
        }
        Value::Null => {}
        other => field("body", other),
    }
    out.push('}');
    out
}

/// Whole seconds and milliseconds since the Unix epoch (0 for a clock before it).
fn since_epoch(t: SystemTime) -> (i64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_millis())
}

/// (year, month 1–12, day 1–31) of the day `days` after 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The calendar fields of `t` in UTC: (year, month, day, hour, minute, second, ms).
fn utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let (secs, ms) = since_epoch(t);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400) as u32;
    (y, mo, d, s / 3600, s / 60 % 60, s % 60, ms)
}

/// RFC 3339 in UTC with milliseconds: `2026-12-01T06:15:00.123Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = utc(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// The compact UTC form in rotated file names: `20261201T061500Z`.
pub fn compact_utc(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = utc(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(at(951_782_400, 7)), "2000-02-29T00:00:00.007Z");
        assert_eq!(
            rfc3339_ms(at(1_798_761_599, 999)),
            "2026-12-31T23:59:59.999Z"
        );
        assert_eq!(rfc3339_ms(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
        assert_eq!(compact_utc(at(1_796_105_700, 0)), "20261201T061500Z");
    }

    #[test]
    fn lines_put_the_header_first_and_drop_reserved_fields() {
        let body = json!({"seq": 9, "zeta": 1, "alpha": "a\nb", "kind": "x"});
        let l = line(3, "T", "job", "p", &body);
        assert!(
            l.starts_with(r#"{"seq":3,"time":"T","kind":"job","prev":"p","#),
            "{l}"
        );
        assert!(!l.contains('\n'));
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["seq"], 3);
        assert_eq!(v["kind"], "job");
        assert_eq!(v["alpha"], "a\nb");
        assert_eq!(
            line(1, "T", "k", "p", &json!([1])),
            r#"{"seq":1,"time":"T","kind":"k","prev":"p","body":[1]}"#
        );
        assert_eq!(new_seed().len(), 64);
        assert_ne!(new_seed(), new_seed());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
