//! GGUF metadata values: the thirteen value types and their decoding.

use super::{Cursor, MAX_ARRAY_DEPTH};
use crate::error::{Error, Result};

/// GGUF metadata value type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MetaType {
    /// Unsigned 8-bit integer (id 0).
    U8 = 0,
    /// Signed 8-bit integer (id 1).
    I8 = 1,
    /// Unsigned 16-bit integer, little-endian (id 2).
    U16 = 2,
    /// Signed 16-bit integer, little-endian (id 3).
    I16 = 3,
    /// Unsigned 32-bit integer, little-endian (id 4).
    U32 = 4,
    /// Signed 32-bit integer, little-endian (id 5).
    I32 = 5,
    /// IEEE-754 single-precision float, little-endian (id 6).
    F32 = 6,
    /// One byte, 0 or 1 (id 7).
    Bool = 7,
    /// UTF-8 string with a u64 byte-length prefix (id 8).
    String = 8,
    /// Typed array: element type id, u64 count, then the elements (id 9).
    Array = 9,
    /// Unsigned 64-bit integer, little-endian (id 10).
    U64 = 10,
    /// Signed 64-bit integer, little-endian (id 11).
    I64 = 11,
    /// IEEE-754 double-precision float, little-endian (id 12).
    F64 = 12,
}

impl MetaType {
    /// The type for a GGUF type id, if known.
    pub fn from_id(id: u32) -> Option<MetaType> {
        use MetaType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Fewest bytes one value of this type occupies in the file; bounds array
    /// counts before anything is allocated.
    pub(crate) fn min_encoded_size(self) -> usize {
        use MetaType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// An array of strings kept as one buffer and each item's end in it: two
/// allocations however many items, where an array of [`MetaValue::String`]
/// costs one per item. A GGUF's vocabulary and merges are about 100,000
/// strings, which the reader would otherwise allocate, and the process
/// free, at every load.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StrArray {
    text: String,
    ends: Vec<usize>,
}

impl StrArray {
    /// An empty array with room for `items` strings of `bytes` in total.
    pub fn with_capacity(items: usize, bytes: usize) -> StrArray {
        StrArray {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(items),
        }
    }

    /// Appends `s`.
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1],
        };
        self.text.get(start..end)
    }

    /// The strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|i| self.get(i).unwrap_or_default())
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrArray {
    fn from_iter<I: IntoIterator<Item = S>>(items: I) -> StrArray {
        let mut a = StrArray::default();
        for s in items {
            a.push(s.as_ref());
        }
        a
    }
}

impl std::fmt::Debug for StrArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One metadata value.
#[derive(Debug, Clone)]
pub enum MetaValue {
    /// A `u8` value.
    U8(u8),
    /// An `i8` value.
    I8(i8),
    /// A `u16` value.
    U16(u16),
    /// An `i16` value.
    I16(i16),
    /// A `u32` value.
    U32(u32),
    /// An `i32` value.
    I32(i32),
    /// An `f32` value.
    F32(f32),
    /// A boolean.
    Bool(bool),
    /// A string (GGUF strings are UTF-8; invalid UTF-8 is rejected at read).
    String(String),
    /// Element type (kept so empty arrays round-trip) and the elements.
    Array(MetaType, Vec<MetaValue>),
    /// An array of strings, compactly: what the reader makes of every
    /// array whose elements are strings, and [`MetaValue::str_array`]
    /// builds. Equal to the [`MetaValue::Array`] of the same strings.
    Strings(StrArray),
    /// A `u64` value.
    U64(u64),
    /// An `i64` value.
    I64(i64),
    /// An `f64` value.
    F64(f64),
}

impl MetaValue {
    /// The GGUF type of this value.
    pub fn meta_type(&self) -> MetaType {
        match self {
            MetaValue::U8(_) => MetaType::U8,
            MetaValue::I8(_) => MetaType::I8,
            MetaValue::U16(_) => MetaType::U16,
            MetaValue::I16(_) => MetaType::I16,
            MetaValue::U32(_) => MetaType::U32,
            MetaValue::I32(_) => MetaType::I32,
            MetaValue::F32(_) => MetaType::F32,
            MetaValue::Bool(_) => MetaType::Bool,
            MetaValue::String(_) => MetaType::String,
            MetaValue::Array(..) | MetaValue::Strings(_) => MetaType::Array,
            MetaValue::U64(_) => MetaType::U64,
            MetaValue::I64(_) => MetaType::I64,
            MetaValue::F64(_) => MetaType::F64,
        }
    }

