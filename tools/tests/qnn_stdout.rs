//! `sotto chat --backend ort --ep qnn` keeps standard output for the answer
//! alone. The QNN HTP library (the x86-64 emulator of onnxruntime-qnn 2.7.0,
//! from scripts/ort-deps.sh) writes a `# LIBNATIVE: …` line to file
//! descriptor 1 while it runs; the CLI points descriptor 1 at standard error
//! before loading a backend and writes answers to a private duplicate, so the
//! line lands on standard error. Without that, it is the first line of the
//! answer (issue 12).
#![cfg(feature = "ort")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;

use sotto_tests::text;

/// Runs `sotto ARGS` with `stdin` on its standard input.
fn sotto(args: &[&std::ffi::OsStr], stdin: &str) -> Output {
    sotto_tests::run_with_stdin(env!("CARGO_BIN_EXE_sotto"), args, stdin)
}

#[test]
fn chat_on_qnn_htp_writes_only_the_answer_to_stdout() {
    let model = sotto_tests::tiny_llama_file("qnn-stdout");
    // removed when the test ends, passed or not
    let scratch = sotto_tests::scratch_dir("qnn-stdout");
    let graphs = scratch.path().join("graphs");
    let export = sotto(
        &[
            "export".as_ref(),
            model.as_os_str(),
            graphs.as_os_str(),
            "--target".as_ref(),
            "qnn-fp16".as_ref(),
            "--chunk".as_ref(),
            "8".as_ref(),
            "--context".as_ref(),
            "32".as_ref(),
        ],
        "",
    );
    assert!(
        export.status.success(),
        "export failed: {}",
        text(&export.stderr)
    );

    let chat = |backend: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "chat".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--chatml".as_ref(),
            "--max-tokens".as_ref(),
            "6".as_ref(),
        ];
        args.extend(backend.iter().map(std::ffi::OsStr::new));
        let out = sotto(&args, "hello\n");
        assert!(out.status.success(), "chat failed: {}", text(&out.stderr));
        out
    };
    let qnn = chat(&[
        "--backend",
        "ort",
        "--onnx-dir",
        graphs.to_str().unwrap(),
        "--ep",
        "qnn",
        "--npu-only",
    ]);
    let (stdout, stderr) = (text(&qnn.stdout), text(&qnn.stderr));
    // The library's line is not in the answer, nor is any diagnostic of ours...
    assert!(
        !stdout.contains("LIBNATIVE") && !stdout.contains("sotto:"),
        "standard output holds more than the answer:\n{stdout}"
    );
    // ...and the library did write it (else this test proves nothing).
    assert!(
        stderr.contains("# LIBNATIVE:"),
        "the QNN HTP library printed no LIBNATIVE line; stderr:\n{stderr}"
    );
}
