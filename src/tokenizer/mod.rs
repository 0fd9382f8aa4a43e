//! Tokenizers built from GGUF metadata alone: byte-level BPE and SentencePiece.
//!
//! Behaviour follows llama.cpp's `llama_tokenize` / `llama_detokenize` token for token (the
//! integration tests compare both on real models): special tokens are split out of the text
//! first (control tokens only when `parse_special`), then each text fragment goes through the
//! vocabulary's algorithm.

mod bpe;
mod hash;
mod pretokenize;
mod spec;
mod spm;
mod stream;
mod unicode;
mod unicode_tables;
mod vocab;

pub use spec::{SpecialIds, TokenizerError, TokenizerSpec};
pub use stream::StreamDecoder;
pub use vocab::attr;

use bpe::{Bpe, BpeScratch};
use pretokenize::{PreConfig, PreKind};
use spm::{Spm, SpmScratch};
use unicode::{byte_to_cp_table, decode_lenient, push_utf8};
use vocab::FamilyDefaults;

enum Algorithm {
    Bpe { bpe: Bpe, pre: PreKind },
    Spm(Spm),
}

/// A tokenizer: text ↔ token ids. Immutable after construction, so `Send + Sync`.
pub struct Tokenizer {
    algo: Algorithm,
    texts: Vec<String>,
    attrs: Vec<u32>,
    /// Rendered bytes of every token (control tokens as their text), concatenated.
    pieces: Vec<u8>,
    piece_ends: Vec<u32>,
    /// Tokens split out of the text before tokenizing, longest text first.
    special_tokens: Vec<u32>,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

/// A piece of the input: raw text (byte range) or a special token found in it.
#[derive(Copy, Clone)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

const SPACE_ESCAPE: &str = "\u{2581}";

impl Tokenizer {
    /// Builds a tokenizer from plain data (what `from_gguf` reads from the metadata).
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        if spec.tokens.is_empty() {
            return Err(TokenizerError::EmptyVocab);
        }
        if spec.tokens.len() > i32::MAX as usize {
            return Err(TokenizerError::VocabTooLarge);
        }
        let n = spec.tokens.len();
        if let Some(s) = &spec.scores {
            if s.len() < n {
                return Err(TokenizerError::LengthMismatch { key: "tokenizer.ggml.scores", got: s.len(), expected: n });
            }
        }
        if let Some(t) = &spec.token_types {
            if t.len() < n {
                return Err(TokenizerError::LengthMismatch { key: "tokenizer.ggml.token_type", got: t.len(), expected: n });
            }
        }
        // llama.cpp names empty tokens so that every text is distinct.
        let texts: Vec<String> = spec
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t.clone() })
            .collect();
        {
            let mut seen: hash::FxMap<&str, ()> = hash::FxMap::default();
            seen.reserve(n);
            for (i, t) in texts.iter().enumerate() {
                if seen.insert(t.as_str(), ()).is_some() {
                    return Err(TokenizerError::DuplicateToken { id: i as u32 });
                }
            }
        }

        let (defaults, pre, clean_spaces) = match spec.model.as_str() {
            "llama" => (
                FamilyDefaults { bos: Some(1), eos: Some(2), unk: Some(0), add_bos: true, add_space_prefix: true },
                None,
                false,
            ),
            "gpt2" => {
                let name = spec.pre.as_deref().unwrap_or("default");
                let cfg = PreConfig::from_name(name)
                    .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(name.to_string()))?;
                (
                    FamilyDefaults { bos: Some(11), eos: Some(11), unk: None, add_bos: cfg.add_bos_default, add_space_prefix: false },
                    Some(cfg),
                    cfg.clean_spaces,
                )
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let info = vocab::derive(&spec, &texts, defaults);
        if info.add_bos && info.bos.is_none() {
            return Err(TokenizerError::MissingSpecial { which: "BOS" });
        }
        if info.add_eos && info.eos.is_none() {
            return Err(TokenizerError::MissingSpecial { which: "EOS" });
        }

        let algo = match pre {
            Some(cfg) => Algorithm::Bpe { bpe: Bpe::new(&texts, &spec.merges, cfg.ignore_merges)?, pre: cfg.kind },
            None => Algorithm::Spm(Spm::new(&texts, spec.scores.as_deref(), info.unk)),
        };

        let mut special_tokens: Vec<u32> = (0..n as u32)
            .filter(|&id| info.attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            .collect();
        special_tokens.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));

        let mut tok = Tokenizer {
            algo,
            texts,
            attrs: info.attrs,
            pieces: Vec::new(),
            piece_ends: Vec::with_capacity(n),
            special_tokens,
            eog: info.eog,
            bos: info.bos,
            eos: info.eos,
            eot: info.eot,
            add_bos: info.add_bos,
            add_eos: info.add_eos,
            add_space_prefix: info.add_space_prefix,
            clean_spaces,
        };
        tok.build_pieces();
        Ok(tok)
    }

    /// Renders every token once (llama.cpp's `token_to_piece` with `special = true`).
    fn build_pieces(&mut self) {
        let byte_table = byte_to_cp_table();
        let cp_to_byte: hash::FxMap<u32, u8> = byte_table.iter().enumerate().map(|(b, &cp)| (cp, b as u8)).collect();
        let is_bpe = matches!(self.algo, Algorithm::Bpe { .. });
        let mut cps = Vec::new();
        for (id, text) in self.texts.iter().enumerate() {
            let a = self.attrs[id];
            if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
                self.pieces.extend_from_slice(text.as_bytes());
            } else if a & attr::NORMAL != 0 {
                if is_bpe {
                    decode_lenient(text.as_bytes(), &mut cps);
                    for c in &cps {
                        match cp_to_byte.get(&c.cp) {
                            Some(&b) => self.pieces.push(b),
                            None => {
                                // llama.cpp's marker for a character outside the byte alphabet.
                                self.pieces.extend_from_slice(b"[UNK_BYTE_0x");
                                let mut utf8 = Vec::new();
                                push_utf8(c.cp, &mut utf8);
                                for b in utf8 {
                                    self.pieces.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                self.pieces.extend_from_slice(text.as_bytes());
                                self.pieces.push(b']');
                            }
                        }
                    }
                } else {
                    self.pieces.extend_from_slice(text.replace(SPACE_ESCAPE, " ").as_bytes());
                }
            } else if a & attr::BYTE != 0 {
                self.pieces.push(byte_token_value(text));
            }
            self.piece_ends.push(self.pieces.len() as u32);
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }
    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// End-of-turn token (e.g. `<|im_end|>`), if the model has one.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    /// Whether the model asks for BOS at the start of a prompt (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether generation should stop at this token (eos, eot, `<|im_end|>`, `<end_of_turn>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// The vocabulary text of a token ("" for an id out of range).
    pub fn token_text(&self, id: u32) -> &str {
        self.texts.get(id as usize).map_or("", |s| s.as_str())
    }
    /// Attribute bits of a token ([`attr`]; llama.cpp's `llama_token_attr`); 0 out of range.
    pub fn token_attr(&self, id: u32) -> u32 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// The bytes a token stands for, control tokens included as their text ("" out of range).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.piece_ends.len() {
            return &[];
        }
        let start = if i == 0 { 0 } else { self.piece_ends[i - 1] as usize };
        &self.pieces[start..self.piece_ends[i] as usize]
    }

    /// The bytes a token renders as: with `special` false, control and unknown tokens render
    /// as nothing (llama.cpp's `llama_token_to_piece`, without lstrip).
    pub fn token_piece(&self, id: u32, special: bool) -> &[u8] {
        if !special && self.token_attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return &[];
        }
        self.token_bytes(id)
    }

    /// Tokenizes `text`. `add_bos` adds the model's BOS (and EOS) only where its metadata asks
    /// for them (as `llama_tokenize`'s `add_special`); `parse_special` lets control tokens
    /// written in the text (e.g. `<|im_start|>`) become those tokens.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        self.encode_bytes(text.as_bytes(), add_bos, parse_special)
    }

    /// As [`Tokenizer::encode`], for text that may not be valid UTF-8 (invalid bytes are
    /// handled as llama.cpp handles them).
    pub fn encode_bytes(&self, text: &[u8], add_bos: bool, parse_special: bool) -> Vec<u32> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        match &self.algo {
            Algorithm::Spm(spm) => {
                let mut scratch = SpmScratch::default();
                let mut buf = Vec::new();
                let mut prev_special = true;
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.extend_from_slice(SPACE_ESCAPE.as_bytes());
                            }
                            for &byte in &text[a..b] {
                                if byte == b' ' {
                                    buf.extend_from_slice(SPACE_ESCAPE.as_bytes());
                                } else {
                                    buf.push(byte);
                                }
                            }
                            spm.encode(&buf, &mut scratch, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Algorithm::Bpe { bpe, pre } => {
                let mut scratch = BpeScratch::default();
                let (mut cps, mut words, mut chunks, mut word) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            let frag = &text[a..b];
                            decode_lenient(frag, &mut cps);
                            pretokenize::split(*pre, &cps, &mut words, &mut chunks);
                            let mut at = 0usize;
                            for &len in &words {
                                let w = &cps[at..at + len as usize];
                                at += len as usize;
                                // Invalid bytes became U+FFFD; words are re-encoded from code points.
                                if w.iter().any(|c| c.cp == 0xFFFD) {
                                    word.clear();
                                    for c in w {
                                        push_utf8(c.cp, &mut word);
                                    }
                                    bpe.encode_word(&word, &mut scratch, &mut out);
                                } else {
                                    let (s, e) = (w[0].start as usize, w[w.len() - 1].end as usize);
                                    bpe.encode_word(&frag[s..e], &mut scratch, &mut out);
                                }
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_bos && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Splits special tokens out of the text, longest token first, each at every
    /// non-overlapping occurrence left to right, as llama.cpp's partition does.
    fn partition(&self, text: &[u8], parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        // Only tokens that occur somewhere in the text can split it; find those first.
        let mut present: Vec<u32> = Vec::new();
        for &id in &self.special_tokens {
            if !parse_special && self.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            if find(text, self.texts[id as usize].as_bytes(), 0).is_some() {
                present.push(id);
            }
        }
        let mut next = Vec::new();
        for id in present {
            let needle = self.texts[id as usize].as_bytes();
            next.clear();
            for &f in &frags {
                let Fragment::Text(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(m) = find(&text[..b], needle, a) {
                    if m > a {
                        next.push(Fragment::Text(a, m));
                    }
                    next.push(Fragment::Token(id));
                    a = m + needle.len();
                }
                if a < b {
                    next.push(Fragment::Text(a, b));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }

    /// Text of the ids, invalid UTF-8 replaced; control tokens render as nothing. Ids out of
    /// range render as nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.detokenize(ids, false, false)).into_owned()
    }

    /// llama.cpp's `llama_detokenize`: `remove_special` drops the BOS/EOS the model adds,
    /// `unparse_special` renders control tokens as their text.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && !ids.is_empty() && Some(ids[ids.len() - 1]) == self.eos {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::new();
        for &id in ids {
            let mut piece = self.token_piece(id, unparse_special);
            if remove_space {
                if let Some(rest) = piece.strip_prefix(b" ") {
                    piece = rest;
                }
            }
            remove_space = false;
            out.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        out
    }

    pub(crate) fn strips_first_space(&self) -> bool {
        self.add_space_prefix
    }
}

/// First occurrence of `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let off = hay[i..=hay.len() - needle.len()].iter().position(|&b| b == first)?;
        i += off;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Value of a `<0xXX>` byte token (hex digits read as far as they go, as `strtol` does).
fn byte_token_value(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..).unwrap_or(&[]);
    let mut v = 0u32;
    for &d in digits.iter().take(2) {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

/// The detokenizer's clean-up of tokenization spaces (BPE vocabularies that ask for it): drops
/// the space before `? ! . ,`, around a lone `'`, and before `'s 'm 're 've`. Done in place with
/// the same index arithmetic as llama.cpp, quirks included.
fn clean_up_spaces(t: &mut Vec<u8>) {
    let n = t.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    let n = total;
    total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = t[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm_spec() -> TokenizerSpec {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "<ctl>", "▁", "h", "i", "▁h", "▁hi", "hi"].iter().map(|s| s.to_string()).collect();
        let mut types = vec![2, 3, 3, 3, 1, 1, 1, 1, 1, 1];
        let mut scores = vec![0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -2.0, -1.5, -3.0];
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        TokenizerSpec {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            ..Default::default()
        }
    }

    #[test]
    fn spm_adds_bos_and_space_prefix() {
        let t = Tokenizer::from_spec(spm_spec()).unwrap();
        assert_eq!(t.encode("hi", true, false), vec![1, 8]);
        assert_eq!(t.encode("hi", false, false), vec![8]);
        assert_eq!(t.decode(&[8]), "hi");
        // The prefix space is stripped from the first token only, even one rendered as nothing.
        assert_eq!(t.decode(&[1, 8]), " hi");
        assert_eq!(t.detokenize(&[1, 8], false, true), b"<s> hi".to_vec());
        // As llama.cpp: removing the BOS also keeps the prefix space.
        assert_eq!(t.detokenize(&[1, 8], true, true), b" hi".to_vec());
    }

    #[test]
    fn special_tokens_need_parse_special() {
        let t = Tokenizer::from_spec(spm_spec()).unwrap();
        assert_eq!(t.encode("hi<ctl>hi", false, true), vec![8, 3, 8]);
        let plain = t.encode("hi<ctl>hi", false, false);
        assert!(!plain.contains(&3));
        assert_eq!(t.decode(&plain), "hi<ctl>hi");
        assert!(t.is_eog(2) && !t.is_eog(3));
    }

    #[test]
    fn bad_specs_are_errors() {
        let mut s = spm_spec();
        s.model = "t5x".into();
        assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::UnsupportedModel(_))));
        let mut s = spm_spec();
        s.tokens[5] = "h".into();
        s.tokens[6] = "h".into();
        assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::DuplicateToken { id: 6 })));
        let mut s = spm_spec();
        s.scores = Some(vec![0.0; 3]);
        assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::LengthMismatch { .. })));
        let mut s = spm_spec();
        s.model = "gpt2".into();
        s.pre = Some("nonesuch".into());
        assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::UnsupportedPreTokenizer(_))));
        assert!(matches!(Tokenizer::from_spec(TokenizerSpec::default()), Err(TokenizerError::EmptyVocab)));
    }

    #[test]
    fn clean_up_matches_llama_cpp_rules() {
        let mut t = b"a , b ' c it 's he 'll".to_vec();
        clean_up_spaces(&mut t);
        assert_eq!(t, b"a, b'c it's he 'll".to_vec());
    }

    #[test]
    fn byte_token_values() {
        assert_eq!(byte_token_value("<0x0A>"), 10);
        assert_eq!(byte_token_value("<0xff>"), 255);
        assert_eq!(byte_token_value("<0x"), 0);
    }
}
