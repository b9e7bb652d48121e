//! libFuzzer entry of [`tandem_fuzz::wire_decode`]: the check and what it holds
//! are documented there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::wire_decode(data));
