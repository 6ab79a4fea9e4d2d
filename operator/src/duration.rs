//! Durations as the CRD spells them (`10s`, `1m30s`, `500ms`): the subset of Go's duration
//! syntax that the schema's pattern admits and that the runtime's humantime parser accepts.

use std::time::Duration;

/// Parses `^([0-9]+(ms|s|m|h))+$`; `None` for anything else or on overflow.
pub fn parse(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_schema_admits() {
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "10", "s", "10 s", "1.5s", "10sec", "-1s", "99999999999999h"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
