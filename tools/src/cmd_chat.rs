//! `sotto chat`: one-shot or interactive, streaming to the terminal.

use crate::error::CliError;
use crate::resolve_model;
use crate::sampling::GenerationArgs;
use sotto_bridge::StorageKey;
use sotto_engine::{
    AdapterSpec, BackendChoice, BackendKind, CancelToken, Chat, ContextPolicy, CpuOptions,
    GenerateOptions, LoadedModel, OrtOptions, Reply,
};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// The user message; without it, an interactive multi-turn session.
    pub prompt: Option<String>,
    /// GGUF model file (default: SmolLM2-135M-Instruct Q4_1, fetched once).
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// System message (without one the template may insert the model's own).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Chat with a file that has no chat template in ChatML (the documented
    /// default). Without it such a file, usually a base model, is refused
    /// with a pointer to `sotto complete`.
    #[arg(long)]
    pub chatml: bool,
    /// Where the model runs: cpu (sotto's kernels), ort (exported graphs on
    /// ONNX Runtime), hybrid (prefill on the graphs, decode on the CPU).
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: ChatBackend,
    /// Graphs for --backend ort|hybrid: a directory written by `sotto
    /// export`, or a decoder exported by another tool (a directory with
    /// model.onnx and config.json in the Hugging Face/optimum layout, or
    /// the .onnx file; --backend ort only). A foreign graph replaces the
    /// weights only: tokenizer, chat template and model description come
    /// from --model, a GGUF of the same model, checked against config.json.
    #[arg(long, alias = "onnx")]
    pub onnx_dir: Option<PathBuf>,
    /// Execution providers in priority order: qnn, nnapi, coreml, xnnpack, openvino, cpu.
    /// QNN options follow its name: `qnn:soc_model=69:htp_performance_mode=burst,cpu`.
    #[arg(long, default_value = "cpu")]
    pub ep: String,
    /// Refuse CPU fallback: every node on the first EPs, or an error before running.
    #[arg(long)]
    pub npu_only: bool,
    /// Quantize the weight matrices to this type at load (q4_0, q4_1, q8_0,
    /// q4_k, ...; CPU backend), e.g. to run a float Hugging Face folder at
    /// quantized speed. The load time printed includes it.
    #[arg(long, value_parser = crate::cmd_convert::parse_type)]
    pub quant: Option<sotto_kernels::quant::DType>,
    /// A LoRA adapter to apply (repeatable, in order): a llama.cpp GGUF
    /// adapter or a PEFT folder (adapter_config.json +
    /// adapter_model.safetensors), with an optional `:SCALE` on its trained
    /// scale (default 1). Applied at run time (`y = W·x + s·B·(A·x)`), the
    /// base weights untouched; --backend cpu only.
    #[arg(long = "lora", value_name = "PATH[:SCALE]")]
    pub lora: Vec<String>,
    /// Merge the --lora adapters into the weights at load instead (each
    /// adapted matrix dequantized, updated and stored as Q8_0, or f32 for
    /// a float model).
    #[arg(long, requires = "lora")]
    pub lora_merge: bool,
    /// What a full context does: error (stop), shift (llama.cpp's context
    /// shift: the system message stays, half of the rest of the cache is
    /// dropped and the keys re-rotated, nothing recomputed) or trim-turns
    /// (the oldest whole turns leave the prompt, the rest is prefilled
    /// again).
    #[arg(long, value_enum, default_value = "error")]
    pub context_policy: ContextPolicyArg,
    /// Resume the conversation saved in this file (when it exists) and
    /// save it there on exit: messages and KV cache, so the next run
    /// prefills nothing again; sealed under --session-key and bound to
    /// the model file. A damaged, foreign or stale file is refused, not
    /// overwritten.
    #[arg(long, requires = "session_key")]
    pub session: Option<PathBuf>,
    /// The 32-byte key (a file of exactly 32 bytes) --session is sealed
    /// under.
    #[arg(long, requires = "session")]
    pub session_key: Option<PathBuf>,
}

/// `--context-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ContextPolicyArg {
    Error,
    Shift,
    TrimTurns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChatBackend {
    Cpu,
    Ort,
    Hybrid,
}