    /// Short name of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(..) | MetaValue::Strings(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }

    /// Any integer value that is non-negative, widened to u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(x) => Some(x.into()),
            MetaValue::U16(x) => Some(x.into()),
            MetaValue::U32(x) => Some(x.into()),
            MetaValue::U64(x) => Some(x),
            MetaValue::I8(x) => u64::try_from(x).ok(),
            MetaValue::I16(x) => u64::try_from(x).ok(),
            MetaValue::I32(x) => u64::try_from(x).ok(),
            MetaValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(x) => Some(x.into()),
            MetaValue::U16(x) => Some(x.into()),
            MetaValue::U32(x) => Some(x.into()),
            MetaValue::U64(x) => i64::try_from(x).ok(),
            MetaValue::I8(x) => Some(x.into()),
            MetaValue::I16(x) => Some(x.into()),
            MetaValue::I32(x) => Some(x.into()),
            MetaValue::I64(x) => Some(x),
            _ => None,
        }
    }

    /// Number of elements, if this is an array.
    pub fn array_len(&self) -> Option<usize> {
        match self {
            MetaValue::Array(_, items) => Some(items.len()),
            MetaValue::Strings(s) => Some(s.len()),
            _ => None,
        }
    }

    /// The elements, if this is an array of strings (of either form).
    pub fn str_items(&self) -> Option<Vec<&str>> {
        match self {
            MetaValue::Strings(s) => Some(s.iter().collect()),
            MetaValue::Array(_, items) => items.iter().map(MetaValue::as_str).collect(),
            _ => None,
        }
    }

    /// The elements, if this is an array of strings, compactly: borrowed
    /// as the reader holds them, or collected from the other form.
    pub fn strings(&self) -> Option<std::borrow::Cow<'_, StrArray>> {
        match self {
            MetaValue::Strings(s) => Some(std::borrow::Cow::Borrowed(s)),
            MetaValue::Array(_, items) => items
                .iter()
                .map(MetaValue::as_str)
                .collect::<Option<StrArray>>()
                .map(std::borrow::Cow::Owned),
            _ => None,
        }
    }

    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl PartialEq for MetaValue {
    /// As derived, except that an array of strings equals its other form.
    fn eq(&self, other: &MetaValue) -> bool {
        use MetaValue::*;
        match (self, other) {
            (U8(a), U8(b)) => a == b,
            (I8(a), I8(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (I16(a), I16(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (F32(a), F32(b)) => a == b,
            (Bool(a), Bool(b)) => a == b,
            (String(a), String(b)) => a == b,
            (Array(ea, a), Array(eb, b)) => ea == eb && a == b,
            (Strings(a), Strings(b)) => a == b,
            (Strings(s), Array(MetaType::String, items))
            | (Array(MetaType::String, items), Strings(s)) => {
                s.len() == items.len()
                    && s.iter()
                        .zip(items)
                        .all(|(x, item)| item.as_str() == Some(x))
            }
            (U64(a), U64(b)) => a == b,
            (I64(a), I64(b)) => a == b,
            (F64(a), F64(b)) => a == b,
            _ => false,
        }
    }
}

/// Arrays longer than this print their first items and a count.
const DISPLAY_ITEMS: usize = 16;

impl std::fmt::Display for MetaValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaValue::U8(x) => write!(f, "{x}"),
            MetaValue::I8(x) => write!(f, "{x}"),
            MetaValue::U16(x) => write!(f, "{x}"),
            MetaValue::I16(x) => write!(f, "{x}"),
            MetaValue::U32(x) => write!(f, "{x}"),
            MetaValue::I32(x) => write!(f, "{x}"),
            MetaValue::U64(x) => write!(f, "{x}"),
            MetaValue::I64(x) => write!(f, "{x}"),
            MetaValue::F32(x) => write!(f, "{x}"),
            MetaValue::F64(x) => write!(f, "{x}"),
            MetaValue::Bool(x) => write!(f, "{x}"),
            MetaValue::String(s) => write!(f, "{s:?}"),
            MetaValue::Array(_, items) => write_list(f, items.iter()),
            // as an array of `MetaValue::String` prints
            MetaValue::Strings(items) => write_list(f, items.iter().map(MetaValue::string)),
        }
    }
}

/// `[a, b, …]`, the first [`DISPLAY_ITEMS`] items and a count of all.
fn write_list<T: std::fmt::Display>(
    f: &mut std::fmt::Formatter<'_>,
    items: impl ExactSizeIterator<Item = T>,
) -> std::fmt::Result {
    let n = items.len();
    f.write_str("[")?;
    for (i, item) in items.take(DISPLAY_ITEMS).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    if n > DISPLAY_ITEMS {
        write!(f, ", … {n} items")?;
    }
    f.write_str("]")
}

pub(super) fn read_value(cur: &mut Cursor<'_>, type_id: u32, depth: usize) -> Result<MetaValue> {
    let at = cur.pos as u64;
    let ty = MetaType::from_id(type_id).ok_or_else(|| Error::Malformed {
        offset: at,
        reason: format!("unknown metadata value type {type_id}"),
    })?;
    Ok(match ty {
        MetaType::U8 => MetaValue::U8(u8::from_le_bytes(cur.array("u8 value")?)),
        MetaType::I8 => MetaValue::I8(i8::from_le_bytes(cur.array("i8 value")?)),
        MetaType::U16 => MetaValue::U16(u16::from_le_bytes(cur.array("u16 value")?)),
        MetaType::I16 => MetaValue::I16(i16::from_le_bytes(cur.array("i16 value")?)),
        MetaType::U32 => MetaValue::U32(cur.u32("u32 value")?),
        MetaType::I32 => MetaValue::I32(i32::from_le_bytes(cur.array("i32 value")?)),
        MetaType::F32 => MetaValue::F32(f32::from_le_bytes(cur.array("f32 value")?)),
        MetaType::U64 => MetaValue::U64(cur.u64("u64 value")?),
        MetaType::I64 => MetaValue::I64(i64::from_le_bytes(cur.array("i64 value")?)),
        MetaType::F64 => MetaValue::F64(f64::from_le_bytes(cur.array("f64 value")?)),
        MetaType::Bool => match cur.array::<1>("bool value")?[0] {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => {
                return Err(Error::Malformed {
                    offset: at,
                    reason: format!("bool value byte is {b}, must be 0 or 1"),
                })
            }
        },
        MetaType::String => MetaValue::String(cur.string("string value")?),
        MetaType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(Error::Malformed {
                    offset: at,
                    reason: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                });
            }
            let elem_id = cur.u32("array element type")?;
            let elem = MetaType::from_id(elem_id).ok_or_else(|| Error::Malformed {
                offset: at,
                reason: format!("unknown array element type {elem_id}"),
            })?;
            let count = cur.u64("array length")?;
            let count = cur.bounded_count(count, elem.min_encoded_size(), "array length")?;
            if elem == MetaType::String {
                return read_str_array(cur, count).map(MetaValue::Strings);
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(read_value(cur, elem_id, depth + 1)?);
            }
            MetaValue::Array(elem, items)
        }
    })
}

