#![allow(clippy::unwrap_used, clippy::panic)]
//! The byte-level BPE pre-tokenizers other than SmolLM2's own ("llama-bpe",
//! "qwen2", "gpt-2") tokenize exactly as llama.cpp does.
//!
//! The default model's vocabulary is the only byte-level one at hand, so the
//! reference (tests/data/llama_cpp/pretokenizers.json, from
//! tests/scripts/gen_pretokenizer_refs.py) relabels it: a vocab-only GGUF with
//! `general.architecture = llama` and the model's `tokenizer.*` keys, with
//! `tokenizer.ggml.pre` replaced, loaded by llama.cpp with `vocab_only`. The
//! "+digits" variants also append a few digit merges (SmolLM2 has none), so
//! that how a pre-tokenizer groups digits shows in the ids. This test builds
//! the same files in memory and compares every case; "smollm" is the control.

use std::collections::BTreeMap;

use serde::Deserialize;
use sotto_models::gguf::{GgufFile, GgufWriter, MetaValue};
use sotto_models::Tokenizer;
use sotto_tests::{default_model_path, read_json};

const REFERENCE: &str = "llama_cpp/pretokenizers.json";

#[derive(Debug, Deserialize)]
struct Reference {
    llama_cpp_python_version: String,
    variants: Vec<Variant>,
    control: String,
    shared_cases: usize,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Variant {
    name: String,
    pre: String,
    extra_merges: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    parse_special: bool,
    ids: BTreeMap<String, Vec<u32>>,
}

fn reference() -> Reference {
    read_json(REFERENCE)
}

/// The default model's `tokenizer.*` keys under `general.architecture = llama`
/// (what the generator writes), relabelled and extended as `variant` says.
fn tokenizer_for(model: &GgufFile, variant: &Variant) -> Tokenizer {
    let new_tokens: Vec<String> = variant
        .extra_merges
        .iter()
        .map(|m| m.replace(' ', ""))
        .collect();
    let mut w = GgufWriter::new().kv("general.architecture", MetaValue::string("llama"));
    for (key, value) in model.metadata() {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        let value = match key.as_str() {
            "tokenizer.ggml.pre" => MetaValue::string(variant.pre.as_str()),
            "tokenizer.ggml.tokens" if !new_tokens.is_empty() => {
                let mut tokens = model.get_str_array(key).unwrap();
                for t in &new_tokens {
                    assert!(!tokens.contains(&t.as_str()), "{t:?} already a token");
                }
                tokens.extend(new_tokens.iter().map(String::as_str));
                MetaValue::str_array(&tokens)
            }
            "tokenizer.ggml.token_type" if !new_tokens.is_empty() => {
                let mut types: Vec<i32> = model
                    .try_get_int_array(key)
                    .unwrap()
                    .unwrap()
                    .into_iter()
                    .map(|t| i32::try_from(t).unwrap())
                    .collect();
                types.extend(std::iter::repeat_n(1, new_tokens.len())); // NORMAL
                MetaValue::i32_array(&types)
            }
            "tokenizer.ggml.merges" if !new_tokens.is_empty() => {
                let mut merges = model.get_str_array(key).unwrap();
                merges.extend(variant.extra_merges.iter().map(String::as_str));
                MetaValue::str_array(&merges)
            }
            _ => value.clone(),
        };
        w = w.kv(key, value);
    }
    let file = GgufFile::from_bytes(w.to_bytes()).unwrap();
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("tokenizer for {}: {e}", variant.name))
}

/// Every case, for every pre-tokenizer variant, gives llama.cpp's ids.
#[test]
fn pre_tokenizers_match_llama_cpp() {
    let reference = reference();
    assert!(
        reference.cases.len() >= 400 && reference.shared_cases >= 364,
        "only {} cases",
        reference.cases.len()
    );
    let names: Vec<&str> = reference.variants.iter().map(|v| v.name.as_str()).collect();
    for pre in ["llama-bpe", "qwen2", "gpt-2", "smollm"] {
        assert!(names.contains(&pre), "no {pre} in the reference");
        assert!(names.contains(&format!("{pre}+digits").as_str()));
    }
    let model = GgufFile::open(default_model_path()).unwrap();
    let mut failures = Vec::new();
    for variant in &reference.variants {
        let t = tokenizer_for(&model, variant);
        let mut mismatches = Vec::new();
        for case in &reference.cases {
            let expected = &case.ids[&variant.name];
            let ours = t.encode(&case.text, case.parse_special).unwrap();
            if &ours != expected {
                mismatches.push(format!(
                    "  {:?} (parse_special={}): llama.cpp {expected:?}, ours {ours:?}",
                    case.text, case.parse_special
                ));
            }
        }
        if !mismatches.is_empty() {
            failures.push(format!(
                "{}: {} of {} cases differ:\n{}",
                variant.name,
                mismatches.len(),
                reference.cases.len(),
                mismatches.join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "tokenization differs from llama.cpp (llama-cpp-python {}):\n{}",
        reference.llama_cpp_python_version,
        failures.join("\n")
    );
}

/// The reference is not vacuous: llama.cpp's ids under each pre-tokenizer
/// differ from the control's, and llama-bpe from qwen2 once digits can merge.
#[test]
fn reference_distinguishes_the_pre_tokenizers() {
    let reference = reference();
    let differ = |a: &str, b: &str| {
        reference
            .cases
            .iter()
            .filter(|c| c.ids[a] != c.ids[b])
            .count()
    };
    let control = reference.control.as_str();
    let pairs = [
        ("llama-bpe", control),
        ("qwen2", control),
        ("gpt-2", control),
        ("llama-bpe+digits", "qwen2+digits"),
        ("llama-bpe+digits", "gpt-2+digits"),
        ("qwen2+digits", "gpt-2+digits"),
        ("gpt-2+digits", "smollm+digits"),
    ];
    for (a, b) in pairs {
        assert!(
            differ(a, b) > 0,
            "{a} and {b} give the same ids on every case"
        );
    }
}

/// The control relabelled file tokenizes as the full model did in
/// tests/data/llama_cpp/tokenization.json (same llama.cpp, same strings), so
/// the rebuild changes nothing but the pre-tokenizer.
#[test]
fn control_matches_the_full_model_reference() {
    #[derive(Deserialize)]
    struct Full {
        text: String,
        parse_special: bool,
        ids: Vec<u32>,
    }
    let reference = reference();
    let full: Vec<Full> = read_json("llama_cpp/tokenization.json");
    let by_case: BTreeMap<(&str, bool), &Vec<u32>> = full
        .iter()
        .map(|c| ((c.text.as_str(), c.parse_special), &c.ids))
        .collect();
    let mut compared = 0;
    for case in &reference.cases {
        if let Some(ids) = by_case.get(&(case.text.as_str(), case.parse_special)) {
            assert_eq!(&case.ids[&reference.control], *ids, "{:?}", case.text);
            compared += 1;
        }
    }
    assert_eq!(compared, reference.shared_cases);
}
