//! Context management (issue 14, item 1): llama.cpp's context shift and the
//! chat layer's policies.
//!
//! * The shift against llama.cpp's own (`tests/scripts/llama_context_shift.py`:
//!   its `llama_memory_seq_rm` + `seq_add`, keys re-rotated by its K-shift
//!   graph): next-token logits after the shift, on the default model
//!   (llama, interleaved rope pairs) and on the tiny random-weight qwen2
//!   (NeoX pairs), within the same relative-L2 budget as the same tokens
//!   prefilled fresh by both engines.
//! * The rotation itself: after a shift, layer 0's cached keys and values
//!   (which depend only on the token and its position) equal those of a
//!   fresh prefill of the kept tokens, to f16 rounding; in a q8_0 / q4_0
//!   cache (stored Hadamard-rotated) to within the rounding of the format.
//! * Scripted conversations at context 512 under `shift` and `trim-turns`
//!   keep answering. The test runs [`DEFAULT_TURNS`] turns of each (a
//!   few dozen shifts or window moves); `SOTTO_CONTEXT_TURNS=2000` runs
//!   the 2,000 (the test profile is optimized, so that is the
//!   release-speed figure).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sotto_engine::{
    Chat, ContextPolicy, CpuBackend, Error, KvCache, KvType, KvTypes, Session, StopReason,
};
use sotto_models::Model;
use sotto_tests::parity::{llama_python, read_f32_file, repo_root};
use sotto_tests::tiny_arch::{gemma3_270m_path, prompts, tiny_file};
use sotto_tests::{argmax, default_model, default_model_path, greedy, rel_l2};

/// Turns per policy in the conversation tests unless
/// `SOTTO_CONTEXT_TURNS` says otherwise.
const DEFAULT_TURNS: usize = 48;

fn session_on(model: &Arc<Model>, context: usize) -> Session {
    session_with(model, context, KvTypes::default())
}

fn session_with(model: &Arc<Model>, context: usize, kv: KvTypes) -> Session {
    let backend = CpuBackend::new(model.clone(), 0)
        .unwrap()
        .with_kv_types(kv)
        .unwrap();
    Session::new(
        Box::new(backend),
        Arc::new(model.tokenizer.clone()),
        context,
    )
    .unwrap()
}

/// The raw-text prompts one after another, tokenized: a few hundred
/// tokens of ordinary text.
fn text_tokens(model: &Model, max: usize) -> Vec<u32> {
    let text: String = prompts()
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let mut ids: Vec<u32> = model.tokenizer.bos_id().into_iter().collect();
    ids.extend(model.tokenizer.encode(&text, false).unwrap());
    ids.truncate(max);
    ids
}

struct Case {
    tokens: Vec<u32>,
    keep: usize,
    discard: usize,
}

