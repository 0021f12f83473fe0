#![allow(clippy::unwrap_used, clippy::panic)]
//! The real model (SmolLM2-135M-Instruct Q4_1) through sotto-models:
//! hyper-parameters, tensor table, and tokenization parity with llama.cpp.
//!
//! A missing model fails (run `cargo run -p sotto -- fetch`); a missing llama.cpp
//! reference file fails too.

use std::collections::BTreeMap;

use serde::Deserialize;
use sotto_kernels::quant::DType;
use sotto_models::spec::{Activation, RopeStyle};
use sotto_models::{ChatMessage, Model};
use sotto_tests::tiny_arch::gemma3_270m_path;
use sotto_tests::tokenization::{
    assert_tokenizes_like_llama_cpp, llama_cpp_cases, llama_cpp_cases_for,
};
use sotto_tests::{data_dir, default_model_path, read_json};

fn model() -> Model {
    let path = default_model_path();
    Model::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

#[test]
fn smollm2_spec_matches_the_published_config() {
    let m = model();
    let s = &m.spec;
    assert_eq!(s.arch, "llama");
    assert_eq!(
        (
            s.n_layer,
            s.d_model,
            s.n_head,
            s.n_kv_head,
            s.head_dim,
            s.ffn_dim,
            s.vocab_size
        ),
        (30, 576, 9, 3, 64, 1536, 49152)
    );
    assert_eq!(s.context_length, 8192);
    assert_eq!(s.activation, Activation::SiluGlu);
    assert_eq!(s.rope_style, RopeStyle::Interleaved);
    assert_eq!(s.n_rot, 64);
    assert!(s.layers.iter().all(|l| l.rope.theta == 100_000.0));
    assert!((s.norm_eps - 1e-5).abs() < 1e-12);
    assert!(s
        .layers
        .iter()
        .all(|l| (l.attention.scale - 0.125).abs() < 1e-7));
    assert!(
        s.tied_embeddings,
        "SmolLM2-135M ties its output to the embeddings"
    );
    assert!(s.layers.iter().all(|l| !l.qk_norm
        && !l.post_attention_norm
        && !l.post_ffn_norm
        && l.attention.window.is_none()
        && l.attention.softcap.is_none()));
    assert_eq!(m.weights.layers.len(), 30);
    assert_eq!(m.weights.output.weight.name, "token_embd.weight");
}

#[test]
fn smollm2_tensor_table() {
    let m = model();
    let g = &m.gguf;
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensors().len(), 272);
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for t in g.tensors() {
        *by_type.entry(format!("{:?}", t.ggml_type)).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [
        (format!("{:?}", DType::F32), 61),
        (format!("{:?}", DType::Q4_1), 210),
        (format!("{:?}", DType::Q8_0), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_type, expected);
    let w = &m.weights;
    assert_eq!(w.token_embd.dtype, DType::Q8_0);
    assert_eq!(w.token_embd.shape, [49152, 576]);
    assert_eq!(w.layers[0].attn_k.weight.shape, [192, 576]);
    assert_eq!(w.layers[29].ffn_down.weight.shape, [576, 1536]);
    assert_eq!(w.layers[0].attn_q.weight.dtype, DType::Q4_1);
    assert_eq!(w.output_norm.dtype, DType::F32);
    // Data views are the exact ggml byte sizes: 576/32 blocks of 20 bytes per Q4_1 row.
    assert_eq!(
        w.layers[0].attn_q.weight.data().len(),
        576 * (576 / 32) * 20
    );
    let norm = w.output_norm.to_f32().unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|x| x.is_finite()) && norm.iter().any(|&x| x != 0.0));
}

