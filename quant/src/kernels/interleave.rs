//! Row-interleaved layouts of weight matrices for the `Interleaved16` kernels: 16 consecutive
//! rows become one group of the same size, block by block, so that one 64-byte load gives the
//! same four weights of all 16 rows. Pure byte shuffles, the same on every instruction set.

use crate::formats::{QuantType, QK};

/// Rows of a group.
pub const GROUP: usize = 16;

/// The loop both layouts share: checks the sizes, then calls `f(group_block, r, row_block)` for
/// every block of every row, with `group_block` that block's bytes in the group.
#[inline(always)]
fn for_each_block(ty: QuantType, cols: usize, rows: &[u8], out: &mut [u8], f: impl Fn(&mut [u8], usize, &[u8])) {
    let row_bytes = ty.row_bytes(cols).expect("whole blocks");
    assert!(
        cols % QK == 0 && rows.len() == GROUP * row_bytes && out.len() == rows.len(),
        "{ty} interleave: 16 rows of {cols} values need {} bytes",
        GROUP * row_bytes
    );
    let (ts, gb) = (ty.type_size(), GROUP * ty.type_size());
    for b in 0..cols / QK {
        let o = &mut out[gb * b..gb * (b + 1)];
        for r in 0..GROUP {
            f(o, r, &rows[r * row_bytes + ts * b..r * row_bytes + ts * (b + 1)]);
        }
    }
}

/// Q4_0 (blocks of d, 16 bytes of nibbles): per block, dword `i` of the nibbles of rows 0..16
/// for `i = 0..4` (256 bytes), then the 16 `d` (f16 each).
pub fn pack_q4_0(cols: usize, rows: &[u8], out: &mut [u8]) {
    for_each_block(QuantType::Q4_0, cols, rows, out, |o, r, src| {
        for i in 0..4 {
            o[64 * i + 4 * r..64 * i + 4 * r + 4].copy_from_slice(&src[2 + 4 * i..6 + 4 * i]);
        }
        o[256 + 2 * r..258 + 2 * r].copy_from_slice(&src[0..2]);
    })
}