/// llama.cpp's logits per case: after its shift, and of the kept tokens
/// prefilled fresh.
fn llama_shifted(model: &Path, cases: &[Case]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    let dir =
        std::env::temp_dir().join(format!("sotto-context-shift-{}-{stem}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| serde_json::json!({"tokens": c.tokens, "keep": c.keep, "discard": c.discard}))
        .collect();
    let cases_path = dir.join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = dir.join("logits.f32");
    let script = repo_root().join("tests/scripts/llama_context_shift.py");
    let status = std::process::Command::new(llama_python())
        .arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--cases")
        .arg(&cases_path)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(status.success(), "{} failed ({status})", script.display());
    let values = read_f32_file(&out);
    std::fs::remove_dir_all(&dir).ok();
    let vocab = values.len() / (2 * cases.len());
    values
        .chunks_exact(2 * vocab)
        .map(|two| (two[..vocab].to_vec(), two[vocab..].to_vec()))
        .collect()
}

/// Ours per case: after `Session::shift_context`, and fresh.
fn sotto_shifted(model: &Arc<Model>, case: &Case) -> (Vec<f32>, Vec<f32>) {
    let (head, last) = case.tokens.split_at(case.tokens.len() - 1);
    let mut s = session_on(model, 512);
    s.forward_all(head).unwrap();
    s.shift_context(case.keep, case.discard).unwrap();
    assert_eq!(s.cached_tokens().len(), head.len() - case.discard);
    assert_eq!(s.cache().len(), s.cached_tokens().len());
    assert_eq!(s.shifted_out(), case.discard);
    let shifted = s.forward_all(last).unwrap();
    let kept: Vec<u32> = head[..case.keep]
        .iter()
        .chain(&head[case.keep + case.discard..])
        .chain(last)
        .copied()
        .collect();
    let all = session_on(model, 512).forward_all(&kept).unwrap();
    let vocab = shifted.len();
    (shifted, all[all.len() - vocab..].to_vec())
}

/// Our shift is as close to llama.cpp's shift as our fresh prefills are
/// to llama.cpp's of the same tokens: at most 1.5 times (the parity
/// criteria's `max_self_noise_factor`) the worst fresh-prefill distance of
/// the cases, and the same next token where llama.cpp's margin exceeds
/// the parity criteria's near-tie (0.5). Keys not rotated at all put the
/// default model 1.9 to 2.0 away, against 0.05 to 0.07 rotated.
fn check_against_llama(label: &str, file: &Path, model: &Arc<Model>) {
    let tokens = text_tokens(model, 300);
    assert!(tokens.len() >= 200, "{label}: only {} tokens", tokens.len());
    let cases = [
        Case {
            keep: 4,
            discard: (tokens.len() - 1 - 4) / 2,
            tokens: tokens.clone(),
        },
        Case {
            keep: 32,
            discard: 100,
            tokens: tokens[..180].to_vec(),
        },
    ];
    let theirs = llama_shifted(file, &cases);
    let mut results = Vec::new();
    for (case, (llama_shift, llama_fresh)) in cases.iter().zip(&theirs) {
        let (ours_shift, ours_fresh) = sotto_shifted(model, case);
        let fresh_err = rel_l2(&ours_fresh, llama_fresh);
        let shift_err = rel_l2(&ours_shift, llama_shift);
        // How much a shift differs from recomputing the kept tokens (what
        // the moved entries had attended to stays), for the record.
        let shift_vs_fresh = rel_l2(llama_shift, llama_fresh);
        eprintln!(
            "{label} keep {} discard {} of {}: rel L2 ours/llama.cpp after the shift {shift_err:.2e}, \
             fresh prefill {fresh_err:.2e}; llama.cpp shifted vs fresh {shift_vs_fresh:.2e}",
            case.keep,
            case.discard,
            case.tokens.len()
        );
        let mut sorted = llama_shift.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 0.5 {
            assert_eq!(
                argmax(&ours_shift),
                argmax(llama_shift),
                "{label}: another next token after the shift"
            );
        }
        results.push((shift_err, fresh_err));
    }
    let worst_fresh = results.iter().map(|r| r.1).fold(0f32, f32::max);
    for (shift_err, _) in results {
        assert!(
            shift_err <= 1.5 * worst_fresh,
            "{label}: after the shift ours is {shift_err:.3e} from llama.cpp, fresh prefills up to {worst_fresh:.3e}"
        );
    }
}

#[test]
fn shift_matches_llama_cpp_on_the_default_model() {
    let model = default_model();
    assert_eq!(
        model.spec.rope_style,
        sotto_models::spec::RopeStyle::Interleaved
    );
    check_against_llama("SmolLM2", &default_model_path(), &model);
}

#[test]
fn shift_matches_llama_cpp_with_neox_pairs_and_two_ropes() {
    let file = gemma3_270m_path();
    let model = Arc::new(Model::load(&file).unwrap());
    assert_eq!(model.spec.rope_style, sotto_models::spec::RopeStyle::NeoX);
    assert!(
        model.spec.distinct_ropes().0.len() > 1,
        "local and global layers"
    );
    check_against_llama("Gemma-3-270M", &file, &model);
}

/// Layer 0's keys and values depend only on the token and its position: a
/// shifted cache holds those of a fresh prefill of the kept tokens.
#[test]
fn shifted_layer_zero_equals_a_fresh_prefill() {
    let tiny = tiny_file("qwen2", None);
    for model in [default_model(), Arc::new(Model::load(&tiny).unwrap())] {
        let tokens = text_tokens(&model, 200);
        let (keep, discard) = (5, 77);
        let mut shifted = session_on(&model, 256);
        shifted.forward_all(&tokens).unwrap();
        shifted.shift_context(keep, discard).unwrap();
        let mut fresh = session_on(&model, 256);
        fresh.forward_all(shifted.cached_tokens()).unwrap();
        let (a, b) = (shifted.cache(), fresh.cache());
        assert_eq!(a.len(), b.len());
        let (cap, hd) = (a.capacity(), a.head_dim());
        let (mut worst_k, mut worst_v) = (0f32, 0f32);
        for h in 0..a.n_kv_head() {
            let range = h * cap * hd..(h * cap + a.len()) * hd;
            let row = |v: &[half::f16]| -> Vec<f32> {
                v[range.clone()].iter().map(|x| x.to_f32()).collect()
            };
            let (ak, av) = a.layer(0).f16("test").unwrap();
            let (bk, bv) = b.layer(0).f16("test").unwrap();
            worst_k = worst_k.max(rel_l2(&row(ak), &row(bk)));
            worst_v = worst_v.max(rel_l2(&row(av), &row(bv)));
        }
        eprintln!(
            "{}: layer 0 keys {worst_k:.2e}, values {worst_v:.2e} from a fresh prefill",
            model.spec.arch
        );
        assert!(
            worst_k < 2e-3,
            "{}: rotated keys {worst_k:.3e} off",
            model.spec.arch
        );
        assert!(
            worst_v < 1e-6,
            "{}: values {worst_v:.3e} changed",
            model.spec.arch
        );
    }
}

/// Layer 0's keys of a quantized cache, rotated where llama.cpp rotates
/// (SmolLM2's 64 wide heads: keys and values), after a shift: the rekey
/// must see the keys as the model wrote them (rotated back), re-rope them
/// and store them rotated again. Their distance from the f16 keys of a
/// fresh prefill is then that of one more rounding (at most twice the
/// format's own error, measured on a fresh prefill in the same type); a
/// rope applied in the rotated basis would land far off (the rotation and
/// the rope do not commute). Measured: q8_0 7.5e-3 shifted vs 5.4e-3
/// fresh, q4_0 0.120 vs 0.086.
#[test]
fn shifted_quantized_keys_stay_within_their_format_of_a_fresh_prefill() {
    let model = default_model();
    let tokens = text_tokens(&model, 200);
    let (keep, discard) = (5, 77);
    let keys = |c: &KvCache| -> Vec<f32> {
        let (cap, hd) = (c.capacity(), c.head_dim());
        let mut out = vec![0f32; c.n_kv_head() * c.len() * hd];
        for (h, rows) in out.chunks_mut(c.len() * hd).enumerate() {
            c.layer(0).k.read_rows(h * cap, rows).unwrap();
        }
        out
    };
    let mut reference = session_on(&model, 256);
    reference.forward_all(&tokens[..keep]).unwrap();
    reference.forward_all(&tokens[keep + discard..]).unwrap();
    let exact = keys(reference.cache());
    for t in [KvType::Q8_0, KvType::Q4_0] {
        let kv = KvTypes::both(t);
        let mut shifted = session_with(&model, 256, kv);
        shifted.forward_all(&tokens).unwrap();
        assert!(shifted.cache().rotations().k.is_some(), "{t}: not rotated");
        shifted.shift_context(keep, discard).unwrap();
        let mut fresh = session_with(&model, 256, kv);
        fresh.forward_all(shifted.cached_tokens()).unwrap();
        assert_eq!(shifted.cached_tokens(), reference.cached_tokens());
        let own = rel_l2(&keys(fresh.cache()), &exact);
        let after = rel_l2(&keys(shifted.cache()), &exact);
        eprintln!("{t}: layer 0 keys from f16 fresh: fresh {t} {own:.3e}, shifted {t} {after:.3e}");
        assert!(
            own > 0.0 && after <= 2.0 * own,
            "{t}: shifted {after:.3e}, fresh {own:.3e}"
        );
    }
}

fn turns() -> usize {
    std::env::var("SOTTO_CONTEXT_TURNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_TURNS)
}

/// A scripted conversation of short user turns, 8 new tokens at most per
/// answer, at context 512: every turn answers (never a context error),
/// the cache stays consistent, and the context was really managed.
fn conversation(policy: &str) {
    let model = default_model();
    let session = session_on(&model, 512);
    let mut chat = Chat::new(
        session,
        Arc::new(model.template.clone()),
        Some("You answer in a few words."),
    );
    let policy = match policy.parse::<ContextPolicy>().unwrap() {
        ContextPolicy::Shift { .. } => ContextPolicy::Shift {
            keep: chat.pinned_prefix_len().unwrap(),
        },
        p => p,
    };
    chat.set_context_policy(policy);
    let subjects = [
        "the sea", "a cat", "rain", "bread", "the moon", "music", "trees", "snow",
    ];
    let n = turns();
    let started = Instant::now();
    let (mut generated, mut prefilled, mut context_full) = (0, 0, 0);
    let (mut last_prompt, mut window_moves) = (0, 0);
    for i in 0..n {
        let user = format!(
            "Turn {i}: say one thing about {}.",
            subjects[i % subjects.len()]
        );
        let reply = chat
            .send(&user, &greedy(8), &mut |_| {})
            .unwrap_or_else(|e| panic!("{policy:?}: turn {i} failed: {e}"));
        assert!(
            !reply.stats.tokens.is_empty(),
            "{policy:?}: turn {i} generated nothing"
        );
        let s = chat.session();
        assert_eq!(
            s.cache().len(),
            s.cached_tokens().len(),
            "{policy:?}: turn {i}"
        );
        assert!(s.cached_tokens().len() <= 512);
        generated += reply.stats.generated_tokens;
        prefilled += reply.stats.prompt_tokens - reply.stats.reused_tokens;
        context_full += usize::from(reply.stats.stop == StopReason::ContextFull);
        window_moves += usize::from(reply.stats.prompt_tokens < last_prompt);
        last_prompt = reply.stats.prompt_tokens;
        if (i + 1) % 100 == 0 {
            eprintln!(
                "{policy:?}: {} turns answered in {:.1} s, {} shifted out, {window_moves} window moves",
                i + 1,
                started.elapsed().as_secs_f64(),
                s.shifted_out()
            );
        }
    }
    let s = chat.session();
    eprintln!(
        "{policy:?}: {n} turns in {:.1} s, {generated} tokens generated, {prefilled} prefilled, \
         {} shifted out, {window_moves} window moves, {context_full} answers cut by the context",
        started.elapsed().as_secs_f64(),
        s.shifted_out(),
    );
    assert_eq!(
        chat.messages().len(),
        1 + 2 * n,
        "every turn is in the history"
    );
    match policy {
        ContextPolicy::Shift { .. } => {
            assert!(
                s.shifted_out() > 512,
                "{policy:?}: the context was never shifted"
            );
            // Only the new turn's tokens are prefilled, never the history.
            assert!(
                prefilled < 60 * n,
                "{policy:?}: {prefilled} tokens prefilled over {n} turns"
            );
        }
        _ => {
            assert_eq!(s.shifted_out(), 0);
            assert!(window_moves >= 2, "{policy:?}: the window never moved");
        }
    }
}

#[test]
fn a_long_conversation_keeps_answering_under_shift() {
    conversation("shift");
}

#[test]
fn a_long_conversation_keeps_answering_under_trim_turns() {
    conversation("trim-turns");
}

/// An answer that reaches the end of the context: under `error` and
/// `trim-turns` it stops with a typed reason, under `shift` it goes on;
/// the cache stays consistent either way, and a prompt longer than the
/// context is a typed error unless the policy shifts.
#[test]
fn a_full_context_mid_answer() {
    let model = default_model();
    let prompt = text_tokens(&model, 100);
    for policy in [
        ContextPolicy::Error,
        ContextPolicy::TrimTurns,
        ContextPolicy::Shift { keep: 1 },
    ] {
        let mut s = session_on(&model, 128);
        s.set_context_policy(policy);
        let mut opts = greedy(80);
        opts.sampler.repeat_penalty = 1.3;
        let stats = s.generate(&prompt, &opts, &mut |_| {}).unwrap();
        assert_eq!(s.cache().len(), s.cached_tokens().len());
        match policy {
            ContextPolicy::Shift { .. } => {
                assert_ne!(stats.stop, StopReason::ContextFull);
                assert!(s.shifted_out() > 0, "{policy:?}: no shift");
            }
            _ => assert_eq!(stats.stop, StopReason::ContextFull, "{policy:?}"),
        }
        let long = text_tokens(&model, 300);
        let r = s.generate(&long, &greedy(4), &mut |_| {});
        match policy {
            ContextPolicy::Shift { .. } => {
                r.unwrap();
            }
            _ => assert!(
                matches!(r, Err(Error::ContextOverflow { .. })),
                "{policy:?}"
            ),
        }
        assert_eq!(s.cache().len(), s.cached_tokens().len());
    }
}