/// An array of `count` strings, copied into one buffer and checked as
/// UTF-8 once: each item is valid exactly when the whole buffer is and
/// every item ends on a character boundary. A vocabulary and its merges
/// are about 100,000 strings, whose one-by-one checks (each with its
/// error path) were most of parsing a file. Anything wrong is read again
/// item by item, for the error that names the bad one and its offset.
fn read_str_array(cur: &mut Cursor<'_>, count: usize) -> Result<StrArray> {
    let start = cur.pos;
    let bytes = cur.bytes;
    let mut text: Vec<u8> = Vec::new();
    let mut ends = Vec::with_capacity(count);
    let mut pos = start;
    let mut whole = true;
    for _ in 0..count {
        let item = pos.checked_add(8).and_then(|body| {
            let len = u64::from_le_bytes(bytes.get(pos..body)?.try_into().ok()?);
            let end = body.checked_add(usize::try_from(len).ok()?)?;
            Some((bytes.get(body..end)?, end))
        });
        let Some((s, end)) = item else {
            whole = false;
            break;
        };
        text.extend_from_slice(s);
        ends.push(text.len());
        pos = end;
    }
    if whole {
        if let Ok(text) = String::from_utf8(text) {
            if ends.iter().all(|&e| text.is_char_boundary(e)) {
                cur.pos = pos;
                return Ok(StrArray { text, ends });
            }
        }
    }
    cur.pos = start;
    let mut items = StrArray::with_capacity(count, 0);
    for _ in 0..count {
        items.push(cur.str("string value")?);
    }
    Ok(items)
}
