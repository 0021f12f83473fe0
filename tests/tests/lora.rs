//! LoRA adapters on the default model, against llama.cpp (issue 13, item 4).
//!
//! `tests/scripts/lora_adapters.py` (PyPI gguf, numpy, safetensors; no Sotto
//! code) writes random rank-8 adapters for the default model, each as
//! llama.cpp's GGUF LoRA and as a PEFT folder: adapter 1 on `attn_q`,
//! `attn_v`, `ffn_up` of every block (so a Q adapter's B rows go through
//! llama.cpp's Q/K row reordering), adapter 2 on `attn_output`, `ffn_down`.
//! Their updates are a fifth of each matrix's norm: llama.cpp's logits move
//! by ~0.7 relative L2 with adapter 1, the answers stay sentences.
//!
//! llama.cpp (llama-cpp-python `lora_path`, through `llama_ref.py refs
//! --lora`) records its references with adapter 1 on the first [`PROMPTS`]
//! prompts of tests/data/prompts/lora_chat.json, [`GREEDY_TOKENS`] greedy
//! tokens each, and Sotto is held to `sotto_tests::parity`'s criteria with
//! the adapter unmerged at run time. Merged at load, Sotto is held to
//! llama.cpp running the merged model that lora_adapters.py `--merged`
//! writes on its own (the adapted matrices as Q8_0). The base alone must
//! fail them (the check is not vacuous), the PEFT form must give the GGUF
//! form's logits, three conversations with adapter 1, adapter 2 and none
//! run on one loaded model, and an adapter for another model is a typed
//! error.
//!
//! Files are written once into `~/.cache/sotto/parity/lora` (`$SOTTO_CACHE`)
//! and reused while their inputs are the same. About a minute of CPU in
//! all, most of it llama.cpp's references the first time.
//! Run with `--nocapture` for the tables and load times.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sotto_engine::{AdapterSpec, BackendChoice, LoadedModel};
use sotto_models::lora::{LoraAdapter, LoraFormat};
use sotto_models::Model;
use sotto_tests::hf::{fixture_folder, FolderDtype};
use sotto_tests::parity::{
    cache_dir, compare_model, compare_model_with, generate_reference_with_lora, sotto_logits_with,
    Criteria, F64Lora, RefBudget, Reference,
};
use sotto_tests::{data_dir, default_model_path, rel_l2, script_fixture, tiny_llama_file};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Prompts of lora_chat.json llama.cpp answers.
const PROMPTS: usize = 4;
/// Greedy tokens per prompt.
const GREEDY_TOKENS: usize = 24;

/// One adapter in both formats.
struct Adapter {
    /// llama.cpp's GGUF LoRA.
    gguf: PathBuf,
    /// The PEFT folder.
    peft: PathBuf,
    /// The base with the adapter merged in, adapted matrices as Q8_0,
    /// written independently of Sotto (adapter 1 only).
    merged: PathBuf,
}

/// Adapter 1 (`attn_q,attn_v,ffn_up`, seed 1, with its merged GGUF) or 2
/// (`attn_output,ffn_down`, seed 2), written by lora_adapters.py once per
/// script, model and options ([`script_fixture`]).
fn adapter(which: u32) -> Adapter {
    let args: &[&str] = match which {
        1 => &[
            "--seed",
            "1",
            "--targets",
            "attn_q,attn_v,ffn_up",
            "--merged",
        ],
        _ => &["--seed", "2", "--targets", "attn_output,ffn_down"],
    };
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let dir = script_fixture(
        "lora_adapters.py",
        "lora",
        &format!("adapter{which}"),
        &args,
        "peft/adapter_model.safetensors",
    );
    Adapter {
        gguf: dir.join("adapter.gguf"),
        peft: dir.join("peft"),
        merged: dir.join("merged.gguf"),
    }
}

