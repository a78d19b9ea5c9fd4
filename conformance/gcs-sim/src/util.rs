//! Small helpers: percent-coding, XML escaping, HTTP and RFC 3339 dates, hashes,
//! byte ranges.

use jetbridge_sim_http::{civil_from_days, days_from_civil};
use md5::{Digest, Md5};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Decode `%XX` escapes (and, in query strings, `+` as a space). A `%` not
/// followed by two hex digits, or a result that is not UTF-8, is an error.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encode everything but unreserved characters and `/` (what
/// `encoding-type=url` does to names in listings).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Escape text for an XML element or attribute.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Dates.

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Whole seconds since the epoch.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    since_epoch(t).as_secs()
}

/// An HTTP date (IMF-fixdate), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn http_date(t: SystemTime) -> String {
    let secs = unix_secs(t) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch of an IMF-fixdate; `None` for anything else (a
/// conditional header with an unparseable date is ignored, as HTTP says).
pub(crate) fn parse_http_date(s: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let s = s.trim();
    let (_, rest) = s.split_once(", ")?;
    let mut it = rest.split(' ');
    let d: u32 = it.next()?.parse().ok()?;
    let mon = it.next()?;
    let m = MONTHS.iter().position(|x| *x == mon)? as u32 + 1;
    let y: i64 = it.next()?.parse().ok()?;
    let hms = it.next()?;
    if it.next()? != "GMT" || it.next().is_some() {
        return None;
    }
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok()
}

/// RFC 3339 with milliseconds in UTC, e.g. `2024-01-02T03:04:05.678Z`.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let since = since_epoch(t);
    let secs = since.as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Microseconds since the epoch (generations are taken from the clock).
pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    u64::try_from(since_epoch(t).as_micros()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------
// Hashes.

/// MD5 of `data`.
pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(data);
    h.finalize().into()
}

fn crc32c_table() -> &'static [u32; 256] {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        // Castagnoli polynomial, reflected.
        const POLY: u32 = 0x82F6_3B78;
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
            }
            *e = c;
        }
        t
    })
}

/// CRC32C (Castagnoli) of `data`, as in `x-goog-hash: crc32c=`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let t = crc32c_table();
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// Standard base64 with padding.
pub(crate) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let idx = [n >> 18, n >> 12, n >> 6, n];
        for (k, i) in idx.iter().enumerate() {
            if k <= chunk.len() {
                out.push(A[(i & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Ranges.

/// What a `Range` header asks of an object of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// No usable single byte range: answer the whole object (200). Malformed and
    /// multi-range headers end up here too.
    Whole,
    /// 206 with these bytes, `start..end` (end exclusive).
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Resolve a `Range` header value (`bytes=a-b`, `bytes=a-`, `bytes=-n`) against
/// an object of `size` bytes, as RFC 9110 says.
pub(crate) fn resolve_range(header: &str, size: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match num(b) {
            None => RangeAnswer::Whole,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if size == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Part(size.saturating_sub(n), size),
        },
        // bytes=a-
        (false, true) => match num(a) {
            None => RangeAnswer::Whole,
            Some(s) if s >= size => RangeAnswer::Unsatisfiable,
            Some(s) => RangeAnswer::Part(s, size),
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= size {
                    RangeAnswer::Unsatisfiable
                } else {
                    RangeAnswer::Part(s, e.saturating_add(1).min(size))
                }
            }
            _ => RangeAnswer::Whole,
        },
        (true, true) => RangeAnswer::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c", false).as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("%E2%82%AC", false).as_deref(), Some("€"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("abc%2", false), None);
        // Not UTF-8 once decoded.
        assert_eq!(percent_decode("%FF", false), None);
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_millis(784_111_777_123);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(rfc3339_millis(t), "1994-11-06T08:49:37.123Z");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 CET"), None);
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    proptest! {
        #[test]
        fn http_dates_round_trip(secs in 0u64..8_000_000_000) {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            prop_assert_eq!(parse_http_date(&http_date(t)), Some(secs));
        }

        #[test]
        fn percent_coding_round_trips(s in "\\PC{0,40}") {
            prop_assert_eq!(percent_decode(&percent_encode(&s), false), Some(s));
        }
    }

    #[test]
    fn hashes() {
        // The CRC32C check value, and the empty MD5.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(hex::encode(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&0xE306_9283u32.to_be_bytes()), "4waSgw==");
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(resolve_range("bytes=0-4", 10), Part(0, 5));
        assert_eq!(resolve_range("bytes=5-", 10), Part(5, 10));
        assert_eq!(resolve_range("bytes=-3", 10), Part(7, 10));
        assert_eq!(resolve_range("bytes=-30", 10), Part(0, 10));
        assert_eq!(resolve_range("bytes=8-100", 10), Part(8, 10));
        assert_eq!(resolve_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(resolve_range("bytes=10-12", 10), Unsatisfiable);
        assert_eq!(resolve_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(resolve_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(resolve_range("bytes=5-4", 10), Whole);
        assert_eq!(resolve_range("bytes=0-1,3-4", 10), Whole);
        assert_eq!(resolve_range("items=0-1", 10), Whole);
        assert_eq!(resolve_range("bytes=x-1", 10), Whole);
    }
}
