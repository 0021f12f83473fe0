//! The default model as a Hugging Face folder (`config.json`, safetensors,
//! `tokenizer.json`, `tokenizer_config.json`), written by an independent
//! script (tests/scripts/hf_folder_from_gguf.py: gguf-py, numpy,
//! safetensors, tokenizers; no Sotto code) from the GGUF, loaded by Sotto,
//! and judged by two other engines:
//! - llama.cpp on the source GGUF (the folder holds its weights
//!   dequantized), through the committed references and the parity
//!   criteria every quant type and architecture is held to;
//! - candle-transformers' Llama reading the folder itself
//!   (`--features candle`).
//!
//! Bad folders (a shard missing, a shape contradicting `config.json`, an
//! unsupported dtype, an index that lies) are typed errors.
//!
//! Run with `--nocapture` to see the parity tables.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use sotto_models::spec::RopeStyle;
use sotto_models::{ChatMessage, Error, Model};
use sotto_tests::hf::{fixture_folder, FolderDtype};
use sotto_tests::parity::{compare_model, Criteria, Reference};
use sotto_tests::tokenization::{assert_tokenizes_like_llama_cpp, llama_cpp_cases};
use sotto_tests::{default_model_path, TempDir};

fn load(path: &Path) -> Arc<Model> {
    Arc::new(Model::load(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

/// The F32 folder in one `model.safetensors`.
fn folder_f32() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| load(&fixture_folder(FolderDtype::F32, 1)))
        .clone()
}

/// The F16 folder in two shards with `model.safetensors.index.json`.
fn folder_f16_sharded() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| load(&fixture_folder(FolderDtype::F16, 2)))
        .clone()
}

fn gguf() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| load(&default_model_path())).clone()
}

#[test]
fn the_folder_describes_the_gguf_decoder() {
    let (g, f) = (gguf(), folder_f32());
    let (gs, fs) = (&g.spec, &f.spec);
    assert_eq!(
        (
            fs.arch.as_str(),
            fs.n_layer,
            fs.d_model,
            fs.n_head,
            fs.n_kv_head
        ),
        (
            gs.arch.as_str(),
            gs.n_layer,
            gs.d_model,
            gs.n_head,
            gs.n_kv_head
        )
    );
    assert_eq!(
        (
            fs.head_dim,
            fs.ffn_dim,
            fs.vocab_size,
            fs.context_length,
            fs.n_rot
        ),
        (
            gs.head_dim,
            gs.ffn_dim,
            gs.vocab_size,
            gs.context_length,
            gs.n_rot
        )
    );
    assert_eq!(fs.activation, gs.activation);
    assert_eq!(fs.tied_embeddings, gs.tied_embeddings);
    assert!((fs.norm_eps - gs.norm_eps).abs() < 1e-9);
    for (fl, gl) in fs.layers.iter().zip(&gs.layers) {
        assert_eq!(fl.rope.theta, gl.rope.theta);
        assert_eq!(fl.attention.scale, gl.attention.scale);
    }
    // The folder keeps Hugging Face's Q/K rows: its rope pairs halves.
    assert_eq!(gs.rope_style, RopeStyle::Interleaved);
    assert_eq!(fs.rope_style, RopeStyle::NeoX);

    let (gt, ft) = (&g.tokenizer, &f.tokenizer);
    assert_eq!(ft.vocab_size(), gt.vocab_size());
    assert_eq!(
        (ft.bos_id(), ft.eos_id(), ft.add_bos()),
        (gt.bos_id(), gt.eos_id(), gt.add_bos())
    );
    assert_eq!(f.template.is_fallback(), g.template.is_fallback());
    let conversation = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("What is the capital of France?"),
        ChatMessage::assistant("Paris."),
        ChatMessage::user("And of Spain?"),
    ];
    let render = |m: &Model| {
        let text = m.template.render(&conversation, true).unwrap();
        m.tokenizer.encode(&text, true).unwrap()
    };
    assert_eq!(render(&f), render(&g));
}

/// `tokenizer.json` through Sotto's reading of it gives llama.cpp's ids
/// for the GGUF on every reference string.
#[test]
fn the_folder_tokenizes_like_llama_cpp() {
    let cases = llama_cpp_cases();
    assert!(cases.len() >= 364, "only {} cases", cases.len());
    assert_tokenizes_like_llama_cpp(&folder_f32().tokenizer, &cases);
    assert_tokenizes_like_llama_cpp(&folder_f16_sharded().tokenizer, &cases);
}

