//! Constrained decoding on the default model: sampled answers under a
//! non-trivial JSON Schema all parse and validate (checked by the
//! `jsonschema` crate, not by the automaton that produced them), a Lark
//! grammar's outputs pass a check written here by hand, bad schemas and
//! grammars are typed errors before any token, and speculative decoding
//! keeps the constraint.
//!
//! Wall time: 100 generations of at most 160 tokens on SmolLM2-135M share
//! one prompt prefix (prefilled once); about a minute on two cores.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sotto_engine::speculative::PromptLookup;
use sotto_engine::{Constraint, Error, GenerateOptions, Session, StopReason};
use sotto_models::ChatMessage;
use sotto_tests::{default_model, default_session};

/// Nested object, enum, arrays with min/max items, integer and number
/// ranges, a pattern, required and optional fields
/// (tests/data/constrained/person.schema.json, which `sotto bench
/// --json-schema` also takes).
fn person_schema() -> Value {
    sotto_tests::read_json("constrained/person.schema.json")
}

fn chat_prompt(user: &str) -> Vec<u32> {
    let m = default_model();
    let text = m
        .template
        .render(
            &[
                ChatMessage::system("You answer with one JSON object."),
                ChatMessage::user(user),
            ],
            true,
        )
        .unwrap();
    m.tokenizer.encode(&text, true).unwrap()
}

fn sampled(seed: u64, max_tokens: usize, constraint: Constraint) -> GenerateOptions {
    GenerateOptions {
        constraint: Some(constraint),
        ..sotto_tests::sampled(seed, max_tokens)
    }
}

fn generate(s: &mut Session, prompt: &[u32], opts: &GenerateOptions) -> (String, StopReason) {
    let mut text = String::new();
    let stats = s
        .generate(prompt, opts, &mut |p| text.push_str(p))
        .expect("generate");
    assert_eq!(s.cache().len(), s.cached_tokens().len());
    (text, stats.stop)
}

#[test]
fn hundred_sampled_answers_validate_against_the_schema() {
    const RUNS: u64 = 100;
    const MAX_TOKENS: usize = 160;
    let schema = person_schema();
    let validator = jsonschema::validator_for(&schema).expect("the test schema is valid");
    let constraint = Constraint::JsonSchema(schema.clone());
    let prompt =
        chat_prompt("Describe a user of our site as JSON: name, age, role, tags, address.");
    let mut session = default_session(1024);
    let (mut tokens, mut masks) = (0usize, 0usize);
    let (mut mask_time, mut compile_time) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let mut optional_seen = 0;
    let t0 = std::time::Instant::now();
    for seed in 0..RUNS {
        let opts = sampled(seed, MAX_TOKENS, constraint.clone());
        let mut text = String::new();
        let stats = session
            .generate(&prompt, &opts, &mut |p| text.push_str(p))
            .expect("generate");
        assert!(
            matches!(
                stats.stop,
                StopReason::GrammarComplete | StopReason::EndOfGeneration
            ),
            "seed {seed}: stopped by {:?} before the JSON was complete: {text}",
            stats.stop
        );
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("seed {seed}: output does not parse ({e}): {text}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "seed {seed}: {text} does not validate: {errors:?}"
        );
        if value.get("score").is_some() || value.get("active").is_some() {
            optional_seen += 1;
        }
        tokens += stats.generated_tokens;
        masks += stats.constraint_masks;
        mask_time += stats.constraint_time;
        compile_time += stats.constraint_compile_time;
    }
    eprintln!(
        "{RUNS} answers in {:.1} s, {tokens} tokens, {masks} masks, automaton {:.3} ms per token, \
         compile {:.1} ms per answer, {optional_seen} with an optional field",
        t0.elapsed().as_secs_f64(),
        mask_time.as_secs_f64() * 1e3 / masks.max(1) as f64,
        compile_time.as_secs_f64() * 1e3 / RUNS as f64
    );
    assert_eq!(masks, tokens, "one mask per generated token");
}

/// `item (", " item)*` where an item is `key=value`, key a lower-case word
/// of 1–8 letters, value `yes`, `no` or an integer 0–999 without leading
/// zeros; ends with a period.
const SETTINGS_GRAMMAR: &str = r#"
start: item (", " item)* "."
item: KEY "=" value
value: "yes" | "no" | NUMBER
KEY: /[a-z]{1,8}/
NUMBER: /0|[1-9][0-9]{0,2}/
"#;

/// The grammar above, checked by hand (no automaton).
fn is_settings_line(text: &str) -> bool {
    let Some(body) = text.strip_suffix('.') else {
        return false;
    };
    body.split(", ").all(|item| {
        let Some((key, value)) = item.split_once('=') else {
            return false;
        };
        let key_ok = (1..=8).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_lowercase());
        let number_ok = !value.is_empty()
            && value.len() <= 3
            && value.bytes().all(|b| b.is_ascii_digit())
            && (value == "0" || !value.starts_with('0'));
        key_ok && (value == "yes" || value == "no" || number_ok)
    })
}

