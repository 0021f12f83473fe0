//! `sotto bench`: prefill and decode throughput over a sweep of prompt
//! lengths, generation lengths, thread counts, context depths, kernel ISAs
//! and backends, in the spirit of llama-bench; optionally side by side with
//! llama.cpp. Standard output carries only the table (or JSON / CSV); the
//! progress bar goes to standard error.
//!
//! Kernel dispatch reads SOTTO_ISA once per process and candle sizes its
//! thread pool once per process, so those instances run in child processes
//! (this binary with `--json-rows`) and their rows are merged.

#[path = "bench/mod.rs"]
mod bench;

use bench::backends;
use bench::llama_cpp;
use bench::machine::{self, Machine};
use bench::report::{self, BenchRow, ModelSummary, Report};
use bench::runner::{self, RowContext, TokenRng};
use bench::sweep::{self, Instance, SweepAxes, ISA_NOT_APPLICABLE};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sotto_models::Model;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[value(alias = "markdown")]
    Md,
    Json,
    Csv,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// GGUF model (default: the default model, fetched if needed).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Prompt lengths to prefill (comma list; 0 = no prefill test).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to decode (comma list; 0 = no decode test).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Thread counts (comma list; default: every core).
    #[arg(short = 't', long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Context depths: KV positions filled before the timed part (comma list).
    #[arg(short = 'd', long, value_delimiter = ',', default_value = "0")]
    pub depth: Vec<usize>,
    /// Kernel ISAs for sotto's backends: auto, scalar, avx2, avxvnni, avx512, vnni, neon, dotprod, i8mm.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    pub isa: Vec<String>,
    /// Backends (comma list): cpu, candle, ort-cpu, ort-qnn, hybrid, hybrid-qnn, ort-foreign.
    #[arg(short = 'b', long, value_delimiter = ',', default_value = "cpu")]
    pub backend: Vec<String>,
    /// Timed repetitions per test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(short = 'o', long, value_enum, default_value = "md")]
    pub output: OutputFormat,
    /// Run the same sweep on another engine and print the ratio (llama.cpp).
    #[arg(long, value_name = "ENGINE")]
    pub compare: Option<String>,
    /// Python with llama_cpp and gguf, for --compare llama.cpp and
    /// --sweep-sizes [default: $SOTTO_LLAMA_PYTHON, else the venv
    /// scripts/llama-deps.sh built under the user cache, else python3].
    #[arg(long)]
    pub python: Option<String>,
    /// Seed of the random tokens.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Graphs for ort-cpu and hybrid rows (`sotto export --target cpu`);
    /// default: exported once into ~/.cache/sotto/onnx, sized for the sweep.
    #[arg(long)]
    pub onnx_dir: Option<PathBuf>,
    /// Graphs for ort-qnn and hybrid-qnn rows (`sotto export --target qnn-mixed`, or `qnn`); default as above (qnn-mixed).
    #[arg(long)]
    pub onnx_qnn_dir: Option<PathBuf>,
    /// A decoder exported by another tool (model.onnx + config.json, the
    /// model given with --model supplying tokenizer and spec) for
    /// ort-foreign rows.
    #[arg(long)]
    pub onnx_foreign: Option<PathBuf>,
    /// Quantize the weight matrices to this type at load (q4_0, q8_0,
    /// q4_k, ...; cpu rows): a float Hugging Face folder benched at
    /// quantized speed, the quantization in the load column.
    #[arg(long, value_parser = crate::cmd_convert::parse_type)]
    pub quant: Option<sotto_kernels::quant::DType>,
    /// Also bench speculative decoding with prompt-lookup drafts of up to
    /// N tokens on a quoting answer (its own section: decode rate, speed-up
    /// over plain decoding, acceptance).
    #[arg(long, value_name = "N")]
    pub lookup: Option<usize>,
    /// Also bench speculative decoding with this draft model (same
    /// vocabulary; 4 drafted tokens per pass) in the same section.
    #[arg(long, value_name = "MODEL")]
    pub draft_model: Option<PathBuf>,
    /// Also bench constrained decoding: sampled answers under the JSON
    /// Schema in FILE (its own section: the automaton's time per token and
    /// its share of a decode step, compile time).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// A LoRA adapter on the cpu rows (repeatable): a llama.cpp GGUF
    /// adapter or a PEFT folder, `PATH[:SCALE]`; applied at run time
    /// unless --lora-merge.
    #[arg(long = "lora", value_name = "PATH[:SCALE]")]
    pub lora: Vec<String>,
    /// Merge the --lora adapters into the weights at load (Q8_0 matrices,
    /// f32 for a float model).
    #[arg(long, requires = "lora")]
    pub lora_merge: bool,
    /// KV cache element types of sotto's rows (repeatable: an axis), each
    /// `T` for keys and values or `K,V`, of f16, q8_0, q4_0; with
    /// --compare llama.cpp runs the same types (a quantized V with flash
    /// attention, as llama.cpp requires).
    #[arg(long = "kv-type", value_name = "T|K,V", default_value = "f16")]
    pub kv_type: Vec<sotto_engine::KvTypes>,
    /// Print only the rows as JSON (child processes of an ISA sweep).
    #[arg(long, hide = true)]
    pub json_rows: bool,
    /// Bench random-weight GGUFs in the exact shapes of real models instead
    /// of one model: `default` (smollm2-360m, qwen2.5-0.5b, llama3.2-1b,
    /// qwen2.5-1.5b), `all` (and llama3.2-3b), or names (comma list). The
    /// files are written once into the user cache (`sweep/`) with --python
    /// (PyPI gguf, and llama-cpp-python's quantizer); --model gives the
    /// tokenizer they copy (default: the default model).
    #[arg(long, value_delimiter = ',', value_name = "SHAPES")]
    pub sweep_sizes: Vec<String>,
    /// Weight types of --sweep-sizes: q4_0, q4_k_m, q8_0 (comma list).
    #[arg(long, value_delimiter = ',', default_value = "q4_0,q4_k_m,q8_0")]
    pub sweep_types: Vec<String>,
}

