//! The key/value cache of one sequence, allocated once when the context is created. Per layer:
//! keys transposed in blocks of 16 positions (`KEY_BLOCK`), so that attention scores 16
//! positions per SIMD vector with no reduction per position (`vecmath::dot16_transposed`; ToMoE
//! layers cache only their kept Q/K dims); values transposed as llama.cpp keeps them
//! without flash attention, so that each output of the probability-weighted sum is a dot
//! product over positions summed in ggml's order, but in blocks of 32 positions (block `b`
//! holds, for each of the `kv_dim` dimensions, positions `32b .. 32b + 32`), so that storing
//! one token writes within one block rather than one cache line per dimension.
//!
//! A ToMoE layer with a dynamic V mask caches values compactly instead: per position, the
//! indices of its kept head dims and, for each KV head, only those values. Attention then reads
//! (and the cache holds, when the mask is capped at `top_k` dims) only the kept values.
//!
//! Keys and values are f32 or f16 ([`KvType`], llama.cpp's `--cache-type-k/v`): f16 halves the
//! cache and the bytes attention streams per token, and attention then rounds as ggml's f16
//! products do (queries and probabilities converted to f16 too). Compactly cached values stay
//! f32 whatever the V type (no llama.cpp oracle exists for them, and their packed slots are
//! read by f32 kernels); their layers' keys follow the K type.

use crate::huge_pages::HugeBuf;
use std::ops::Range;
use tomoe_quant::vecmath;

/// The element type of cached keys or values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    #[default]
    F32,
    /// IEEE half precision, rounded to nearest even (llama.cpp's default cache type).
    F16,
}

impl KvType {
    /// The names of llama.cpp's `--cache-type-k/v`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<KvType, String> {
        match s {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("unknown KV cache type {s:?} (f32 or f16)")),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every layer's keys or values in one mapping, of either element type.
enum Buf {
    F32(HugeBuf<f32>),
    F16(HugeBuf<u16>),
}

impl Buf {
    fn parts(ty: KvType, lens: impl IntoIterator<Item = usize>) -> std::io::Result<(Buf, Vec<Range<usize>>)> {
        Ok(match ty {
            KvType::F32 => HugeBuf::parts(lens).map(|(b, at)| (Buf::F32(b), at))?,
            KvType::F16 => HugeBuf::parts(lens).map(|(b, at)| (Buf::F16(b), at))?,
        })
    }

    fn part(&self, r: Range<usize>) -> Cached<'_> {
        match self {
            Buf::F32(b) => Cached::F32(&b[r]),
            Buf::F16(b) => Cached::F16(&b[r]),
        }
    }

    fn part_mut(&mut self, r: Range<usize>) -> CachedMut<'_> {
        match self {
            Buf::F32(b) => CachedMut::F32(&mut b[r]),
            Buf::F16(b) => CachedMut::F16(&mut b[r]),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Buf::F32(b) => b.len() * 4,
            Buf::F16(b) => b.len() * 2,
        }
    }
}

/// One layer's cached keys or values, for attention.
#[derive(Clone, Copy)]
pub enum Cached<'a> {
    F32(&'a [f32]),
    /// f16 bits.
    F16(&'a [u16]),
}

enum CachedMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [u16]),
}

pub const BLOCK: usize = 32;

/// Positions per block of the transposed keys.
pub const KEY_BLOCK: usize = 16;

pub struct KvCache {
    n_ctx: usize,
    kv_dim: usize,
    /// Per layer, the key width (`kv_dim`, or fewer in a ToMoE layer with pruned Q/K dims).
    k_dims: Vec<usize>,
    /// Every layer's keys, layer `l`'s at `k_at[l]`; on huge pages, as attention streams them.
    k: Buf,
    k_at: Vec<Range<usize>>,
    /// Every layer's values, at `v_at`. Dense layers: the blocked, transposed values. Compact
    /// layers: per position a slot of `n_kv_heads · cap` values, head `g`'s kept values at
    /// `g · count` (count: the kept dims). f32 if any layer is compact.
    v: Buf,
    v_at: Vec<Range<usize>>,
    /// Per layer, `Some` if its values are cached compactly.
    compact: Vec<Option<CompactV>>,
}

/// The kept head dims of each position of a compactly cached layer.
struct CompactV {
    head_dim: usize,
    /// Most dims a position can keep (the mask's `top_k`, else `head_dim`).
    cap: usize,
    /// Per position, `words` bit sets: bit `d` set when dim `d` is kept.
    kept: Vec<u64>,
    words: usize,
}

/// One compactly cached layer's values, for attention: per position the bit set of its kept
/// dims, and each KV head's values for them, in order (see `KvCache::store`).
pub struct CompactValues<'a> {
    cv: &'a CompactV,
    v: &'a [f32],
    n_kv_heads: usize,
}

