//! Scalar values written as words: whole numbers, durations, sizes, rates.

use std::time::Duration;

use crate::compile::Cx;
use crate::diagnostic::DiagnosticKind;
use crate::ruleset::Rate;
use crate::syntax::Word;

/// Parses `500ms`, `30s`, `1m30s`, `2h`, `1d`. `None` for anything else or on overflow.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(millis)?)?;
    }
    Some(Duration::from_millis(total))
}

/// Parses a byte size: `1024`, `512KiB`, `10MiB`, `1GB` (units are case-insensitive).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits].parse().ok()?;
    let factor: u64 = match text[digits..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

impl Cx<'_> {
    pub(super) fn duration(&mut self, word: &Word) -> Option<Duration> {
        let parsed = parse_duration(&word.text);
        if parsed.is_none() {
            self.error(
                DiagnosticKind::InvalidDuration {
                    text: word.text.clone(),
                },
                word.span,
            );
        }
        parsed
    }

    /// A duration that must be above zero.
    pub(super) fn positive_duration(&mut self, word: &Word, what: &str) -> Option<Duration> {
        let d = self.duration(word)?;
        if d.is_zero() {
            self.invalid_value(
                word.span,
                &format!("{what} must be longer than zero"),
                "use at least `1ms`",
            );
            return None;
        }
        Some(d)
    }

    /// A whole number within `min..=max`.
    pub(super) fn int(&mut self, word: &Word, min: u32, max: u32, what: &str) -> Option<u32> {
        match word.text.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.invalid_value(
                    word.span,
                    &format!("{what} `{}` is out of range", word.text),
                    &format!("use a number from {min} to {max}"),
                );
                None
            }
        }
    }

    pub(super) fn rate(&mut self, count: &Word, per: &Word) -> Option<Rate> {
        let count = self.int(count, 1, 1_000_000, "rate");
        let per = self.positive_duration(per, "a rate's period");
        Some(Rate {
            count: count?,
            per: per?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("5"), None, "a unit is required");
        assert_eq!(parse_duration("5sec"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
        assert_eq!(
            parse_duration("18446744073709551615d"),
            None,
            "overflow is rejected"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("1mb"), Some(1_000_000));
        assert_eq!(parse_size("5XB"), None);
        assert_eq!(parse_size("99999999999GiB"), None);
    }
}