/// Whether some continuation makes `text` a settings line: every way a cut
/// line can end (inside a key, after `=`, inside `yes`/`no`/a number,
/// after `,` or `, `, after a value) has one of these completions.
fn is_settings_prefix(text: &str) -> bool {
    const COMPLETIONS: [&str; 8] = [".", "=0.", "0.", "es.", "s.", "o.", " a=0.", "a=0."];
    COMPLETIONS
        .iter()
        .any(|c| is_settings_line(&format!("{text}{c}")))
}

#[test]
fn lark_grammar_outputs_pass_an_independent_check() {
    let constraint = Constraint::grammar_text(SETTINGS_GRAMMAR).unwrap();
    let prompt = chat_prompt("List three settings of a phone as key=value pairs.");
    let mut session = default_session(1024);
    let mut complete = 0;
    for seed in 0..20 {
        let (text, stop) = generate(
            &mut session,
            &prompt,
            &sampled(seed, 48, constraint.clone()),
        );
        match stop {
            StopReason::GrammarComplete | StopReason::EndOfGeneration => {
                complete += 1;
                assert!(is_settings_line(&text), "seed {seed}: {text:?}");
            }
            // Cut by the token bound: still a prefix of a valid line.
            StopReason::MaxTokens => {
                assert!(is_settings_prefix(&text), "seed {seed}: {text:?}");
            }
            other => panic!("seed {seed}: unexpected stop {other:?}"),
        }
    }
    assert!(complete >= 10, "only {complete}/20 lines completed");
    assert!(!is_settings_line("Key=yes."), "the hand check rejects");
    assert!(is_settings_prefix("wifi=ye") && is_settings_prefix("a=1, b"));
    assert!(!is_settings_prefix("wifi=yess") && !is_settings_prefix("toolongkey"));
}

#[test]
fn bad_schemas_and_grammars_are_typed_errors_before_any_token() {
    let prompt = chat_prompt("Say hi.");
    let mut session = default_session(256);
    // A first answer fills the cache; a refused constraint must leave it.
    let _ = generate(&mut session, &prompt, &sotto_tests::greedy(4));
    let cached = session.cached_tokens().to_vec();
    for bad in [
        Constraint::JsonSchema(json!({"type": "no-such-type"})),
        Constraint::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
        Constraint::Lark("start: undefined_rule".into()),
        Constraint::Lark("start: (\"a\"".into()),
    ] {
        let opts = GenerateOptions {
            constraint: Some(bad.clone()),
            ..sotto_tests::greedy(8)
        };
        let mut out = String::new();
        let err = session
            .generate(&prompt, &opts, &mut |p| out.push_str(p))
            .expect_err("an invalid constraint must be refused");
        assert!(
            matches!(err, Error::InvalidConstraint { .. }),
            "{bad:?}: {err}"
        );
        assert!(out.is_empty(), "no text before the refusal");
        assert_eq!(
            session.cached_tokens(),
            &cached[..],
            "the cache is untouched"
        );
    }
}

#[test]
fn prompt_lookup_keeps_the_constraint_and_the_greedy_answer() {
    // A prompt that quotes the JSON the answer should repeat, so drafts
    // are proposed (and some forbidden by the grammar).
    let prompt = chat_prompt(
        "Repeat this exactly: {\"name\": \"Ada\", \"age\": 36, \"role\": \"admin\", \
         \"tags\": [\"math\"], \"address\": {\"city\": \"London\", \"zip\": \"12345\"}}",
    );
    let constraint = Constraint::JsonSchema(person_schema());
    let plain = GenerateOptions {
        constraint: Some(constraint.clone()),
        ..sotto_tests::greedy(120)
    };
    let spec = GenerateOptions {
        prompt_lookup: Some(PromptLookup::default()),
        ..plain.clone()
    };
    let a = default_session(1024)
        .generate(&prompt, &plain, &mut |_| {})
        .unwrap();
    let b = default_session(1024)
        .generate(&prompt, &spec, &mut |_| {})
        .unwrap();
    assert_eq!(
        a.tokens, b.tokens,
        "speculation changed the constrained answer"
    );
    assert_eq!(a.stop, b.stop);
    assert!(b.drafted_tokens > 0, "the prompt should give drafts");
    let text = default_model().tokenizer.decode(&b.tokens, true).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    assert!(jsonschema::is_valid(&person_schema(), &value), "{text}");
    eprintln!(
        "greedy under the schema: {text}; drafts {}/{} accepted",
        b.accepted_tokens, b.drafted_tokens
    );
}
