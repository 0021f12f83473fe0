//! The KV cache: per layer, keys and values as [`KvPlane`]s of rows laid
//! out head-major, `[n_kv_head, capacity, head_dim]`, so one head's keys are
//! contiguous for the attention kernel. Keys and values each have an
//! element type ([`KvTypes`]): f16 (the default), or ggml's Q8_0 / Q4_0
//! blocks along the head dimension, which attention reads as they are.
//! A quantized plane is stored rotated by the orthonormal Walsh–Hadamard
//! transform where llama.cpp rotates it ([`KvRotations::for_cache`]), so
//! the two engines quantize the same vectors; the planes rotate on write
//! and back on read, attention rotates the query and its output.
//!
//! A sliding-window layer may keep a ring instead of every position
//! ([`KvCache::with_windows`]): `window + max_batch - 1` slots per head,
//! position `p` in slot `p % slots`, which is all its attention can see
//! (llama.cpp's SWA cache does the same). A ring forgets what it
//! overwrote: truncating to a prefix whose window it no longer holds
//! empties the cache ([`KvCache::truncate`] says how much it kept).
//!
//! It is the currency between backends: the CPU backend writes it
//! directly, the ONNX Runtime backend imports and exports it (f16 only), so
//! a hybrid run can prefill on one and decode on the other.

use crate::error::{Error, Result};
use half::f16;
pub use sotto_kernels::ops::{Hadamard, KvLayout, KvPlane, KvType};

/// The element types of the keys and of the values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvTypes {
    /// Keys.
    pub k: KvType,
    /// Values.
    pub v: KvType,
}

impl KvTypes {
    /// Keys and values of one type.
    pub fn both(t: KvType) -> Self {
        Self { k: t, v: t }
    }

    /// `T` (keys and values) or `K,V`, as `--kv-type` takes it.
    pub fn parse(s: &str) -> Result<Self> {
        let one = |t: &str| KvType::parse(t).map_err(|e| Error::KvType(e.to_string()));
        match s.split_once(',') {
            None => Ok(Self::both(one(s)?)),
            Some((k, v)) => Ok(Self {
                k: one(k)?,
                v: one(v)?,
            }),
        }
    }

    /// Whether both are f16 (what backends that exchange the cache with
    /// ONNX Runtime need).
    pub fn is_f16(&self) -> bool {
        self.k == KvType::F16 && self.v == KvType::F16
    }
}

impl std::fmt::Display for KvTypes {
    /// `T` when keys and values share it, `K,V` otherwise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.k == self.v {
            write!(f, "{}", self.k)
        } else {
            write!(f, "{},{}", self.k, self.v)
        }
    }
}

impl std::str::FromStr for KvTypes {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// The Hadamard rotations keys and values are stored under (`None`: as
/// they are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvRotations {
    /// Keys.
    pub k: Option<Hadamard>,
    /// Values.
    pub v: Option<Hadamard>,
}

impl KvRotations {
    /// Where llama.cpp rotates a cache of `types` and `head_dim`: a
    /// quantized plane whose head size is a multiple of 64; keys in blocks
    /// of the largest power of two dividing the head size, values in
    /// blocks of 64. f16 planes are stored as they are.
    pub fn for_cache(types: KvTypes, head_dim: usize) -> Self {
        let rotates = |t: KvType| t != KvType::F16 && head_dim > 0 && head_dim.is_multiple_of(64);
        let block = |n: usize| Hadamard::new(n).ok();
        Self {
            k: rotates(types.k)
                .then(|| block(1 << head_dim.trailing_zeros()))
                .flatten(),
            v: rotates(types.v).then(|| block(64)).flatten(),
        }
    }
}

impl std::fmt::Display for KvRotations {
    /// `K Hn, V Hm` (`-` for a plane stored as it is).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let one = |r: Option<Hadamard>| r.map_or("-".to_string(), |h| format!("H{}", h.n()));
        write!(f, "K {}, V {}", one(self.k), one(self.v))
    }
}

/// One layer's keys and values.
#[derive(Clone, Debug)]
pub struct LayerKv {
    /// [n_kv_head, capacity, head_dim]
    pub k: KvPlane,
    /// [n_kv_head, capacity, head_dim]
    pub v: KvPlane,
}

