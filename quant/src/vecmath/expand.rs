//! The probability-weighted value sums over a compact V cache, whose positions keep only some
//! of their entries (`expand_weighted_sum(s)`).

use super::f32_kernels;

/// `out[i] += Σ_j a[j] · v_j[i]` over positions `j` in order, where `v_j` is stored without its
/// masked-out entries (the values of a compact V cache): its kept entries are the set bits of
/// `bits[j·words..(j + 1)·words]` (bit `i % 64` of word `i / 64`; `words = out.len()` / 64
/// rounded up), and their values, in order, are `packed[j·slot + head·m_j..][..m_j]`, `m_j` its
/// number of set bits (one KV head's values in a slot shared by the heads). Every element of
/// `out` takes every position, in order, as one fused multiply-add `a[j] · v + out[i]`, with
/// `v = 0` at the entries the position does not keep (which are not read): one definition that
/// each SIMD body computes with a multiply-add on whole registers, zeros in the dropped lanes.
///
/// # Panics
/// If `bits` does not hold `a.len()` positions, or a position's bits lie beyond `out` or its
/// values beyond its slot or `packed`.
pub fn expand_weighted_sum(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &mut [f32]) {
    check_expand(a, bits, packed, slot, head, out);
    // SAFETY: the set in use runs on this CPU; the shapes were checked.
    unsafe { (f32_kernels().expand_weighted_sum)(a, bits, packed, slot, head, out) }
}

/// [`expand_weighted_sum`] for several queries over the same cached positions (a batch's queries
/// of one head): with `(first, a) = queries[q]`, row `q` of `out` (`width` values at `q·width`)
/// gets `Σ_j a[j] · v_{first + j}`, exactly `expand_weighted_sum(a, bits[first·words..],
/// packed[first·slot..], slot, head, row)`, position `p`'s bits being `bits[p·words..][..words]`
/// (`words` = `width` / 64 rounded up). The AVX-512 path reads each position's values once for up
/// to four queries.
///
/// # Panics
/// If `out` is not `queries.len()` rows of `width`, `bits` is not whole positions, a query runs
/// past them, or a position's bits lie beyond `width` or its values beyond its slot or `packed`.
pub fn expand_weighted_sums(
    queries: &[(usize, &[f32])],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    width: usize,
    out: &mut [f32],
) {
    let words = width.div_ceil(64);
    if words > 0 {
        // Every position once (each query's are among them).
        check_expand_positions(bits.len() / words, bits, packed, slot, head, width);
    }
    // SAFETY: the positions were checked above.
    unsafe { expand_weighted_sums_unchecked(queries, bits, packed, slot, head, width, out) }
}

/// [`expand_weighted_sums`] without the walk over every position's bits that checks them (it
/// costs a tenth of the sums), for a cache that holds its invariants by construction.
///
/// # Safety
/// For every position `j` below `bits.len() / words` (`words` = `width` / 64 rounded up), with
/// `m_j` its set bits: none lies at or beyond `width`, `(head + 1) · m_j ≤ slot`, and
/// `j · slot + (head + 1) · m_j ≤ packed.len()`.
///
/// # Panics
/// As [`expand_weighted_sums`], but for the per-position conditions above.
pub unsafe fn expand_weighted_sums_unchecked(
    queries: &[(usize, &[f32])],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    width: usize,
    out: &mut [f32],
) {
    assert_eq!(out.len(), queries.len() * width, "expand_weighted_sums: output rows");
    let words = width.div_ceil(64);
    if words == 0 {
        return;
    }
    assert_eq!(bits.len() % words, 0, "expand_weighted_sums: bits of whole positions");
    let n = bits.len() / words;
    for &(first, a) in queries {
        assert!(
            first <= n && a.len() <= n - first,
            "expand_weighted_sums: query past the {n} positions"
        );
    }
    let k = f32_kernels();
    if let (Some(sums), true) = (k.expand_weighted_sums, queries.len() > 1) {
        for (qs, rows) in queries.chunks(4).zip(out.chunks_mut(4 * width)) {
            // SAFETY: the set in use runs on this CPU; the shapes were checked above, the
            // positions by the caller.
            unsafe { sums(qs, bits, packed, slot, head, width, rows) };
        }
        return;
    }
    for (&(first, a), row) in queries.iter().zip(out.chunks_exact_mut(width)) {
        // The caller's positions: a query's are among them, each at its own slot.
        let b = &bits[first * words..(first + a.len()) * words];
        // SAFETY: as above.
        unsafe { (k.expand_weighted_sum)(a, b, &packed[first * slot..], slot, head, row) };
    }
}

