//! The key/value cache of one sequence, allocated once when the context is created. Per layer:
//! keys position-major (`n_ctx` rows of the layer's key width: ToMoE layers cache only their
//! kept Q/K dims); values transposed as llama.cpp keeps them
//! without flash attention, so that each output of the probability-weighted sum is a dot
//! product over positions summed in ggml's order, but in blocks of 32 positions (block `b`
//! holds, for each of the `kv_dim` dimensions, positions `32b .. 32b + 32`), so that storing
//! one token writes within one block rather than one cache line per dimension.

pub const BLOCK: usize = 32;

pub struct KvCache {
    n_ctx: usize,
    kv_dim: usize,
    /// Per layer, the key width (`kv_dim`, or fewer in a ToMoE layer with pruned Q/K dims).
    k_dims: Vec<usize>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    /// `k_dims`: the key width of each layer; values are `kv_dim` wide in every layer.
    pub fn new(k_dims: Vec<usize>, n_ctx: usize, kv_dim: usize) -> KvCache {
        let v_len = n_ctx.next_multiple_of(BLOCK) * kv_dim;
        KvCache {
            n_ctx,
            kv_dim,
            k: k_dims.iter().map(|&kd| vec![0f32; n_ctx * kd]).collect(),
            v: k_dims.iter().map(|_| vec![0f32; v_len]).collect(),
            k_dims,
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Distance between consecutive blocks of one dimension's values (see [`KvCache::layer`]).
    pub fn value_block_stride(&self) -> usize {
        BLOCK * self.kv_dim
    }

    /// Writes the keys and values of `n` consecutive positions from `pos0` (rows of `kv_dim`).
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let a = pos0 * self.k_dims[layer];
        self.k[layer][a..a + k.len()].copy_from_slice(k);
        let values = &mut self.v[layer];
        for (t, vt) in v.chunks_exact(self.kv_dim).enumerate() {
            let p = pos0 + t;
            let block = &mut values[(p / BLOCK) * BLOCK * self.kv_dim..][..BLOCK * self.kv_dim];
            for (i, &x) in vt.iter().enumerate() {
                block[i * BLOCK + p % BLOCK] = x;
            }
        }
    }

    /// Keys of `layer` (position-major) and its values: dimension `i`'s values for positions
    /// `32b .. 32b + 32` are at `b · value_block_stride() + 32 i`. Positions not yet stored are 0
    /// (or stale from a cleared sequence: callers weight them by 0).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len() * 4).sum()
    }
}
