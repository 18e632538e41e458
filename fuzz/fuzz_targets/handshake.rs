#![no_main]
use credproxy_core::fuzzing::fuzz_handshake_and_request;
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_handshake_and_request(data));
