//! SentencePiece-style BPE (llama.cpp's "SPM" vocabularies): starting from UTF-8 characters,
//! repeatedly merge the adjacent pair whose concatenation is the token with the highest score
//! (leftmost on ties); pieces that are not tokens fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::hash::BytesMap;
use crate::gguf::Strings;

const NONE: u32 = u32::MAX;

pub(crate) struct Spm {
    token_by_text: BytesMap,
    scores: Vec<f32>,
    /// `<0xXX>` token of each byte, else the token whose text is that byte, else NONE.
    byte_token: [u32; 256],
    unk: u32,
}

#[derive(Default)]
pub(crate) struct SpmScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
}

#[derive(Copy, Clone)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

// Max-heap order: higher score first, then the leftmost pair.
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Byte length of the UTF-8 sequence a lead byte announces (1 for stray continuation bytes).
#[inline]
fn utf8_len(lead: u8) -> usize {
    const LEN: [u8; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    LEN[(lead >> 4) as usize] as usize
}

impl Spm {
    pub fn new(tokens: &Strings, scores: Option<&[f32]>, unk: Option<u32>) -> Spm {
        let mut token_by_text = BytesMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            token_by_text.insert(t.as_bytes(), id as u32);
        }
        let mut byte_token = [NONE; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = token_by_text
                .get(hex.as_bytes())
                .or_else(|| token_by_text.get(&[b as u8][..]))
                .unwrap_or(NONE);
        }
        let scores = match scores {
            Some(s) => s.to_vec(),
            None => vec![0.0; tokens.len()],
        };
        Spm {
            token_by_text,
            scores,
            byte_token,
            unk: unk.unwrap_or(NONE),
        }
    }

    /// Tokenizes one fragment whose spaces are already escaped as U+2581.
    pub fn encode(&self, text: &[u8], s: &mut SpmScratch, out: &mut Vec<u32>) {
        s.syms.clear();
        s.heap.clear();
        let mut offs = 0usize;
        while offs < text.len() {
            let len = utf8_len(text[offs]).min(text.len() - offs);
            let idx = s.syms.len() as i32;
            let next = if offs + len == text.len() {
                -1
            } else {
                idx + 1
            };
            s.syms.push(Sym {
                start: offs as u32,
                len: len as u32,
                prev: idx - 1,
                next,
            });
            offs += len;
        }
        for i in 1..s.syms.len() {
            self.push_pair(text, s, i as i32 - 1, i as i32);
        }
        while let Some(b) = s.heap.pop() {
            let (l, r) = (s.syms[b.left as usize], s.syms[b.right as usize]);
            // Stale entry: one side has merged since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            s.syms[b.left as usize].len += r.len;
            s.syms[b.right as usize].len = 0;
            s.syms[b.left as usize].next = r.next;
            if r.next >= 0 {
                s.syms[r.next as usize].prev = b.left as i32;
            }
            let (prev, next) = (s.syms[b.left as usize].prev, s.syms[b.left as usize].next);
            self.push_pair(text, s, prev, b.left as i32);
            self.push_pair(text, s, b.left as i32, next);
        }
        let mut i = if s.syms.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let sym = s.syms[i as usize];
            let piece = &text[sym.start as usize..(sym.start + sym.len) as usize];
            match self.token_by_text.get(piece) {
                Some(id) => out.push(id),
                None => {
                    // Every merged piece is a token, so this is one character without a token.
                    for &byte in piece {
                        match self.byte_token[byte as usize] {
                            NONE if self.unk != NONE => out.push(self.unk),
                            NONE => {}
                            id => out.push(id),
                        }
                    }
                }
            }
            i = sym.next;
        }
    }

    fn push_pair(&self, text: &[u8], s: &mut SpmScratch, left: i32, right: i32) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (s.syms[left as usize], s.syms[right as usize]);
        let piece = &text[l.start as usize..(l.start + l.len + r.len) as usize];
        if let Some(id) = self.token_by_text.get(piece) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            s.heap.push(Bigram {
                score,
                left: left as u32,
                right: right as u32,
                size: l.len + r.len,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm() -> Spm {
        let mut toks: Vec<String> = ["<unk>", "▁", "a", "b", "▁a", "ab", "▁ab"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut scores = vec![0.0, -1.0, -1.0, -1.0, -2.0, -3.0, -1.5];
        for b in 0..256 {
            toks.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
        }
        Spm::new(&toks.iter().collect(), Some(&scores), Some(0))
    }

    fn enc(text: &str) -> Vec<u32> {
        let (mut s, mut out) = (SpmScratch::default(), Vec::new());
        spm().encode(text.as_bytes(), &mut s, &mut out);
        out
    }

    #[test]
    fn merges_by_score() {
        // "▁a" (-2) beats "ab" (-3), then "▁ab" completes.
        assert_eq!(enc("▁ab"), vec![6]);
        assert_eq!(enc("ab"), vec![5]);
    }

    #[test]
    fn byte_fallback() {
        // 'é' is no token: its two UTF-8 bytes become <0xC3> <0xA9>.
        assert_eq!(enc("aé"), vec![2, 7 + 0xC3, 7 + 0xA9]);
        assert_eq!(enc(""), Vec::<u32>::new());
    }
}
