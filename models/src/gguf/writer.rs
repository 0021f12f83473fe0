//! A small GGUF writer: builds valid (or, for tests, deliberately broken)
//! GGUF images in memory. Used by the tests of this crate and of the
//! workspace, and usable by converters.

use super::{MetaType, MetaValue, DEFAULT_ALIGNMENT};

/// A tensor to write: name, ggml dims (ne0 first), ggml type id and raw data.
#[derive(Debug, Clone)]
pub struct WriterTensor {
    /// The tensor's name.
    pub name: String,
    /// ggml dims, ne0 (the contiguous axis) first.
    pub dims: Vec<u64>,
    /// ggml type id, written as given.
    pub type_id: u32,
    /// Raw tensor bytes, written as given.
    pub data: Vec<u8>,
    /// Overrides the computed data offset (to build broken files).
    pub offset_override: Option<u64>,
}

/// Builds a GGUF image. Values are written exactly as given, without
/// validation, so tests can produce hostile files too.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    /// GGUF version in the header (3 by default).
    pub version: u32,
    /// Alignment of the tensor data section, in bytes.
    pub alignment: usize,
    /// Key/value pairs, in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors, in file order.
    pub tensors: Vec<WriterTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    /// An empty version-3 file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry (builder style).
    pub fn kv(mut self, key: &str, value: MetaValue) -> Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Replaces or adds a metadata entry in place.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Removes a metadata entry.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// Adds a tensor (builder style).
    pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(WriterTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            type_id,
            data,
            offset_override: None,
        });
        self
    }

    /// Adds an f32 tensor (builder style).
    pub fn tensor_f32(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, 0, data)
    }

    /// The file image.
    pub fn to_bytes(&self) -> Vec<u8> {
        let sizes: Vec<usize> = self.tensors.iter().map(|t| t.data.len()).collect();
        let offsets = data_offsets(&sizes, self.alignment);
        let table: Vec<TableEntry<'_>> = self
            .tensors
            .iter()
            .zip(&offsets)
            .map(|(t, &offset)| TableEntry {
                name: &t.name,
                dims: &t.dims,
                type_id: t.type_id,
                offset: t.offset_override.unwrap_or(offset),
            })
            .collect();
        let mut out = encode_header(self.version, self.alignment, &self.metadata, &table);
        let align = self.alignment.max(1);
        let data_start = out.len();
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + offset as usize, 0);
            out.extend_from_slice(&t.data);
        }
        if !self.tensors.is_empty() {
            pad_to(&mut out, align);
        }
        out
    }
}

/// One tensor-table entry as written (its data follows the header).
pub(crate) struct TableEntry<'a> {
    pub name: &'a str,
    pub dims: &'a [u64],
    pub type_id: u32,
    /// From the start of the data section.
    pub offset: u64,
}

/// Where each tensor of `sizes` bytes starts in the data section, each
/// aligned to `alignment`.
pub(crate) fn data_offsets(sizes: &[usize], alignment: usize) -> Vec<u64> {
    let align = alignment.max(1) as u64;
    let mut next = 0u64;
    sizes
        .iter()
        .map(|&size| {
            let offset = next;
            next = (next + size as u64).div_ceil(align) * align;
            offset
        })
        .collect()
}

/// Everything before the data section: magic, counts, metadata and tensor
/// table, padded to `alignment` when a tensor table follows. Without
/// tensors there is no data to align (the reader asks for the padding only
/// in front of tensor data), and a metadata-only file's `general.alignment`
/// (any power of two up to 2^31) would otherwise make the image that large:
/// 787 fuzzed bytes asking for 2^30 became a 1 GiB header.
pub(crate) fn encode_header(
    version: u32,
    alignment: usize,
    metadata: &[(String, MetaValue)],
    table: &[TableEntry<'_>],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend_from_slice(&(value.meta_type() as u32).to_le_bytes());
        write_value(&mut out, value);
    }
    for t in table {
        write_string(&mut out, t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.type_id.to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
    }
    if !table.is_empty() {
        pad_to(&mut out, alignment.max(1));
    }
    out
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    let len = out.len().div_ceil(align) * align;
    out.resize(len, 0);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => write_string(out, s),
        MetaValue::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
        MetaValue::Strings(items) => {
            out.extend_from_slice(&(MetaType::String as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items.iter() {
                write_string(out, item);
            }
        }
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Convenience constructors for metadata values in tests and converters.
impl MetaValue {
    /// A string value.
    pub fn string(s: impl Into<String>) -> MetaValue {
        MetaValue::String(s.into())
    }
    /// An array of strings.
    pub fn str_array<S: AsRef<str>>(items: &[S]) -> MetaValue {
        MetaValue::Strings(items.iter().collect())
    }
    /// An array of i32.
    pub fn i32_array(items: &[i32]) -> MetaValue {
        MetaValue::Array(
            MetaType::I32,
            items.iter().map(|&x| MetaValue::I32(x)).collect(),
        )
    }
    /// An array of f32.
    pub fn f32_array(items: &[f32]) -> MetaValue {
        MetaValue::Array(
            MetaType::F32,
            items.iter().map(|&x| MetaValue::F32(x)).collect(),
        )
    }
}
