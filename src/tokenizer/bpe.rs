//! Byte-level BPE (GPT-2 style): words are merged by rank, lowest first, leftmost on ties.
//!
//! The vocabulary and the merge rules are stored in GPT-2's printable byte encoding; they are
//! decoded to raw bytes once at load time, so encoding works on the text's bytes directly.
//! Merge operands are interned: a symbol is a small integer, a rule maps a symbol pair to its
//! rank and the merged symbol.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::{BytesMap, FxMap};
use crate::gguf::Strings;
use super::spec::TokenizerError;
use super::unicode::{byte_to_cp_table, push_utf8};

const NONE: u32 = u32::MAX;

pub(crate) struct Bpe {
    /// (left symbol, right symbol) → (rank, merged symbol).
    merges: FxMap<(u32, u32), (u32, u32)>,
    /// Token id of each symbol's bytes, NONE if they are not a token.
    sym_token: Vec<u32>,
    /// Raw bytes of each symbol (for the no-token fallback).
    sym_bytes: Vec<Box<[u8]>>,
    /// Token ids by raw bytes (texts that decode through the byte table).
    token_by_bytes: BytesMap,
    /// Token whose text is exactly this one byte (the fallback llama.cpp applies per byte).
    token_by_text_byte: [u32; 256],
    byte_to_cp: [u32; 256],
    ignore_merges: bool,
}

/// A queued merge: (rank, left index, right index, left symbol, right symbol), lowest first.
type QueuedMerge = Reverse<(u32, u32, u32, u32, u32)>;

/// Per-call working memory of the BPE encoder (and its word cache).
#[derive(Default)]
pub(crate) struct BpeScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<QueuedMerge>,
    cache: FxMap<Box<[u8]>, (u32, u32)>,
    cached_ids: Vec<u32>,
}

#[derive(Copy, Clone)]
struct Sym {
    sym: u32,
    prev: i32,
    next: i32,
    live: bool,
}

/// Inverse of GPT-2's byte table; None for code points that stand for no byte.
fn cp_to_byte_map() -> FxMap<u32, u8> {
    byte_to_cp_table()
        .iter()
        .enumerate()
        .map(|(b, &cp)| (cp, b as u8))
        .collect()
}

fn decode_text(text: &str, map: &FxMap<u32, u8>) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| map.get(&(c as u32)).copied())
        .collect()
}

impl Bpe {
    pub fn new(
        tokens: &Strings,
        merges: &Strings,
        ignore_merges: bool,
    ) -> Result<Bpe, TokenizerError> {
        let cp_map = cp_to_byte_map();
        let mut token_by_bytes = BytesMap::with_capacity(tokens.len());
        let mut token_by_text_byte = [NONE; 256];
        for (id, text) in tokens.iter().enumerate() {
            if let Some(raw) = decode_text(text, &cp_map) {
                token_by_bytes.insert(&raw, id as u32);
            }
            if text.len() == 1 {
                token_by_text_byte[text.as_bytes()[0] as usize] = id as u32;
            }
        }

        let mut interned: FxMap<Box<[u8]>, u32> = FxMap::default();
        let mut sym_bytes: Vec<Box<[u8]>> = Vec::new();
        let mut intern = |bytes: &[u8], sym_bytes: &mut Vec<Box<[u8]>>| -> u32 {
            if let Some(&s) = interned.get(bytes) {
                return s;
            }
            let s = sym_bytes.len() as u32;
            sym_bytes.push(bytes.into());
            interned.insert(bytes.into(), s);
            s
        };
        for b in 0..=255u8 {
            intern(&[b], &mut sym_bytes);
        }
        let mut rules: FxMap<(u32, u32), (u32, u32)> = FxMap::default();
        for (rank, rule) in merges.iter().enumerate() {
            // The separator is the first space after the first character (a part is never empty).
            let Some(sep) = rule
                .as_bytes()
                .iter()
                .skip(1)
                .position(|&b| b == b' ')
                .map(|p| p + 1)
            else {
                return Err(TokenizerError::BadMerge {
                    index: rank,
                    rule: rule.to_string(),
                });
            };
            let (left, right) = (&rule[..sep], &rule[sep + 1..]);
            // A part outside the byte alphabet can never match a word's symbols.
            let (Some(l), Some(r)) = (decode_text(left, &cp_map), decode_text(right, &cp_map))
            else {
                continue;
            };
            if l.is_empty() || r.is_empty() {
                continue;
            }
            let ls = intern(&l, &mut sym_bytes);
            let rs = intern(&r, &mut sym_bytes);
            let mut both = l;
            both.extend_from_slice(&r);
            let ms = intern(&both, &mut sym_bytes);
            // The first rule for a pair wins, later duplicates are ignored.
            rules.entry((ls, rs)).or_insert((rank as u32, ms));
        }
        let sym_token = sym_bytes
            .iter()
            .map(|b| token_by_bytes.get(b).unwrap_or(NONE))
            .collect();
        Ok(Bpe {
            merges: rules,
            sym_token,
            sym_bytes,
            token_by_bytes,
            token_by_text_byte,
            byte_to_cp: byte_to_cp_table(),
            ignore_merges,
        })
    }

