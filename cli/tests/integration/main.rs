//! `tandem` as a person or a script uses it: the command run as a process,
//! against servers it starts as processes too, one module per command
//! family. One test binary for all of them, so a change to the command
//! links one binary instead of one per file.
//!
//! Tests of different modules run side by side as threads of one process.
//! Every server listens on a free port and every device has its own
//! temporary data directory; what a test changes for a process it starts
//! (`SSL_CERT_FILE`, say) it sets on that process's command, never on this
//! one. [`support`] has what more than one module needs.

mod bench;
mod client;
mod client_outcomes;
mod demo;
mod support;
mod sync;
mod tls;
