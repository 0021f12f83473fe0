//! Benchmark results and their three renderings: a Markdown table (with a
//! footer on the machine, model and memory bandwidth), CSV, and JSON.
//! Rows of llama.cpp (benches/llama_cpp_bench.py) share [`BenchRow`].

use super::machine::{BandwidthProbe, ComputeProbe, Machine};
use super::sweep::{test_label, TestKind};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    pub backend: String,
    /// The backend's own description (threads, ISA, EP chain…).
    pub describe: String,
    /// Kernel path that ran: dispatch's choice for sotto, the backend's own
    /// label otherwise.
    pub isa: String,
    pub threads: usize,
    pub test: TestKind,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub depth: usize,
    pub repetitions: usize,
    pub tokens_per_s_mean: f64,
    pub tokens_per_s_sd: f64,
    pub tokens_per_s_samples: Vec<f64>,
    /// pp rows: prefill plus picking the first token, mean over repetitions.
    pub ttft_ms: Option<f64>,
    /// tg rows: per-token decode latency percentiles over all repetitions.
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub load_ms: f64,
    /// The CPU backend's repacked panels at load: packed (in how long) or
    /// mapped from the packed-panel cache.
    #[serde(default)]
    pub packing: Option<String>,
    /// VmHWM after the row (since this backend was loaded, where the kernel
    /// lets us reset it).
    pub peak_rss_bytes: u64,
    /// At the row's end: resident pages of mapped files (weights, packed
    /// panels) and anonymous ones (KV cache, tokenizer, scratch); see
    /// [`super::machine::RssSplit`].
    #[serde(default)]
    pub rss_file_bytes: Option<u64>,
    #[serde(default)]
    pub rss_anon_bytes: Option<u64>,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    /// The KV cache's element types: `T` for keys and values, or `K,V`.
    #[serde(default = "f16_name")]
    pub kv_type: String,
    /// tg rows: weights and KV cache bytes read per token × tokens/s over
    /// the probed read bandwidth ([`attach_bandwidth_fractions`]).
    #[serde(default)]
    pub bandwidth_fraction: Option<f64>,
    /// pp rows of a quantized model on the CPU backend: the layers' matrix
    /// multiply-adds per prompt token × tokens/s over the probed peak of
    /// the kernels' integer dot step at the row's thread count.
    #[serde(default)]
    pub compute_fraction: Option<f64>,
    #[serde(default)]
    pub llama_cpp_tokens_per_s: Option<f64>,
    /// tokens/s of this row over llama.cpp's on the same test and threads.
    #[serde(default)]
    pub ratio_vs_llama_cpp: Option<f64>,
}

fn f16_name() -> String {
    "f16".into()
}

