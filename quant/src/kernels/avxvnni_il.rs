//! Matrix-vector kernels of the "avxvnni" set over weights interleaved in groups of 16 rows
//! (`kernels::Interleaved16`): the kernels of `avx2_il.rs` (two halves of 8 rows, one ymm lane
//! per row) instantiated with the VEX `vpdpbusd`. Each row's result is **bit-identical** to the
//! set's single-row kernel, as there.
#![allow(clippy::missing_safety_doc)] // the contract of `Interleaved16` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::avx2::{f16_at, load};
use super::avx2_il::{
    check, f16x8, half_block, high_bit_16, il_kernels, nibbles, quad, reduce, unpack_check, BIAS_CHUNK,
    UNPACKED_HALF_BLOCK,
};
use super::avxvnni::dot_us8_avxvnni;
use super::interleave::{pack_q4_0_halves, pack_q4_1_halves, pack_q5_0_halves, pack_q8_0_signed_halves};
use super::table::KernelSet;
use super::{Interleaved16, Unpacked16};
use crate::formats::{QuantType, QK};

/// Adds the set's interleaved kernels to `s`.
pub fn add_to(s: &mut KernelSet) {
    add_interleaved(s);
}

il_kernels!("avx2,fma,f16c,avxvnni", dot_us8_avxvnni);
