//! Who gets an upload slot: BEP 3 tit-for-tat with an optimistic unchoke.
//!
//! Pure policy, no I/O: the actor gathers one `ChokeCandidate` per peer every rechoke
//! round (10 s) and applies the decision. While downloading, slots go to the interested
//! peers that give us the most (then to those whose ledger is most in their favour);
//! while seeding, to those we upload to fastest (they finish and pass it on soonest).
//! Peers that sent nothing for a minute while we wanted data (snubbed) get no regular slot.

use crate::peer::PeerKey;

/// What the policy knows of one peer.
#[derive(Clone, Debug)]
pub struct ChokeCandidate {
    pub key: PeerKey,
    pub interested: bool,
    pub snubbed: bool,
    /// Bytes/s this peer gave us over the last rounds.
    pub download_rate: u64,
    /// Bytes/s we gave this peer.
    pub upload_rate: u64,
    /// Credit ledger: total bytes received from minus sent to this peer.
    pub balance: i64,
}

/// The peers to unchoke; everyone else is choked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChokeDecision {
    pub unchoked: Vec<PeerKey>,
    pub optimistic: Option<PeerKey>,
}

/// Picks `slots` regular unchokes plus the optimistic one. `optimistic` is the peer the
/// caller rotated in (every 30 s); if it already earned a regular slot or is no longer
/// interested, `next_optimistic` is used instead.
pub fn choose_unchoked(
    candidates: &[ChokeCandidate],
    slots: usize,
    seeding: bool,
    optimistic: Option<PeerKey>,
    next_optimistic: impl Fn(&[PeerKey]) -> Option<PeerKey>,
) -> ChokeDecision {
    let mut ranked: Vec<&ChokeCandidate> = candidates
        .iter()
        .filter(|c| c.interested && !c.snubbed)
        .collect();
    ranked.sort_by(|a, b| {
        let (ra, rb) = if seeding {
            (a.upload_rate, b.upload_rate)
        } else {
            (a.download_rate, b.download_rate)
        };
        rb.cmp(&ra)
            .then(b.balance.cmp(&a.balance))
            .then(a.key.cmp(&b.key))
    });
    let unchoked: Vec<PeerKey> = ranked.iter().take(slots).map(|c| c.key).collect();
    let rest: Vec<PeerKey> = candidates
        .iter()
        .filter(|c| c.interested && !unchoked.contains(&c.key))
        .map(|c| c.key)
        .collect();
    let optimistic = match optimistic {
        Some(key) if rest.contains(&key) => Some(key),
        _ => next_optimistic(&rest),
    };
    ChokeDecision {
        unchoked,
        optimistic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: PeerKey, interested: bool, down: u64, up: u64) -> ChokeCandidate {
        ChokeCandidate {
            key,
            interested,
            snubbed: false,
            download_rate: down,
            upload_rate: up,
            balance: 0,
        }
    }

    #[test]
    fn downloading_rewards_the_peers_that_give_most() {
        let c = vec![
            cand(1, true, 10, 0),
            cand(2, true, 50, 0),
            cand(3, true, 30, 0),
            cand(4, false, 99, 0),
        ];
        let d = choose_unchoked(&c, 2, false, None, |rest| rest.first().copied());
        assert_eq!(d.unchoked, vec![2, 3]);
        assert_eq!(d.optimistic, Some(1), "the only interested peer left");
    }

    #[test]
    fn seeding_ranks_by_upload_rate() {
        let c = vec![
            cand(1, true, 0, 5),
            cand(2, true, 0, 9),
            cand(3, true, 0, 1),
        ];
        let d = choose_unchoked(&c, 1, true, None, |_| None);
        assert_eq!(d.unchoked, vec![2]);
    }

    #[test]
    fn snubbed_peers_get_no_regular_slot_but_may_be_optimistic() {
        let mut snubbed = cand(1, true, 100, 0);
        snubbed.snubbed = true;
        let c = vec![snubbed, cand(2, true, 1, 0)];
        let d = choose_unchoked(&c, 4, false, Some(1), |_| None);
        assert_eq!(d.unchoked, vec![2]);
        assert_eq!(d.optimistic, Some(1));
    }

    #[test]
    fn ledger_breaks_ties_and_optimistic_rotates_when_promoted() {
        let mut a = cand(1, true, 10, 0);
        a.balance = -5;
        let mut b = cand(2, true, 10, 0);
        b.balance = 7;
        let c = vec![a, b, cand(3, true, 0, 0)];
        let d = choose_unchoked(&c, 1, false, Some(2), |rest| rest.last().copied());
        assert_eq!(d.unchoked, vec![2]);
        assert_eq!(
            d.optimistic,
            Some(3),
            "peer 2 earned a slot, so another is optimistic"
        );
    }
}
