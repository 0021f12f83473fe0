use super::*;
use crate::gguf::writer::WriterTensor;
use proptest::prelude::*;

fn every_type_metadata() -> Vec<(String, MetaValue)> {
    vec![
        ("u8".into(), MetaValue::U8(200)),
        ("i8".into(), MetaValue::I8(-100)),
        ("u16".into(), MetaValue::U16(60_000)),
        ("i16".into(), MetaValue::I16(-30_000)),
        ("u32".into(), MetaValue::U32(4_000_000_000)),
        ("i32".into(), MetaValue::I32(-2_000_000_000)),
        ("f32".into(), MetaValue::F32(1.5e-5)),
        ("bool".into(), MetaValue::Bool(true)),
        ("string".into(), MetaValue::string("héllo ▁ wörld")),
        ("empty_string".into(), MetaValue::string("")),
        ("u64".into(), MetaValue::U64(u64::MAX)),
        ("i64".into(), MetaValue::I64(i64::MIN)),
        ("f64".into(), MetaValue::F64(-2.25e300)),
        ("arr_str".into(), MetaValue::str_array(&["a", "", "ccc"])),
        ("arr_i32".into(), MetaValue::i32_array(&[1, -2, 3])),
        ("arr_empty".into(), MetaValue::Array(MetaType::F32, vec![])),
        (
            "arr_nested".into(),
            MetaValue::Array(
                MetaType::Array,
                vec![
                    MetaValue::i32_array(&[1, 2]),
                    MetaValue::Array(MetaType::Bool, vec![MetaValue::Bool(false)]),
                ],
            ),
        ),
    ]
}

fn small_file(version: u32) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.version = version;
    w.metadata = every_type_metadata();
    w.tensor_f32("a", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        .tensor_f32("b", &[3], &[-1.0, 0.5, 9.0])
        .tensor("q", &[32], 8, vec![7u8; 34])
}

#[test]
fn v2_and_v3_round_trip_every_metadata_type() {
    for version in [2, 3] {
        let bytes = small_file(version).to_bytes();
        let g = GgufFile::from_bytes(bytes.clone()).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.file_size(), bytes.len());
        assert_eq!(g.alignment(), 32);
        assert_eq!(g.data_start() % 32, 0);
        assert_eq!(g.metadata(), every_type_metadata().as_slice());
        for (k, v) in every_type_metadata() {
            assert_eq!(g.get(&k), Some(&v), "{k}");
        }
        assert_eq!(g.tensors().len(), 3);
        let a = g.tensor("a").unwrap();
        assert_eq!(a.dims, vec![4, 2]);
        assert_eq!(a.ggml_type, GgmlType::F32);
        assert_eq!(a.dtype().unwrap(), DType::F32);
        assert_eq!(a.n_bytes, 32);
        let floats: Vec<f32> = g
            .tensor_bytes(a)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let q = g.tensor("q").unwrap();
        assert_eq!(q.ggml_type, GgmlType::Q8_0);
        assert_eq!(g.tensor_bytes(q), &[7u8; 34][..]);
        assert_eq!(q.offset % 32, 0);
    }
}

