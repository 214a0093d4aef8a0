//! The JWT peek and verification must reject every malformed input without panicking.
#![no_main]

use std::sync::OnceLock;

use control_crypto::{PublicKey, UnverifiedJwt, ZoneSigningKey};

fn key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| ZoneSigningKey::generate().public_key())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(parsed) = UnverifiedJwt::parse(text)
    {
        let _header = parsed.header().clone();
        let _verified = parsed.verify(key());
    }
});
