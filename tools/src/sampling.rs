//! The run, sampling and stopping flags `sotto chat` and `sotto complete` share.

use crate::error::CliError;
use sotto_engine::speculative::PromptLookup;
use sotto_engine::{
    CancelToken, Constraint, GenerateOptions, GenerationStats, GrammarSyntax, SamplerConfig,
};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct GenerationArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// 0 = disabled.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Extra stop strings.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Worker threads (0 = all cores).
    #[arg(long, short, default_value_t = 0)]
    pub threads: usize,
    /// Context length in tokens (capped by the model's).
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// KV cache element type: `T` for keys and values, or `K,V`; each of
    /// f16, q8_0, q4_0 (block types need a head size that is a multiple of
    /// 32).
    #[arg(long, value_name = "T|K,V", default_value = "f16")]
    pub kv_type: sotto_engine::KvTypes,
    /// Print no statistics on standard error.
    #[arg(long, short)]
    pub quiet: bool,
    /// Speculative decoding with prompt-lookup drafts of up to N tokens
    /// (the answer is the same; faster when it repeats the conversation).
    #[arg(long, value_name = "N")]
    pub lookup: Option<usize>,
    /// The answer must be JSON valid under the JSON Schema in FILE (the
    /// answer ends when the JSON is complete).
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    pub json_schema: Option<PathBuf>,
    /// The answer must match the grammar in FILE: llama.cpp's GBNF
    /// (`root ::= ...`; a `.gbnf` file, or any file that defines rules with
    /// `::=`) or llguidance's Lark (`start: ...`; a `.lark` file).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
}

fn read_constraint_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

impl GenerationArgs {
    /// The generation options these flags ask for; an unreadable or
    /// malformed `--json-schema` / `--grammar` file is an error here, before
    /// any token.
    pub fn options(&self, cancel: Option<CancelToken>) -> Result<GenerateOptions, CliError> {
        let constraint = match (&self.json_schema, &self.grammar) {
            (Some(path), _) => Some(Constraint::json_schema_text(&read_constraint_file(path)?)?),
            (None, Some(path)) => {
                let text = read_constraint_file(path)?;
                let syntax = GrammarSyntax::from_extension(path)
                    .unwrap_or_else(|| GrammarSyntax::detect(&text));
                Some(Constraint::grammar_text_as(&text, syntax)?)
            }
            (None, None) => None,
        };
        Ok(GenerateOptions {
            sampler: SamplerConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: 64,
                seed: self.seed,
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            cancel,
            prompt_lookup: self.lookup.map(|max_draft| PromptLookup {
                max_draft,
                ..PromptLookup::default()
            }),
            constraint,
        })
    }
}

/// "; constraint X ms/token ..." after the statistics line when a
/// constraint masked the answer, else nothing.
pub fn constraint_note(s: &GenerationStats) -> String {
    if s.constraint_masks == 0 {
        return String::new();
    }
    format!(
        "; constraint {:.3} ms/token over {} masks, compiled in {:.0} ms",
        s.constraint_time.as_secs_f64() * 1e3 / s.constraint_masks as f64,
        s.constraint_masks,
        s.constraint_compile_time.as_secs_f64() * 1e3
    )
}

/// "; drafts A/D accepted" after the statistics line when prompt lookup
/// drafted anything, else nothing.
pub fn speculation_note(s: &GenerationStats) -> String {
    if s.drafted_tokens == 0 {
        return String::new();
    }
    format!(
        "; drafts {}/{} accepted",
        s.accepted_tokens, s.drafted_tokens
    )
}
