//! Incremental detokenization for streaming output: a token may end in the middle of a UTF-8
//! character (byte-fallback and byte-level BPE tokens do), so bytes are held back until the
//! character is complete.

use super::Tokenizer;

/// Turns a stream of token ids into text, never splitting a UTF-8 character. Renders tokens
/// as [`Tokenizer::decode`] does (control tokens as nothing, the first token's prefix space
/// dropped where the vocabulary adds one); the BPE "clean up spaces" pass, which needs the
/// whole text, is not applied (the supported vocabularies that ask for it are the gpt-2 family).
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    started: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder {
            pending: Vec::new(),
            started: false,
        }
    }

    /// Adds one token; returns the text completed by it (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        let mut piece = tok.token_piece(id, false);
        if !self.started && tok.strips_first_space() {
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        self.started = true;
        self.pending.extend_from_slice(piece);
        self.take_complete()
    }

    /// Ends the stream: whatever is held back is returned, incomplete characters as U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.started = false;
        out
    }

    /// Removes and returns the longest prefix of `pending` that can no longer change: valid
    /// UTF-8, with invalid sequences (which no later byte can repair) as U+FFFD.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut consumed = 0usize;
        loop {
            let rest = &self.pending[consumed..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid_up_to` bytes are UTF-8 by definition, so this never falls back.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            consumed += valid + bad;
                        }
                        None => {
                            // An incomplete character at the end: wait for more bytes.
                            consumed += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::TokenizerSpec;

    fn byte_vocab() -> Tokenizer {
        let mut tokens = vec![
            "<unk>".to_string(),
            "<s>".into(),
            "</s>".into(),
            "▁a".into(),
        ];
        let mut types = vec![2, 3, 3, 1];
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        Tokenizer::from_spec(TokenizerSpec {
            model: "llama".into(),
            tokens: tokens.iter().collect(),
            token_types: Some(types),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn holds_back_partial_characters() {
        let t = byte_vocab();
        let euro = "€".as_bytes(); // E2 82 AC
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&t, 3), "a"); // first token: prefix space dropped
        assert_eq!(d.push(&t, 4 + euro[0] as u32), "");
        assert_eq!(d.push(&t, 4 + euro[1] as u32), "");
        assert_eq!(d.push(&t, 4 + euro[2] as u32), "€");
        assert_eq!(d.push(&t, 2), ""); // control token renders as nothing
        assert_eq!(d.push(&t, 3), " a");
        assert_eq!(d.push(&t, 4 + 0xF0), "");
        assert_eq!(d.flush(), "\u{FFFD}");
    }

    #[test]
    fn invalid_bytes_do_not_block_the_stream() {
        let t = byte_vocab();
        let mut d = StreamDecoder::new();
        d.push(&t, 3);
        assert_eq!(d.push(&t, 4 + 0xFF), "\u{FFFD}");
        assert_eq!(d.push(&t, 4 + b'x' as u32), "x");
    }
}
