//! The generation loop on the real default model: the France answer, prefix
//! reuse across chat turns, typed context overflow, cancellation from another
//! thread, and UTF-8-safe streaming. After every failure the session must
//! still answer exactly as a fresh one does.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sotto_engine::{CancelToken, Chat, Error, SamplerConfig, StopReason};
use sotto_tests::{default_model as model, default_session as session, greedy};
use std::sync::Arc;

fn chat(context: usize, system: Option<&str>) -> Chat {
    Chat::new(session(context), Arc::new(model().template.clone()), system)
}

#[test]
fn france_answer_matches_llama_cpp_greedy() {
    let mut c = chat(2048, Some("You are a helpful assistant."));
    let mut streamed = String::new();
    let reply = c
        .send("What is the capital of France?", &greedy(64), &mut |t| {
            streamed.push_str(t)
        })
        .unwrap();
    assert_eq!(reply.text, "The capital of France is Paris.");
    assert_eq!(streamed, reply.text);
    assert_eq!(reply.stats.stop, StopReason::EndOfGeneration);
    // "<|im_end|>" ends the turn
    assert_eq!(reply.stats.tokens.last(), Some(&2));
}

#[test]
fn second_turn_reuses_the_cached_prefix_and_matches_a_fresh_session() {
    let mut c = chat(2048, Some("You are a helpful assistant."));
    let first = c
        .send("What is the capital of France?", &greedy(24), &mut |_| {})
        .unwrap();
    let second = c.send("And of Italy?", &greedy(24), &mut |_| {}).unwrap();
    // Everything the first turn left in the cache is reused: its prompt and
    // its answer (all but the end-of-turn token, which was never fed back).
    let cached_after_first = first.stats.prompt_tokens + first.stats.tokens.len() - 1;
    assert_eq!(second.stats.reused_tokens, cached_after_first);
    assert!(second.stats.prompt_tokens > cached_after_first);

    // A fresh session over the same history must answer identically.
    let mut fresh = chat(2048, None);
    let history = c.messages()[..c.messages().len() - 1].to_vec();
    let again = fresh.answer(&history, &greedy(24), &mut |_| {}).unwrap();
    assert_eq!(again.stats.reused_tokens, 0);
    assert_eq!(again.stats.tokens, second.stats.tokens);
    assert_eq!(again.text, second.text);
}

#[test]
fn prompt_past_the_context_is_a_typed_error_and_loses_nothing() {
    let mut c = chat(96, Some("You are a helpful assistant."));
    let ok = c
        .send("What is the capital of France?", &greedy(16), &mut |_| {})
        .unwrap();
    let history = c.messages().to_vec();
    let long = "Tell me everything about the history of Europe. ".repeat(20);
    match c.send(&long, &greedy(16), &mut |_| panic!("no text on overflow")) {
        Err(Error::ContextOverflow {
            prompt_tokens,
            context,
            ..
        }) => {
            assert!(prompt_tokens > context);
            assert_eq!(context, 96);
        }
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    // The history is untouched and the next turn still works, as in a fresh chat.
    assert_eq!(c.messages(), history.as_slice());
    let mut follow = history.clone();
    follow.push(sotto_models::chat::ChatMessage {
        role: "user".into(),
        content: "Thanks!".into(),
    });
    let after = c.answer(&follow, &greedy(8), &mut |_| {}).unwrap();
    let fresh = chat(96, None)
        .answer(&follow, &greedy(8), &mut |_| {})
        .unwrap();
    assert_eq!(after.stats.tokens, fresh.stats.tokens);
    assert!(!ok.text.is_empty());
}

#[test]
fn generation_is_cut_short_at_the_context_end() {
    let mut s = session(40);
    let prompt = model()
        .tokenizer
        .encode(
            "<|im_start|>user\nCount from one to one hundred.<|im_end|>\n<|im_start|>assistant\n",
            true,
        )
        .unwrap();
    let stats = s.generate(&prompt, &greedy(500), &mut |_| {}).unwrap();
    assert!(
        matches!(
            stats.stop,
            StopReason::ContextFull | StopReason::EndOfGeneration
        ),
        "{:?}",
        stats.stop
    );
    assert!(s.cached_tokens().len() <= 40);
}

#[test]
fn cancellation_from_another_thread_stops_and_keeps_the_session_usable() {
    let mut c = chat(2048, Some("You are a helpful assistant."));
    let cancel = CancelToken::new();
    let mut opts = greedy(400);
    opts.cancel = Some(cancel.clone());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let canceller = std::thread::spawn(move || {
        // cancel once the first piece of text has been streamed
        rx.recv().unwrap();
        cancel.cancel();
    });
    let mut pieces = 0;
    let res = c.send("Write a long story about a dragon.", &opts, &mut |_| {
        pieces += 1;
        if pieces == 1 {
            tx.send(()).unwrap();
        }
    });
    canceller.join().unwrap();
    match res {
        Err(Error::Cancelled { generated }) => assert!((1..400).contains(&generated)),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert_eq!(c.messages().len(), 1, "a cancelled turn is not committed");

    let after = c
        .send("What is the capital of France?", &greedy(16), &mut |_| {})
        .unwrap();
    assert_eq!(after.text, "The capital of France is Paris.");
}

#[test]
fn streamed_pieces_are_whole_utf8_and_add_up_to_the_answer() {
    let mut c = chat(2048, None);
    let mut pieces = Vec::new();
    let reply = c
        .send("用中文介绍一下北京。", &greedy(48), &mut |t| {
            pieces.push(t.to_string())
        })
        .unwrap();
    assert!(!pieces.is_empty());
    assert_eq!(pieces.concat(), reply.text);
    // the decoded token bytes (without the end token) are exactly the text
    let tok = &model().tokenizer;
    let mut bytes = Vec::new();
    for &t in &reply.stats.tokens {
        if !tok.is_end_of_generation(t) {
            bytes.extend(tok.token_bytes(t).unwrap());
        }
    }
    assert_eq!(String::from_utf8_lossy(&bytes), reply.text);
    assert!(
        reply.text.chars().any(|ch| ch as u32 > 0x2E80),
        "expected CJK text: {}",
        reply.text
    );
}

#[test]
fn stop_strings_end_the_answer_before_them() {
    let mut c = chat(2048, Some("You are a helpful assistant."));
    let mut opts = greedy(64);
    opts.stop = vec!["Paris".into()];
    let reply = c
        .send("What is the capital of France?", &opts, &mut |_| {})
        .unwrap();
    assert_eq!(reply.stats.stop, StopReason::StopString);
    assert_eq!(reply.text, "The capital of France is ");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut opts = greedy(24);
    opts.sampler = SamplerConfig {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed: 7,
        ..SamplerConfig::default()
    };
    let a = chat(2048, None)
        .send("Tell me a joke.", &opts, &mut |_| {})
        .unwrap();
    let b = chat(2048, None)
        .send("Tell me a joke.", &opts, &mut |_| {})
        .unwrap();
    assert_eq!(a.stats.tokens, b.stats.tokens);
    opts.sampler.seed = 8;
    let c = chat(2048, None)
        .send("Tell me a joke.", &opts, &mut |_| {})
        .unwrap();
    assert_ne!(
        a.stats.tokens, c.stats.tokens,
        "a different seed should change a 24-token sample"
    );
}