fn base_model() -> Arc<Model> {
    let path = default_model_path();
    Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// llama.cpp's references with adapter 1 applied at run time, with the
/// float64 forward pass of the base and the adapter.
fn llama_cpp_with_adapter1(a: &Adapter) -> Reference {
    let budget = RefBudget {
        max_new_tokens: GREEDY_TOKENS,
        max_prompts: Some(PROMPTS),
    };
    generate_reference_with_lora(
        &default_model_path(),
        Some((&a.gguf, 1.0)),
        &data_dir().join("prompts/lora_chat.json"),
        &cache_dir().join("lora/refs-adapter1"),
        budget,
    )
    .with_f64_forward(
        &default_model_path(),
        Some(F64Lora {
            path: &a.gguf,
            scale: 1.0,
        }),
    )
}

/// llama.cpp's references on adapter 1's merged GGUF, a model of its own
/// (the adapted matrices rounded to Q8_0 once), with its float64 forward
/// pass: what Sotto's merge at load is held to. Against the unmerged
/// adapter the merged model would carry that rounding of the weights on
/// top of the engines' rounding on the way (the two float64 passes are
/// 1.4e-2 to 3.2e-2 rel L2 apart, half of llama.cpp's distance to either).
fn llama_cpp_on_merged1(a: &Adapter) -> Reference {
    let budget = RefBudget {
        max_new_tokens: GREEDY_TOKENS,
        max_prompts: Some(PROMPTS),
    };
    generate_reference_with_lora(
        &a.merged,
        None,
        &data_dir().join("prompts/lora_chat.json"),
        &cache_dir().join("lora/refs-merged1"),
        budget,
    )
    .with_f64_forward(&a.merged, None)
}

/// With the GGUF adapter unmerged at run time, Sotto's logits match
/// llama.cpp's with the same adapter; merged at load (the adapted matrices
/// requantized to Q8_0), they match llama.cpp on the independently merged
/// GGUF; the base model alone does not match the adapter.
#[test]
fn gguf_adapter_matches_llama_cpp_merged_and_unmerged() {
    let started = Instant::now();
    let a = adapter(1);
    let reference = llama_cpp_with_adapter1(&a);
    let merged_reference = llama_cpp_on_merged1(&a);
    let model = base_model();
    let lora = Arc::new(LoraAdapter::load(&a.gguf, &model, 1.0).unwrap());
    assert_eq!(lora.format, LoraFormat::Gguf);
    assert_eq!(lora.pairs.len(), 3 * model.spec.n_layer);
    let criteria = Criteria::default();

    let unmerged = compare_model_with(&model, std::slice::from_ref(&lora), &reference, criteria);
    println!("adapter 1 unmerged (W·x + s·B·(A·x)) vs llama.cpp with the adapter:\n{unmerged}");
    let merged_model = Arc::new(LoraAdapter::merge(&model, &[(*lora).clone()]).unwrap());
    let merged = compare_model(&merged_model, &merged_reference, criteria);
    println!(
        "adapter 1 merged at load (W + s·B·A as Q8_0) vs llama.cpp on the merged GGUF:\n{merged}"
    );
    let without = compare_model(&model, &reference, criteria);
    println!("the base model without the adapter vs llama.cpp with it:\n{without}");
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());

    unmerged.assert_passes("the unmerged adapter");
    merged.assert_passes("the merged adapter");
    // Not vacuous: without the adapter the same comparison fails, and its
    // logits are several times further from llama.cpp's.
    assert!(
        !without.failures().is_empty(),
        "the base model alone passes against llama.cpp with the adapter"
    );
    let (ours, base) = (unmerged.rel_l2().1, without.rel_l2().1);
    assert!(
        base > 3.0 * ours,
        "mean relative L2 without the adapter {base:.3} is not clearly above with it {ours:.3}"
    );
}

