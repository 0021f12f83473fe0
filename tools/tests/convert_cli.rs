//! `sotto quantize`, `sotto convert` and `--quant` from the command line:
//! what they write (read back by gguf-py, llama.cpp's own GGUF reader, not
//! ours) and how they refuse bad input without leaving a partial file.
//! llama.cpp judges the converted models themselves in
//! tests/tests/hf_convert.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sotto_tests::parity::{cache_dir, llama_python};
use sotto_tests::{default_model_path, text};

fn sotto(args: &[&OsStr]) -> Output {
    sotto_tests::run_with_stdin(env!("CARGO_BIN_EXE_sotto"), args, "")
}

fn scratch(name: &str) -> PathBuf {
    let dir = cache_dir().join("convert_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// ggml type name -> number of tensors, as gguf-py reads `file`.
fn tensor_types(file: &Path) -> BTreeMap<String, usize> {
    let out = Command::new(llama_python())
        .arg("-c")
        .arg(
            "import sys, gguf\n\
             r = gguf.GGUFReader(sys.argv[1])\n\
             print(r.get_field('general.file_type').contents())\n\
             print('\\n'.join(t.tensor_type.name + ' ' + str(len(t.shape)) for t in r.tensors))",
        )
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "gguf-py: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let mut counts = BTreeMap::new();
    counts.insert(format!("file_type {}", lines.next().unwrap()), 1);
    for line in lines {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn quantize_writes_one_weight_type_that_gguf_py_reads() {
    let out = scratch("default.Q8_0.gguf");
    let run = sotto(&[
        "quantize".as_ref(),
        default_model_path().as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        "q8_0".as_ref(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let said = text(&run.stdout);
    assert!(
        said.starts_with("wrote ") && said.contains("211 q8_0") && said.contains(" s\n"),
        "{said}"
    );
    // SmolLM2: 211 matrices, 61 norm vectors (tied embeddings: no output.weight).
    let types = tensor_types(&out);
    let want: BTreeMap<String, usize> = [("file_type 7", 1), ("Q8_0 2", 211), ("F32 1", 61)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(types, want);
}

#[test]
fn bad_requests_fail_with_a_reason_and_write_nothing() {
    let model = default_model_path();
    let out = scratch("refused.gguf");
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (
            vec!["convert".as_ref(), model.as_os_str(), out.as_os_str()],
            "is not a folder",
        ),
        (
            vec![
                "quantize".as_ref(),
                model.as_os_str(),
                out.as_os_str(),
                "--type".as_ref(),
                "q8_1".as_ref(),
            ],
            "not a weight type",
        ),
        (
            vec![
                "quantize".as_ref(),
                model.as_os_str(),
                model.as_os_str(),
                "--type".as_ref(),
                "q4_0".as_ref(),
            ],
            "the same file",
        ),
        (
            vec![
                "chat".as_ref(),
                "--model".as_ref(),
                model.as_os_str(),
                "--quant".as_ref(),
                "q4_0".as_ref(),
                "--backend".as_ref(),
                "ort".as_ref(),
                "--onnx-dir".as_ref(),
                "/nonexistent".as_ref(),
                "hi".as_ref(),
            ],
            "--quant quantizes the CPU backend",
        ),
    ];
    for (args, reason) in cases {
        let run = sotto(&args);
        let stderr = text(&run.stderr);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }

    // A truncated source: a typed error, and no file (not even a partial one).
    let bytes = std::fs::read(&model).unwrap();
    let truncated = scratch("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let run = sotto(&[
        "quantize".as_ref(),
        truncated.as_os_str(),
        out.as_os_str(),
        "--type".as_ref(),
        "q4_0".as_ref(),
    ]);
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("past the end of the file"),
        "{}",
        text(&run.stderr)
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".refused.gguf.")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
