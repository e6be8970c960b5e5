//! Open file handles and the read-ahead window each one keeps.
//!
//! Handle numbers only grow (never reused in a mount), so a stale number can never reach
//! another file's window. The window is sized by how fast the handle consumes data (rate
//! × `READAHEAD_HORIZON`, between a floor and a ceiling); until a rate is measured it
//! doubles per sequential read. A seek snaps it back to the floor, and the new window
//! replaces the old one at the actor, which cancels requests nobody wants any more.

use std::ops::Range;
use std::time::{Duration, Instant};

/// Reads that land within this distance of where the last one ended still count as
/// sequential: the kernel's read-ahead issues a couple of READs at once, which may
/// arrive slightly out of order.
const SEQUENTIAL_SLACK: u64 = 4 * 1024 * 1024;
/// Read ahead this many seconds of the handle's consumption rate: enough to ride out a
/// slow peer or a piece re-fetched after a hash failure without the reader stalling.
const READAHEAD_HORIZON: Duration = Duration::from_secs(4);
/// A rate measured over less time than this is noise (the first burst of READs).
const MIN_RATE_WINDOW: Duration = Duration::from_millis(200);

/// Read-ahead of one open handle, in bytes of its file.
#[derive(Debug, Clone)]
pub struct ReadWindow {
    /// Where the next sequential read would start.
    next_offset: Option<u64>,
    ahead_bytes: u64,
    floor_bytes: u64,
    ceiling_bytes: u64,
    /// When the current sequential streak began and how much it has read.
    streak_start: Option<Instant>,
    streak_bytes: u64,
    /// File offset a sequential read must reach before the window may double again.
    grow_mark: u64,
}

impl ReadWindow {
    pub fn new(floor_bytes: u64, ceiling_bytes: u64) -> Self {
        ReadWindow {
            next_offset: None,
            ahead_bytes: floor_bytes,
            floor_bytes,
            ceiling_bytes: ceiling_bytes.max(floor_bytes),
            streak_start: None,
            streak_bytes: 0,
            grow_mark: floor_bytes / 2,
        }
    }

    /// Records a read of `len` bytes at `offset` and returns the file range to read ahead.
    pub fn on_read(&mut self, offset: u64, len: u64, file_len: u64, now: Instant) -> Range<u64> {
        let end = offset.saturating_add(len).min(file_len);
        let sequential = match self.next_offset {
            None => offset == 0,
            Some(next) => offset.abs_diff(next) <= SEQUENTIAL_SLACK,
        };
        if sequential {
            let start = *self.streak_start.get_or_insert(now);
            self.streak_bytes = self.streak_bytes.saturating_add(len);
            let elapsed = now.saturating_duration_since(start);
            if elapsed >= MIN_RATE_WINDOW {
                let rate = self.streak_bytes as f64 / elapsed.as_secs_f64();
                let wanted = (rate * READAHEAD_HORIZON.as_secs_f64()) as u64;
                self.ahead_bytes = wanted.clamp(self.floor_bytes, self.ceiling_bytes);
            } else if self.next_offset.is_some() && offset >= self.grow_mark {
                // Grow only once the reader is into the data read ahead: the kernel's own
                // read-ahead READs right after a probe would otherwise look like streaming.
                self.ahead_bytes = self.ahead_bytes.saturating_mul(2).min(self.ceiling_bytes);
                self.grow_mark = end.saturating_add(self.ahead_bytes / 2);
            }
        } else {
            self.ahead_bytes = self.floor_bytes;
            self.streak_start = Some(now);
            self.streak_bytes = len;
            self.grow_mark = end.saturating_add(self.ahead_bytes / 2);
        }
        self.next_offset = Some(end.max(if sequential {
            self.next_offset.unwrap_or(0)
        } else {
            0
        }));
        if !sequential {
            // A seek: fetch only what was asked, so the demanded piece has the peers to
            // itself; read-ahead starts once the next read shows the reader goes on.
            return end..end;
        }
        end..end.saturating_add(self.ahead_bytes).min(file_len)
    }

    pub fn ahead_bytes(&self) -> u64 {
        self.ahead_bytes
    }
}

/// One open file.
#[derive(Debug)]
pub struct Handle {
    pub file_index: usize,
    pub window: ReadWindow,
    /// The pieces last sent as read-ahead (to skip resending the same set).
    pub last_readahead: Option<(u32, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn window_doubles_until_a_rate_is_known_and_resets_on_seek() {
        let now = Instant::now();
        let mut w = ReadWindow::new(MIB, 16 * MIB);
        assert_eq!(w.on_read(0, 131072, 100 * MIB, now), 131072..131072 + MIB);
        w.on_read(131072, 131072, 100 * MIB, now);
        assert_eq!(
            w.ahead_bytes(),
            MIB,
            "not grown before half the window is read"
        );
        w.on_read(4 * 131072, 131072, 100 * MIB, now);
        assert_eq!(w.ahead_bytes(), 2 * MIB);
        for i in 5..80 {
            w.on_read(i * 131072, 131072, 100 * MIB, now);
        }
        assert_eq!(w.ahead_bytes(), 16 * MIB, "capped at the ceiling");
        let r = w.on_read(50 * MIB, 131072, 100 * MIB, now);
        assert_eq!(w.ahead_bytes(), MIB, "a seek resets to the floor");
        assert!(r.is_empty(), "no read-ahead right after a seek");
        let r = w.on_read(50 * MIB + 131072, 131072, 100 * MIB, now);
        assert_eq!(
            r,
            50 * MIB + 262144..51 * MIB + 262144,
            "the floor once it goes on"
        );
        let r = w.on_read(99 * MIB, 4 * MIB, 100 * MIB, now);
        assert_eq!(r, 100 * MIB..100 * MIB, "nothing past EOF");
    }

    #[test]
    fn slow_readers_get_a_window_sized_by_their_rate() {
        let start = Instant::now();
        let mut w = ReadWindow::new(MIB, 64 * MIB);
        // A player reading 1 MiB/s in 128 KiB steps.
        let mut offset = 0;
        for i in 0..40u64 {
            let now = start + Duration::from_millis(i * 125);
            w.on_read(offset, 131072, 1000 * MIB, now);
            offset += 131072;
        }
        // ~1 MiB/s × 4 s horizon.
        assert!(
            w.ahead_bytes() >= 3 * MIB && w.ahead_bytes() <= 5 * MIB,
            "{}",
            w.ahead_bytes()
        );
        // A fast reader (cat) hits the ceiling.
        let mut fast = ReadWindow::new(MIB, 64 * MIB);
        for i in 0..400u64 {
            fast.on_read(i * MIB, MIB, 1000 * MIB, start + Duration::from_millis(i));
        }
        assert_eq!(fast.ahead_bytes(), 64 * MIB);
    }
}
