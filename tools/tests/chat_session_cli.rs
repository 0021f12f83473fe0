//! `sotto chat --session FILE --session-key KEY` end to end: the first run
//! saves the conversation on exit, the second resumes it without
//! prefilling the history again and answers as one run holding both turns
//! does; the wrong key is refused and the file left as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use sotto_tests::{default_model_path, text};

fn sotto(args: &[&OsStr], stdin: &str) -> Output {
    sotto_tests::run_with_stdin(env!("CARGO_BIN_EXE_sotto"), args, stdin)
}

fn chat(session: &Path, key: &Path, stdin: &str) -> Output {
    let model = default_model_path();
    let args: Vec<&OsStr> = vec![
        "chat".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--temperature".as_ref(),
        "0".as_ref(),
        "--max-tokens".as_ref(),
        "16".as_ref(),
        "--session".as_ref(),
        session.as_os_str(),
        "--session-key".as_ref(),
        key.as_os_str(),
    ];
    sotto(&args, stdin)
}

/// `(prompt tokens, reused)` of each turn's statistics line.
fn turn_stats(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        // The interactive prompt "> " may precede the line.
        .filter_map(|l| l.split_once("sotto: prompt ").map(|(_, rest)| rest))
        .map(|l| {
            let mut words = l.split_whitespace();
            let prompt = words.next().unwrap().parse().unwrap();
            let reused = words
                .nth(1)
                .unwrap()
                .trim_start_matches('(')
                .parse()
                .unwrap();
            (prompt, reused)
        })
        .collect()
}

#[test]
fn a_chat_saved_on_exit_resumes_without_prefilling_again() {
    let dir = std::env::temp_dir().join(format!("sotto-chat-session-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (session, key) = (dir.join("chat.session"), dir.join("key"));
    std::fs::write(&key, [0x33u8; 32]).unwrap();

    let first = chat(&session, &key, "Name three fruits.\n");
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(session.is_file());
    let second = chat(&session, &key, "And three vegetables?\n");
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stderr = text(&second.stderr);
    assert!(stderr.contains("sotto: resumed"), "{stderr}");
    let first_stats = turn_stats(&text(&first.stderr));
    let stats = turn_stats(&stderr);
    assert_eq!((first_stats.len(), stats.len()), (1, 1), "{stderr}");
    // Everything the first run cached is reused: its prompt and answer.
    assert!(stats[0].1 >= first_stats[0].0, "{stderr}");
    assert!(stats[0].0 - stats[0].1 < 20, "{stderr}");

    // One run holding both turns answers the second the same way.
    let both = dir.join("both.session");
    let control = chat(&both, &key, "Name three fruits.\nAnd three vegetables?\n");
    assert!(control.status.success(), "{}", text(&control.stderr));
    let answers = |o: &Output| {
        text(&o.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(answers(&second).last(), answers(&control).last());

    // The wrong key: refused, typed, and the file kept.
    let before = std::fs::read(&session).unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, [0x44u8; 32]).unwrap();
    let refused = chat(&session, &wrong, "Hello?\n");
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("sealed under another key"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(std::fs::read(&session).unwrap(), before);
    let short = dir.join("short");
    std::fs::write(&short, [0u8; 31]).unwrap();
    let refused = chat(&session, &short, "Hello?\n");
    assert!(
        text(&refused.stderr).contains("exactly 32"),
        "{}",
        text(&refused.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
