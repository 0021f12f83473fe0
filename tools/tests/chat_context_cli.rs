//! `sotto chat --context-policy`: a conversation longer than a small
//! context keeps answering under `shift` and `trim-turns`, and under
//! `error` the turn that does not fit is refused with the typed overflow
//! (the chat goes on).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sotto_tests::{default_model_path, text};

/// Twelve short turns at context 128, greedy, 8 tokens per answer.
fn chat(policy: &str) -> (usize, String) {
    let model = default_model_path();
    let turns: String = (0..12)
        .map(|i| format!("Turn {i}: name one colour.\n"))
        .collect();
    let args = [
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--context",
        "128",
        "--context-policy",
        policy,
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let out = sotto_tests::run_with_stdin(env!("CARGO_BIN_EXE_sotto"), &args, &turns);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{policy}: {stderr}");
    let answered = stderr.matches(" reused) at ").count();
    (answered, stderr)
}

#[test]
fn chat_context_policies() {
    let (answered, stderr) = chat("shift");
    assert_eq!(answered, 12, "shift: {stderr}");
    assert!(stderr.contains("context shifted"), "shift: {stderr}");
    let (answered, stderr) = chat("trim-turns");
    assert_eq!(answered, 12, "trim-turns: {stderr}");
    let (answered, stderr) = chat("error");
    assert!(
        answered < 12,
        "error: every turn fit in 128 tokens: {stderr}"
    );
    assert!(
        stderr.contains("does not fit the context"),
        "error: {stderr}"
    );
}
