//! UniFFI bindings of Tandem's client engine.
uniffi::setup_scaffolding!();
