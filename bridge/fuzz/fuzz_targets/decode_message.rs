#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sotto_bridge::fuzzing::decode_message(data);
});