impl LayerKv {
    /// Keys and values as f16 slices, for the code that exchanges them
    /// with ONNX Runtime; [`Error::KvTypeUnsupported`] for a quantized
    /// cache (`what` names the caller).
    pub fn f16(&self, what: &'static str) -> Result<(&[f16], &[f16])> {
        match (self.k.f16(), self.v.f16()) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(unsupported(what, self)),
        }
    }
    /// [`LayerKv::f16`], writable.
    pub fn f16_mut(&mut self, what: &'static str) -> Result<(&mut [f16], &mut [f16])> {
        let err = unsupported(what, self);
        match (self.k.f16_mut(), self.v.f16_mut()) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(err),
        }
    }
    fn types(&self) -> KvTypes {
        KvTypes {
            k: self.k.kv_type(),
            v: self.v.kv_type(),
        }
    }
}

fn unsupported(what: &'static str, l: &LayerKv) -> Error {
    Error::KvTypeUnsupported {
        what,
        kv: l.types().to_string(),
    }
}

/// Where one layer keeps its positions: in `slots` rows per head (all of
/// them, or a ring for a sliding window), the oldest still held `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    slots: usize,
    /// The window a ring serves (`None`: every position kept).
    window: Option<usize>,
    first: usize,
}

impl Span {
    fn is_ring(&self) -> bool {
        self.window.is_some()
    }
    /// Whether a query at position `len` finds every key of its window.
    fn holds_window_of(&self, len: usize) -> bool {
        self.window
            .is_none_or(|w| self.first <= (len + 1).saturating_sub(w))
    }
}

/// Keys and values of every layer for up to `capacity` positions (see the
/// module docs for the layout). A backend's [`new_cache`](crate::Backend::new_cache)
/// makes one of the shape it needs.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    spans: Vec<Span>,
    n_kv_head: usize,
    head_dim: usize,
    capacity: usize,
    types: KvTypes,
    rotations: KvRotations,
    /// Positions 0..len hold valid entries.
    len: usize,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("layers", &self.layers.len())
            .field("n_kv_head", &self.n_kv_head)
            .field("head_dim", &self.head_dim)
            .field("capacity", &self.capacity)
            .field(
                "ring_slots",
                &self
                    .spans
                    .iter()
                    .map(|s| s.is_ring().then_some(s.slots))
                    .collect::<Vec<_>>(),
            )
            .field("types", &self.types)
            .field("rotations", &self.rotations)
            .field("len", &self.len)
            .finish()
    }
}

impl KvCache {
    /// An empty cache of element types `types`, zero-filled, its quantized
    /// planes rotated as [`KvRotations::for_cache`] says; [`Error::KvType`]
    /// when a block type does not divide the head size (a multiple of 32),
    /// [`Error::KvCache`] when the size overflows.
    pub fn new(
        n_layer: usize,
        n_kv_head: usize,
        head_dim: usize,
        capacity: usize,
        types: KvTypes,
    ) -> Result<Self> {
        Self::with_windows(n_layer, n_kv_head, head_dim, capacity, types, &[], 0)
    }

