//! The parts of `sotto bench` (tools/src/cmd_bench.rs drives them).

// Tests assert by unwrapping; the code itself may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod backends;
pub mod constrained;
pub mod llama_cpp;
pub mod machine;
pub mod report;
pub mod runner;
pub mod sizes;
pub mod speculative;
pub mod stats;
pub mod sweep;

/// The tokens of `messages` rendered through `model`'s chat template with
/// the assistant's header, as a chat turn would prompt.
pub fn chat_prompt(
    model: &sotto_models::Model,
    messages: &[sotto_models::ChatMessage],
) -> Result<Vec<u32>, String> {
    let text = model
        .template
        .render(messages, true)
        .map_err(|e| e.to_string())?;
    model
        .tokenizer
        .encode(&text, true)
        .map_err(|e| e.to_string())
}
