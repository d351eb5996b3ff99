//! Go's `time.Duration` text (`"3h59m57.64s"`, `"-1.5s"`, `"9m59.381971686s"`, `"300ms"`), as
//! the LAPI writes a decision's remaining time.

/// Why a duration string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a Go duration (like 4h59m57.5s or -3s)")]
pub struct GoDurationError(pub String);

/// A signed duration in milliseconds (negative = already past), parsed the way Go's
/// `time.ParseDuration` does: an optional sign, then one or more decimal numbers each with a
/// unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`). Sub-millisecond parts are rounded down.
pub fn parse_millis(text: &str) -> Result<i64, GoDurationError> {
    let err = || GoDurationError(text.to_owned());
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total_ns: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        total_ns = total_ns
            .checked_add(scaled(number, unit_ns).ok_or_else(err)?)
            .ok_or_else(err)?;
        // Go's limit: about 292 years.
        if total_ns > i128::from(i64::MAX) {
            return Err(err());
        }
        rest = after;
    }
    let ms = (total_ns / 1_000_000) as i64;
    Ok(if negative { -ms } else { ms })
}

/// `number` (digits, optionally with one decimal point) times `unit_ns`, in nanoseconds.
fn scaled(number: &str, unit_ns: i128) -> Option<i128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(unit_ns)?;
    let mut scale = unit_ns;
    for digit in fraction.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        value += i128::from(digit - b'0') * scale;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn parses_what_lapi_versions_write() {
        assert_eq!(
            parse_millis("3h59m57.64s"),
            Ok(((3 * 60 + 59) * 60 + 57) * 1000 + 640)
        );
        assert_eq!(parse_millis("9m59.381971686s"), Ok(9 * 60_000 + 59_381));
        assert_eq!(parse_millis("4h"), Ok(4 * 3_600_000));
        assert_eq!(parse_millis("-3.649120855s"), Ok(-3649));
        assert_eq!(parse_millis("-1m"), Ok(-60_000));
        assert_eq!(parse_millis("300ms"), Ok(300));
        assert_eq!(parse_millis("1.5h"), Ok(5_400_000));
        assert_eq!(parse_millis(".5s"), Ok(500));
        assert_eq!(parse_millis("1µs"), Ok(0));
        assert_eq!(parse_millis("0"), Ok(0));
        assert_eq!(parse_millis("0s"), Ok(0));
        assert_eq!(parse_millis("+2s"), Ok(2000));
        assert_eq!(parse_millis("2562047h"), Ok(2_562_047 * 3_600_000));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in [
            "",
            "-",
            "5",
            "1d",
            "h",
            "1..5s",
            "1.s.",
            "s5",
            "5 s",
            "1h-5m",
            "99999999999h",
            "abc",
            ".",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
