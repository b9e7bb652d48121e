//! `tandem demo`: until the narrated multi-device demo exists, say what works
//! today and how to try it.

use crate::failure::Failure;

/// Prints what works and where to start.
pub fn run() -> Result<(), Failure> {
    println!("Tandem demo: the narrated multi-device demo is not built yet.");
    println!("What works today is listed in README.md.");
    Ok(())
}
