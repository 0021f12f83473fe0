use super::*;
use crate::gguf::{GgufWriter, MetaValue};
use crate::spec::{Activation, RopeFactors, RopeScaling, RopeSpec, RopeStyle};
use crate::testutil::{tiny_model, TinyDims};

fn load(w: &GgufWriter) -> Result<(DecoderSpec, DecoderWeights)> {
    let g = GgufFile::from_bytes(w.to_bytes())?;
    let spec = decoder_spec(&g)?;
    let weights = decoder_weights(&g, &spec)?;
    Ok((spec, weights))
}

#[test]
fn llama_maps_hyper_parameters_and_tensors() {
    let dims = TinyDims::default();
    let (spec, w) = load(&tiny_model("llama", dims)).unwrap();
    assert_eq!(spec.arch, "llama");
    assert_eq!(spec.name.as_deref(), Some("tiny"));
    assert_eq!(
        (
            spec.n_layer,
            spec.d_model,
            spec.n_head,
            spec.n_kv_head,
            spec.head_dim,
            spec.ffn_dim
        ),
        (2, 8, 2, 1, 4, 16)
    );
    assert_eq!(spec.vocab_size, 256 + 4 + 3);
    assert_eq!(spec.activation, Activation::SiluGlu);
    assert_eq!(spec.rope_style, RopeStyle::Interleaved);
    assert_eq!(spec.n_rot, 4);
    assert!(!spec.tied_embeddings);
    for l in &spec.layers {
        assert_eq!(l.rope, RopeSpec::plain(10_000.0));
        assert!(!l.qk_norm && !l.post_attention_norm && !l.post_ffn_norm);
        assert_eq!(l.attention.window, None);
        assert_eq!(l.attention.softcap, None);
        assert!((l.attention.scale - 0.5).abs() < 1e-7);
        assert_eq!(l.residual_scale, None);
    }
    assert_eq!(
        (spec.embed_scale, spec.logit_scale, spec.final_logit_softcap),
        (None, None, None)
    );
    assert_eq!(w.layers.len(), 2);
    assert_eq!(w.token_embd.shape, [263, 8]);
    assert_eq!(w.layers[1].attn_q.weight.shape, [8, 8]);
    assert_eq!(w.layers[1].attn_k.weight.shape, [4, 8]);
    assert_eq!(w.layers[0].ffn_down.weight.shape, [8, 16]);
    assert!(w.layers[0].attn_q_norm.is_none());
    assert!(w.layers[0].attn_q.bias.is_none());
    assert_eq!(w.output.weight.name, "output.weight");
}

#[test]
fn llama_sliding_window_key_makes_every_layer_slide_unless_a_pattern_says_otherwise() {
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("llama.attention.sliding_window", MetaValue::U32(3));
    let windows = |w: &GgufWriter| -> Vec<Option<usize>> {
        load(w)
            .unwrap()
            .0
            .layers
            .iter()
            .map(|l| l.attention.window)
            .collect()
    };
    assert_eq!(windows(&w), vec![Some(3), Some(3)]);
    w.set(
        "llama.attention.sliding_window_pattern",
        MetaValue::Array(
            crate::gguf::MetaType::Bool,
            vec![MetaValue::Bool(false), MetaValue::Bool(true)],
        ),
    );
    assert_eq!(windows(&w), vec![None, Some(3)]);
    w.set("llama.attention.sliding_window_pattern", MetaValue::U32(2));
    assert_eq!(windows(&w), vec![Some(3), None]);
    w.set(
        "llama.attention.sliding_window_pattern",
        MetaValue::Array(crate::gguf::MetaType::Bool, vec![MetaValue::Bool(true)]),
    );
    assert!(matches!(load(&w), Err(Error::InvalidHyperParameter { .. })));
    w.set("llama.attention.sliding_window", MetaValue::U32(0));
    assert!(load(&w)
        .unwrap()
        .0
        .layers
        .iter()
        .all(|l| l.attention.window.is_none()));
}

