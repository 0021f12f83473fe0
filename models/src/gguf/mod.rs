//! GGUF reader (versions 2 and 3): memory-maps the file, parses the header,
//! metadata and tensor table, and hands out zero-copy views of tensor data.
//!
//! The file is treated as hostile: every count, length, offset and size is
//! checked against the bytes that remain before anything is allocated or
//! indexed, with overflow-checked arithmetic. A malformed file is an
//! [`Error`], never a panic or an out-of-memory abort.
//!
//! Layout (little endian):
//! ```text
//! "GGUF" u32 version | u64 n_tensors | u64 n_kv
//! n_kv × (string key, u32 value_type, value)
//! n_tensors × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml_type, u64 offset)
//! padding to general.alignment | tensor data (offsets relative to here)
//! ```

mod metadata;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sotto_kernels::quant::{DType, GgmlType};

use crate::error::{Error, Result};

pub use metadata::{MetaType, MetaValue, StrArray};
pub(crate) use writer::{data_offsets, encode_header, TableEntry};
pub use writer::{GgufWriter, WriterTensor};

/// `"GGUF"` as the little-endian u32 the header starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when the file does not
/// set `general.alignment`.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's maximum tensor rank.
pub const MAX_DIMS: usize = 4;
/// Nested arrays deeper than this are rejected: no real file nests at all,
/// and unbounded recursion on hostile input would overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// The bytes a [`GgufFile`] parses: a memory map for real files, an owned
/// buffer for files built in memory (tests, converters).
pub(crate) enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// The file at `path`, memory-mapped read-only; `huge`: asked for on 2
    /// MiB pages as a whole (a file streamed whole, the packed panels).
    ///
    /// Weights are streamed whole for every token: on 2 MiB pages a pass
    /// over them takes a TLB miss per 2 MiB, not per 4 KiB (under a
    /// hypervisor each miss is a two-level walk). But a model file is
    /// mostly matrices a backend repacks and never reads again, and on a
    /// map asked for 2 MiB pages each read of a small tensor between them
    /// (a norm) maps the 2 MiB around it: the default model's whole file
    /// was resident beside its panels. So a model file is mapped on small
    /// pages, and a backend asks for huge ones over the matrices it streams
    /// from the file ([`Storage::ask_huge`]).
    pub(crate) fn map(path: &Path, huge: bool) -> Result<Storage> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        // One of the two `unsafe` outside kernels/src/arch (the other drops
        // pages, in `Storage::release`): there is no safe mmap.
        // SAFETY: the map is read-only and owned by `Storage`, so no slice
        // outlives it. Mapping is unsound only if another process truncates or
        // rewrites the file while it is loaded, the same contract ggml's
        // loader accepts for model files.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        // Pages already cached in small folios stay as they are; a refusal
        // is harmless.
        #[cfg(target_os = "linux")]
        if huge {
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = huge;
        Ok(Storage::Mapped(map))
    }

    /// Asks for `range` of a mapped file on 2 MiB pages (see
    /// [`Storage::map`]); advice only.
    pub(crate) fn ask_huge(&self, range: std::ops::Range<usize>) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped(map) = self {
            if range.start < range.end && range.end <= map.len() {
                let _ = map.advise_range(memmap2::Advice::HugePage, range.start, range.len());
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = range;
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }

    /// Lets the OS drop the resident pages of `range` (mapped files only;
    /// the bytes stay readable and are read from the file again if used).
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Storage::Mapped(map) = self {
            if range.start < range.end && range.end <= map.len() {
                // SAFETY: the map is a read-only private file mapping that is
                // never written, so MADV_DONTNEED only discards clean page-cache
                // copies: later reads fault the same bytes in from the file and
                // no slice observes a change. (Also at the one-page rounding
                // memmap2 applies to the start.) A refusal is harmless.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        range.start,
                        range.len(),
                    )
                };
            }
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Mapped(m) => write!(f, "Mapped({} bytes)", m.len()),
            Storage::Owned(b) => write!(f, "Owned({} bytes)", b.len()),
        }
    }
}

