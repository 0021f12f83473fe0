//! `sotto chat`: one-shot or interactive, streaming to the terminal.

use crate::resolve_model;
use crate::sampling::GenerationArgs;
use sotto_engine::{Backend, CancelToken, Chat, CpuBackend, GenerateOptions, Reply, Session};
use sotto_models::Model;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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
    /// Worker threads (0 = all cores).
    #[arg(long, short, default_value_t = 0)]
    pub threads: usize,
    /// Context length in tokens (capped by the model's).
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Print no statistics on standard error.
    #[arg(long, short)]
    pub quiet: bool,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChatBackend {
    Cpu,
    Ort,
    Hybrid,
}

/// The backend `args` ask for on `model`.
fn make_backend(args: &ChatArgs, model: &Arc<Model>) -> Result<Box<dyn Backend>, String> {
    let cpu = || CpuBackend::new(model.clone(), args.threads).map_err(|e| e.to_string());
    if args.backend == ChatBackend::Cpu {
        return Ok(Box::new(cpu()?));
    }
    let dir = args.onnx_dir.as_deref().ok_or(
        "--backend ort|hybrid needs --onnx-dir: graphs from `sotto export`, or (ort only) \
             a foreign export with model.onnx and config.json",
    )?;
    open_ort(args, model, dir, &cpu)
}

#[cfg(feature = "ort")]
fn open_ort(
    args: &ChatArgs,
    model: &Arc<Model>,
    dir: &std::path::Path,
    cpu: &dyn Fn() -> Result<CpuBackend, String>,
) -> Result<Box<dyn Backend>, String> {
    use sotto_engine::ort::{
        is_foreign_export, Ep, ForeignDecoder, HybridBackend, OrtConfig, OrtDecoder,
    };
    let config = OrtConfig {
        eps: Ep::parse_chain(&args.ep).map_err(|e| e.to_string())?,
        npu_only: args.npu_only,
        intra_threads: args.threads,
        ..Default::default()
    };
    if is_foreign_export(dir) {
        if args.backend == ChatBackend::Hybrid {
            return Err(format!(
                "{}: --backend hybrid needs graphs from `sotto export`; a foreign export runs with --backend ort",
                dir.display()
            ));
        }
        let graph = ForeignDecoder::open(&model.spec, dir, &config)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if !args.quiet {
            eprintln!(
                "sotto: foreign ONNX export (tokenizer and template from the GGUF); placement (before running)\n{}",
                graph.placement_report()
            );
        }
        return Ok(Box::new(graph));
    }
    let graphs = OrtDecoder::open(&model.spec, dir, &config)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if !args.quiet {
        eprintln!(
            "sotto: placement (before running)\n{}",
            graphs.placement_report()
        );
    }
    Ok(match args.backend {
        ChatBackend::Hybrid => {
            Box::new(HybridBackend::new(graphs, cpu()?).map_err(|e| e.to_string())?)
        }
        _ => Box::new(graphs),
    })
}

#[cfg(not(feature = "ort"))]
fn open_ort(
    _: &ChatArgs,
    _: &Arc<Model>,
    _: &std::path::Path,
    _: &dyn Fn() -> Result<CpuBackend, String>,
) -> Result<Box<dyn Backend>, String> {
    Err("this sotto was built without ONNX Runtime; rebuild with `--features ort` (and run scripts/ort-deps.sh)".into())
}

pub fn run(args: ChatArgs) -> Result<(), String> {
    let path = resolve_model(args.model.clone())?;
    let t0 = Instant::now();
    let model = Arc::new(Model::load(&path).map_err(|e| format!("{}: {e}", path.display()))?);
    if model.template.is_fallback() && !args.chatml {
        return Err(format!(
            "{} has no chat template (tokenizer.chat_template), so it is probably a base \
             model: continue raw text with `sotto complete --model {} PROMPT`, or chat in \
             ChatML anyway with `sotto chat --chatml`",
            path.display(),
            path.display()
        ));
    }
    let tokenizer = Arc::new(model.tokenizer.clone());
    let template = Arc::new(model.template.clone());
    let backend = make_backend(&args, &model)?;
    let describe = backend.describe();
    let session = Session::new(backend, tokenizer, args.context).map_err(|e| e.to_string())?;
    if !args.quiet {
        eprintln!(
            "sotto: {} ({}, {} layers) loaded in {:.0} ms on {describe}",
            path.display(),
            model.spec.arch,
            model.spec.n_layer,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut chat = Chat::new(session, template, args.system.as_deref());
    let cancel = CancelToken::new();
    {
        let c = cancel.clone();
        // Ctrl-C stops the answer being written, not the program.
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    let opts = args.generation.options(Some(cancel.clone()));
    match &args.prompt {
        Some(p) => turn(&mut chat, p, &opts, args.quiet).map(|_| ()),
        None => repl(&mut chat, &opts, &cancel, args.quiet),
    }
}

fn turn(chat: &mut Chat, user: &str, opts: &GenerateOptions, quiet: bool) -> Result<Reply, String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let reply = chat.send(user, opts, &mut |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    });
    let _ = writeln!(out);
    let _ = out.flush();
    let reply = reply.map_err(|e| e.to_string())?;
    if !quiet {
        let s = &reply.stats;
        eprintln!(
            "sotto: prompt {} tok ({} reused) at {:.1} tok/s, ttft {:.0} ms; {} tok at {:.1} tok/s; stop: {:?}",
            s.prompt_tokens,
            s.reused_tokens,
            s.prefill_tps(),
            s.time_to_first_token.as_secs_f64() * 1e3,
            s.generated_tokens,
            s.decode_tps(),
            s.stop
        );
    }
    Ok(reply)
}

fn repl(
    chat: &mut Chat,
    opts: &GenerateOptions,
    cancel: &CancelToken,
    quiet: bool,
) -> Result<(), String> {
    eprintln!("sotto: interactive chat; /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops an answer");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| e.to_string())?;
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
        match turn(chat, line, opts, quiet) {
            Ok(_) => {}
            // A cancelled or overflowing turn leaves the history as it was.
            Err(e) => eprintln!("sotto: {e}"),
        }
    }
    Ok(())
}
