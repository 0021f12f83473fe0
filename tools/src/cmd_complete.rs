//! `sotto complete`: raw continuation of a text, no chat template, streaming
//! to standard output. For base models (Gemma-3-270M) and for scripts.
//!
//! The prompt is tokenized as llama.cpp's command-line tools do: BOS (and
//! EOS) where the file asks for them (`tokenizer.ggml.add_bos_token`,
//! `add_eos_token`), special-token text parsed unless `--no-special`.
//! Standard output carries only the continuation; statistics go to stderr.

use crate::error::CliError;
use crate::resolve_model;
use crate::sampling::GenerationArgs;
use sotto_engine::{BackendChoice, CancelToken, CpuOptions, LoadedModel};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CompleteArgs {
    /// The text to continue; `-` reads it from standard input.
    pub prompt: String,
    /// GGUF model file (default: SmolLM2-135M-Instruct Q4_1, fetched once).
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Keep special-token text in the prompt (`<|im_start|>`,
    /// `<start_of_turn>`) as plain text instead of special tokens.
    #[arg(long)]
    pub no_special: bool,
}

pub fn run(args: CompleteArgs) -> Result<(), CliError> {
    let text = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| CliError::Io {
                what: "reading the prompt from standard input".into(),
                source,
            })?;
        s
    } else {
        args.prompt.clone()
    };
    let path = resolve_model(args.model.clone()).map_err(CliError::ModelFetch)?;
    let cpu = BackendChoice::Cpu(CpuOptions {
        threads: args.generation.threads,
        isa: None,
        kv: args.generation.kv_type,
        packed_cache: None,
    });
    let loaded = LoadedModel::open(&path, cpu)?;
    let model = loaded.model();
    let prompt = model
        .tokenizer
        .encode_with_special(&text, !args.no_special)
        .map_err(sotto_engine::Error::from)?;
    if prompt.is_empty() {
        return Err(CliError::Usage(format!(
            "the prompt is empty and {} adds no BOS token: give some text to continue",
            path.display()
        )));
    }
    let mut session = loaded.session(args.generation.context)?;
    if !args.generation.quiet {
        eprintln!(
            "sotto: {} ({}, {} layers) loaded in {:.0} ms on {}; prompt {} tokens",
            path.display(),
            model.spec.arch,
            model.spec.n_layer,
            loaded.load_time().as_secs_f64() * 1e3,
            loaded.describe(),
            prompt.len()
        );
    }
    let cancel = CancelToken::new();
    {
        let c = cancel.clone();
        // Ctrl-C stops the continuation, which is then printed as it stands.
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    let opts = args.generation.options(Some(cancel))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let stats = session.generate(&prompt, &opts, &mut |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    });
    let _ = writeln!(out);
    let _ = out.flush();
    let s = stats?;
    if !args.generation.quiet {
        eprintln!(
            "sotto: prompt {} tok at {:.1} tok/s, ttft {:.0} ms; {} tok at {:.1} tok/s; stop: {:?}{}{}",
            s.prompt_tokens,
            s.prefill_tps(),
            s.time_to_first_token.as_secs_f64() * 1e3,
            s.generated_tokens,
            s.decode_tps(),
            s.stop,
            crate::sampling::speculation_note(&s),
            crate::sampling::constraint_note(&s)
        );
    }
    Ok(())
}
