//! What opening a file fetches before any read asks for it. At every open: the file's
//! first and last piece (headers; trailing indexes of small files). At the first open of
//! each file: the pieces of its container index (`container/`: an MP4 `moov`, Matroska
//! `Cues`, a ZIP central directory, ISO 9660 path tables and root directory), which a
//! background task locates by reading the few bytes the locator asks for through the
//! torrent, then hints. Players open a file several times (VLC seven), so the index found
//! is remembered per file and hinted again at each later open (the cache may have dropped
//! it meanwhile; the actor ignores hints for pieces it holds). A search that failed on a
//! read (no peer yet, timeout) is retried at the next open; one that found no index is not.
//!
//! Hints are fetched after demanded reads and read-ahead and never cancelled by a seek
//! (`torrent/actor.rs`). The search's reads are ordinary reads: a piece they need is
//! demanded, which is right, as the tool that opened the file is about to read it too.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span};

use super::container::{self, KnownBytes, Step};
use crate::task;
use crate::torrent::{ReadError, TorrentHandle};
use crate::types::PieceIndex;

/// Reads one index search may make. Formats need 1–4 (a ZIP64 archive with a comment, or
/// a Matroska file with a second SeekHead: 4); more means a file that keeps us reading.
const MAX_SEARCH_READS: usize = 8;

/// Index pieces hinted per file at most: half of the actor's 256 hints, so that hints of
/// other files opened meanwhile are not all pushed out. 128 pieces hold a 2-hour film's
/// `moov` (5–8 MiB) at any piece size from 64 KiB up.
const MAX_INDEX_HINT_PIECES: usize = 128;

/// And at most this share of the piece cache, like the read-ahead ceiling, so an index
/// never evicts most of what the cache holds.
const INDEX_CACHE_SHARE: u64 = 4;

/// How long stopping waits for searches still running. Each one ends by itself when the
/// torrent shuts down (its reads answer `ShuttingDown`); this only bounds a bug.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where the index search of one file stands.
#[derive(Debug, Clone)]
enum IndexSearch {
    Running,
    Found(Vec<PieceIndex>),
    /// Not a format with an index we parse, malformed, or read to the limit.
    NotFound,
}

/// Why an index search ended without an answer.
#[derive(Debug, thiserror::Error)]
enum SearchError {
    #[error("reading bytes {range:?} of the file: {source}")]
    Read {
        range: Range<u64>,
        #[source]
        source: ReadError,
    },
    #[error("no index found after {MAX_SEARCH_READS} reads")]
    TooManyReads,
    /// A bug of the locator, reported instead of reading the same bytes again.
    #[error("bug: the locator asked again for bytes {range:?}, which it has")]
    BugNoProgress { range: Range<u64> },
}

/// The open-time prefetch of one torrent's files.
pub(super) struct OpenPrefetch {
    torrent: Arc<TorrentHandle>,
    runtime: Handle,
    tasks: TaskTracker,
    /// Deadline of a search's reads, all together.
    read_timeout: Duration,
    /// By file index.
    searches: Arc<Mutex<HashMap<usize, IndexSearch>>>,
}