/// Teacher-forced along llama.cpp's conversations on the source GGUF: the
/// folder holds the same weights dequantized (F32) or rounded to F16, so
/// it is held to the criteria of the GGUF itself. The F32 folder runs all
/// eight conversations; the F16 sharded one, which differs only in its
/// storage, the first three (CI time).
#[test]
fn folder_logits_agree_with_llama_cpp_on_the_source_gguf() {
    let refs = Reference::default_model_chat();
    let mut first_three = Reference::default_model_chat();
    first_three.sequences.truncate(3);
    for (label, model, refs) in [
        ("F32 folder", folder_f32(), &refs),
        ("F16 folder, 2 shards", folder_f16_sharded(), &first_three),
    ] {
        let summary = compare_model(&model, refs, Criteria::default());
        eprintln!("{label}\n{summary}");
        summary.assert_passes(label);
    }
}

/// A copy of the F16 two-shard fixture in a temporary folder, its shards
/// linked (not copied), for one bad-input case to edit; removed when the
/// test ends, passes or not.
fn scratch_copy(tag: &str) -> TempDir {
    let src = fixture_folder(FolderDtype::F16, 2);
    let tmp = sotto_tests::scratch_dir(&format!("hf-bad-{tag}"));
    let dst = tmp.path();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let from = entry.path();
        if name.to_string_lossy().ends_with(".safetensors") {
            std::os::unix::fs::symlink(&from, dst.join(&name)).unwrap();
        } else {
            std::fs::copy(&from, dst.join(&name)).unwrap();
        }
    }
    tmp
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> Error {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded, but it is broken", dir.display()),
        Err(e) => e,
    }
}

/// The shard holding `tensor`, from the index.
fn shard_of(dir: &Path, tensor: &str) -> String {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    index["weight_map"][tensor].as_str().unwrap().to_string()
}

#[test]
fn bad_folders_are_typed_errors() {
    // A shard the index lists is missing.
    let tmp = scratch_copy("missing-shard");
    let dir = tmp.path();
    let shard = shard_of(dir, "model.layers.29.mlp.down_proj.weight");
    std::fs::remove_file(dir.join(&shard)).unwrap();
    match load_err(dir) {
        Error::HfFolder { file, reason } => {
            assert!(file.ends_with(&shard), "{}", file.display());
            assert!(reason.contains("missing"), "{reason}");
        }
        e => panic!("missing shard: {e:?}"),
    }

    // config.json contradicts the tensors' shapes.
    let tmp = scratch_copy("shape");
    let dir = tmp.path();
    edit_json(&dir.join("config.json"), |c| {
        c["intermediate_size"] = 1024.into()
    });
    match load_err(dir) {
        Error::ShapeMismatch {
            tensor,
            expected,
            found,
        } => {
            assert!(tensor.starts_with("blk."), "{tensor}");
            assert!(
                expected.contains(&1024) && found.contains(&1536),
                "{expected:?} {found:?}"
            );
        }
        e => panic!("shape contradicting config.json: {e:?}"),
    }

    // A tensor in a dtype the engine does not read (I64), in a third
    // shard the index points at.
    let tmp = scratch_copy("dtype");
    let dir = tmp.path();
    let values: Vec<u8> = (0..576i64).flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![576], &values).unwrap();
    let bytes = safetensors::serialize([("model.norm.weight", view)], None).unwrap();
    std::fs::write(dir.join("extra.safetensors"), bytes).unwrap();
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        v["weight_map"]["model.norm.weight"] = "extra.safetensors".into()
    });
    match load_err(dir) {
        Error::HfFolder { file, reason } => {
            assert!(file.ends_with("extra.safetensors"), "{}", file.display());
            assert!(
                reason.contains("I64") && reason.contains("model.norm.weight"),
                "{reason}"
            );
        }
        e => panic!("I64 tensor: {e:?}"),
    }

    // The index sends a tensor to a shard that does not hold it.
    let tmp = scratch_copy("index");
    let dir = tmp.path();
    let name = "model.layers.0.self_attn.q_proj.weight";
    let holder = shard_of(dir, name);
    let other = shard_of(dir, "model.layers.29.mlp.down_proj.weight");
    assert_ne!(
        holder, other,
        "the fixture's first and last layers share a shard"
    );
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        v["weight_map"][name] = other.clone().into()
    });
    match load_err(dir) {
        Error::HfFolder { file, reason } => {
            assert!(file.ends_with(&other), "{}", file.display());
            assert!(reason.contains(name), "{reason}");
        }
        e => panic!("lying index: {e:?}"),
    }

    // An index entry that escapes the folder.
    let tmp = scratch_copy("escape");
    let dir = tmp.path();
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        v["weight_map"][name] = "../model.safetensors".into()
    });
    assert!(matches!(load_err(dir), Error::HfFolder { .. }));

    // config.json that is not JSON, and one of an unknown architecture.
    let tmp = scratch_copy("config");
    let dir = tmp.path();
    std::fs::write(dir.join("config.json"), b"{ \"model_type\": ").unwrap();
    assert!(matches!(load_err(dir), Error::HfFolder { .. }));
    std::fs::write(dir.join("config.json"), br#"{"model_type": "mamba"}"#).unwrap();
    assert!(matches!(load_err(dir), Error::HfConfig { .. }));

    // No tokenizer.json.
    let tmp = scratch_copy("tokenizer");
    let dir = tmp.path();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    match load_err(dir) {
        Error::HfFolder { file, reason } => {
            assert!(file.ends_with("tokenizer.json"), "{}", file.display());
            assert!(reason.contains("missing"), "{reason}");
        }
        e => panic!("no tokenizer.json: {e:?}"),
    }

    // The fixture itself still loads: nothing above touched it.
    Model::load(fixture_folder(FolderDtype::F16, 2)).unwrap();
}