    /// [`KvCache::new`] where layer `i` with `windows[i] = Some(w)` keeps a
    /// ring of `w + max_batch - 1` positions when that is fewer than
    /// `capacity` (a forward pass writes at most `max_batch` positions
    /// before it attends); layers past `windows.len()` keep everything.
    pub fn with_windows(
        n_layer: usize,
        n_kv_head: usize,
        head_dim: usize,
        capacity: usize,
        types: KvTypes,
        windows: &[Option<usize>],
        max_batch: usize,
    ) -> Result<Self> {
        let spans: Vec<Span> = (0..n_layer)
            .map(|i| {
                let ring = windows
                    .get(i)
                    .copied()
                    .flatten()
                    .filter(|&w| w > 0)
                    .and_then(|w| Some((w, w.checked_add(max_batch.max(1) - 1)?)))
                    .filter(|&(_, slots)| slots < capacity);
                match ring {
                    Some((w, slots)) => Span {
                        slots,
                        window: Some(w),
                        first: 0,
                    },
                    None => Span {
                        slots: capacity,
                        window: None,
                        first: 0,
                    },
                }
            })
            .collect();
        let rotations = KvRotations::for_cache(types, head_dim);
        let plane = |t: KvType, r: Option<Hadamard>, slots: usize| {
            let rows = n_kv_head
                .checked_mul(slots)
                .ok_or_else(|| Error::KvCache(format!("capacity {capacity} overflows")))?;
            KvPlane::zeros(t, rows, head_dim)
                .and_then(|p| p.with_rotation(r))
                .map_err(|e| match e {
                    sotto_kernels::Error::RaggedRow { .. } => Error::KvType(format!(
                        "{t} blocks of 32 do not divide the head size {head_dim}"
                    )),
                    _ => Error::KvCache(format!("capacity {capacity} overflows")),
                })
        };
        // checked on empty planes before allocating every layer
        KvPlane::zeros(types.k, 0, head_dim)
            .and_then(|_| KvPlane::zeros(types.v, 0, head_dim))
            .map_err(|_| {
                Error::KvType(format!(
                    "{types} blocks of 32 do not divide the head size {head_dim}"
                ))
            })?;
        let layers = spans
            .iter()
            .map(|s| {
                Ok(LayerKv {
                    k: plane(types.k, rotations.k, s.slots)?,
                    v: plane(types.v, rotations.v, s.slots)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            spans,
            n_kv_head,
            head_dim,
            capacity,
            types,
            rotations,
            len: 0,
        })
    }

    /// Positions holding valid entries (`0..len`).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is valid.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Layers.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }
    /// Key/value heads per layer.
    pub fn n_kv_head(&self) -> usize {
        self.n_kv_head
    }
    /// Elements per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// The element types of keys and values.
    pub fn types(&self) -> KvTypes {
        self.types
    }
    /// The rotations keys and values are stored under.
    pub fn rotations(&self) -> KvRotations {
        self.rotations
    }
    /// Bytes held by keys and values of all layers (exact: the planes'
    /// elements or blocks).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.k.bytes() + l.v.bytes()).sum()
    }

    /// Where layer `i` keeps its positions (rows per head, the oldest
    /// position held), as attention reads them; panics if `i >= n_layer()`.
    pub fn layout(&self, i: usize) -> KvLayout {
        let s = &self.spans[i];
        KvLayout {
            slots: s.slots,
            first: s.first,
        }
    }
    /// Whether layer `i` keeps a ring (fewer rows than the capacity).
    pub fn is_ring(&self, i: usize) -> bool {
        self.spans[i].is_ring()
    }
    /// The row of head `h`'s position `pos` in layer `i`'s planes.
    pub fn row(&self, i: usize, h: usize, pos: usize) -> usize {
        let slots = self.spans[i].slots;
        h * slots + pos % slots.max(1)
    }

    /// Layer `i`'s keys and values; panics if `i >= n_layer()`.
    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }
    /// Layer `i`'s keys and values, writable; panics if `i >= n_layer()`.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// [`Error::KvTypeUnsupported`] unless keys and values are f16 and
    /// every layer keeps every position in its own row (for the backends
    /// that exchange the cache with ONNX Runtime).
    pub fn require_f16(&self, what: &'static str) -> Result<()> {
        if !self.types.is_f16() {
            Err(Error::KvTypeUnsupported {
                what,
                kv: self.types.to_string(),
            })
        } else if self.spans.iter().any(Span::is_ring) {
            Err(Error::KvTypeUnsupported {
                what,
                kv: "sliding-window rings".into(),
            })
        } else {
            Ok(())
        }
    }

    /// Forgets everything from position `len` on (prefix reuse, rollback
    /// after a failed forward pass) and returns the length kept: `len`, or
    /// 0 when a ring no longer holds the window a query at `len` sees (it
    /// overwrote it since).
    pub fn truncate(&mut self, len: usize) -> usize {
        if len < self.len {
            if self.spans.iter().all(|s| s.holds_window_of(len)) {
                self.len = len;
            } else {
                self.clear();
            }
        }
        self.len
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.len = 0;
        self.spans.iter_mut().for_each(|s| s.first = 0);
    }

