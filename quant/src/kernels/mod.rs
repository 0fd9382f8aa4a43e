//! Dot-product kernels, one module per instruction set, all with the signature of [`DotFn`].

pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx2_f32;
#[cfg(target_arch = "x86_64")]
pub mod avx2_il;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod avx512_f32;
#[cfg(target_arch = "x86_64")]
pub mod avx512_gemm;
#[cfg(target_arch = "x86_64")]
pub mod avx512_il;
#[cfg(target_arch = "x86_64")]
pub mod avxvnni;
#[cfg(target_arch = "x86_64")]
pub mod avxvnni_il;
pub mod f32_table;
pub mod interleave;
pub mod table;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(target_arch = "aarch64")]
pub mod neon_f32;
#[cfg(target_arch = "aarch64")]
pub mod neon_gemm;
#[cfg(target_arch = "aarch64")]
pub mod neon_il;

/// `dot(n, w_row, x_row)`: `n` elements; `w_row` in the weight format, `x_row` in its
/// `vec_dot_type`. Unsafe because SIMD versions require their CPU features; callers get them
/// from [`crate::dispatch`], which only hands out functions the CPU supports. Each kernel
/// checks (once per row) that the slices hold `n` elements.
pub type DotFn = unsafe fn(usize, &[u8], &[u8]) -> f32;

/// A [`DotFn`] for the formats with a per-block offset (Q4_1, Q5_1) that also takes the
/// activation row's block sums, `sums[i] = d_x(i) · Σ_j y_ij`, computed once per activation
/// vector by `QuantizedInput` (ggml keeps them inside its Q8_1 blocks for the same reason:
/// otherwise every row's dot product recomputes them).
pub type DotSumsFn = unsafe fn(usize, &[u8], &[u8], &[f32]) -> f32;

/// Four rows at once against one activation row: `[dot(w[0], x), .., dot(w[3], x)]`, each
/// bit-identical to the set's single-row kernel (same per-row operations, interleaved so the
/// rows' accumulator chains overlap and each activation block is loaded once). `sums` as for
/// [`DotSumsFn`] for the formats with a per-block offset, else unused (may be empty).
pub type Dot4Fn = unsafe fn(usize, [&[u8]; 4], &[u8], &[f32]) -> [f32; 4];

/// A tiled matrix-matrix product for prompt processing, in two steps:
/// - `pack(cols, x, x_row_bytes, sums, packed)` rearranges activation vectors (at `v · x_row_bytes`
///   of `x`, in the weights' `vec_dot_type`; `sums` their block sums, vector-major, as for
///   [`DotSumsFn`], or empty) once per product;
/// - `run(cols, w, row_bytes, packed, out, out_stride)` sets `*out.add(v · out_stride + r)` to
///   the dot product of weight row `r` (the `row_bytes` bytes at `r · row_bytes` of `w`) with
///   packed vector `v`, for every row and vector; callers run it in parallel on row ranges, each
///   writing its rows of one output matrix in place (hence the pointer: the caller guarantees
///   those elements are valid and written by no one else during the call).
///
/// Each result is **bit-identical** to the set's single-row kernel (the one with block sums for
/// the formats with a per-block minimum, which then need `sums`), so batched and
/// token-at-a-time evaluation agree exactly. Unsafe as [`DotFn`]; both check the shapes.
#[derive(Copy, Clone)]
pub struct GemmKernel {
    pub pack: unsafe fn(usize, &[u8], usize, &[f32], &mut PackedActs),
    pub run: unsafe fn(usize, &[u8], usize, &PackedActs, *mut f32, usize),
}

