//! Human durations: `90s`, `10m`, `1h`, `7d`, and sums such as `1h30m`.

use std::{fmt, str::FromStr, time::Duration};

/// A duration written the way operators write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

/// Why a duration string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{0}`: use a number with a unit, like 90s, 10m, 1h, 7d or 1h30m")]
pub struct DurationError(pub String);

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_owned());
        let text = s.trim();
        if text.is_empty() {
            return Err(err());
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        let mut saw_unit = true;
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                saw_unit = false;
                continue;
            }
            let unit: u64 = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(err()),
            };
            if digits.is_empty() {
                return Err(err());
            }
            let n: u64 = digits.parse().map_err(|_| err())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
            digits.clear();
            saw_unit = true;
        }
        // A bare number ("600") is seconds, as in Wazuh's <timeout> and fail2ban's bantime.
        if !saw_unit {
            if total != 0 {
                return Err(err());
            }
            total = digits.parse().map_err(|_| err())?;
        }
        if total == 0 {
            return Err(err());
        }
        Ok(Self(Duration::from_secs(total)))
    }
}

impl fmt::Display for HumanDuration {
    /// The shortest exact form: `1h30m`, `7d`, `45s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_secs(self.0.as_secs()))
    }
}

/// Formats seconds as `2d3h`, `1h30m`, `59s`, `0s`.
pub fn format_secs(mut secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if secs >= unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

/// Like [`format_secs`] but keeps only the two largest units (`2d3h`), for tables.
pub fn format_secs_short(secs: u64) -> String {
    let full = format_secs(secs);
    let mut units = 0;
    let mut out = String::new();
    for c in full.chars() {
        out.push(c);
        if c.is_ascii_alphabetic() {
            units += 1;
            if units == 2 {
                break;
            }
        }
    }
    out
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Result<u64, DurationError> {
        s.parse::<HumanDuration>().map(|d| d.0.as_secs())
    }

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(secs("90s").unwrap(), 90);
        assert_eq!(secs("10m").unwrap(), 600);
        assert_eq!(secs("1h").unwrap(), 3600);
        assert_eq!(secs("7d").unwrap(), 604_800);
        assert_eq!(secs("1h30m").unwrap(), 5400);
        assert_eq!(secs("600").unwrap(), 600);
        assert_eq!(secs("2w").unwrap(), 1_209_600);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "m",
            "10x",
            "-5m",
            "1.5h",
            "0s",
            "0",
            "10 m",
            "99999999999999999999d",
        ] {
            assert!(secs(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["45s", "1h30m", "7d", "1d1h1m1s"] {
            assert_eq!(s.parse::<HumanDuration>().unwrap().to_string(), s);
        }
        assert_eq!(format_secs_short(90_061), "1d1h");
    }
}
