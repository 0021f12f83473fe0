#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sotto_bridge::fuzzing::DecryptFixture;

static FIXTURE: OnceLock<DecryptFixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    FIXTURE.get_or_init(DecryptFixture::new).decrypt(data);
});
