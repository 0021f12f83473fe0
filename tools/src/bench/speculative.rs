//! `sotto bench --lookup N` / `--draft-model FILE`: speculative decoding on
//! an answer that quotes its prompt (the case it is for), plain and
//! speculative side by side on one loaded model. Random tokens, which the
//! sweep's rows use, never repeat, so this section runs real text through
//! the chat template and greedy sampling, and reports decode speed,
//! acceptance and the speed-up.

use std::path::Path;
use std::time::Instant;

use sotto_engine::speculative::{DraftModel, PromptLookup};
use sotto_engine::{
    BackendChoice, CpuOptions, GenerateOptions, GenerationStats, LoadedModel, SamplerConfig,
};
use sotto_models::ChatMessage;

use super::stats;

/// The passage the model is asked to repeat: plain prose a small model
/// copies faithfully.
const PASSAGE: &str = "The lighthouse stood at the end of the harbour wall for more than two \
hundred years. Every evening the keeper climbed the one hundred and twelve steps, trimmed the \
wick, polished the great lens and watched the ships come home. In winter the storms threw \
spray over the lantern room, and in summer children fished from the rocks below. When the \
light was finally automated, the keeper's cottage became a small museum, and the logbooks, \
filled with weather, ships and names, were kept in a glass case by the door.";

/// What one way of decoding did over the repetitions.
#[derive(Debug)]
pub struct SpecRow {
    pub label: String,
    pub threads: usize,
    pub tokens: usize,
    pub decode_tps: Vec<f64>,
    pub drafted: usize,
    pub accepted: usize,
    /// Every repetition's answer equals plain decoding's.
    pub same_output: bool,
}

/// Runs the quoting task `reps` times (after one warm-up) per thread
/// count, plain and with each asked-for drafter; rows in that order.
pub fn run(
    model_path: &Path,
    threads: &[usize],
    max_tokens: usize,
    reps: usize,
    lookup: Option<usize>,
    draft_model: Option<&Path>,
) -> Result<Vec<SpecRow>, String> {
    let mut rows = Vec::new();
    for &t in threads {
        let cpu = BackendChoice::Cpu(CpuOptions {
            threads: t,
            ..Default::default()
        });
        let loaded = LoadedModel::open(model_path, cpu.clone()).map_err(|e| e.to_string())?;
        let draft_loaded = match draft_model {
            Some(p) => Some(LoadedModel::open(p, cpu).map_err(|e| format!("draft model: {e}"))?),
            None => None,
        };
        let model = loaded.model();
        let messages = [
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user(format!(
                "Repeat the following text exactly, with nothing else:\n\n{PASSAGE}"
            )),
        ];
        let prompt = super::chat_prompt(model, &messages)?;
        let context = prompt.len() + max_tokens + 1;
        let base = GenerateOptions {
            sampler: SamplerConfig::greedy(),
            max_tokens,
            ..GenerateOptions::default()
        };
        let mut ways: Vec<(String, GenerateOptions, bool)> =
            vec![("plain".into(), base.clone(), false)];
        if let Some(n) = lookup {
            ways.push((
                format!("prompt lookup ({n})"),
                GenerateOptions {
                    prompt_lookup: Some(PromptLookup {
                        max_draft: n,
                        ..PromptLookup::default()
                    }),
                    ..base.clone()
                },
                false,
            ));
        }
        if draft_loaded.is_some() {
            ways.push(("draft model (4)".into(), base.clone(), true));
        }
        let mut plain_tokens: Option<Vec<u32>> = None;
        for (label, opts, with_draft) in ways {
            let mut row = SpecRow {
                label,
                threads: t,
                tokens: 0,
                decode_tps: Vec::new(),
                drafted: 0,
                accepted: 0,
                same_output: true,
            };
            for rep in 0..=reps {
                let mut session = loaded.session(context).map_err(|e| e.to_string())?;
                if let (true, Some(d)) = (with_draft, &draft_loaded) {
                    let backend = d.backend().map_err(|e| e.to_string())?;
                    let draft = DraftModel::new(backend, context, 4).map_err(|e| e.to_string())?;
                    session
                        .set_draft_model(Some(draft))
                        .map_err(|e| e.to_string())?;
                }
                let t0 = Instant::now();
                let s: GenerationStats = session
                    .generate(&prompt, &opts, &mut |_| {})
                    .map_err(|e| e.to_string())?;
                std::hint::black_box(t0.elapsed());
                match &plain_tokens {
                    None => plain_tokens = Some(s.tokens.clone()),
                    Some(p) => row.same_output &= *p == s.tokens,
                }
                if rep == 0 {
                    continue; // warm-up
                }
                row.tokens = s.generated_tokens;
                row.decode_tps.push(s.decode_tps());
                row.drafted += s.drafted_tokens;
                row.accepted += s.accepted_tokens;
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The section as markdown: per thread count, each way's decode rate,
/// its speed-up over plain decoding and the drafts' acceptance.
pub fn markdown(rows: &[SpecRow]) -> String {
    let mut out = String::from(
        "\nspeculative decoding on a quoting answer (greedy):\n\n\
         | threads | decoding | tokens | decode t/s | speed-up | drafts accepted | answer |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | --- |\n",
    );
    for row in rows {
        let plain = rows
            .iter()
            .find(|r| r.threads == row.threads && r.label == "plain")
            .map(|r| stats::mean(&r.decode_tps))
            .unwrap_or(0.0);
        let tps = stats::mean(&row.decode_tps);
        let speedup = if plain > 0.0 { tps / plain } else { 0.0 };
        let accepted = if row.drafted > 0 {
            format!(
                "{}/{} ({:.0}%)",
                row.accepted,
                row.drafted,
                100.0 * row.accepted as f64 / row.drafted as f64
            )
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} ± {:.1} | {:.2}x | {} | {} |\n",
            row.threads,
            row.label,
            row.tokens,
            tps,
            stats::sample_sd(&row.decode_tps),
            speedup,
            accepted,
            if row.same_output {
                "as plain"
            } else {
                "DIFFERS from plain"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, tps: f64, drafted: usize, accepted: usize, same: bool) -> SpecRow {
        SpecRow {
            label: label.into(),
            threads: 2,
            tokens: 100,
            decode_tps: vec![tps],
            drafted,
            accepted,
            same_output: same,
        }
    }

    #[test]
    fn table_gives_speed_up_over_plain_and_acceptance() {
        let md = markdown(&[
            row("plain", 40.0, 0, 0, true),
            row("prompt lookup (8)", 100.0, 200, 150, true),
            row("draft model (4)", 30.0, 80, 20, false),
        ]);
        assert!(
            md.contains("| 2 | plain | 100 | 40.0 ± 0.0 | 1.00x | - | as plain |"),
            "{md}"
        );
        assert!(md.contains("| 2.50x | 150/200 (75%) | as plain |"), "{md}");
        assert!(
            md.contains("| 0.75x | 20/80 (25%) | DIFFERS from plain |"),
            "{md}"
        );
    }
}