/// Matrix-vector products over a matrix whose rows are interleaved in groups of 16
/// ([`interleave`]): `pack(cols, rows, group)` rearranges 16 consecutive rows (`16 · row_bytes`
/// bytes) into one group of the same size; `dot16(cols, group, x, sums, out, next)` sets
/// `out[i]` to the dot product of the group's row `i` with activation vector `x` (`sums` its
/// block sums, as for [`DotSumsFn`]), **bit-identical** to the set's single-row kernel (the one
/// with block sums for the formats with a per-block minimum). `next` is where the caller reads
/// next (the start of another group, or null for nothing): the kernel prefetches ahead through
/// the group and then on from `next`, never reading it. Unsafe as [`DotFn`]; `dot16` checks the
/// lengths. `unpacked`: the same products from a group unpacked once, for many vectors.
#[derive(Copy, Clone)]
pub struct Interleaved16 {
    pub pack: fn(usize, &[u8], &mut [u8]),
    pub dot16: Dot16Fn,
    pub unpacked: Option<Unpacked16>,
}

impl Interleaved16 {
    /// Kernels without an unpacked form.
    pub fn new(pack: fn(usize, &[u8], &mut [u8]), dot16: Dot16Fn) -> Self {
        Interleaved16 { pack, dot16, unpacked: None }
    }
}

/// Rows of a format without interleaved copies, unpacked once for a product with many vectors (a
/// prompt): the quants as the set's dot product decodes them (nibbles split, scales widened and
/// broadcast), so that each vector's dot product only loads them. Unsafe as [`DotFn`]; both
/// check the lengths.
#[derive(Copy, Clone)]
pub struct UnpackedRows {
    /// Bytes of one block (of `ty.block_size()` values) unpacked.
    pub block_bytes: usize,
    /// `unpack(cols, row, out)`: one row (`row_bytes(cols)` bytes) into `out`
    /// (`cols / block_size · block_bytes` bytes).
    pub unpack: unsafe fn(usize, &[u8], &mut [u8]),
    /// `dot(cols, unpacked, x)`: **bit-identical** to the set's `dot(cols, row, x)`.
    pub dot: DotFn,
}

/// The shape check of an unpacking ([`UnpackedRows`], [`Unpacked16`]): `rows` rows of `cols`
/// values of `ty` in `packed`, unpacked at `block_bytes` per block (of all the rows) into
/// `unpacked_len` bytes. Returns the block count.
pub(crate) fn check_unpack(
    ty: crate::formats::QuantType,
    cols: usize,
    rows: usize,
    packed: &[u8],
    unpacked_len: usize,
    block_bytes: usize,
) -> usize {
    let nb = cols / ty.block_size();
    assert!(
        cols % ty.block_size() == 0 && packed.len() >= rows * nb * ty.type_size() && unpacked_len >= nb * block_bytes,
        "{ty} unpack: rows or buffer too short for {cols} values"
    );
    nb
}

/// The shape check of a product over unpacked weights of `ty` (at `block_bytes` per block) with
/// an activation vector `x`. Returns the block count.
pub(crate) fn check_unpacked_dot(
    ty: crate::formats::QuantType,
    cols: usize,
    unpacked: &[u8],
    x: &[u8],
    block_bytes: usize,
) -> usize {
    let nb = cols / ty.block_size();
    assert!(
        cols % ty.block_size() == 0
            && unpacked.len() >= nb * block_bytes
            && x.len() >= nb * ty.vec_dot_type().type_size(),
        "{ty} unpacked dot: weights or vector too short for {cols} values"
    );
    nb
}

/// A group of an [`Interleaved16`] copy unpacked once for a product with many vectors (a
/// prompt): `unpack(cols, group, buf)` writes into `buf` (resized as needed) what `dot16` would
/// decode from the group for every vector (quants as bytes, scales as f32); `dot16(cols, buf, x,
/// sums, out, next)` then computes the products from `buf`, **bit-identical** to the group's
/// `dot16`, with fewer instructions per vector (`next` is ignored: `buf` is in cache). Unsafe as
/// [`DotFn`]; both check the lengths.
#[derive(Copy, Clone)]
pub struct Unpacked16 {
    pub unpack: unsafe fn(usize, &[u8], &mut Vec<u8>),
    pub dot16: Dot16Fn,
}

