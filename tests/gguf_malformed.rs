//! The malformed-file corpus: hand-built hostile or broken GGUF files, each of which must give
//! the specific typed error (never a panic, a huge allocation or an out-of-bounds read). On
//! x86-64 each case is also given to llama.cpp's gguf_init_from_buffer, which must agree that
//! the file is bad (except where we are deliberately stricter, marked per case).

use tomoe::gguf::{GgufError, GgufFile, GgufWriter, QuantType, Value};

/// Little-endian GGUF bytes, field by field, with no validation at all.
#[derive(Clone, Default)]
struct Raw(Vec<u8>);

const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const GGML_F32: u32 = 0;
const GGML_Q4_0: u32 = 2;

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).bytes(s)
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(T_U32).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, alignment: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(alignment) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn done(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// A small valid file: two metadata entries, an F32 [8] tensor and a Q4_0 [32, 2] tensor.
fn valid_file() -> Vec<u8> {
    let mut r = Raw::header(3, 2, 2);
    r.kv_u32("a.count", 7).str(b"a.name").u32(T_STRING).str(b"tiny");
    r.tensor("t.f32", &[8], GGML_F32, 0)
        .tensor("t.q4", &[32, 2], GGML_Q4_0, 32);
    r.pad(32).zeros(32).zeros(2 * 18).pad(32);
    r.done()
}

/// One u32 entry with a 26-byte key and no tensors, so that truncations get past the count
/// bounds (13 bytes per entry at least) and into the entry itself.
const LONG_KEY: &str = "a.count.with.a.longer.name";
fn metadata_only_file() -> Vec<u8> {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32(LONG_KEY, 7);
    r.done()
}

/// Whether llama.cpp must also reject a case.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Llama {
    Rejects,
    /// llama.cpp accepts this file; we reject it on purpose (reason in the case).
    Accepts,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: fn(&GgufError) -> bool,
    llama: Llama,
}

macro_rules! case {
    ($name:expr, $bytes:expr, $pat:pat) => {
        case!($name, $bytes, $pat, Llama::Rejects)
    };
    ($name:expr, $bytes:expr, $pat:pat, $llama:expr) => {
        Case {
            name: $name,
            bytes: $bytes,
            expect: |e| matches!(e, $pat),
            llama: $llama,
        }
    };
}