#[test]
fn typed_getters_coerce_integers_and_reject_wrong_types() {
    let g = GgufFile::from_bytes(small_file(3).to_bytes()).unwrap();
    assert_eq!(g.try_get_u32("u8").unwrap(), Some(200));
    assert_eq!(g.try_get_u32("u16").unwrap(), Some(60_000));
    assert_eq!(g.try_get_u64("u32").unwrap(), Some(4_000_000_000));
    assert_eq!(g.try_get_i32("i8").unwrap(), Some(-100));
    assert_eq!(g.try_get_u32("missing").unwrap(), None);
    assert_eq!(g.try_get_f32("f64").unwrap(), Some(-2.25e300f64 as f32));
    assert_eq!(g.try_get_str("string").unwrap(), Some("héllo ▁ wörld"));
    assert_eq!(
        g.try_get_str_array("arr_str").unwrap(),
        Some(vec!["a", "", "ccc"])
    );
    assert_eq!(
        g.try_get_int_array("arr_i32").unwrap(),
        Some(vec![1, -2, 3])
    );
    assert_eq!(g.try_get_bool("bool").unwrap(), Some(true));
    // negative or too-large values do not silently wrap
    assert!(matches!(
        g.try_get_u32("i8"),
        Err(Error::WrongKeyType { .. })
    ));
    assert!(matches!(
        g.try_get_u32("u64"),
        Err(Error::WrongKeyType { .. })
    ));
    assert!(
        matches!(g.try_get_str("u32"), Err(Error::WrongKeyType { ref key, .. }) if key == "u32")
    );
    // the plain getters answer None for missing and mistyped keys alike
    assert_eq!(g.get_u32("u16"), Some(60_000));
    assert_eq!(g.get_str("string"), Some("héllo ▁ wörld"));
    assert_eq!(g.get_str("u32"), None);
    assert_eq!(g.get_u32("missing"), None);
    assert_eq!(g.get_str_array("arr_str"), Some(vec!["a", "", "ccc"]));
    assert_eq!(g.get("arr_i32").unwrap().to_string(), "[1, -2, 3]");
    assert_eq!(g.get("string").unwrap().to_string(), "\"héllo ▁ wörld\"");
    let long = MetaValue::i32_array(&(0..40).collect::<Vec<_>>()).to_string();
    assert!(
        long.starts_with("[0, 1, 2") && long.ends_with(", … 40 items]"),
        "{long}"
    );
    assert!(
        matches!(g.require_u32("missing"), Err(Error::MissingKey { ref key }) if key == "missing")
    );
}

/// A metadata-only file may ask for any power-of-two alignment; writing it
/// back pads nothing (there is no tensor data to align), so its image stays
/// the size of its metadata and reads back the same. A fuzzed 787-byte file
/// asking for 2^30 had made a 1 GiB header.
#[test]
fn a_metadata_only_file_with_a_huge_alignment_writes_small() {
    let mut w = GgufWriter::new();
    w.metadata = every_type_metadata();
    w.alignment = 1 << 30;
    w.metadata
        .push(("general.alignment".into(), MetaValue::U32(1 << 30)));
    let image = w.to_bytes();
    assert!(image.len() < 4096, "{} bytes", image.len());
    let g = GgufFile::from_bytes(image.clone()).unwrap();
    assert_eq!(g.alignment(), 1 << 30);
    assert!(g.tensors().is_empty());
    let again = GgufWriter {
        version: g.version(),
        alignment: g.alignment(),
        metadata: g.metadata().to_vec(),
        tensors: Vec::new(),
    };
    assert_eq!(again.to_bytes(), image);
}

#[test]
fn custom_alignment_is_honoured_and_validated() {
    let mut w = small_file(3);
    w.alignment = 64;
    w.metadata
        .push(("general.alignment".into(), MetaValue::U32(64)));
    let g = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_start() % 64, 0);
    assert!(g.tensors().iter().all(|t| t.offset % 64 == 0));

    for bad in [
        MetaValue::U32(0),
        MetaValue::U32(48),
        MetaValue::string("32"),
    ] {
        let mut w = small_file(3);
        w.metadata.push(("general.alignment".into(), bad));
        let err = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
        assert!(
            matches!(err, Error::BadMetadata { ref key, .. } if key == "general.alignment"),
            "{err}"
        );
    }
}

#[test]
fn open_memory_maps_a_file() {
    let bytes = small_file(3).to_bytes();
    let path = crate::testutil::write_temp("open", &bytes).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.path(), Some(path.path()));
    assert_eq!(g.tensor_bytes(g.tensor("q").unwrap()), &[7u8; 34][..]);
    std::fs::remove_file(&path).unwrap();
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = small_file(3).to_bytes();
    let full = GgufFile::from_bytes(bytes.clone()).unwrap();
    // The padding after the last tensor is optional; everything before is not.
    let data_end = full
        .tensors()
        .iter()
        .map(|t| full.data_start() + t.offset + t.n_bytes)
        .max()
        .unwrap();
    assert!(GgufFile::from_bytes(bytes[..data_end].to_vec()).is_ok());
    for len in 0..data_end {
        let result = GgufFile::from_bytes(bytes[..len].to_vec());
        assert!(
            result.is_err(),
            "truncated to {len} of {} parsed",
            bytes.len()
        );
    }
}

