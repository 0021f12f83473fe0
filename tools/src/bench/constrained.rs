//! `sotto bench --json-schema FILE`: what constrained decoding costs. A
//! sampled answer under the schema, `reps` times with different seeds
//! (after one warm-up), reports the automaton's time per token (computing
//! the mask and advancing past the picked token) beside the decode step it
//! is added to, and the schema's compile time.

use std::path::Path;

use sotto_engine::{
    BackendChoice, Constraint, CpuOptions, GenerateOptions, LoadedModel, SamplerConfig,
};
use sotto_models::ChatMessage;

use super::stats;

/// The constrained answers of one thread count.
#[derive(Debug)]
pub struct ConstrainedRow {
    pub threads: usize,
    /// Tokens generated per repetition.
    pub tokens: Vec<usize>,
    /// Decode rate per repetition (masking included).
    pub decode_tps: Vec<f64>,
    /// Automaton milliseconds per token, per repetition.
    pub mask_ms: Vec<f64>,
    /// Schema compile milliseconds, per repetition (the session's first
    /// also builds the token trie).
    pub compile_ms: Vec<f64>,
    /// Answers that ended with the JSON complete (not cut by the bound).
    pub complete: usize,
}

/// Runs the schema's answers per thread count.
pub fn run(
    model_path: &Path,
    threads: &[usize],
    schema_text: &str,
    max_tokens: usize,
    reps: usize,
) -> Result<Vec<ConstrainedRow>, String> {
    let constraint = Constraint::json_schema_text(schema_text).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for &t in threads {
        let cpu = BackendChoice::Cpu(CpuOptions {
            threads: t,
            ..Default::default()
        });
        let loaded = LoadedModel::open(model_path, cpu).map_err(|e| e.to_string())?;
        let model = loaded.model();
        let messages = [ChatMessage::user(
            "Answer with one JSON object that fits the requested format.",
        )];
        let prompt = super::chat_prompt(model, &messages)?;
        let mut session = loaded
            .session(prompt.len() + max_tokens + 1)
            .map_err(|e| e.to_string())?;
        let mut row = ConstrainedRow {
            threads: t,
            tokens: Vec::new(),
            decode_tps: Vec::new(),
            mask_ms: Vec::new(),
            compile_ms: Vec::new(),
            complete: 0,
        };
        for rep in 0..=reps {
            let opts = GenerateOptions {
                sampler: SamplerConfig {
                    temperature: 1.0,
                    seed: rep as u64,
                    ..SamplerConfig::default()
                },
                max_tokens,
                constraint: Some(constraint.clone()),
                ..GenerateOptions::default()
            };
            let s = session
                .generate(&prompt, &opts, &mut |_| {})
                .map_err(|e| e.to_string())?;
            if rep == 0 {
                continue; // warm-up (builds the token trie)
            }
            row.tokens.push(s.generated_tokens);
            row.decode_tps.push(s.decode_tps());
            row.mask_ms
                .push(s.constraint_time.as_secs_f64() * 1e3 / s.constraint_masks.max(1) as f64);
            row.compile_ms
                .push(s.constraint_compile_time.as_secs_f64() * 1e3);
            if s.stop != sotto_engine::StopReason::MaxTokens {
                row.complete += 1;
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The section as markdown: per thread count, the automaton's time per
/// token and its share of a decode step.
pub fn markdown(rows: &[ConstrainedRow]) -> String {
    let mut out = String::from(
        "\nconstrained decoding (JSON Schema, sampled):\n\n\
         | threads | answers complete | tokens/answer | decode t/s | mask ms/token | share of a decode step | compile ms |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        let tps = stats::mean(&row.decode_tps);
        let mask = stats::mean(&row.mask_ms);
        let step_ms = if tps > 0.0 { 1e3 / tps } else { 0.0 };
        let share = if step_ms > 0.0 {
            100.0 * mask / step_ms
        } else {
            0.0
        };
        let tokens: Vec<f64> = row.tokens.iter().map(|&n| n as f64).collect();
        out.push_str(&format!(
            "| {} | {}/{} | {:.0} | {:.1} ± {:.1} | {:.3} ± {:.3} | {:.1}% | {:.1} |\n",
            row.threads,
            row.complete,
            row.tokens.len(),
            stats::mean(&tokens),
            tps,
            stats::sample_sd(&row.decode_tps),
            mask,
            stats::sample_sd(&row.mask_ms),
            share,
            stats::mean(&row.compile_ms),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_gives_the_mask_share_of_a_decode_step() {
        let md = markdown(&[ConstrainedRow {
            threads: 2,
            tokens: vec![40, 60],
            decode_tps: vec![50.0, 50.0],
            mask_ms: vec![0.5, 0.5],
            compile_ms: vec![3.0, 5.0],
            complete: 2,
        }]);
        // 50 t/s is a 20 ms step; 0.5 ms of it is 2.5%.
        assert!(
            md.contains("| 2 | 2/2 | 50 | 50.0 ± 0.0 | 0.500 ± 0.000 | 2.5% | 4.0 |"),
            "{md}"
        );
    }
}
