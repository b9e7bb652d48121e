//! `tandem serve`: the reference sync server.

use crate::failure::Failure;

/// Options of `tandem serve`.
#[derive(clap::Args)]
pub struct ServeArgs {}

/// Runs the server until interrupted.
pub fn run(_args: ServeArgs) -> Result<(), Failure> {
    Err(Failure::new("not_available", "the sync server is not part of this build yet"))
}
