//! The key/value cache of one sequence, allocated once when the context is created. Per layer:
//! keys position-major (`n_ctx` rows of `kv_dim` f32), values transposed (`kv_dim` rows of
//! `row` f32, `row` = `n_ctx` rounded up to 32), as llama.cpp keeps them without flash
//! attention: each output of the probability-weighted sum of values is then one contiguous dot
//! product over positions, summed in ggml's order.

pub struct KvCache {
    n_ctx: usize,
    kv_dim: usize,
    row: usize,
    k: Vec<Vec<f32>>,
    v_t: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> KvCache {
        let row = n_ctx.next_multiple_of(32);
        KvCache {
            n_ctx,
            kv_dim,
            row,
            k: (0..n_layer).map(|_| vec![0f32; n_ctx * kv_dim]).collect(),
            v_t: (0..n_layer).map(|_| vec![0f32; kv_dim * row]).collect(),
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Length of a row of transposed values (`n_ctx` rounded up to 32; the padding stays 0).
    pub fn value_row(&self) -> usize {
        self.row
    }

    /// Writes the keys and values of `n` consecutive positions from `pos0` (rows of `kv_dim`).
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (a, b) = (pos0 * self.kv_dim, pos0 * self.kv_dim + k.len());
        self.k[layer][a..b].copy_from_slice(k);
        let v_t = &mut self.v_t[layer];
        for (t, vt) in v.chunks_exact(self.kv_dim).enumerate() {
            for (i, &x) in vt.iter().enumerate() {
                v_t[i * self.row + pos0 + t] = x;
            }
        }
    }

    /// Keys of `layer` (position-major) and its values transposed (`value_row` per dimension).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v_t[layer])
    }

    pub fn bytes(&self) -> usize {
        self.k.len() * (self.n_ctx + self.row) * self.kv_dim * 4
    }
}