#[test]
fn qwen_families_read_biases_and_qk_norm() {
    let (spec, w) = load(&tiny_model("qwen2", TinyDims::default())).unwrap();
    assert_eq!(spec.rope_style, RopeStyle::NeoX);
    assert!(spec.layers.iter().all(|l| !l.qk_norm));
    let l = &w.layers[1];
    assert_eq!(l.attn_q.bias.as_ref().unwrap().len(), 8);
    assert_eq!(l.attn_k.bias.as_ref().unwrap().len(), 4);
    assert_eq!(l.attn_v.bias.as_ref().unwrap().len(), 4);
    assert!(l.attn_output.bias.is_none() && l.ffn_up.bias.is_none());
    let (spec, w) = load(&tiny_model("qwen3", TinyDims::default())).unwrap();
    assert!(spec.layers.iter().all(|l| l.qk_norm));
    assert_eq!(w.layers[0].attn_k_norm.as_ref().unwrap().shape, [1, 4]);
    assert!(w.layers[0].attn_q.bias.is_none());
}

#[test]
fn gemma2_alternates_sliding_layers_and_soft_caps() {
    let dims = TinyDims {
        n_layer: 3,
        ..TinyDims::default()
    };
    let mut g = tiny_model("gemma2", dims);
    g.set("gemma2.rope.freq_base_swa", MetaValue::F32(500.0));
    let (spec, w) = load(&g).unwrap();
    assert_eq!(spec.activation, Activation::GeluTanhGlu);
    assert!(spec.tied_embeddings);
    assert_eq!(w.output.weight.name, "token_embd.weight");
    let windows: Vec<_> = spec.layers.iter().map(|l| l.attention.window).collect();
    assert_eq!(windows, vec![Some(4), None, Some(4)]);
    assert_eq!(spec.layers[0].rope.theta, 500.0);
    assert_eq!(spec.layers[1].rope.theta, 10_000.0);
    assert!(spec.layers.iter().all(|l| l.attention.softcap == Some(50.0)
        && l.post_attention_norm
        && l.post_ffn_norm
        && !l.qk_norm));
    assert_eq!(spec.final_logit_softcap, Some(30.0));
    assert!((spec.embed_scale.unwrap() - 8f32.sqrt()).abs() < 1e-6);
    g.set("gemma2.attn_logit_softcapping", MetaValue::F32(-1.0));
    assert!(matches!(load(&g), Err(Error::InvalidHyperParameter { .. })));
}

#[test]
fn phi3_splits_fused_projections_and_reads_longrope() {
    let (spec, w) = load(&tiny_model("phi3", TinyDims::default())).unwrap();
    assert_eq!(spec.rope_style, RopeStyle::NeoX);
    let l = &w.layers[0];
    assert_eq!(l.attn_q.weight.shape, [8, 8]);
    assert_eq!(l.attn_k.weight.shape, [4, 8]);
    assert_eq!(l.attn_v.weight.shape, [4, 8]);
    assert_eq!(l.attn_k.weight.name, "blk.0.attn_qkv.weight[8..12]");
    assert_eq!(l.ffn_gate.weight.shape, [16, 8]);
    assert_eq!(l.ffn_up.weight.name, "blk.0.ffn_up.weight[16..32]");
    // the views are the fused tensor's rows
    let fused = load(&tiny_model("phi3", TinyDims::default()))
        .map(|_| ())
        .and_then(|_| {
            let g = GgufFile::from_bytes(tiny_model("phi3", TinyDims::default()).to_bytes())?;
            Weight::from_gguf(&g, g.tensor("blk.0.attn_qkv.weight").unwrap())?.to_f32()
        });
    let fused = fused.unwrap();
    assert_eq!(
        l.attn_v.weight.to_f32().unwrap(),
        fused[12 * 8..16 * 8].to_vec()
    );
    assert_eq!(spec.layers[0].rope.factors, RopeFactors::None);

    let mut g = tiny_model("phi3", TinyDims::default())
        .tensor_f32("rope_factors_short.weight", &[2], &[1.0, 2.0])
        .tensor_f32("rope_factors_long.weight", &[2], &[4.0, 8.0]);
    g.set(
        "phi3.rope.scaling.original_context_length",
        MetaValue::U32(32),
    );
    g.set("phi3.rope.scaling.attn_factor", MetaValue::F32(1.2));
    let (spec, w) = load(&g).unwrap();
    let rope = spec.layers[0].rope;
    assert_eq!(
        rope.factors,
        RopeFactors::ShortLong {
            original_context: 32
        }
    );
    assert_eq!(rope.attn_factor, 1.2);
    let base = rope.inv_freqs(4);
    assert_eq!(
        w.rope_inv_freqs(&rope, 4, 32).unwrap(),
        vec![base[0], base[1] / 2.0]
    );
    assert_eq!(
        w.rope_inv_freqs(&rope, 4, 33).unwrap(),
        vec![base[0] / 4.0, base[1] / 8.0]
    );
    let mut g = tiny_model("phi3", TinyDims::default()).tensor_f32(
        "rope_factors_short.weight",
        &[2],
        &[1.0, 2.0],
    );
    g.set(
        "phi3.rope.scaling.original_context_length",
        MetaValue::U32(32),
    );
    assert!(
        matches!(load(&g), Err(Error::MissingTensor { ref tensor }) if tensor == "rope_factors_long.weight")
    );
}

