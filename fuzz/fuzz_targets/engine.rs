#![no_main]
use credproxy_core::fuzzing::{EngineOp, fuzz_engine};
libfuzzer_sys::fuzz_target!(|ops: Vec<EngineOp>| fuzz_engine(&ops));
