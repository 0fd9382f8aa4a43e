//! TEMPORARY private copy of `tomoe_quant::QuantType` (ids and block geometry only), so that the
//! GGUF reader builds and is tested while tomoe-quant is written in parallel. It is replaced by
//! `pub use tomoe_quant::QuantType` as soon as that lands on main; it holds no kernels.

/// A tensor storage format, with ggml's type id and block geometry.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
}

/// (type, ggml id, name, elements per block, bytes per block): ggml's `type_traits` table.
const TABLE: [(QuantType, u32, &str, usize, usize); 14] = [
    (QuantType::F32, 0, "f32", 1, 4),
    (QuantType::F16, 1, "f16", 1, 2),
    (QuantType::Q4_0, 2, "q4_0", 32, 18),
    (QuantType::Q4_1, 3, "q4_1", 32, 20),
    (QuantType::Q5_0, 6, "q5_0", 32, 22),
    (QuantType::Q5_1, 7, "q5_1", 32, 24),
    (QuantType::Q8_0, 8, "q8_0", 32, 34),
    (QuantType::Q2_K, 10, "q2_k", 256, 84),
    (QuantType::Q3_K, 11, "q3_k", 256, 110),
    (QuantType::Q4_K, 12, "q4_k", 256, 144),
    (QuantType::Q5_K, 13, "q5_k", 256, 176),
    (QuantType::Q6_K, 14, "q6_k", 256, 210),
    (QuantType::Q8_K, 15, "q8_k", 256, 292),
    (QuantType::BF16, 30, "bf16", 1, 2),
];

impl QuantType {
    fn entry(self) -> &'static (QuantType, u32, &'static str, usize, usize) {
        TABLE.iter().find(|e| e.0 == self).expect("every QuantType has a table row")
    }
    pub fn from_ggml_id(id: u32) -> Option<QuantType> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }
    pub fn ggml_id(self) -> u32 {
        self.entry().1
    }
    pub fn name(self) -> &'static str {
        self.entry().2
    }
    pub fn from_name(s: &str) -> Option<QuantType> {
        TABLE.iter().find(|e| e.2 == s).map(|e| e.0)
    }
    pub fn block_size(self) -> usize {
        self.entry().3
    }
    pub fn type_size(self) -> usize {
        self.entry().4
    }
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if n % self.block_size() != 0 {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }
}