    /// Marks `n` more positions valid once every layer has written them.
    pub fn advance(&mut self, n: usize) -> Result<()> {
        let new_len = self
            .len
            .checked_add(n)
            .filter(|&l| l <= self.capacity)
            .ok_or_else(|| {
                Error::KvCache(format!(
                    "advancing {n} past capacity {} (len {})",
                    self.capacity, self.len
                ))
            })?;
        self.len = new_len;
        Ok(())
    }

    /// Stores rows of keys and values (`[n_tokens, n_kv_head * head_dim]`,
    /// token-major as the projections produce them) at positions `pos0..`,
    /// in the cache's element types (rounded to f16 or quantized).
    pub fn write(
        &mut self,
        layer: usize,
        pos0: usize,
        k_rows: &[f32],
        v_rows: &[f32],
    ) -> Result<()> {
        let row = self.n_kv_head * self.head_dim;
        if k_rows.len() != v_rows.len() || row == 0 || !k_rows.len().is_multiple_of(row) {
            return Err(Error::KvCache(format!(
                "rows of {} / {} values are not multiples of {row}",
                k_rows.len(),
                v_rows.len()
            )));
        }
        let n = k_rows.len() / row;
        if pos0 + n > self.capacity {
            return Err(Error::KvCache(format!(
                "write of {n} at {pos0} past capacity {}",
                self.capacity
            )));
        }
        let hd = self.head_dim;
        let (Some(l), Some(span)) = (self.layers.get_mut(layer), self.spans.get_mut(layer)) else {
            return Err(Error::KvCache(format!("no layer {layer}")));
        };
        if n > span.slots || pos0 < span.first {
            return Err(Error::KvCache(format!(
                "write of {n} at {pos0} into a ring of {} slots holding positions from {}",
                span.slots, span.first
            )));
        }
        for t in 0..n {
            for h in 0..self.n_kv_head {
                let src = t * row + h * hd;
                let dst = h * span.slots + (pos0 + t) % span.slots;
                l.k.write_rows(dst, &k_rows[src..src + hd])?;
                l.v.write_rows(dst, &v_rows[src..src + hd])?;
            }
        }
        // what the ring overwrote is gone
        span.first = span.first.max((pos0 + n).saturating_sub(span.slots));
        Ok(())
    }