impl<'a> CompactValues<'a> {
    #[cfg(test)]
    fn kept(&self, p: usize) -> &'a [u64] {
        let w = self.cv.words;
        &self.cv.kept[p * w..(p + 1) * w]
    }

    #[cfg(test)]
    fn values(&self, p: usize, g: usize) -> &'a [f32] {
        let m = self.kept(p).iter().map(|w| w.count_ones() as usize).sum::<usize>();
        &self.v[p * self.n_kv_heads * self.cv.cap + g * m..][..m]
    }

    /// For each `(first, a)` of `queries`, its row of `out` (rows of `head_dim`) `+= Σ_j a[j] ·
    /// V_{first + j}` for KV head `g`: the attention outputs of a query head for several queries,
    /// each over its positions `first..first + a.len()`, reading only the kept values, once for
    /// all the queries.
    pub fn weighted_sums(&self, queries: &[(usize, &[f32])], g: usize, out: &mut [f32]) {
        let (w, slot) = (self.cv.words, self.n_kv_heads * self.cv.cap);
        let n = queries.iter().map(|(first, a)| first + a.len()).max().unwrap_or(0);
        let bits = &self.cv.kept[..n * w];
        assert!(g < self.n_kv_heads, "KV head {g} of {}", self.n_kv_heads);
        // SAFETY: `ValueStore::store` is the only writer of the bits and values: it sets bits
        // of dims below `head_dim` only, at most `cap` of them per position, and writes head
        // `g`'s values at `g · count` of the position's slot of `n_kv_heads · cap`, which
        // `self.v` holds for every position of the context (`n` is at most the context).
        unsafe {
            tomoe_quant::vecmath::expand_weighted_sums_unchecked(queries, bits, self.v, slot, g, self.cv.head_dim, out)
        };
    }
}

impl KvCache {
    /// `k_dims`: the key width of each layer; values are `kv_dim` wide in every layer.
    /// `compact_caps`: per layer, `Some(cap)` to cache values compactly (at most `cap` of the
    /// `head_dim` dims per position), `None` for the dense layout. `types`: the key and value
    /// element types (values f32 anyway if a layer is compact).
    pub fn new(
        k_dims: Vec<usize>,
        compact_caps: &[Option<usize>],
        n_ctx: usize,
        kv_dim: usize,
        head_dim: usize,
        types: (KvType, KvType),
    ) -> std::io::Result<KvCache> {
        let v_len = n_ctx.next_multiple_of(BLOCK) * kv_dim;
        let n_kv_heads = kv_dim / head_dim.max(1);
        let compact: Vec<Option<CompactV>> = (0..k_dims.len())
            .map(|l| {
                compact_caps.get(l).copied().flatten().map(|cap| {
                    let cap = cap.clamp(1, head_dim);
                    let words = head_dim.div_ceil(64);
                    CompactV { head_dim, cap, kept: vec![0; n_ctx * words], words }
                })
            })
            .collect();
        let k_lens = k_dims.iter().map(|&kd| n_ctx.next_multiple_of(KEY_BLOCK) * kd);
        let v_lens = compact.iter().map(|cv| match cv {
            Some(cv) => n_ctx * n_kv_heads * cv.cap,
            None => v_len,
        });
        let v_type = if compact.iter().any(Option::is_some) { KvType::F32 } else { types.1 };
        let (k, k_at) = Buf::parts(types.0, k_lens)?;
        let (v, v_at) = Buf::parts(v_type, v_lens)?;
        Ok(KvCache { n_ctx, kv_dim, k, k_at, v, v_at, compact, k_dims })
    }

