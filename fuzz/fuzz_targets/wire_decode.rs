//! Any frame text: decoding never panics, and whatever decodes encodes back
//! to a message that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_protocol::{ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = ClientMessage::decode(text) {
        let again = ClientMessage::decode(&message.encode()).expect("re-decode a client message");
        assert_eq!(again, message);
    }
    if let Ok(message) = ServerMessage::decode(text) {
        let again = ServerMessage::decode(&message.encode()).expect("re-decode a server message");
        assert_eq!(again, message);
    }
});
