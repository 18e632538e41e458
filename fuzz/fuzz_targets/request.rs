#![no_main]
use credproxy_core::fuzzing::fuzz_request;
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_request(data));
