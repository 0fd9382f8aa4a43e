//! The one table of block formats. Adding a format = adding a variant and a row in [`FORMATS`].

/// A tensor element format, with ggml's type ids and byte layouts.
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
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

/// Elements per k-quant super-block.
pub const QK_K: usize = 256;
/// Elements per legacy (Q4_0 ... Q8_0) block.
pub const QK: usize = 32;

/// One row of the format table.
pub(crate) struct Format {
    pub ty: QuantType,
    pub name: &'static str,
    pub ggml_id: u32,
    pub block_size: usize,
    pub type_size: usize,
    pub vec_dot_type: QuantType,
}

macro_rules! fmt {
    ($ty:ident, $name:literal, $id:literal, $bs:expr, $ts:expr, $vd:ident) => {
        Format {
            ty: QuantType::$ty,
            name: $name,
            ggml_id: $id,
            block_size: $bs,
            type_size: $ts,
            vec_dot_type: QuantType::$vd,
        }
    };
}

/// Indexed by `QuantType as usize`. Sizes are ggml's `sizeof(block_*)`.
pub(crate) const FORMATS: [Format; QuantType::COUNT] = [
    fmt!(F32, "f32", 0, 1, 4, F32),
    fmt!(F16, "f16", 1, 1, 2, F16),
    fmt!(BF16, "bf16", 30, 1, 2, BF16),
    fmt!(Q4_0, "q4_0", 2, QK, 2 + QK / 2, Q8_0),
    fmt!(Q4_1, "q4_1", 3, QK, 4 + QK / 2, Q8_0),
    fmt!(Q5_0, "q5_0", 6, QK, 2 + 4 + QK / 2, Q8_0),
    fmt!(Q5_1, "q5_1", 7, QK, 4 + 4 + QK / 2, Q8_0),
    fmt!(Q8_0, "q8_0", 8, QK, 2 + QK, Q8_0),
    // scales[16], qs[64], d, dmin
    fmt!(Q2_K, "q2_k", 10, QK_K, QK_K / 16 + QK_K / 4 + 4, Q8_K),
    // hmask[32], qs[64], scales[12], d
    fmt!(Q3_K, "q3_k", 11, QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, Q8_K),
    // d, dmin, scales[12], qs[128]
    fmt!(Q4_K, "q4_k", 12, QK_K, 4 + 12 + QK_K / 2, Q8_K),
    // d, dmin, scales[12], qh[32], qs[128]
    fmt!(Q5_K, "q5_k", 13, QK_K, 4 + 12 + QK_K / 8 + QK_K / 2, Q8_K),
    // ql[128], qh[64], scales[16], d
    fmt!(
        Q6_K,
        "q6_k",
        14,
        QK_K,
        QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        Q8_K
    ),
    // d (f32), qs[256], bsums[16] (i16)
    fmt!(Q8_K, "q8_k", 15, QK_K, 4 + QK_K + QK_K / 16 * 2, Q8_K),
];

impl QuantType {
    /// How many formats there are.
    pub const COUNT: usize = 14;

    /// Every format, in table order.
    pub const ALL: [QuantType; QuantType::COUNT] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q2_K,
        QuantType::Q3_K,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
        QuantType::Q8_K,
    ];

    fn format(self) -> &'static Format {
        let f = &FORMATS[self as usize];
        debug_assert!(f.ty == self);
        f
    }

    pub fn from_ggml_id(id: u32) -> Option<QuantType> {
        FORMATS.iter().find(|f| f.ggml_id == id).map(|f| f.ty)
    }

    pub fn ggml_id(self) -> u32 {
        self.format().ggml_id
    }

    /// Lower-case name as ggml prints it: "q4_k", "f32", ...
    pub fn name(self) -> &'static str {
        self.format().name
    }

    /// Case-insensitive inverse of [`QuantType::name`].
    pub fn from_name(s: &str) -> Option<QuantType> {
        FORMATS
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(s))
            .map(|f| f.ty)
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.format().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.format().type_size
    }

    /// Bytes of a row of `n` elements; `None` if `n` is not a whole number of blocks or overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let f = self.format();
        if n % f.block_size != 0 {
            return None;
        }
        (n / f.block_size).checked_mul(f.type_size)
    }

    /// The format activations are quantized to for [`crate::vec_dot`] against this weight format.
    pub fn vec_dot_type(self) -> QuantType {
        self.format().vec_dot_type
    }

    /// True for the formats made of 256-element super-blocks.
    pub fn is_k_quant(self) -> bool {
        self.block_size() == QK_K
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_variant_and_round_trips() {
        for (i, ty) in QuantType::ALL.iter().enumerate() {
            assert_eq!(*ty as usize, i);
            assert_eq!(FORMATS[i].ty, *ty);
            assert_eq!(QuantType::from_ggml_id(ty.ggml_id()), Some(*ty));
            assert_eq!(QuantType::from_name(ty.name()), Some(*ty));
            assert_eq!(QuantType::from_name(&ty.name().to_uppercase()), Some(*ty));
        }
        assert_eq!(QuantType::from_ggml_id(9), None); // Q8_1 is not supported
        assert_eq!(QuantType::from_name("q9_9"), None);
    }

    #[test]
    fn row_bytes_checks_blocks_and_overflow() {
        assert_eq!(QuantType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(QuantType::Q4_0.row_bytes(33), None);
        assert_eq!(QuantType::Q6_K.row_bytes(512), Some(420));
        assert_eq!(QuantType::F32.row_bytes(usize::MAX), None);
        assert_eq!(QuantType::F16.row_bytes(3), Some(6));
    }
}
