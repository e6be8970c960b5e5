//! The validated, resolved configuration of a run, with every default and its reason,
//! and the parsers for the human units the CLI accepts (`512MiB`, `60s`).

use std::time::Duration;

/// Read-ahead right after open or a seek: 1 MiB is a few pieces of a typical torrent and
/// costs little if the reader seeks away again.
pub const READAHEAD_FLOOR_BYTES: u64 = 1024 * 1024;
/// Read-ahead ceiling for long sequential reads: 64 MiB keeps a fast swarm busy for a
/// fraction of a second, and is capped further to a quarter of the cache so read-ahead
/// cannot evict what is being read.
pub const READAHEAD_CEILING_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "bad size {input:?}: expected a number with an optional unit (B, KiB, MiB, GiB, K, M, G)"
    )]
    BadSize { input: String },
    #[error("bad duration {input:?}: expected a number with a unit (ms, s, m, h)")]
    BadDuration { input: String },
    #[error("cache size {bytes} is too small: at least 1 MiB is needed")]
    CacheTooSmall { bytes: u64 },
}

/// Parses `512MiB`, `2G`, `65536`, `1.5GiB`. K/M/G are binary, as for memory sizes.
pub fn parse_size(input: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize {
        input: input.to_string(),
    };
    let (number, unit) = split_number_unit(input).ok_or_else(bad)?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Splits `"1.5GiB"` into `(1.5, "GiB")`; `None` when there is no number first.
fn split_number_unit(input: &str) -> Option<(f64, &str)> {
    let trimmed = input.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses `60s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration {
        input: input.to_string(),
    };
    let (number, unit) = split_number_unit(input).ok_or_else(bad)?;
    let secs = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1M").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
    }
}
