//! Matrix-matrix kernels of the "avx512-vnni" set for prompt processing, each (row, vector)
//! result **bit-identical** to the set's single-row kernel (the engine's agreement with
//! llama.cpp depends on it; see `kernels::GemmKernel`).
//!
//! The single-row kernels keep, per (row, vector), eight lanes: lane `l` accumulates
//! `fma(d_w · d_x, float(Σ of the block's quad l of products), acc_l)` block after block, and the
//! result is a fixed horizontal sum of the lanes (plus `Σ m · s` for Q4_1/Q5_1). Here a zmm
//! register holds one quad lane of **sixteen vectors** for one weight row: its quad sums come
//! from one `vpdpbusd` against the row's four weights broadcast, its scales `d_w · d_x` from one
//! multiply per row and block (not per vector), and the horizontal sum becomes seven vector adds
//! in the same order. Every lane sees exactly the single-row kernel's operations.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the activations are packed as `x + 128`
//! and each weight quad carries `-128 · Σ w` as the accumulator's start: the integer sums are
//! exact either way, and weights are `q - offset` (Q4_0, Q5_0), `q` (Q4_1, Q5_1) or `q` (Q8_0),
//! the values the single-row kernels multiply.
#![allow(clippy::missing_safety_doc)] // the contract of `GemmKernel` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::avx2::{bits_32, f16_at, nibbles_32};
use super::table::KernelSet;
use super::{GemmKernel, PackedActs};
use crate::formats::{QuantType, QK};

/// Weight rows per tile.
const ROWS: usize = 2;
/// Activation vectors per tile: one per zmm lane.
const VECS: usize = 16;
/// Groups of four quants per block.
const QUADS: usize = 8;
/// Bytes of one Q8_0 activation block (f16 scale + 32 quants).
const XB: usize = 34;
/// Packed bytes per group of `VECS` vectors and block: the quads, then the scales, then the
/// block sums, one zmm register each.
const PACKED_BLOCK: usize = (QUADS + 2) * 64;
/// Unpacked bytes per weight row and block: 32 weights, the 8 quad corrections, d, m.
const PANEL_BLOCK: usize = 32 + 4 * QUADS + 8;

/// Adds the set's tiled kernels to `s`.
pub fn add_to(s: &mut KernelSet) {
    for (ty, run) in [
        (QuantType::Q4_0, run_q4_0 as RunFn),
        (QuantType::Q4_1, run_q4_1),
        (QuantType::Q5_0, run_q5_0),
        (QuantType::Q5_1, run_q5_1),
        (QuantType::Q8_0, run_q8_0),
    ] {
        s[ty].gemm = Some(GemmKernel { pack, run });
    }
}

type RunFn = unsafe fn(usize, &[u8], usize, &PackedActs, *mut f32, usize);

/// Packs Q8_0 activation vectors: per group of 16 vectors and block, quad `l` of every vector
/// (as `x + 128`) in lane `v` of register `l`, then the vectors' scales, then their block sums.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn pack(cols: usize, x: &[u8], x_row_bytes: usize, sums: &[f32], out: &mut PackedActs) {
    let nb = cols / QK;
    assert!(
        cols % QK == 0 && x_row_bytes >= nb * XB && x_row_bytes > 0 && x.len() % x_row_bytes == 0,
        "gemm pack: vectors too short for {cols} values"
    );
    let n_vecs = x.len() / x_row_bytes;
    assert!(
        sums.is_empty() || sums.len() == n_vecs * nb,
        "gemm pack: {} block sums for {n_vecs} vectors of {nb} blocks",
        sums.len()
    );
    let groups = n_vecs.div_ceil(VECS);
    out.bytes.clear();
    out.bytes.resize(groups * nb * PACKED_BLOCK, 0);
    (out.cols, out.n_vecs, out.has_sums) = (cols, n_vecs, !sums.is_empty());
    for g in 0..groups {
        for b in 0..nb {
            let mut quads = [[0x8080_8080u32; VECS]; QUADS];
            let (mut d, mut s) = ([0f32; VECS], [0f32; VECS]);
            for v in 0..VECS.min(n_vecs - g * VECS) {
                let vec = g * VECS + v;
                let block = &x[vec * x_row_bytes + XB * b..][..XB];
                for (l, q) in quads.iter_mut().enumerate() {
                    let bytes = [2, 3, 4, 5].map(|i| block[4 * l + i]);
                    q[v] = u32::from_le_bytes(bytes) ^ 0x8080_8080;
                }
                d[v] = f16_at(block.as_ptr());
                if !sums.is_empty() {
                    s[v] = sums[vec * nb + b];
                }
            }
            let o = out.bytes.as_mut_ptr().add((g * nb + b) * PACKED_BLOCK);
            for (l, q) in quads.iter().enumerate() {
                _mm512_storeu_si512(
                    o.add(64 * l) as *mut _,
                    _mm512_loadu_si512(q.as_ptr() as *const _),
                );
            }
            _mm512_storeu_ps(o.add(64 * QUADS) as *mut f32, _mm512_loadu_ps(d.as_ptr()));
            _mm512_storeu_ps(
                o.add(64 * QUADS + 64) as *mut f32,
                _mm512_loadu_ps(s.as_ptr()),
            );
        }
    }
}

