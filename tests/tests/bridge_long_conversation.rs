//! Conversations never die: 300 turns with the real default model at a
//! context of 256 tokens, through an AssistantDevice (encrypted both
//! ways), every turn answered; a message longer than the whole context
//! gets a short encrypted refusal and the conversation goes on.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_bridge::{AssistantDevice, DeviceOptions, Refusal, Role};
use sotto_engine::{AssistantConfig, BackendChoice, EngineAssistant, LoadedModel, SamplerConfig};
use sotto_tests::bridge_user::BridgeUser;
use sotto_tests::default_model_path;

const TURNS: usize = 300;
const CONTEXT: usize = 256;

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Name a fruit that is yellow.",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Give me a word that rhymes with cat.",
    "What do bees make?",
    "Which planet is closest to the sun?",
    "What is two plus three?",
];

#[test]
fn a_300_turn_conversation_at_a_small_context_answers_every_turn() {
    let model =
        Arc::new(LoadedModel::open(default_model_path(), BackendChoice::default()).unwrap());
    let config = AssistantConfig {
        context: CONTEXT,
        max_tokens: 16,
        sampler: SamplerConfig::greedy(),
        ..AssistantConfig::default()
    };
    let mut assistant = EngineAssistant::new(model.clone(), config);
    let mut rng = ChaCha20Rng::seed_from_u64(300);
    let mut device = AssistantDevice::in_memory(DeviceOptions::default(), &mut rng).unwrap();
    let bundle = device.prekey_bundle(SystemTime::now(), &mut rng).unwrap();
    let mut user = BridgeUser::join("patient", 301, &bundle);
    let sender = user.address.clone();

    let mut times = Vec::with_capacity(TURNS);
    let started = Instant::now();
    for turn in 0..TURNS {
        let text = format!(
            "{} (question {})",
            QUESTIONS[turn % QUESTIONS.len()],
            turn + 1
        );
        let envelope = user.encrypt(&text);
        let t = Instant::now();
        let replies = device
            .handle(&sender, &envelope, &mut assistant, &mut rng)
            .unwrap_or_else(|e| panic!("turn {}: {e}", turn + 1));
        times.push(t.elapsed());
        assert_eq!(replies.len(), 1, "turn {}", turn + 1);
        assert_eq!(replies[0].refusal, None, "turn {} refused", turn + 1);
        let answer = user.open(&replies[0]);
        assert!(
            !answer.trim().is_empty(),
            "turn {} got an empty answer",
            turn + 1
        );
        device.ack(&replies[0].turn).unwrap();
    }
    let total = started.elapsed();

    // The conversation really outgrew the context many times over.
    let history = device.history(&sender).unwrap();
    assert_eq!(history.len(), 2 * TURNS);
    let history_tokens: usize = history
        .iter()
        .map(|t| model.model().tokenizer.encode(&t.text, true).unwrap().len())
        .sum();
    assert!(
        history_tokens > 10 * CONTEXT,
        "{history_tokens} tokens of history"
    );
    assert!(history.iter().all(|t| !t.text.is_empty()));
    assert_eq!(
        history.iter().filter(|t| t.role == Role::User).count(),
        TURNS
    );

    // One message longer than the whole context: a typed refusal, encrypted.
    let long = "lorem ipsum dolor sit amet ".repeat(150);
    let envelope = user.encrypt(&long);
    let replies = device
        .handle(&sender, &envelope, &mut assistant, &mut rng)
        .unwrap();
    let refusal = replies[0].refusal;
    assert!(
        matches!(refusal, Some(Refusal::TooManyTokens { tokens, available }) if tokens > available),
        "{refusal:?}"
    );
    let text = user.open(&replies[0]);
    assert!(text.starts_with("Your message is too long"), "{text}");
    device.ack(&replies[0].turn).unwrap();
    // And the conversation goes on.
    let envelope = user.encrypt("What is the capital of France?");
    let replies = device
        .handle(&sender, &envelope, &mut assistant, &mut rng)
        .unwrap();
    assert_eq!(replies[0].refusal, None);
    assert!(!user.open(&replies[0]).trim().is_empty());

    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{TURNS} turns at context {CONTEXT}: {:.1} s total, per turn median {:.0} ms, p90 {:.0} ms, max {:.0} ms; {history_tokens} tokens of history",
        total.as_secs_f64(),
        ms(times[TURNS / 2]),
        ms(times[TURNS * 9 / 10]),
        ms(times[TURNS - 1]),
    );
}