impl BenchArgs {
    /// `--python`, or where it defaults to ([`llama_cpp::default_python`]).
    fn python(&self) -> String {
        self.python
            .clone()
            .unwrap_or_else(|| llama_cpp::default_python(&crate::fetch::cache_dir()))
    }

    fn axes(&self, threads: Vec<usize>) -> SweepAxes {
        SweepAxes {
            backends: self.backend.clone(),
            isas: self.isa.clone(),
            threads,
            depths: self.depth.clone(),
            n_prompt: self.n_prompt.clone(),
            n_gen: self.n_gen.clone(),
            kv_types: self.kv_type.clone(),
        }
    }
}

fn all_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `-t` with 0 and the default resolved to the core count.
fn resolve_threads(threads: &[usize]) -> Vec<usize> {
    if threads.is_empty() {
        return vec![all_cores()];
    }
    threads
        .iter()
        .map(|&t| if t == 0 { all_cores() } else { t })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    if args.repetitions == 0 {
        return Err("-r must be at least 1".into());
    }
    if !args.sweep_sizes.is_empty() {
        return run_sweep_sizes(&args);
    }
    if let Some(engine) = &args.compare {
        if engine != "llama.cpp" {
            return Err(format!("--compare {engine:?}: only llama.cpp is supported"));
        }
        if let Some(q) = args.quant {
            return Err(format!(
                "--compare with --quant {q}: llama.cpp would run the unquantized model; write \
                 it with `sotto quantize IN OUT --type {q}` and bench OUT instead"
            ));
        }
    }
    let load_model = |path: &Path| {
        match args.quant {
            None => Model::load(path),
            Some(q) => Model::load_quantized(path, q),
        }
        .map_err(|e| format!("loading {}: {e}", path.display()))
    };
    let threads = resolve_threads(&args.threads);
    let axes = args.axes(threads.clone());
    sweep::validate(&axes)?;
    let model_path = crate::resolve_model(args.model.clone())?;
    if args.compare.is_some() && model_path.is_dir() {
        return Err(format!(
            "--compare llama.cpp: {} is a Hugging Face folder, which llama.cpp does not read; \
             bench the GGUF `sotto convert` writes from it",
            model_path.display()
        ));
    }
    let instances = sweep::expand(&axes);

    let weights_bytes = {
        let model = load_model(&model_path)?;
        model
            .gguf
            .tensors()
            .iter()
            .map(|t| t.n_bytes as u64)
            .sum::<u64>()
    };

    if args.json_rows {
        let rows = run_in_process(&instances, &model_path, weights_bytes, &args)?;
        let text = serde_json::to_string(&rows).map_err(|e| format!("writing JSON: {e}"))?;
        println!("{text}");
        return Ok(());
    }

    let model = load_model(&model_path)?;
    let summary = model_summary(&model, &model_path);
    drop(model);

    let (local, remote): (Vec<Instance>, Vec<Instance>) =
        instances.into_iter().partition(|i| !needs_own_process(i));
    let mut rows = run_in_process(&local, &model_path, weights_bytes, &args)?;
    for group in child_groups(&remote) {
        rows.extend(run_child(&group, &model_path, &args)?);
    }

    if args.compare.is_some() {
        let spinner = spinner("llama.cpp (benches/llama_cpp_bench.py)");
        let python = args.python();
        let sweep = llama_cpp::LlamaCppSweep {
            python: &python,
            model: &model_path,
            n_prompt: &args.n_prompt,
            n_gen: &args.n_gen,
            threads: &threads,
            depths: &args.depth,
            kv_types: &args.kv_type,
            repetitions: args.repetitions,
            warmup: args.warmup,
            seed: args.seed,
        };
        let result = llama_cpp::run(&sweep);
        spinner.finish_and_clear();
        rows.extend(result?);
        report::attach_llama_cpp_ratios(&mut rows);
    }

    // The probe at every thread count a decode row ran with (both
    // engines), at the L3, weights and DRAM sizes.
    let mut probe_threads: Vec<usize> = rows
        .iter()
        .filter(|r| r.test == sweep::TestKind::Tg)
        .map(|r| r.threads)
        .collect();
    probe_threads.sort_unstable();
    probe_threads.dedup();
    let bandwidth_levels = if probe_threads.is_empty() {
        Vec::new()
    } else {
        let spinner = spinner("read bandwidth probe (L3, weights and DRAM sizes)");
        let levels =
            machine::probe_bandwidth_levels(summary.weights_bytes as usize, &probe_threads);
        spinner.finish_and_clear();
        levels
    };
    report::attach_bandwidth_fractions(
        &mut rows,
        summary.bytes_per_decoded_token,
        &bandwidth_levels,
    );
    // The integer dot step's peak at every thread count a CPU pp row ran
    // with, on the tier the rows ran (auto's choice unless forced).
    let mut peak_threads: Vec<usize> = rows
        .iter()
        .filter(|r| report::measures_dot_use(r))
        .map(|r| r.threads)
        .collect();
    peak_threads.sort_unstable();
    peak_threads.dedup();
    let compute_peaks = match backends::probed_isa(&args.isa) {
        Some(isa) if !peak_threads.is_empty() => {
            let spinner = spinner("integer dot peak probe");
            let peaks = peak_threads
                .iter()
                .filter_map(|&t| machine::probe_int8_dot_peak(isa, t))
                .collect();
            spinner.finish_and_clear();
            peaks
        }
        _ => Vec::new(),
    };
    report::attach_compute_fractions(&mut rows, summary.matrix_macs_per_token, &compute_peaks);
    let bandwidth = bandwidth_levels
        .iter()
        .filter(|p| p.what == "weights")
        .max_by_key(|p| p.threads)
        .cloned();

    let report = Report {
        machine: Machine::detect(),
        model: summary,
        kernel_isa_auto: backends::kernel_isa().unwrap_or_else(|e| e),
        kernel_isas_available: backends::available_isas(),
        bandwidth,
        bandwidth_levels,
        compute_peaks,
        rows,
    };
    let speculative = if args.lookup.is_some() || args.draft_model.is_some() {
        let spinner = spinner("speculative decoding on a quoting answer");
        let n_gen = args.n_gen.iter().copied().max().unwrap_or(0).max(64);
        let rows = bench::speculative::run(
            &model_path,
            &threads,
            n_gen,
            args.repetitions,
            args.lookup,
            args.draft_model.as_deref(),
        );
        spinner.finish_and_clear();
        Some(rows?)
    } else {
        None
    };
    let constrained = match &args.json_schema {
        Some(path) => {
            let schema = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let spinner = spinner("constrained decoding under the JSON Schema");
            let n_gen = args.n_gen.iter().copied().max().unwrap_or(0).max(64);
            let rows =
                bench::constrained::run(&model_path, &threads, &schema, n_gen, args.repetitions);
            spinner.finish_and_clear();
            Some(rows?)
        }
        None => None,
    };
    let text = match args.output {
        OutputFormat::Md => {
            report::markdown(&report)
                + &speculative
                    .as_deref()
                    .map(bench::speculative::markdown)
                    .unwrap_or_default()
                + &constrained
                    .as_deref()
                    .map(bench::constrained::markdown)
                    .unwrap_or_default()
        }
        OutputFormat::Json => report::json(&report)? + "\n",
        OutputFormat::Csv => report::csv(&report.rows),
    };
    print!("{text}");
    Ok(())
}

