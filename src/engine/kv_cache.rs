//! The key/value cache of one sequence: per layer, `n_ctx` rows of `kv_dim` f32 for K and for V,
//! allocated once when the context is created.

pub struct KvCache {
    n_ctx: usize,
    kv_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> KvCache {
        KvCache {
            n_ctx,
            kv_dim,
            k: (0..n_layer).map(|_| vec![0f32; n_ctx * kv_dim]).collect(),
            v: (0..n_layer).map(|_| vec![0f32; n_ctx * kv_dim]).collect(),
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Writes the keys and values of `n` consecutive positions from `pos0` (rows of `kv_dim`).
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (a, b) = (pos0 * self.kv_dim, pos0 * self.kv_dim + k.len());
        self.k[layer][a..b].copy_from_slice(k);
        self.v[layer][a..b].copy_from_slice(v);
    }

    /// Keys and values of `layer`, positions `0..n_ctx`.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }

    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_ctx * self.kv_dim * 4
    }
}