/// The PEFT folder and the GGUF file are one adapter: the same pairs once
/// bound (the Q adapter's B rows reordered from Hugging Face's order to the
/// GGUF base's), and the same logits merged and unmerged.
#[test]
fn peft_and_gguf_forms_of_one_adapter_give_the_same_logits() {
    let a = adapter(1);
    let model = base_model();
    let gguf = Arc::new(LoraAdapter::load(&a.gguf, &model, 1.0).unwrap());
    let peft = Arc::new(LoraAdapter::load(&a.peft, &model, 1.0).unwrap());
    assert_eq!(peft.format, LoraFormat::Peft);
    assert_eq!(gguf.pairs.len(), peft.pairs.len());
    for g in &gguf.pairs {
        let p = peft.pair(g.layer, g.target).unwrap();
        assert_eq!((p.rank, p.rows, p.cols), (g.rank, g.rows, g.cols));
        assert_eq!(p.scale, g.scale, "blk.{}.{:?}", g.layer, g.target);
        assert_eq!(p.a.data(), g.a.data(), "blk.{}.{:?} A", g.layer, g.target);
        assert_eq!(p.b.data(), g.b.data(), "blk.{}.{:?} B", g.layer, g.target);
    }
    let tokens = model
        .tokenizer
        .encode(
            "The capital of France is Paris, and the capital of Italy is",
            true,
        )
        .unwrap();
    let from_gguf = sotto_logits_with(&model, std::slice::from_ref(&gguf), &tokens);
    let from_peft = sotto_logits_with(&model, std::slice::from_ref(&peft), &tokens);
    assert_eq!(from_gguf, from_peft);
    // Merged, both forms leave the same f32 matrices (merged and unmerged
    // differ from each other by the base's 8-bit activations, see the
    // llama.cpp test for both).
    let merged = |a: &LoraAdapter| {
        let m = Arc::new(LoraAdapter::merge(&model, std::slice::from_ref(a)).unwrap());
        sotto_logits_with(&m, &[], &tokens)
    };
    assert_eq!(merged(&gguf), merged(&peft));
}

/// On the default model as a Hugging Face folder (Q/K rows in Hugging
/// Face's order, rotated NeoX-style), the PEFT adapter applies as it is and
/// the GGUF one has its Q B rows put back into that order: both give the
/// same pairs, and the folder with the PEFT adapter matches llama.cpp with
/// the GGUF adapter on the GGUF within the same criteria.
#[test]
fn peft_adapter_on_the_hugging_face_folder_matches_llama_cpp() {
    let a = adapter(1);
    let reference = llama_cpp_with_adapter1(&a);
    let folder = fixture_folder(FolderDtype::F32, 1);
    let model = Arc::new(Model::load(&folder).unwrap());
    let peft = Arc::new(LoraAdapter::load(&a.peft, &model, 1.0).unwrap());
    let gguf = LoraAdapter::load(&a.gguf, &model, 1.0).unwrap();
    for p in &peft.pairs {
        let g = gguf.pair(p.layer, p.target).unwrap();
        assert_eq!(g.b.data(), p.b.data(), "blk.{}.{:?} B", p.layer, p.target);
    }
    let summary = compare_model_with(
        &model,
        std::slice::from_ref(&peft),
        &reference,
        Criteria::default(),
    );
    println!("the folder with the PEFT adapter (unmerged) vs llama.cpp with the GGUF adapter:\n{summary}");
    summary.assert_passes("the folder with the PEFT adapter");
}

