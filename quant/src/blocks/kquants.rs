//! The 256-element super-block formats Q2_K ... Q6_K and Q8_K: byte layouts, the reference
//! quantizers (bit-identical to ggml's `quantize_row_*_K_ref`, i.e. without an importance
//! matrix) and dequantizers. The float arithmetic follows ggml's order of operations exactly,
//! because the chosen scales depend on it.

use super::float::{f32_to_f16, read_f16};
use crate::formats::QK_K;

/// Byte offsets of the fields inside one block, per format.
pub mod layout {
    pub const Q2_SCALES: usize = 0;
    pub const Q2_QS: usize = 16;
    pub const Q2_D: usize = 80;
    pub const Q2_DMIN: usize = 82;
    pub const Q2_BYTES: usize = 84;

    pub const Q3_HMASK: usize = 0;
    pub const Q3_QS: usize = 32;
    pub const Q3_SCALES: usize = 96;
    pub const Q3_D: usize = 108;
    pub const Q3_BYTES: usize = 110;

    pub const Q4_D: usize = 0;
    pub const Q4_DMIN: usize = 2;
    pub const Q4_SCALES: usize = 4;
    pub const Q4_QS: usize = 16;
    pub const Q4_BYTES: usize = 144;

    pub const Q5_D: usize = 0;
    pub const Q5_DMIN: usize = 2;
    pub const Q5_SCALES: usize = 4;
    pub const Q5_QH: usize = 16;
    pub const Q5_QS: usize = 48;
    pub const Q5_BYTES: usize = 176;

    pub const Q6_QL: usize = 0;
    pub const Q6_QH: usize = 128;
    pub const Q6_SCALES: usize = 192;
    pub const Q6_D: usize = 208;
    pub const Q6_BYTES: usize = 210;

    pub const Q8_D: usize = 0;
    pub const Q8_QS: usize = 4;
    pub const Q8_BSUMS: usize = 260;
    pub const Q8_BYTES: usize = 292;
}
use layout::*;

