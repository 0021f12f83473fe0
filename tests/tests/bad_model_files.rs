#![allow(clippy::unwrap_used, clippy::panic)]
//! Broken model files through `Model::load`: each is a typed error naming
//! what is wrong, never a panic.

use sotto_models::gguf::{GgufWriter, MetaValue};
use sotto_models::testutil::{tiny_model, write_temp, TinyDims};
use sotto_models::{Error, Model};

fn load(w: &GgufWriter) -> Result<Model, Error> {
    load_bytes(&w.to_bytes())
}

fn load_bytes(bytes: &[u8]) -> Result<Model, Error> {
    let path = write_temp("bad-model", bytes).unwrap();
    Model::load(&path)
}

fn llama() -> GgufWriter {
    tiny_model("llama", TinyDims::default())
}

#[test]
fn the_synthetic_models_load() {
    for arch in ["llama", "gemma3"] {
        let m = load(&tiny_model(arch, TinyDims::default())).unwrap();
        assert_eq!(m.spec.arch, arch);
        assert_eq!(m.spec.vocab_size, m.tokenizer.vocab_size());
        assert!(
            m.template.is_fallback(),
            "no template in the file: ChatML fallback"
        );
        // merges (h e), (l l), (he ll), (Ġ w) over byte tokens 0..256
        let ids = m.tokenizer.encode("hello world", false).unwrap();
        assert_eq!(
            ids,
            vec![
                258,
                b'o' as u32,
                259,
                b'o' as u32,
                b'r' as u32,
                b'l' as u32,
                b'd' as u32
            ]
        );
        assert_eq!(m.tokenizer.decode(&ids, false).unwrap(), "hello world");
    }
}

#[test]
fn missing_file_is_an_io_error_with_the_path() {
    let err = Model::load("/nonexistent/dir/model.gguf").unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if path.ends_with("model.gguf")),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/dir/model.gguf"));
}

#[test]
fn every_truncation_of_a_model_is_an_error() {
    let bytes = llama().to_bytes();
    // Step through the header and metadata byte by byte, the rest coarser.
    let mut lens: Vec<usize> = (0..2048.min(bytes.len())).collect();
    lens.extend((2048..bytes.len()).step_by(97));
    lens.push(bytes.len() - 1);
    for len in lens {
        // Trailing alignment padding after the last tensor is optional.
        let r = load_bytes(&bytes[..len]);
        if let Ok(m) = r {
            let end = m
                .gguf
                .tensors()
                .iter()
                .map(|t| m.gguf.data_start() + t.offset + t.n_bytes)
                .max()
                .unwrap();
            assert!(len >= end, "truncated to {len} loaded");
        }
    }
}

#[test]
fn wrong_magic_and_version() {
    let mut bytes = llama().to_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(load_bytes(&bytes), Err(Error::BadMagic { .. })));
    let mut w = llama();
    w.version = 1;
    assert!(matches!(load(&w), Err(Error::UnsupportedVersion(1))));
}

#[test]
fn unknown_architecture() {
    let mut w = llama();
    w.set("general.architecture", MetaValue::string("rwkv7"));
    let err = load(&w).unwrap_err();
    assert!(
        matches!(err, Error::UnknownArchitecture(ref a) if a == "rwkv7"),
        "{err}"
    );
    for arch in sotto_models::arch::supported_architectures() {
        assert!(err.to_string().contains(arch), "{err}");
    }
}

#[test]
fn missing_required_keys_name_the_key() {
    for key in [
        "llama.block_count",
        "llama.attention.head_count",
        "llama.context_length",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
    ] {
        let mut w = llama();
        w.remove(key);
        match load(&w) {
            Err(Error::MissingKey { key: k }) => assert_eq!(k, key),
            other => panic!("{key}: expected MissingKey, got {other:?}"),
        }
    }
}

#[test]
fn shapes_not_matching_the_hyper_parameters() {
    let mut w = llama();
    w.set("llama.embedding_length", MetaValue::U32(16));
    match load(&w) {
        Err(Error::ShapeMismatch {
            tensor,
            expected,
            found,
        }) => {
            assert_eq!(tensor, "token_embd.weight");
            assert_eq!((expected, found), (vec![263, 16], vec![263, 8]));
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let mut w = llama();
    w.set("llama.vocab_size", MetaValue::U32(300));
    assert!(matches!(load(&w), Err(Error::ShapeMismatch { .. })));
    let mut w = llama();
    w.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    assert!(
        matches!(load(&w), Err(Error::MissingTensor { ref tensor }) if tensor == "blk.1.ffn_up.weight")
    );
}

#[test]
fn hostile_tensor_entries() {
    // data pointing past EOF
    let mut w = llama();
    w.tensors[3].offset_override = Some(1 << 30);
    assert!(matches!(load(&w), Err(Error::BadTensor { .. })));
    // absurd dimensions
    let mut w = llama();
    w.tensors[0].dims = vec![1 << 40, 1 << 40];
    assert!(matches!(load(&w), Err(Error::BadTensor { .. })));
    let mut w = llama();
    w.tensors[0].dims = vec![8; 9];
    assert!(matches!(load(&w), Err(Error::BadTensor { .. })));
    let mut w = llama();
    w.tensors[0].dims = vec![8, 0];
    assert!(matches!(load(&w), Err(Error::BadTensor { .. })));
    // unknown tensor type
    let mut w = llama();
    w.tensors[2].type_id = 1234;
    assert!(matches!(
        load(&w),
        Err(Error::UnknownTensorType { type_id: 1234, .. })
    ));
}

#[test]
fn absurd_string_and_array_lengths() {
    // Rewrite the length prefix of the first metadata key to claim 2^60 bytes.
    let mut bytes = llama().to_bytes();
    bytes[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(load_bytes(&bytes), Err(Error::Truncated { .. })));
    // An array claiming more elements than the file holds: find the token array's count.
    let w = llama();
    let bytes = w.to_bytes();
    let key = b"tokenizer.ggml.tokens";
    let at = bytes.windows(key.len()).position(|s| s == key).unwrap() + key.len();
    let mut bad = bytes.clone();
    // after the key: u32 value type (9), u32 element type (8), u64 count
    bad[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(load_bytes(&bad), Err(Error::Truncated { .. })));
}

#[test]
fn tokenizer_metadata_errors() {
    let mut w = llama();
    w.set("tokenizer.ggml.model", MetaValue::string("bert"));
    assert!(matches!(load(&w), Err(Error::Tokenizer(_))));
    let mut w = llama();
    w.set("tokenizer.ggml.pre", MetaValue::string("no-such-pre"));
    assert!(matches!(load(&w), Err(Error::Tokenizer(ref m)) if m.contains("no-such-pre")));
    let mut w = llama();
    w.set("tokenizer.ggml.token_type", MetaValue::i32_array(&[1, 1]));
    assert!(matches!(load(&w), Err(Error::Tokenizer(_))));
    let mut w = llama();
    w.set("tokenizer.chat_template", MetaValue::string("{% for %}"));
    assert!(matches!(load(&w), Err(Error::ChatTemplate(_))));
}
