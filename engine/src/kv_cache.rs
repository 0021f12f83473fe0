//! The KV cache: per layer, keys and values in f16, head-major
//! `[n_kv_head, capacity, head_dim]` so one head's keys are contiguous for the
//! attention kernel. It is the currency between backends: the CPU backend
//! writes it directly, the ONNX Runtime backend imports and exports it, so a
//! hybrid run can prefill on one and decode on the other.

use crate::error::{Error, Result};
use half::f16;

/// One layer's keys and values.
#[derive(Clone)]
pub struct LayerKv {
    /// [n_kv_head, capacity, head_dim]
    pub k: Vec<f16>,
    /// [n_kv_head, capacity, head_dim]
    pub v: Vec<f16>,
}

impl std::fmt::Debug for LayerKv {
    // Sizes only: the contents are derived from private messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerKv")
            .field("k", &self.k.len())
            .field("v", &self.v.len())
            .finish()
    }
}

/// Keys and values of every layer for up to `capacity` positions (see the
/// module docs for the layout). A backend's [`new_cache`](crate::Backend::new_cache)
/// makes one of the shape it needs.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    n_kv_head: usize,
    head_dim: usize,
    capacity: usize,
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
            .field("len", &self.len)
            .finish()
    }
}

impl KvCache {
    /// An empty cache, zero-filled; [`Error::KvCache`] when the size
    /// overflows.
    pub fn new(n_layer: usize, n_kv_head: usize, head_dim: usize, capacity: usize) -> Result<Self> {
        let per_layer = n_kv_head
            .checked_mul(head_dim)
            .and_then(|x| x.checked_mul(capacity))
            .ok_or_else(|| Error::KvCache(format!("capacity {capacity} overflows")))?;
        let layers = (0..n_layer)
            .map(|_| LayerKv {
                k: vec![f16::ZERO; per_layer],
                v: vec![f16::ZERO; per_layer],
            })
            .collect();
        Ok(Self {
            layers,
            n_kv_head,
            head_dim,
            capacity,
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
    /// Bytes held by keys and values of all layers.
    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.n_kv_head * self.capacity * self.head_dim * 2
    }

    /// Layer `i`'s keys and values; panics if `i >= n_layer()`.
    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }
    /// Layer `i`'s keys and values, writable; panics if `i >= n_layer()`.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Forget everything from position `len` on (prefix reuse, rollback after
    /// a failed forward pass).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
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
    /// token-major as the projections produce them) at positions `pos0..`.
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
        let (hd, cap) = (self.head_dim, self.capacity);
        let l = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| Error::KvCache(format!("no layer {layer}")))?;
        for t in 0..n {
            for h in 0..self.n_kv_head {
                let src = t * row + h * hd;
                let dst = (h * cap + pos0 + t) * hd;
                for d in 0..hd {
                    l.k[dst + d] = f16::from_f32(k_rows[src + d]);
                    l.v[dst + d] = f16::from_f32(v_rows[src + d]);
                }
            }
        }
        Ok(())
    }

    /// Removes positions `keep..keep + n` of every layer, moving the later
    /// entries down by `n` (the valid length shrinks by `n`), and passes
    /// each moved key (one head's `head_dim` values, widened to f32) to
    /// `rekey(layer, key)` before it is stored back as f16: a context
    /// shift re-rotates them there. If `rekey` fails the moved entries are
    /// lost and the cache keeps `0..keep`, which is still valid.
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
        let (hd, cap, moved) = (self.head_dim, self.capacity, self.len - keep - n);
        let mut key = vec![0f32; hd];
        for (il, l) in self.layers.iter_mut().enumerate() {
            for h in 0..self.n_kv_head {
                let dst = (h * cap + keep) * hd;
                let src = dst + n * hd;
                l.v.copy_within(src..src + moved * hd, dst);
                l.k.copy_within(src..src + moved * hd, dst);
                for stored in l.k[dst..dst + moved * hd].chunks_exact_mut(hd) {
                    for (f, h) in key.iter_mut().zip(stored.iter()) {
                        *f = h.to_f32();
                    }
                    if let Err(e) = rekey(il, &mut key) {
                        self.len = keep;
                        return Err(e);
                    }
                    for (h, f) in stored.iter_mut().zip(&key) {
                        *h = f16::from_f32(*f);
                    }
                }
            }
        }
        self.len -= n;
        Ok(())
    }

    /// Sets the valid length directly (used when another backend filled the
    /// cache through [`KvCache::layer_mut`]).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.capacity {
            return Err(Error::KvCache(format!(
                "length {len} past capacity {}",
                self.capacity
            )));
        }
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The index formulas are written out term by term, zeros included.
    #[allow(clippy::erasing_op, clippy::identity_op)]
    fn write_is_head_major_and_truncate_keeps_prefix() {
        let mut kv = KvCache::new(2, 2, 3, 4).unwrap();
        // two tokens, rows [t][h][d]
        let k: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..12).map(|i| -(i as f32)).collect();
        kv.write(1, 1, &k, &v).unwrap();
        kv.advance(3).unwrap();
        let l = kv.layer(1);
        // head 1, position 2 (token 1), dim 0 = k_rows[1*6 + 1*3 + 0] = 9
        assert_eq!(l.k[(1 * 4 + 2) * 3].to_f32(), 9.0);
        assert_eq!(l.v[(0 * 4 + 1) * 3 + 2].to_f32(), -2.0);
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
        let l = kv.layer(1);
        assert_eq!(l.k[(0 * 4 + 1) * 3].to_f32(), 6.5, "rekeyed and moved");
        assert_eq!(
            l.v[(1 * 4 + 1) * 3 + 1].to_f32(),
            -10.0,
            "values moved as they are"
        );
        assert_eq!(
            l.k[(1 * 4 + 0) * 3].to_f32(),
            0.0,
            "kept position untouched"
        );
        let fail = kv.remove(1, 1, &mut |_, _| Err(Error::KvCache("x".into())));
        assert!(fail.is_err());
        assert_eq!(kv.len(), 1, "a failed rekey keeps the prefix only");
    }
}
