//! The peer address book: every address any source gave us, which are connected, which
//! failed and when to try them again, and which are banned.
//!
//! Pure bookkeeping with injected time: the torrent actor asks it whom to dial next.
//! Peer sources (trackers, `--peer`, DHT and PEX) only ever add addresses here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where an address came from (for logs and status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSource {
    /// `--peer` on the command line: retried forever, since the user named it.
    User,
    Tracker,
    Incoming,
    /// Another peer told us (BEP 11).
    Pex,
    /// A DHT lookup found it (BEP 5).
    Dht,
}

/// First retry delay after a failed connection; doubles per failure.
const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest wait between retries of one address.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Longest wait between retries of an address the user named (`--peer`, `x.pe`): it is
/// likely a peer that is just starting, and a mount with no other source waits on it.
const USER_RETRY_MAX: Duration = Duration::from_secs(5);
/// Tracker-given addresses that failed this many times in a row are forgotten.
const MAX_FAILURES: u32 = 8;

#[derive(Debug)]
struct AddrState {
    source: PeerSource,
    connected: bool,
    dialing: bool,
    failures: u32,
    next_attempt: Instant,
    banned: bool,
}

/// The address book.
#[derive(Debug, Default)]
pub struct AddressBook {
    addrs: HashMap<SocketAddr, AddrState>,
    /// Our own listening addresses, never dialled.
    own: Vec<SocketAddr>,
}

impl AddressBook {
    pub fn new(own: Vec<SocketAddr>) -> Self {
        AddressBook {
            addrs: HashMap::new(),
            own,
        }
    }

    /// Adds addresses from a source; known ones keep their state.
    pub fn add(
        &mut self,
        addrs: impl IntoIterator<Item = SocketAddr>,
        source: PeerSource,
        now: Instant,
    ) {
        for addr in addrs {
            if addr.port() == 0 || self.own.contains(&addr) {
                continue;
            }
            self.addrs.entry(addr).or_insert(AddrState {
                source,
                connected: false,
                dialing: false,
                failures: 0,
                next_attempt: now,
                banned: false,
            });
        }
    }

    /// Up to `limit` addresses to dial now; they are marked as being dialled.
    pub fn take_dial_candidates(&mut self, limit: usize, now: Instant) -> Vec<SocketAddr> {
        let mut ready: Vec<(&SocketAddr, &mut AddrState)> = self
            .addrs
            .iter_mut()
            .filter(|(_, s)| !s.connected && !s.dialing && !s.banned && s.next_attempt <= now)
            .collect();
        ready.sort_by_key(|(_, s)| (s.failures, s.source != PeerSource::User));
        ready
            .into_iter()
            .take(limit)
            .map(|(addr, state)| {
                state.dialing = true;
                *addr
            })
            .collect()
    }

    pub fn dialing_count(&self) -> usize {
        self.addrs.values().filter(|s| s.dialing).count()
    }

    pub fn known_count(&self) -> usize {
        self.addrs.len()
    }

    /// A connection to `addr` completed its handshake.
    pub fn on_connected(&mut self, addr: SocketAddr) {
        if let Some(state) = self.addrs.get_mut(&addr) {
            state.connected = true;
            state.dialing = false;
            state.failures = 0;
        }
    }

    /// A connection to `addr` ended (or never opened): schedule a retry with back-off.
    pub fn on_closed(&mut self, addr: SocketAddr, now: Instant) {
        let Some(state) = self.addrs.get_mut(&addr) else {
            return;
        };
        let was_connected = state.connected;
        state.connected = false;
        state.dialing = false;
        if was_connected {
            // It worked once: try again soon, as it may just have restarted.
            state.failures = 1;
        } else {
            state.failures = state.failures.saturating_add(1);
        }
        let factor = 1u32 << state.failures.saturating_sub(1).min(8);
        let ceiling = if state.source == PeerSource::User {
            USER_RETRY_MAX
        } else {
            RETRY_MAX
        };
        state.next_attempt = now + (RETRY_BASE * factor).min(ceiling);
        if state.failures >= MAX_FAILURES && state.source != PeerSource::User {
            self.addrs.remove(&addr);
        }
    }

    /// Never dial `addr` again in this run (corrupt data, our own address, wrong torrent).
    pub fn ban(&mut self, addr: SocketAddr) {
        if let Some(state) = self.addrs.get_mut(&addr) {
            state.banned = true;
            state.connected = false;
            state.dialing = false;
        }
    }

    pub fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.addrs.get(addr).is_some_and(|s| s.banned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 2], port))
    }

    #[test]
    fn dials_each_address_once_and_backs_off_after_failure() {
        let now = Instant::now();
        let mut book = AddressBook::new(vec![addr(1)]);
        book.add(
            [addr(1), addr(2), addr(2), addr(3)],
            PeerSource::Tracker,
            now,
        );
        assert_eq!(
            book.known_count(),
            2,
            "own address and duplicates are skipped"
        );
        let first = book.take_dial_candidates(10, now);
        assert_eq!(first.len(), 2);
        assert!(book.take_dial_candidates(10, now).is_empty());
        book.on_closed(addr(2), now);
        assert!(book.take_dial_candidates(10, now).is_empty());
        assert_eq!(
            book.take_dial_candidates(10, now + RETRY_MAX),
            vec![addr(2)]
        );
    }

    #[test]
    fn banned_addresses_are_never_dialled() {
        let now = Instant::now();
        let mut book = AddressBook::new(vec![]);
        book.add([addr(5)], PeerSource::User, now);
        book.ban(addr(5));
        assert!(book.take_dial_candidates(10, now + RETRY_MAX).is_empty());
        assert!(book.is_banned(&addr(5)));
    }

    #[test]
    fn tracker_addresses_are_forgotten_after_many_failures_but_user_ones_are_not() {
        let now = Instant::now();
        let mut book = AddressBook::new(vec![]);
        book.add([addr(6)], PeerSource::Tracker, now);
        book.add([addr(7)], PeerSource::User, now);
        for _ in 0..MAX_FAILURES {
            book.on_closed(addr(6), now);
            book.on_closed(addr(7), now);
        }
        assert_eq!(book.known_count(), 1);
    }
}
