//! `sotto inspect`: what a model file holds.

use crate::resolve_model;
use sotto_models::gguf::{GgufFile, MetaValue};
use sotto_models::Model;
use std::path::PathBuf;

fn short(v: &MetaValue) -> String {
    let s = format!("{v}");
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s
    }
}

pub fn run(model: Option<PathBuf>, metadata: bool) -> Result<(), String> {
    let path = resolve_model(model)?;
    let g = GgufFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("file:          {}", path.display());
    println!("gguf version:  {}", g.version());
    println!("size:          {} bytes", g.file_size());
    let m = Model::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = &m.spec;
    println!(
        "architecture:  {}{}",
        s.arch,
        s.name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    println!("layers:        {}", s.n_layer);
    println!("d_model:       {}", s.d_model);
    println!(
        "heads:         {} query / {} key-value, head_dim {}",
        s.n_head, s.n_kv_head, s.head_dim
    );
    println!("ffn:           {} ({:?})", s.ffn_dim, s.activation);
    println!("vocab:         {}", s.vocab_size);
    println!("context:       {}", s.context_length);
    println!("norm eps:      {}", s.norm_eps);
    println!("layers are:    {}", s.features());
    let t = &m.tokenizer;
    println!(
        "tokenizer:     {} (pre {}), {} tokens, bos {:?}, eos {:?}, add_bos {}",
        g.get_str("tokenizer.ggml.model").unwrap_or("?"),
        g.get_str("tokenizer.ggml.pre").unwrap_or("default"),
        t.vocab_size(),
        t.bos_id(),
        t.eos_id(),
        t.add_bos()
    );
    match g.get_str("tokenizer.chat_template") {
        Some(tpl) => println!("chat template: {} chars\n{tpl}", tpl.len()),
        None => println!("chat template: none in file (ChatML fallback)"),
    }
    if metadata {
        println!("\nmetadata:");
        for (k, v) in g.metadata() {
            println!("  {k} = {}", short(v));
        }
    }
    println!("\ntensors ({}):", g.tensors().len());
    let mut total = 0u64;
    for ti in g.tensors() {
        total += ti.n_bytes as u64;
        println!(
            "  {:<32} {:<8} {:>16} {:>12} B",
            ti.name,
            ti.ggml_type.name(),
            format!("{:?}", ti.dims),
            ti.n_bytes
        );
    }
    println!(
        "total tensor bytes: {total} ({:.1} MiB)",
        total as f64 / (1 << 20) as f64
    );
    Ok(())
}
