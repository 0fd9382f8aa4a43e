//! llama.cpp as the tokenizer oracle: a model's vocabulary loaded through llama-cpp-sys-2
//! (vocab only, no weights) behind safe wrappers for tokenize / token_to_piece / detokenize and
//! the chat-template helper. Include with `#[path = "common/oracle.rs"] mod oracle;`.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::Once;

use llama_cpp_sys_2 as sys;

static INIT: Once = Once::new();

unsafe extern "C" fn quiet_log(
    _level: sys::ggml_log_level,
    _text: *const c_char,
    _user: *mut c_void,
) {
}

/// A llama.cpp model loaded with `vocab_only`, freed on drop.
pub struct VocabOracle {
    model: *mut sys::llama_model,
    vocab: *const sys::llama_vocab,
}

impl VocabOracle {
    pub fn load(path: &Path) -> VocabOracle {
        INIT.call_once(|| {
            // SAFETY: global initialisation, run once; the callback ignores its arguments.
            unsafe {
                sys::llama_backend_init();
                sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
            }
        });
        let c_path = CString::new(path.to_str().expect("model path is UTF-8")).unwrap();
        // SAFETY: default params are plain data; vocab_only skips the tensors.
        let model = unsafe {
            let mut params = sys::llama_model_default_params();
            params.vocab_only = true;
            sys::llama_model_load_from_file(c_path.as_ptr(), params)
        };
        assert!(
            !model.is_null(),
            "llama.cpp failed to load {}",
            path.display()
        );
        // SAFETY: model is a live model; the vocab lives as long as it does.
        let vocab = unsafe { sys::llama_model_get_vocab(model) };
        VocabOracle { model, vocab }
    }

    pub fn n_tokens(&self) -> usize {
        // SAFETY: vocab is live while self is.
        unsafe { sys::llama_vocab_n_tokens(self.vocab) as usize }
    }

    pub fn tokenize(&self, text: &[u8], add_special: bool, parse_special: bool) -> Vec<u32> {
        let len = i32::try_from(text.len()).expect("text under 2 GiB");
        let mut out = vec![0i32; text.len() + 8];
        // SAFETY: text is valid for len bytes; out has room for out.len() tokens, and llama.cpp
        // writes at most that many (it returns the negated count when it needs more).
        let mut n = unsafe {
            sys::llama_tokenize(
                self.vocab,
                text.as_ptr().cast(),
                len,
                out.as_mut_ptr(),
                out.len() as i32,
                add_special,
                parse_special,
            )
        };
        if n < 0 {
            out.resize((-n) as usize, 0);
            // SAFETY: as above, with the buffer grown to the size llama.cpp asked for.
            n = unsafe {
                sys::llama_tokenize(
                    self.vocab,
                    text.as_ptr().cast(),
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                )
            };
        }
        assert!(n >= 0, "llama_tokenize failed: {n}");
        out.truncate(n as usize);
        out.into_iter().map(|t| t as u32).collect()
    }