/// The `dot16` of an [`Interleaved16`]: `(cols, group, x, sums, out, next)`.
pub type Dot16Fn = unsafe fn(usize, &[u8], &[u8], &[f32], &mut [f32; 16], *const u8);

/// Weighted sums of rows interleaved in groups of 16 (a MoE expert's transposed down projection,
/// see [`AxpyFn`]), in a layout of their own: `pack(cols, rows, group)` rearranges 16 consecutive
/// rows; `axpy16(cols, group, coeffs, lanes, y, next)` adds `Σ_{r ∈ lanes} coeffs[r] · row r`
/// to `y[..cols]` with each block's coefficients quantized to 8 bits, so that the sums over the
/// rows are integer dot products, exactly as [`scalar::axpy16_q8_0_quantized`] defines it (the
/// same bits); as ggml quantizes the activations of its matrix products. `next` as for
/// [`Interleaved16`]. Unsafe as [`DotFn`]; `axpy16` checks the lengths.
#[derive(Copy, Clone)]
pub struct InterleavedAxpy16 {
    pub pack: fn(usize, &[u8], &mut [u8]),
    pub axpy16: Axpy16Fn,
}

/// The `axpy16` of an [`InterleavedAxpy16`]: `(cols, group, coeffs, lanes, y, next)`.
pub type Axpy16Fn =
    unsafe fn(usize, &[u8], &[f32; 16], std::ops::Range<usize>, &mut [f32], *const u8);

/// Activation vectors packed by a [`GemmKernel`]'s `pack`, in a layout private to its set; a
/// reusable buffer.
// Only the x86 and Arm sets have tiled kernels that read the fields.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
#[derive(Clone, Debug, Default)]
pub struct PackedActs {
    pub(crate) bytes: Vec<u8>,
    pub(crate) cols: usize,
    pub(crate) n_vecs: usize,
    pub(crate) has_sums: bool,
}

/// `quantize(src, dst, sums)`: one activation row (`src.len()` a multiple of 32) to Q8_0 blocks
/// in `dst`, rounded as ggml's SIMD quantizer of this architecture
/// (`crate::blocks::legacy::quantize_q8_0_activations`), and each block's `s = d·Σq` into `sums`
/// (as for [`DotSumsFn`]). Every set's is bit-identical to the scalar reference for finite
/// inputs. Unsafe as [`DotFn`]; the kernels check the lengths.
pub type QuantizeActsFn = unsafe fn(&[f32], &mut [u8], &mut [f32]);

/// `y[..n] += Σ_k coeffs[k] · row(rows[k])`, where row `r` is the `row_bytes` bytes at
/// `r · row_bytes` of `w`, in the weight format: a MoE expert's transposed down projection, one
/// row per active neuron. Rows are added in order, each element as `y = fma(coeff · d, q, y)`, so
/// every set is bit-identical to the scalar one. Unsafe as [`DotFn`]; the kernels check the row
/// indices and lengths (see `check_axpy`).
pub type AxpyFn = unsafe fn(usize, &[u8], usize, &[usize], &[f32], &mut [f32]);

/// Panics unless every row index and length is in bounds for an [`AxpyFn`] of format `ty`.
#[inline(always)]
pub(crate) fn check_axpy(
    ty: crate::formats::QuantType,
    n: usize,
    w: &[u8],
    row_bytes: usize,
    rows: &[usize],
    coeffs: &[f32],
    y: &[f32],
) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    assert!(
        n % bs == 0 && n / bs * ts <= row_bytes && y.len() >= n && rows.len() == coeffs.len(),
        "{ty} axpy: {n} values do not fit rows of {row_bytes} bytes and an output of {}",
        y.len()
    );
    let n_rows = w.len() / row_bytes.max(1);
    assert!(
        rows.iter().all(|&r| r < n_rows),
        "{ty} axpy: row index out of range"
    );
}