#[test]
fn wrong_magic_and_unsupported_versions() {
    let mut bytes = small_file(3).to_bytes();
    bytes[0] = b'X';
    assert!(matches!(
        GgufFile::from_bytes(bytes),
        Err(Error::BadMagic { .. })
    ));
    for v in [0, 1, 4, u32::MAX] {
        let mut w = small_file(3);
        w.version = v;
        assert!(
            matches!(GgufFile::from_bytes(w.to_bytes()), Err(Error::UnsupportedVersion(x)) if x == v)
        );
    }
}

/// A header claiming `n_kv` entries followed by `body`.
fn header(n_tensors: u64, n_kv: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b.extend(body);
    b
}

fn kv_prefix(key: &str, ty: u32) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend(key.as_bytes());
    b.extend(ty.to_le_bytes());
    b
}

#[test]
fn absurd_counts_and_lengths_are_rejected_before_allocating() {
    // metadata and tensor counts far beyond the file
    assert!(matches!(
        GgufFile::from_bytes(header(0, u64::MAX, &[])),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        GgufFile::from_bytes(header(u64::MAX, 0, &[0; 64])),
        Err(Error::Truncated { .. })
    ));
    // key length beyond the file
    let mut body = u64::MAX.to_le_bytes().to_vec();
    body.extend([0u8; 16]);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Truncated { .. })
    ));
    // string value length beyond the file
    let mut body = kv_prefix("k", 8);
    body.extend((1u64 << 40).to_le_bytes());
    body.extend(b"abc");
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Truncated { .. })
    ));
    // array count beyond the remaining bytes
    let mut body = kv_prefix("k", 9);
    body.extend(5u32.to_le_bytes());
    body.extend((u64::MAX / 2).to_le_bytes());
    body.extend([0u8; 32]);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Truncated { .. })
    ));
    // unknown value and element types
    let mut body = kv_prefix("k", 13);
    body.extend([0u8; 16]);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Malformed { .. })
    ));
    let mut body = kv_prefix("k", 9);
    body.extend(77u32.to_le_bytes());
    body.extend(1u64.to_le_bytes());
    body.extend([0u8; 16]);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Malformed { .. })
    ));
    // arrays nested deeper than any real file, many levels claimed
    let mut body = kv_prefix("k", 9);
    for _ in 0..100 {
        body.extend(9u32.to_le_bytes());
        body.extend(1u64.to_le_bytes());
    }
    body.extend([0u8; 64]);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Malformed { .. })
    ));
    // invalid UTF-8 and a bool that is neither 0 nor 1
    let mut body = kv_prefix("k", 8);
    body.extend(2u64.to_le_bytes());
    body.extend([0xC3, 0x28]);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Malformed { .. })
    ));
    let mut body = kv_prefix("k", 7);
    body.push(2);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Malformed { .. })
    ));
}

/// A string array of `items` (raw bytes), as the `k` key's value.
fn str_array_kv(items: &[&[u8]]) -> Vec<u8> {
    let mut body = kv_prefix("k", 9);
    body.extend(8u32.to_le_bytes());
    body.extend((items.len() as u64).to_le_bytes());
    for item in items {
        body.extend((item.len() as u64).to_le_bytes());
        body.extend(*item);
    }
    body
}