/// `--sweep-sizes`: every (shape, type) fixture benched in its own child
/// (`sotto bench -o json`, the same axes and `--compare`), then one table.
fn run_sweep_sizes(args: &BenchArgs) -> Result<(), String> {
    use bench::sizes;
    let shapes = sizes::parse_shapes(&args.sweep_sizes)?;
    let types = sizes::parse_types(&args.sweep_types)?;
    if args.quant.is_some()
        || args.lookup.is_some()
        || args.draft_model.is_some()
        || args.json_schema.is_some()
        || !args.lora.is_empty()
        || args.output == OutputFormat::Csv
    {
        return Err(
            "--sweep-sizes runs the throughput sweep only (no --quant, --lookup, \
                    --draft-model, --json-schema, --lora; -o md or json)"
                .into(),
        );
    }
    if let Some(engine) = &args.compare {
        if engine != "llama.cpp" {
            return Err(format!("--compare {engine:?}: only llama.cpp is supported"));
        }
    }
    let threads = resolve_threads(&args.threads);
    sweep::validate(&args.axes(threads.clone()))?;
    let vocab = crate::resolve_model(args.model.clone())?;
    let cache = crate::fetch::cache_dir();
    let exe = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let python = args.python();
    let mut results = Vec::new();
    for shape in &shapes {
        for wtype in &types {
            let path = sizes::ensure_fixture(&python, &cache, shape, wtype, &vocab)?;
            let mut child = vec![
                "bench".to_string(),
                "-m".into(),
                path.display().to_string(),
                "-o".into(),
                "json".into(),
            ];
            for (flag, value) in [
                ("-p", list(&args.n_prompt)),
                ("-n", list(&args.n_gen)),
                ("-t", list(&threads)),
                ("-d", list(&args.depth)),
                ("--isa", args.isa.join(",")),
                ("--backend", args.backend.join(",")),
                ("-r", args.repetitions.to_string()),
                ("--warmup", args.warmup.to_string()),
                ("--seed", args.seed.to_string()),
                ("--python", python.clone()),
            ] {
                child.push(flag.to_string());
                child.push(value);
            }
            if let Some(engine) = &args.compare {
                child.push("--compare".into());
                child.push(engine.clone());
            }
            eprintln!("bench {} {wtype} ({})", shape.model, path.display());
            let out = Command::new(&exe)
                .args(&child)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| format!("running {}: {e}", exe.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "bench of {} failed ({})",
                    path.display(),
                    out.status
                ));
            }
            let report: Report = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("bench of {}: reading its JSON: {e}", path.display()))?;
            results.push(sizes::SizeResult {
                shape: *shape,
                wtype: wtype.to_string(),
                report,
            });
        }
    }
    let text = match args.output {
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "shape": r.shape.name,
                        "model": r.shape.model,
                        "type": r.wtype,
                        "report": r.report,
                    })
                })
                .collect();
            serde_json::to_string_pretty(&v).map_err(|e| format!("writing JSON: {e}"))? + "\n"
        }
        _ => sizes::markdown(&results),
    };
    print!("{text}");
    Ok(())
}

