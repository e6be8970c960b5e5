//! A token bucket shared by every upload of a torrent (`--upload-rate`).
//!
//! Never awaited: a peer's writer asks `try_take` before sending a block and, when refused,
//! waits only on its upload branch, so our own requests (downloads) keep flowing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Burst allowance: half a second of the rate, at least four blocks, so a slow limit
/// still sends whole blocks and a fast one is smooth within a second.
const BURST_SECONDS: f64 = 0.5;
const MIN_BURST_BYTES: f64 = 4.0 * 16384.0;

pub struct RateLimiter {
    rate_bytes_per_sec: f64,
    burst_bytes: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate_bytes_per_sec: u64) -> Self {
        let rate = rate_bytes_per_sec as f64;
        let burst = (rate * BURST_SECONDS).max(MIN_BURST_BYTES);
        RateLimiter {
            rate_bytes_per_sec: rate,
            burst_bytes: burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `bytes` tokens if there are enough; otherwise says how long until there are.
    pub fn try_take(&self, bytes: usize, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate_bytes_per_sec).min(self.burst_bytes);
        *last = now;
        let want = bytes as f64;
        if *tokens >= want {
            *tokens -= want;
            Ok(())
        } else {
            let missing = want - *tokens;
            Err(Duration::from_secs_f64(
                missing / self.rate_bytes_per_sec.max(1.0),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_burst_and_refills_at_the_rate() {
        let limiter = RateLimiter::new(100_000);
        let start = Instant::now();
        assert!(limiter.try_take(65_536, start).is_ok());
        let wait = limiter.try_take(16_384, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(100) && wait < Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(
            limiter
                .try_take(16_384, start + Duration::from_millis(200))
                .is_ok()
        );
    }
}