#[test]
fn granite_reads_its_four_scales() {
    let (spec, _) = load(&tiny_model("granite", TinyDims::default())).unwrap();
    assert_eq!(spec.rope_style, RopeStyle::Interleaved);
    assert_eq!(spec.embed_scale, Some(3.0));
    assert_eq!(spec.logit_scale, Some(0.25));
    assert!(spec
        .layers
        .iter()
        .all(|l| l.residual_scale == Some(0.5) && l.attention.scale == 0.25));
    let mut g = tiny_model("granite", TinyDims::default());
    g.remove("granite.logit_scale");
    assert!(matches!(load(&g), Err(Error::MissingKey { ref key }) if key == "granite.logit_scale"));
    let mut g = tiny_model("granite", TinyDims::default());
    g.set("granite.residual_scale", MetaValue::F32(f32::NAN));
    assert!(matches!(load(&g), Err(Error::InvalidHyperParameter { .. })));
}

#[test]
fn gemma3_sets_its_family_traits() {
    let dims = TinyDims {
        n_layer: 7,
        ..TinyDims::default()
    };
    let mut g = tiny_model("gemma3", dims);
    g.set("gemma3.rope.freq_base", MetaValue::F32(1e6));
    g.set("gemma3.rope.scaling.type", MetaValue::string("linear"));
    g.set("gemma3.rope.scaling.factor", MetaValue::F32(8.0));
    let (spec, w) = load(&g).unwrap();
    assert_eq!(spec.activation, Activation::GeluTanhGlu);
    assert_eq!(spec.rope_style, RopeStyle::NeoX);
    assert!(spec.tied_embeddings);
    let sliding: Vec<bool> = spec
        .layers
        .iter()
        .map(|l| l.attention.window == Some(4))
        .collect();
    assert_eq!(sliding, vec![true, true, true, true, true, false, true]);
    // local layers: their own base, never scaled; global ones: the file's
    assert_eq!(spec.layers[0].rope, RopeSpec::plain(10_000.0));
    assert_eq!(spec.layers[5].rope.theta, 1e6);
    assert_eq!(
        spec.layers[5].rope.scaling,
        RopeScaling::Linear { factor: 8.0 }
    );
    assert!(spec
        .layers
        .iter()
        .all(|l| l.qk_norm && l.post_attention_norm && l.post_ffn_norm));
    assert!((spec.embed_scale.unwrap() - 8f32.sqrt()).abs() < 1e-6);
    assert_eq!(spec.final_logit_softcap, None);
    assert_eq!(w.output.weight.name, "token_embd.weight");
    assert_eq!(w.layers[6].attn_q_norm.as_ref().unwrap().shape, [1, 4]);
    assert!(w.layers[0].post_ffw_norm.is_some());
    // without a window every layer is global
    g.remove("gemma3.attention.sliding_window");
    assert!(load(&g)
        .unwrap()
        .0
        .layers
        .iter()
        .all(|l| l.attention.window.is_none()));
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("general.architecture", MetaValue::string("mamba"));
    let err = load(&w).unwrap_err();
    assert!(
        matches!(err, Error::UnknownArchitecture(ref a) if a == "mamba"),
        "{err}"
    );
    let msg = err.to_string();
    for arch in crate::testutil::TINY_ARCHITECTURES {
        assert!(msg.contains(arch), "{msg}");
    }
}

