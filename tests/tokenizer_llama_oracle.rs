//! The tokenizer against llama.cpp (the oracle) on both real models: SmolLM2 (byte-level BPE,
//! "smollm" pre-tokenizer) and Gemma 3 (SentencePiece with byte fallback). Token ids must be
//! identical on the six Austen novels, on a set of hard strings (with and without BOS and
//! special-token parsing), on invalid UTF-8 and on random text; token attributes, the
//! end-of-generation set, every token's piece and whole-text detokenization must match too.
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "common/oracle.rs"]
mod oracle;

use common::RealModel;
use oracle::cases::{HARD_STRINGS, INVALID_BYTES, RANDOM_PIECES};
use oracle::VocabOracle;
use rand::{Rng, SeedableRng};
use tomoe::gguf::GgufFile;
use tomoe::tokenizer::{StreamDecoder, Tokenizer};

fn load(model: RealModel) -> (Tokenizer, VocabOracle) {
    let path = common::model_path(model);
    let file = GgufFile::open(&path).expect("model opens");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer builds");
    (tok, VocabOracle::load(&path))
}

fn check_strings(tok: &Tokenizer, oracle: &VocabOracle) {
    for s in HARD_STRINGS {
        for add in [false, true] {
            for special in [false, true] {
                let ours = tok.encode(s, add, special);
                let theirs = oracle.tokenize(s.as_bytes(), add, special);
                assert_eq!(
                    ours, theirs,
                    "tokens of {s:?} (add_bos {add}, parse_special {special})"
                );
                for (rm, un) in [(false, false), (false, true), (true, false), (true, true)] {
                    assert_eq!(
                        tok.detokenize(&ours, rm, un),
                        oracle.detokenize(&theirs, rm, un),
                        "detokenize of {s:?} (remove_special {rm}, unparse_special {un})"
                    );
                }
            }
        }
    }
    for bytes in INVALID_BYTES {
        for special in [false, true] {
            assert_eq!(
                tok.encode_bytes(bytes, true, special),
                oracle.tokenize(bytes, true, special),
                "tokens of {bytes:?} (parse_special {special})"
            );
        }
    }
}

fn check_vocab(tok: &Tokenizer, oracle: &VocabOracle) {
    let n = oracle.n_tokens();
    assert_eq!(tok.vocab_size(), n);
    assert_eq!(tok.bos(), oracle.bos());
    assert_eq!(tok.eos(), oracle.eos());
    assert_eq!(tok.adds_bos(), oracle.add_bos());
    let mut n_eog = 0;
    for id in 0..n as u32 {
        assert_eq!(
            tok.token_attr(id),
            oracle.attr(id),
            "attributes of token {id} {:?}",
            tok.token_text(id)
        );
        assert_eq!(
            tok.is_eog(id),
            oracle.is_eog(id),
            "is_eog of token {id} {:?}",
            tok.token_text(id)
        );
        n_eog += tok.is_eog(id) as usize;
        for special in [false, true] {
            assert_eq!(
                tok.token_piece(id, special),
                oracle.token_to_piece(id, special),
                "piece of token {id} (special {special})"
            );
        }
    }
    assert!(n_eog > 0, "a chat model has end-of-generation tokens");
}

/// The novels, whole, with BOS as a prompt would have it; then back to text.
fn check_austen(tok: &Tokenizer, oracle: &VocabOracle) {
    let mut total = 0usize;
    for book in [
        "persuasion.txt",
        "emma.txt",
        "prideprejudice.txt",
        "sensesensibility.txt",
        "mansfieldpark.txt",
        "northangerabbey.txt",
    ] {
        let text = common::austen(book);
        let ours = tok.encode(&text, true, false);
        let theirs = oracle.tokenize(text.as_bytes(), true, false);
        assert_eq!(ours.len(), theirs.len(), "{book}: token count");
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "{book}: first difference at token {i}: ours {:?} llama.cpp {:?}",
                &ours[i..(i + 8).min(ours.len())],
                &theirs[i..(i + 8).min(theirs.len())]
            );
        }
        let back = tok.detokenize(&ours, true, false);
        assert_eq!(
            back,
            oracle.detokenize(&theirs, true, false),
            "{book}: detokenized text"
        );
        assert_eq!(String::from_utf8(back).unwrap(), text, "{book}: round trip");
        // Streaming gives the same text as decoding at once.
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ours {
            streamed.push_str(&stream.push(tok, id));
        }
        streamed.push_str(&stream.flush());
        assert_eq!(streamed, tok.decode(&ours), "{book}: streamed text");
        total += ours.len();
    }
    assert!(
        total > 500_000,
        "the six novels are over half a million tokens, got {total}"
    );
}

