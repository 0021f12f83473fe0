//! `sotto bench` end to end on the default model: a tiny sweep in every
//! output format. Checks behaviour (fields present, positive, consistent),
//! never speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn model() -> PathBuf {
    let path = match std::env::var_os("SOTTO_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        path.is_file(),
        "test model not found at {}: run `sotto fetch` or set SOTTO_MODEL",
        path.display()
    );
    path
}

fn bench(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .arg("bench")
        .arg("-m")
        .arg(model())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "sotto bench {args:?} failed: {stderr}"
    );
    (stdout, stderr)
}

fn positive(row: &serde_json::Value, key: &str) -> f64 {
    let v = row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {row}"));
    assert!(v > 0.0 && v.is_finite(), "{key} = {v}");
    v
}

#[test]
fn json_report_has_every_field_positive() {
    let (stdout, _) = bench(&[
        "-p", "8", "-n", "4", "-r", "1", "-t", "1", "--warmup", "0", "--output", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is only JSON");
    assert!(!v["machine"]["cpu"].as_str().unwrap().is_empty());
    assert!(v["machine"]["logical_cores"].as_u64().unwrap() >= 1);
    assert_eq!(v["model"]["arch"], "llama");
    assert_eq!(v["model"]["n_layer"], 30);
    let weights = v["model"]["weights_bytes"].as_u64().unwrap();
    let per_token = v["model"]["bytes_per_decoded_token"].as_u64().unwrap();
    assert!(per_token > 0 && per_token <= weights);
    assert!(v["bandwidth"]["gb_per_s"].as_f64().unwrap() > 0.0);
    assert!(!v["kernel_isa_auto"].as_str().unwrap().is_empty());

    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one pp and one tg row");
    let (pp, tg) = (&rows[0], &rows[1]);
    assert_eq!(
        (pp["test"].as_str(), pp["n_prompt"].as_u64()),
        (Some("pp"), Some(8))
    );
    assert_eq!(
        (tg["test"].as_str(), tg["n_gen"].as_u64()),
        (Some("tg"), Some(4))
    );
    for row in rows {
        assert_eq!(row["backend"], "cpu");
        assert_eq!(row["threads"], 1);
        assert_eq!(row["repetitions"], 1);
        for key in [
            "tokens_per_s_mean",
            "load_ms",
            "peak_rss_bytes",
            "weights_bytes",
            "kv_bytes",
        ] {
            positive(row, key);
        }
        assert_eq!(row["tokens_per_s_samples"].as_array().unwrap().len(), 1);
        assert_eq!(row["weights_bytes"].as_u64(), Some(weights));
    }
    let ttft = positive(pp, "ttft_ms");
    // Prefilling 8 tokens at the measured rate takes about the TTFT.
    assert!(ttft >= 8.0 / positive(pp, "tokens_per_s_mean") * 1e3 * 0.99);
    let (p50, p90, p99) = (
        positive(tg, "latency_p50_ms"),
        positive(tg, "latency_p90_ms"),
        positive(tg, "latency_p99_ms"),
    );
    assert!(p50 <= p90 && p90 <= p99);
    let fraction = positive(tg, "bandwidth_fraction");
    assert!(
        fraction < 10.0,
        "bandwidth fraction {fraction} is implausible"
    );
    // The tg cache holds 4 + 1 positions, the pp one 8.
    assert!(tg["kv_bytes"].as_u64() < pp["kv_bytes"].as_u64());
}

#[test]
fn markdown_and_csv_go_to_stdout_only() {
    let (md, _) = bench(&["-p", "4", "-n", "0", "-r", "1", "-t", "1", "--warmup", "0"]);
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 3, "header, rule, one row:\n{md}");
    assert!(table[2].contains("pp4"));
    assert!(md.contains("- machine: "));

    let (csv, _) = bench(&[
        "-p", "4", "-n", "2", "-r", "2", "-t", "1", "--warmup", "0", "-o", "csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("backend,describe,isa,threads,test,"));
    assert!(lines[2].contains(",tg,0,2,0,2,"), "{}", lines[2]);
}

#[test]
fn an_isa_sweep_runs_each_forced_path_in_its_own_process() {
    let (stdout, _) = bench(&[
        "-p",
        "4",
        "-n",
        "2",
        "-r",
        "1",
        "-t",
        "1",
        "--warmup",
        "0",
        "--isa",
        "auto,scalar",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let isas: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["isa"].as_str().unwrap())
        .collect();
    assert_eq!(isas.len(), 4);
    let auto = v["kernel_isa_auto"].as_str().unwrap();
    // the auto tier may read weights repacked at load ("vnni+x16")
    let packed = format!("{auto}+x16");
    for isa in &isas[..2] {
        assert!(*isa == auto || *isa == packed, "{isa} vs {auto}");
    }
    assert_eq!(isas[2..], ["scalar", "scalar"]);
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["bench", "-m"])
        .arg(model())
        .args(["--isa", "sse9", "-p", "4", "-n", "0", "-r", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sse9"));
    assert!(out.stdout.is_empty());
}