/// The loop every SIMD [`AxpyFn`] shares: checks the arguments, then, for each group of up to four
/// rows and each block `b` of the output, calls `block(y_b, blocks, coeffs)` with `y_b` the block's
/// first output and `blocks[k]` row `k`'s block `b` (`k < coeffs.len()`; the other lanes are
/// unused). Taking four rows per pass loads and stores each slice of `y` once per four rows.
///
/// # Safety
/// `block` may read `ty.type_size()` bytes at each of the first `coeffs.len()` block pointers and
/// read and write `ty.block_size()` values at `y_b`: the check makes exactly those in bounds.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the AxpyFn arguments plus the block body
pub(crate) unsafe fn axpy_x4_blocks(
    ty: crate::formats::QuantType,
    n: usize,
    w: &[u8],
    row_bytes: usize,
    rows: &[usize],
    coeffs: &[f32],
    y: &mut [f32],
    mut block: impl FnMut(*mut f32, [*const u8; 4], &[f32]),
) {
    check_axpy(ty, n, w, row_bytes, rows, coeffs, y);
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let yp = y.as_mut_ptr();
    // Prefetch the rows about PREFETCH_AHEAD bytes ahead, so their loads overlap this group's
    // arithmetic.
    let rows_ahead = match row_bytes {
        0..=PREFETCH_MAX_ROW_BYTES => 4 * PREFETCH_AHEAD.div_ceil(4 * row_bytes.max(1)),
        _ => usize::MAX,
    };
    for (g, (rs, cs)) in rows.chunks(4).zip(coeffs.chunks(4)).enumerate() {
        for &r in rows.iter().skip((4 * g).saturating_add(rows_ahead)).take(4) {
            prefetch(w, r * row_bytes..r * row_bytes + n / bs * ts);
        }
        let mut p = [w.as_ptr(); 4];
        for (pk, &r) in p.iter_mut().zip(rs) {
            // SAFETY: check_axpy bounds r by w's row count, so the row starts inside w.
            *pk = w.as_ptr().add(r * row_bytes);
        }
        for b in 0..n / bs {
            // SAFETY: check_axpy bounds n / bs · ts by row_bytes and n by y.len(), so block b of a
            // used row lies inside w and its outputs inside y; unused lanes are never read.
            block(yp.add(b * bs), p.map(|pk| pk.wrapping_add(b * ts)), cs);
        }
    }
}

/// How far ahead of the bytes being multiplied the matrix-vector loops prefetch. Measured on
/// SmolLM2 decode (BENCHMARKS.md): 2 KiB took it from 79 to 109 tokens/s at one thread; 4 and 8
/// KiB were slightly slower, as was prefetching a task's first bytes up front as well.
pub(crate) const PREFETCH_AHEAD: usize = 2048;

/// How far ahead of the block being multiplied the interleaved kernels (`avx512_il`) prefetch,
/// a block's lines at a time, into L2: so the loads spread over the arithmetic, and more lines
/// are in flight than L1's few line-fill buffers allow. 8 KiB into L2 decoded faster than 4 KiB
/// into L1 and than 4 or 16 KiB into L2 (BENCHMARKS.md).
// Only the x86 and Arm sets have interleaved kernels.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
pub(crate) const IL_PREFETCH_AHEAD: usize = 8192;

/// Prefetches into L2 the lines of the `len` bytes `IL_PREFETCH_AHEAD` past offset `at` of a
/// group of `group_len` bytes at `group`: called once per block (or few), so the stream's next
/// bytes come in while this block computes. Past the group's end the stream goes on at `next`,
/// the group its reader takes next (the following group of a run, or the first of the next run:
/// so a run's start is in cache when it comes, and nothing past its end is fetched for nothing);
/// a null `next` ends the stream there. A prefetch never faults, so `next` is never checked.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) unsafe fn prefetch_group_ahead(
    group: *const u8,
    group_len: usize,
    at: usize,
    len: usize,
    next: *const u8,
) {
    let ahead = at + IL_PREFETCH_AHEAD;
    let p = if ahead < group_len {
        group.wrapping_add(ahead)
    } else if next.is_null() {
        return;
    } else {
        next.wrapping_add(ahead - group_len)
    };
    for k in 0..len.div_ceil(64) + 1 {
        prefetch_line_l2(p.wrapping_add(64 * k));
    }
}

