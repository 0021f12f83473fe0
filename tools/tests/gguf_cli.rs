//! The GGUF commands end to end on real files: `sotto inspect` on the real
//! Gemma-3-270M file and on a file whose tensors have a type Sotto has no
//! kernel for (TQ1_0, written by gguf-py, llama.cpp's own writer), `sotto
//! complete` on Gemma-3-270M (a base model) against llama.cpp's greedy
//! continuation, and `sotto chat` refusing it for want of a chat template;
//! `inspect` and `chat` on a Hugging Face folder of the default model.
//!
//! Gemma-3-270M comes from `sotto fetch gemma3-270m` (scripts/test.sh runs
//! it; `$SOTTO_GEMMA3_270M`), llama.cpp from scripts/llama-deps.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use sotto_tests::parity::{
    cache_dir, generate_reference_within, llama_python, repo_root, Criteria, RefBudget,
};
use sotto_tests::tiny_arch::{gemma3_270m_path, tiny_file_with};
use sotto_tests::{data_dir, text};

/// Runs `sotto ARGS` with `stdin` on its standard input.
fn sotto(args: &[&std::ffi::OsStr], stdin: &str) -> Output {
    sotto_tests::run_with_stdin(env!("CARGO_BIN_EXE_sotto"), args, stdin)
}

/// The names of `file`'s tensors whose ggml type is `ty`, as gguf-py (not
/// our reader) sees them.
fn tensors_of_type(file: &Path, ty: &str) -> Vec<String> {
    let out = Command::new(llama_python())
        .arg("-c")
        .arg(
            "import sys, gguf\n\
             r = gguf.GGUFReader(sys.argv[1])\n\
             print('\\n'.join(t.name for t in r.tensors if t.tensor_type.name == sys.argv[2]))",
        )
        .arg(file)
        .arg(ty)
        .output()
        .unwrap();
    assert!(out.status.success(), "gguf-py: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn inspect_names_every_tensor_that_cannot_run() {
    let file = tiny_file_with("llama", None, Some("tq1_0"));
    let unsupported = tensors_of_type(&file, "TQ1_0");
    assert!(
        unsupported.len() > 4,
        "the generator wrote too few TQ1_0 tensors: {unsupported:?}"
    );
    let out = sotto(&["inspect".as_ref(), file.as_os_str()], "");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "inspect must show a file it cannot run: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("architecture:  llama"), "{stdout}");
    assert!(stdout.contains("sotto runs it: no"), "{stdout}");
    for name in &unsupported {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{stdout}"));
        // ggml's type names are lower case, gguf-py's upper case.
        assert!(
            line.to_ascii_uppercase().contains(" TQ1_0 ") && line.contains("cannot run"),
            "{line}"
        );
    }
    // Tensor rows are indented; the summary line is not.
    let marked = stdout
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains("cannot run:"))
        .count();
    assert_eq!(marked, unsupported.len(), "{stdout}");
    let summary = format!(
        "tensors sotto cannot run: {} ({} TQ1_0)",
        unsupported.len(),
        unsupported.len()
    );
    assert!(
        stdout
            .to_ascii_uppercase()
            .contains(&summary.to_ascii_uppercase()),
        "no '{summary}' in\n{stdout}"
    );
}

#[test]
fn inspect_shows_gemma3_270m_runs_without_a_template() {
    let file = gemma3_270m_path();
    let out = sotto(&["inspect".as_ref(), file.as_os_str()], "");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in [
        "architecture:  gemma3",
        "sotto runs it: yes",
        "chat template: none in file",
        "sotto complete",
    ] {
        assert!(stdout.contains(want), "no '{want}' in\n{stdout}");
    }
    assert!(!stdout.contains("cannot run"), "{stdout}");
}

