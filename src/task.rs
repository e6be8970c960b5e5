//! The one way to start a background task: named, inside a tracing span, logging its error.
//!
//! Tasks stop through the `CancellationToken` they were given (tokens form a tree: engine →
//! torrent → peer) and are tracked by a `TaskTracker` so shutdown can wait for all of them.

use std::fmt::Display;
use std::future::Future;

use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Spawns `future` on `tracker` as task `name`; an `Err` it returns is logged at debug
/// level (peer and tracker failures are routine), with the whole error chain.
pub fn spawn<F, E>(tracker: &TaskTracker, name: &'static str, span: tracing::Span, future: F)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    tracker.spawn(
        async move {
            if let Err(err) = future.await {
                tracing::debug!(task = name, error = %err, "task ended with an error");
            }
        }
        .instrument(span),
    );
}
