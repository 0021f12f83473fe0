//! The GGUF reader on arbitrary bytes: header, metadata of every value type
//! (nested arrays included), tensor table, offsets and alignment. Whatever
//! parses must also survive every accessor and round-trip through the
//! writer: parse → write → parse → write gives the same bytes twice, so the
//! reader and writer agree on every value they both accept.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sotto_models::gguf::{GgufFile, GgufWriter, WriterTensor};

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, value) in gguf.metadata() {
        let _ = value.to_string();
        let _ = gguf.try_get_u32(key);
        let _ = gguf.try_get_i32(key);
        let _ = gguf.try_get_usize(key);
        let _ = gguf.try_get_f32(key);
        let _ = gguf.try_get_bool(key);
        let _ = gguf.try_get_str_array(key);
        let _ = gguf.try_get_int_array(key);
        let _ = gguf.try_get_f32_array(key);
    }
    for info in gguf.tensors() {
        let _ = info.dtype();
        assert_eq!(gguf.tensor_bytes(info).len(), info.n_bytes, "{info:?}");
        assert!(gguf.tensor(&info.name).is_some());
    }
    let first = rewrite(&gguf);
    let again = GgufFile::from_bytes(first.clone())
        .unwrap_or_else(|e| panic!("the writer's image of a parsed file does not parse: {e}"));
    assert_eq!(rewrite(&again), first, "parse and write disagree");
});

/// The image [`GgufWriter`] makes of everything `gguf` holds.
fn rewrite(gguf: &GgufFile) -> Vec<u8> {
    GgufWriter {
        version: gguf.version(),
        alignment: gguf.alignment(),
        metadata: gguf.metadata().to_vec(),
        tensors: gguf
            .tensors()
            .iter()
            .map(|t| WriterTensor {
                name: t.name.clone(),
                dims: t.dims.iter().map(|&d| d as u64).collect(),
                type_id: t.ggml_type.id(),
                data: gguf.tensor_bytes(t).to_vec(),
                offset_override: None,
            })
            .collect(),
    }
    .to_bytes()
}
