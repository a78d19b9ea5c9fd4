//! Durations in Go's `time.ParseDuration` syntax, as Concourse writes them.

use std::time::Duration;

/// Nanoseconds per unit, longest suffix first so `ms` wins over `m`.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // micro sign
    ("\u{3bc}s", 1_000), // Greek mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

/// Parse a duration the way Go's `time.ParseDuration` does (the syntax Concourse uses
/// for `timeout`): one or more decimal numbers, each with an optional fraction and a
/// unit out of `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, e.g. `90s`, `1h30m`, `500ms`,
/// `2m`, `1.5h`. A bare `0` is zero. Negative durations are rejected (a negative
/// timeout means nothing). The error text says what is wrong and shows the syntax.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let syntax = "use a number with a unit (ns, us, ms, s, m, h), e.g. `90s`, `1h30m`, `500ms`";
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty duration: {syntax}"));
    }
    let s = match s.strip_prefix('+') {
        Some(rest) => rest,
        None if s.starts_with('-') => {
            return Err(format!("duration `{text}` is negative: {syntax}"));
        }
        None => s,
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    let too_long = || format!("duration `{text}` is too long");
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(f) => {
                let len = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                f.split_at(len)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(format!("invalid duration `{text}`: {syntax}"));
        }
        let Some(&(unit, scale)) = UNITS.iter().find(|(u, _)| after.starts_with(u)) else {
            let what = if after.is_empty() {
                "missing unit"
            } else {
                "unknown unit"
            };
            return Err(format!("{what} in duration `{text}`: {syntax}"));
        };
        rest = &after[unit.len()..];
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| too_long())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(too_long)?;
        // Fraction digits beyond nanosecond precision cannot matter; ignoring them also
        // keeps the power of ten in range.
        let mut place = scale;
        for d in frac_digits.bytes().take(30) {
            place /= 10;
            if place == 0 {
                break;
            }
            value = value
                .checked_add(u128::from(d - b'0') * place)
                .ok_or_else(too_long)?;
        }
        total = total.checked_add(value).ok_or_else(too_long)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| too_long())?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("+5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("10µs"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("1.0000000019s"), Ok(Duration::new(1, 1)));
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "", "   ", "10", "s", "1x", "-5s", "1h-5m", ".s", "1..5s", "1d", "5 s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("1d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(
            parse_duration("99999999999999999999999999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            parse_duration("999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }
}