fn model_summary(model: &Model, path: &Path) -> ModelSummary {
    let s = &model.spec;
    let tensors = model.gguf.tensors();
    let weights_bytes: u64 = tensors.iter().map(|t| t.n_bytes as u64).sum();
    let n_params: u64 = tensors.iter().map(|t| t.n_elements() as u64).sum();
    // A decode step reads every matrix once, but only one row of the
    // embedding table, unless the output projection is that same table.
    let embd = tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .map_or(0, |t| t.n_bytes as u64);
    // A prompt token goes through every layer matrix; the output
    // projection runs once per prompt, norms and biases are noise.
    let matrix_macs_per_token: u64 = tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() >= 2)
        .map(|t| t.n_elements() as u64)
        .sum();
    let bytes_per_decoded_token = if s.tied_embeddings {
        weights_bytes
    } else {
        weights_bytes - embd
    };
    ModelSummary {
        path: path.display().to_string(),
        name: s.name.clone(),
        arch: s.arch.clone(),
        n_layer: s.n_layer,
        d_model: s.d_model,
        n_head: s.n_head,
        n_kv_head: s.n_kv_head,
        ffn_dim: s.ffn_dim,
        vocab_size: s.vocab_size,
        n_params,
        weights_bytes,
        bytes_per_decoded_token,
        matrix_macs_per_token,
    }
}