/// llama.cpp's text for `ids` of `model` (its own detokenizer).
fn llama_cpp_text(model: &Path, ids: &[u32]) -> String {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = Command::new(llama_python())
        .arg(repo_root().join("tests/scripts/llama_detokenize.py"))
        .arg(model)
        .arg(ids.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama_detokenize.py: {}",
        text(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn complete_on_gemma3_270m_is_llama_cpps_greedy_continuation() {
    let file = gemma3_270m_path();
    let prompts_file = data_dir().join("prompts/complete_cli.json");
    let budget = RefBudget {
        max_new_tokens: 12,
        max_prompts: None,
    };
    let reference = generate_reference_within(
        &file,
        &prompts_file,
        &cache_dir().join("gemma3-270m-complete"),
        budget,
    );
    let near_tie = Criteria::default().near_tie;
    let mut compared = 0;
    for seq in &reference.sequences {
        // Up to llama.cpp's first hesitation: past it another equally valid
        // run (llama.cpp's own alternates included) may take another path.
        let firm = seq
            .greedy_steps
            .iter()
            .position(|s| s.margin < near_tie)
            .unwrap_or(seq.continuation_ids.len());
        let want = llama_cpp_text(&file, &seq.continuation_ids[..firm]);
        let max_tokens = firm.to_string();
        let prompt = seq
            .text
            .as_deref()
            .unwrap_or_else(|| panic!("{}: not raw text", seq.name));
        let out = sotto(
            &[
                "complete".as_ref(),
                "--model".as_ref(),
                file.as_os_str(),
                "--temperature".as_ref(),
                "0".as_ref(),
                "--max-tokens".as_ref(),
                max_tokens.as_ref(),
                "--quiet".as_ref(),
                "-".as_ref(),
            ],
            prompt,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let ours = text(&out.stdout);
        let ours = ours.strip_suffix('\n').unwrap_or(&ours);
        eprintln!(
            "{}: {firm} tokens: ours {ours:?}, llama.cpp {want:?}",
            seq.name
        );
        assert_eq!(
            ours, want,
            "{}: sotto complete differs from llama.cpp's greedy continuation",
            seq.name
        );
        compared += firm;
    }
    assert!(
        compared >= 10,
        "only {compared} tokens before llama.cpp's near-ties: choose firmer prompts in {}",
        prompts_file.display()
    );
}

#[test]
fn chat_on_gemma3_270m_says_it_has_no_template() {
    let file = gemma3_270m_path();
    let out = sotto(
        &[
            "chat".as_ref(),
            "--model".as_ref(),
            file.as_os_str(),
            "hello".as_ref(),
        ],
        "",
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "chat answered on a base model");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    for want in ["has no chat template", "sotto complete --model", "--chatml"] {
        assert!(stderr.contains(want), "no '{want}' in {stderr}");
    }
}

/// A Hugging Face folder of the default model (written by the independent
/// fixture script) through the CLI: `inspect` shows what it maps to, and
/// `chat` gives the GGUF's greedy answer to the France question.
#[test]
fn chat_and_inspect_on_a_hugging_face_folder() {
    use sotto_tests::hf::{fixture_folder, FolderDtype};
    let dir = fixture_folder(FolderDtype::F16, 2);
    let out = sotto(&["inspect".as_ref(), dir.as_os_str()], "");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in [
        "format:        Hugging Face folder",
        "architecture:  llama",
        "rope pairs:    NeoX",
        "sotto runs it: yes",
        "tensors (272):",
    ] {
        assert!(stdout.contains(want), "no '{want}' in\n{stdout}");
    }

    let answer = |model: &Path| {
        let out = sotto(
            &[
                "chat".as_ref(),
                "--model".as_ref(),
                model.as_os_str(),
                "--temperature".as_ref(),
                "0".as_ref(),
                "--system".as_ref(),
                "You are a helpful assistant.".as_ref(),
                "What is the capital of France?".as_ref(),
            ],
            "",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let from_folder = answer(&dir);
    assert_eq!(from_folder, "The capital of France is Paris.");
    assert_eq!(from_folder, answer(&sotto_tests::default_model_path()));
}