#[test]
fn smollm2_special_tokens_match_llama_cpp() {
    let t = model().tokenizer;
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
    assert!(!t.add_bos());
    // llama.cpp's EOG set for this vocabulary: <|endoftext|>, <|im_end|> and
    // <reponame> (auto-detected as the FIM repo token), per llama_vocab_is_eog.
    assert_eq!(t.end_of_generation_ids(), vec![0, 2, 4]);
    assert!(t.is_end_of_generation(2) && !t.is_end_of_generation(1));
    assert_eq!(t.token_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_bytes(1).unwrap(), b"<|im_start|>");
    // byte-level pieces map back to raw bytes: "Ġthe"-style pieces and Ċ (newline)
    assert_eq!(t.token_bytes(198).unwrap(), b"\n");
}

#[test]
fn known_chatml_prompt_tokenizes_like_llama_cpp() {
    let t = model().tokenizer;
    let text =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        t.encode(text, true).unwrap(),
        vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
    );
    // without parse_special the markers are ordinary text
    let plain = t.encode(text, false).unwrap();
    assert!(!plain.contains(&1) && !plain.contains(&2));
    assert_eq!(t.decode(&plain, false).unwrap(), text);
}

#[test]
fn chat_template_renders_smollm2_default_system_prompt() {
    let m = model();
    assert!(!m.template.is_fallback());
    let prompt = m
        .template
        .render(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// Every reference string from llama.cpp (tests/data/llama_cpp/tokenization.json)
/// tokenizes to exactly the same ids, and decodes back to its text.
#[test]
fn tokenization_matches_llama_cpp_reference() {
    let path = data_dir().join("llama_cpp/tokenization.json");
    assert!(
        path.is_file(),
        "llama.cpp reference tokenization missing at {} (produced by the llama.cpp reference-data script)",
        path.display()
    );
    assert_tokenizes_like_llama_cpp(&model().tokenizer, &llama_cpp_cases());
}

/// The same strings through Gemma-3-270M's SentencePiece vocabulary (the
/// `llama` tokenizer kind, 262k pieces with byte fallback; also the
/// vocabulary of the SPM tiny architecture files): llama.cpp tokenizes them
/// at test time with the real file loaded `vocab_only`
/// (`llama_ref.py tokenize`, cached under `~/.cache/sotto/parity`).
#[test]
fn gemma3_270m_tokenization_matches_llama_cpp() {
    let file = gemma3_270m_path();
    let cases = llama_cpp_cases_for(&file, "gemma-3-270m");
    let gguf = sotto_models::GgufFile::open(&file).unwrap();
    let t = sotto_models::Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(t.vocab_size(), 262_144);
    assert_tokenizes_like_llama_cpp(&t, &cases);
}

#[derive(Debug, Deserialize)]
struct PreTokenizerCases {
    pre_tokenizers: Vec<String>,
    cases: Vec<PreTokenizerCase>,
}

#[derive(Debug, Deserialize)]
struct PreTokenizerCase {
    text: String,
    parse_special: bool,
    ids: BTreeMap<String, Vec<u32>>,
}

/// The real vocabulary re-labelled with every supported
/// `tokenizer.ggml.pre` tokenizes as llama.cpp does with the same file
/// (reference: models/testdata/llama_cpp_pretokenizers.json).
#[test]
fn pre_tokenizers_match_llama_cpp() {
    use sotto_models::gguf::{GgufFile, GgufWriter, MetaValue};
    use sotto_models::Tokenizer;

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/testdata/llama_cpp_pretokenizers.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data: PreTokenizerCases = serde_json::from_str(&text).unwrap();
    assert!(data.cases.len() >= 500);
    let real = sotto_models::GgufFile::open(default_model_path()).unwrap();
    for pre in &data.pre_tokenizers {
        let mut w = GgufWriter::new();
        w.metadata = real.metadata().to_vec();
        w.set("tokenizer.ggml.pre", MetaValue::string(pre.as_str()));
        let t = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap();
        let mismatches: Vec<String> = data
            .cases
            .iter()
            .filter_map(|c| {
                let ours = t.encode(&c.text, c.parse_special).unwrap();
                let expected = &c.ids[pre];
                (&ours != expected).then(|| {
                    format!(
                        "{:?} ({}): llama.cpp {expected:?}, ours {ours:?}",
                        c.text, c.parse_special
                    )
                })
            })
            .collect();
        assert!(
            mismatches.is_empty(),
            "pre {pre}: {} differ:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
}

/// Every one of the 49152 tokens renders to the same bytes as llama.cpp's
/// `llama_token_to_piece(special = true)`: compared through an FNV-1a 64
/// digest of length-prefixed pieces (models/testdata/gen_token_pieces_digest.py).
#[test]
fn every_token_piece_matches_llama_cpp() {
    const LLAMA_CPP_DIGEST: u64 = 0xb0fb_97ee_3565_1eb8;
    let t = model().tokenizer;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |data: &[u8]| {
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for id in 0..t.vocab_size() as u32 {
        let piece = t.token_bytes(id).unwrap();
        feed(&(piece.len() as u32).to_le_bytes());
        feed(&piece);
    }
    assert_eq!(h, LLAMA_CPP_DIGEST, "token pieces differ from llama.cpp's");
}

/// Dequantized weights equal gguf-py's `gguf.quants.dequantize` of the same
/// tensors (sums and sample elements printed by the reference, f64 sums).
#[test]
fn weights_dequantize_like_gguf_py() {
    let m = model();
    let cases = [
        (
            &m.weights.layers[0].attn_q.weight,
            59.223_220_825_195_31,
            63_395.398_727_416_99,
            [-0.096_313_476_562_5, 0.121_093_75, -0.255_859_375],
        ),
        (
            &m.weights.token_embd,
            -15_353.044_494_152_07,
            2_802_153.619_805_813,
            [
                -0.106_544_494_628_906_25,
                0.031_005_859_375,
                -0.041_702_270_507_812_5,
            ],
        ),
    ];
    for (w, sum, abs_sum, samples) in cases {
        let x = w.to_f32().unwrap();
        assert_eq!(x.len(), w.rows() * w.cols());
        let s: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let a: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
        assert!(
            (s - sum).abs() < 1e-6 * abs_sum,
            "{}: sum {s} vs {sum}",
            w.name
        );
        assert!(
            (a - abs_sum).abs() < 1e-6 * abs_sum,
            "{}: |sum| {a} vs {abs_sum}",
            w.name
        );
        for (i, expected) in [0, 12_345, x.len() - 1].into_iter().zip(samples) {
            assert!(
                (f64::from(x[i]) - expected).abs() < 1e-6,
                "{}[{i}] = {} vs {expected}",
                w.name,
                x[i]
            );
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatReference {
    eog_ids: Vec<u32>,
    add_bos: bool,
    conversations: Vec<ChatConversation>,
}

#[derive(Debug, Deserialize)]
struct ChatConversation {
    name: String,
    messages: Vec<ChatTurn>,
    prompt_text: String,
    prompt_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct ChatTurn {
    role: String,
    content: String,
}

/// The model's template renders each reference conversation exactly as
/// llama-cpp-python did, and the prompt tokenizes to the same ids
/// (tests/data/llama_cpp/chat.json).
#[test]
fn chat_prompts_match_llama_cpp() {
    let reference: ChatReference = read_json("llama_cpp/chat.json");
    assert!(!reference.conversations.is_empty());
    let m = model();
    assert_eq!(m.tokenizer.add_bos(), reference.add_bos);
    let mut eog = reference.eog_ids.clone();
    eog.sort_unstable();
    assert_eq!(m.tokenizer.end_of_generation_ids(), eog);
    for conv in &reference.conversations {
        let messages: Vec<ChatMessage> = conv
            .messages
            .iter()
            .map(|t| ChatMessage::new(t.role.as_str(), t.content.as_str()))
            .collect();
        let prompt = m.template.render(&messages, true).unwrap();
        assert_eq!(prompt, conv.prompt_text, "{}", conv.name);
        let mut ids = Vec::new();
        if m.tokenizer.add_bos() {
            ids.extend(m.tokenizer.bos_id());
        }
        ids.extend(m.tokenizer.encode(&prompt, true).unwrap());
        assert_eq!(ids, conv.prompt_ids, "{}", conv.name);
    }
}