// One line per case: the corpus reads as a table.
#[rustfmt::skip]
fn corpus() -> Vec<Case> {
    use GgufError as E;
    let valid = valid_file();
    let meta = metadata_only_file();
    // Offsets into metadata_only_file(): 24-byte header, then the entry (8 + 26 + 4 + 4 bytes).
    let after_header = 24;
    let after_first_kv = after_header + 8 + LONG_KEY.len() + 4 + 4;
    let data_start = valid.len() - 32 - 64;
    let mut cases = vec![
        // --- header ---
        case!("empty file", vec![], E::Truncated { .. }),
        case!("three bytes", b"GGU".to_vec(), E::Truncated { .. }),
        case!("wrong magic", Raw::header(3, 0, 0).done().iter().enumerate().map(|(i, &b)| if i == 2 { b'M' } else { b }).collect(), E::BadMagic { .. }),
        case!("truncated in version", valid[..6].to_vec(), E::Truncated { .. }),
        case!("version 0", Raw::header(0, 0, 0).done(), E::UnsupportedVersion(0)),
        case!("version 1 (32-bit counts)", Raw::header(1, 0, 0).done(), E::VersionV1),
        case!("version 4", Raw::header(4, 0, 0).done(), E::UnsupportedVersion(4)),
        case!("big-endian version 3", Raw::header(3u32.swap_bytes(), 0, 0).done(), E::BigEndian(0x0300_0000)),
        case!("truncated in tensor count", valid[..12].to_vec(), E::Truncated { .. }),
        case!("truncated in metadata count", valid[..20].to_vec(), E::Truncated { .. }),
        case!("absurd tensor count", Raw::header(3, u64::MAX, 0).done(), E::CountTooLarge { .. }),
        case!("absurd metadata count", Raw::header(3, 0, u64::MAX).done(), E::CountTooLarge { .. }),
        case!("metadata count larger than the entries", { let mut r = Raw::header(3, 0, 2); r.kv_u32("k", 1).str(b"k2"); r.done() }, E::Truncated { .. }),
        case!("tensor count larger than the infos", { let mut r = Raw::header(3, 2, 0); r.tensor("t", &[8], GGML_F32, 0).str(b"u_long_name_pad"); r.done() }, E::Truncated { .. }),
        // --- metadata ---
        case!("truncated in first key", meta[..after_header + 8 + 10].to_vec(), E::StringTooLong { len: 26, .. }),
        // Fewer bytes than the smallest entry: the count bound catches it before the key is read.
        case!("truncated in key length", meta[..after_header + 3].to_vec(), E::CountTooLarge { count: 1, max: 0, .. }),
        case!("truncated in value type", meta[..after_first_kv - 6].to_vec(), E::Truncated { .. }),
        case!("truncated in u32 value", meta[..after_first_kv - 2].to_vec(), E::Truncated { .. }),
        case!("huge key length", { let mut r = Raw::header(3, 0, 1); r.u64(u64::MAX).zeros(16); r.done() }, E::StringTooLong { len: u64::MAX, .. }),
        case!("huge string value length", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_STRING).u64(1 << 62).zeros(16); r.done() }, E::StringTooLong { .. }),
        case!("empty key", { let mut r = Raw::header(3, 0, 1); r.kv_u32("", 1); r.done() }, E::EmptyKey { index: 0 }),
        case!("duplicate key", { let mut r = Raw::header(3, 0, 2); r.kv_u32("k", 1).kv_u32("k", 2); r.done() }, E::DuplicateKey(_)),
        // llama.cpp does not check UTF-8 in keys or values; our keys and values are Rust strings.
        case!("key not UTF-8", { let mut r = Raw::header(3, 0, 1); r.str(b"k\xff").u32(T_U32).u32(1); r.done() }, E::InvalidUtf8 { .. }, Llama::Accepts),
        case!("string value not UTF-8", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_STRING).str(b"\xc3\x28"); r.done() }, E::InvalidUtf8 { .. }, Llama::Accepts),
        case!("unknown value type", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(13).u32(0); r.done() }, E::UnknownValueType { type_id: 13, .. }),
        case!("unknown array element type", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_ARRAY).u32(0xdead).u64(1).zeros(8); r.done() }, E::UnknownValueType { type_id: 0xdead, .. }),
        case!("nested array", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_ARRAY).u32(T_ARRAY).u64(1).u32(T_U8).u64(1).zeros(1); r.done() }, E::NestedArray { .. }),
        case!("absurd array length", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_ARRAY).u32(T_U64).u64(u64::MAX).zeros(64); r.done() }, E::CountTooLarge { count: u64::MAX, .. }),
        case!("array one element longer than the file", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_ARRAY).u32(T_U32).u64(5).zeros(16); r.done() }, E::CountTooLarge { count: 5, max: 4, .. }),
        case!("string array whose strings run past the end", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_ARRAY).u32(T_STRING).u64(2).str(b"ab").u64(100); r.done() }, E::StringTooLong { len: 100, .. }),
        case!("truncated inside a u8 array", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_ARRAY).u32(T_U8).u64(4).zeros(3); r.done() }, E::CountTooLarge { .. }),
        case!("general.alignment is u64", { let mut r = Raw::header(3, 0, 1); r.str(b"general.alignment").u32(T_U64).u64(32); r.done() }, E::AlignmentType { found: "u64" }),
        case!("general.alignment is 0", { let mut r = Raw::header(3, 0, 1); r.kv_u32("general.alignment", 0); r.done() }, E::InvalidAlignment(0)),
        case!("general.alignment is 48", { let mut r = Raw::header(3, 0, 1); r.kv_u32("general.alignment", 48); r.done() }, E::InvalidAlignment(48)),
        // Within llama.cpp's limits, but a 32 Mi-element u8 array would decode to 1 GiB of Values.
        case!("u8 array beyond the total element limit", { let mut r = Raw::header(3, 0, 1); r.str(b"k").u32(T_ARRAY).u32(T_U8).u64((1 << 25) + 1).zeros((1 << 25) + 1); r.done() }, E::CountTooLarge { max: 33_554_432, .. }, Llama::Accepts),
        case!("two arrays over the total element limit together", { let mut r = Raw::header(3, 0, 2); r.str(b"a").u32(T_ARRAY).u32(T_U8).u64(1 << 24).zeros(1 << 24); r.str(b"b").u32(T_ARRAY).u32(T_U8).u64((1 << 24) + 1).zeros((1 << 24) + 1); r.done() }, E::CountTooLarge { max: 16_777_216, .. }, Llama::Accepts),
        // --- tensor infos ---
        case!("truncated in tensor infos", valid[..data_start - 20].to_vec(), E::Truncated { .. }),
        case!("tensor name of 64 bytes", { let mut r = Raw::header(3, 1, 0); r.tensor(&"x".repeat(64), &[8], GGML_F32, 0).pad(32).zeros(32); r.done() }, E::TensorNameTooLong { len: 64, .. }),
        case!("duplicate tensor name", { let mut r = Raw::header(3, 2, 0); r.tensor("t", &[8], GGML_F32, 0).tensor("t", &[8], GGML_F32, 32).pad(32).zeros(64); r.done() }, E::DuplicateTensor(_)),
        case!("tensor name not UTF-8", { let mut r = Raw::header(3, 1, 0); r.str(b"\xfe\xff").u32(1).u64(8).u32(GGML_F32).u64(0).pad(32).zeros(32); r.done() }, E::InvalidUtf8 { .. }, Llama::Accepts),
        case!("5 dimensions", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[1, 1, 1, 1, 8], GGML_F32, 0).pad(32).zeros(32); r.done() }, E::BadDimCount { n_dims: 5, .. }),
        case!("absurd dimension count", { let mut r = Raw::header(3, 1, 0); r.str(b"t").u32(u32::MAX).zeros(64); r.done() }, E::BadDimCount { n_dims: 0xffff_ffff, .. }),
        // ggml accepts 0-dimensional (scalar) tensors; callers here index dims[0], so we do not.
        case!("0 dimensions", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[], GGML_F32, 0).pad(32).zeros(32); r.done() }, E::BadDimCount { n_dims: 0, .. }, Llama::Accepts),
        case!("unknown tensor type", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[8], 99, 0).pad(32).zeros(32); r.done() }, E::UnsupportedTensorType { type_id: 99, .. }),
        // IQ2_XXS is a valid ggml type that tomoe does not implement.
        case!("tensor type we do not support (iq2_xxs)", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[256], 16, 0).pad(32).zeros(96); r.done() }, E::UnsupportedTensorType { type_id: 16, .. }, Llama::Accepts),
        case!("dimension product overflows u64", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[1 << 32, 1 << 32, 2], GGML_F32, 0).pad(32).zeros(32); r.done() }, E::ShapeOverflow { .. }),
        case!("dimension above i64::MAX", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[1u64 << 63], GGML_F32, 0).pad(32).zeros(32); r.done() }, E::ShapeOverflow { .. }),
        case!("byte size overflows though the element count fits", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[1 << 31, 1 << 31], GGML_F32, 0).pad(32).zeros(32); r.done() }, E::ShapeOverflow { .. }),
        case!("row not a multiple of the block size", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[33], GGML_Q4_0, 0).pad(32).zeros(64); r.done() }, E::RowNotBlockMultiple { row_len: 33, block_size: 32, .. }),
        case!("misaligned offset", { let mut r = Raw::header(3, 2, 0); r.tensor("a", &[4], GGML_F32, 0).tensor("b", &[4], GGML_F32, 16).pad(32).zeros(64); r.done() }, E::MisalignedOffset { offset: 16, alignment: 32, .. }),
        case!("offset past the data section", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[8], GGML_F32, 4096).pad(32).zeros(32); r.done() }, E::TensorOutOfBounds { offset: 4096, .. }),
        case!("offset + size overflows u64", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[8], GGML_F32, u64::MAX - 31).pad(32).zeros(32); r.done() }, E::TensorOutOfBounds { .. }),
        case!("overlapping tensors", { let mut r = Raw::header(3, 2, 0); r.tensor("a", &[16], GGML_F32, 0).tensor("b", &[8], GGML_F32, 32).pad(32).zeros(64); r.done() }, E::OverlappingTensors { .. }),
        case!("same offset twice", { let mut r = Raw::header(3, 2, 0); r.tensor("a", &[8], GGML_F32, 0).tensor("b", &[8], GGML_F32, 0).pad(32).zeros(64); r.done() }, E::OverlappingTensors { .. }),
        // --- data section ---
        case!("tensor data one byte short", valid[..valid.len() - 32 + 3].to_vec(), E::TensorOutOfBounds { .. }),
        case!("file ends before the data section", { let mut r = Raw::header(3, 1, 0); r.tensor("t", &[8], GGML_F32, 0).zeros(1); r.done() }, E::DataSectionOutOfBounds { .. }),
    ];
    // A crash-free input found by nothing in particular: random bytes after a valid header.
    cases.push(case!("garbage after the header", { let mut r = Raw::header(3, 3, 3); r.bytes(&[0xa5; 200]); r.done() }, E::StringTooLong { .. }));
    cases
}