    /// Removes positions `keep..keep + n` of every layer, moving the later
    /// entries down by `n` (the valid length shrinks by `n`), and passes
    /// each moved key (one head's `head_dim` values, decoded to f32 and,
    /// for a rotated plane, rotated back: the key as the model wrote it)
    /// to `rekey(layer, key)` before it is stored back in the cache's key
    /// type and rotation: a context shift re-ropes them there. If `rekey` fails the
    /// moved entries are lost and the cache keeps `0..keep`, which is still
    /// valid (or nothing, when a ring no longer holds `keep`'s window).
    ///
    /// A ring moves the positions it still holds; those it had overwritten
    /// stay missing (its oldest position becomes the kept prefix's end when
    /// the prefix is gone), as in llama.cpp's SWA cache.
    pub fn remove(
        &mut self,
        keep: usize,
        n: usize,
        rekey: &mut dyn FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        if keep.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(Error::KvCache(format!(
                "removing {n} positions after {keep} of {}",
                self.len
            )));
        }
        let (hd, cap, len) = (self.head_dim, self.capacity, self.len);
        let moved = len - keep - n;
        let n_kv_head = self.n_kv_head;
        let mut key = vec![0f32; hd];
        let mut shift_layer = |il: usize, l: &mut LayerKv, span: &mut Span| -> Result<()> {
            if span.is_ring() {
                return shift_ring(l, span, n_kv_head, len, keep, n, &mut |key| rekey(il, key));
            }
            for h in 0..n_kv_head {
                let dst = h * cap + keep;
                let src = dst + n;
                l.v.copy_rows_within(src, dst, moved)?;
                l.k.copy_rows_within(src, dst, moved)?;
                for r in dst..dst + moved {
                    l.k.read_rows(r, &mut key)?;
                    rekey(il, &mut key)?;
                    l.k.write_rows(r, &key)?;
                }
            }
            Ok(())
        };
        let done = self
            .layers
            .iter_mut()
            .zip(self.spans.iter_mut())
            .enumerate()
            .try_for_each(|(il, (l, span))| shift_layer(il, l, span));
        if let Err(e) = done {
            // What moved is lost; the prefix is kept where still whole.
            self.len = keep;
            if !self.spans.iter().all(|s| s.holds_window_of(keep)) {
                self.clear();
            }
            return Err(e);
        }
        self.len -= n;
        Ok(())
    }

    /// Sets the valid length directly (used when another backend filled the
    /// cache through [`KvCache::layer_mut`], or a saved session was read
    /// into it); a ring must hold the window of a query at `len`.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.capacity {
            return Err(Error::KvCache(format!(
                "length {len} past capacity {}",
                self.capacity
            )));
        }
        if let Some(s) = self.spans.iter().find(|s| !s.holds_window_of(len)) {
            return Err(Error::KvCache(format!(
                "a ring holding positions from {} misses the window of position {len}",
                s.first
            )));
        }
        self.len = len;
        Ok(())
    }

    /// Says that layer `i` holds positions from `first` on (a saved
    /// session read into a ring); [`Error::KvCache`] for a layer that keeps
    /// every position, or more positions than its slots.
    pub fn set_first(&mut self, i: usize, first: usize, len: usize) -> Result<()> {
        let s = self
            .spans
            .get_mut(i)
            .ok_or_else(|| Error::KvCache(format!("no layer {i}")))?;
        if first > len || (first > 0 && !s.is_ring()) || len - first > s.slots {
            return Err(Error::KvCache(format!(
                "layer {i} cannot hold positions {first}..{len} in {} slots",
                s.slots
            )));
        }
        s.first = first;
        Ok(())
    }
}

