//! What resuming a saved chat saves: the follow-up's time to first token
//! after [`LoadedModel::restore_chat`] against re-prefilling the same
//! history in a fresh chat, with the file's size and the save and restore
//! times. Figures, not assertions (times are noisy on shared machines).
//!
//! ```text
//! cargo run --release -p sotto-engine --features bridge --example session_resume -- \
//!     [MODEL.gguf] [HISTORY_TOKENS]
//! ```
//! MODEL defaults to `$SOTTO_MODEL`, HISTORY_TOKENS to 1000.

use sotto_bridge::StorageKey;
use sotto_engine::{BackendChoice, GenerateOptions, LoadedModel, SamplerConfig};
use sotto_models::chat::ChatMessage;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = match args.next() {
        Some(p) => p,
        None => std::env::var("SOTTO_MODEL").map_err(|_| "give a model path or set SOTTO_MODEL")?,
    };
    let target: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let context = (target + 256).next_power_of_two().max(1024);
    let model = LoadedModel::open(&model_path, BackendChoice::default())?;
    let t = Instant::now();
    model.model_digest();
    let digest_time = t.elapsed();

    let opts = GenerateOptions {
        sampler: SamplerConfig::greedy(),
        max_tokens: 16,
        ..GenerateOptions::default()
    };
    // A history of about `target` tokens: exchanges of numbered notes.
    let mut chat = model.chat(context, Some("You are a helpful assistant."))?;
    let mut history = chat.messages().to_vec();
    let mut i = 0;
    while chat.prompt_tokens(&history)?.len() < target.saturating_sub(16) {
        history.push(ChatMessage::user(format!(
            "Note {i}: the meeting about project {i} moved to room {} on floor {}.",
            100 + i,
            i % 7
        )));
        history.push(ChatMessage::assistant(format!(
            "Noted: project {i}, room {}.",
            100 + i
        )));
        i += 1;
    }
    history.push(ChatMessage::user("Summarize the notes in one sentence."));
    chat.answer(&history, &opts, &mut |_| {})?;
    let history_tokens = chat.session().cached_tokens().len();

    let dir = std::env::temp_dir().join(format!("sotto-session-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("chat.session");
    let key = StorageKey::from_bytes([0x42; 32]);
    let t = Instant::now();
    chat.save(&path, &key)?;
    let save_time = t.elapsed();
    let file_bytes = std::fs::metadata(&path)?.len();

    let follow_up = "Which room is project 3 in?";
    let t = Instant::now();
    let mut restored = model.restore_chat(&path, &key, context)?;
    let restore_time = t.elapsed();
    let resumed = restored.send(follow_up, &opts, &mut |_| {})?;

    let mut fresh = model.chat(context, None)?;
    let mut messages = chat.messages().to_vec();
    messages.push(ChatMessage::user(follow_up));
    let prefilled = fresh.answer(&messages, &opts, &mut |_| {})?;
    if resumed.text != prefilled.text {
        return Err("the restored and the re-prefilled chats answered differently".into());
    }

    println!("model            {model_path} ({})", model.describe());
    println!(
        "digest           {:.3} s (SHA-256 of the model, once per load)",
        digest_time.as_secs_f64()
    );
    println!("history          {history_tokens} tokens (context {context})");
    println!(
        "file             {file_bytes} bytes ({:.1} KiB/token)",
        file_bytes as f64 / 1024.0 / history_tokens as f64
    );
    println!("save             {:.1} ms", save_time.as_secs_f64() * 1e3);
    println!(
        "restore          {:.1} ms",
        restore_time.as_secs_f64() * 1e3
    );
    println!(
        "follow-up TTFT   restored {:.1} ms (+ restore {:.1} ms; {} of {} prompt tokens reused) | re-prefilled {:.1} ms ({} reused)",
        resumed.stats.time_to_first_token.as_secs_f64() * 1e3,
        restore_time.as_secs_f64() * 1e3,
        resumed.stats.reused_tokens,
        resumed.stats.prompt_tokens,
        prefilled.stats.time_to_first_token.as_secs_f64() * 1e3,
        prefilled.stats.reused_tokens,
    );
    println!(
        "speed-up         {:.1}x (restore included)",
        prefilled.stats.time_to_first_token.as_secs_f64()
            / (resumed.stats.time_to_first_token + restore_time).as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