/// The shared loop: checks the shapes, unpacks the rows (`unpack(block)` gives its 32 weights
/// as signed bytes), then runs the tiles. `with_sums`: the format has a per-block minimum `m`
/// (the f16 after `d`), whose `Σ m · s` is added after the lanes' sum.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    ty: QuantType,
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    packed: &PackedActs,
    out: *mut f32,
    out_stride: usize,
    with_sums: bool,
    unpack: impl Fn(*const u8) -> __m256i,
) {
    let (nb, ts) = (cols / QK, ty.type_size());
    assert!(
        cols % QK == 0 && row_bytes >= nb * ts && row_bytes > 0 && w.len() % row_bytes == 0,
        "{ty} gemm: rows too short for {cols} values"
    );
    let (rows, n_vecs) = (w.len() / row_bytes, packed.n_vecs);
    let groups = n_vecs.div_ceil(VECS);
    assert!(
        packed.cols == cols && packed.bytes.len() == groups * nb * PACKED_BLOCK,
        "{ty} gemm: activations packed for {} values, not {cols}",
        packed.cols
    );
    assert!(
        !with_sums || packed.has_sums,
        "{ty} gemm: activations packed without block sums"
    );
    if rows == 0 || n_vecs == 0 {
        return;
    }
    // The buffer is taken out of the thread-local and put back, rather than used inside a
    // closure: a closure does not carry this function's target features, so whether the tiles'
    // intrinsics were inlined depended on LLVM inlining the closure (when it did not, every
    // intrinsic became a call and the product ran 40x slower).
    let mut panel = PANEL.take();
    tiles(
        nb, ts, w, rows, row_bytes, packed, out, out_stride, with_sums, unpack, &mut panel,
    );
    PANEL.set(panel);
}

