//! The UniFFI binding generator, built from the same uniffi version as the
//! library so the two always match.
fn main() {
    uniffi::uniffi_bindgen_main()
}
