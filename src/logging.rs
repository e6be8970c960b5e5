//! tracing-subscriber setup: `RUST_LOG` filters (default: info for swarmfs, warn for other
//! crates, error for fuser, whose warnings about our own unmounts are noise); logs go to
//! stderr, fuser's `log` records included.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,fuser=error,swarmfs=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
