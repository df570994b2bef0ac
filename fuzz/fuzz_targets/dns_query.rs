#![no_main]
// The body lives in meshd::fuzzing so the test suite replays the corpus through it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd::fuzzing::dns_query(data));
