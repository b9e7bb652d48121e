//! Helpers for Tandem's end-to-end tests.
