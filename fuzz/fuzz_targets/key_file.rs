#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_checks::check("key_file", data));
