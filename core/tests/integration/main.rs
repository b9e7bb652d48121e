//! The `Client` through its public API, as an app uses it, on real SQLite
//! databases in temporary directories: one module per subject, one test
//! binary for all of them (a change to the core links one binary instead
//! of one per file).
//!
//! Tests of different modules run side by side as threads of one process;
//! each opens its own database in a temporary directory of its own.

mod background;
mod bad_input;
mod client;
mod observers;
