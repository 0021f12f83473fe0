//! Model loading from arbitrary bytes through the GGUF reader, the
//! architecture registry (hyper-parameters into the decoder description),
//! the weights table and the tokenizer and chat template construction. No
//! inference: a loaded model only tokenizes, detokenizes and renders one
//! short chat, which must stay within its own vocabulary.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sotto_models::{ChatMessage, GgufFile, Model};

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let Ok(model) = Model::from_gguf(gguf) else {
        return;
    };
    let vocab = model.tokenizer.vocab_size();
    assert_eq!(vocab, model.spec.vocab_size);
    assert_eq!(model.weights.layers.len(), model.spec.layers.len());
    if let Ok(ids) = model.tokenizer.encode("hello <|im_end|> wörld 12", true) {
        assert!(ids.iter().all(|&id| (id as usize) < vocab), "{ids:?}");
        let _ = model.tokenizer.decode(&ids, false);
    }
    let _ = model.template.render(
        &[ChatMessage::system("be brief"), ChatMessage::user("hi")],
        true,
    );
});
