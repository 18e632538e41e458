#![no_main]
use credproxy_core::fuzzing::fuzz_frame_decoder;
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_frame_decoder(data));