/// candle-transformers' Llama on the folder's own safetensors (it reads
/// `config.json` and the Hugging Face tensor names itself) against Sotto on
/// the same folder, step by step along the France answer: the same argmax
/// wherever candle's margin is clear, and close logits.
#[cfg(feature = "candle")]
#[test]
fn folder_logits_agree_with_candle_on_the_folder() {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
    use sotto_tests::parity::sotto_logits;
    use sotto_tests::rel_l2;

    let dir = fixture_folder(FolderDtype::F32, 1);
    let config: LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = config.into_config(false);
    let device = Device::Cpu;
    // Read (not mapped: mapping is `unsafe` in candle's API) by candle's
    // own safetensors loader.
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &device).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
    let llama = Llama::load(vb, &config).unwrap();
    let mut cache = Cache::new(true, DType::F32, &config, &device).unwrap();

    let model = folder_f32();
    let chat: serde_json::Value = sotto_tests::read_json("llama_cpp/chat.json");
    let conv = chat["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "france_system")
        .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt = ids(&conv["prompt_ids"]);
    let answer = ids(&chat["france_check"]["expected_ids"]);
    let tokens = [&prompt[..], &answer[..]].concat();
    let ours = sotto_logits(&model, &tokens);
    let vocab = model.spec.vocab_size;

    // candle returns the last position's logits: the prompt in one pass,
    // then the answer one token at a time.
    let forward = |cache: &mut Cache, chunk: &[u32], pos: usize| -> Vec<f32> {
        let input = Tensor::new(chunk, &device).unwrap().unsqueeze(0).unwrap();
        llama
            .forward(&input, pos, cache)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let criteria = Criteria::default();
    let mut worst = 0f32;
    let mut checked = 0;
    let mut theirs = forward(&mut cache, &prompt, 0);
    for pos in prompt.len() - 1..tokens.len() {
        let row = &ours[pos * vocab..(pos + 1) * vocab];
        let err = rel_l2(row, &theirs);
        worst = worst.max(err);
        let mut sorted = theirs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > criteria.tie_margin {
            checked += 1;
            assert_eq!(
                sotto_tests::argmax(row),
                sotto_tests::argmax(&theirs),
                "position {pos}: candle's margin {:.2}",
                sorted[0] - sorted[1]
            );
        }
        if pos + 1 < tokens.len() {
            theirs = forward(&mut cache, &tokens[pos + 1..pos + 2], pos + 1);
        }
    }
    // Both engines run the same F32 weights in f32 arithmetic; Sotto keeps
    // its KV cache in f16 and sums in another order, so their difference is
    // far below the quantized models' budgets (measured 1.6e-3). 1e-2 holds
    // it to that, with room for the summation order of other ISAs.
    let budget = 1e-2f32;
    eprintln!(
        "candle on the folder vs sotto on the folder: {} positions, {checked} with a clear \
         argmax, worst rel L2 {worst:.3e} (budget {budget:.0e})",
        tokens.len() - prompt.len() + 1
    );
    assert!(
        checked >= answer.len() / 2,
        "only {checked} clear positions"
    );
    assert!(worst <= budget, "worst rel L2 {worst:.3e} > {budget:.3e}");
}
