use super::*;
use crate::gguf::{GgufWriter, MetaValue};
use crate::spec::{Activation, RopeStyle};
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
    assert_eq!(spec.rope.style, RopeStyle::Interleaved);
    assert_eq!(spec.rope.n_rot, 4);
    assert_eq!(spec.rope.theta, 10_000.0);
    assert!(!spec.qk_norm && !spec.post_norms && !spec.tied_embeddings);
    assert_eq!(spec.layer_is_sliding, vec![false, false]);
    assert!((spec.attn_scale - 0.5).abs() < 1e-7);
    assert_eq!(w.layers.len(), 2);
    assert_eq!(w.token_embd.shape, [263, 8]);
    assert_eq!(w.layers[1].attn_q.shape, [8, 8]);
    assert_eq!(w.layers[1].attn_k.shape, [4, 8]);
    assert_eq!(w.layers[0].ffn_down.shape, [8, 16]);
    assert!(w.layers[0].attn_q_norm.is_none());
    assert_eq!(w.output.name, "output.weight");
}

#[test]
fn gemma3_sets_its_family_traits() {
    let dims = TinyDims {
        n_layer: 7,
        ..TinyDims::default()
    };
    let (spec, w) = load(&tiny_model("gemma3", dims)).unwrap();
    assert_eq!(spec.activation, Activation::GeluTanhGlu);
    assert_eq!(spec.rope.style, RopeStyle::NeoX);
    assert_eq!(spec.rope.local_theta, Some(10_000.0));
    assert!(spec.qk_norm && spec.post_norms && spec.tied_embeddings);
    assert_eq!(spec.sliding_window, Some(4));
    assert_eq!(
        spec.layer_is_sliding,
        vec![true, true, true, true, true, false, true]
    );
    assert!((spec.embed_scale.unwrap() - 8f32.sqrt()).abs() < 1e-6);
    assert_eq!(w.output.name, "token_embd.weight");
    assert_eq!(w.layers[6].attn_q_norm.as_ref().unwrap().shape, [1, 4]);
    assert!(w.layers[0].post_ffw_norm.is_some());
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
    assert!(msg.contains("llama") && msg.contains("gemma3"), "{msg}");
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
    w.remove("gemma3.attention.sliding_window");
    assert!(matches!(load(&w), Err(Error::MissingKey { .. })));
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
    use crate::spec::RopeScaling;
    let mut w = tiny_model("llama", TinyDims::default());
    w.set("llama.rope.scaling.type", MetaValue::string("linear"));
    w.set("llama.rope.scaling.factor", MetaValue::F32(4.0));
    assert_eq!(
        load(&w).unwrap().0.rope.scaling,
        RopeScaling::Linear { factor: 4.0 }
    );
    w.set("llama.rope.scaling.type", MetaValue::string("llama3"));
    w.set("llama.rope.scaling.low_freq_factor", MetaValue::F32(1.0));
    w.set("llama.rope.scaling.high_freq_factor", MetaValue::F32(4.0));
    w.set(
        "llama.rope.scaling.original_context_length",
        MetaValue::U32(8192),
    );
    assert_eq!(
        load(&w).unwrap().0.rope.scaling,
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
    let base = spec.rope.inv_freqs(false);
    let scaled = weights.rope_inv_freqs(&spec, false).unwrap();
    assert_eq!(scaled, vec![base[0], base[1] / 4.0]);
    let mut w = tiny_model("llama", TinyDims::default());
    w = w.tensor_f32("rope_freqs.weight", &[3], &[1.0, 4.0, 2.0]);
    assert!(
        matches!(load(&w), Err(Error::ShapeMismatch { ref tensor, .. }) if tensor == "rope_freqs.weight")
    );
}