impl OpenPrefetch {
    /// `runtime` runs the searches: opens come from FUSE threads, outside tokio.
    pub(super) fn new(
        torrent: Arc<TorrentHandle>,
        runtime: Handle,
        read_timeout: Duration,
    ) -> Self {
        OpenPrefetch {
            torrent,
            runtime,
            tasks: TaskTracker::new(),
            read_timeout,
            searches: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// File `file_index` is being opened: hint its head and tail, and its index (searching
    /// for it in the background on the first open). Never waits.
    pub(super) fn on_open(&self, file_index: usize) {
        self.hint_head_and_tail(file_index);
        let mut searches = lock(&self.searches);
        match searches.get(&file_index) {
            Some(IndexSearch::Found(pieces)) => self.torrent.hint_nowait(pieces.clone()),
            Some(IndexSearch::Running | IndexSearch::NotFound) => {}
            None => {
                searches.insert(file_index, IndexSearch::Running);
                drop(searches);
                self.spawn_search(file_index);
            }
        }
    }

    /// Stops taking searches and waits (bounded) for those still running.
    pub(super) async fn stop(&self) {
        self.tasks.close();
        let _ = tokio::time::timeout(STOP_GRACE, self.tasks.wait()).await;
    }

    /// At open, players and archive tools read a file's start (headers) and its end (MP4
    /// `moov`, ZIP central directory, Matroska cues): fetch those pieces early.
    fn hint_head_and_tail(&self, file_index: usize) {
        let layout = &self.torrent.layout;
        let Some(range) = layout.file_range(file_index) else {
            return;
        };
        if range.is_empty() {
            return;
        }
        let head = layout.pieces_for_range(range.start..range.start + 1);
        let tail = layout.pieces_for_range(range.end - 1..range.end);
        self.torrent.hint_nowait(head.chain(tail).collect());
    }

    fn spawn_search(&self, file_index: usize) {
        let torrent = Arc::clone(&self.torrent);
        let searches = Arc::clone(&self.searches);
        let read_timeout = self.read_timeout;
        let search = async move {
            let deadline = Instant::now() + read_timeout;
            let outcome = search_index(&torrent, file_index, deadline).await;
            if let Ok(Some(pieces)) = &outcome {
                torrent.hint(pieces.clone()).await;
            }
            let mut searches = lock(&searches);
            match &outcome {
                Ok(Some(pieces)) => {
                    searches.insert(file_index, IndexSearch::Found(pieces.clone()));
                }
                Ok(None) | Err(SearchError::TooManyReads | SearchError::BugNoProgress { .. }) => {
                    searches.insert(file_index, IndexSearch::NotFound);
                }
                Err(SearchError::Read { .. }) => {
                    searches.remove(&file_index);
                }
            }
            outcome.map(|_| ())
        };
        // task::spawn spawns on the current runtime; a FUSE thread has none of its own.
        let _entered = self.runtime.enter();
        task::spawn(
            &self.tasks,
            "index search",
            info_span!("index_search", file = file_index),
            search,
        );
    }
}

/// Reads what the locator asks for, at most `MAX_SEARCH_READS` times, all by `deadline`;
/// returns the pieces holding file `file_index`'s container index (`None`: it has none).
async fn search_index(
    torrent: &TorrentHandle,
    file_index: usize,
    deadline: Instant,
) -> Result<Option<Vec<PieceIndex>>, SearchError> {
    let layout = &torrent.layout;
    let Some(file_range) = layout.file_range(file_index) else {
        return Ok(None);
    };
    let mut known = KnownBytes::new(file_range.end - file_range.start);
    for _ in 0..MAX_SEARCH_READS {
        match container::locate(&known) {
            Step::Need(range) if known.covers(&range) => {
                return Err(SearchError::BugNoProgress { range });
            }
            Step::Need(need) => {
                // The rest of the pieces the need touches comes with them: read it too.
                let read = container::widened(
                    &need,
                    known.file_len(),
                    file_range.start,
                    u64::from(layout.piece_length()),
                );
                let torrent_range =
                    layout.file_read_range(file_index, read.start, read.end - read.start);
                let bytes = torrent
                    .read(torrent_range, deadline)
                    .await
                    .map_err(|source| SearchError::Read {
                        range: read.clone(),
                        source,
                    })?;
                known.insert(read.start, bytes.into_contiguous());
            }
            Step::Index {
                container,
                file_ranges,
            } => {
                let pieces = index_pieces(torrent, file_range.start, &file_ranges);
                debug!(
                    ?container,
                    index = ?file_ranges,
                    pieces = pieces.len(),
                    first_piece = pieces.first().map(|p| p.get()),
                    last_piece = pieces.last().map(|p| p.get()),
                    "container index found: prefetching its pieces"
                );
                return Ok(Some(pieces));
            }
            Step::Unknown => {
                debug!("no container index");
                return Ok(None);
            }
        }
    }
    Err(SearchError::TooManyReads)
}

/// The pieces holding `file_ranges` of the file starting at `file_start` in the torrent,
/// in file order, at most `MAX_INDEX_HINT_PIECES` and a quarter of the cache.
fn index_pieces(
    torrent: &TorrentHandle,
    file_start: u64,
    file_ranges: &[Range<u64>],
) -> Vec<PieceIndex> {
    let layout = &torrent.layout;
    let cache_pieces = torrent.cache.lock().budget_bytes()
        / INDEX_CACHE_SHARE
        / u64::from(layout.piece_length()).max(1);
    let limit = usize::try_from(cache_pieces)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_INDEX_HINT_PIECES);
    let mut pieces: Vec<PieceIndex> = Vec::new();
    for range in file_ranges {
        let torrent_range =
            file_start.saturating_add(range.start)..file_start.saturating_add(range.end);
        for piece in layout.pieces_for_range(torrent_range) {
            if pieces.len() >= limit {
                return pieces;
            }
            if pieces.last() != Some(&piece) {
                pieces.push(piece);
            }
        }
    }
    pieces
}

fn lock(
    searches: &Mutex<HashMap<usize, IndexSearch>>,
) -> MutexGuard<'_, HashMap<usize, IndexSearch>> {
    searches.lock().unwrap_or_else(|e| e.into_inner())
}
