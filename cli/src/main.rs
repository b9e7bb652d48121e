//! `tandem`: run the sync server, act as a device from a terminal, run the
//! demo and the benchmarks.
//!
//! Output meant for machines is JSON, one object per line. Exit status 0 means
//! success; errors go to stderr as one line, `error: <code>: <message>`.

mod bench;
mod client;
mod demo;
mod failure;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tandem: an offline-first, real-time sync engine.
#[derive(Parser)]
#[command(name = "tandem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sync server.
    Serve(serve::ServeArgs),
    /// Act as a device: local writes, queries, sync.
    Client(Box<client::ClientArgs>),
    /// An embedded server and simulated devices, narrated.
    Demo,
    /// Run a benchmark scenario.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(*args),
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