const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, via the float-add trick (valid for |v| < 2^22), as ggml.
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let f = v + 12582912.0;
    (f.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Symmetric quantization of `x` to `L[i] + nmax` in 0..2*nmax with a weighted-RMSE search
/// (ggml's `make_qx_quants`, without an importance matrix; rmse_type 1: weights x²).
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = clamp(nearest_int(iscale * v));
        l_out[i] = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = clamp(nearest_int(iscale * v));
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l_out[i] = (nmax + clamp(nearest_int(iscale * v))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit quantization with iterative refinement (ggml's `make_q3_quants`, do_rmse).
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Asymmetric quantization (scale and min) minimising a weighted error over a grid of scales
/// (ggml's `make_qkx2_quants`). Returns (scale, -min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The 8 scales and the 8 mins of a Q4_K/Q5_K super-block from its 12 packed bytes:
/// [`scale_min_k4`] of every sub-block at once, by 32-bit word operations.
#[inline(always)]
pub fn scales_mins_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a0, a1, a2) = (word(0), word(1), word(2));
    let join = |lo: u32, hi: u32| {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&lo.to_le_bytes());
        b[4..].copy_from_slice(&hi.to_le_bytes());
        b
    };
    (
        join(a0 & LOW6, (a2 & LOW4) | (((a0 >> 6) & LOW2) << 4)),
        join(a1 & LOW6, ((a2 >> 4) & LOW4) | (((a1 >> 6) & LOW2) << 4)),
    )
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

pub fn quantize_q2_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q2_BYTES)) {
        let mut l = [0u8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        let mut weights = [0.0f32; 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (s, m) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let sc = &mut y[Q2_SCALES..Q2_SCALES + 16];
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
        } else {
            sc.iter_mut().for_each(|s| *s = 0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
        }
        put_f16(
            y,
            Q2_D,
            if max_scale > 0.0 {
                max_scale / 15.0
            } else {
                0.0
            },
        );
        put_f16(y, Q2_DMIN, if max_min > 0.0 { max_min / 15.0 } else { 0.0 });
        let d_all = read_f16(y, Q2_D);
        let dmin_all = read_f16(y, Q2_DMIN);
        for j in 0..16 {
            let s = y[Q2_SCALES + j];
            let d = d_all * (s & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * (s >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for i in 0..32 {
                y[Q2_QS + j / 4 + i] =
                    l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
            }
        }
    }
}

pub fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q2_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(b, Q2_D);
        let min = read_f16(b, Q2_DMIN);
        let mut out = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &b[Q2_QS + 32 * half..Q2_QS + 32 * half + 32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let sc = b[Q2_SCALES + is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for i in 0..16 {
                        y[out] = dl * ((q[16 * part + i] >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

/// The sixteen 6-bit Q3_K scales (already minus 32) from their 12 packed bytes: scale `j` has
/// its low four bits in the low (`j < 8`) or high nibble of byte `j % 8` and its high two at
/// bit `2 (j / 4)` of byte `8 + j % 4`. Decoded four at a time by 32-bit word operations.
#[inline(always)]
pub fn q3_k_scales(packed: &[u8]) -> [i8; 16] {
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (a0, a1, a2) = (word(0), word(1), word(2));
    let words = [
        (a0 & LOW4) | ((a2 & LOW2) << 4),
        (a1 & LOW4) | (((a2 >> 2) & LOW2) << 4),
        ((a0 >> 4) & LOW4) | (((a2 >> 4) & LOW2) << 4),
        ((a1 >> 4) & LOW4) | (((a2 >> 6) & LOW2) << 4),
    ];
    std::array::from_fn(|j| (words[j / 4].to_le_bytes()[j % 4] as i8).wrapping_sub(32))
}

pub fn quantize_q3_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q3_BYTES)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            let s = scales[j].abs();
            if s > amax {
                amax = s;
                max_scale = scales[j];
            }
        }
        y[Q3_SCALES..Q3_SCALES + 12].iter_mut().for_each(|s| *s = 0);
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                let lv = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    y[Q3_SCALES + j] = lv & 0xF;
                } else {
                    y[Q3_SCALES + j - 8] |= (lv & 0xF) << 4;
                }
                y[Q3_SCALES + 8 + j % 4] |= (lv >> 4) << (2 * (j / 4));
            }
            put_f16(y, Q3_D, 1.0 / iscale);
        } else {
            put_f16(y, Q3_D, 0.0);
        }
        let d_all = read_f16(y, Q3_D);
        let sc = q3_k_scales(&y[Q3_SCALES..Q3_SCALES + 12]);
        for j in 0..16 {
            let d = d_all * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        let hmask = &mut y[Q3_HMASK..Q3_HMASK + 32];
        hmask.iter_mut().for_each(|h| *h = 0);
        // High bit of element j goes to bit j/32 of hmask[j % 32].
        for j in 0..QK_K {
            if l[j] > 3 {
                hmask[j % 32] |= 1 << (j / 32);
                l[j] -= 4;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for i in 0..32 {
                y[Q3_QS + j / 4 + i] =
                    (l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6))
                        as u8;
            }
        }
    }
}

pub fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q3_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = read_f16(b, Q3_D);
        let scales = q3_k_scales(&b[Q3_SCALES..Q3_SCALES + 12]);
        let hm = &b[Q3_HMASK..Q3_HMASK + 32];
        let mut m = 1u8;
        let mut out = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &b[Q3_QS + 32 * half..Q3_QS + 32 * half + 32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    for i in 0..16 {
                        let k = 16 * part + i;
                        let v = ((q[k] >> shift) & 3) as i32 - if hm[k] & m != 0 { 0 } else { 4 };
                        y[out] = dl * v as f32;
                        out += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

/// Shared by Q4_K and Q5_K: per 32-element sub-block scales and mins, packed to 6 bits, and the
/// final levels in `l` (0..=nmax).
fn quantize_scale_min_k(
    x: &[f32],
    y: &mut [u8],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut y[4..16];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(y, 0, max_scale / 63.0);
    put_f16(y, 2, max_min / 63.0);
    let d_all = read_f16(y, 0);
    let dmin_all = read_f16(y, 2);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &y[4..16]);
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

pub fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q4_BYTES)) {
        // The scales bytes are OR-ed into: start from zero.
        y[Q4_SCALES..Q4_SCALES + 12].iter_mut().for_each(|s| *s = 0);
        let mut l = [0u8; QK_K];
        quantize_scale_min_k(x, y, 15, -1.0, 20, &mut l);
        for (k, j) in (0..QK_K).step_by(64).enumerate() {
            for i in 0..32 {
                y[Q4_QS + 32 * k + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

pub fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(b, Q4_D);
        let min = read_f16(b, Q4_DMIN);
        let sc = &b[Q4_SCALES..Q4_SCALES + 12];
        for k in 0..4 {
            let q = &b[Q4_QS + 32 * k..Q4_QS + 32 * k + 32];
            let (s1, m1) = scale_min_k4(2 * k, sc);
            let (s2, m2) = scale_min_k4(2 * k + 1, sc);
            let (d1, m1) = (d * s1 as f32, min * m1 as f32);
            let (d2, m2) = (d * s2 as f32, min * m2 as f32);
            for i in 0..32 {
                y[64 * k + i] = d1 * (q[i] & 0xF) as f32 - m1;
                y[64 * k + 32 + i] = d2 * (q[i] >> 4) as f32 - m2;
            }
        }
    }
}

pub fn quantize_q5_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q5_BYTES)) {
        y[Q5_SCALES..Q5_SCALES + 12].iter_mut().for_each(|s| *s = 0);
        let mut l = [0u8; QK_K];
        quantize_scale_min_k(x, y, 31, -0.5, 15, &mut l);
        y[Q5_QH..Q5_QH + 32].iter_mut().for_each(|h| *h = 0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (k, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    y[Q5_QH + j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    y[Q5_QH + j] |= m2;
                }
                y[Q5_QS + 32 * k + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

pub fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q5_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(b, Q5_D);
        let min = read_f16(b, Q5_DMIN);
        let sc = &b[Q5_SCALES..Q5_SCALES + 12];
        let qh = &b[Q5_QH..Q5_QH + 32];
        let (mut u1, mut u2) = (1u8, 2u8);
        for k in 0..4 {
            let ql = &b[Q5_QS + 32 * k..Q5_QS + 32 * k + 32];
            let (s1, m1) = scale_min_k4(2 * k, sc);
            let (s2, m2) = scale_min_k4(2 * k + 1, sc);
            let (d1, m1) = (d * s1 as f32, min * m1 as f32);
            let (d2, m2) = (d * s2 as f32, min * m2 as f32);
            for i in 0..32 {
                let h1 = if qh[i] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[i] & u2 != 0 { 16 } else { 0 };
                y[64 * k + i] = d1 * ((ql[i] & 0xF) + h1) as f32 - m1;
                y[64 * k + 32 + i] = d2 * ((ql[i] >> 4) + h2) as f32 - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

pub fn quantize_q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q6_BYTES)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y.iter_mut().for_each(|b| *b = 0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(y, Q6_D, 1.0 / iscale);
        for ib in 0..16 {
            y[Q6_SCALES + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        let d_all = read_f16(y, Q6_D);
        for j in 0..16 {
            let d = d_all * (y[Q6_SCALES + j] as i8) as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for (k, j) in (0..QK_K).step_by(128).enumerate() {
            for i in 0..32 {
                let q = |o: usize| l[j + i + o] as u8;
                y[Q6_QL + 64 * k + i] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
                y[Q6_QL + 64 * k + 32 + i] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
                y[Q6_QH + 32 * k + i] =
                    (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
            }
        }
    }
}

pub fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q6_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(b, Q6_D);
        for k in 0..2 {
            let ql = &b[Q6_QL + 64 * k..Q6_QL + 64 * k + 64];
            let qh = &b[Q6_QH + 32 * k..Q6_QH + 32 * k + 32];
            let sc = &b[Q6_SCALES + 8 * k..Q6_SCALES + 8 * k + 8];
            let y = &mut y[128 * k..128 * k + 128];
            for i in 0..32 {
                let is = i / 16;
                let q1 = ((ql[i] & 0xF) | ((qh[i] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[i + 32] & 0xF) | (((qh[i] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[i] >> 4) | (((qh[i] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[i + 32] >> 4) | (((qh[i] >> 6) & 3) << 4)) as i32 - 32;
                y[i] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[i + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[i + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[i + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

/// Q8_K: the activation format of the k-quant dot products (ggml's `quantize_row_q8_K_ref`).
pub fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q8_BYTES)) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            // ggml leaves bsums untouched here; we zero them so the block is fully defined.
            y.iter_mut().for_each(|b| *b = 0);
            continue;
        }
        let iscale = -127.0 / max;
        for j in 0..QK_K {
            y[Q8_QS + j] = nearest_int(iscale * x[j]).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let sum: i32 = y[Q8_QS + 16 * j..Q8_QS + 16 * j + 16]
                .iter()
                .map(|&q| q as i8 as i32)
                .sum();
            y[Q8_BSUMS + 2 * j..Q8_BSUMS + 2 * j + 2].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        y[Q8_D..Q8_D + 4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

pub fn dequantize_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for j in 0..QK_K {
            y[j] = d * (b[Q8_QS + j] as i8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q3_k_scales_follow_the_packing() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..1000 {
            let q: [u8; 12] = std::array::from_fn(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            });
            let sc = q3_k_scales(&q);
            for (j, &s) in sc.iter().enumerate() {
                let low = if j < 8 { q[j] & 0xF } else { q[j - 8] >> 4 };
                let high = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
                assert_eq!(s, (low | (high << 4)) as i8 - 32, "scale {j} of {q:?}");
            }
        }
    }

    #[test]
    fn all_scales_and_mins_at_once_equal_one_at_a_time() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1000 {
            let q: [u8; 12] = std::array::from_fn(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            });
            let (sc, m) = scales_mins_k4(&q);
            for j in 0..8 {
                assert_eq!((sc[j], m[j]), scale_min_k4(j, &q), "sub-block {j} of {q:?}");
            }
        }
    }
}