/// The shape check of [`expand_weighted_sum`]; the SIMD paths rely on it to stay in bounds.
fn check_expand(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &[f32]) {
    let words = out.len().div_ceil(64);
    assert_eq!(
        bits.len(),
        a.len() * words,
        "expand_weighted_sum: {} bit words for {} positions of {words}",
        bits.len(),
        a.len()
    );
    check_expand_positions(a.len(), bits, packed, slot, head, out.len());
}

/// The per-position part of [`check_expand`]: `n` positions' bits within `width` outputs and
/// their values within their slots and `packed`.
fn check_expand_positions(n: usize, bits: &[u64], packed: &[f32], slot: usize, head: usize, width: usize) {
    let words = width.div_ceil(64);
    if words == 0 || n == 0 {
        return;
    }
    let tail = width % 64;
    for (j, b) in bits.chunks_exact(words).take(n).enumerate() {
        let m = b.iter().map(|w| w.count_ones() as usize).sum::<usize>();
        let end = (head + 1).checked_mul(m).filter(|&e| e <= slot);
        let end = end.and_then(|e| j.checked_mul(slot)?.checked_add(e));
        assert!(
            end.is_some_and(|e| e <= packed.len()),
            "expand_weighted_sum: position {j}'s {m} values lie beyond its slot or the values"
        );
        assert!(
            tail == 0 || b[words - 1] >> tail == 0,
            "expand_weighted_sum: position {j} keeps an entry beyond {width} outputs"
        );
    }
}

/// The scalar reference of [`expand_weighted_sum`].
pub fn expand_weighted_sum_scalar(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &mut [f32]) {
    check_expand(a, bits, packed, slot, head, out);
    expand_scalar(a, bits, packed, slot, head, out)
}

/// The body of [`expand_weighted_sum_scalar`], for callers that have checked the shapes.
pub(crate) fn expand_scalar(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &mut [f32]) {
    let words = out.len().div_ceil(64);
    if words == 0 {
        return;
    }
    for (j, (&aj, b)) in a.iter().zip(bits.chunks_exact(words)).enumerate() {
        let m = b.iter().map(|w| w.count_ones() as usize).sum::<usize>();
        let mut values = packed[j * slot + head * m..][..m].iter();
        for (i, o) in out.iter_mut().enumerate() {
            let v = match b[i / 64] >> (i % 64) & 1 {
                1 => *values.next().expect("checked: one value per bit"),
                _ => 0.0,
            };
            *o = aj.mul_add(v, *o);
        }
    }
}

/// Every position's word `w` (outputs `64w..64w + 64`) of an [`expand_weighted_sum`], in
/// order: `f(a_j, word, k)` with `k` where the word's values start in `packed` (the position's
/// slot, the head's offset, the values of the words before `w`). The loop the SIMD kernels
/// share.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) fn for_each_position_word(
    a: &[f32],
    bits: &[u64],
    packed: &[f32],
    w: usize,
    slot: usize,
    head: usize,
    mut f: impl FnMut(f32, u64, usize),
) {
    let words = bits.len() / a.len().max(1);
    let position = |j: usize| &bits[j * words..(j + 1) * words];
    for j in 0..a.len().min(KEPT_PREFETCH_AHEAD) {
        prefetch_kept_word(packed, position(j), w, j, slot, head);
    }
    for (j, &aj) in a.iter().enumerate() {
        if j + KEPT_PREFETCH_AHEAD < a.len() {
            let ahead = j + KEPT_PREFETCH_AHEAD;
            prefetch_kept_word(packed, position(ahead), w, ahead, slot, head);
        }
        let b = position(j);
        f(aj, b[w], kept_word_start(b, w, j, slot, head));
    }
}

