//! The announce loop of one torrent: which tracker to ask, when to ask again, and what to
//! do when none answers.
//!
//! Owns the BEP 12 tier order (shuffled within each tier once at start; a tracker that answers
//! moves to the front of its tier; tiers are tried in order until one tracker answers), the
//! re-announce interval clamp, the failure backoff and the event sequence (`Started` until a
//! tracker has acknowledged it, `Completed` once when `left` reaches zero, `Periodic` after,
//! `Stopped` on shutdown). Uses the parent's [`announce`]; the torrent supplies byte counts
//! through a closure and takes peers from a channel.
//!
//! Every wait (announce, peer delivery, sleep) races the shutdown token; the final `Stopped`
//! is bounded by [`AnnounceConfig::stopped_timeout`].

use std::net::SocketAddr;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, TrackerClient, TrackerError, announce,
    error_chain,
};

/// The soonest we re-announce after a success, whatever the tracker asks: some answer with
/// tiny or zero intervals, and obeying would hammer them.
pub const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);

/// The longest we wait between announces after a success. 30 min is the interval most
/// trackers ask for; a tracker asking for hours would leave us with a stale peer list.
pub const MAX_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The wait after the first round in which no tracker answered; doubles each failed round.
/// Long enough not to spin on a dead network, short enough to recover quickly from a blip.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(15);

/// The most the backoff grows to: a tracker that comes back is noticed within 30 min.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// How long the farewell `Stopped` may take. It is a courtesy (the tracker forgets us anyway
/// after an interval), so it must not hold up shutdown or the unmount.
pub const STOPPED_TIMEOUT: Duration = Duration::from_secs(5);

/// The loop's timing, defaulting to the constants above; tests shrink it.
#[derive(Clone, Debug)]
pub struct AnnounceConfig {
    /// Floor of the re-announce interval (the tracker's `min interval` raises it further).
    pub min_interval: Duration,
    /// Ceiling of the re-announce interval.
    pub max_interval: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub stopped_timeout: Duration,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            min_interval: MIN_ANNOUNCE_INTERVAL,
            max_interval: MAX_ANNOUNCE_INTERVAL,
            initial_backoff: INITIAL_BACKOFF,
            max_backoff: MAX_BACKOFF,
            stopped_timeout: STOPPED_TIMEOUT,
        }
    }
}

/// Session byte totals reported in each announce, as the announce parameters name them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes of the torrent we still lack.
    pub left: u64,
}

/// One tracker of a tier, with the `tracker id` it gave us, which goes back only to it.
#[derive(Clone, Debug)]
struct TrackerEntry {
    url: String,
    tracker_id: Option<String>,
}

/// No tracker of any tier answered in one round.
#[derive(Debug)]
struct RoundFailed {
    tried: usize,
    last_error: Option<TrackerError>,
}

/// The announce loop of one torrent. Build with [`AnnounceLoop::new`], drive with
/// [`AnnounceLoop::run`].
pub struct AnnounceLoop {
    client: TrackerClient,
    /// Tiers in priority order, none empty.
    tiers: Vec<Vec<TrackerEntry>>,
    base: AnnounceRequest,
    config: AnnounceConfig,
}

impl AnnounceLoop {
    /// A loop over `tiers` (a torrent's `announce-list`, or its lone `announce` as one tier).
    /// Empty tiers are dropped and each tier is shuffled once, as BEP 12 asks. `base` gives
    /// everything but the byte counts, event and tracker id, which the loop fills in.
    pub fn new(
        client: TrackerClient,
        tiers: Vec<Vec<String>>,
        base: AnnounceRequest,
        config: AnnounceConfig,
    ) -> Self {
        let mut rng = rand::rng();
        let tiers = tiers
            .into_iter()
            .filter(|tier| !tier.is_empty())
            .map(|mut tier| {
                tier.shuffle(&mut rng);
                tier.into_iter()
                    .map(|url| TrackerEntry {
                        url,
                        tracker_id: None,
                    })
                    .collect()
            })
            .collect();
        AnnounceLoop {
            client,
            tiers,
            base,
            config,
        }
    }

