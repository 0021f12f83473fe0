//! `sotto complete|chat --json-schema FILE` and `--grammar FILE` from the
//! command line: the answer on standard output is the constrained text
//! (parsed here by serde_json, checked by hand), a GBNF grammar is read as
//! llama.cpp's (by its `.gbnf` name or its `::=` rules), and a malformed
//! GBNF grammar or an unsatisfiable schema is refused with a message and a
//! failing status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;

use sotto_tests::parity::cache_dir;
use sotto_tests::{default_model_path, text};

fn sotto(args: &[&OsStr]) -> Output {
    sotto_tests::run_with_stdin(env!("CARGO_BIN_EXE_sotto"), args, "")
}

fn file(name: &str, contents: &str) -> PathBuf {
    let dir = cache_dir().join("constrained_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn json_schema_and_grammar_flags_constrain_the_answer() {
    let model = default_model_path();
    let schema = file(
        "city.schema.json",
        r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
            "country": {"enum": ["France", "Germany", "Italy"]}},
            "required": ["city", "country"], "additionalProperties": false}"#,
    );
    let out = sotto(&[
        "chat".as_ref(),
        "-m".as_ref(),
        model.as_os_str(),
        "--json-schema".as_ref(),
        schema.as_os_str(),
        "--max-tokens".as_ref(),
        "48".as_ref(),
        "Tell me about Paris.".as_ref(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_str(text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert!(answer["city"].is_string(), "{answer}");
    assert!(
        ["France", "Germany", "Italy"].contains(&answer["country"].as_str().unwrap()),
        "{answer}"
    );
    assert!(
        text(&out.stderr).contains("stop: GrammarComplete"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("ms/token"),
        "{}",
        text(&out.stderr)
    );

    let grammar = file("yes_no.lark", "start: (\"yes\" | \"no\") \".\"\n");
    let out = sotto(&[
        "complete".as_ref(),
        "-m".as_ref(),
        model.as_os_str(),
        "--grammar".as_ref(),
        grammar.as_os_str(),
        "Is the sky blue? Answer:".as_ref(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(matches!(answer.trim(), "yes." | "no."), "{answer:?}");
}

#[test]
fn gbnf_grammars_constrain_the_answer_by_name_or_by_content() {
    let model = default_model_path();
    let grammar = "# a verdict\nroot ::= verdict \".\"\nverdict ::= \"yes\" | \"no\"\n";
    for name in ["verdict.gbnf", "verdict.txt"] {
        let path = file(name, grammar);
        let out = sotto(&[
            "complete".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            "--grammar".as_ref(),
            path.as_os_str(),
            "Is the sky blue? Answer:".as_ref(),
        ]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let answer = text(&out.stdout);
        assert!(
            matches!(answer.trim(), "yes." | "no."),
            "{name}: {answer:?}"
        );
    }
}

#[test]
fn malformed_gbnf_and_unsatisfiable_schemas_are_refused() {
    let model = default_model_path();
    let gbnf = file("bad.gbnf", "root ::= answer\nanswer ::= \"yes\" | [a-\n");
    let bad_schema = file(
        "bad.schema.json",
        r#"{"type": "integer", "minimum": 5, "maximum": 1}"#,
    );
    for (flag, path, says) in [
        ("--grammar", &gbnf, "GBNF grammar, line 2"),
        ("--json-schema", &bad_schema, "invalid JSON Schema"),
    ] {
        let out = sotto(&[
            "chat".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            flag.as_ref(),
            path.as_os_str(),
            "hi".as_ref(),
        ]);
        assert!(!out.status.success(), "{flag} accepted");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
        assert!(text(&out.stdout).trim().is_empty(), "{}", text(&out.stdout));
    }
}
