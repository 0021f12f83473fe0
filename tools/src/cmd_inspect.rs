//! `sotto inspect`: what a model file holds, and whether Sotto can run it.
//!
//! Any GGUF file the reader can parse is shown, including ones Sotto cannot
//! run (tensor types without kernels such as IQ2_XXS, architectures it does
//! not know): each part that cannot be built says why, and the tensor table
//! marks every tensor whose type cannot run.

use crate::resolve_model;
use sotto_models::gguf::{GgufFile, MetaValue};
use sotto_models::spec::RopeStyle;
use sotto_models::{arch, ChatTemplate, Model, Tokenizer};
use std::collections::BTreeMap;
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
    let opened = if path.is_dir() {
        sotto_models::hf::open(&path).map(|f| (f.gguf, f.rope_style))
    } else {
        GgufFile::open(&path).map(|g| (g, None))
    };
    let (g, rope_style) = opened.map_err(|e| format!("{}: {e}", path.display()))?;
    println!("file:          {}", path.display());
    if path.is_dir() {
        println!("format:        Hugging Face folder (shown as the GGUF it maps to)");
    } else {
        println!("gguf version:  {}", g.version());
    }
    println!("size:          {} bytes", g.file_size());
    describe_model(&g, rope_style);
    let tokenizer = Tokenizer::from_gguf(&g);
    match &tokenizer {
        Ok(t) => println!(
            "tokenizer:     {} (pre {}), {} tokens, bos {:?}, eos {:?}, add_bos {}",
            g.get_str("tokenizer.ggml.model").unwrap_or("?"),
            g.get_str("tokenizer.ggml.pre").unwrap_or("default"),
            t.vocab_size(),
            t.bos_id(),
            t.eos_id(),
            t.add_bos()
        ),
        Err(e) => println!("tokenizer:     cannot be built: {e}"),
    }
    match (g.get_str("tokenizer.chat_template"), &tokenizer) {
        (Some(tpl), Ok(t)) => match ChatTemplate::from_gguf(&g, t) {
            Ok(_) => println!("chat template: {} chars\n{tpl}", tpl.len()),
            Err(e) => println!("chat template: {} chars, does not compile: {e}\n{tpl}", tpl.len()),
        },
        (Some(tpl), Err(_)) => println!("chat template: {} chars\n{tpl}", tpl.len()),
        (None, _) => println!(
            "chat template: none in file (a base model: use `sotto complete`, or `sotto chat --chatml`)"
        ),
    }
    let runs = Model::load(&path);
    match &runs {
        Ok(_) => println!("sotto runs it: yes"),
        Err(e) => println!("sotto runs it: no: {e}"),
    }
    if metadata {
        println!("\nmetadata:");
        for (k, v) in g.metadata() {
            println!("  {k} = {}", short(v));
        }
    }
    println!("\ntensors ({}):", g.tensors().len());
    let mut total = 0u64;
    let mut cannot: BTreeMap<&str, usize> = BTreeMap::new();
    for ti in g.tensors() {
        total += ti.n_bytes as u64;
        let note = match ti.dtype() {
            Ok(_) => String::new(),
            Err(_) => {
                *cannot.entry(ti.ggml_type.name()).or_default() += 1;
                "  cannot run: sotto has no kernels for this type".to_string()
            }
        };
        println!(
            "  {:<32} {:<8} {:>16} {:>12} B{note}",
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
    if !cannot.is_empty() {
        let types: Vec<String> = cannot.iter().map(|(t, n)| format!("{n} {t}")).collect();
        println!(
            "tensors sotto cannot run: {} ({}): their types have no kernels in sotto",
            cannot.values().sum::<usize>(),
            types.join(", ")
        );
    }
    Ok(())
}

/// The decoder description of `g`, or why there is none.
fn describe_model(g: &GgufFile, rope_style: Option<RopeStyle>) {
    let s = match arch::decoder_spec(g) {
        Ok(mut s) => {
            s.rope_style = rope_style.unwrap_or(s.rope_style);
            s
        }
        Err(e) => {
            println!(
                "architecture:  {} (cannot be described: {e})",
                g.get_str("general.architecture").unwrap_or("?")
            );
            return;
        }
    };
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
    println!("rope pairs:    {:?}", s.rope_style);
    println!("layers are:    {}", s.features());
}