/// Hints the CPU to load the cache line at `p` into L2 (`prefetcht1`, `prfm pldl2keep`). Safe
/// for any address: a prefetch never faults and reads nothing architecturally.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) fn prefetch_line_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch(p as *const i8, _MM_HINT_T1)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` only hints the memory system and never faults, whatever the address.
    unsafe {
        std::arch::asm!("prfm pldl2keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
    };
}

/// Rows longer than this are left to the hardware prefetcher, which follows long streams well:
/// on 4096-column matrices software prefetch slowed the Q8_0 matvec by a third (BENCHMARKS.md).
pub(crate) const PREFETCH_MAX_ROW_BYTES: usize = 2048;

/// Matrices larger than this are prefetched into L2 only, not L1, on Arm: they stream from
/// DRAM, and L1 prefetches hold its few line-fill buffers for the whole memory latency. (Measured
/// on x86 with Gemma 3's 178 MiB Q8_0 output matrix: 10 % faster into L2.) x86 prefetches every
/// matrix into L2, as the interleaved kernels do: for the row-by-row reads L1 or L2 made no
/// clear difference (BENCHMARKS.md). Not measured on Arm.
pub(crate) const PREFETCH_L2_ONLY_BYTES: usize = 64 << 20;

/// Hints the CPU to start loading the cache lines of `bytes[range]` (clipped to the slice): into
/// L2 (x86, or a slice larger than [`PREFETCH_L2_ONLY_BYTES`] on Arm), else into L1. No effect
/// on results, and a prefetch never faults.
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8], range: std::ops::Range<usize>) {
    let l2_only = cfg!(target_arch = "x86_64") || bytes.len() > PREFETCH_L2_ONLY_BYTES;
    let end = range.end.min(bytes.len());
    let mut i = range.start;
    while i < end {
        let p = bytes[i..].as_ptr();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: p points inside `bytes`; a prefetch reads nothing architecturally.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
            if l2_only {
                _mm_prefetch(p as *const i8, _MM_HINT_T1)
            } else {
                _mm_prefetch(p as *const i8, _MM_HINT_T0)
            }
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above; `prfm` only hints the memory system.
        unsafe {
            if l2_only {
                std::arch::asm!("prfm pldl2keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
            } else {
                std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
            }
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = (p, l2_only);
        i += 64;
    }
}

/// Hints the CPU to load the floats `x` into L2 (as `prefetch` does): for a small table that
/// a serial step reads soon (a ToMoE router, a V-mask head), issued before the parallel work
/// that precedes it, so that the step finds its table in L2 rather than far out in the L3.
pub fn prefetch_floats(x: &[f32]) {
    // SAFETY: the bytes of `x`'s own floats, for as long as `x` is borrowed; every byte of an
    // f32 is initialised and any byte is a valid u8.
    let bytes =
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) };
    prefetch(bytes, 0..bytes.len());
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefetch_clips_to_the_slice() {
        let bytes = [7u8; 100];
        super::prefetch(&bytes, 0..100);
        super::prefetch(&bytes, 90..10_000);
        super::prefetch(&bytes, 500..600);
        super::prefetch(&[], 0..64);
        super::prefetch_floats(&[1.5; 33]);
        super::prefetch_floats(&[]);
        // A slice past the L2-only size takes the other hint, with the same clipping.
        let big = vec![1u8; super::PREFETCH_L2_ONLY_BYTES + 1];
        super::prefetch(&big, big.len() - 100..big.len() + 100);
        super::prefetch(&big, 0..4096);
        assert_eq!(bytes, [7u8; 100]);
    }
}