/// Zeroed anonymous memory asked for on 2 MiB pages (Linux's transparent
/// huge pages, advised `MADV_HUGEPAGE` before the first touch), as the
/// model and cache maps ask for theirs: for buffers that must be read as
/// the weights are (the bench's bandwidth probe, the kernel bench's
/// matrices). A vector of 8-byte words where no map is had
/// ([`HugeAnon::is_mapped`] tells).
#[derive(Debug)]
pub struct HugeAnon {
    map: Option<memmap2::MmapMut>,
    owned: Vec<u64>,
    len: usize,
}

impl HugeAnon {
    /// `len` zero bytes.
    pub fn new(len: usize) -> HugeAnon {
        let map = memmap2::MmapMut::map_anon(len.max(1)).ok();
        #[cfg(target_os = "linux")]
        if let Some(m) = &map {
            // a refusal leaves small pages
            let _ = m.advise(memmap2::Advice::HugePage);
        }
        let owned = if map.is_some() {
            Vec::new()
        } else {
            vec![0; len.div_ceil(8)]
        };
        HugeAnon { map, owned, len }
    }

    /// Whether the bytes are a map (page-aligned, advised) rather than the
    /// fallback vector.
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => &m[..self.len],
            None => &bytemuck::cast_slice(&self.owned)[..self.len],
        }
    }

    /// The bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.map {
            Some(m) => &mut m[..self.len],
            None => &mut bytemuck::cast_slice_mut(&mut self.owned)[..self.len],
        }
    }
}

/// A whole file memory-mapped read-only, as model files are: for the
/// caches an engine writes beside the user's models (the repacked weight
/// panels), whose bytes are then used in place. The same contract as a
/// model file: another process must not truncate or rewrite it while it is
/// mapped (caches are replaced by renaming a new file over them, which
/// leaves a mapped one intact).
pub struct MappedFile {
    storage: Storage,
}

