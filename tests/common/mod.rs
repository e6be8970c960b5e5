//! Shared by every integration-test binary (`mod common;`).
//!
//! # Layout
//! - `checks`: assertions on a mount (files match, EIO in bounded time, clean stop).
//! - `harness`: `fuse_test` (FUSE check, heavy-test lock, overall deadline and watchdog).
//! - `mount`: `MountGuard`, one `swarmfs mount` from mounted to gone.
//! - `corpus`: generated media/archive corpora and their torrents; a tool's output on disk
//!   and through a mount, compared.
//! - `clients`: real trackers, seeders and leechers through the lab scripts in `tests/peers/`.
//! - `fixture`: cached make-torrent.sh payloads, their .torrent and per-file SHA-1.
//! - `net`: unique loopback IPs and ports per test process.
//! - `swarm`: in-process test seeders with a `Behaviour` (honest, corrupting, silent, …).
//! - `process`: scripts under deadlines, kill and wait by PID, the per-test registry.
//! - `swarmfs`: the binary under test: how it is started, and `SwarmfsSeed`.
//!
//! Every helper has a deadline; nothing waits forever.
#![allow(dead_code)]
// not every test binary uses every helper
// A panic is how a test fails; the crate's ban on unwrap/expect is for src/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod checks;
pub mod clients;
pub mod corpus;
pub mod fixture;
pub mod harness;
pub mod mount;
pub mod net;
pub mod process;
pub mod swarm;
pub mod swarmfs;
