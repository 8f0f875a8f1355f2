//! Humane durations: `"50ms"`, `"10s"`, `"5m"`, `"1h"`, and sums such as `"1m30s"`.
//!
//! A tiny parser instead of a crate: configuration needs four units and nothing else.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write e.g. \"10s\"")]
    Empty,
    #[error("missing unit after {0}; use ms, s, m or h (e.g. \"{0}s\")")]
    MissingUnit(u64),
    #[error("expected a number before {0:?}")]
    MissingNumber(String),
    #[error("unknown unit {0:?}; use ms, s, m or h")]
    UnknownUnit(String),
    #[error("duration too large")]
    Overflow,
}

/// Parses one or more `<integer><unit>` groups, units `ms`, `s`, `m`, `h`; no spaces or signs.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        if number.is_empty() {
            return Err(DurationError::MissingNumber(unit.to_owned()));
        }
        let n: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" => return Err(DurationError::MissingUnit(n)),
            other => return Err(DurationError::UnknownUnit(other.to_owned())),
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or(DurationError::Overflow)?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::{DurationError, parse_duration};
    use std::time::Duration;

    #[test]
    fn parses_each_unit_and_sums() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
    }

    #[test]
    fn refuses_malformed_text() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("10"), Err(DurationError::MissingUnit(10)));
        assert_eq!(parse_duration("1m30"), Err(DurationError::MissingUnit(30)));
        assert_eq!(
            parse_duration("s"),
            Err(DurationError::MissingNumber("s".into()))
        );
        assert_eq!(
            parse_duration("10 s"),
            Err(DurationError::UnknownUnit(" s".into()))
        );
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::MissingNumber("-".into()))
        );
        assert_eq!(
            parse_duration("1.5s"),
            Err(DurationError::UnknownUnit(".".into()))
        );
        assert_eq!(
            parse_duration("3d"),
            Err(DurationError::UnknownUnit("d".into()))
        );
        assert_eq!(
            parse_duration("10S"),
            Err(DurationError::UnknownUnit("S".into()))
        );
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration(&format!("{}h", u64::MAX / 60)),
            Err(DurationError::Overflow)
        );
    }
}