impl MappedFile {
    /// The file at `path`. (Its pages fault in as they are first read:
    /// mapping them all at once on one thread measured slower than the
    /// faults of a checksum read on the pool.)
    pub fn open(path: impl AsRef<Path>) -> Result<MappedFile> {
        Ok(MappedFile {
            storage: Storage::map(path.as_ref(), true)?,
        })
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedFile({} bytes)", self.bytes().len())
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml order: `dims[0]` (ne0) is the contiguous, fastest-varying axis.
    pub dims: Vec<usize>,
    /// Any ggml type (sizes checked); [`TensorInfo::dtype`] says whether
    /// Sotto can run it.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: usize,
    /// Size of the data in bytes (validated against the file).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements (validated not to overflow at parse time).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The tensor's type as Sotto runs it, or
    /// [`Error::UnsupportedTensorType`] naming the tensor and its type.
    pub fn dtype(&self) -> Result<DType> {
        DType::try_from(self.ggml_type).map_err(|_| Error::UnsupportedTensorType {
            tensor: self.name.clone(),
            ggml_type: self.ggml_type,
        })
    }
}

/// A parsed GGUF file. Cheap to share behind an `Arc`; tensor data stays in
/// the memory map.
pub struct GgufFile {
    path: Option<PathBuf>,
    storage: Arc<Storage>,
    /// Files other than `storage` that hold tensor data, for a model
    /// assembled from several files ([`GgufFile::from_parts`]); a tensor of
    /// `parts[i]` has its offset from the start of that file.
    parts: Vec<Arc<Storage>>,
    /// Per tensor: `None` for the data section of `storage`, else its part.
    tensor_part: Vec<Option<usize>>,
    version: u32,
    alignment: usize,
    metadata: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_start: usize,
}

impl fmt::Debug for GgufFile {
    // Metadata holds whole vocabularies: list keys and counts only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("alignment", &self.alignment)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let mut gguf = Self::parse(Arc::new(Storage::map(path, false)?))?;
        gguf.path = Some(path.to_path_buf());
        Ok(gguf)
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Arc::new(Storage::Owned(bytes)))
    }

    fn parse(storage: Arc<Storage>) -> Result<GgufFile> {
        let bytes = storage.bytes();
        let mut cur = Cursor::new(bytes);
        let magic = cur.take(4, "magic")?;
        let found = [magic[0], magic[1], magic[2], magic[3]];
        if found != GGUF_MAGIC {
            return Err(Error::BadMagic { found });
        }
        let version = cur.u32("version")?;
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion(version));
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;

        // Smallest possible kv: 8-byte key length + 0-byte key + 4-byte type + 1-byte value.
        let n_kv = cur.bounded_count(n_kv, 13, "metadata count")?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut key_index = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key_offset = cur.pos;
            let key = cur.string("metadata key")?;
            let ty = cur.u32("metadata value type")?;
            let value = metadata::read_value(&mut cur, ty, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::Malformed {
                    offset: key_offset as u64,
                    reason: format!("duplicate metadata key {key:?}"),
                });
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if *a != 0 && a.is_power_of_two() => *a as usize,
            Some(other) => {
                return Err(Error::BadMetadata {
                    key: "general.alignment".into(),
                    reason: format!("must be a non-zero power of two u32, found {other:?}"),
                })
            }
        };

        // Smallest tensor info: 8 (name len) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
        let n_tensors = cur.bounded_count(n_tensors, 32, "tensor count")?;
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            raw.push(read_tensor_info(&mut cur)?);
        }

        let data_start = align_up(cur.pos, alignment).ok_or_else(|| Error::Malformed {
            offset: cur.pos as u64,
            reason: "data section offset overflows".into(),
        })?;
        let file_size = bytes.len();
        if data_start > file_size && n_tensors > 0 {
            return Err(Error::Truncated {
                what: "data section",
                offset: cur.pos as u64,
                needed: (data_start - cur.pos) as u64,
                file_size: file_size as u64,
            });
        }

        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for t in raw {
            let info = validate_tensor(t, alignment, data_start, file_size)?;
            if tensor_index
                .insert(info.name.clone(), tensors.len())
                .is_some()
            {
                return Err(Error::BadTensor {
                    tensor: info.name,
                    reason: "duplicate tensor name".into(),
                });
            }
            tensors.push(info);
        }
        check_no_overlap(&tensors)?;

        Ok(GgufFile {
            path: None,
            tensor_part: vec![None; tensors.len()],
            parts: Vec::new(),
            storage,
            version,
            alignment,
            metadata,
            key_index,
            tensors,
            tensor_index,
            data_start,
        })
    }

    /// The path the file was opened from (`None` for in-memory images).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Size of the whole file in bytes (of all its files, for a model
    /// assembled from several).
    pub fn file_size(&self) -> usize {
        self.storage.bytes().len() + self.parts.iter().map(|p| p.bytes().len()).sum::<usize>()
    }
    /// Every byte the model is read from: the file (or the in-memory
    /// image), then the other files of a model assembled from several.
    /// What a digest of the loaded model covers.
    pub fn source_bytes(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.storage.bytes()).chain(self.parts.iter().map(|p| p.bytes()))
    }
    /// The file's bytes before its data section: the header, metadata and
    /// tensor table (every tensor's name, type, shape and offset).
    pub fn header_bytes(&self) -> &[u8] {
        self.storage.bytes().get(..self.data_start).unwrap_or(&[])
    }
    /// Whether `storage` is this file's own (not one of its other parts).
    pub(crate) fn is_main_storage(&self, storage: &Arc<Storage>) -> bool {
        Arc::ptr_eq(&self.storage, storage)
    }
    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }
    /// Byte offset of the data section in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }
    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Zero-copy view of a tensor's data.
    ///
    /// `info` must come from this file; ranges were validated at parse time,
    /// and a foreign `info` that does not fit yields an empty slice rather
    /// than a panic.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        self.tensor_storage(info)
            .bytes()
            .get(self.tensor_range(info))
            .unwrap_or(&[])
    }

    pub(crate) fn tensor_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let base = match self.part_of(info) {
            Some(_) => 0,
            None => self.data_start,
        };
        let start = base.saturating_add(info.offset);
        start..start.saturating_add(info.n_bytes)
    }

    /// The bytes `info`'s data lives in ([`GgufFile::tensor_range`] indexes
    /// them).
    pub(crate) fn tensor_storage(&self, info: &TensorInfo) -> &Arc<Storage> {
        match self.part_of(info) {
            Some(i) => &self.parts[i],
            None => &self.storage,
        }
    }

    fn part_of(&self, info: &TensorInfo) -> Option<usize> {
        let i = *self.tensor_index.get(&info.name)?;
        self.tensor_part.get(i).copied().flatten()
    }

    /// A model assembled from other files (a Hugging Face folder): the
    /// metadata as GGUF keys, and each tensor with the file it lives in
    /// (an index into `parts`) and its offset from that file's start. Every
    /// tensor is checked as a parsed file's would be (known type, whole
    /// rows, data inside its file, no overlap within a file); `path` is the
    /// folder.
    pub(crate) fn from_parts(
        path: PathBuf,
        metadata: Vec<(String, MetaValue)>,
        tensors: Vec<(TensorInfo, usize)>,
        parts: Vec<Arc<Storage>>,
    ) -> Result<GgufFile> {
        let mut key_index = HashMap::with_capacity(metadata.len());
        for (i, (key, _)) in metadata.iter().enumerate() {
            if key_index.insert(key.clone(), i).is_some() {
                return Err(Error::BadMetadata {
                    key: key.clone(),
                    reason: "given twice".into(),
                });
            }
        }
        let mut infos = Vec::with_capacity(tensors.len());
        let mut tensor_part = Vec::with_capacity(tensors.len());
        let mut tensor_index = HashMap::with_capacity(tensors.len());
        let mut per_part: Vec<Vec<TensorInfo>> = vec![Vec::new(); parts.len()];
        for (t, part) in tensors {
            let file = parts.get(part).ok_or_else(|| Error::BadTensor {
                tensor: t.name.clone(),
                reason: format!("file {part} of {} does not exist", parts.len()),
            })?;
            let raw = RawTensorInfo {
                name: t.name,
                dims: t.dims.iter().map(|&d| d as u64).collect(),
                type_id: t.ggml_type.id(),
                offset: t.offset as u64,
            };
            let info = validate_tensor(raw, 1, 0, file.bytes().len())?;
            if tensor_index
                .insert(info.name.clone(), infos.len())
                .is_some()
            {
                return Err(Error::BadTensor {
                    tensor: info.name,
                    reason: "duplicate tensor name".into(),
                });
            }
            per_part[part].push(info.clone());
            infos.push(info);
            tensor_part.push(Some(part));
        }
        for part in &per_part {
            check_no_overlap(part)?;
        }
        Ok(GgufFile {
            path: Some(path),
            storage: Arc::new(Storage::Owned(Vec::new())),
            parts,
            tensor_part,
            version: 3,
            alignment: 1,
            metadata,
            key_index,
            tensors: infos,
            tensor_index,
            data_start: 0,
        })
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => convert(v).map(Some).ok_or_else(|| Error::WrongKeyType {
                key: key.to_string(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    /// `key` as u32: accepts any integer type whose value fits.
    pub fn try_get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "u32", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }
    /// `key` as i32: accepts any integer type whose value fits.
    pub fn try_get_i32(&self, key: &str) -> Result<Option<i32>> {
        self.typed(key, "i32", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })
    }
    /// `key` as u64: accepts any non-negative integer.
    pub fn try_get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "u64", MetaValue::as_u64)
    }
    /// `key` as usize: accepts any non-negative integer that fits.
    pub fn try_get_usize(&self, key: &str) -> Result<Option<usize>> {
        self.typed(key, "usize", |v| {
            v.as_u64().and_then(|x| usize::try_from(x).ok())
        })
    }
    /// `key` as f32: accepts f32 and f64 (narrowed).
    pub fn try_get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "f32", |v| match v {
            MetaValue::F32(x) => Some(*x),
            MetaValue::F64(x) => Some(*x as f32),
            _ => None,
        })
    }
    /// `key` as bool.
    pub fn try_get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "bool", |v| match v {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        })
    }
    /// `key` as a string.
    pub fn try_get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "string", |v| match v {
            MetaValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }
    /// `key` as an array of any element type but string (an array of
    /// strings is held compactly: [`GgufFile::try_get_str_array`] reads it).
    pub fn try_get_array(&self, key: &str) -> Result<Option<&[MetaValue]>> {
        self.typed(key, "array", |v| match v {
            MetaValue::Array(_, items) => Some(items.as_slice()),
            _ => None,
        })
    }
    /// `key` as an array of strings.
    pub fn try_get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed(key, "array of string", MetaValue::str_items)
    }
    /// `key` as an array of strings, compactly (no `&str` per item).
    pub fn try_get_strings(&self, key: &str) -> Result<Option<std::borrow::Cow<'_, StrArray>>> {
        self.typed(key, "array of string", MetaValue::strings)
    }
    /// `key` as an array of integers, each converted to i64.
    pub fn try_get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed(key, "array of integer", |v| match v {
            MetaValue::Array(_, items) => items.iter().map(MetaValue::as_i64).collect(),
            _ => None,
        })
    }
    /// `key` as an array of floats (f32 or f64 elements).
    pub fn try_get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.typed(key, "array of float", |v| match v {
            MetaValue::Array(_, items) => items
                .iter()
                .map(|i| match i {
                    MetaValue::F32(x) => Some(*x),
                    MetaValue::F64(x) => Some(*x as f32),
                    _ => None,
                })
                .collect(),
            _ => None,
        })
    }

    /// `key` as u32 (see [`try_get_u32`](Self::try_get_u32)); `None` when
    /// missing or of another type.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.try_get_u32(key).ok().flatten()
    }
    /// `key` as i32; `None` when missing or of another type.
    pub fn get_i32(&self, key: &str) -> Option<i32> {
        self.try_get_i32(key).ok().flatten()
    }
    /// `key` as u64; `None` when missing or of another type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.try_get_u64(key).ok().flatten()
    }
    /// `key` as usize; `None` when missing or of another type.
    pub fn get_usize(&self, key: &str) -> Option<usize> {
        self.try_get_usize(key).ok().flatten()
    }
    /// `key` as f32; `None` when missing or of another type.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.try_get_f32(key).ok().flatten()
    }
    /// `key` as bool; `None` when missing or of another type.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.try_get_bool(key).ok().flatten()
    }
    /// `key` as a string; `None` when missing or of another type.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.try_get_str(key).ok().flatten()
    }
    /// `key` as an array of strings; `None` when missing or of another type.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.try_get_str_array(key).ok().flatten()
    }

    /// Like [`try_get_u32`](Self::try_get_u32) but a missing key is an error.
    pub fn require_u32(&self, key: &str) -> Result<u32> {
        self.try_get_u32(key)?.ok_or_else(|| missing(key))
    }
    /// Like [`try_get_usize`](Self::try_get_usize) but a missing key is an error.
    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.try_get_usize(key)?.ok_or_else(|| missing(key))
    }
    /// Like [`try_get_f32`](Self::try_get_f32) but a missing key is an error.
    pub fn require_f32(&self, key: &str) -> Result<f32> {
        self.try_get_f32(key)?.ok_or_else(|| missing(key))
    }
    /// Like [`try_get_str`](Self::try_get_str) but a missing key is an error.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.try_get_str(key)?.ok_or_else(|| missing(key))
    }
}