/// How many positions ahead the expand loops prefetch the kept values. Each position's values
/// start where its kept count puts them, a pattern the hardware prefetchers do not follow, and
/// without it perf puts most of the kernel's samples right after the expand-loads (BENCHMARKS.md).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const KEPT_PREFETCH_AHEAD: usize = 16;

/// Asks for the cache lines of word `w` of position `j`'s kept values (its bits `b`) in
/// `packed`. A prefetch reads nothing architecturally, and these lines lie inside `packed`
/// wherever the caller's shape checks hold.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) fn prefetch_kept_word(packed: &[f32], b: &[u64], w: usize, j: usize, slot: usize, head: usize) {
    let n = b[w].count_ones() as usize;
    if n == 0 {
        return;
    }
    let (k, p) = (kept_word_start(b, w, j, slot, head), packed.as_ptr());
    // Every 16th value, and the last: each line the values touch.
    for i in (0..n).step_by(16).chain([n - 1]) {
        let q = p.wrapping_add(k + i);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults nor reads memory architecturally; `wrapping_add`
        // forms the address without claiming it is in bounds.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(q.cast::<i8>())
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above; `prfm` only hints the memory system.
        unsafe {
            std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) q, options(nostack, readonly, preserves_flags))
        };
    }
}

/// Where the values of word `w` of position `j` (its bits `b`) start in the packed values: its
/// slot, the head's offset (the position's kept count per head), the words before `w`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(crate) fn kept_word_start(b: &[u64], w: usize, j: usize, slot: usize, head: usize) -> usize {
    let count = |x: &[u64]| x.iter().map(|x| x.count_ones() as usize).sum::<usize>();
    j * slot + head * count(b) + count(&b[..w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vecmath::xorshift;

    /// A compact cache's bits (each of `width` entries kept with odds 1 in `one_in`) and packed
    /// values (`slot` per position) for `n_pos` positions.
    fn compact_values(
        next: &mut impl FnMut() -> u64,
        n_pos: usize,
        width: usize,
        slot: usize,
        one_in: u64,
    ) -> (Vec<u64>, Vec<f32>) {
        let words = width.div_ceil(64);
        let mut bits = vec![0u64; n_pos * words];
        for j in 0..n_pos {
            for i in 0..width {
                if next() % one_in == 0 {
                    bits[j * words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        let packed = (0..n_pos * slot)
            .map(|_| (next() % 2000) as f32 / 77.0 - 13.0)
            .collect();
        (bits, packed)
    }

    /// Several queries at once equal each query alone (`expand_weighted_sum_scalar` over its
    /// positions) bit for bit: queries over different, overlapping, empty and full ranges, more
    /// than four (taken in fours), one and several words of outputs, rows starting with -0.0.
    #[test]
    fn expand_weighted_sums_equal_one_query_at_a_time() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for width in [5usize, 48, 64, 130] {
            let words = width.div_ceil(64);
            let (n_pos, n_heads) = (37, 3);
            let slot = n_heads * width;
            let (bits, packed) = compact_values(&mut next, n_pos, width, slot, 3);
            let probs: Vec<Vec<f32>> = (0..6)
                .map(|_| (0..n_pos).map(|_| (next() % 100) as f32 / 37.0 - 1.3).collect())
                .collect();
            let ranges = [(0usize, 37usize), (3, 20), (10, 10), (36, 37), (0, 1), (5, 30)];
            for n_q in 1..=6 {
                let head = (next() % 3) as usize;
                let queries: Vec<(usize, &[f32])> = ranges[..n_q]
                    .iter()
                    .zip(&probs)
                    .map(|(&(a, b), p)| (a, &p[a..b]))
                    .collect();
                let mut base: Vec<f32> = (0..n_q * width).map(|_| (next() % 1000) as f32 / 31.0 - 16.0).collect();
                base[0] = -0.0;
                let mut got = base.clone();
                expand_weighted_sums(&queries, &bits, &packed, slot, head, width, &mut got);
                let mut want = base.clone();
                for (&(first, a), row) in queries.iter().zip(want.chunks_exact_mut(width)) {
                    let b = &bits[first * words..(first + a.len()) * words];
                    expand_weighted_sum_scalar(a, b, &packed[first * slot..], slot, head, row);
                }
                assert_eq!(
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "width {width}, {n_q} queries"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "query past the")]
    fn expand_weighted_sums_refuses_a_query_past_the_positions() {
        let bits = [1u64; 4];
        let packed = [1f32; 4];
        let a = [1f32; 3];
        let mut out = [0f32; 64];
        expand_weighted_sums(&[(2, &a)], &bits, &packed, 1, 0, 64, &mut out);
    }

    #[test]
    fn expand_weighted_sum_equals_scalar_bit_for_bit() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for len in [1usize, 3, 8, 17, 63, 64, 80, 128, 200] {
            for density in [0u32, 1, 2, 3] {
                let words = len.div_ceil(64);
                let (n_pos, n_heads, head) = (5, 3, (next() % 3) as usize);
                let slot = n_heads * len;
                // density 0: every bit; else about one in 2^density.
                let (bits, packed) = compact_values(&mut next, n_pos, len, slot, 1 << density);
                let mut base: Vec<f32> = (0..len).map(|_| (next() % 1000) as f32 / 31.0 - 16.0).collect();
                base[0] = -0.0;
                let a: Vec<f32> = (0..n_pos).map(|_| (next() % 100) as f32 / 37.0 - 1.3).collect();
                let (mut got, mut want) = (base.clone(), base.clone());
                expand_weighted_sum(&a, &bits, &packed, slot, head, &mut got);
                expand_weighted_sum_scalar(&a, &bits, &packed, slot, head, &mut want);
                let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits_of(&got), bits_of(&want), "len {len} density {density}");
                // The reference is the sum it documents: every entry takes a · value + entry,
                // fused, in position order, with value 0 where the position keeps nothing
                // (so a -0.0 entry can become +0.0).
                let mut expect = base.clone();
                for j in 0..n_pos {
                    let b = &bits[j * words..(j + 1) * words];
                    let m: usize = b.iter().map(|w| w.count_ones() as usize).sum();
                    let mut k = j * slot + head * m;
                    for (i, e) in expect.iter_mut().enumerate() {
                        let v = if b[i / 64] >> (i % 64) & 1 == 1 {
                            k += 1;
                            packed[k - 1]
                        } else {
                            0.0
                        };
                        *e = a[j].mul_add(v, *e);
                    }
                }
                assert_eq!(bits_of(&want), bits_of(&expect), "scalar, len {len}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "beyond 8 outputs")]
    fn expand_weighted_sum_refuses_bits_beyond_out() {
        expand_weighted_sum(&[1.0], &[1 << 10], &[1.0], 1, 0, &mut [0.0; 8]);
    }

    #[test]
    #[should_panic(expected = "beyond its slot")]
    fn expand_weighted_sum_refuses_values_beyond_the_slot() {
        // Two kept entries of head 1 need 4 values in the slot: it has 3.
        expand_weighted_sum(&[1.0], &[0b11], &[1.0; 8], 3, 1, &mut [0.0; 8]);
    }
}
