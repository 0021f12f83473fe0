//! One plane (keys or values) of a KV cache in its element type: f16, or
//! ggml's Q8_0 / Q4_0 blocks of 32 along the head dimension (the block
//! formats of `quant::q8_0` / `quant::q4_0`, nothing new). A plane is
//! `rows` rows of `head_dim` elements; the engine lays them out head-major
//! (`[n_kv_head, capacity, head_dim]`), attention reads them through
//! [`KvRows`] without converting the cache.
//!
//! A plane may store its rows rotated by a [`Hadamard`] transform (what
//! llama.cpp does to a quantized cache, so that outliers spread over the
//! blocks): [`KvPlane::write_rows`] rotates before it rounds, and
//! [`KvPlane::read_rows`] rotates back, so a caller reads and writes the
//! values themselves; attention rotates the query (keys) or its output
//! (values) instead. The encoded bytes are the stored, rotated rows.

use crate::ops::hadamard::Hadamard;
use crate::quant::blocks::{BlockQ4_0, BlockQ8_0, QK};
use crate::quant::{q4_0, q8_0, DType};
use crate::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// The element type of a KV plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// IEEE half precision, 2 bytes per element (the default).
    #[default]
    F16,
    /// 32 signed bytes and an f16 scale: 34 bytes per 32 elements.
    Q8_0,
    /// 32 four-bit codes and an f16 scale: 18 bytes per 32 elements.
    Q4_0,
}

impl KvType {
    /// Every KV type, default first.
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The spelling of `--kv-type` (and llama.cpp's cache type names).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The type spelled `s` (case and surrounding space ignored).
    pub fn parse(s: &str) -> Result<KvType> {
        let t = s.trim().to_ascii_lowercase();
        KvType::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| Error::InvalidArgument {
                op: "kv type",
                reason: format!("{s:?} is not one of f16, q8_0, q4_0"),
            })
    }

    /// The tensor type of its elements.
    pub fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::Q8_0 => DType::Q8_0,
            KvType::Q4_0 => DType::Q4_0,
        }
    }

    /// ggml's type id (llama.cpp's `type_k` / `type_v`).
    pub fn ggml_id(self) -> u32 {
        match self {
            KvType::F16 => 1,
            KvType::Q8_0 => 8,
            KvType::Q4_0 => 2,
        }
    }

    /// Bytes of one row of `head_dim` elements; [`Error::RaggedRow`] when a
    /// block type's row is not a whole number of blocks (llama.cpp refuses
    /// those heads too).
    pub fn row_bytes(self, head_dim: usize) -> Result<usize> {
        let block = |bytes: usize| {
            if head_dim.is_multiple_of(QK) {
                Ok(head_dim / QK * bytes)
            } else {
                Err(Error::RaggedRow {
                    op: "kv plane",
                    dtype: self.dtype(),
                    cols: head_dim,
                    block: QK,
                })
            }
        };
        match self {
            KvType::F16 => Ok(head_dim * 2),
            KvType::Q8_0 => block(std::mem::size_of::<BlockQ8_0>()),
            KvType::Q4_0 => block(std::mem::size_of::<BlockQ4_0>()),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone)]
enum Data {
    F16(Vec<f16>),
    Q8_0(Vec<BlockQ8_0>),
    Q4_0(Vec<BlockQ4_0>),
}

/// `rows` rows of `head_dim` elements of one [`KvType`], zero-filled at
/// first.
#[derive(Clone)]
pub struct KvPlane {
    data: Data,
    head_dim: usize,
    rows: usize,
    rotation: Option<Hadamard>,
}

impl std::fmt::Debug for KvPlane {
    // Sizes only: the contents are derived from private messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPlane")
            .field("kv_type", &self.kv_type())
            .field("rows", &self.rows)
            .field("head_dim", &self.head_dim)
            .field("rotation", &self.rotation.map(Hadamard::n))
            .finish()
    }
}

const OP: &str = "kv plane";

