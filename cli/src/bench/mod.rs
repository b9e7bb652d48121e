//! `tandem bench`: benchmark scenarios.

use crate::failure::Failure;

/// Options of `tandem bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The scenario to run.
    pub scenario: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs one scenario.
pub fn run(args: BenchArgs) -> Result<(), Failure> {
    Err(Failure::new("unknown_scenario", format!("no scenario named {}", args.scenario)))
}