/// [`KvCache::remove`] on one ring layer holding `first..len` (`span`):
/// each held position `p >= keep + n` moves to `p - n` through a copy of
/// the planes (slots move by `n mod slots`, a permutation), keys through
/// `rekey`; positions `keep..keep + n` are dropped.
fn shift_ring(
    l: &mut LayerKv,
    span: &mut Span,
    n_kv_head: usize,
    len: usize,
    keep: usize,
    n: usize,
    rekey: &mut dyn FnMut(&mut [f32]) -> Result<()>,
) -> Result<()> {
    let slots = span.slots;
    let first_moved = span.first.max(keep + n);
    let (old_k, old_v) = (l.k.clone(), l.v.clone());
    let mut key = vec![0f32; l.k.head_dim()];
    let mut bytes = Vec::new();
    for h in 0..n_kv_head {
        for p in first_moved..len {
            let (src, dst) = (h * slots + p % slots, h * slots + (p - n) % slots);
            for (old, new) in [(&old_v, &mut l.v), (&old_k, &mut l.k)] {
                bytes.clear();
                old.encode_rows(src, 1, &mut bytes)?;
                new.decode_rows(dst, &bytes)?;
            }
            l.k.read_rows(dst, &mut key)?;
            rekey(&mut key)?;
            l.k.write_rows(dst, &key)?;
        }
    }
    // The kept prefix stays where it was when the ring still held it.
    span.first = if span.first <= keep {
        span.first
    } else {
        first_moved - n
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The index formulas are written out term by term, zeros included.
    #[allow(clippy::erasing_op, clippy::identity_op)]
    fn write_is_head_major_and_truncate_keeps_prefix() {
        let mut kv = KvCache::new(2, 2, 3, 4, KvTypes::default()).unwrap();
        // two tokens, rows [t][h][d]
        let k: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..12).map(|i| -(i as f32)).collect();
        kv.write(1, 1, &k, &v).unwrap();
        kv.advance(3).unwrap();
        let l = kv.layer(1).f16("test").unwrap();
        // head 1, position 2 (token 1), dim 0 = k_rows[1*6 + 1*3 + 0] = 9
        assert_eq!(l.0[(1 * 4 + 2) * 3].to_f32(), 9.0);
        assert_eq!(l.1[(0 * 4 + 1) * 3 + 2].to_f32(), -2.0);
        kv.truncate(1);
        assert_eq!(kv.len(), 1);
        let mut seen = Vec::new();
        assert!(kv.remove(1, 1, &mut |_, _| Ok(())).is_err(), "past len");
        assert_eq!(kv.len(), 1, "a refused removal changes nothing");
        assert!(kv.advance(4).is_err(), "capacity is enforced");
        assert!(
            kv.write(0, 3, &k, &v).is_err(),
            "writes past capacity are refused"
        );
        // Positions 0..4 of layer 1 hold token rows 0, 0, 1 and zeros:
        // removing position 1 moves 2 and 3 down, keys through `rekey`.
        kv.set_len(4).unwrap();
        kv.remove(1, 1, &mut |layer, key| {
            seen.push((layer, key.to_vec()));
            key.iter_mut().for_each(|x| *x += 0.5);
            Ok(())
        })
        .unwrap();
        assert_eq!(kv.len(), 3);
        // 2 layers x 2 heads x 2 moved positions, in layer order
        assert_eq!(seen.len(), 8);
        assert_eq!(seen[4], (1, vec![6.0, 7.0, 8.0]), "layer 1 head 0 token 1");
        let l = kv.layer(1).f16("test").unwrap();
        assert_eq!(l.0[(0 * 4 + 1) * 3].to_f32(), 6.5, "rekeyed and moved");
        assert_eq!(
            l.1[(1 * 4 + 1) * 3 + 1].to_f32(),
            -10.0,
            "values moved as they are"
        );
        assert_eq!(
            l.0[(1 * 4 + 0) * 3].to_f32(),
            0.0,
            "kept position untouched"
        );
        let fail = kv.remove(1, 1, &mut |_, _| Err(Error::KvCache("x".into())));
        assert!(fail.is_err());
        assert_eq!(kv.len(), 1, "a failed rekey keeps the prefix only");
    }

    #[test]
    fn quantized_cache_sizes_writes_and_rekeys_in_its_type() {
        let hd = 64;
        let (n_layer, n_kv, cap) = (2, 3, 10);
        let mut rows = Vec::new();
        for i in 0..4 * n_kv * hd {
            rows.push(((i * 37 % 101) as f32 - 50.0) / 17.0);
        }
        for (types, per_row) in [
            (KvTypes::default(), 128 + 128),
            (KvTypes::both(KvType::Q8_0), 68 + 68),
            (KvTypes::parse("q8_0,q4_0").unwrap(), 68 + 36),
            (KvTypes::parse(" Q4_0 ").unwrap(), 36 + 36),
        ] {
            let mut kv = KvCache::new(n_layer, n_kv, hd, cap, types).unwrap();
            assert_eq!(kv.types(), types);
            assert_eq!(kv.bytes(), n_layer * n_kv * cap * per_row, "{types}");
            assert_eq!(kv.require_f16("test").is_ok(), types.is_f16());
            assert_eq!(kv.layer(0).f16("test").is_ok(), types.is_f16());
            kv.write(1, 2, &rows, &rows).unwrap();
            kv.set_len(6).unwrap();
            // what the planes hold for head 1, positions 2..6
            let decoded = |kv: &KvCache, plane: usize, first: usize| {
                let l = kv.layer(1);
                let p = if plane == 0 { &l.k } else { &l.v };
                let mut y = vec![0f32; 4 * hd];
                p.read_rows(cap + first, &mut y).unwrap();
                y
            };
            let (k0, v0) = (decoded(&kv, 0, 2), decoded(&kv, 1, 2));
            // token 1, head 1 of the rows = row position 3 of head 1
            // compared in the basis the plane stores (rotated or not), where
            // the format's rounding bound holds per element
            let stored = |x: &[f32]| {
                let mut y = x.to_vec();
                if let Some(r) = kv.rotations().k {
                    r.apply(&mut y).unwrap();
                }
                y
            };
            let src = stored(&rows[n_kv * hd + hd..n_kv * hd + 2 * hd]);
            let err = src
                .iter()
                .zip(&stored(&k0[hd..2 * hd]))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = match types.k {
                KvType::F16 => 1e-3,
                KvType::Q8_0 => 1.0 / 127.0,
                KvType::Q4_0 => 1.0 / 8.0,
            };
            assert!(err <= step * amax, "{types}: {err}");
            // rekey with the identity: moved keys decode as before (the
            // quantizers are idempotent on their own output)
            kv.remove(1, 2, &mut |_, _| Ok(())).unwrap();
            assert_eq!(kv.len(), 4);
            assert_eq!(decoded(&kv, 0, 1)[..3 * hd], k0[hd..]);
            assert_eq!(decoded(&kv, 1, 1)[..3 * hd], v0[hd..]);
        }
        assert!(matches!(
            KvCache::new(1, 1, 40, 4, KvTypes::both(KvType::Q4_0)),
            Err(Error::KvType(_))
        ));
        assert!(KvCache::new(1, 1, 40, 4, KvTypes::default()).is_ok());
        assert!(matches!(KvTypes::parse("q8_0,q5_1"), Err(Error::KvType(_))));
        assert_eq!(
            KvTypes::parse("q8_0,q4_0").unwrap().to_string(),
            "q8_0,q4_0"
        );
        assert_eq!(KvTypes::parse("q8_0,q8_0").unwrap().to_string(), "q8_0");
    }

    #[test]
    fn quantized_planes_rotate_where_llama_cpp_does() {
        let h = |n| Some(Hadamard::new(n).unwrap());
        let r = |types: &str, hd| KvRotations::for_cache(KvTypes::parse(types).unwrap(), hd);
        assert_eq!(r("q4_0", 64), KvRotations { k: h(64), v: h(64) });
        assert_eq!(
            r("q8_0", 128),
            KvRotations {
                k: h(128),
                v: h(64)
            }
        );
        assert_eq!(
            r("q8_0", 256),
            KvRotations {
                k: h(256),
                v: h(64)
            }
        );
        assert_eq!(r("q4_0", 192), KvRotations { k: h(64), v: h(64) });
        assert_eq!(r("f16,q4_0", 128), KvRotations { k: None, v: h(64) });
        assert_eq!(r("q8_0,f16", 128), KvRotations { k: h(128), v: None });
        for (types, hd) in [("f16", 64), ("f16", 256), ("q8_0", 96), ("q4_0", 32)] {
            assert_eq!(r(types, hd), KvRotations::default(), "{types} {hd}");
        }
        assert_eq!(r("q4_0", 128).to_string(), "K H128, V H64");

        // a rotated cache: the planes rotate, a context shift's rekey sees
        // the keys as written and stores them rotated again
        let (hd, n_kv, cap) = (128, 2, 6);
        let types = KvTypes::both(KvType::Q8_0);
        let mut kv = KvCache::new(1, n_kv, hd, cap, types).unwrap();
        assert_eq!(kv.rotations(), r("q8_0", hd));
        assert_eq!(kv.layer(0).k.rotation(), h(128));
        assert_eq!(kv.layer(0).v.rotation(), h(64));
        let rows: Vec<f32> = (0..4 * n_kv * hd)
            .map(|i| ((i * 29 % 97) as f32 - 48.0) / 11.0)
            .collect();
        kv.write(0, 0, &rows, &rows).unwrap();
        kv.set_len(4).unwrap();
        let mut seen = Vec::new();
        kv.remove(1, 1, &mut |_, key| {
            seen.push(key.to_vec());
            key.iter_mut().for_each(|x| *x = -*x);
            Ok(())
        })
        .unwrap();
        // head 0's first moved key is token 2's
        let written = &rows[2 * n_kv * hd..][..hd];
        let amax = written.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in seen[0].iter().zip(written) {
            assert!((a - b).abs() < amax / 64.0, "{a} vs {b}");
        }
        let mut back = vec![0f32; hd];
        kv.layer(0).k.read_rows(1, &mut back).unwrap();
        for (a, b) in back.iter().zip(written) {
            assert!((a + b).abs() < amax / 32.0, "negated: {a} vs {b}");
        }
    }
}
