//! `sotto export MODEL OUT_DIR --target cpu|qnn`: the model as static-shape
//! ONNX graphs (a prefill chunk and a one-token decode, KV cache as fixed
//! inputs/outputs) plus their manifest, for `sotto chat --backend ort|hybrid`.
//!
//! * `cpu`: Q4_0/Q4_1 blocks re-packed as MatMulNBits, for ONNX Runtime's CPU
//!   EP; needs no runtime to export.
//! * `qnn`: QDQ graphs (int8 per-channel weights, uint16 or uint8
//!   activations) for Qualcomm's QNN HTP; the activation ranges are
//!   calibrated by running the float graphs on the CPU EP, so this target
//!   needs the `ort` feature and scripts/ort-deps.sh.

use std::path::PathBuf;
use std::time::Instant;

use crate::error::CliError;
use clap::ValueEnum;
use sotto_engine::onnx::ActivationType;
use sotto_engine::onnx::Manifest;
use sotto_engine::{export_graphs, GraphTarget};
use sotto_models::Model;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// MatMulNBits graphs for the CPU EP.
    Cpu,
    /// QDQ graphs for QNN HTP (calibrated on the CPU EP).
    Qnn,
    /// f32 graphs, which QNN HTP runs in f16 (no calibration).
    QnnFp16,
    /// Mixed precision for QNN HTP: QDQ on the weight MatMuls (int8
    /// weights, calibrated 16-bit activations), the rest in f16.
    QnnMixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Activations {
    U16,
    U8,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// GGUF model file.
    pub model: PathBuf,
    /// Directory for the graphs and the manifest (created if missing).
    pub out_dir: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    pub target: Target,
    /// Tokens per prefill run.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// KV cache slots: the longest conversation the graphs can hold.
    #[arg(long, default_value_t = 512)]
    pub context: usize,
    /// QDQ activation type (--target qnn).
    #[arg(long, value_enum, default_value = "u16")]
    pub activations: Activations,
    /// Text whose tokens calibrate the QDQ ranges (--target qnn; default: a
    /// built-in chat sample).
    #[arg(long)]
    pub calibration_text: Option<String>,
}

/// Chat-shaped text: the activations a chat will produce.
const CALIBRATION_TEXT: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
<|im_start|>user\nWhat is the capital of France, and why is it famous? Answer in two sentences.<|im_end|>\n\
<|im_start|>assistant\nThe capital of France is Paris. It is famous for the Eiffel Tower, the Louvre, \
its cafés and its long history as a centre of art, science and politics.<|im_end|>\n\
<|im_start|>user\nWrite a Python function that adds 2 and 3, then explain 17 * 23 = 391.<|im_end|>\n\
<|im_start|>assistant\ndef add():\n    return 2 + 3\n\nSeventeen times twenty-three is three hundred ninety-one.";

pub fn run(args: ExportArgs) -> Result<(), String> {
    let t0 = Instant::now();
    let manifest = export(&args).map_err(|e| e.to_string())?;
    report(&args, &manifest, t0);
    Ok(())
}

/// Exports with the defaults of everything but the shapes (`sotto bench`'s
/// graphs).
pub fn export_to(
    model: &std::path::Path,
    out_dir: &std::path::Path,
    target: Target,
    chunk: usize,
    context: usize,
) -> Result<Manifest, String> {
    export(&ExportArgs {
        model: model.to_path_buf(),
        out_dir: out_dir.to_path_buf(),
        target,
        chunk,
        context,
        activations: Activations::U16,
        calibration_text: None,
    })
    .map_err(|e| e.to_string())
}

/// The engine's export target for these flags.
fn graph_target(args: &ExportArgs) -> GraphTarget {
    let activations = match args.activations {
        Activations::U16 => ActivationType::Uint16,
        Activations::U8 => ActivationType::Uint8,
    };
    match args.target {
        Target::Cpu => GraphTarget::Cpu,
        Target::Qnn => GraphTarget::Qnn(activations),
        Target::QnnFp16 => GraphTarget::QnnFp16,
        Target::QnnMixed => GraphTarget::QnnMixed(activations),
    }
}

fn export(args: &ExportArgs) -> Result<Manifest, CliError> {
    let target = graph_target(args);
    let model = Model::load(&args.model).map_err(|source| sotto_engine::Error::ModelFile {
        path: args.model.clone(),
        source,
    })?;
    let calibration = match target {
        GraphTarget::Qnn(_) | GraphTarget::QnnMixed(_) => {
            let text = args.calibration_text.as_deref().unwrap_or(CALIBRATION_TEXT);
            let tokens = model
                .tokenizer
                .encode(text, true)
                .map_err(sotto_engine::Error::Model)?;
            eprintln!(
                "sotto: calibrating on {} tokens on the CPU EP",
                tokens.len().min(args.context)
            );
            tokens
        }
        _ => Vec::new(),
    };
    Ok(export_graphs(
        &model,
        &args.out_dir,
        target,
        args.chunk,
        args.context,
        &calibration,
    )?)
}

fn report(args: &ExportArgs, m: &Manifest, t0: Instant) {
    eprintln!(
        "sotto: exported {} as {:?} graphs (prefill {} tokens, decode 1, context {}) to {} in {:.1} s",
        m.model,
        m.quantization,
        m.chunk,
        m.context,
        args.out_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    let ep = match args.target {
        Target::Cpu => "cpu",
        Target::Qnn | Target::QnnFp16 | Target::QnnMixed => "qnn --npu-only",
    };
    eprintln!(
        "sotto: run it with `sotto chat --backend ort --onnx-dir {} --ep {ep}` (or --backend hybrid)",
        args.out_dir.display()
    );
}