/// A forced ISA, and a backend whose thread count is fixed per process
/// (candle), need a fresh process.
fn needs_own_process(inst: &Instance) -> bool {
    (inst.isa != "auto" && inst.isa != ISA_NOT_APPLICABLE)
        || threads_fixed_per_process(&inst.backend)
}

fn threads_fixed_per_process(backend: &str) -> bool {
    backend == "candle"
}

/// One child process: the ISA it forces, its backends, and (for backends
/// whose pool is per process) its one thread count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChildGroup {
    isa: String,
    backends: Vec<String>,
    threads: Vec<usize>,
}

fn child_groups(instances: &[Instance]) -> Vec<ChildGroup> {
    let mut groups: Vec<ChildGroup> = Vec::new();
    for (isa, backends) in sweep::child_groups(instances) {
        for b in backends {
            let threads: Vec<usize> = instances
                .iter()
                .filter(|i| i.backend == b && (i.isa == isa || i.isa == ISA_NOT_APPLICABLE))
                .map(|i| i.threads)
                .collect();
            if threads_fixed_per_process(&b) {
                groups.extend(threads.iter().map(|&t| ChildGroup {
                    isa: isa.clone(),
                    backends: vec![b.clone()],
                    threads: vec![t],
                }));
            } else {
                match groups.iter_mut().find(|g| {
                    g.isa == isa
                        && g.threads == threads
                        && !threads_fixed_per_process(&g.backends[0])
                }) {
                    Some(g) => g.backends.push(b.clone()),
                    None => groups.push(ChildGroup {
                        isa: isa.clone(),
                        backends: vec![b.clone()],
                        threads,
                    }),
                }
            }
        }
    }
    groups
}