impl KvPlane {
    /// A zero-filled plane; [`Error::RaggedRow`] for a block type and a
    /// `head_dim` that is not a multiple of 32, [`Error::SizeOverflow`] when
    /// it does not fit in memory's address space.
    pub fn zeros(kv_type: KvType, rows: usize, head_dim: usize) -> Result<Self> {
        let row_bytes = kv_type.row_bytes(head_dim)?;
        rows.checked_mul(row_bytes)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or(Error::SizeOverflow { op: OP })?;
        let units = rows * (head_dim / kv_type.dtype().block_size());
        // Zeroed allocations: the allocator hands large ones out as fresh
        // pages, which the OS maps on first write. A cache sized for the
        // whole context costs memory as positions fill, not up front (a
        // `vec![f16::ZERO; n]` wrote, and so kept resident, every page).
        let data = match kv_type {
            KvType::F16 => Data::F16(bytemuck::zeroed_vec(units)),
            KvType::Q8_0 => Data::Q8_0(bytemuck::zeroed_vec(units)),
            KvType::Q4_0 => Data::Q4_0(bytemuck::zeroed_vec(units)),
        };
        Ok(Self {
            data,
            head_dim,
            rows,
            rotation: None,
        })
    }

    /// The plane storing its rows rotated by `rotation` (`None`: as they
    /// are); [`Error::InvalidArgument`] unless its blocks divide the head
    /// size. Meant for a new plane: rows already written are not converted.
    pub fn with_rotation(mut self, rotation: Option<Hadamard>) -> Result<Self> {
        if let Some(r) = rotation {
            if !self.head_dim.is_multiple_of(r.n()) {
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: format!(
                        "Hadamard blocks of {} do not divide the head size {}",
                        r.n(),
                        self.head_dim
                    ),
                });
            }
        }
        self.rotation = rotation;
        Ok(self)
    }

    /// The rotation its rows are stored under, if any.
    pub fn rotation(&self) -> Option<Hadamard> {
        self.rotation
    }

    /// Its element type.
    pub fn kv_type(&self) -> KvType {
        match self.data {
            Data::F16(_) => KvType::F16,
            Data::Q8_0(_) => KvType::Q8_0,
            Data::Q4_0(_) => KvType::Q4_0,
        }
    }
    /// Rows it holds.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Elements per row.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Bytes its elements occupy (exact: blocks or halves, no padding).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F16(x) => std::mem::size_of_val(x.as_slice()),
            Data::Q8_0(x) => std::mem::size_of_val(x.as_slice()),
            Data::Q4_0(x) => std::mem::size_of_val(x.as_slice()),
        }
    }

    /// The f16 elements, `[rows, head_dim]`; `None` for a block type.
    pub fn f16(&self) -> Option<&[f16]> {
        match &self.data {
            Data::F16(x) => Some(x),
            _ => None,
        }
    }
    /// The f16 elements, writable; `None` for a block type.
    pub fn f16_mut(&mut self) -> Option<&mut [f16]> {
        match &mut self.data {
            Data::F16(x) => Some(x),
            _ => None,
        }
    }

    /// The plane as attention reads it.
    pub fn rows_view(&self) -> KvRows<'_> {
        KvRows {
            rows: match &self.data {
                Data::F16(x) => Rows::F16(x),
                Data::Q8_0(x) => Rows::Q8_0(x),
                Data::Q4_0(x) => Rows::Q4_0(x),
            },
            rotation: self.rotation,
        }
    }

    fn check_rows(&self, first: usize, n: usize) -> Result<()> {
        if first.checked_add(n).is_none_or(|end| end > self.rows) {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("rows {first}..+{n} of {}", self.rows),
            });
        }
        Ok(())
    }

    /// Stores `x` (whole rows of `head_dim` values) from row `first` on,
    /// rotated if the plane is, then rounded to f16 or quantized with
    /// ggml's reference quantizer.
    pub fn write_rows(&mut self, first: usize, x: &[f32]) -> Result<()> {
        let hd = self.head_dim;
        if hd == 0 || !x.len().is_multiple_of(hd) {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: x.len().div_ceil(hd.max(1)) * hd,
                got: x.len(),
            });
        }
        self.check_rows(first, x.len() / hd)?;
        let rotated;
        let x = match self.rotation {
            None => x,
            Some(r) => {
                let mut y = x.to_vec();
                r.apply_whole(&mut y);
                rotated = y;
                &rotated
            }
        };
        match &mut self.data {
            Data::F16(d) => d[first * hd..][..x.len()].convert_from_f32_slice(x),
            Data::Q8_0(d) => q8_0::quantize_row(x, &mut d[first * hd / QK..][..x.len() / QK]),
            Data::Q4_0(d) => q4_0::quantize_row(x, &mut d[first * hd / QK..][..x.len() / QK]),
        }
        Ok(())
    }

    /// Decodes rows `first..first + y.len() / head_dim` into `y` (rotated
    /// back if the plane is rotated).
    pub fn read_rows(&self, first: usize, y: &mut [f32]) -> Result<()> {
        let hd = self.head_dim;
        if hd == 0 || !y.len().is_multiple_of(hd) {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: y.len().div_ceil(hd.max(1)) * hd,
                got: y.len(),
            });
        }
        self.check_rows(first, y.len() / hd)?;
        match &self.data {
            Data::F16(d) => {
                for (o, v) in y.iter_mut().zip(&d[first * hd..]) {
                    *o = v.to_f32();
                }
            }
            Data::Q8_0(d) => q8_0::dequantize_row(&d[first * hd / QK..][..y.len() / QK], y),
            Data::Q4_0(d) => q4_0::dequantize_row(&d[first * hd / QK..][..y.len() / QK], y),
        }
        if let Some(r) = self.rotation {
            r.apply_whole(y);
        }
        Ok(())
    }

    /// Moves rows `src..src + n` to `dst..dst + n` as they are (overlap
    /// allowed).
    pub fn copy_rows_within(&mut self, src: usize, dst: usize, n: usize) -> Result<()> {
        self.check_rows(src, n)?;
        self.check_rows(dst, n)?;
        let u = self.head_dim / self.kv_type().dtype().block_size();
        match &mut self.data {
            Data::F16(d) => d.copy_within(src * u..(src + n) * u, dst * u),
            Data::Q8_0(d) => d.copy_within(src * u..(src + n) * u, dst * u),
            Data::Q4_0(d) => d.copy_within(src * u..(src + n) * u, dst * u),
        }
        Ok(())
    }

    /// Appends rows `first..first + n` to `out` in the portable encoding:
    /// per element (f16) or per block (scale, then codes), little-endian —
    /// ggml's bytes.
    pub fn encode_rows(&self, first: usize, n: usize, out: &mut Vec<u8>) -> Result<()> {
        self.check_rows(first, n)?;
        let hd = self.head_dim;
        match &self.data {
            Data::F16(d) => {
                for x in &d[first * hd..(first + n) * hd] {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            Data::Q8_0(d) => {
                for b in &d[first * hd / QK..(first + n) * hd / QK] {
                    out.extend_from_slice(&b.d.to_le_bytes());
                    out.extend(b.qs.iter().map(|&q| q as u8));
                }
            }
            Data::Q4_0(d) => {
                for b in &d[first * hd / QK..(first + n) * hd / QK] {
                    out.extend_from_slice(&b.d.to_le_bytes());
                    out.extend_from_slice(&b.qs);
                }
            }
        }
        Ok(())
    }

    /// Reads what [`KvPlane::encode_rows`] wrote into rows `first..`, as
    /// many as `bytes` holds ([`Error::ShapeMismatch`] unless whole rows).
    pub fn decode_rows(&mut self, first: usize, bytes: &[u8]) -> Result<()> {
        let row = self.kv_type().row_bytes(self.head_dim)?;
        if row == 0 || !bytes.len().is_multiple_of(row) {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: bytes.len().div_ceil(row.max(1)) * row,
                got: bytes.len(),
            });
        }
        self.check_rows(first, bytes.len() / row)?;
        let hd = self.head_dim;
        match &mut self.data {
            Data::F16(d) => {
                for (x, b) in d[first * hd..].iter_mut().zip(bytes.chunks_exact(2)) {
                    *x = f16::from_le_bytes([b[0], b[1]]);
                }
            }
            Data::Q8_0(d) => {
                let size = std::mem::size_of::<BlockQ8_0>();
                for (x, b) in d[first * hd / QK..]
                    .iter_mut()
                    .zip(bytes.chunks_exact(size))
                {
                    x.d = f16::from_le_bytes([b[0], b[1]]);
                    for (q, &c) in x.qs.iter_mut().zip(&b[2..]) {
                        *q = c as i8;
                    }
                }
            }
            Data::Q4_0(d) => {
                let size = std::mem::size_of::<BlockQ4_0>();
                for (x, b) in d[first * hd / QK..]
                    .iter_mut()
                    .zip(bytes.chunks_exact(size))
                {
                    x.d = f16::from_le_bytes([b[0], b[1]]);
                    x.qs.copy_from_slice(&b[2..]);
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Rows<'a> {
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
}

/// A borrowed KV plane (or a plain f16 slice) as attention reads it: the
/// stored rows and the rotation they are stored under.
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a> {
    pub(crate) rows: Rows<'a>,
    pub(crate) rotation: Option<Hadamard>,
}

impl<'a> KvRows<'a> {
    /// f16 rows, `[rows, head_dim]` flat, not rotated.
    pub fn f16(x: &'a [f16]) -> Self {
        KvRows {
            rows: Rows::F16(x),
            rotation: None,
        }
    }
    /// Its element type.
    pub fn kv_type(&self) -> KvType {
        match self.rows {
            Rows::F16(_) => KvType::F16,
            Rows::Q8_0(_) => KvType::Q8_0,
            Rows::Q4_0(_) => KvType::Q4_0,
        }
    }
    /// Whole rows of `head_dim` elements it holds (`head_dim` > 0).
    pub(crate) fn rows(&self, head_dim: usize) -> usize {
        match self.rows {
            Rows::F16(x) => x.len() / head_dim,
            Rows::Q8_0(x) => x.len() / (head_dim / QK).max(1),
            Rows::Q4_0(x) => x.len() / (head_dim / QK).max(1),
        }
    }
    /// Rows `a..b` (in range: the caller checked the shape).
    pub(crate) fn slice(&self, a: usize, b: usize, head_dim: usize) -> Rows<'a> {
        let u = head_dim / self.kv_type().dtype().block_size();
        match self.rows {
            Rows::F16(x) => Rows::F16(&x[a * u..b * u]),
            Rows::Q8_0(x) => Rows::Q8_0(&x[a * u..b * u]),
            Rows::Q4_0(x) => Rows::Q4_0(&x[a * u..b * u]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::random_row;

    #[test]
    fn sizes_round_trips_and_refusals() {
        let hd = 64;
        let x = random_row(5 * hd, 3);
        for t in KvType::ALL {
            assert_eq!(KvType::parse(&t.name().to_uppercase()).unwrap(), t);
            let mut p = KvPlane::zeros(t, 7, hd).unwrap();
            let per_row = t.row_bytes(hd).unwrap();
            assert_eq!(p.bytes(), 7 * per_row);
            assert_eq!(per_row, [128, 68, 36][t as usize]);
            p.write_rows(1, &x).unwrap();
            let mut y = vec![0f32; x.len()];
            p.read_rows(1, &mut y).unwrap();
            // within the format's rounding: half a step of amax/127 (q8_0),
            // a step of amax/8 (q4_0: the side opposite the largest value
            // saturates at code 15), and the scale's and f16's own rounding
            let step = [0.0, 1.0 / 254.0, 1.0 / 8.0][t as usize];
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in xb.iter().zip(yb) {
                    let budget = step * amax * 1.001 + a.abs() * 1e-3;
                    assert!((a - b).abs() <= budget, "{t}: {a} vs {b}");
                }
            }
            let mut bytes = Vec::new();
            p.encode_rows(1, 5, &mut bytes).unwrap();
            assert_eq!(bytes.len(), 5 * per_row);
            let mut q = KvPlane::zeros(t, 7, hd).unwrap();
            q.decode_rows(2, &bytes).unwrap();
            let mut z = vec![0f32; x.len()];
            q.read_rows(2, &mut z).unwrap();
            assert_eq!(y, z, "{t}: encode/decode is bit-exact");
            q.copy_rows_within(2, 0, 5).unwrap();
            q.read_rows(0, &mut z).unwrap();
            assert_eq!(y, z, "{t}: moved rows are unchanged");
            assert!(p.write_rows(3, &x).is_err(), "past the last row");
            assert!(p.read_rows(0, &mut y[..hd - 1]).is_err(), "partial row");
            assert!(q.decode_rows(0, &bytes[1..]).is_err(), "partial row");
            assert!(q.decode_rows(3, &bytes).is_err(), "past the last row");
            assert_eq!(p.f16().is_some(), t == KvType::F16);
        }
        assert!(KvPlane::zeros(KvType::F16, 2, 40).is_ok());
        for t in [KvType::Q8_0, KvType::Q4_0] {
            assert!(matches!(
                KvPlane::zeros(t, 2, 40),
                Err(Error::RaggedRow { cols: 40, .. })
            ));
        }
        assert!(KvType::parse("q5_0").is_err());
        assert!(KvPlane::zeros(KvType::F16, usize::MAX / 2, 64).is_err());
    }

    /// A rotated plane reads back the values written (rotated back), stores
    /// other bytes than a plain one, and moves and encodes them as stored.
    #[test]
    fn rotated_planes_read_back_what_was_written() {
        let hd = 128;
        // an outlier channel: what the rotation is for
        let mut x = random_row(4 * hd, 8);
        x.iter_mut().step_by(hd).for_each(|v| *v *= 20.0);
        for t in KvType::ALL {
            let r = Some(Hadamard::new(64).unwrap());
            let mut plain = KvPlane::zeros(t, 6, hd).unwrap();
            let mut rot = KvPlane::zeros(t, 6, hd).unwrap().with_rotation(r).unwrap();
            assert_eq!(rot.rotation(), r);
            assert_eq!(rot.bytes(), plain.bytes());
            plain.write_rows(1, &x).unwrap();
            rot.write_rows(1, &x).unwrap();
            let (mut yp, mut yr) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            plain.read_rows(1, &mut yp).unwrap();
            rot.read_rows(1, &mut yr).unwrap();
            let err = |y: &[f32]| {
                let d: f32 = x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum();
                let n: f32 = x.iter().map(|a| a * a).sum();
                (d / n).sqrt()
            };
            let (ep, er) = (err(&yp), err(&yr));
            match t {
                KvType::F16 => assert!(er < 1e-3, "{t}: {er}"),
                // spread over the block, the outlier no longer sets the
                // scale of the small values
                _ => assert!(er < 0.7 * ep, "{t}: rotated {er} vs plain {ep}"),
            }
            let (mut bp, mut br) = (Vec::new(), Vec::new());
            plain.encode_rows(1, 4, &mut bp).unwrap();
            rot.encode_rows(1, 4, &mut br).unwrap();
            assert_ne!(bp, br, "{t}: the rotated rows are stored");
            let mut back = KvPlane::zeros(t, 6, hd).unwrap().with_rotation(r).unwrap();
            back.decode_rows(2, &br).unwrap();
            back.copy_rows_within(2, 0, 4).unwrap();
            let mut z = vec![0f32; x.len()];
            back.read_rows(0, &mut z).unwrap();
            assert_eq!(yr, z, "{t}");
        }
    }
}