thread_local! {
    /// Each thread's unpacked rows, reused from call to call.
    static PANEL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles(
    nb: usize,
    ts: usize,
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    packed: &PackedActs,
    out: *mut f32,
    out_stride: usize,
    with_sums: bool,
    unpack: impl Fn(*const u8) -> __m256i,
    panel: &mut Vec<u8>,
) {
    let (n_vecs, groups) = (packed.n_vecs, packed.n_vecs.div_ceil(VECS));

    // The rows, unpacked once: per pair of rows and block, each row's weights, quad corrections
    // and scales (a last odd row is paired with itself; its copy is never stored).
    let pairs = rows.div_ceil(ROWS);
    panel.clear();
    panel.resize(pairs * nb * ROWS * PANEL_BLOCK, 0);
    let ones = _mm256_set1_epi8(1);
    for r in 0..pairs * ROWS {
        let row = w.as_ptr().add(r.min(rows - 1) * row_bytes);
        for b in 0..nb {
            let bw = row.add(ts * b);
            let q = unpack(bw);
            let corr = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q), 7),
            );
            let at = ((r / ROWS * nb + b) * ROWS + r % ROWS) * PANEL_BLOCK;
            let o = panel.as_mut_ptr().add(at);
            _mm256_storeu_si256(o as *mut __m256i, q);
            _mm256_storeu_si256(o.add(32) as *mut __m256i, corr);
            let m = if with_sums { f16_at(bw.add(2)) } else { 0.0 };
            (o.add(64) as *mut [f32; 2]).write_unaligned([f16_at(bw), m]);
        }
    }

    for g in 0..groups {
        let xg = packed.bytes.as_ptr().add(g * nb * PACKED_BLOCK);
        for pair in 0..pairs {
            let pw = panel.as_ptr().add(pair * nb * ROWS * PANEL_BLOCK);
            let mut acc = [[_mm512_setzero_ps(); QUADS]; ROWS];
            let mut summ = [_mm512_setzero_ps(); ROWS];
            #[allow(clippy::needless_range_loop)] // l indexes both the packed quads and acc[r]
            for b in 0..nb {
                let xb = xg.add(b * PACKED_BLOCK);
                let dx = _mm512_loadu_ps(xb.add(64 * QUADS) as *const f32);
                let wb: [*const u8; ROWS] =
                    std::array::from_fn(|r| pw.add((b * ROWS + r) * PANEL_BLOCK));
                // d_w · d_x of each vector, rounded once, as the single-row kernels' scalar product.
                let scale =
                    wb.map(|p| _mm512_mul_ps(_mm512_set1_ps(*(p.add(64) as *const f32)), dx));
                for l in 0..QUADS {
                    let xq = _mm512_loadu_si512(xb.add(64 * l) as *const _);
                    for r in 0..ROWS {
                        let corr = _mm512_set1_epi32(*(wb[r].add(32 + 4 * l) as *const i32));
                        let wq =
                            _mm512_set1_epi32((wb[r].add(4 * l) as *const i32).read_unaligned());
                        let p = _mm512_dpbusd_epi32(corr, xq, wq);
                        acc[r][l] = _mm512_fmadd_ps(scale[r], _mm512_cvtepi32_ps(p), acc[r][l]);
                    }
                }
                if with_sums {
                    // Fused, as the single-row kernels' `summ = m.mul_add(s, summ)`.
                    let s = _mm512_loadu_ps(xb.add(64 * QUADS + 64) as *const f32);
                    for r in 0..ROWS {
                        let m = _mm512_set1_ps(*(wb[r].add(68) as *const f32));
                        summ[r] = _mm512_fmadd_ps(m, s, summ[r]);
                    }
                }
            }
            for (r, (a, m)) in acc.iter().zip(&summ).enumerate() {
                let row = pair * ROWS + r;
                if row >= rows {
                    break;
                }
                // The single-row kernels' `hsum_ps`: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
                let t: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(a[i], a[i + 4]));
                let mut sum = _mm512_add_ps(_mm512_add_ps(t[0], t[2]), _mm512_add_ps(t[1], t[3]));
                if with_sums {
                    sum = _mm512_add_ps(sum, *m);
                }
                let mut lanes = [0f32; VECS];
                _mm512_storeu_ps(lanes.as_mut_ptr(), sum);
                for (v, &value) in lanes.iter().enumerate().take(n_vecs - g * VECS) {
                    *out.add((g * VECS + v) * out_stride + row) = value;
                }
            }
        }
    }
}

/// One `GemmKernel::run` per format: the shared loop with the format's unpacking (`$unpack`, a
/// block's weights as signed bytes) and whether it has a per-block minimum (`$with_sums`).
macro_rules! run_fn {
    ($name:ident, $ty:expr, $with_sums:expr, $unpack:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name(
            cols: usize,
            w: &[u8],
            row_bytes: usize,
            x: &PackedActs,
            out: *mut f32,
            out_stride: usize,
        ) {
            run(
                $ty, cols, w, row_bytes, x, out, out_stride, $with_sums, $unpack,
            )
        }
    };
}

/// The 5-bit quants of a Q5 block: nibbles at `nib`, fifth bits at `qh`.
#[inline(always)]
unsafe fn q5(nib: *const u8, qh: *const u8) -> __m256i {
    let bits = bits_32((qh as *const u32).read_unaligned());
    _mm256_or_si256(
        nibbles_32(nib),
        _mm256_and_si256(bits, _mm256_set1_epi8(16)),
    )
}

run_fn!(run_q4_0, QuantType::Q4_0, false, |bw| {
    _mm256_sub_epi8(nibbles_32(bw.add(2)), _mm256_set1_epi8(8))
});
run_fn!(run_q4_1, QuantType::Q4_1, true, |bw| nibbles_32(bw.add(4)));
run_fn!(run_q5_0, QuantType::Q5_0, false, |bw| {
    _mm256_sub_epi8(q5(bw.add(6), bw.add(2)), _mm256_set1_epi8(16))
});
run_fn!(run_q5_1, QuantType::Q5_1, true, |bw| q5(
    bw.add(8),
    bw.add(4)
));
run_fn!(run_q8_0, QuantType::Q8_0, false, |bw| {
    _mm256_loadu_si256(bw.add(2) as *const __m256i)
});