    /// Token of these raw bytes, if they are exactly one token's text.
    pub fn token_of(&self, bytes: &[u8]) -> Option<u32> {
        self.token_by_bytes.get(bytes)
    }

    /// Appends the tokens of one pre-tokenized word (raw bytes).
    pub fn encode_word(&self, word: &[u8], s: &mut BpeScratch, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if let Some(&(start, len)) = s.cache.get(word) {
            out.extend_from_slice(&s.cached_ids[start as usize..(start + len) as usize]);
            return;
        }
        let before = out.len();
        self.merge_word(word, s, out);
        let start = s.cached_ids.len() as u32;
        s.cached_ids.extend_from_slice(&out[before..]);
        s.cache
            .insert(word.into(), (start, (out.len() - before) as u32));
    }

    fn merge_word(&self, word: &[u8], s: &mut BpeScratch, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(id) = self.token_of(word) {
                out.push(id);
                return;
            }
        }
        let n = word.len();
        s.syms.clear();
        s.heap.clear();
        for (i, &b) in word.iter().enumerate() {
            let next = if i + 1 == n { -1 } else { i as i32 + 1 };
            s.syms.push(Sym {
                sym: b as u32,
                prev: i as i32 - 1,
                next,
                live: true,
            });
        }
        for i in 1..n {
            self.push_pair(s, i as i32 - 1, i as i32);
        }
        while let Some(Reverse((_, left, right, lsym, rsym))) = s.heap.pop() {
            let (l, r) = (s.syms[left as usize], s.syms[right as usize]);
            // Stale entry: one side has merged since it was queued.
            if !l.live || !r.live || l.next != right as i32 || l.sym != lsym || r.sym != rsym {
                continue;
            }
            let merged = self.merges[&(lsym, rsym)].1;
            s.syms[left as usize].sym = merged;
            s.syms[left as usize].next = r.next;
            s.syms[right as usize].live = false;
            if r.next >= 0 {
                s.syms[r.next as usize].prev = left as i32;
            }
            let (prev, next) = (s.syms[left as usize].prev, s.syms[left as usize].next);
            self.push_pair(s, prev, left as i32);
            self.push_pair(s, left as i32, next);
        }
        let mut i = 0i32;
        while i >= 0 {
            let sym = s.syms[i as usize].sym;
            match self.sym_token[sym as usize] {
                NONE => self.fallback(&self.sym_bytes[sym as usize], out),
                id => out.push(id),
            }
            i = s.syms[i as usize].next;
        }
    }

    fn push_pair(&self, s: &mut BpeScratch, left: i32, right: i32) {
        if left < 0 || right < 0 {
            return;
        }
        let (ls, rs) = (s.syms[left as usize].sym, s.syms[right as usize].sym);
        if let Some(&(rank, _)) = self.merges.get(&(ls, rs)) {
            s.heap
                .push(Reverse((rank, left as u32, right as u32, ls, rs)));
        }
    }

    /// A merged piece that is not a token: llama.cpp looks up each byte of its *encoded* text
    /// as a one-byte token text and drops bytes that have none.
    fn fallback(&self, raw: &[u8], out: &mut Vec<u32>) {
        let mut enc = Vec::with_capacity(raw.len() * 2);
        for &b in raw {
            push_utf8(self.byte_to_cp[b as usize], &mut enc);
        }
        out.extend(
            enc.iter()
                .map(|&e| self.token_by_text_byte[e as usize])
                .filter(|&id| id != NONE),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> (Strings, Strings) {
        let toks = ["a", "b", "c", "Ġ", "ab", "abc", "Ġa", "bc"].into_iter().collect();
        let merges = ["a b", "ab c", "Ġ a", "b c"].into_iter().collect();
        (toks, merges)
    }

    fn enc(bpe: &Bpe, word: &[u8]) -> Vec<u32> {
        let mut s = BpeScratch::default();
        let mut out = Vec::new();
        bpe.encode_word(word, &mut s, &mut out);
        // The cached path must agree with the computed one.
        let mut again = Vec::new();
        bpe.encode_word(word, &mut s, &mut again);
        assert_eq!(out, again);
        out
    }

    #[test]
    fn merges_by_rank() {
        let (t, m) = vocab();
        let bpe = Bpe::new(&t, &m, false).unwrap();
        assert_eq!(enc(&bpe, b"abc"), vec![5]);
        assert_eq!(enc(&bpe, b" abc"), vec![3, 5]); // "a b" (rank 0) merges before "Ġ a" (rank 2)
        assert_eq!(enc(&bpe, b" ac"), vec![6, 2]);
        assert_eq!(enc(&bpe, b"cab"), vec![2, 4]);
    }

    #[test]
    fn unknown_bytes_are_dropped_like_llama_cpp() {
        let (t, m) = vocab();
        let bpe = Bpe::new(&t, &m, false).unwrap();
        assert_eq!(enc(&bpe, b"azb"), vec![0, 1]);
    }

    #[test]
    fn bad_merge_is_an_error() {
        let (t, _) = vocab();
        assert!(matches!(
            Bpe::new(&t, &["ab"].into_iter().collect(), false),
            Err(TokenizerError::BadMerge { index: 0, .. })
        ));
    }
}