#[test]
fn string_arrays_are_checked_item_by_item() {
    let read = |items: &[&[u8]]| GgufFile::from_bytes(header(0, 1, &str_array_kv(items)));
    let ok = read(&["é".as_bytes(), b"", "▁ab".as_bytes()]).unwrap();
    assert_eq!(
        ok.try_get_str_array("k").unwrap().unwrap(),
        ["é", "", "▁ab"]
    );
    // "é" cut between two items: the whole is UTF-8, neither item is;
    // the error names the first, at its length prefix
    // (header 24, key 13, element type and count 12, "a" 9)
    match read(&[b"a", &[0xC3], &[0xA9]]) {
        Err(Error::Malformed { offset, .. }) => assert_eq!(offset, 24 + 13 + 12 + 9),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read(&[b"a", &[0xFF]]),
        Err(Error::Malformed { .. })
    ));
    // an item running past the end of the file
    let mut body = str_array_kv(&[b"a", b"bc"]);
    body.truncate(body.len() - 1);
    assert!(matches!(
        GgufFile::from_bytes(header(0, 1, &body)),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn duplicate_keys_and_tensor_names_are_rejected() {
    let w = GgufWriter::new()
        .kv("k", MetaValue::U8(1))
        .kv("k", MetaValue::U8(2));
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()),
        Err(Error::Malformed { .. })
    ));
    let w = GgufWriter::new()
        .tensor_f32("t", &[1], &[1.0])
        .tensor_f32("t", &[1], &[2.0]);
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()),
        Err(Error::BadTensor { .. })
    ));
}

fn with_tensor(t: WriterTensor) -> Result<GgufFile> {
    let mut w = GgufWriter::new().tensor_f32("ok", &[8], &[0.0; 8]);
    w.tensors.push(t);
    GgufFile::from_bytes(w.to_bytes())
}

fn tensor(dims: &[u64], type_id: u32, data: usize) -> WriterTensor {
    WriterTensor {
        name: "bad".into(),
        dims: dims.to_vec(),
        type_id,
        data: vec![0; data],
        offset_override: None,
    }
}

fn assert_bad_tensor(r: Result<GgufFile>) {
    match r {
        Err(Error::BadTensor { tensor, .. }) => assert_eq!(tensor, "bad"),
        other => panic!("expected BadTensor(bad), got {other:?}"),
    }
}

#[test]
fn hostile_tensor_tables_are_typed_errors() {
    // absurd dimensions: product overflow, n_dims 0 and 9, a zero dimension
    assert_bad_tensor(with_tensor(tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 4)));
    assert_bad_tensor(with_tensor(tensor(&[u64::MAX], 0, 4)));
    assert_bad_tensor(with_tensor(tensor(&[1; 9], 0, 4)));
    assert_bad_tensor(with_tensor(tensor(&[], 0, 4)));
    assert_bad_tensor(with_tensor(tensor(&[4, 0], 0, 4)));
    // data past the end of the file
    assert_bad_tensor(with_tensor(tensor(&[1024], 0, 16)));
    let mut t = tensor(&[4], 0, 16);
    t.offset_override = Some(1 << 40);
    assert_bad_tensor(with_tensor(t));
    let mut t = tensor(&[4], 0, 16);
    t.offset_override = Some(u64::MAX - 7);
    assert_bad_tensor(with_tensor(t));
    // misaligned and overlapping data
    let mut t = tensor(&[4], 0, 16);
    t.offset_override = Some(4);
    assert_bad_tensor(with_tensor(t));
    let mut t = tensor(&[4], 0, 16);
    t.offset_override = Some(0);
    assert_bad_tensor(with_tensor(t));
    // row length not a multiple of the quant block
    assert_bad_tensor(with_tensor(tensor(&[16], 2, 64)));
    // unknown ggml type
    match with_tensor(tensor(&[4], 99, 16)) {
        Err(Error::UnknownTensorType { tensor, type_id }) => {
            assert_eq!((tensor.as_str(), type_id), ("bad", 99))
        }
        other => panic!("expected UnknownTensorType, got {other:?}"),
    }
    // an id ggml removed (Q4_2) is unknown too
    assert!(matches!(
        with_tensor(tensor(&[32], 4, 18)),
        Err(Error::UnknownTensorType { type_id: 4, .. })
    ));
}

