//! Tandem's client engine.
