//! Tandem's reference sync server.
