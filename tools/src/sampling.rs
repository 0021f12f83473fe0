//! The run, sampling and stopping flags `sotto chat` and `sotto complete` share.

use sotto_engine::speculative::PromptLookup;
use sotto_engine::{CancelToken, GenerateOptions, GenerationStats, SamplerConfig};

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
    /// Print no statistics on standard error.
    #[arg(long, short)]
    pub quiet: bool,
    /// Speculative decoding with prompt-lookup drafts of up to N tokens
    /// (the answer is the same; faster when it repeats the conversation).
    #[arg(long, value_name = "N")]
    pub lookup: Option<usize>,
}

impl GenerationArgs {
    /// The generation options these flags ask for.
    pub fn options(&self, cancel: Option<CancelToken>) -> GenerateOptions {
        GenerateOptions {
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
        }
    }
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