#[test]
fn missing_and_invalid_hyper_parameters_are_named() {
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "general.architecture",
    ] {
        let mut w = tiny_model("llama", TinyDims::default());
        w.remove(key);
        let err = load(&w).unwrap_err();
        assert!(
            matches!(err, Error::MissingKey { key: ref k } if k == key),
            "{key}: {err}"
        );
    }
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("llama.attention.head_count_kv", MetaValue::U32(3));
    assert!(matches!(load(&w), Err(Error::InvalidHyperParameter { .. })));
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("llama.block_count", MetaValue::string("two"));
    assert!(matches!(load(&w), Err(Error::WrongKeyType { .. })));
    let mut w = tiny_model("gemma3", TinyDims::default());
    w.set("gemma3.attention.sliding_window", MetaValue::F32(4.0));
    assert!(matches!(load(&w), Err(Error::WrongKeyType { .. })));
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("llama.rope.scaling.type", MetaValue::string("yarn"));
    assert!(matches!(load(&w), Err(Error::InvalidHyperParameter { .. })));
}

#[test]
fn tensor_shapes_are_checked_against_the_hyper_parameters() {
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("llama.feed_forward_length", MetaValue::U32(32));
    match load(&w) {
        Err(Error::ShapeMismatch {
            tensor,
            expected,
            found,
        }) => {
            assert_eq!(tensor, "blk.0.ffn_gate.weight");
            assert_eq!(expected, vec![32, 8]);
            assert_eq!(found, vec![16, 8]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let mut w = tiny_model("llama", TinyDims::default());
    w.tensors.retain(|t| t.name != "blk.1.attn_v.weight");
    assert!(
        matches!(load(&w), Err(Error::MissingTensor { ref tensor }) if tensor == "blk.1.attn_v.weight")
    );
}

#[test]
fn rope_scaling_keys() {
    let scaling = |w: &GgufWriter| load(w).unwrap().0.layers[0].rope.scaling;
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("llama.rope.scaling.type", MetaValue::string("linear"));
    w.set("llama.rope.scaling.factor", MetaValue::F32(4.0));
    assert_eq!(scaling(&w), RopeScaling::Linear { factor: 4.0 });
    w.remove("llama.rope.scaling.type");
    assert_eq!(
        scaling(&w),
        RopeScaling::Linear { factor: 4.0 },
        "a factor alone is linear"
    );
    w.set("llama.rope.scaling.type", MetaValue::string("none"));
    assert_eq!(scaling(&w), RopeScaling::None);
    w.set("llama.rope.scaling.type", MetaValue::string("llama3"));
    w.set("llama.rope.scaling.low_freq_factor", MetaValue::F32(1.0));
    w.set("llama.rope.scaling.high_freq_factor", MetaValue::F32(4.0));
    w.set(
        "llama.rope.scaling.original_context_length",
        MetaValue::U32(8192),
    );
    assert_eq!(
        scaling(&w),
        RopeScaling::Llama3 {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192
        }
    );
}

#[test]
fn rope_freqs_tensor_divides_the_frequencies() {
    let mut w = tiny_model("llama", TinyDims::default());
    w = w.tensor_f32("rope_freqs.weight", &[2], &[1.0, 4.0]);
    let (spec, weights) = load(&w).unwrap();
    let rope = spec.layers[0].rope;
    assert_eq!(rope.factors, RopeFactors::Fixed);
    let base = rope.inv_freqs(4);
    let scaled = weights.rope_inv_freqs(&rope, 4, 128).unwrap();
    assert_eq!(scaled, vec![base[0], base[1] / 4.0]);
    let mut w = tiny_model("llama", TinyDims::default());
    w = w.tensor_f32("rope_freqs.weight", &[3], &[1.0, 4.0, 2.0]);
    assert!(
        matches!(load(&w), Err(Error::ShapeMismatch { ref tensor, .. }) if tensor == "rope_freqs.weight")
    );
}

/// Found while writing the `model_load` fuzz target: the per-layer descriptions (and
/// Gemma's sliding-layer flags) were allocated from `block_count` before
/// anything checked it, so a few bytes claiming 2^40 layers aborted the
/// process on allocation and 2^24 layers cost gigabytes before failing.
#[test]
fn block_count_beyond_the_tensor_table_is_a_typed_error_before_any_allocation() {
    for arch in ["llama", "gemma3"] {
        for n_layer in [1u64 << 24, 1 << 40, u64::MAX] {
            let mut w = tiny_model(arch, TinyDims::default());
            w.set(&format!("{arch}.block_count"), MetaValue::U64(n_layer));
            let err = load(&w).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidHyperParameter { key, .. } if key == &format!("{arch}.block_count")),
                "{arch} with {n_layer} layers: {err}"
            );
        }
    }
}