    /// The compact values of `layer`, if it caches them compactly.
    pub fn compact_values(&self, layer: usize) -> Option<CompactValues<'_>> {
        let cv = self.compact[layer].as_ref()?;
        let Cached::F32(v) = self.v.part(self.v_at[layer].clone()) else {
            unreachable!("compactly cached values are f32")
        };
        Some(CompactValues { cv, v, n_kv_heads: self.kv_dim / cv.head_dim })
    }

    /// The element types of the keys and of the values.
    pub fn types(&self) -> (KvType, KvType) {
        let ty = |b: &Buf| match b {
            Buf::F32(_) => KvType::F32,
            Buf::F16(_) => KvType::F16,
        };
        (ty(&self.k), ty(&self.v))
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Distance between consecutive blocks of one dimension's values (see [`KvCache::layer`]).
    pub fn value_block_stride(&self) -> usize {
        BLOCK * self.kv_dim
    }

    /// Writes the keys (rows of the layer's key width) and values (rows of `kv_dim`) of `n`
    /// consecutive positions from `pos0`. A compact layer needs each position's V mask
    /// (`masks`, rows of `head_dim`, 1 = kept): it stores only the kept dims (the first `cap` of
    /// them).
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32], masks: Option<&[f32]>) {
        let (mut keys, mut values) = self.stores(layer);
        keys.store(pos0, k);
        values.store(pos0, v, masks);
    }

    /// The writers of `layer`'s keys and of its values, apart, so that two threads can store
    /// them at once.
    pub fn stores(&mut self, layer: usize) -> (KeyStore<'_>, ValueStore<'_>) {
        (
            KeyStore { k: self.k.part_mut(self.k_at[layer].clone()), k_dim: self.k_dims[layer] },
            ValueStore {
                v: self.v.part_mut(self.v_at[layer].clone()),
                compact: self.compact[layer].as_mut(),
                kv_dim: self.kv_dim,
            },
        )
    }

    /// Keys of `layer` and its values. Key dim `i` (of the layer's key width `k_dim`) of positions
    /// `16b .. 16b + 16` is at `(b · k_dim + i) · 16`; dimension `i`'s values for positions
    /// `32b .. 32b + 32` are at `b · value_block_stride() + 32 i`. Positions not yet stored are 0
    /// (or stale from a cleared sequence: callers ignore their scores and weight them by 0).
    pub fn layer(&self, layer: usize) -> (Cached<'_>, Cached<'_>) {
        (self.k.part(self.k_at[layer].clone()), self.v.part(self.v_at[layer].clone()))
    }

    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
}

/// One layer's keys, for [`KvCache::stores`].
pub struct KeyStore<'a> {
    k: CachedMut<'a>,
    k_dim: usize,
}

impl KeyStore<'_> {
    /// Writes the keys (rows of the layer's key width) of consecutive positions from `pos0`.
    pub fn store(&mut self, pos0: usize, k: &[f32]) {
        store_transposed(&mut self.k, KEY_BLOCK, self.k_dim, pos0, k);
    }
}

/// One layer's values, for [`KvCache::stores`].
pub struct ValueStore<'a> {
    v: CachedMut<'a>,
    compact: Option<&'a mut CompactV>,
    kv_dim: usize,
}

impl ValueStore<'_> {
    /// Writes the values (rows of `kv_dim`) of consecutive positions from `pos0`; a compact
    /// layer only the kept dims of each position's V mask (`masks`, rows of `head_dim`, 1 =
    /// kept; the first `cap` of them).
    pub fn store(&mut self, pos0: usize, v: &[f32], masks: Option<&[f32]>) {
        let Some(cv) = &mut self.compact else {
            return store_transposed(&mut self.v, BLOCK, self.kv_dim, pos0, v);
        };
        let CachedMut::F32(values) = &mut self.v else { unreachable!("compactly cached values are f32") };
        let masks = masks.expect("a compact V cache layer stores values with their masks");
        let (hd, cap) = (cv.head_dim, cv.cap);
        let n_kv = self.kv_dim / hd;
        for (t, (vt, mt)) in v.chunks_exact(self.kv_dim).zip(masks.chunks_exact(hd)).enumerate() {
            let p = pos0 + t;
            let kept = &mut cv.kept[p * cv.words..(p + 1) * cv.words];
            kept.fill(0);
            let dims = || mt.iter().enumerate().filter(|(_, &on)| on != 0.0).map(|(j, _)| j).take(cap);
            let m = dims().count();
            let slot = &mut values[p * n_kv * cap..(p + 1) * n_kv * cap];
            for (k, j) in dims().enumerate() {
                kept[j / 64] |= 1 << (j % 64);
                for g in 0..n_kv {
                    slot[g * m + k] = vt[g * hd + j];
                }
            }
        }
    }
}

