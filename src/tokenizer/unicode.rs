//! Code-point classes for the pre-tokenizers: the Unicode general category (major class) and
//! the White_Space property, plus a UTF-8 decoder that treats invalid bytes as U+FFFD the way
//! llama.cpp does (one replacement per offending byte).

use super::unicode_tables::{BLOCKS, BLOCK_INDEX};

/// Major general category of a code point (`\p{L}`, `\p{N}`, ...); `Unassigned` is `Cn`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CpClass {
    Unassigned = 0,
    Number = 1,
    Letter = 2,
    Separator = 3,
    Mark = 4,
    Punctuation = 5,
    Symbol = 6,
    Other = 7,
}

/// Class of `cp`; code points past U+10FFFF are unassigned.
#[inline]
pub(crate) fn class(cp: u32) -> CpClass {
    if cp >= 0x110000 {
        return CpClass::Unassigned;
    }
    let block = BLOCK_INDEX[(cp >> 8) as usize] as usize;
    match BLOCKS[block][(cp & 0xff) as usize] {
        1 => CpClass::Number,
        2 => CpClass::Letter,
        3 => CpClass::Separator,
        4 => CpClass::Mark,
        5 => CpClass::Punctuation,
        6 => CpClass::Symbol,
        7 => CpClass::Other,
        _ => CpClass::Unassigned,
    }
}

/// The Unicode White_Space property (the regex `\s` of the pre-tokenizers).
#[inline]
pub(crate) fn is_whitespace(cp: u32) -> bool {
    matches!(cp, 0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000)
}

/// One decoded code point and the byte range it came from.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Cp {
    pub cp: u32,
    pub start: u32,
    pub end: u32,
}

/// Decodes UTF-8 leniently: each byte that does not start a well-formed sequence (by the lead
/// byte's length and continuation bits only, as llama.cpp checks) becomes one U+FFFD.
pub(crate) fn decode_lenient(bytes: &[u8], out: &mut Vec<Cp>) {
    out.clear();
    let mut i = 0usize;
    let n = bytes.len();
    while i < n {
        let b0 = bytes[i];
        let cont = |k: usize| i + k < n && bytes[i + k] & 0xC0 == 0x80;
        let (cp, len) = if b0 < 0x80 {
            (b0 as u32, 1)
        } else if b0 & 0x40 == 0 {
            (0xFFFD, 1)
        } else if b0 & 0x20 == 0 {
            if cont(1) {
                (
                    (((b0 & 0x1F) as u32) << 6) | (bytes[i + 1] & 0x3F) as u32,
                    2,
                )
            } else {
                (0xFFFD, 1)
            }
        } else if b0 & 0x10 == 0 {
            if cont(1) && cont(2) {
                let cp = (((b0 & 0x0F) as u32) << 12)
                    | (((bytes[i + 1] & 0x3F) as u32) << 6)
                    | (bytes[i + 2] & 0x3F) as u32;
                (cp, 3)
            } else {
                (0xFFFD, 1)
            }
        } else if b0 & 0x08 == 0 {
            if cont(1) && cont(2) && cont(3) {
                let cp = (((b0 & 0x07) as u32) << 18)
                    | (((bytes[i + 1] & 0x3F) as u32) << 12)
                    | (((bytes[i + 2] & 0x3F) as u32) << 6)
                    | (bytes[i + 3] & 0x3F) as u32;
                (cp, 4)
            } else {
                (0xFFFD, 1)
            }
        } else {
            (0xFFFD, 1)
        };
        out.push(Cp {
            cp,
            start: i as u32,
            end: (i + len) as u32,
        });
        i += len;
    }
}

/// Appends the UTF-8 encoding of `cp` (any value below 0x200000, as llama.cpp encodes) to `out`.
pub(crate) fn push_utf8(cp: u32, out: &mut Vec<u8>) {
    if cp < 0x80 {
        out.push(cp as u8);
    } else if cp < 0x800 {
        out.extend_from_slice(&[0xC0 | (cp >> 6) as u8, 0x80 | (cp & 0x3F) as u8]);
    } else if cp < 0x10000 {
        out.extend_from_slice(&[
            0xE0 | (cp >> 12) as u8,
            0x80 | ((cp >> 6) & 0x3F) as u8,
            0x80 | (cp & 0x3F) as u8,
        ]);
    } else {
        out.extend_from_slice(&[
            0xF0 | ((cp >> 18) & 0x07) as u8,
            0x80 | ((cp >> 12) & 0x3F) as u8,
            0x80 | ((cp >> 6) & 0x3F) as u8,
            0x80 | (cp & 0x3F) as u8,
        ]);
    }
}

/// GPT-2's byte ↔ code point table: printable Latin-1 bytes map to themselves, the other 68
/// bytes to U+0100.. in byte order, so that every byte is a visible character in the vocabulary.
pub(crate) fn byte_to_cp_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_known_code_points() {
        assert_eq!(class('a' as u32), CpClass::Letter);
        assert_eq!(class('7' as u32), CpClass::Number);
        assert_eq!(class('²' as u32), CpClass::Number);
        assert_eq!(class('中' as u32), CpClass::Letter);
        assert_eq!(class(0x0301), CpClass::Mark);
        assert_eq!(class('!' as u32), CpClass::Punctuation);
        assert_eq!(class('$' as u32), CpClass::Symbol);
        assert_eq!(class(0x1F600), CpClass::Symbol);
        assert_eq!(class(' ' as u32), CpClass::Separator);
        assert_eq!(class('\n' as u32), CpClass::Other);
        assert_eq!(class(0x0378), CpClass::Unassigned);
        assert_eq!(class(0x110000), CpClass::Unassigned);
        assert!(is_whitespace('\u{3000}' as u32) && !is_whitespace(0x1C));
    }

    #[test]
    fn lenient_decoding_replaces_each_bad_byte() {
        let mut cps = Vec::new();
        decode_lenient(b"a\xE2\x82z\xF0\x9F\x98\x80\xFF", &mut cps);
        let got: Vec<u32> = cps.iter().map(|c| c.cp).collect();
        assert_eq!(
            got,
            vec!['a' as u32, 0xFFFD, 0xFFFD, 'z' as u32, 0x1F600, 0xFFFD]
        );
        assert_eq!((cps[4].start, cps[4].end), (4, 8));
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_cp_table();
        assert_eq!(t[b'!' as usize], '!' as u32);
        assert_eq!(t[b' ' as usize], 'Ġ' as u32);
        assert_eq!(t[b'\n' as usize], 'Ċ' as u32);
        assert_eq!(t[0], 0x100);
        let mut sorted = t.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }
}
