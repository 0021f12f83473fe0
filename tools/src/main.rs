//! `sotto`: the command line of the Sotto engine.
//!
//! Standard output carries only answer text (so it can be piped); progress,
//! statistics and logs go to standard error.

mod cmd_bench;
mod cmd_chat;
mod cmd_inspect;
mod fetch;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "sotto", version, about = "On-device LLM assistant engine: chat, bench, inspect")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Chat with a model: one-shot with a PROMPT, an interactive REPL without.
    Chat(cmd_chat::ChatArgs),
    /// Show a model file: architecture, hyper-parameters, tokenizer, template, tensors.
    Inspect {
        /// GGUF file (default: the default model, fetched if needed).
        model: Option<PathBuf>,
        /// Also list every metadata key.
        #[arg(long)]
        metadata: bool,
    },
    /// Fetch the default model into the user cache and print its path.
    Fetch,
    /// Benchmark prefill and decode (llama-bench style sweeps, --compare llama.cpp).
    Bench(cmd_bench::BenchArgs),
}

/// Resolves `--model`, fetching the default model when none is given.
pub fn resolve_model(model: Option<PathBuf>) -> Result<PathBuf, String> {
    match model {
        Some(p) => Ok(p),
        None => match std::env::var_os("SOTTO_MODEL") {
            Some(p) => Ok(PathBuf::from(p)),
            None => fetch::ensure_default_model(),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(args) => cmd_chat::run(args),
        Command::Inspect { model, metadata } => cmd_inspect::run(model, metadata),
        Command::Fetch => fetch::ensure_default_model().map(|p| println!("{}", p.display())),
        Command::Bench(args) => cmd_bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto: error: {e}");
            ExitCode::FAILURE
        }
    }
}
