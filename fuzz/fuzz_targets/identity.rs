#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| holdfast_server::fuzz_targets::identity(data));
