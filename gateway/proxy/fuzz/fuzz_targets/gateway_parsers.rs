//! The gateway's parsers of caller-controlled text (the bearer peek, the traversal check,
//! `traceparent`, `baggage` and header sanitation, the outbound URI) must answer every input
//! with a value, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_proxy::fuzzing::exercise(data);
});
