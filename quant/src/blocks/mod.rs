//! Block layouts with their scalar quantizers and dequantizers (the reference implementation).

pub mod float;
pub mod kquants;
pub mod legacy;

use crate::formats::QuantType;

type QuantizeFn = fn(&[f32], &mut [u8]);
type DequantizeFn = fn(&[u8], &mut [f32]);

/// (quantize, dequantize) of a format.
pub(crate) fn codec(ty: QuantType) -> (QuantizeFn, DequantizeFn) {
    use QuantType::*;
    match ty {
        F32 => (float::quantize_f32, float::dequantize_f32),
        F16 => (float::quantize_f16, float::dequantize_f16),
        BF16 => (float::quantize_bf16, float::dequantize_bf16),
        Q4_0 => (legacy::quantize_q4_0, legacy::dequantize_q4_0),
        Q4_1 => (legacy::quantize_q4_1, legacy::dequantize_q4_1),
        Q5_0 => (legacy::quantize_q5_0, legacy::dequantize_q5_0),
        Q5_1 => (legacy::quantize_q5_1, legacy::dequantize_q5_1),
        Q8_0 => (legacy::quantize_q8_0, legacy::dequantize_q8_0),
        Q2_K => (kquants::quantize_q2_k, kquants::dequantize_q2_k),
        Q3_K => (kquants::quantize_q3_k, kquants::dequantize_q3_k),
        Q4_K => (kquants::quantize_q4_k, kquants::dequantize_q4_k),
        Q5_K => (kquants::quantize_q5_k, kquants::dequantize_q5_k),
        Q6_K => (kquants::quantize_q6_k, kquants::dequantize_q6_k),
        Q8_K => (kquants::quantize_q8_k, kquants::dequantize_q8_k),
    }
}
