//! Byte-level BPE pre-tokenizers: split text into words before merging, exactly as the regexes
//! named by `tokenizer.ggml.pre` do (hand-written scanners; the regexes need lookahead).
//!
//! Each scanner works on one chunk of code points at a time and appends word lengths (in code
//! points); a pre-tokenizer may chain several scanners, each refining the previous chunks.

use super::unicode::{class, is_whitespace, Cp, CpClass};

/// The pre-tokenizer family, with the flags llama.cpp couples to each name.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum PreKind {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// Every `\p{N}` alone first, then the GPT-2 scanner (smollm, starcoder, ...).
    DigitsThenGpt2,
    /// Llama 3: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}{1,3}`, newline runs.
    Llama3,
    /// Qwen 2: as Llama 3 but every digit alone.
    Qwen2,
    /// llama.cpp's default for BPE vocabularies without a known pre-tokenizer: punctuation
    /// runs, then GPT-2, then number runs, then ASCII digit triples.
    Default,
}

/// A named pre-tokenizer and the vocabulary flags that come with the name.
#[derive(Copy, Clone, Debug)]
pub(crate) struct PreConfig {
    pub kind: PreKind,
    /// Look the whole word up before merging (llama3 family).
    pub ignore_merges: bool,
    /// Default of add-BOS before the metadata key overrides it.
    pub add_bos_default: bool,
    /// Apply the detokenizer's " ." / " 's" clean-up passes.
    pub clean_spaces: bool,
}

impl PreConfig {
    /// The configuration for `tokenizer.ggml.pre`, or None if this name is not supported.
    pub fn from_name(name: &str) -> Option<PreConfig> {
        use PreKind::*;
        let cfg = |kind, ignore_merges, add_bos_default, clean_spaces| {
            Some(PreConfig {
                kind,
                ignore_merges,
                add_bos_default,
                clean_spaces,
            })
        };
        match name {
            "default" => cfg(Default, false, false, true),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais"
            | "exaone4" => cfg(Gpt2, false, false, true),
            "trillion" | "granite-docling" => cfg(Gpt2, false, false, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
                cfg(DigitsThenGpt2, false, false, true)
            }
            "smollm" | "command-r" => cfg(DigitsThenGpt2, false, false, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => cfg(Llama3, true, true, true),
            "dbrx" | "smaug-bpe" => cfg(Llama3, false, false, true),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" => {
                cfg(Qwen2, false, false, false)
            }
            "stablelm2" | "megrez" => cfg(Qwen2, false, false, true),
            _ => None,
        }
    }
}