impl BenchRow {
    pub fn label(&self) -> String {
        let tokens = if self.test == TestKind::Pp {
            self.n_prompt
        } else {
            self.n_gen
        };
        test_label(self.test, tokens, self.depth)
    }
    /// Same test, depth, thread count and KV type: rows that can be
    /// compared.
    fn same_test(&self, other: &BenchRow) -> bool {
        (
            self.test,
            self.n_prompt,
            self.n_gen,
            self.depth,
            self.threads,
        ) == (
            other.test,
            other.n_prompt,
            other.n_gen,
            other.depth,
            other.threads,
        ) && self.kv_type == other.kv_type
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub path: String,
    pub name: Option<String>,
    pub arch: String,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub n_params: u64,
    /// All tensor data in the file.
    pub weights_bytes: u64,
    /// Tensor bytes one decoded token reads: everything but the embedding
    /// table, of which it reads one row (unless the output projection is tied
    /// to it, then all of it).
    pub bytes_per_decoded_token: u64,
    /// Multiply-adds of the layers' weight matrices per prompt token (the
    /// output projection runs once per prompt, attention is not counted).
    #[serde(default)]
    pub matrix_macs_per_token: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub model: ModelSummary,
    /// What `--isa auto` resolves to in this process.
    pub kernel_isa_auto: String,
    /// Every kernel path this CPU can run (what `--isa` can force).
    pub kernel_isas_available: Vec<String>,
    pub bandwidth: Option<BandwidthProbe>,
    /// The probe at the L3, weights and DRAM sizes for every thread count
    /// of the rows ([`super::machine::probe_bandwidth_levels`]).
    #[serde(default)]
    pub bandwidth_levels: Vec<BandwidthProbe>,
    /// The integer dot step's peak for every thread count of the pp rows
    /// ([`super::machine::probe_int8_dot_peak`]).
    #[serde(default)]
    pub compute_peaks: Vec<ComputeProbe>,
    pub rows: Vec<BenchRow>,
}

/// Fills in llama.cpp's tokens/s and the ratio on every non-llama.cpp row
/// that has a llama.cpp row for the same test.
pub fn attach_llama_cpp_ratios(rows: &mut [BenchRow]) {
    let reference: Vec<BenchRow> = rows
        .iter()
        .filter(|r| r.backend == "llama.cpp")
        .cloned()
        .collect();
    for row in rows.iter_mut().filter(|r| r.backend != "llama.cpp") {
        if let Some(l) = reference.iter().find(|l| l.same_test(row)) {
            row.llama_cpp_tokens_per_s = Some(l.tokens_per_s_mean);
            row.ratio_vs_llama_cpp =
                (l.tokens_per_s_mean > 0.0).then(|| row.tokens_per_s_mean / l.tokens_per_s_mean);
        }
    }
}

/// Share of the probed bandwidth each tg row's reads use (of either
/// engine): the weights (`bytes_per_token`) and the KV cache a token
/// attends over ([`kv_read_per_token`]), against the weights-sized probe
/// with the row's thread count when `probes` has one, else the first probe.
pub fn attach_bandwidth_fractions(
    rows: &mut [BenchRow],
    bytes_per_token: u64,
    probes: &[BandwidthProbe],
) {
    let kv: Vec<u64> = rows.iter().map(|r| kv_read_per_token(rows, r)).collect();
    for (row, kv) in rows.iter_mut().zip(kv) {
        if row.test != TestKind::Tg {
            continue;
        }
        let probe = probes
            .iter()
            .find(|p| p.threads == row.threads && p.what == "weights")
            .or_else(|| probes.iter().find(|p| p.threads == row.threads))
            .or(probes.first());
        let bytes_per_s = row.tokens_per_s_mean * (bytes_per_token + kv) as f64;
        row.bandwidth_fraction = probe
            .filter(|p| p.gb_per_s > 0.0)
            .map(|p| bytes_per_s / (p.gb_per_s * 1e9));
    }
}

/// KV cache bytes a decoded token of tg row `row` reads, on average: the
/// cache bytes at the row's end, per position, times the positions a
/// token attends (the `d + 1` before the first token, one more for each;
/// `d + (n + 3) / 2` on average). llama.cpp's rows report the allocation
/// of their whole context, so they take the per-position bytes of a
/// sotto row of the same test and KV types (none: 0). Sliding-window
/// layers keep a ring, so there the figure is the ring's share, not the
/// window's.
fn kv_read_per_token(rows: &[BenchRow], row: &BenchRow) -> u64 {
    let same_test = |r: &&BenchRow| {
        r.backend != "llama.cpp"
            && r.test == TestKind::Tg
            && (r.depth, r.n_gen) == (row.depth, row.n_gen)
            && r.kv_type == row.kv_type
    };
    let src = if row.backend == "llama.cpp" {
        rows.iter().find(same_test)
    } else {
        Some(row)
    };
    let Some(src) = src.filter(|r| r.test == TestKind::Tg) else {
        return 0;
    };
    let end = (src.depth + 1 + src.n_gen) as f64;
    let mean = src.depth as f64 + (src.n_gen as f64 + 3.0) / 2.0;
    (src.kv_bytes as f64 * mean / end) as u64
}

/// Whether a row is stated as a share of the integer dot peak: the CPU
/// prefill rows, sotto's and llama.cpp's alike (both multiply 8-bit codes
/// with the same dot instructions).
pub fn measures_dot_use(row: &BenchRow) -> bool {
    row.test == TestKind::Pp && (row.backend == "cpu" || row.backend == "llama.cpp")
}

/// Share of the probed integer dot peak each row of [`measures_dot_use`]
/// reaches: `macs_per_token` × tokens/s over the peak at the row's
/// thread count (none without one).
pub fn attach_compute_fractions(
    rows: &mut [BenchRow],
    macs_per_token: u64,
    peaks: &[ComputeProbe],
) {
    for row in rows.iter_mut().filter(|r| measures_dot_use(r)) {
        row.compute_fraction = peaks
            .iter()
            .find(|p| p.threads == row.threads && p.gmac_per_s > 0.0)
            .map(|p| row.tokens_per_s_mean * macs_per_token as f64 / (p.gmac_per_s * 1e9));
    }
}

/// "- int8 dot peak (vnni): 1 t 123.4 GMAC/s, 2 t ..." line.
pub fn compute_peaks_markdown(peaks: &[ComputeProbe]) -> String {
    let Some(first) = peaks.first() else {
        return String::new();
    };
    let cells: Vec<String> = peaks
        .iter()
        .map(|p| format!("{} t {:.1} GMAC/s", p.threads, p.gmac_per_s))
        .collect();
    format!(
        "- integer dot peak ({}, registers only, median of {}): {}; dot use = the layers' \
         matrix multiply-adds per prompt token × t/s over it\n",
        first.isa,
        first.repetitions,
        cells.join(", ")
    )
}

/// "L3 16.0 MiB: 1 t 40.1 GB/s (p10–p90 38.0–41.2), 2 t ..." lines.
pub fn bandwidth_levels_markdown(levels: &[BandwidthProbe]) -> String {
    let mut out = String::new();
    let mut whats: Vec<&str> = Vec::new();
    for p in levels {
        if !whats.contains(&p.what.as_str()) {
            whats.push(&p.what);
        }
    }
    let pinned = levels.iter().all(|p| p.pinned);
    for what in whats {
        let probes: Vec<&BandwidthProbe> = levels.iter().filter(|p| p.what == what).collect();
        let cells: Vec<String> = probes
            .iter()
            .map(|p| {
                format!(
                    "{} t {:.1} GB/s ({:.1}–{:.1}{}{})",
                    p.threads,
                    p.gb_per_s,
                    p.p10_gb_per_s,
                    p.p90_gb_per_s,
                    if p.prefetched { ", prefetching" } else { "" },
                    if p.huge_pages { ", 2 MiB pages" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- read bandwidth, {what} ({} MiB): {}",
            mib(probes[0].buffer_bytes as u64),
            cells.join(", ")
        );
    }
    if let Some(p) = levels.first() {
        let _ = writeln!(
            out,
            "- bandwidth probe: the faster of a plain read and one that prefetches ahead as the \
             decode kernels do, of a buffer asked for on 2 MiB pages as the weights' maps are, \
             median of {}+ repetitions (p10–p90 in brackets){}; BW use = weights and KV read per \
             token × t/s over the weights-sized probe at the row's threads",
            levels
                .iter()
                .map(|p| p.repetitions)
                .min()
                .unwrap_or(p.repetitions),
            if pinned {
                ", one pinned thread per CPU"
            } else {
                ""
            }
        );
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn percent(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |f| format!("{:.0}%", f * 100.0))
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The ISA llama.cpp's rows were built for, with a warning when that falls
/// short of this CPU's (its rows would understate llama.cpp); empty without
/// llama.cpp rows.
pub fn llama_cpp_build_markdown(report: &Report) -> String {
    let Some(r) = report.rows.iter().find(|r| r.backend == "llama.cpp") else {
        return String::new();
    };
    let mut out = format!("- llama.cpp built for: {}", r.isa);
    let lacks = report.machine.flags_llama_cpp_lacks(&r.isa);
    if !lacks.is_empty() {
        let _ = write!(
            out,
            "; WARNING: not for this CPU's {}, so its rows understate it (build it \
             natively with AMX off: scripts/llama-deps.sh)",
            lacks.join(", ")
        );
    }
    out.push('\n');
    out
}

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let has_ratio = report.rows.iter().any(|r| r.ratio_vs_llama_cpp.is_some());
    let has_kv = report.rows.iter().any(|r| r.kv_type != "f16");
    let mut header = vec![
        "backend",
        "isa",
        "threads",
        "test",
        "t/s",
        "TTFT ms",
        "decode p50/p90/p99 ms",
        "load ms",
        "KV MiB",
        "peak RSS MiB",
        "RSS file / anon MiB",
        "BW use",
    ];
    let has_dot = report.rows.iter().any(|r| r.compute_fraction.is_some());
    if has_dot {
        header.push("dot use");
    }
    if has_kv {
        header.insert(4, "KV type");
    }
    if has_ratio {
        header.extend(["llama.cpp t/s", "vs llama.cpp"]);
    }
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let aligns: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, _)| {
            if i < 4 + has_kv as usize {
                "---"
            } else {
                "---:"
            }
        })
        .collect();
    let _ = writeln!(out, "| {} |", aligns.join(" | "));
    for r in &report.rows {
        let lat = match (r.latency_p50_ms, r.latency_p90_ms, r.latency_p99_ms) {
            (Some(a), Some(b), Some(c)) => format!("{a:.2} / {b:.2} / {c:.2}"),
            _ => "-".to_string(),
        };
        let mut cells = vec![
            r.backend.clone(),
            r.isa.clone(),
            r.threads.to_string(),
            r.label(),
            format!("{:.2} ± {:.2}", r.tokens_per_s_mean, r.tokens_per_s_sd),
            opt(r.ttft_ms, 1),
            lat,
            format!("{:.0}", r.load_ms),
            mib(r.kv_bytes),
            mib(r.peak_rss_bytes),
            match (r.rss_file_bytes, r.rss_anon_bytes) {
                (Some(f), Some(a)) => format!("{} / {}", mib(f), mib(a)),
                _ => "-".to_string(),
            },
            percent(r.bandwidth_fraction),
        ];
        if has_dot {
            cells.push(percent(r.compute_fraction));
        }
        if has_kv {
            cells.insert(4, r.kv_type.clone());
        }
        if has_ratio {
            cells.push(opt(r.llama_cpp_tokens_per_s, 2));
            cells.push(
                r.ratio_vs_llama_cpp
                    .map_or_else(|| "-".to_string(), |x| format!("{x:.2}×")),
            );
        }
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let m = &report.model;
    let _ = writeln!(out);
    let _ = writeln!(out, "- machine: {}", report.machine.one_line());
    let _ = writeln!(
        out,
        "- model: {} ({}, {} layers, d_model {}, {}/{} heads, ffn {}, vocab {}, {:.1} M params) at {}",
        m.name.as_deref().unwrap_or("unnamed"),
        m.arch,
        m.n_layer,
        m.d_model,
        m.n_head,
        m.n_kv_head,
        m.ffn_dim,
        m.vocab_size,
        m.n_params as f64 / 1e6,
        m.path
    );
    let _ = writeln!(
        out,
        "- weights: {} MiB; a decoded token reads {} MiB of them",
        mib(m.weights_bytes),
        mib(m.bytes_per_decoded_token)
    );
    let _ = writeln!(
        out,
        "- sotto kernel ISA with --isa auto: {}",
        report.kernel_isa_auto
    );
    out.push_str(&llama_cpp_build_markdown(report));
    // Each backend's repacked panels at its load (the load column's cold or
    // warm start), once per backend, ISA and thread count.
    let mut packings: Vec<String> = Vec::new();
    for r in &report.rows {
        if let Some(p) = &r.packing {
            let line = format!("- x16 panels ({} {} t{}): {p}", r.backend, r.isa, r.threads);
            if !packings.contains(&line) {
                packings.push(line);
            }
        }
    }
    for line in packings {
        let _ = writeln!(out, "{line}");
    }
    if report.rows.iter().any(|r| r.rss_file_bytes.is_some()) {
        let _ = writeln!(
            out,
            "- RSS file / anon: at the row's end, resident pages of mapped files (the model's \
             weights, the packed-panel cache) / anonymous memory (KV cache, tokenizer tables, \
             scratch, copies packed at load)"
        );
    }
    out.push_str(&compute_peaks_markdown(&report.compute_peaks));
    if !report.bandwidth_levels.is_empty() {
        out.push_str(&bandwidth_levels_markdown(&report.bandwidth_levels));
    } else if let Some(bw) = &report.bandwidth {
        let best = report
            .rows
            .iter()
            .filter(|r| r.test == TestKind::Tg && r.backend != "llama.cpp")
            .max_by(|a, b| a.tokens_per_s_mean.total_cmp(&b.tokens_per_s_mean));
        let _ = write!(
            out,
            "- read bandwidth probe: {:.1} GB/s ({} threads over {} MiB, best of 5)",
            bw.gb_per_s,
            bw.threads,
            mib(bw.buffer_bytes as u64)
        );
        if let (Some(b), Some(f)) = (best, best.and_then(|b| b.bandwidth_fraction)) {
            let _ = write!(
                out,
                "; the fastest decode ({} {} t{}) reads weights and KV at {:.1} GB/s = {:.0}% of it",
                b.backend,
                b.label(),
                b.threads,
                f * bw.gb_per_s,
                f * 100.0
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "- t/s: mean ± sample sd over repetitions; pp = prefill after depth d, tg = single-token decodes after d + 1 tokens (llama-bench semantics)");
    out
}

const CSV_COLUMNS: &[&str] = &[
    "backend",
    "describe",
    "isa",
    "threads",
    "test",
    "n_prompt",
    "n_gen",
    "depth",
    "repetitions",
    "tokens_per_s_mean",
    "tokens_per_s_sd",
    "tokens_per_s_samples",
    "ttft_ms",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "load_ms",
    "peak_rss_bytes",
    "weights_bytes",
    "kv_bytes",
    "kv_type",
    "bandwidth_fraction",
    "llama_cpp_tokens_per_s",
    "ratio_vs_llama_cpp",
    "rss_file_bytes",
    "rss_anon_bytes",
    "compute_fraction",
];

/// RFC 4180 quoting where a field needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(rows: &[BenchRow]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    let o = |x: Option<f64>| x.map_or_else(String::new, |v| v.to_string());
    for r in rows {
        let samples = r
            .tokens_per_s_samples
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(";");
        let test = match r.test {
            TestKind::Pp => "pp",
            TestKind::Tg => "tg",
        };
        let fields = [
            r.backend.clone(),
            r.describe.clone(),
            r.isa.clone(),
            r.threads.to_string(),
            test.to_string(),
            r.n_prompt.to_string(),
            r.n_gen.to_string(),
            r.depth.to_string(),
            r.repetitions.to_string(),
            r.tokens_per_s_mean.to_string(),
            r.tokens_per_s_sd.to_string(),
            samples,
            o(r.ttft_ms),
            o(r.latency_p50_ms),
            o(r.latency_p90_ms),
            o(r.latency_p99_ms),
            r.load_ms.to_string(),
            r.peak_rss_bytes.to_string(),
            r.weights_bytes.to_string(),
            r.kv_bytes.to_string(),
            r.kv_type.clone(),
            o(r.bandwidth_fraction),
            o(r.llama_cpp_tokens_per_s),
            o(r.ratio_vs_llama_cpp),
            r.rss_file_bytes.map_or_else(String::new, |v| v.to_string()),
            r.rss_anon_bytes.map_or_else(String::new, |v| v.to_string()),
            o(r.compute_fraction),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

pub fn json(report: &Report) -> Result<String, String> {
    serde_json::to_string_pretty(report).map_err(|e| format!("writing JSON: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(
        backend: &str,
        test: TestKind,
        tokens: usize,
        threads: usize,
        tps: f64,
    ) -> BenchRow {
        BenchRow {
            backend: backend.into(),
            describe: format!("{backend}, \"quoted\", with commas"),
            isa: "avx2".into(),
            threads,
            test,
            n_prompt: if test == TestKind::Pp { tokens } else { 0 },
            n_gen: if test == TestKind::Tg { tokens } else { 0 },
            depth: 0,
            repetitions: 2,
            tokens_per_s_mean: tps,
            tokens_per_s_sd: 1.5,
            tokens_per_s_samples: vec![tps - 1.0, tps + 1.0],
            ttft_ms: (test == TestKind::Pp).then_some(12.5),
            latency_p50_ms: (test == TestKind::Tg).then_some(9.0),
            latency_p90_ms: (test == TestKind::Tg).then_some(10.0),
            latency_p99_ms: (test == TestKind::Tg).then_some(11.0),
            load_ms: 40.0,
            packing: None,
            peak_rss_bytes: 200 << 20,
            rss_file_bytes: Some(100 << 20),
            rss_anon_bytes: Some(60 << 20),
            weights_bytes: 96 << 20,
            kv_bytes: 3 << 20,
            kv_type: "f16".into(),
            bandwidth_fraction: None,
            compute_fraction: None,
            llama_cpp_tokens_per_s: None,
            ratio_vs_llama_cpp: None,
        }
    }

    /// cpu pp128 and tg128 at 2 threads; llama.cpp pp128 at 2, tg128 at 1.
    pub(crate) fn report() -> Report {
        let mut rows = vec![
            row("cpu", TestKind::Pp, 128, 2, 300.0),
            row("cpu", TestKind::Tg, 128, 2, 120.0),
            row("llama.cpp", TestKind::Pp, 128, 2, 400.0),
            row("llama.cpp", TestKind::Tg, 128, 1, 60.0),
        ];
        attach_llama_cpp_ratios(&mut rows);
        let probe = BandwidthProbe {
            gb_per_s: 20.0,
            buffer_bytes: 96 << 20,
            threads: 2,
            what: String::new(),
            best_gb_per_s: 21.0,
            p10_gb_per_s: 19.0,
            p90_gb_per_s: 20.5,
            repetitions: 9,
            pinned: true,
            prefetched: false,
            huge_pages: false,
        };
        attach_bandwidth_fractions(&mut rows, 80_000_000, std::slice::from_ref(&probe));
        let peak = ComputeProbe {
            isa: "vnni".into(),
            threads: 2,
            gmac_per_s: 60.0,
            best_gmac_per_s: 61.0,
            repetitions: 9,
            pinned: true,
        };
        attach_compute_fractions(&mut rows, 100_000_000, std::slice::from_ref(&peak));
        Report {
            machine: Machine {
                cpu: "Test CPU".into(),
                arch: "x86_64".into(),
                logical_cores: 2,
                physical_cores: Some(2),
                flags: vec!["avx2".into()],
            },
            model: ModelSummary {
                path: "/m.gguf".into(),
                name: Some("Tiny".into()),
                arch: "llama".into(),
                n_layer: 30,
                d_model: 576,
                n_head: 9,
                n_kv_head: 3,
                ffn_dim: 1536,
                vocab_size: 49152,
                n_params: 134_515_008,
                weights_bytes: 96 << 20,
                bytes_per_decoded_token: 80_000_000,
                matrix_macs_per_token: 100_000_000,
            },
            kernel_isa_auto: "avx2".into(),
            kernel_isas_available: vec!["scalar".into(), "avx2".into()],
            bandwidth: Some(probe),
            bandwidth_levels: Vec::new(),
            compute_peaks: vec![peak],
            rows,
        }
    }

    fn level(what: &str, threads: usize, gb_per_s: f64) -> BandwidthProbe {
        BandwidthProbe {
            gb_per_s,
            buffer_bytes: 16 << 20,
            threads,
            what: what.into(),
            best_gb_per_s: gb_per_s + 1.0,
            p10_gb_per_s: gb_per_s - 1.0,
            p90_gb_per_s: gb_per_s + 0.5,
            repetitions: 12,
            pinned: true,
            prefetched: threads == 2,
            huge_pages: threads == 2,
        }
    }

    #[test]
    fn fractions_use_the_weights_probe_of_the_rows_threads() {
        let mut rows = vec![
            row("cpu", TestKind::Tg, 128, 1, 100.0),
            row("llama.cpp", TestKind::Tg, 128, 2, 100.0),
        ];
        let levels = [
            level("L3", 1, 80.0),
            level("weights", 1, 10.0),
            level("weights", 2, 16.0),
        ];
        for r in &mut rows {
            r.kv_bytes = 0;
        }
        attach_bandwidth_fractions(&mut rows, 80_000_000, &levels);
        assert!((rows[0].bandwidth_fraction.unwrap() - 0.8).abs() < 1e-12);
        assert!((rows[1].bandwidth_fraction.unwrap() - 0.5).abs() < 1e-12);
        let text = bandwidth_levels_markdown(&levels);
        assert!(text.contains("- read bandwidth, L3 (16.0 MiB): 1 t 80.0 GB/s (79.0–80.5)"));
        assert!(text.contains(
            "weights (16.0 MiB): 1 t 10.0 GB/s (9.0–10.5), 2 t 16.0 GB/s (15.0–16.5, prefetching, 2 MiB pages)"
        ));
        assert!(text.contains("pinned") && text.contains("the faster of a plain read"));
    }

    #[test]
    fn decode_at_depth_counts_the_kv_it_reads() {
        // tg2 @ d5: 8 positions at the end; the two tokens attend 7 and 8
        let mut rows = vec![
            row("cpu", TestKind::Tg, 2, 1, 100.0),
            row("llama.cpp", TestKind::Tg, 2, 1, 50.0),
            row("llama.cpp", TestKind::Tg, 2, 2, 50.0),
        ];
        for r in &mut rows {
            r.depth = 5;
            r.kv_bytes = 8_000_000;
        }
        rows[2].kv_type = "q8_0".into();
        attach_bandwidth_fractions(&mut rows, 80_000_000, &[level("weights", 1, 10.0)]);
        // (80 MB + 8 MB × 7.5 / 8) × 100 t/s over 10 GB/s
        assert!((rows[0].bandwidth_fraction.unwrap() - 0.875).abs() < 1e-9);
        // llama.cpp takes sotto's per-position bytes, not its own allocation
        assert!((rows[1].bandwidth_fraction.unwrap() - 0.4375).abs() < 1e-9);
        // no sotto row with its KV types: the weights alone
        assert!((rows[2].bandwidth_fraction.unwrap() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn ratios_match_same_test_and_threads_only() {
        let r = report();
        assert_eq!(r.rows[0].llama_cpp_tokens_per_s, Some(400.0));
        assert!((r.rows[0].ratio_vs_llama_cpp.unwrap() - 0.75).abs() < 1e-12);
        // llama.cpp's tg row ran on 1 thread, ours on 2: no pairing.
        assert_eq!(r.rows[1].ratio_vs_llama_cpp, None);
        assert_eq!(
            r.rows[2].ratio_vs_llama_cpp, None,
            "reference rows are not compared to themselves"
        );
        // 120 t/s × (80 MB of weights + the 3 MiB cache of 129 positions
        // over the 65.5 a token attends on average) = 9.79 GB/s of 20
        let kv = f64::from(3u32 << 20) * 65.5 / 129.0;
        let want = 120.0 * (80e6 + kv.floor()) / 20e9;
        assert!((r.rows[1].bandwidth_fraction.unwrap() - want).abs() < 1e-12);
        assert_eq!(
            r.rows[0].bandwidth_fraction, None,
            "pp rows are compute-bound"
        );
        assert!((r.rows[0].compute_fraction.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(r.rows[1].compute_fraction, None, "tg rows are memory-bound");
        // llama.cpp's 400 t/s × 100 M MACs = 40 of 60 GMAC/s.
        assert!((r.rows[2].compute_fraction.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let text = json(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["rows"][0]["test"], "pp");
        assert_eq!(v["rows"][1]["latency_p99_ms"], 11.0);
    }

    #[test]
    fn rows_from_the_python_side_parse_with_missing_ratio_fields() {
        let text = r#"[{"backend": "llama.cpp", "describe": "x", "isa": "avx2", "threads": 2, "test": "tg",
            "n_prompt": 0, "n_gen": 16, "depth": 0, "repetitions": 2, "tokens_per_s_mean": 150.0,
            "tokens_per_s_sd": 3.0, "tokens_per_s_samples": [147.0, 153.0], "ttft_ms": null,
            "latency_p50_ms": 6.4, "latency_p90_ms": 7.0, "latency_p99_ms": 8.0, "load_ms": 263.1,
            "peak_rss_bytes": 168988672, "weights_bytes": 96576768, "kv_bytes": 5898240}]"#;
        let rows: Vec<BenchRow> = serde_json::from_str(text).unwrap();
        assert_eq!(rows[0].test, TestKind::Tg);
        assert_eq!(rows[0].label(), "tg16");
        assert_eq!(rows[0].ratio_vs_llama_cpp, None);
    }

    #[test]
    fn csv_has_a_header_and_one_quoted_line_per_row() {
        let r = report();
        let text = csv(&r.rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + r.rows.len());
        assert_eq!(lines[0].split(',').count(), CSV_COLUMNS.len());
        assert!(lines[1].starts_with(
            "cpu,\"cpu, \"\"quoted\"\", with commas\",avx2,2,pp,128,0,0,2,300,1.5,299;301,12.5,,"
        ));
        assert!(lines[1].ends_with(",400,0.75,104857600,62914560,0.5"));
        assert!(
            lines[2].ends_with(",104857600,62914560,"),
            "no dot use on tg rows"
        );
    }

    #[test]
    fn markdown_has_one_line_per_row_and_a_footer() {
        let text = markdown(&report());
        let table: Vec<&str> = text.lines().take_while(|l| l.starts_with('|')).collect();
        assert_eq!(table.len(), 2 + 4);
        let cols = table[0].matches('|').count();
        assert!(
            table.iter().all(|l| l.matches('|').count() == cols),
            "every line has as many cells"
        );
        assert!(
            table[2].contains("pp128")
                && table[2].contains("300.00 ± 1.50")
                && table[2].contains("0.75×")
        );
        assert!(table[3].contains("9.00 / 10.00 / 11.00") && table[3].contains("49%"));
        // 300 t/s × 10^8 multiply-adds = 30 of the 60 GMAC/s peak
        assert!(table[0].contains("| BW use | dot use |") && table[2].contains("| - | 50% |"));
        assert!(text
            .contains("- integer dot peak (vnni, registers only, median of 9): 2 t 60.0 GMAC/s"));
        assert!(text.contains("- machine: Test CPU"));
        assert!(
            text.contains("- llama.cpp built for: avx2\n"),
            "no warning: {text}"
        );
        let mut wider = report();
        wider.machine.flags.push("avx512f".into());
        assert!(markdown(&wider).contains("avx2; WARNING: not for this CPU's avx512, so"));
        assert!(text.contains("read bandwidth probe: 20.0 GB/s"));
        assert!(text.contains("reads weights and KV at 9.8 GB/s = 49% of it"));
    }
}
