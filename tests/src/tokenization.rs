//! llama.cpp's tokenization of the reference strings
//! (`tests/data/llama_cpp/tokenization.json`, 364 cases on the default
//! model) and the check every tokenizer under test is held to.

use serde::Deserialize;

use crate::{data_dir, read_json};

/// One reference string and llama.cpp's ids for it.
#[derive(Debug, Deserialize)]
pub struct TokenizationCase {
    /// The text.
    pub text: String,
    /// Whether special-token text was parsed as special tokens.
    pub parse_special: bool,
    /// llama.cpp's ids.
    pub ids: Vec<u32>,
    /// llama.cpp's detokenization without special tokens, hex (when recorded).
    #[serde(default)]
    pub detok_hex: Option<String>,
}

/// The default model's reference cases, as llama.cpp tokenized them.
pub fn llama_cpp_cases() -> Vec<TokenizationCase> {
    let path = data_dir().join("llama_cpp/tokenization.json");
    assert!(
        path.is_file(),
        "llama.cpp reference tokenization missing at {} (produced by the llama.cpp reference-data script)",
        path.display()
    );
    let cases: Vec<TokenizationCase> = read_json("llama_cpp/tokenization.json");
    assert!(cases.len() >= 200, "only {} reference cases", cases.len());
    cases
}

/// The same strings tokenized by llama.cpp with the vocabulary of `model`
/// (loaded `vocab_only`) at test time (`llama_ref.py tokenize`), cached as
/// `<cache>/parity/tokenize/{name}.json`.
pub fn llama_cpp_cases_for(model: &std::path::Path, name: &str) -> Vec<TokenizationCase> {
    #[derive(Deserialize)]
    struct Reference {
        cases: Vec<TokenizationCase>,
    }
    let out = crate::parity::cache_dir().join(format!("tokenize/{name}.json"));
    let cases = data_dir().join("llama_cpp/tokenization.json");
    crate::parity::llama_tokenize(model, &cases, &out);
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let reference: Reference =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    assert!(
        reference.cases.len() >= 364,
        "only {} cases",
        reference.cases.len()
    );
    reference.cases
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `t` against llama.cpp on every case: the ids, the token bytes
/// reassembling the text, and llama.cpp's detokenization without specials.
pub fn assert_tokenizes_like_llama_cpp(t: &sotto_models::Tokenizer, cases: &[TokenizationCase]) {
    let mut mismatches = Vec::new();
    for case in cases {
        let ours = t
            .encode(&case.text, case.parse_special)
            .unwrap_or_else(|e| panic!("{:?}: {e}", case.text));
        if ours != case.ids {
            mismatches.push(format!(
                "{:?} (parse_special={}): llama.cpp {:?}, ours {:?}",
                case.text, case.parse_special, case.ids, ours
            ));
            continue;
        }
        let bytes: Vec<u8> = ours
            .iter()
            .flat_map(|&id| {
                t.token_bytes(id)
                    .unwrap_or_else(|e| panic!("token {id}: {e}"))
            })
            .collect();
        if bytes != case.text.as_bytes() {
            mismatches.push(format!(
                "{:?}: token bytes reassemble to {:?}",
                case.text,
                String::from_utf8_lossy(&bytes)
            ));
        }
        // Without special tokens llama.cpp drops control tokens' text.
        if let Some(expected) = &case.detok_hex {
            let plain: Vec<u8> = ours
                .iter()
                .filter(|&&id| !t.is_control(id))
                .flat_map(|&id| {
                    t.token_bytes(id)
                        .unwrap_or_else(|e| panic!("token {id}: {e}"))
                })
                .collect();
            if &hex(&plain) != expected {
                mismatches.push(format!(
                    "{:?}: detokenized without specials differs",
                    case.text
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