/// Splits `cps` into words; `words` receives the length of each word in code points.
pub(crate) fn split(kind: PreKind, cps: &[Cp], words: &mut Vec<u32>, scratch: &mut Vec<u32>) {
    words.clear();
    if cps.is_empty() {
        return;
    }
    match kind {
        PreKind::Gpt2 => gpt2(cps, 0, cps.len(), words),
        PreKind::Llama3 => llama3(cps, 0, cps.len(), words, 3),
        PreKind::Qwen2 => llama3(cps, 0, cps.len(), words, 1),
        PreKind::DigitsThenGpt2 => {
            scratch.clear();
            isolate_numbers(cps, scratch);
            let mut start = 0usize;
            for &len in scratch.iter() {
                gpt2(cps, start, start + len as usize, words);
                start += len as usize;
            }
        }
        PreKind::Default => {
            // `[\p{P}\$\+<=>\^~\|]+`, GPT-2, `\p{N}+`, `[0-9][0-9][0-9]`, each refining the last.
            let is_punct = |cp: u32| {
                class(cp) == CpClass::Punctuation
                    || matches!(
                        char::from_u32(cp),
                        Some('$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
                    )
            };
            scratch.clear();
            scratch.push(cps.len() as u32);
            refine(cps, scratch, words, |c, a, b, out| {
                split_runs(c, a, b, out, is_punct)
            });
            std::mem::swap(scratch, words);
            refine(cps, scratch, words, gpt2);
            std::mem::swap(scratch, words);
            refine(cps, scratch, words, |c, a, b, out| {
                split_runs(c, a, b, out, |cp| class(cp) == CpClass::Number)
            });
            std::mem::swap(scratch, words);
            refine(cps, scratch, words, ascii_digit_triples);
        }
    }
}

/// Applies a chunk splitter to each chunk of `chunks`, writing the refined lengths to `out`.
fn refine(
    cps: &[Cp],
    chunks: &[u32],
    out: &mut Vec<u32>,
    mut f: impl FnMut(&[Cp], usize, usize, &mut Vec<u32>),
) {
    out.clear();
    let mut start = 0usize;
    for &len in chunks {
        f(cps, start, start + len as usize, out);
        start += len as usize;
    }
}

/// A regex `X+` as a splitter: maximal runs of `pred` are words, and so is the text between.
fn split_runs(cps: &[Cp], ini: usize, end: usize, out: &mut Vec<u32>, pred: impl Fn(u32) -> bool) {
    let mut pos = ini;
    let mut gap_start = ini;
    while pos < end {
        if pred(cps[pos].cp) {
            if pos > gap_start {
                out.push((pos - gap_start) as u32);
            }
            let run = pos;
            while pos < end && pred(cps[pos].cp) {
                pos += 1;
            }
            out.push((pos - run) as u32);
            gap_start = pos;
        } else {
            pos += 1;
        }
    }
    if end > gap_start {
        out.push((end - gap_start) as u32);
    }
}

/// `[0-9][0-9][0-9]`: leftmost non-overlapping triples of ASCII digits are words.
fn ascii_digit_triples(cps: &[Cp], ini: usize, end: usize, out: &mut Vec<u32>) {
    let digit = |i: usize| (b'0' as u32..=b'9' as u32).contains(&cps[i].cp);
    let mut pos = ini;
    let mut gap_start = ini;
    while pos + 3 <= end {
        if digit(pos) && digit(pos + 1) && digit(pos + 2) {
            if pos > gap_start {
                out.push((pos - gap_start) as u32);
            }
            out.push(3);
            pos += 3;
            gap_start = pos;
        } else {
            pos += 1;
        }
    }
    if end > gap_start {
        out.push((end - gap_start) as u32);
    }
}

/// Code-point properties the scanners test; `None` outside the current chunk.
#[derive(Copy, Clone)]
struct Props {
    letter: bool,
    number: bool,
    space: bool,
}

#[inline]
fn props_at(cps: &[Cp], end: usize, pos: usize) -> Option<Props> {
    if pos >= end {
        return None;
    }
    let cp = cps[pos].cp;
    let c = class(cp);
    Some(Props {
        letter: c == CpClass::Letter,
        number: c == CpClass::Number,
        space: is_whitespace(cp),
    })
}

#[inline]
fn is_letter(p: Option<Props>) -> bool {
    p.is_some_and(|p| p.letter)
}
#[inline]
fn is_number(p: Option<Props>) -> bool {
    p.is_some_and(|p| p.number)
}
#[inline]
fn is_space(p: Option<Props>) -> bool {
    p.is_some_and(|p| p.space)
}
/// `[^\s\p{L}\p{N}]` inside the chunk.
#[inline]
fn is_other(p: Option<Props>) -> bool {
    p.is_some_and(|p| !(p.space || p.letter || p.number))
}

/// `\p{N}`: each number code point becomes its own chunk, the text between them another.
fn isolate_numbers(cps: &[Cp], chunks: &mut Vec<u32>) {
    let mut gap = 0u32;
    for c in cps {
        if class(c.cp) == CpClass::Number {
            if gap > 0 {
                chunks.push(gap);
                gap = 0;
            }
            chunks.push(1);
        } else {
            gap += 1;
        }
    }
    if gap > 0 {
        chunks.push(gap);
    }
}

/// Length of an English contraction (`'s`, `'ll`, ...) at `pos`, if one starts there.
#[inline]
fn contraction_len(cps: &[Cp], end: usize, pos: usize, fold_case: bool) -> Option<usize> {
    if cps[pos].cp != '\'' as u32 || pos + 1 >= end {
        return None;
    }
    // Only ASCII letters can complete a contraction, and no non-ASCII letter lowercases to one
    // of s t m d r e v l, so ASCII folding is the full case-insensitive match.
    let fold = |cp: u32| {
        if fold_case && (0x41..=0x5A).contains(&cp) {
            cp + 32
        } else {
            cp
        }
    };
    let c1 = fold(cps[pos + 1].cp);
    if matches!(char::from_u32(c1), Some('s' | 't' | 'm' | 'd')) {
        return Some(2);
    }
    if pos + 2 < end {
        let c2 = fold(cps[pos + 2].cp);
        let pair = (char::from_u32(c1), char::from_u32(c2));
        if matches!(
            pair,
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
        ) {
            return Some(3);
        }
    }
    None
}

fn gpt2(cps: &[Cp], ini: usize, end: usize, words: &mut Vec<u32>) {
    let mut prev = ini;
    let mut emit = |to: usize, words: &mut Vec<u32>| {
        if to > prev {
            words.push((to - prev) as u32);
        }
        prev = to;
    };
    let mut pos = ini;
    while pos < end {
        if let Some(n) = contraction_len(cps, end, pos, false) {
            pos += n;
            emit(pos, words);
            continue;
        }
        let is_sp = cps[pos].cp == ' ' as u32;
        // ` ?X+`: an optional leading space, then a run of one class.
        let head = if is_sp { pos + 1 } else { pos };
        let p = props_at(cps, end, head);
        let run: Option<fn(Option<Props>) -> bool> = if is_letter(p) {
            Some(is_letter)
        } else if is_number(p) {
            Some(is_number)
        } else if is_other(p) {
            Some(is_other)
        } else {
            None
        };
        if let Some(in_run) = run {
            pos = head;
            while in_run(props_at(cps, end, pos)) {
                pos += 1;
            }
            emit(pos, words);
            continue;
        }
        let mut n_ws = 0;
        while is_space(props_at(cps, end, pos + n_ws)) {
            n_ws += 1;
        }
        if n_ws > 1 && pos + n_ws < end {
            // `\s+(?!\S)`: leave the last space to start the next word.
            pos += n_ws - 1;
            emit(pos, words);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            emit(pos, words);
            continue;
        }
        pos += 1;
        emit(pos, words);
    }
}

/// Llama 3 (`max_digits` 3) and Qwen 2 (`max_digits` 1) scanners.
fn llama3(cps: &[Cp], ini: usize, end: usize, words: &mut Vec<u32>, max_digits: usize) {
    let mut prev = ini;
    let mut emit = |to: usize, words: &mut Vec<u32>| {
        if to > prev {
            words.push((to - prev) as u32);
        }
        prev = to;
    };
    let is_crlf =
        |pos: usize| pos < end && (cps[pos].cp == '\r' as u32 || cps[pos].cp == '\n' as u32);
    let mut pos = ini;
    while pos < end {
        if let Some(n) = contraction_len(cps, end, pos, true) {
            pos += n;
            emit(pos, words);
            continue;
        }
        let cp = cps[pos].cp;
        let p = props_at(cps, end, pos);
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(is_crlf(pos) || is_number(p))
            && (is_letter(p) || is_letter(props_at(cps, end, pos + 1)))
        {
            pos += 1;
            while is_letter(props_at(cps, end, pos)) {
                pos += 1;
            }
            emit(pos, words);
            continue;
        }
        // `\p{N}{1,max_digits}`
        if is_number(p) {
            let mut group = pos;
            while is_number(props_at(cps, end, pos)) {
                pos += 1;
                if pos - group >= max_digits {
                    emit(pos, words);
                    group = pos;
                }
            }
            emit(pos, words);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; the guard tests the code point after a space, the run
        // may then be empty when the space ends the chunk.
        let is_sp = cp == ' ' as u32;
        let p2 = if is_sp {
            props_at(cps, end, pos + 1)
        } else {
            p
        };
        if p2.is_none() || is_other(p2) {
            pos += is_sp as usize;
            while is_other(props_at(cps, end, pos)) {
                pos += 1;
            }
            while is_crlf(pos) {
                pos += 1;
            }
            emit(pos, words);
            continue;
        }
        let mut n_ws = 0;
        let mut last_newline_end = 0;
        while is_space(props_at(cps, end, pos + n_ws)) {
            if is_crlf(pos + n_ws) {
                last_newline_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        // `\s*[\r\n]+`
        if last_newline_end > 0 {
            pos = last_newline_end;
            emit(pos, words);
            continue;
        }
        if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
            emit(pos, words);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            emit(pos, words);
            continue;
        }
        pos += 1;
        emit(pos, words);
    }
}

#[cfg(test)]
mod tests {
    use super::super::unicode::decode_lenient;
    use super::*;

    fn words(kind: PreKind, text: &str) -> Vec<String> {
        let mut cps = Vec::new();
        decode_lenient(text.as_bytes(), &mut cps);
        let (mut w, mut s) = (Vec::new(), Vec::new());
        split(kind, &cps, &mut w, &mut s);
        let mut out = Vec::new();
        let mut at = 0usize;
        for len in w {
            let (a, b) = (
                cps[at].start as usize,
                cps[at + len as usize - 1].end as usize,
            );
            out.push(text[a..b].to_string());
            at += len as usize;
        }
        assert_eq!(at, cps.len(), "words must cover the text");
        out
    }

    #[test]
    fn gpt2_splits_like_its_regex() {
        assert_eq!(
            words(PreKind::Gpt2, "Hello world's  end"),
            ["Hello", " world", "'s", " ", " end"]
        );
        assert_eq!(words(PreKind::Gpt2, "a  \n"), ["a", "  \n"]);
        assert_eq!(words(PreKind::Gpt2, "x 123!?"), ["x", " 123", "!?"]);
        assert_eq!(words(PreKind::Gpt2, "I'M"), ["I", "'", "M"]);
    }

    #[test]
    fn digits_are_isolated_before_gpt2() {
        assert_eq!(
            words(PreKind::DigitsThenGpt2, "ab 1234c"),
            ["ab", " ", "1", "2", "3", "4", "c"]
        );
    }

    #[test]
    fn llama3_groups_digits_by_three_and_newlines() {
        assert_eq!(words(PreKind::Llama3, "1234567"), ["123", "456", "7"]);
        assert_eq!(
            words(PreKind::Llama3, "I'M ok.\n\nNo"),
            ["I", "'M", " ok", ".\n\n", "No"]
        );
        assert_eq!(words(PreKind::Llama3, "a \n b"), ["a", " \n", " b"]);
        assert_eq!(words(PreKind::Qwen2, "12"), ["1", "2"]);
    }
}
