//! GBNF grammars (llama.cpp's syntax) against llama.cpp's own grammar
//! sampler on the default model, and the translation's language against
//! hand-written Lark equivalents.
//!
//! Each grammar here (written for this test) has a Lark twin written by
//! hand and compiled by llguidance's own Lark front end, not by Sotto's GBNF
//! translation: every output either engine produces must be a complete
//! match of the twin (or, cut by the token bound, a prefix of one), and
//! strings chosen around the features (and around the traps of a lexer in
//! front of a parser) must be judged alike by the translation and the twin.
//! Greedy constrained outputs must equal llama.cpp's
//! (`tests/scripts/llama_grammar.py`: `llama_sampler_init_grammar`, the
//! sampler `LlamaGrammar.from_string` gives llama-cpp-python), or diverge
//! only where llama.cpp's masked top two are a near tie (the parity rule of
//! `sotto_tests::parity`).
//!
//! Wall time: llama.cpp's 5 greedy runs (cached after the first run) and
//! ours, under 60 s in the debug profile on two cores.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sotto_engine::{Constraint, Error, StopReason, TextMatch};
use sotto_models::ChatMessage;
use sotto_tests::parity::{cache_dir, run_llama_cases_script, Criteria};
use sotto_tests::{default_model, default_model_path, default_session};

struct Case {
    name: &'static str,
    gbnf: &'static str,
    /// The same language in Lark, written by hand.
    lark: &'static str,
    prompt: &'static str,
    max_tokens: usize,
}

const CASES: &[Case] = &[
    Case {
        // Alternation, groups, rule references, classes with ranges, `+`
        // and `{m,n}`: regular, so one terminal.
        name: "verdict",
        gbnf: r#"# a verdict and a short reason
root    ::= verdict ", because " reason "."
verdict ::= "Yes" | "No"
reason  ::= [a-z]+ (" " [a-z]+){2,10}
"#,
        lark: r#"start: /(Yes|No), because [a-z]+( [a-z]+){2,10}\./"#,
        prompt: "Is the sea salty? Answer yes or no and say why.",
        max_tokens: 48,
    },
    Case {
        // Rule names with dashes, `{m}`, `\n`.
        name: "date",
        gbnf: r#"root ::= "Date: " year "-" month-num "-" day-num "\n"
year ::= [12] [0-9]{3}
month-num ::= "0" [1-9] | "1" [0-2]
day-num ::= "0" [1-9] | [12] [0-9] | "3" [01]   # no month check
"#,
        lark: r#"start: /Date: [12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])\n/"#,
        prompt: "When did the first person walk on the Moon? Give the date.",
        max_tokens: 24,
    },
    Case {
        // Recursion, `?` and `*`, a negated class with a range and escapes
        // (`\"`, `\\`, `\x1f`), nested groups spanning lines.
        name: "nested-list",
        gbnf: r#"root   ::= list
list   ::= "[" (
             value (", " value)*
           )? "]"
value  ::= list | number | string
number ::= "-"? [1-9] [0-9]{0,3} | "0"
string ::= "\"" ( [^"\\<\x00-\x1f] | "\\" ["\\n] ){0,20} "\""
"#,
        lark: r#"start: list
list: "[" (value (", " value)*)? "]"
value: list | NUMBER | STRING
NUMBER: /-?[1-9][0-9]{0,3}|0/
STRING: /"([^"\\<\x00-\x1f]|\\["\\n]){0,20}"/
"#,
        prompt: "Write a JSON list of three fruits and a list of two numbers inside it.",
        max_tokens: 64,
    },
    Case {
        // `.`, `{m,}`, `\t`, `\xNN` and `\uNNNN` escapes.
        name: "initials",
        gbnf: "root ::= \"Initials:\\x20\" [A-Z] \".\" [A-Z] \".\\t\" .{1,3} \"\\u2192 \" [a-z]{2,} \"\\n\"\n",
        lark: "start: /Initials: [A-Z]\\.[A-Z]\\.\\t(?s:.){1,3}\u{2192} [a-z]{2,}\\n/",
        prompt: "What are the initials of Albert Einstein?",
        max_tokens: 32,
    },
    Case {
        // Recursion through parentheses, repeated groups, a comment after
        // a rule.
        name: "arithmetic",
        gbnf: r#"root ::= expr " = " [0-9]{1,4}
expr ::= term (" " [-+*] " " term)*  # left to right
term ::= [0-9]{1,3} | "(" expr ")"
"#,
        lark: r#"start: expr " = " /[0-9]{1,4}/
expr: term (OP term)*
OP: / [-+*] /
term: /[0-9]{1,3}/ | "(" expr ")"
"#,
        prompt: "Write an arithmetic expression with three numbers and its value.",
        max_tokens: 40,
    },
];

