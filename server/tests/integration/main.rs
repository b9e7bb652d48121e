//! The server's integration tests, in one binary (one link instead of one
//! per file). The PostgreSQL modules run on the database named by
//! `TANDEM_TEST_POSTGRES_URL`, each test on a schema of its own (see
//! `scripts/test.sh`). Run one module with a filter, e.g.
//! `cargo test -p tandem-server --test integration postgres_instances::`.

#![allow(clippy::unwrap_used)]

mod postgres_conformance;
mod postgres_coordination;
mod postgres_failover;
mod postgres_instances;
mod postgres_limits;
mod session_logs;
mod sqlite_conformance;