/// Three conversations on one loaded model: adapter 1, adapter 2, none.
/// Attaching an adapter reads only the adapter; the base weights are the
/// same `Arc` for all three, and each conversation computes what a model
/// with only its adapter computes, however they are interleaved.
#[test]
fn conversations_switch_adapters_without_reloading_the_base() {
    let (a1, a2) = (adapter(1), adapter(2));
    let lm = LoadedModel::open(default_model_path(), BackendChoice::default()).unwrap();
    let t = Instant::now();
    let spec = |p: &PathBuf| AdapterSpec {
        path: p.clone(),
        scale: 1.0,
    };
    let l1 = lm.load_adapter(&spec(&a1.gguf)).unwrap();
    let read1 = t.elapsed();
    let l2 = lm.load_adapter(&spec(&a2.peft)).unwrap();
    let mut conv_c = lm.session_with(512, &[]).unwrap();
    let t = Instant::now();
    let backend = lm.backend_with(std::slice::from_ref(&l1)).unwrap();
    let attach = t.elapsed();
    drop(backend);
    let t = Instant::now();
    let mut conv_a = lm.session_with(512, std::slice::from_ref(&l1)).unwrap();
    let session = t.elapsed();
    let mut conv_b = lm.session_with(512, std::slice::from_ref(&l2)).unwrap();
    println!(
        "base model load {:.1} ms; adapter 1 read and bound {:.1} ms ({:.1} MB f32); \
         a backend with it attached {:.3} ms; a session of 512 positions with it {:.1} ms",
        lm.load_time().as_secs_f64() * 1e3,
        read1.as_secs_f64() * 1e3,
        l1.bytes() as f64 / 1e6,
        attach.as_secs_f64() * 1e3,
        session.as_secs_f64() * 1e3
    );
    let merged = LoadedModel::open_merged(
        default_model_path(),
        BackendChoice::default(),
        &[spec(&a1.gguf)],
    )
    .unwrap();
    println!(
        "the base model with adapter 1 merged at load: {:.1} ms",
        merged.load_time().as_secs_f64() * 1e3
    );
    drop(merged);
    let model = lm.model().clone();
    let turn1 = model
        .tokenizer
        .encode("Tell me about the sea.", true)
        .unwrap();
    let turn2 = model
        .tokenizer
        .encode(" And the mountains?", false)
        .unwrap();
    // interleaved: A, B, C, then each again on top of its own cache
    let mut got = [Vec::new(), Vec::new(), Vec::new()];
    for turn in [&turn1, &turn2] {
        for (conv, out) in [&mut conv_a, &mut conv_b, &mut conv_c]
            .into_iter()
            .zip(got.iter_mut())
        {
            out.extend(conv.forward_all(turn).unwrap());
        }
    }
    let whole = [&turn1[..], &turn2[..]].concat();
    let alone = [
        sotto_logits_with(&model, &[l1], &whole),
        sotto_logits_with(&model, &[l2], &whole),
        sotto_logits_with(&model, &[], &whole),
    ];
    for (name, (g, want)) in ["A (adapter 1)", "B (adapter 2)", "C (none)"]
        .iter()
        .zip(got.iter().zip(&alone))
    {
        let e = rel_l2(g, want);
        assert!(
            e < 1e-3,
            "conversation {name}: relative L2 {e} to its own model"
        );
    }
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let e = rel_l2(&got[i], &got[j]);
        assert!(e > 0.1, "conversations {i} and {j} differ by only {e}");
    }
    for conv in [&conv_a, &conv_b, &conv_c] {
        assert!(conv.backend().describe().starts_with("cpu"));
    }
    assert!(Arc::ptr_eq(lm.model(), &model));
}

/// An adapter made for the default model, given another model (a tiny
/// Llama): a typed error at load, attach or merge, nothing runs.
#[test]
fn an_adapter_for_another_model_is_a_typed_error() {
    let a = adapter(1);
    let tiny = tiny_llama_file("lora-other-base");
    let lm = LoadedModel::open(&tiny, BackendChoice::default()).unwrap();
    for path in [&a.gguf, &a.peft] {
        let spec = AdapterSpec {
            path: path.clone(),
            scale: 1.0,
        };
        let err = lm.load_adapter(&spec).unwrap_err();
        assert!(
            matches!(
                err,
                sotto_engine::Error::Model(sotto_models::Error::LoraBaseMismatch { .. })
            ),
            "{}: {err}",
            path.display()
        );
        let err = LoadedModel::open_merged(&tiny, BackendChoice::default(), &[spec]).unwrap_err();
        assert!(
            matches!(
                err,
                sotto_engine::Error::Model(sotto_models::Error::LoraBaseMismatch { .. })
            ),
            "{err}"
        );
    }
    // and a conversation of the tiny model still runs
    let mut s = lm.session(64).unwrap();
    assert!(!s.forward_all(&[1, 2, 3]).unwrap().is_empty());
}