    /// Announces until `shutdown` is cancelled or `peers_out` is closed, delivering each
    /// non-empty peer list to `peers_out`, then sends `Stopped` to the tracker that last
    /// answered. `stats` is called before each announce. Returns at once with no trackers.
    pub async fn run<S>(
        mut self,
        stats: S,
        peers_out: mpsc::Sender<Vec<SocketAddr>>,
        shutdown: CancellationToken,
    ) where
        S: Fn() -> TransferStats,
    {
        if self.tiers.is_empty() {
            debug!("no trackers to announce to");
            return;
        }
        let mut started = false;
        let mut left_at_last_announce = None;
        let mut backoff = self.config.initial_backoff;
        let mut last_answered: Option<TrackerEntry> = None;

        loop {
            let current = stats();
            let event = next_event(started, left_at_last_announce, current.left);
            let request = self.request(event, current);
            let round = tokio::select! {
                round = self.announce_round(&request) => round,
                () = shutdown.cancelled() => break,
            };
            let delay = match round {
                Ok((tracker, response)) => {
                    started = true;
                    left_at_last_announce = Some(current.left);
                    backoff = self.config.initial_backoff;
                    let delay = next_announce_delay(&response, &self.config);
                    debug!(
                        tracker = %tracker.url,
                        ?event,
                        peers = response.peers.len(),
                        seeders = ?response.complete,
                        leechers = ?response.incomplete,
                        next_in = ?delay,
                        "announced"
                    );
                    if let Some(warning) = &response.warning {
                        warn!(tracker = %tracker.url, warning, "tracker warning");
                    }
                    last_answered = Some(tracker);
                    if !response.peers.is_empty() {
                        tokio::select! {
                            sent = peers_out.send(response.peers) => if sent.is_err() {
                                debug!("peer receiver closed; stopping announces");
                                break;
                            },
                            () = shutdown.cancelled() => break,
                        }
                    }
                    delay
                }
                Err(failed) => {
                    let delay = backoff;
                    backoff = backoff.saturating_mul(2).min(self.config.max_backoff);
                    let error = failed
                        .last_error
                        .as_ref()
                        .map(|err| error_chain(err))
                        .unwrap_or_default();
                    warn!(trackers = failed.tried, %error, retry_in = ?delay, "no tracker answered");
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
        }

        if let Some(tracker) = last_answered {
            self.send_stopped(tracker, stats()).await;
        }
    }

    fn request(&self, event: AnnounceEvent, stats: TransferStats) -> AnnounceRequest {
        AnnounceRequest {
            uploaded: stats.uploaded,
            downloaded: stats.downloaded,
            left: stats.left,
            event,
            tracker_id: None,
            ..self.base.clone()
        }
    }

    /// One BEP 12 round: each tier in order, each tracker of a tier in its current order,
    /// until one answers. That tracker moves to the front of its tier and is returned with
    /// its answer (and its `tracker id` updated).
    async fn announce_round(
        &mut self,
        request: &AnnounceRequest,
    ) -> Result<(TrackerEntry, AnnounceResponse), RoundFailed> {
        let mut failed = RoundFailed {
            tried: 0,
            last_error: None,
        };
        for tier in &mut self.tiers {
            let mut answer = None;
            for (position, tracker) in tier.iter_mut().enumerate() {
                let request = AnnounceRequest {
                    tracker_id: tracker.tracker_id.clone(),
                    ..request.clone()
                };
                failed.tried += 1;
                match announce(&self.client, &tracker.url, &request).await {
                    Ok(response) => {
                        if response.tracker_id.is_some() {
                            tracker.tracker_id.clone_from(&response.tracker_id);
                        }
                        answer = Some((position, response));
                        break;
                    }
                    Err(err) => {
                        debug!(tracker = %tracker.url, error = %error_chain(&err), "announce failed");
                        failed.last_error = Some(err);
                    }
                }
            }
            if let Some((position, response)) = answer {
                move_to_front(tier, position);
                if let Some(tracker) = tier.first() {
                    return Ok((tracker.clone(), response));
                }
            }
        }
        Err(failed)
    }

    /// Tells `tracker` we are leaving, within [`AnnounceConfig::stopped_timeout`]; a failure
    /// is only logged.
    async fn send_stopped(&self, tracker: TrackerEntry, stats: TransferStats) {
        let request = AnnounceRequest {
            tracker_id: tracker.tracker_id.clone(),
            ..self.request(AnnounceEvent::Stopped, stats)
        };
        let sent = tokio::time::timeout(
            self.config.stopped_timeout,
            announce(&self.client, &tracker.url, &request),
        )
        .await;
        match sent {
            Ok(Ok(_)) => debug!(tracker = %tracker.url, "announced stop"),
            Ok(Err(err)) => {
                debug!(tracker = %tracker.url, error = %error_chain(&err), "stop announce failed")
            }
            Err(_) => {
                debug!(tracker = %tracker.url, timeout = ?self.config.stopped_timeout, "stop announce timed out")
            }
        }
    }
}

/// Runs the announce loop for one torrent with the default [`AnnounceConfig`]: see
/// [`AnnounceLoop::new`] and [`AnnounceLoop::run`].
pub async fn run_announce_loop(
    client: TrackerClient,
    tiers: Vec<Vec<String>>,
    base: AnnounceRequest,
    stats: impl Fn() -> TransferStats + Send + 'static,
    peers_out: mpsc::Sender<Vec<SocketAddr>>,
    shutdown: CancellationToken,
) {
    AnnounceLoop::new(client, tiers, base, AnnounceConfig::default())
        .run(stats, peers_out, shutdown)
        .await;
}

/// `Started` until a tracker has acknowledged one; then `Completed` once, on the first
/// announce after `left` drops to zero from above; otherwise `Periodic`.
fn next_event(started: bool, left_at_last_announce: Option<u64>, left: u64) -> AnnounceEvent {
    match left_at_last_announce {
        _ if !started => AnnounceEvent::Started,
        Some(before) if before > 0 && left == 0 => AnnounceEvent::Completed,
        _ => AnnounceEvent::Periodic,
    }
}

/// The tracker's interval, raised to its `min interval` and our floor, capped by our ceiling.
fn next_announce_delay(response: &AnnounceResponse, config: &AnnounceConfig) -> Duration {
    response
        .interval
        .max(response.min_interval.unwrap_or_default())
        .max(config.min_interval)
        .min(config.max_interval)
}

/// Moves the entry at `position` to the front, keeping the others in order.
fn move_to_front<T>(tier: &mut [T], position: usize) {
    if let Some(head) = tier.get_mut(..=position) {
        head.rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::tracker::test_server::{Reply, TestTracker};
    use crate::tracker::tests::request;

    /// How long a test waits for the loop to do something before failing.
    const WAIT: Duration = Duration::from_secs(10);

    fn test_config() -> AnnounceConfig {
        AnnounceConfig {
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            stopped_timeout: Duration::from_secs(2),
        }
    }

    fn response(interval_secs: u64, min_interval_secs: Option<u64>) -> AnnounceResponse {
        AnnounceResponse {
            interval: Duration::from_secs(interval_secs),
            min_interval: min_interval_secs.map(Duration::from_secs),
            peers: Vec::new(),
            warning: None,
            complete: None,
            incomplete: None,
            tracker_id: None,
        }
    }

    /// A reply with one peer, 127.0.0.5:6881, asking to be asked again at once.
    const ONE_PEER_REPLY: &[u8] = b"d8:intervali0e5:peers6:\x7f\x00\x00\x05\x1a\xe1e";

    async fn assert_finishes(running: tokio::task::JoinHandle<()>) {
        match tokio::time::timeout(WAIT, running).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("loop task failed: {err}"),
            Err(_) => panic!("loop did not stop within {WAIT:?}"),
        }
    }

    /// A URL on which nothing listens: connecting is refused at once.
    async fn dead_tracker_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("bind: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("local addr: {err}"));
        drop(listener);
        format!("http://{addr}/announce")
    }

    #[test]
    fn delay_is_clamped_between_floor_and_ceiling() {
        let config = AnnounceConfig::default();
        assert_eq!(
            next_announce_delay(&response(1800, None), &config),
            Duration::from_secs(1800)
        );
        assert_eq!(
            next_announce_delay(&response(0, None), &config),
            MIN_ANNOUNCE_INTERVAL
        );
        assert_eq!(
            next_announce_delay(&response(10, Some(120)), &config),
            Duration::from_secs(120)
        );
        assert_eq!(
            next_announce_delay(&response(86_400, None), &config),
            MAX_ANNOUNCE_INTERVAL
        );
        assert_eq!(
            next_announce_delay(&response(60, Some(86_400)), &config),
            MAX_ANNOUNCE_INTERVAL
        );
    }

    #[test]
    fn events_follow_the_session() {
        assert_eq!(next_event(false, None, 10), AnnounceEvent::Started);
        assert_eq!(next_event(false, None, 0), AnnounceEvent::Started);
        assert_eq!(next_event(true, Some(10), 5), AnnounceEvent::Periodic);
        assert_eq!(next_event(true, Some(5), 0), AnnounceEvent::Completed);
        assert_eq!(next_event(true, Some(0), 0), AnnounceEvent::Periodic);
    }

    #[test]
    fn move_to_front_keeps_the_rest_in_order() {
        let mut tier = ["a", "b", "c", "d"];
        move_to_front(&mut tier, 2);
        assert_eq!(tier, ["c", "a", "b", "d"]);
        move_to_front(&mut tier, 0);
        assert_eq!(tier, ["c", "a", "b", "d"]);
        move_to_front(&mut tier, 9); // out of range: left alone
        assert_eq!(tier, ["c", "a", "b", "d"]);
    }

    #[test]
    fn new_drops_empty_tiers_and_keeps_every_tracker() -> Result<(), TrackerError> {
        let tiers = vec![
            vec![],
            vec!["http://a/".to_owned(), "http://b/".to_owned()],
            vec!["http://c/".to_owned()],
        ];
        let announce_loop = AnnounceLoop::new(
            TrackerClient::new(None)?,
            tiers,
            request(AnnounceEvent::Started),
            test_config(),
        );
        let mut urls: Vec<Vec<&str>> = announce_loop
            .tiers
            .iter()
            .map(|tier| tier.iter().map(|t| t.url.as_str()).collect())
            .collect();
        if let Some(first) = urls.first_mut() {
            first.sort_unstable();
        }
        assert_eq!(
            urls,
            vec![vec!["http://a/", "http://b/"], vec!["http://c/"]]
        );
        Ok(())
    }

    #[tokio::test]
    async fn fails_over_within_a_tier_delivers_peers_and_stops_on_cancel()
    -> Result<(), TrackerError> {
        let mut tracker = TestTracker::start(Reply::Ok(ONE_PEER_REPLY.to_vec())).await;
        // Dead tracker first, not shuffled, so the fail-over path is always taken.
        let tiers = vec![
            [dead_tracker_url().await, tracker.url()]
                .map(|url| TrackerEntry {
                    url,
                    tracker_id: None,
                })
                .to_vec(),
        ];
        let announce_loop = AnnounceLoop {
            client: TrackerClient::new(None)?,
            tiers,
            base: request(AnnounceEvent::Periodic),
            config: test_config(),
        };
        let left = Arc::new(AtomicU64::new(100));
        let stats_left = Arc::clone(&left);
        let stats = move || TransferStats {
            uploaded: 7,
            downloaded: 8,
            left: stats_left.load(Ordering::Relaxed),
        };
        let (peers_tx, mut peers_rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(announce_loop.run(stats, peers_tx, shutdown.clone()));

        let peers = tokio::time::timeout(WAIT, peers_rx.recv()).await;
        assert_eq!(
            peers.ok().flatten(),
            Some(vec![SocketAddr::from(([127, 0, 0, 5], 6881))])
        );

        let first = tracker.next_request().await;
        assert_eq!(first.param("event"), Some("started"), "{}", first.target);
        assert_eq!(first.param("left"), Some("100"));
        assert_eq!(first.param("uploaded"), Some("7"));

        left.store(0, Ordering::Relaxed);
        let second = tracker.next_request().await;
        assert_eq!(
            second.param("event"),
            Some("completed"),
            "{}",
            second.target
        );
        let third = tracker.next_request().await;
        assert_eq!(third.param("event"), None, "{}", third.target);

        shutdown.cancel();
        assert_finishes(running).await;
        // Periodic announces may have raced the cancel; the last request must be the stop.
        let mut last = tracker.next_request().await;
        while let Some(seen) = tracker.try_next_request() {
            last = seen;
        }
        assert_eq!(last.param("event"), Some("stopped"), "{}", last.target);
        Ok(())
    }

    #[tokio::test]
    async fn retries_while_no_tracker_answers_and_sends_no_stop() -> Result<(), TrackerError> {
        let mut failing = TestTracker::start(Reply::Status(500)).await;
        let tiers = vec![vec![failing.url()], vec![dead_tracker_url().await]];
        let announce_loop = AnnounceLoop::new(
            TrackerClient::new(None)?,
            tiers,
            request(AnnounceEvent::Periodic),
            test_config(),
        );
        let (peers_tx, mut peers_rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let running =
            tokio::spawn(announce_loop.run(TransferStats::default, peers_tx, shutdown.clone()));
        // Two rounds: the loop backed off and tried again, still announcing its start.
        for _ in 0..2 {
            let seen = failing.next_request().await;
            assert_eq!(seen.param("event"), Some("started"), "{}", seen.target);
        }
        shutdown.cancel();
        assert_finishes(running).await;
        while let Some(seen) = failing.try_next_request() {
            assert_ne!(seen.param("event"), Some("stopped"), "no tracker answered");
        }
        assert_eq!(
            peers_rx.recv().await,
            None,
            "no peers, and the sender is gone"
        );
        Ok(())
    }

    #[tokio::test]
    async fn closed_peer_receiver_ends_the_loop() -> Result<(), TrackerError> {
        let mut tracker = TestTracker::start(Reply::Ok(ONE_PEER_REPLY.to_vec())).await;
        let (peers_tx, peers_rx) = mpsc::channel(1);
        drop(peers_rx);
        let announce_loop = AnnounceLoop::new(
            TrackerClient::new(None)?,
            vec![vec![tracker.url()]],
            request(AnnounceEvent::Periodic),
            test_config(),
        );
        let running = tokio::spawn(announce_loop.run(
            TransferStats::default,
            peers_tx,
            CancellationToken::new(),
        ));
        assert_finishes(running).await;
        assert_eq!(tracker.next_request().await.param("event"), Some("started"));
        assert_eq!(tracker.next_request().await.param("event"), Some("stopped"));
        Ok(())
    }
}