/// Q5_0 (blocks of d, 32 high bits, 16 bytes of nibbles): per block, dword `i` of the nibbles of
/// rows 0..16 for `i = 0..4` (256 bytes); then for each quad `l = 0..8` of elements and each
/// half `h` of the rows (8 rows) one u32 whose bit `4r + k` is the high bit of element `4l + k`
/// of row `8h + r` (64 bytes: one vector compare makes them a byte mask); then the 16 `d`.
pub fn pack_q5_0(cols: usize, rows: &[u8], out: &mut [u8]) {
    for_each_block(QuantType::Q5_0, cols, rows, out, |o, r, src| {
        for i in 0..4 {
            o[64 * i + 4 * r..64 * i + 4 * r + 4].copy_from_slice(&src[6 + 4 * i..10 + 4 * i]);
        }
        let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
        let (h, rr) = (r / 8, r % 8);
        for l in 0..8 {
            let at = 256 + 8 * l + 4 * h;
            // Rows come in order: the half's first row starts the word (`out` may hold anything).
            let word = match rr {
                0 => 0,
                _ => u32::from_le_bytes([o[at], o[at + 1], o[at + 2], o[at + 3]]),
            } | ((qh >> (4 * l)) & 0xF) << (4 * rr);
            o[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
        o[320 + 2 * r..322 + 2 * r].copy_from_slice(&src[0..2]);
    })
}

/// Q4_1 (blocks of d, m, 16 bytes of nibbles): per block, dword `i` of the nibbles of rows
/// 0..16 for `i = 0..4` (256 bytes), then the 16 `d`, then the 16 `m` (f16 each).
pub fn pack_q4_1(cols: usize, rows: &[u8], out: &mut [u8]) {
    for_each_block(QuantType::Q4_1, cols, rows, out, |o, r, src| {
        for i in 0..4 {
            o[64 * i + 4 * r..64 * i + 4 * r + 4].copy_from_slice(&src[4 + 4 * i..8 + 4 * i]);
        }
        o[256 + 2 * r..258 + 2 * r].copy_from_slice(&src[0..2]);
        o[288 + 2 * r..290 + 2 * r].copy_from_slice(&src[2..4]);
    })
}

/// Q8_0 (blocks of d, 32 signed quants): per block, quad `l` of rows 0..16 for `l = 0..8`,
/// each quant plus 128 as an unsigned byte (512 bytes, for `vpdpbusd`), then the 16 `d`.
pub fn pack_q8_0(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q8_0_quads(cols, rows, out, 0x80)
}

/// [`pack_q8_0`] with the quants as they are (signed): for the sign trick of `vpmaddubsw`.
pub fn pack_q8_0_signed(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q8_0_quads(cols, rows, out, 0)
}

fn pack_q8_0_quads(cols: usize, rows: &[u8], out: &mut [u8], flip: u8) {
    for_each_block(QuantType::Q8_0, cols, rows, out, |o, r, src| {
        for l in 0..8 {
            for k in 0..4 {
                o[64 * l + 4 * r + k] = src[2 + 4 * l + k] ^ flip;
            }
        }
        o[512 + 2 * r..514 + 2 * r].copy_from_slice(&src[0..2]);
    })
}

/// Q8_0 for the weighted row sums (`InterleavedAxpy16`): per block, for each quad of rows
/// `4k..4k + 4`, the 32 columns' four quants (one per row, plus 128 as unsigned bytes: 128
/// bytes, a column per dword, for `vpdpbusd`), then the 16 `d`.
pub fn pack_q8_0_axpy(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q8_0_columns(cols, rows, out, 0x80)
}

/// [`pack_q8_0_axpy`] with the quants as they are (signed): for the sign trick of `vpmaddubsw`.
pub fn pack_q8_0_axpy_signed(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q8_0_columns(cols, rows, out, 0)
}

fn pack_q8_0_columns(cols: usize, rows: &[u8], out: &mut [u8], flip: u8) {
    for_each_block(QuantType::Q8_0, cols, rows, out, |o, r, src| {
        let (k, j) = (r / 4, r % 4);
        for c in 0..QK {
            o[128 * k + 4 * c + j] = src[2 + c] ^ flip;
        }
        o[512 + 2 * r..514 + 2 * r].copy_from_slice(&src[0..2]);
    })
}

/// A group in halves, for kernels that hold 8 rows per register (AVX2's ymm): the group's
/// blocks for rows 0..8, then for rows 8..16, so that a kernel taking one half at a time reads
/// each byte once and in order. Half `h` of block `b` (`8 · type_size` bytes at
/// `8 · type_size · (nb · h + b)`, `nb` blocks a row) is the half-`h` chunks of the block of
/// `pack` in order: `pack`'s block is a run of units of `2c` bytes (the listed `(count, c)`),
/// rows 0..8's `c` bytes then rows 8..16's.
fn in_halves(
    ty: QuantType,
    cols: usize,
    rows: &[u8],
    out: &mut [u8],
    pack: fn(usize, &[u8], &mut [u8]),
    units: &[(usize, usize)],
) {
    let (nb, ts) = (cols / QK, ty.type_size());
    let row_bytes = ty.row_bytes(cols).expect("whole blocks");
    assert!(
        cols % QK == 0 && rows.len() == GROUP * row_bytes && out.len() == rows.len() && ts <= 34,
        "{ty} interleave: 16 rows of {cols} values need {} bytes",
        GROUP * row_bytes
    );
    debug_assert_eq!(units.iter().map(|&(n, c)| 2 * n * c).sum::<usize>(), GROUP * ts);
    // One block of the 16 rows at a time, packed whole, then split.
    let (mut block, mut whole) = ([0u8; GROUP * 34], [0u8; GROUP * 34]);
    let (block, whole) = (&mut block[..GROUP * ts], &mut whole[..GROUP * ts]);
    for b in 0..nb {
        for r in 0..GROUP {
            block[ts * r..ts * (r + 1)].copy_from_slice(&rows[r * row_bytes + ts * b..r * row_bytes + ts * (b + 1)]);
        }
        pack(QK, block, whole);
        for h in 0..2 {
            let mut o = GROUP / 2 * ts * (nb * h + b);
            let mut at = 0;
            for &(n, c) in units {
                for _ in 0..n {
                    out[o..o + c].copy_from_slice(&whole[at + c * h..at + c * (h + 1)]);
                    (o, at) = (o + c, at + 2 * c);
                }
            }
        }
    }
}

/// [`pack_q4_0`] in halves: per half block, dword `i` of the nibbles of its 8 rows for
/// `i = 0..4` (128 bytes), then their `d`.
pub fn pack_q4_0_halves(cols: usize, rows: &[u8], out: &mut [u8]) {
    in_halves(QuantType::Q4_0, cols, rows, out, pack_q4_0, &[(4, 32), (1, 16)])
}

/// [`pack_q5_0`] in halves: per half block, the nibbles as [`pack_q4_0_halves`], then the high
/// bits as 32 bytes, bit `l` of byte `4r + k` the high bit of element `4l + k` of the half's row
/// `r` (so one shift moves quad `l`'s bits into place for all 8 rows), then the `d`.
pub fn pack_q5_0_halves(cols: usize, rows: &[u8], out: &mut [u8]) {
    in_halves(QuantType::Q5_0, cols, rows, out, pack_q5_0, &[(4, 32), (8, 4), (1, 16)]);
    // The high bits came as pack_q5_0's: per quad l, a u32 whose bit 4r + k is that bit.
    for half in out.chunks_exact_mut(8 * QuantType::Q5_0.type_size()) {
        let bits = &mut half[128..160];
        let words: [u32; 8] = std::array::from_fn(|l| u32::from_le_bytes(bits[4 * l..4 * l + 4].try_into().unwrap()));
        for (j, byte) in bits.iter_mut().enumerate() {
            *byte = (0..8).fold(0u8, |acc, l| acc | (((words[l] >> j) & 1) as u8) << l);
        }
    }
}

/// [`pack_q4_1`] in halves: per half block, the nibbles as [`pack_q4_0_halves`], then the
/// `d`, then the `m`.
pub fn pack_q4_1_halves(cols: usize, rows: &[u8], out: &mut [u8]) {
    in_halves(QuantType::Q4_1, cols, rows, out, pack_q4_1, &[(4, 32), (2, 16)])
}

/// [`pack_q8_0_signed`] in halves: per half block, quad `l` of its 8 rows for `l = 0..8` (256
/// bytes), then their `d`.
pub fn pack_q8_0_signed_halves(cols: usize, rows: &[u8], out: &mut [u8]) {
    in_halves(QuantType::Q8_0, cols, rows, out, pack_q8_0_signed, &[(8, 32), (1, 16)])
}

/// The order in which the plain-NEON kernels (`smull` + pairwise adds) sum each 16 elements:
/// their i32 lane `l` holds elements `2l, 2l + 1, 8 + 2l, 9 + 2l`. The `_pairs` packs store each
/// half-block's elements in this order, so that dword `l` of a half feeds lane `l` as it does in
/// the single-row kernel, and the kernels permute the activations alike (one `tbl`).
pub const PAIR_ORDER: [u8; 16] = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15];

/// A copy of `rows` (whole rows of format `ty`) with each block's elements reordered: new
/// element `e` is old element `16 (e / 16) + PAIR_ORDER[e % 16]`, in the quants and (Q5_0) the
/// high bits; scales and minimums stay.
fn in_pair_order(ty: QuantType, rows: &[u8]) -> Vec<u8> {
    let mut out = rows.to_vec();
    let ts = ty.type_size();
    assert!(rows.len() % ts == 0, "{ty} pair order: not whole blocks");
    let (qs, qh) = match ty {
        QuantType::Q4_0 => (2, None),
        QuantType::Q4_1 => (4, None),
        QuantType::Q5_0 => (6, Some(2)),
        QuantType::Q8_0 => (2, None),
        _ => panic!("{ty} has no pair-order layout"),
    };
    for (src, dst) in rows.chunks_exact(ts).zip(out.chunks_exact_mut(ts)) {
        if ty == QuantType::Q8_0 {
            for e in 0..QK {
                dst[qs + e] = src[qs + 16 * (e / 16) + PAIR_ORDER[e % 16] as usize];
            }
        } else {
            // Byte j holds elements j (low nibble) and 16 + j (high nibble): moving the byte
            // moves both as the order says.
            for j in 0..16 {
                dst[qs + j] = src[qs + PAIR_ORDER[j] as usize];
            }
        }
        if let Some(h) = qh {
            let old = u32::from_le_bytes([src[h], src[h + 1], src[h + 2], src[h + 3]]);
            let new = (0..QK).fold(0u32, |acc, e| {
                let from = 16 * (e / 16) + PAIR_ORDER[e % 16] as usize;
                acc | ((old >> from) & 1) << e
            });
            dst[h..h + 4].copy_from_slice(&new.to_le_bytes());
        }
    }
    out
}

/// [`pack_q4_0`] of the rows in [`PAIR_ORDER`] (the plain-NEON kernels').
pub fn pack_q4_0_pairs(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q4_0(cols, &in_pair_order(QuantType::Q4_0, rows), out)
}

/// [`pack_q4_1`] of the rows in [`PAIR_ORDER`] (the plain-NEON kernels').
pub fn pack_q4_1_pairs(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q4_1(cols, &in_pair_order(QuantType::Q4_1, rows), out)
}

/// [`pack_q5_0`] of the rows in [`PAIR_ORDER`] (the plain-NEON kernels').
pub fn pack_q5_0_pairs(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q5_0(cols, &in_pair_order(QuantType::Q5_0, rows), out)
}

/// [`pack_q8_0_signed`] of the rows in [`PAIR_ORDER`] (the plain-NEON kernels').
pub fn pack_q8_0_signed_pairs(cols: usize, rows: &[u8], out: &mut [u8]) {
    pack_q8_0_signed(cols, &in_pair_order(QuantType::Q8_0, rows), out)
}
