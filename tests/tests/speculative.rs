//! Speculative decoding on the default model, with prompt-lookup drafts and
//! with a draft model: the same greedy output as one token per pass on
//! llama.cpp's reference conversations, drafts accepted where the answer
//! quotes its prompt, and the KV cache holding exactly the session's tokens
//! afterwards.
//!
//! Speed-up is a benchmark matter (`sotto chat --lookup N` prints the
//! acceptance; decode rates go in `sotto bench`), not asserted here.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sotto_engine::speculative::PromptLookup;
use sotto_engine::{CpuBackend, GenerateOptions, GenerationStats, Session, StopReason};
use sotto_models::ChatMessage;
use sotto_tests::parity::Reference;
use sotto_tests::{default_model as model, default_session as session, greedy};

fn run(s: &mut Session, prompt: &[u32], opts: &GenerateOptions) -> GenerationStats {
    let stats = s.generate(prompt, opts, &mut |_| {}).expect("generate");
    assert_eq!(
        s.cache().len(),
        s.cached_tokens().len(),
        "the cache must hold exactly the session's tokens"
    );
    stats
}

fn with_lookup(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        prompt_lookup: Some(PromptLookup::default()),
        ..greedy(max_tokens)
    }
}

#[test]
fn greedy_output_is_unchanged_on_the_reference_conversations() {
    let refs = Reference::default_model_chat();
    assert!(refs.sequences.len() >= 8, "need 8 conversations");
    let (mut drafted, mut accepted) = (0, 0);
    for seq in &refs.sequences {
        let plain = run(&mut session(2048), &seq.prompt_ids, &greedy(32));
        let spec = run(&mut session(2048), &seq.prompt_ids, &with_lookup(32));
        assert_eq!(
            spec.tokens, plain.tokens,
            "{}: prompt lookup changed the greedy answer",
            seq.name
        );
        assert_eq!(spec.stop, plain.stop);
        assert!(spec.accepted_tokens <= spec.drafted_tokens);
        eprintln!(
            "{:<24} {:>3} tokens, drafts {:>3}/{:<3} accepted",
            seq.name,
            spec.tokens.len(),
            spec.accepted_tokens,
            spec.drafted_tokens
        );
        drafted += spec.drafted_tokens;
        accepted += spec.accepted_tokens;
    }
    assert!(drafted > 0, "no conversation drafted anything");
    eprintln!("all: {accepted}/{drafted} draft tokens accepted");
}

/// An answer that copies its prompt: most tokens come from drafts.
#[test]
fn a_quoting_answer_is_mostly_drafted() {
    let m = model();
    let text = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen \
                liquor jugs. How vexingly quick daft zebras jump!";
    let messages = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user(format!(
            "Repeat this text exactly, with nothing else:\n\n{text}"
        )),
    ];
    let prompt = m
        .tokenizer
        .encode(&m.template.render(&messages, true).unwrap(), true)
        .unwrap();
    let plain = run(&mut session(2048), &prompt, &greedy(64));
    let spec = run(&mut session(2048), &prompt, &with_lookup(64));
    assert_eq!(spec.tokens, plain.tokens);
    let answer = m.tokenizer.decode(&plain.tokens, true).unwrap();
    eprintln!(
        "answer {:?}: {} tokens, drafts {}/{} accepted",
        answer,
        spec.tokens.len(),
        spec.accepted_tokens,
        spec.drafted_tokens
    );
    assert!(
        answer.contains("quick brown fox"),
        "the model did not quote: {answer:?}"
    );
    assert!(
        spec.accepted_tokens * 2 >= spec.tokens.len(),
        "only {} of {} tokens came from drafts",
        spec.accepted_tokens,
        spec.tokens.len()
    );
}

/// Drafts never run past the context or the token budget, and a session
/// that stopped mid-draft continues like one that never drafted.
#[test]
fn drafts_respect_the_context_and_the_budget() {
    let refs = Reference::default_model_chat();
    let prompt = &refs.sequences[0].prompt_ids;
    // Room for a few tokens only.
    let context = prompt.len() + 6;
    let plain = run(&mut session(context), prompt, &greedy(64));
    let spec = run(&mut session(context), prompt, &with_lookup(64));
    assert_eq!(spec.tokens, plain.tokens);
    assert_eq!(spec.stop, plain.stop);
    for max_tokens in [1, 2, 5] {
        let plain = run(&mut session(2048), prompt, &greedy(max_tokens));
        let spec = run(&mut session(2048), prompt, &with_lookup(max_tokens));
        assert_eq!(spec.tokens, plain.tokens);
        assert_eq!(spec.stop, StopReason::MaxTokens);
    }
    // A follow-up turn on the same session reuses the cache as usual.
    let mut s = session(2048);
    let first = run(&mut s, prompt, &with_lookup(5));
    let follow = [prompt.as_slice(), &first.tokens].concat();
    let second = run(&mut s, &follow, &with_lookup(8));
    assert_eq!(second.reused_tokens, follow.len() - 1);
    let mut fresh = session(2048);
    assert_eq!(run(&mut fresh, &follow, &greedy(8)).tokens, second.tokens);
}

/// A draft model (here the same weights on a second backend, so drafts
/// should almost always be accepted; a smaller model of the same
/// vocabulary is the real use) leaves the greedy answers unchanged.
#[test]
fn a_draft_model_leaves_greedy_answers_unchanged() {
    use sotto_engine::speculative::DraftModel;
    let refs = Reference::default_model_chat();
    let (mut drafted, mut accepted) = (0, 0);
    for seq in refs.sequences.iter().take(3) {
        let plain = run(&mut session(2048), &seq.prompt_ids, &greedy(24));
        let mut s = session(2048);
        let draft_backend = CpuBackend::new(model(), 0).expect("cpu backend");
        s.set_draft_model(Some(
            DraftModel::new(Box::new(draft_backend), 2048, 4).unwrap(),
        ))
        .unwrap();
        let spec = run(&mut s, &seq.prompt_ids, &greedy(24));
        assert_eq!(spec.tokens, plain.tokens, "{}", seq.name);
        drafted += spec.drafted_tokens;
        accepted += spec.accepted_tokens;
    }
    eprintln!("draft model: {accepted}/{drafted} draft tokens accepted");
    assert!(drafted > 0);
    assert!(
        accepted * 10 >= drafted * 8,
        "the same weights drafting: only {accepted}/{drafted} accepted"
    );

    // Another vocabulary is refused, and the session keeps working.
    let (tiny, _file) = sotto_tests::tiny_llama("speculative-draft");
    let tiny = Arc::new(tiny);
    let other = DraftModel::new(Box::new(CpuBackend::new(tiny, 1).unwrap()), 64, 4).unwrap();
    let mut s = session(2048);
    assert!(matches!(
        s.set_draft_model(Some(other)),
        Err(sotto_engine::Error::DraftModel(_))
    ));
    assert!(DraftModel::new(Box::new(CpuBackend::new(model(), 1).unwrap()), 64, 0).is_err());
    let seq = &refs.sequences[0];
    assert_eq!(
        run(&mut s, &seq.prompt_ids, &greedy(8)).tokens,
        run(&mut session(2048), &seq.prompt_ids, &greedy(8)).tokens
    );
}