    pub fn token_to_piece(&self, id: u32, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: buf is writable for buf.len() bytes; a negative result asks for more room.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab,
                    id as i32,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let toks: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        let mut buf = vec![0u8; ids.len() * 8 + 64];
        loop {
            // SAFETY: toks holds toks.len() tokens; buf is writable for buf.len() bytes.
            let n = unsafe {
                sys::llama_detokenize(
                    self.vocab,
                    toks.as_ptr(),
                    toks.len() as i32,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    remove_special,
                    unparse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    pub fn is_eog(&self, id: u32) -> bool {
        // SAFETY: vocab is live; llama.cpp checks the id against its set.
        unsafe { sys::llama_vocab_is_eog(self.vocab, id as i32) }
    }

    pub fn attr(&self, id: u32) -> u32 {
        assert!((id as usize) < self.n_tokens());
        // SAFETY: id is in range (checked above).
        unsafe { sys::llama_vocab_get_attr(self.vocab, id as i32) as u32 }
    }

    pub fn bos(&self) -> Option<u32> {
        // SAFETY: vocab is live.
        let t = unsafe { sys::llama_vocab_bos(self.vocab) };
        u32::try_from(t).ok()
    }

    pub fn eos(&self) -> Option<u32> {
        // SAFETY: vocab is live.
        let t = unsafe { sys::llama_vocab_eos(self.vocab) };
        u32::try_from(t).ok()
    }

    pub fn add_bos(&self) -> bool {
        // SAFETY: vocab is live.
        unsafe { sys::llama_vocab_get_add_bos(self.vocab) }
    }
}

impl Drop for VocabOracle {
    fn drop(&mut self) {
        // SAFETY: model came from llama_model_load_from_file and is freed once.
        unsafe { sys::llama_model_free(self.model) };
    }
}

/// llama.cpp's built-in rendering of a chat (`llama_chat_apply_template`) for a named
/// template ("chatml", "gemma", ...), or None if llama.cpp does not know it.
pub fn chat_apply_builtin(
    template: &str,
    messages: &[(&str, &str)],
    add_assistant: bool,
) -> Option<String> {
    let tmpl = CString::new(template).unwrap();
    let owned: Vec<(CString, CString)> = messages
        .iter()
        .map(|(r, c)| (CString::new(*r).unwrap(), CString::new(*c).unwrap()))
        .collect();
    let msgs: Vec<sys::llama_chat_message> = owned
        .iter()
        .map(|(r, c)| sys::llama_chat_message {
            role: r.as_ptr(),
            content: c.as_ptr(),
        })
        .collect();
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: the messages point into `owned`, alive for this call; buf is writable.
        let n = unsafe {
            sys::llama_chat_apply_template(
                tmpl.as_ptr(),
                msgs.as_ptr(),
                msgs.len(),
                add_assistant,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
            )
        };
        if n < 0 {
            return None;
        }
        if (n as usize) <= buf.len() {
            buf.truncate(n as usize);
            return Some(String::from_utf8(buf).expect("llama.cpp renders UTF-8"));
        }
        buf.resize(n as usize, 0);
    }
}

/// Inputs for tokenizer-vs-llama.cpp checks.
pub mod cases {
    /// Strings that stress pre-tokenizers, byte fallback and special-token splitting.
    pub const HARD_STRINGS: &[&str] = &[
        "",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n\n",
        " \n ",
        "\t\t x",
        "Hello world",
        " Hello world",
        "Hello  world",
        "hello\tworld\n",
        "   leading spaces",
        "trailing spaces   ",
        "1234567",
        "3.14159",
        "1,000,000 and 42nd",
        "x=1234567890y",
        "it's don't we'll they're I've she'd I'm",
        "IT'S DON'T WE'LL THEY'RE I'VE SHE'D I'M",
        "'s 'll 're 've 'm 'd 't",
        "''quoted'' 'single'",
        "Ünïcödé naïve café",
        "e\u{301} a\u{300}\u{301}\u{302} o\u{308}",
        "日本語のテキスト",
        "中文测试，标点！",
        "한국어 텍스트",
        "🦀🚀👍🏽",
        "👨\u{200d}👩\u{200d}👧\u{200d}👦 family",
        "Привет, мир!",
        "مرحبا بالعالم",
        "ελληνικά γράμματα",
        "\u{FFFD} replacement",
        "<0xFF> <0x0A>",
        "\\xff\\xfe\\x00",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>",
        "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
        "<bos><eos><unk><pad><mask>",
        "<|im_start|><|im_start|>",
        "a<|im_end|>b",
        "<<|im_end|>>",
        "[multimodal] <unused0>",
        "\u{00A0}nbsp\u{3000}ideographic\u{2028}line",
        "\r\n windows \r\n",
        "   \n\n   \n",
        "$$$ ^^^ ~~~ ||| <=>",
        "C++ && || -> => ::",
        "fn main() { println!(\"hi\"); }",
        "<html><body>text</body></html>",
        "\u{200B}zero\u{200C}width\u{FEFF}",
        "1\u{0661}\u{0662}\u{0663} ²³¼ Ⅻ",
        "mixed123abc456def7890",
        "tab\tsep\tvalues\t\t\t",
        "\u{0}\u{1}\u{7f} controls",
        "🫠 \u{10FFFF} \u{E000} \u{E0041}",
        "                                                  fifty spaces",
        "a\n\n\n\n\n\n\n\n\n\nb",
        "Mr. Darcy's  \"pride\" — and Elizabeth's…  prejudice?!",
    ];

    // Not here: a 4-byte sequence above U+10FFFF (F4 90 80 80), on which llama.cpp aborts
    // ("invalid codepoint"); `code_points_above_unicode_do_not_panic` covers ours.
    pub const INVALID_BYTES: &[&[u8]] = &[
        b"\xff\xfe",
        b"abc\xe2\x82",
        b"\xe2\x82z",
        b"\xc0\x80 overlong",
        b"\xed\xa0\x80 surrogate",
        b"\x80\x80 x",
        b"ok \xf0\x9f\x98",
        b"<|im_end|>\xff<|im_start|>",
    ];

    /// Pieces random test strings are assembled from.
    pub const RANDOM_PIECES: &[&str] = &[
        " ",
        "  ",
        "\n",
        "\t",
        "\r\n",
        "a",
        "Z",
        "word",
        " the",
        "'s",
        "'LL",
        "'",
        "\"",
        "1",
        "42",
        "2024",
        ".",
        ",",
        "!?",
        "—",
        "…",
        "é",
        "e\u{301}",
        "ß",
        "日本",
        "中",
        "한",
        "🦀",
        "👍🏽",
        "\u{200d}",
        "\u{00A0}",
        "\u{3000}",
        "<",
        ">",
        "|",
        "<|im_start|>",
        "<|im_end|>",
        "<start_of_turn>",
        "<eos>",
        "<0x41>",
        "▁",
        "Ġ",
        "\u{FFFD}",
        "$",
        "_",
        "\\",
        "٣",
        "²",
    ];
}
