//! Stream message verification must reject arbitrary field sets without panicking.
#![no_main]

use control_crypto::{HmacKey, verify_stream_fields};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let stream = lines.next().unwrap_or_default();
    let fields: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once('=')).collect();
    if let Ok(key) = HmacKey::from_hex(&"ab".repeat(32)) {
        let _verified = verify_stream_fields(&[&key], stream, &fields);
    }
});
