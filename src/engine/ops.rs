//! The small f32 operations of the forward pass: norms and RoPE's tables. (The ones that must
//! round exactly as ggml's SIMD code, exp/SiLU/GELU/softmax, RoPE's rotation and the f32 dot
//! products of attention, are in `tomoe_quant::vecmath`.)

use crate::model::RopeStyle;

/// out = x / rms(x) * w, with the mean of squares in f64 (as ggml).
pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// In place: x = x / rms(x) * w.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (xi, &wi) in x.iter_mut().zip(w) {
        *xi = *xi * scale * wi;
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f64; 4];
    let mut chunks = x.chunks_exact(4);
    for c in &mut chunks {
        for i in 0..4 {
            acc[i] += (c[i] * c[i]) as f64;
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for &v in chunks.remainder() {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// cos/sin of every rotated pair at one position: theta_i = pos·scale·base^(-2i/n_rot) / ff_i,
/// with the powers accumulated by multiplication in f32 as ggml does.
pub fn rope_table(cos: &mut [f32], sin: &mut [f32], pos: usize, base: f32, freq_scale: f32, freqs: Option<&[f32]>) {
    let n_pairs = cos.len();
    let theta_scale = base.powf(-1.0 / n_pairs as f32);
    let mut theta = pos as f32;
    for i in 0..n_pairs {
        let ff = freqs.map_or(1.0, |f| f[i]);
        let t = freq_scale * (theta / ff);
        cos[i] = t.cos();
        sin[i] = t.sin();
        theta *= theta_scale;
    }
}

/// Rotates the first `2·cos.len()` dimensions of one head (`vecmath::rope`).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    tomoe_quant::vecmath::rope(x, cos, sin, style == RopeStyle::Neox);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let mut cos = [0f32; 2];
        let mut sin = [0f32; 2];
        rope_table(&mut cos, &mut sin, 3, 10000.0, 1.0, None);
        assert!((cos[0] - 3f32.cos()).abs() < 1e-6 && (sin[0] - 3f32.sin()).abs() < 1e-6);
        // second pair: theta = 3 * 10000^(-2/4) = 0.03
        assert!((cos[1] - 0.03f32.cos()).abs() < 1e-6);
        let x0 = [1.0f32, 2.0, 3.0, 4.0];
        let mut a = x0;
        rope(&mut a, &cos, &sin, RopeStyle::Adjacent);
        assert!((a[0] - (cos[0] - 2.0 * sin[0])).abs() < 1e-6);
        assert!((a[1] - (sin[0] + 2.0 * cos[0])).abs() < 1e-6);
        let mut b = x0;
        rope(&mut b, &cos, &sin, RopeStyle::Neox);
        // NEOX pairs (0, 2) and (1, 3)
        assert!((b[0] - (cos[0] - 3.0 * sin[0])).abs() < 1e-6);
        assert!((b[3] - (2.0 * sin[1] + 4.0 * cos[1])).abs() < 1e-6);
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
        assert!((norm(&a) - norm(&x0)).abs() < 1e-4 && (norm(&b) - norm(&x0)).abs() < 1e-4);
    }

    #[test]
    fn rms_norm_scales_by_the_root_mean_square() {
        let x = [3.0f32, -4.0];
        let mut out = [0f32; 2];
        rms_norm(&mut out, &x, &[1.0, 2.0], 0.0);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] + 8.0 / rms).abs() < 1e-6);
    }
}
