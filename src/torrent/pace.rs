//! How fast each peer answers our requests (`Pace`), and how the blocks of a demanded
//! piece are split among the peers that can send it (`demand_share`).
//!
//! Two timings per peer, both smoothed: its latency (a request to its block, queueing
//! included) and its interval (the gap between two of its blocks while it had more of our
//! requests queued: how fast it works through a backlog). A read waits for the slowest
//! part of its piece, so a peer much slower to answer than the quickest is left out, and
//! the others get parts in proportion to their pace, so that each part takes about as
//! long; a part under a stripe or a fifth of the piece is not worth a peer's time, so
//! that peer is left out too.
//! Pace, not download rate: a rate measures what we happened to ask of a peer, a pace
//! what it can do.
//!
//! Why these rules (bench_read's loopback swarm, 150 random 64 KiB reads a run; the README
//! has the figures): split by rate, a python-libtorrent seeder got a part of most reads,
//! and those reads were 0.3–1.6 ms slower, since on two cores waking its thread pool takes
//! the cores the other senders need. That cost falls on the others, out of sight of any
//! timing of its own blocks; with parts under a stripe or a fifth of the piece left out, it
//! was asked in 0–2 of 129 reads. The interval is smoothed over 16 blocks because senders
//! deliver in bursts: over 4, a slow sender that had just sent a burst looked fastest.

use std::time::Duration;

use tokio::time::Instant;

/// A peer answers soon enough to share a demanded piece if its latency is at most twice
/// the quickest candidate's plus this.
const SHARE_LATENCY_SLACK: Duration = Duration::from_millis(1);
/// A part smaller than this (a stripe), or than `MIN_SHARE_DIVISOR`th of the piece, is not
/// worth a peer's time: the requests, the peer's wake-up (which on a shared machine takes
/// cores from the others) and the risk of its first block coming late cost more than the
/// few blocks it takes off the others, who finish at most about a fifth later without it.
const MIN_SHARE_BLOCKS: u32 = 4;
const MIN_SHARE_DIVISOR: u32 = 5;

/// How fast one peer answers (None until measured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pace {
    pub latency: Option<Duration>,
    pub interval: Option<Duration>,
}

impl Pace {
    /// A block we asked for at `asked_at` came at `now`; the peer's previous block came at
    /// `previous_block_at`.
    pub fn on_block(&mut self, asked_at: Instant, previous_block_at: Instant, now: Instant) {
        self.latency = Some(smooth(
            self.latency,
            now.saturating_duration_since(asked_at),
        ));
        // Asked before the previous block came: the peer had it queued, so the gap is its
        // pace through a backlog, not its answer time.
        if asked_at < previous_block_at {
            let gap = now.saturating_duration_since(previous_block_at);
            self.interval = Some(smooth_slowly(self.interval, gap));
        }
    }
}

/// How many of a demanded piece's `blocks` the peer with pace `ours` should be asked for,
/// among `candidates`: the paces of every peer that can send the piece now, `ours`
/// included. Peers not yet timed are assumed as quick as the quickest timed one. A peer
/// whose part would be under `MIN_SHARE_BLOCKS` or a fifth of the piece is left out
/// (unless none is faster).
pub fn demand_share(blocks: u32, ours: Pace, candidates: &[Pace]) -> u32 {
    let quickest = candidates.iter().filter_map(|p| p.latency).min();
    let answers_soon = |pace: &Pace| match (quickest, pace.latency) {
        (Some(best), Some(latency)) => latency <= best * 2 + SHARE_LATENCY_SLACK,
        _ => true,
    };
    if !answers_soon(&ours) {
        return 0;
    }
    let soon: Vec<&Pace> = candidates.iter().filter(|p| answers_soon(p)).collect();
    let fastest = soon.iter().filter_map(|p| p.interval).min();
    let weight = |pace: &Pace| pace.interval.or(fastest).map_or(1, blocks_per_second);
    let mut sharing: Vec<u64> = soon.into_iter().map(weight).collect();
    let strongest = sharing.iter().copied().max().unwrap_or(0);
    let share_of = |w: u64, total: u64| (u64::from(blocks) * w).div_ceil(total.max(1));
    let min_share = u64::from(MIN_SHARE_BLOCKS.max(blocks / MIN_SHARE_DIVISOR));
    // Leaving a peer out grows the others' parts, so repeat until none is too small.
    loop {
        let before = sharing.len();
        let total: u64 = sharing.iter().sum();
        sharing.retain(|&w| w == strongest || share_of(w, total) >= min_share);
        if sharing.len() == before {
            break;
        }
    }
    let our_weight = weight(&ours);
    if !sharing.contains(&our_weight) {
        return 0;
    }
    let total: u64 = sharing.iter().sum();
    u32::try_from(share_of(our_weight, total))
        .unwrap_or(u32::MAX)
        .min(blocks)
}

/// Blocks per second at `interval` apart (an interval under 1 µs counts as 1 µs).
fn blocks_per_second(interval: Duration) -> u64 {
    let nanos = interval.as_nanos().max(1_000);
    u64::try_from(1_000_000_000 / nanos).unwrap_or(u64::MAX)
}