fn list(xs: &[usize]) -> String {
    xs.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn child_args(group: &ChildGroup, model: &Path, args: &BenchArgs) -> Vec<String> {
    let mut out = vec![
        "bench".to_string(),
        "--json-rows".to_string(),
        "-m".to_string(),
        model.display().to_string(),
    ];
    for (flag, value) in [
        ("-p", list(&args.n_prompt)),
        ("-n", list(&args.n_gen)),
        ("-t", list(&group.threads)),
        ("-d", list(&args.depth)),
        ("--isa", group.isa.clone()),
        ("--backend", group.backends.join(",")),
        ("-r", args.repetitions.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--seed", args.seed.to_string()),
    ] {
        out.push(flag.to_string());
        out.push(value);
    }
    for kv in &args.kv_type {
        out.push("--kv-type".to_string());
        out.push(kv.to_string());
    }
    for lora in &args.lora {
        out.push("--lora".to_string());
        out.push(lora.clone());
    }
    if args.lora_merge {
        out.push("--lora-merge".to_string());
    }
    if let Some(q) = args.quant {
        out.push("--quant".to_string());
        out.push(q.name().to_string());
    }
    for (flag, dir) in [
        ("--onnx-dir", &args.onnx_dir),
        ("--onnx-qnn-dir", &args.onnx_qnn_dir),
        ("--onnx-foreign", &args.onnx_foreign),
    ] {
        if let Some(d) = dir {
            out.push(flag.to_string());
            out.push(d.display().to_string());
        }
    }
    out
}

fn run_child(group: &ChildGroup, model: &Path, args: &BenchArgs) -> Result<Vec<BenchRow>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the sotto binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(child_args(group, model, args));
    if group.isa == "auto" {
        cmd.env_remove("SOTTO_ISA");
    } else {
        cmd.env("SOTTO_ISA", &group.isa);
    }
    if group.backends.iter().any(|b| threads_fixed_per_process(b)) {
        let t = group
            .threads
            .first()
            .copied()
            .unwrap_or_else(all_cores)
            .to_string();
        cmd.env("CANDLE_NUM_THREADS", &t)
            .env("RAYON_NUM_THREADS", &t);
    }
    // The child draws its own progress bar on the inherited stderr.
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("starting a bench child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bench child for --isa {} --backend {} failed ({})",
            group.isa,
            group.backends.join(","),
            out.status
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("bench child printed rows that do not parse: {e}"))
}

/// KV slots graphs need for every test of the sweep, rounded up to 64.
fn graph_context(instances: &[Instance]) -> usize {
    let most = instances
        .iter()
        .flat_map(|i| &i.tests)
        .map(|t| t.positions())
        .max()
        .unwrap_or(0);
    most.div_ceil(64).max(1) * 64
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner().with_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn run_in_process(
    instances: &[Instance],
    model: &Path,
    weights_bytes: u64,
    args: &BenchArgs,
) -> Result<Vec<BenchRow>, String> {
    let runs_per_test = (args.warmup + args.repetitions) as u64;
    let total: u64 = instances
        .iter()
        .map(|i| i.tests.len() as u64 * runs_per_test)
        .sum();
    if total == 0 {
        return Ok(Vec::new());
    }
    let lora = backends::LoraOptions::parse(&args.lora, args.lora_merge)?;
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    let mut rng = TokenRng::new(args.seed);
    let mut rows = Vec::new();
    for inst in instances {
        pb.set_message(format!(
            "loading {} (t{}, KV {})",
            inst.backend, inst.threads, inst.kv
        ));
        machine::reset_peak_rss();
        let graphs = backends::OnnxGraphs {
            cpu_dir: args.onnx_dir.clone(),
            qnn_dir: args.onnx_qnn_dir.clone(),
            context: graph_context(instances),
            foreign_dir: args.onnx_foreign.clone(),
        };
        let mut loaded = backends::load_backend(
            &inst.backend,
            model,
            inst.threads,
            &graphs,
            args.quant,
            &lora,
            inst.kv,
        )?;
        let describe = loaded.backend.describe();
        for test in &inst.tests {
            let label = sweep::test_label(test.kind, test.tokens, test.depth);
            pb.set_message(format!(
                "{} {} t{} {label}",
                inst.backend, loaded.isa, inst.threads
            ));
            let (m, cache) = runner::measure(
                &mut loaded,
                test,
                args.repetitions,
                args.warmup,
                &mut rng,
                &mut || pb.inc(1),
            )
            .map_err(|e| format!("{} {label} (t{}): {e}", inst.backend, inst.threads))?;
            let kv_bytes = match loaded.external_kv_bytes_per_position {
                Some(per_pos) => (per_pos * test.positions()) as u64,
                None => cache.bytes() as u64,
            };
            let ctx = RowContext {
                backend: &inst.backend,
                describe: describe.clone(),
                isa: loaded.isa.clone(),
                threads: inst.threads,
                load_s: loaded.load.as_secs_f64(),
                weights_bytes,
                kv_bytes,
                kv_type: inst.kv.to_string(),
                packing: loaded.packing.clone(),
            };
            rows.push(runner::summarize(test, &m, &ctx));
        }
    }
    pb.finish_and_clear();
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(line: &str) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))
            .unwrap()
            .bench
    }

    #[test]
    fn comma_lists_and_defaults_parse() {
        let a = parse("-p 128,512 -n 128 -t 1,2 -r 3 --compare llama.cpp");
        assert_eq!(a.n_prompt, [128, 512]);
        assert_eq!(a.n_gen, [128]);
        assert_eq!(a.threads, [1, 2]);
        assert_eq!(a.repetitions, 3);
        assert_eq!(a.compare.as_deref(), Some("llama.cpp"));
        assert_eq!(a.isa, ["auto"]);
        assert_eq!(a.backend, ["cpu"]);
        assert_eq!(a.depth, [0]);
        assert_eq!(a.output, OutputFormat::Md);
        assert!(!a.json_rows);

        let a = parse(
            "-p 8 -p 16 --isa auto,avx2,scalar --backend cpu,candle -o json -d 0,256 --warmup 0",
        );
        assert_eq!(a.n_prompt, [8, 16], "repeated flags append");
        assert_eq!(a.isa, ["auto", "avx2", "scalar"]);
        assert_eq!(a.backend, ["cpu", "candle"]);
        assert_eq!(a.output, OutputFormat::Json);
        assert_eq!(a.depth, [0, 256]);
        assert_eq!(a.warmup, 0);
        assert_eq!(parse("--output markdown").output, OutputFormat::Md);
        assert_eq!(parse("--output csv").output, OutputFormat::Csv);
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(Cli::try_parse_from(["bench", "-p", "128,abc"]).is_err());
        assert!(Cli::try_parse_from(["bench", "-t", "-1"]).is_err());
        assert!(Cli::try_parse_from(["bench", "-o", "xml"]).is_err());
    }

    #[test]
    fn thread_defaults_resolve_to_cores() {
        assert_eq!(resolve_threads(&[]), [all_cores()]);
        assert_eq!(resolve_threads(&[0, 3]), [all_cores(), 3]);
    }

    #[test]
    fn forced_isas_and_candle_go_to_children_with_their_own_threads() {
        let a = parse("--isa auto,scalar --backend cpu,candle -t 1,2");
        let inst = sweep::expand(&a.axes(vec![1, 2]));
        let (local, remote): (Vec<Instance>, Vec<Instance>) =
            inst.into_iter().partition(|i| !needs_own_process(i));
        assert_eq!(
            local
                .iter()
                .map(|i| (i.backend.as_str(), i.threads))
                .collect::<Vec<_>>(),
            [("cpu", 1), ("cpu", 2)]
        );
        let groups = child_groups(&remote);
        let g = |isa: &str, b: &str, t: &[usize]| ChildGroup {
            isa: isa.into(),
            backends: vec![b.into()],
            threads: t.to_vec(),
        };
        assert_eq!(
            groups,
            [
                g("auto", "candle", &[1]),
                g("auto", "candle", &[2]),
                g("scalar", "cpu", &[1, 2])
            ]
        );

        let argv = child_args(&groups[2], Path::new("/m.gguf"), &a).join(" ");
        assert_eq!(argv, "bench --json-rows -m /m.gguf -p 512 -n 128 -t 1,2 -d 0 --isa scalar --backend cpu -r 5 --warmup 1 --seed 1234 --kv-type f16");
        let a = parse("--kv-type q8_0 --kv-type q8_0,q4_0 --isa scalar");
        let argv = child_args(&groups[2], Path::new("/m.gguf"), &a).join(" ");
        assert!(
            argv.ends_with("--kv-type q8_0 --kv-type q8_0,q4_0"),
            "{argv}"
        );
        let inst = sweep::expand(&a.axes(vec![1]));
        assert_eq!(inst.len(), 2, "one instance per KV type");
        assert!(Cli::try_parse_from(["bench", "--kv-type", "q5_0"]).is_err());
    }
}