impl ChatArgs {
    /// The engine's description of the backend these flags ask for.
    fn backend_choice(&self) -> Result<BackendChoice, CliError> {
        let cpu = CpuOptions {
            threads: self.generation.threads,
            isa: None,
            kv: self.generation.kv_type,
            packed_cache: None,
        };
        let graphs = || -> Result<OrtOptions, CliError> {
            let dir = self.onnx_dir.clone().ok_or_else(|| {
                CliError::Usage(
                    "--backend ort|hybrid needs --onnx-dir: graphs from `sotto export`, or (ort \
                     only) a foreign export with model.onnx and config.json"
                        .into(),
                )
            })?;
            Ok(OrtOptions {
                graphs: dir,
                ep_chain: self.ep.clone(),
                npu_only: self.npu_only,
                threads: self.generation.threads,
            })
        };
        Ok(match self.backend {
            ChatBackend::Cpu => BackendChoice::Cpu(cpu),
            ChatBackend::Ort => BackendChoice::Ort(graphs()?),
            ChatBackend::Hybrid => BackendChoice::Hybrid {
                graphs: graphs()?,
                cpu,
            },
        })
    }
}

/// Where answers go. Standard output carries only the answer, but native
/// libraries a backend loads write to file descriptor 1 on their own (the
/// QNN HTP library prints `# LIBNATIVE: …` lines): answers are written to a
/// private duplicate of descriptor 1, and descriptor 1 itself points at
/// standard error for everything else.
struct AnswerOut(std::fs::File);

impl AnswerOut {
    fn claim_stdout() -> Result<Self, CliError> {
        let io = |source| CliError::Io {
            what: "redirecting standard output".into(),
            source,
        };
        std::io::stdout().flush().map_err(io)?;
        let private = rustix::io::dup(std::io::stdout()).map_err(|e| io(e.into()))?;
        rustix::stdio::dup2_stdout(std::io::stderr()).map_err(|e| io(e.into()))?;
        Ok(Self(std::fs::File::from(private)))
    }
}

pub fn run(args: ChatArgs) -> Result<(), CliError> {
    let path = resolve_model(args.model.clone()).map_err(CliError::ModelFetch)?;
    let mut answers = AnswerOut::claim_stdout()?;
    let adapters = args
        .lora
        .iter()
        .map(|a| AdapterSpec::parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = if args.lora_merge { &adapters[..] } else { &[] };
    let loaded = LoadedModel::open_with(&path, args.backend_choice()?, args.quant, merged)?;
    let t_adapters = std::time::Instant::now();
    let unmerged = if args.lora_merge {
        &[][..]
    } else {
        &adapters[..]
    };
    let unmerged = unmerged
        .iter()
        .map(|a| loaded.load_adapter(a))
        .collect::<Result<Vec<_>, _>>()?;
    let t_adapters = t_adapters.elapsed();
    if loaded.model().template.is_fallback() && !args.chatml {
        return Err(CliError::Usage(format!(
            "{} has no chat template (tokenizer.chat_template), so it is probably a base \
             model: continue raw text with `sotto complete --model {} PROMPT`, or chat in \
             ChatML anyway with `sotto chat --chatml`",
            path.display(),
            path.display()
        )));
    }
    if !args.generation.quiet {
        if let Some(report) = loaded.placement_report() {
            let foreign = if loaded.kind() == BackendKind::OrtForeign {
                "foreign ONNX export (tokenizer and template from the GGUF); "
            } else {
                ""
            };
            eprintln!("sotto: {foreign}placement (before running)\n{report}");
        }
        let model = loaded.model();
        let quantized = args
            .quant
            .map(|q| format!(", quantized to {q} at load"))
            .unwrap_or_default();
        eprintln!(
            "sotto: {} ({}, {} layers{quantized}) loaded in {:.0} ms on {}",
            path.display(),
            model.spec.arch,
            model.spec.n_layer,
            loaded.load_time().as_secs_f64() * 1e3,
            loaded.describe()
        );
        for a in &adapters {
            let how = if args.lora_merge {
                "merged at load".to_string()
            } else {
                format!("unmerged, read in {:.0} ms", t_adapters.as_secs_f64() * 1e3)
            };
            eprintln!(
                "sotto: LoRA adapter {} x{} ({how})",
                a.path.display(),
                a.scale
            );
        }
    }
    let mut chat = loaded.chat_with(args.generation.context, args.system.as_deref(), &unmerged)?;
    let saved = match (&args.session, &args.session_key) {
        (Some(file), Some(key_file)) => Some((file.clone(), read_session_key(key_file)?)),
        _ => None,
    };
    if let Some((file, key)) = &saved {
        if file.exists() {
            chat.restore(file, key)?;
            if !args.generation.quiet {
                eprintln!(
                    "sotto: resumed {} messages ({} tokens cached) from {}",
                    chat.messages().len(),
                    chat.session().cached_tokens().len(),
                    file.display()
                );
            }
        }
    }
    chat.set_context_policy(match args.context_policy {
        ContextPolicyArg::Error => ContextPolicy::Error,
        ContextPolicyArg::Shift => ContextPolicy::Shift {
            keep: chat.pinned_prefix_len()?,
        },
        ContextPolicyArg::TrimTurns => ContextPolicy::TrimTurns,
    });
    let cancel = CancelToken::new();
    {
        let c = cancel.clone();
        // Ctrl-C stops the answer being written, not the program.
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    let opts = args.generation.options(Some(cancel.clone()))?;
    match &args.prompt {
        Some(p) => turn(&mut chat, &mut answers, p, &opts, args.generation.quiet).map(|_| ())?,
        None => repl(
            &mut chat,
            &mut answers,
            &opts,
            &cancel,
            args.generation.quiet,
        )?,
    }
    if let Some((file, key)) = &saved {
        chat.save(file, key)?;
    }
    Ok(())
}

/// The key of `--session-key`: a file of exactly 32 bytes.
fn read_session_key(path: &Path) -> Result<StorageKey, CliError> {
    let bytes = std::fs::read(path).map_err(|source| CliError::Io {
        what: format!("reading the session key {}", path.display()),
        source,
    })?;
    let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        CliError::Usage(format!(
            "--session-key {} holds {} bytes, a key is exactly 32",
            path.display(),
            b.len()
        ))
    })?;
    Ok(StorageKey::from_bytes(key))
}