/// Exponential smoothing, the newest sample weighing a quarter.
fn smooth(old: Option<Duration>, sample: Duration) -> Duration {
    old.map_or(sample, |old| (old * 3 + sample) / 4)
}

/// Exponential smoothing over about a piece's worth of samples, the newest weighing a
/// sixteenth. Senders deliver in bursts (a segment of 4 blocks, or a disk read's worth):
/// gaps of a few µs, then one long one. Only an average over many says their pace; with
/// a quarter weight, a slow sender that had just sent a burst looked fastest.
fn smooth_slowly(old: Option<Duration>, sample: Duration) -> Duration {
    old.map_or(sample, |old| (old * 15 + sample) / 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(latency_us: u64, interval_us: Option<u64>) -> Pace {
        Pace {
            latency: Some(Duration::from_micros(latency_us)),
            interval: interval_us.map(Duration::from_micros),
        }
    }

    #[test]
    fn a_piece_is_split_by_pace_not_evenly() {
        let fast = pace(500, Some(20));
        let slow = pace(300, Some(40));
        let all = [fast, fast, slow];
        // Weights 2 : 2 : 1 of 64 blocks.
        assert_eq!(demand_share(64, fast, &all), 26);
        assert_eq!(demand_share(64, slow, &all), 13);
        // At 4 : 4 : 1 its 8 blocks would be under a fifth of the piece: left out.
        let slower = pace(300, Some(80));
        assert_eq!(demand_share(64, slower, &[fast, fast, slower]), 0);
        assert_eq!(demand_share(64, fast, &[fast, fast, slower]), 32);
        // Four equal peers keep a quarter each.
        assert_eq!(demand_share(64, fast, &[fast, fast, fast, fast]), 16);
    }

    #[test]
    fn a_peer_whose_part_would_be_tiny_is_left_out() {
        let fast = pace(500, Some(20));
        let slow = pace(300, Some(400));
        let all = [fast, fast, slow];
        // Weights 20 : 20 : 1 would give it 2 of 64 blocks.
        assert_eq!(demand_share(64, slow, &all), 0);
        assert_eq!(demand_share(64, fast, &all), 32);
        // A piece of one block still goes to the fastest peers.
        assert_eq!(demand_share(1, fast, &all), 1);
        assert_eq!(demand_share(1, slow, &all), 0);
        // The fastest stays in even when its part is small.
        assert_eq!(demand_share(2, fast, &[fast, fast, fast]), 1);
    }

    #[test]
    fn peers_not_yet_timed_count_as_the_fastest() {
        let timed = pace(500, Some(20));
        let fresh = Pace::default();
        assert_eq!(demand_share(64, fresh, &[timed, fresh]), 32);
        assert_eq!(demand_share(64, fresh, &[fresh, fresh]), 32);
        // Timed for latency, not yet for pace (it never had a backlog).
        let no_backlog = pace(500, None);
        assert_eq!(demand_share(64, no_backlog, &[timed, no_backlog]), 32);
    }

    #[test]
    fn a_peer_much_slower_to_answer_is_left_out() {
        let quick = pace(400, Some(20));
        let laggard = pace(1_900, Some(5));
        let all = [quick, laggard];
        assert_eq!(demand_share(64, laggard, &all), 0);
        assert_eq!(demand_share(64, quick, &all), 64);
        // Within twice the quickest plus the slack it stays in.
        let close = pace(1_700, Some(20));
        assert_eq!(demand_share(64, close, &[quick, close]), 32);
    }

    #[test]
    fn a_bursty_sender_is_paced_by_its_average_gap() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        // Bursts of four blocks 5 µs apart, 300 µs between bursts: 78.75 µs on average.
        let mut at = t0 + Duration::from_millis(1);
        let mut previous = at;
        for i in 0..128u32 {
            at += Duration::from_micros(if i % 4 == 0 { 300 } else { 5 });
            p.on_block(t0, previous, at);
            previous = at;
            if i >= 64 {
                let interval = p.interval.unwrap_or_default();
                assert!(
                    interval >= Duration::from_micros(65) && interval <= Duration::from_micros(95),
                    "after block {i}: {interval:?}"
                );
            }
        }
    }

    #[test]
    fn only_a_gap_with_a_request_queued_is_a_pace() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let mut p = Pace::default();
        // Asked at 0, the previous block came at 0 too (none before): a latency only.
        p.on_block(at(0), at(0), at(400));
        assert_eq!(p.latency, Some(Duration::from_micros(400)));
        assert_eq!(p.interval, None);
        // Asked at 0, the previous block came at 400: 20 µs of pace.
        p.on_block(at(0), at(400), at(420));
        assert_eq!(p.interval, Some(Duration::from_micros(20)));
        // Asked after the previous block (an idle peer asked again): no pace sample.
        p.on_block(at(1_000), at(420), at(1_300));
        assert_eq!(p.interval, Some(Duration::from_micros(20)));
        let latency = smooth(
            Some(smooth(
                Some(Duration::from_micros(400)),
                Duration::from_micros(420),
            )),
            Duration::from_micros(300),
        );
        assert_eq!(p.latency, Some(latency));
    }
}