/// Random strings drawn from pieces that stress the pre-tokenizers and special-token splitting.
fn check_random(tok: &Tokenizer, oracle: &VocabOracle, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..3000 {
        let n = rng.gen_range(1..12);
        let s: String = (0..n)
            .map(|_| RANDOM_PIECES[rng.gen_range(0..RANDOM_PIECES.len())])
            .collect();
        let special = rng.gen_bool(0.5);
        let add = rng.gen_bool(0.5);
        let ours = tok.encode(&s, add, special);
        assert_eq!(
            ours,
            oracle.tokenize(s.as_bytes(), add, special),
            "tokens of {s:?} (add_bos {add}, parse_special {special})"
        );
        assert_eq!(
            tok.detokenize(&ours, false, special),
            oracle.detokenize(&ours, false, special),
            "detokenize of {s:?}"
        );
    }
    // Random bytes, mostly invalid UTF-8 (lead bytes from F4 up are left out: llama.cpp aborts
    // on sequences above U+10FFFF).
    for _ in 0..500 {
        let n = rng.gen_range(1..24);
        let bytes: Vec<u8> = (0..n).map(|_| rng.gen_range(0u8..0xF4)).collect();
        let special = rng.gen_bool(0.5);
        assert_eq!(
            tok.encode_bytes(&bytes, true, special),
            oracle.tokenize(&bytes, true, special),
            "tokens of {bytes:?} (parse_special {special})"
        );
    }
}

#[test]
fn code_points_above_unicode_do_not_panic() {
    let (tok, _) = load(RealModel::SmolLm2);
    let ids = tok.encode_bytes(b"a \xf4\x90\x80\x80 b", true, false);
    assert_eq!(
        tok.detokenize(&ids, false, false),
        b"a \xf4\x90\x80\x80 b".to_vec()
    );
}

#[test]
fn smollm2_vocab_matches_llama_cpp() {
    let (tok, oracle) = load(RealModel::SmolLm2);
    check_vocab(&tok, &oracle);
    assert_eq!(tok.encode("<|im_start|>", false, true), vec![1]);
    assert!(tok.is_eog(2), "<|im_end|> ends generation");
}

#[test]
fn smollm2_hard_strings_match_llama_cpp() {
    let (tok, oracle) = load(RealModel::SmolLm2);
    check_strings(&tok, &oracle);
    check_random(&tok, &oracle, 1);
}

#[test]
fn smollm2_austen_matches_llama_cpp() {
    let (tok, oracle) = load(RealModel::SmolLm2);
    check_austen(&tok, &oracle);
}

#[test]
fn gemma3_vocab_matches_llama_cpp() {
    let (tok, oracle) = load(RealModel::Gemma3);
    check_vocab(&tok, &oracle);
    assert_eq!(
        tok.encode("hi", true, false)[0],
        tok.bos().unwrap(),
        "Gemma adds BOS"
    );
}

#[test]
fn gemma3_hard_strings_match_llama_cpp() {
    let (tok, oracle) = load(RealModel::Gemma3);
    check_strings(&tok, &oracle);
    check_random(&tok, &oracle, 2);
}

#[test]
fn gemma3_austen_matches_llama_cpp() {
    let (tok, oracle) = load(RealModel::Gemma3);
    check_austen(&tok, &oracle);
}