fn turn(
    chat: &mut Chat,
    answers: &mut AnswerOut,
    user: &str,
    opts: &GenerateOptions,
    quiet: bool,
) -> Result<Reply, CliError> {
    let out = &mut answers.0;
    let reply = chat.send(user, opts, &mut |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    });
    let _ = writeln!(out);
    let _ = out.flush();
    let reply = reply?;
    if !quiet {
        let s = &reply.stats;
        eprintln!(
            "sotto: prompt {} tok ({} reused) at {:.1} tok/s, ttft {:.0} ms; {} tok at {:.1} tok/s; stop: {:?}{}{}",
            s.prompt_tokens,
            s.reused_tokens,
            s.prefill_tps(),
            s.time_to_first_token.as_secs_f64() * 1e3,
            s.generated_tokens,
            s.decode_tps(),
            s.stop,
            crate::sampling::speculation_note(s),
            crate::sampling::constraint_note(s)
        );
        let shifted = chat.session().shifted_out();
        if shifted > 0 {
            eprintln!("sotto: context shifted, {shifted} tokens of the conversation dropped from the cache");
        }
    }
    Ok(reply)
}

fn repl(
    chat: &mut Chat,
    answers: &mut AnswerOut,
    opts: &GenerateOptions,
    cancel: &CancelToken,
    quiet: bool,
) -> Result<(), CliError> {
    eprintln!("sotto: interactive chat; /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops an answer");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|source| CliError::Io {
            what: "reading standard input".into(),
            source,
        })?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                let system = chat
                    .messages()
                    .first()
                    .filter(|m| m.role == "system")
                    .cloned();
                chat.set_messages(system.into_iter().collect());
                eprintln!("sotto: conversation reset");
                continue;
            }
            _ => {}
        }
        cancel.reset();
        match turn(chat, answers, line, opts, quiet) {
            Ok(_) => {}
            // A cancelled or overflowing turn leaves the history as it was.
            Err(e) => eprintln!("sotto: {e}"),
        }
    }
    Ok(())
}
