//! `tandem client`: act as a device.

use crate::failure::Failure;

/// Options of `tandem client`.
#[derive(clap::Args)]
pub struct ClientArgs {}

/// Runs one client command.
pub fn run(_args: ClientArgs) -> Result<(), Failure> {
    Err(Failure::new("not_available", "client commands are not part of this build yet"))
}