fn missing(key: &str) -> Error {
    Error::MissingKey {
        key: key.to_string(),
    }
}

fn align_up(x: usize, alignment: usize) -> Option<usize> {
    let rem = x % alignment;
    if rem == 0 {
        Some(x)
    } else {
        x.checked_add(alignment - rem)
    }
}

/// A tensor table entry before its type, size and range are validated.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

fn read_tensor_info(cur: &mut Cursor<'_>) -> Result<RawTensorInfo> {
    let name = cur.string("tensor name")?;
    let n_dims = cur.u32("tensor n_dims")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(Error::BadTensor {
            tensor: name,
            reason: format!("n_dims is {n_dims}, must be 1..={MAX_DIMS}"),
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64("tensor dimension")?);
    }
    let type_id = cur.u32("tensor type")?;
    let offset = cur.u64("tensor offset")?;
    Ok(RawTensorInfo {
        name,
        dims,
        type_id,
        offset,
    })
}

fn validate_tensor(
    t: RawTensorInfo,
    alignment: usize,
    data_start: usize,
    file_size: usize,
) -> Result<TensorInfo> {
    let bad = |reason: String| Error::BadTensor {
        tensor: t.name.clone(),
        reason,
    };
    let ggml_type = GgmlType::from_id(t.type_id).map_err(|_| Error::UnknownTensorType {
        tensor: t.name.clone(),
        type_id: t.type_id,
    })?;
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut n_elements: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).ok().filter(|&d| d > 0).ok_or_else(|| {
            bad(format!(
                "dimension {d} in {:?} is zero or too large",
                t.dims
            ))
        })?;
        n_elements = n_elements
            .checked_mul(d)
            .ok_or_else(|| bad(format!("element count of {:?} overflows", t.dims)))?;
        dims.push(d);
    }
    let ne0 = dims[0];
    if ne0 % ggml_type.block_size() != 0 {
        return Err(bad(format!(
            "row length {ne0} is not a multiple of the {ggml_type} block size {}",
            ggml_type.block_size()
        )));
    }
    let rows = n_elements / ne0;
    let size = ggml_type
        .row_bytes(ne0)
        .and_then(|rb| rb.checked_mul(rows))
        .ok_or_else(|| bad(format!("byte size of {:?} {ggml_type} overflows", t.dims)))?;
    let offset = usize::try_from(t.offset)
        .map_err(|_| bad(format!("data offset {} does not fit in memory", t.offset)))?;
    if offset % alignment != 0 {
        return Err(bad(format!(
            "data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    let end = data_start
        .checked_add(offset)
        .and_then(|s| s.checked_add(size))
        .ok_or_else(|| bad(format!("data range at offset {offset} overflows")))?;
    if end > file_size {
        return Err(bad(format!(
            "data [{}..{end}) extends past the end of the file ({file_size} bytes)",
            data_start.saturating_add(offset)
        )));
    }
    Ok(TensorInfo {
        name: t.name,
        dims,
        ggml_type,
        offset,
        n_bytes: size,
    })
}

fn check_no_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        // end cannot overflow: validated against the file size already.
        if pair[0].offset + pair[0].n_bytes > pair[1].offset {
            return Err(Error::BadTensor {
                tensor: pair[1].name.clone(),
                reason: format!("data overlaps tensor {:?}", pair[0].name),
            });
        }
    }
    Ok(())
}

/// Bounds-checked little-endian reader over the file image.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Truncated {
                what,
                offset: self.pos as u64,
                needed: n as u64,
                file_size: self.bytes.len() as u64,
            }),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item_bytes` long: larger than what
    /// the rest of the file could hold means the file lies (or is truncated),
    /// and rejecting it here keeps hostile counts from driving allocations.
    pub(crate) fn bounded_count(
        &self,
        count: u64,
        min_item_bytes: usize,
        what: &'static str,
    ) -> Result<usize> {
        let max = (self.remaining() / min_item_bytes.max(1)) as u64;
        if count > max {
            return Err(Error::Truncated {
                what,
                offset: self.pos as u64,
                needed: count.saturating_mul(min_item_bytes as u64),
                file_size: self.bytes.len() as u64,
            });
        }
        // count <= remaining bytes, so it fits in usize.
        Ok(count as usize)
    }

    pub(crate) fn string(&mut self, what: &'static str) -> Result<String> {
        self.str(what).map(str::to_string)
    }

    /// A length-prefixed UTF-8 string, borrowed from the bytes.
    pub(crate) fn str(&mut self, what: &'static str) -> Result<&'a str> {
        let start = self.pos;
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or(Error::Truncated {
                what,
                offset: start as u64,
                needed: len,
                file_size: self.bytes.len() as u64,
            })?;
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw).map_err(|e| Error::Malformed {
            offset: start as u64,
            reason: format!("{what} is not valid UTF-8: {e}"),
        })
    }
}

#[cfg(test)]
mod tests;