/// A type Sotto has no kernels for still parses with its ggml size checked
/// (so `inspect` can list it); using it as a weight is a typed error that
/// names the tensor and the type.
#[test]
fn tensors_of_types_without_kernels_parse_and_refuse_to_load() {
    // iq2_xxs: 256 elements in 66 bytes
    let g = with_tensor(tensor(&[256, 2], GgmlType::IQ2_XXS.id(), 132)).unwrap();
    let t = g.tensor("bad").unwrap();
    assert_eq!((t.ggml_type, t.n_bytes), (GgmlType::IQ2_XXS, 132));
    let err = t.dtype().unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor bad has type iq2_xxs (ggml type 16), which sotto cannot run"
    );
    match crate::weights::Weight::from_gguf(&g, t) {
        Err(Error::UnsupportedTensorType { tensor, ggml_type }) => {
            assert_eq!((tensor.as_str(), ggml_type), ("bad", GgmlType::IQ2_XXS))
        }
        other => panic!("expected UnsupportedTensorType, got {other:?}"),
    }
    // its row length must be whole blocks of 256, as for any type
    assert_bad_tensor(with_tensor(tensor(&[128, 2], GgmlType::IQ2_XXS.id(), 132)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random byte mutations of a valid file never panic; when the result
    /// still parses, every tensor view lies inside the file.
    #[test]
    fn mutated_files_never_panic(
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<proptest::sample::Index>()),
    ) {
        let mut bytes = small_file(3).to_bytes();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            let len = cut.index(bytes.len());
            bytes.truncate(len);
        }
        let n = bytes.len();
        if let Ok(g) = GgufFile::from_bytes(bytes) {
            for t in g.tensors() {
                prop_assert_eq!(g.tensor_bytes(t).len(), t.n_bytes);
                prop_assert!(g.data_start() + t.offset + t.n_bytes <= n);
            }
        }
    }
}

/// The reader on a file written by llama.cpp's own writer (PyPI `gguf`,
/// models/fuzz/make-corpus.py): every value type, nested arrays, a custom
/// alignment and tensors of several ggml types read back as written.
#[test]
fn reads_every_value_type_as_pypi_gguf_writes_it() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/gguf_reader/every-value-type");
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_start() % 64, 0);
    assert_eq!(g.get("t.u8"), Some(&MetaValue::U8(200)));
    assert_eq!(g.get("t.i8"), Some(&MetaValue::I8(-5)));
    assert_eq!(g.get("t.u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(g.get("t.i16"), Some(&MetaValue::I16(-300)));
    assert_eq!(g.get("t.u32"), Some(&MetaValue::U32(4_000_000_000)));
    assert_eq!(g.get("t.i32"), Some(&MetaValue::I32(-70000)));
    assert_eq!(g.get("t.f32"), Some(&MetaValue::F32(1.5)));
    assert_eq!(g.get("t.bool"), Some(&MetaValue::Bool(true)));
    assert_eq!(g.get_str("t.string"), Some("héllo"));
    assert_eq!(g.get("t.u64"), Some(&MetaValue::U64(1 << 40)));
    assert_eq!(g.get("t.i64"), Some(&MetaValue::I64(-(1 << 40))));
    assert_eq!(g.get("t.f64"), Some(&MetaValue::F64(2.25)));
    assert_eq!(
        g.try_get_int_array("t.arr.i32").unwrap(),
        Some(vec![1, -2, 3])
    );
    assert_eq!(
        g.try_get_f32_array("t.arr.f32").unwrap(),
        Some(vec![0.5, -1.0])
    );
    assert_eq!(g.get_str_array("t.arr.str"), Some(vec!["a", "", "ü"]));
    match g.get("t.arr.nested") {
        Some(MetaValue::Array(MetaType::Array, items)) => assert_eq!(items.len(), 2),
        other => panic!("nested array read as {other:?}"),
    }
    let dims = |n: &str| g.tensor(n).unwrap().dims.clone();
    assert_eq!(dims("f32"), vec![4, 2]);
    assert_eq!(dims("q8_0"), vec![32, 2]);
    assert_eq!(dims("q4_k"), vec![256, 1]);
    let q8 = g.tensor("q8_0").unwrap();
    assert_eq!(q8.n_bytes, 68);
    let expected: Vec<u8> = (0..68).collect();
    assert_eq!(g.tensor_bytes(q8), expected.as_slice());
    for t in g.tensors() {
        assert_eq!(t.offset % 64, 0, "{}", t.name);
    }
}
