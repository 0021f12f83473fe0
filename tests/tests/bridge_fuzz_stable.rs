//! The cargo-fuzz targets' bodies (bridge/fuzz) on stable: a proptest of
//! random bytes and of mutations of the committed seed corpus. The real
//! fuzzers run with scripts/fuzz.sh (cargo-fuzz).
#![allow(clippy::panic)]

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use sotto_bridge::fuzzing::{decode_message, DecryptFixture};

fn fixture() -> &'static DecryptFixture {
    static F: OnceLock<DecryptFixture> = OnceLock::new();
    F.get_or_init(DecryptFixture::new)
}

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bridge/fuzz/corpus");
    let mut out = Vec::new();
    for target in ["decode_message", "decrypt"] {
        if let Ok(dir) = std::fs::read_dir(root.join(target)) {
            for entry in dir.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    out.push(bytes);
                }
            }
        }
    }
    out.extend(fixture().seeds.iter().cloned());
    out
}

#[test]
fn seed_corpus_is_committed_and_exercised() {
    // Regenerate the decrypt seeds (deterministic) with
    // SOTTO_BRIDGE_DUMP_CORPUS=1 cargo test -p sotto-tests --test bridge_fuzz_stable
    if std::env::var_os("SOTTO_BRIDGE_DUMP_CORPUS").is_some() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bridge/fuzz/corpus/decrypt");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for (i, seed) in fixture().seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let c = corpus();
    assert!(c.len() >= 6, "seed corpus missing: {} inputs", c.len());
    for input in &c {
        decode_message(input);
        fixture().decrypt(input);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Overwrite(usize, Vec<u8>),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        decode_message(&data);
        fixture().decrypt(&data);
    }

    #[test]
    fn mutated_corpus(pick in any::<usize>(), muts in proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        ], 1..4)) {
        let c = corpus();
        let mut data = c[pick % c.len()].clone();
        for m in muts {
            let len = data.len().max(1);
            match m {
                Mutation::Flip(i, b) => if !data.is_empty() { let i = i % data.len(); data[i] ^= b | 1; },
                Mutation::Truncate(n) => data.truncate(n % len),
                Mutation::Insert(i, b) => data.insert(i % (data.len() + 1), b),
                Mutation::Overwrite(i, v) => for (k, b) in v.into_iter().enumerate() {
                    let j = (i + k) % len;
                    if j < data.len() { data[j] = b; }
                },
            }
        }
        decode_message(&data);
        fixture().decrypt(&data);
    }
}