#[test]
fn valid_base_file_opens() {
    let f = GgufFile::from_bytes(valid_file()).unwrap();
    assert_eq!(f.get("a.count"), Some(&Value::U32(7)));
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.tensor("t.q4").unwrap().data.len(), 36);
}

#[test]
fn every_malformed_file_gets_its_error() {
    let cases = corpus();
    assert!(
        cases.len() >= 30,
        "the corpus must hold at least 30 files, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        match GgufFile::from_bytes(case.bytes.clone()) {
            Ok(_) => failures.push(format!("{}: opened without error", case.name)),
            Err(e) if (case.expect)(&e) => {
                // The message must say something (it names the field at fault).
                assert!(!e.to_string().is_empty());
            }
            Err(e) => failures.push(format!("{}: unexpected error {e:?}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every prefix of a valid file that cuts into its header or tensor data is an error, never a
/// panic. (The last tensor's trailing padding is not needed: those prefixes open.)
#[test]
fn every_truncation_is_an_error() {
    let valid = valid_file();
    let f = GgufFile::from_bytes(valid.clone()).unwrap();
    let data_end = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for len in data_end..=valid.len() {
        GgufFile::from_bytes(valid[..len].to_vec()).unwrap();
    }
    for len in 0..data_end {
        match GgufFile::from_bytes(valid[..len].to_vec()) {
            Err(
                GgufError::Truncated { .. }
                | GgufError::StringTooLong { .. }
                | GgufError::CountTooLarge { .. }
                | GgufError::DataSectionOutOfBounds { .. }
                | GgufError::TensorOutOfBounds { .. },
            ) => {}
            other => panic!("prefix of {len} bytes: expected a truncation error, got {other:?}"),
        }
    }
}

/// The writer refuses what the reader would refuse, before writing a byte.
#[test]
fn writer_rejects_invalid_input() {
    let mut w = GgufWriter::new();
    assert!(matches!(
        w.add_tensor("t", vec![8], QuantType::F32, vec![0; 31]),
        Err(GgufError::TensorDataSize {
            expected: 32,
            got: 31,
            ..
        })
    ));
    assert!(matches!(
        w.add_tensor("t", vec![33], QuantType::Q4_0, vec![]),
        Err(GgufError::RowNotBlockMultiple { .. })
    ));
    assert!(matches!(
        w.add_tensor("t", vec![], QuantType::F32, vec![]),
        Err(GgufError::BadDimCount { n_dims: 0, .. })
    ));
    assert!(matches!(
        w.add_tensor("t", vec![1; 5], QuantType::F32, vec![0; 4]),
        Err(GgufError::BadDimCount { n_dims: 5, .. })
    ));
    assert!(matches!(
        w.add_tensor("x".repeat(64), vec![1], QuantType::F32, vec![0; 4]),
        Err(GgufError::TensorNameTooLong { len: 64, .. })
    ));
    assert!(matches!(
        w.add_tensor("t", vec![1 << 40, 1 << 40], QuantType::F32, vec![]),
        Err(GgufError::ShapeOverflow { .. })
    ));
    w.add_tensor("t", vec![1], QuantType::F32, vec![0; 4]).unwrap();
    assert!(matches!(
        w.add_tensor("t", vec![1], QuantType::F32, vec![0; 4]),
        Err(GgufError::DuplicateTensor(_))
    ));

    let rejects = |w: &GgufWriter, check: fn(&GgufError) -> bool| {
        let mut out = Vec::new();
        let e = w.write_to(&mut out).unwrap_err();
        assert!(check(&e), "unexpected error {e:?}");
        assert!(out.is_empty(), "nothing may be written before the error");
    };
    let mut w = GgufWriter::new();
    w.add_metadata("", Value::U8(1));
    rejects(&w, |e| matches!(e, GgufError::EmptyKey { .. }));
    let mut w = GgufWriter::new();
    w.set_alignment(48);
    rejects(&w, |e| matches!(e, GgufError::InvalidAlignment(48)));
    let mut w = GgufWriter::new();
    w.set_alignment(1 << 40);
    rejects(&w, |e| matches!(e, GgufError::InvalidAlignment(_)));
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", Value::String("32".into()));
    rejects(&w, |e| matches!(e, GgufError::AlignmentType { found: "str" }));
    let mut w = GgufWriter::new();
    w.add_tensor_info("streamed", vec![4], QuantType::F32).unwrap();
    rejects(&w, |e| matches!(e, GgufError::MissingTensorData { .. }));
}

#[cfg(target_arch = "x86_64")]
mod llama_agrees {
    use super::*;
    use llama_cpp_sys_2 as sys;

    /// Whether llama.cpp's gguf_init_from_buffer (tensor data included) accepts the bytes.
    fn llama_accepts(bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return false; // gguf_init_from_buffer refuses a null/empty buffer outright
        }
        let mut data_ctx: *mut sys::ggml_context = std::ptr::null_mut();
        let params = sys::gguf_init_params {
            no_alloc: false,
            ctx: &mut data_ctx,
        };
        // SAFETY: bytes is a live slice of the given length; llama.cpp copies what it needs.
        let ctx = unsafe { sys::gguf_init_from_buffer(bytes.as_ptr().cast(), bytes.len(), params) };
        // SAFETY: both were created by gguf_init_from_buffer (or are null) and are freed once.
        unsafe {
            if !data_ctx.is_null() {
                sys::ggml_free(data_ctx);
            }
            if !ctx.is_null() {
                sys::gguf_free(ctx);
            }
        }
        !ctx.is_null()
    }

    #[test]
    fn llama_cpp_agrees_on_the_corpus() {
        assert!(
            llama_accepts(&valid_file()),
            "llama.cpp must accept the valid base file"
        );
        let mut disagreements = Vec::new();
        for case in corpus() {
            let accepts = llama_accepts(&case.bytes);
            if accepts != (case.llama == Llama::Accepts) {
                disagreements.push(format!(
                    "{}: llama.cpp accepts = {accepts}, expected {:?}",
                    case.name, case.llama
                ));
            }
        }
        assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    }
}
