//! The request-framing guard, fed arbitrary bytes in small reads, must never panic, must
//! hand on only a prefix of what was sent (all of it unless it refused), and must give the
//! same answer however the bytes were split.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = gateway_proxy::fuzzing::framing(data) {
        panic!("framing guard: {broken}");
    }
});
