//! Open file handles and the read-ahead window each one keeps.
//!
//! Handle numbers only grow (never reused in a mount), so a stale number can never reach
//! another file's window. The window grows while a handle reads sequentially and snaps
//! back to its floor on a seek, which also replaces the old read-ahead at the actor.

use std::ops::Range;

/// Read-ahead of one open handle, in bytes of its file.
#[derive(Debug, Clone)]
pub struct ReadWindow {
    /// Where the next sequential read would start.
    next_offset: Option<u64>,
    ahead_bytes: u64,
    floor_bytes: u64,
    ceiling_bytes: u64,
}

/// Reads that land within this distance of where the last one ended still count as
/// sequential: the kernel's read-ahead issues a couple of READs at once, which may
/// arrive slightly out of order.
const SEQUENTIAL_SLACK: u64 = 4 * 1024 * 1024;

impl ReadWindow {
    pub fn new(floor_bytes: u64, ceiling_bytes: u64) -> Self {
        ReadWindow {
            next_offset: None,
            ahead_bytes: floor_bytes,
            floor_bytes,
            ceiling_bytes: ceiling_bytes.max(floor_bytes),
        }
    }

    /// Records a read of `len` bytes at `offset` and returns the file range to read
    /// ahead (empty right after a seek into the middle, until reading proves sequential).
    pub fn on_read(&mut self, offset: u64, len: u64, file_len: u64) -> Range<u64> {
        let end = offset.saturating_add(len).min(file_len);
        let sequential = match self.next_offset {
            None => offset == 0,
            Some(next) => offset.abs_diff(next) <= SEQUENTIAL_SLACK,
        };
        if sequential {
            if self.next_offset.is_some() {
                self.ahead_bytes = (self.ahead_bytes.saturating_mul(2)).min(self.ceiling_bytes);
            }
        } else {
            self.ahead_bytes = self.floor_bytes;
        }
        self.next_offset = Some(end.max(self.next_offset.unwrap_or(0).min(end + SEQUENTIAL_SLACK)));
        if !sequential && self.next_offset.is_some() && offset != 0 {
            // A seek: read ahead only the floor, the player may seek again at once.
            return end..end.saturating_add(self.floor_bytes).min(file_len);
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

    #[test]
    fn window_grows_while_sequential_and_resets_on_seek() {
        let mut w = ReadWindow::new(1 << 20, 16 << 20);
        let mib = 1 << 20;
        assert_eq!(w.on_read(0, 131072, 100 * mib), 131072..131072 + mib);
        w.on_read(131072, 131072, 100 * mib);
        assert_eq!(w.ahead_bytes(), 2 * mib);
        for i in 2..10 {
            w.on_read(i * 131072, 131072, 100 * mib);
        }
        assert_eq!(w.ahead_bytes(), 16 * mib, "capped at the ceiling");
        let r = w.on_read(50 * mib, 131072, 100 * mib);
        assert_eq!(w.ahead_bytes(), mib, "a seek resets to the floor");
        assert_eq!(r.start, 50 * mib + 131072);
        let r = w.on_read(99 * mib, 4 * mib, 100 * mib);
        assert_eq!(r, 100 * mib..100 * mib, "nothing past EOF");
    }
}
