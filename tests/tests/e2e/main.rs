//! Tandem end to end: a real server and real clients over real sockets,
//! one module per subject. The suites share one test binary, so a change
//! to the support library or to the server links one binary instead of one
//! per file.
//!
//! Tests of different modules run side by side as threads of one process
//! (as the tests of one module always did). They share nothing but the
//! process: each starts its own server on a free port of 127.0.0.1, with
//! its own databases in temporary directories, and none changes the
//! environment, the working directory or any process-wide setting. A test
//! that needs such a setting (the fail points) has a binary of its own.

mod auth;
mod auto_responder;
mod browser;
mod coordination;
mod credentials;
mod durability;
mod encryption;
mod engine;
mod large_documents;
mod limits;
mod proxy_faults;
mod security;
mod sync;
mod tenancy;
mod tls;