fn chat_prompt(user: &str) -> Vec<u32> {
    let m = default_model();
    let text = m
        .template
        .render(
            &[
                ChatMessage::system("You answer in the exact format asked."),
                ChatMessage::user(user),
            ],
            true,
        )
        .unwrap();
    m.tokenizer.encode(&text, true).unwrap()
}

/// llama.cpp's greedy runs under each case's grammar.
fn llama_runs() -> Vec<Value> {
    let dir = cache_dir().join("gbnf");
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<Value> = CASES
        .iter()
        .map(|c| {
            json!({"name": c.name, "grammar": c.gbnf, "prompt_ids": chat_prompt(c.prompt),
                   "max_tokens": c.max_tokens})
        })
        .collect();
    let cases_path = dir.join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec_pretty(&cases).unwrap()).unwrap();
    let out = dir.join("llama.json");
    run_llama_cases_script("llama_grammar.py", &default_model_path(), &cases_path, &out);
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn check(c: &Constraint, text: &str) -> TextMatch {
    c.check_text(text)
        .unwrap_or_else(|e| panic!("checking {text:?}: {e}"))
}

#[test]
fn greedy_outputs_match_llama_cpp_grammar_sampler() {
    let model = default_model();
    let near_tie = Criteria::default().near_tie;
    let runs = llama_runs();
    let mut session = default_session(1024);
    let mut identical = 0;
    for (case, run) in CASES.iter().zip(&runs) {
        assert_eq!(run["name"], case.name);
        let twin = Constraint::Lark(case.lark.into());
        let grammar = Constraint::gbnf_text(case.gbnf).unwrap();
        let prompt = chat_prompt(case.prompt);
        let opts = sotto_engine::GenerateOptions {
            constraint: Some(grammar),
            ..sotto_tests::greedy(case.max_tokens)
        };
        let stats = session.generate(&prompt, &opts, &mut |_| {}).unwrap();
        let is_end = |t: &u32| model.tokenizer.is_end_of_generation(*t);
        let ours: Vec<u32> = stats
            .tokens
            .iter()
            .copied()
            .filter(|t| !is_end(t))
            .collect();
        let theirs: Vec<u32> = run["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .filter(|t| !is_end(t))
            .collect();
        let our_text = model.tokenizer.decode(&ours, true).unwrap();
        let their_text = run["text"].as_str().unwrap();
        eprintln!(
            "{}: ours {our_text:?} ({:?}; automaton {:.3} ms per token, compile {:.1} ms), \
             llama.cpp {their_text:?} ({})",
            case.name,
            stats.stop,
            stats.constraint_time.as_secs_f64() * 1e3 / stats.constraint_masks.max(1) as f64,
            stats.constraint_compile_time.as_secs_f64() * 1e3,
            run["stopped"]
        );

        // Both outputs are in the language of the hand-written twin.
        let ours_complete = matches!(
            stats.stop,
            StopReason::GrammarComplete | StopReason::EndOfGeneration
        );
        let want = |complete: bool| {
            if complete {
                TextMatch::Complete
            } else {
                TextMatch::Prefix
            }
        };
        assert_eq!(
            check(&twin, &our_text),
            want(ours_complete),
            "{}: {our_text:?}",
            case.name
        );
        assert_eq!(
            check(&twin, their_text),
            want(run["stopped"] == "eog"),
            "{}: llama.cpp's {their_text:?}",
            case.name
        );

        // Greedy parity on the text, up to a near tie of llama.cpp's masked
        // logits. Texts, not tokens: where the grammar forces text, the
        // automaton allows only its canonical tokenization (llguidance's
        // forcing), while llama.cpp's sampler lets the model pick any
        // tokens that spell it, so equal texts may differ in tokens.
        let ours_bytes = our_text.as_bytes();
        let their_bytes = their_text.as_bytes();
        if ours_bytes == their_bytes {
            identical += 1;
            assert_eq!(
                ours_complete,
                run["stopped"] == "eog",
                "{}: same text, different ends",
                case.name
            );
            continue;
        }
        let first_diff = ours_bytes
            .iter()
            .zip(their_bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(ours_bytes.len().min(their_bytes.len()));
        // llama.cpp's step that wrote the first differing byte (or picked
        // its end-of-generation token there).
        let mut end = 0;
        let mut step = theirs.len();
        for (i, &t) in theirs.iter().enumerate() {
            end += model.tokenizer.token_bytes(t).unwrap().len();
            if end > first_diff {
                step = i;
                break;
            }
        }
        let margin = run["margins"][step].as_f64();
        assert!(
            margin.is_some_and(|m| (m as f32) < near_tie),
            "{}: diverged at byte {first_diff} (llama.cpp's step {step}) where llama.cpp's \
             margin is {margin:?}: ours {our_text:?}, llama.cpp {their_text:?}",
            case.name
        );
        eprintln!(
            "{}: diverged at llama.cpp's step {step}, a near tie (margin {margin:?})",
            case.name
        );
    }
    eprintln!(
        "{identical}/{} outputs identical to llama.cpp's",
        CASES.len()
    );
    assert!(identical >= 2, "only {identical}/{} identical", CASES.len());
}

#[test]
fn translations_judge_strings_as_the_hand_written_twins_do() {
    let strings: &[(&str, &[&str])] = &[
        (
            "verdict",
            &[
                "Yes, because salt is dissolved.",
                "No, because it is not.",
                "Yes, because two words.",
                "Yes, because one.",
                "Yes, because a b c d e f g h i j k l.",
                "Maybe, because salt is here.",
                "Yes, because Salt is here.",
                "Yes, because salt is here",
            ],
        ),
        (
            "date",
            &[
                "Date: 1969-07-20\n",
                "Date: 2024-12-31\n",
                "Date: 1969-13-20\n",
                "Date: 1969-07-32\n",
                "Date: 969-07-20\n",
                "Date: 1969-07-20",
            ],
        ),
        (
            "nested-list",
            &[
                "[]",
                "[[], [[]]]",
                "[\"apple\", \"pear\", [1, -20, 0]]",
                "[\"a\\\"b\\\\c\\n\"]",
                "[\"a\\tb\"]",
                "[\"<tag>\"]",
                "[01]",
                "[-0]",
                "[12345]",
                "[1,2]",
                "[\"\u{e9}t\u{e9}\"]",
            ],
        ),
        (
            "initials",
            &[
                "Initials: A.E.\t\u{2192} einstein\n",
                "Initials: A.E.\tab\n\u{2192} ok\n",
                "Initials: A.E.\t\u{2192} x\n",
                "Initials: A.E.\tabcd\u{2192} ok\n",
                "Initials: A.E.\t\u{e9}\u{2192} ok\n",
                "Initials: a.E.\t.\u{2192} ok\n",
            ],
        ),
        (
            "arithmetic",
            &[
                "1 + 2 = 3",
                "(1 + 2) * 3 = 9",
                "((12 - 3)) * (4 + (5 * 6)) = 306",
                "1234 + 1 = 1235",
                "1 + = 1",
                "(1 + 2 = 3",
                "1 + 2 = 12345",
            ],
        ),
    ];
    let (mut complete, mut rejected) = (0, 0);
    for (name, samples) in strings {
        let case = CASES.iter().find(|c| c.name == *name).unwrap();
        let gbnf = Constraint::gbnf_text(case.gbnf).unwrap();
        let twin = Constraint::Lark(case.lark.into());
        for s in *samples {
            let want = check(&twin, s);
            assert_eq!(check(&gbnf, s), want, "{name}: {s:?}");
            match want {
                TextMatch::Complete => complete += 1,
                TextMatch::Rejected => rejected += 1,
                TextMatch::Prefix => {}
            }
        }
    }
    assert!(
        complete >= 12 && rejected >= 10,
        "{complete} complete, {rejected} rejected"
    );
}

/// Where a lexer in front of the parser would choose a split GBNF does not:
/// the translation must keep every split.
#[test]
fn translations_keep_gbnfs_character_level_language() {
    let cases: &[(&str, &[(&str, TextMatch)])] = &[
        // A class run followed by a literal the class also matches.
        (
            "root ::= [a-z]+ \"b\"",
            &[
                ("aab", TextMatch::Complete),
                ("b", TextMatch::Prefix),
                ("bb", TextMatch::Complete),
                ("aa", TextMatch::Prefix),
                ("a1", TextMatch::Rejected),
            ],
        ),
        // The same inside recursion (no terminal to hide the split in).
        (
            "root ::= \"(\" root \")\" | word \"x\"\nword ::= [a-z]*",
            &[
                ("((abx))", TextMatch::Complete),
                ("((xx))", TextMatch::Complete),
                ("(x)", TextMatch::Complete),
                ("((ab)", TextMatch::Rejected),
                ("((abx)", TextMatch::Prefix),
            ],
        ),
        // Two runs of the same class back to back, in a recursive rule:
        // any split is valid.
        (
            "root ::= pair | \"<\" root \">\"\npair ::= [a-z]+ [a-z]+",
            &[
                ("ab", TextMatch::Complete),
                ("<<abc>>", TextMatch::Complete),
                ("<a>", TextMatch::Rejected),
            ],
        ),
        // A literal that is a prefix of another alternative's literal.
        (
            "root ::= (\"ab\" \"c\" | \"a\" \"bd\") tail\ntail ::= \"\" | \"!\" tail",
            &[
                ("abc", TextMatch::Complete),
                ("abd!!", TextMatch::Complete),
                ("abe", TextMatch::Rejected),
            ],
        ),
        // Empty literals, `{0}`, an empty negated class (any character).
        (
            "root ::= \"\" \"a\"{0} [^] \"\"",
            &[
                ("\u{2192}", TextMatch::Complete),
                ("", TextMatch::Prefix),
                ("ab", TextMatch::Rejected),
            ],
        ),
    ];
    for (gbnf, samples) in cases {
        let c = Constraint::gbnf_text(gbnf).unwrap_or_else(|e| panic!("{gbnf}: {e}"));
        for (s, want) in *samples {
            assert_eq!(check(&c, s), *want, "{gbnf:?} on {s:?}");
        }
    }
}

#[test]
fn malformed_gbnf_is_a_typed_error_with_the_line() {
    for (src, line) in [
        ("root ::= \"a\"\nb ::= \"unterminated\n", 2),
        ("root ::= item\n\nitem ::= [0-9\n", 3),
        ("root ::= \"a\" | other\n", 1),
        ("root ::= \"a\"\n\n\nroot ::= \"b\"\n", 4),
        ("root ::= \"a\" (\"b\" | \"c\"\n", 1),
    ] {
        match Constraint::gbnf_text(src) {
            Err(Error::GrammarSyntax {
                line: got, reason, ..
            }) => assert_eq!(got, line, "{src:?}: {reason}"),
            other => panic!("{src:?}: {other:?}"),
        }
    }
}