/// Writes `rows` (rows of `width`, positions `pos0..`) into `cache`, transposed in blocks of
/// `block` positions: element `i` of position `p` at `(p / block · width + i) · block + p % block`
/// (an f16 cache: rounded to nearest even).
fn store_transposed(cache: &mut CachedMut, block: usize, width: usize, pos0: usize, rows: &[f32]) {
    let mut half = [0u16; 256];
    for (t, row) in rows.chunks_exact(width).enumerate() {
        let p = pos0 + t;
        let at = (p / block) * block * width;
        match cache {
            CachedMut::F32(c) => {
                let b = &mut c[at..][..block * width];
                for (i, &x) in row.iter().enumerate() {
                    b[i * block + p % block] = x;
                }
            }
            CachedMut::F16(c) => {
                let b = &mut c[at..][..block * width];
                for (i0, part) in (0..).step_by(half.len()).zip(row.chunks(half.len())) {
                    let h = &mut half[..part.len()];
                    vecmath::f32_to_f16_slice(part, h);
                    for (i, &x) in h.iter().enumerate() {
                        b[(i0 + i) * block + p % block] = x;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cached, KvCache, KvType, BLOCK, KEY_BLOCK};
    use tomoe_quant::vecmath::{f16_to_f32, f32_to_f16};

    #[test]
    fn compact_layer_keeps_only_masked_in_values() {
        // 2 KV heads of 4 dims; layer 0 dense, layer 1 compact with at most 2 dims per position.
        let (hd, kvd, n_ctx) = (4, 8, 3);
        let f16 = (KvType::F16, KvType::F16);
        let mut kv = KvCache::new(vec![kvd, kvd], &[None, Some(2)], n_ctx, kvd, hd, f16).unwrap();
        let k = vec![0.5f32; 2 * kvd];
        let v: Vec<f32> = (0..2 * kvd).map(|i| i as f32).collect();
        // Position 0 keeps dims 1 and 3; position 1 keeps dim 2 only.
        let masks = [0., 1., 0., 1., 0., 0., 1., 0.];
        kv.store(1, 0, &k, &v, Some(&masks));
        let cv = kv.compact_values(1).expect("layer 1 is compact");
        assert_eq!(cv.kept(0), &[0b1010]);
        assert_eq!(cv.values(0, 0), &[1., 3.]);
        assert_eq!(cv.values(0, 1), &[5., 7.]);
        assert_eq!(cv.kept(1), &[0b100]);
        assert_eq!(cv.values(1, 0), &[10.]);
        assert_eq!(cv.values(1, 1), &[14.]);
        // Attention's weighted sums over both positions, per KV head; and a second query over
        // the second position only.
        let mut out = [0f32; 8];
        cv.weighted_sums(&[(0, &[0.25, 0.5]), (1, &[2.0])], 1, &mut out);
        assert_eq!(out, [0., 0.25 * 5., 0.5 * 14., 0.25 * 7., 0., 0., 2. * 14., 0.]);
        assert!(kv.compact_values(0).is_none());
        // The capped layer holds 2 of 4 value dims per position.
        let dense = KvCache::new(vec![kvd, kvd], &[None, None], n_ctx, kvd, hd, (KvType::F16, KvType::F32)).unwrap();
        assert!(kv.bytes() < dense.bytes());
        // Compact values stay f32 under an f16 V type; the keys are f16.
        assert_eq!(kv.types(), (KvType::F16, KvType::F32));
    }

    /// An f16 cache holds each stored key and value rounded to nearest even, at the blocked
    /// positions of the f32 layout, in half the bytes.
    #[test]
    fn f16_cache_stores_rounded_values_in_the_same_layout() {
        let (hd, kvd, n_ctx) = (4, 8, 40);
        let mk = |ty| KvCache::new(vec![kvd], &[None], n_ctx, kvd, hd, (ty, ty)).unwrap();
        let (mut a, mut h) = (mk(KvType::F32), mk(KvType::F16));
        let n = 35;
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 7.3 - 60.0 + 1e-3;
        let k: Vec<f32> = (0..n * kvd).map(val).collect();
        let v: Vec<f32> = (0..n * kvd).map(|i| val(i + 5) * 0.01).collect();
        a.store(0, 0, &k[..kvd], &v[..kvd], None);
        h.store(0, 0, &k[..kvd], &v[..kvd], None);
        a.store(0, 1, &k[kvd..], &v[kvd..], None);
        h.store(0, 1, &k[kvd..], &v[kvd..], None);
        let ((Cached::F32(ka), Cached::F32(va)), (Cached::F16(kh), Cached::F16(vh))) = (a.layer(0), h.layer(0)) else {
            panic!("cache types");
        };
        assert_eq!((ka.len(), va.len()), (kh.len(), vh.len()));
        let mut stored = 0;
        for (x, &y) in ka.iter().zip(kh.iter()).chain(va.iter().zip(vh.iter())) {
            assert_eq!(f32_to_f16(*x), y, "{x}");
            stored += usize::from(*x != 0.0);
        }
        assert_eq!(stored, 2 * n * kvd, "every stored value compared");
        // Position 33, dim 5: key block 2, value block 1.
        let (p, i) = (33, 5);
        let key = kh[(p / KEY_BLOCK * kvd + i) * KEY_BLOCK + p % KEY_BLOCK];
        assert_eq!(f16_to_f32(key), f16_to_f32(f32_to_f16(k[p * kvd + i])));
        assert_eq!(vh[p / BLOCK * BLOCK * kvd + i * BLOCK + p % BLOCK], f32_to_f16(v[p * kvd + i]));
        assert_eq!(2 * h.bytes(), a.bytes());
    }
}
