//! The `swarmfs` command: parse the CLI, run one subcommand, turn errors into an exit code.
//! The only place `anyhow` meets the user.

use clap::Parser;
use swarmfs::cli::{Cli, Command};
use swarmfs::{daemon, logging};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init();
    let result = match cli.command {
        Command::Create(args) => daemon::run_create(args),
        Command::Mount(args) => runtime().and_then(|rt| rt.block_on(daemon::run_mount(args))),
        Command::Seed(args) => runtime().and_then(|rt| rt.block_on(daemon::run_seed(args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("swarmfs: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("swarmfs-worker")
        .build()?)
}
