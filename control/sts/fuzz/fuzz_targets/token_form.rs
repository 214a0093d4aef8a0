//! The token-exchange form parser must answer every input with a value, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _accepted = control_sts::fuzzing::parse_token_form(data);
});
