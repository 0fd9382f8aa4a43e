//! The GGUF reader against llama.cpp's gguf.cpp (the oracle): both real models must list every
//! metadata key (with its value) and every tensor (name, type, dims, offset, size) exactly as
//! gguf_init_from_file does; files written by GgufWriter must load in llama.cpp with the same
//! contents, and their header bytes must equal what llama.cpp's own writer produces.
#![cfg(target_arch = "x86_64")]

mod common;

use std::ffi::{CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;
use tomoe::gguf::{Array, GgufFile, GgufWriter, QuantType, Value};

/// A gguf_context opened by llama.cpp, freed on drop.
struct Oracle(*mut sys::gguf_context);

impl Oracle {
    fn from_file(path: &Path) -> Oracle {
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: c_path is a valid NUL-terminated string; with ctx null no ggml context is made.
        let ctx = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) };
        assert!(!ctx.is_null(), "llama.cpp failed to open {}", path.display());
        Oracle(ctx)
    }

    /// Loads from memory, tensor data included (so llama.cpp checks that it is all there).
    fn from_buffer(bytes: &[u8]) -> Option<Oracle> {
        let mut data_ctx: *mut sys::ggml_context = std::ptr::null_mut();
        let params = sys::gguf_init_params {
            no_alloc: false,
            ctx: &mut data_ctx,
        };
        // SAFETY: bytes is a live slice of the given length; llama.cpp copies what it needs.
        let ctx = unsafe { sys::gguf_init_from_buffer(bytes.as_ptr().cast(), bytes.len(), params) };
        if !data_ctx.is_null() {
            // SAFETY: data_ctx was created by gguf_init_from_buffer and is not used afterwards.
            unsafe { sys::ggml_free(data_ctx) };
        }
        (!ctx.is_null()).then_some(Oracle(ctx))
    }

    fn cstr(&self, p: *const std::os::raw::c_char) -> String {
        assert!(!p.is_null());
        // SAFETY: llama.cpp returns NUL-terminated strings owned by the context, alive as long as self.
        unsafe { CStr::from_ptr(p) }
            .to_str()
            .expect("llama.cpp string is UTF-8")
            .to_string()
    }

    /// Every metadata entry, decoded into our Value type through llama.cpp's getters.
    fn metadata(&self) -> Vec<(String, Value)> {
        // SAFETY (whole body): every key_id is in 0..gguf_get_n_kv, and each getter is called
        // only for the type gguf_get_kv_type/gguf_get_arr_type reports, as gguf.h requires.
        unsafe {
            let n = sys::gguf_get_n_kv(self.0);
            (0..n)
                .map(|i| {
                    let key = self.cstr(sys::gguf_get_key(self.0, i));
                    let ty = sys::gguf_get_kv_type(self.0, i);
                    let value = if ty == 9 {
                        let elem = sys::gguf_get_arr_type(self.0, i);
                        let len = sys::gguf_get_arr_n(self.0, i);
                        let items = (0..len)
                            .map(|j| {
                                if elem == 8 {
                                    Value::String(self.cstr(sys::gguf_get_arr_str(self.0, i, j)))
                                } else {
                                    let base = sys::gguf_get_arr_data(self.0, i).cast::<u8>();
                                    decode_raw(elem, base, j)
                                }
                            })
                            .collect::<Vec<Value>>();
                        Value::Array(Array::from_values(items).expect("ggml arrays are of one type"))
                    } else if ty == 8 {
                        Value::String(self.cstr(sys::gguf_get_val_str(self.0, i)))
                    } else {
                        decode_raw(ty, sys::gguf_get_val_data(self.0, i).cast(), 0)
                    };
                    (key, value)
                })
                .collect()
        }
    }

    /// (name, ggml type id, ne[0..4], offset, size) of every tensor.
    fn tensors(&self) -> Vec<(String, u32, [i64; 4], u64, u64)> {
        // SAFETY: ids are in 0..gguf_get_n_tensors; gguf_get_tensor_ne points at GGML_MAX_DIMS (4) values.
        unsafe {
            (0..sys::gguf_get_n_tensors(self.0))
                .map(|i| {
                    let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(self.0, i), 4);
                    (
                        self.cstr(sys::gguf_get_tensor_name(self.0, i)),
                        sys::gguf_get_tensor_type(self.0, i),
                        [ne[0], ne[1], ne[2], ne[3]],
                        sys::gguf_get_tensor_offset(self.0, i) as u64,
                        sys::gguf_get_tensor_size(self.0, i) as u64,
                    )
                })
                .collect()
        }
    }

    /// The bytes llama.cpp's writer produces for everything before the tensor data.
    fn meta_bytes(&self) -> Vec<u8> {
        // SAFETY: gguf_get_meta_data writes exactly gguf_get_meta_size bytes.
        unsafe {
            let mut out = vec![0u8; sys::gguf_get_meta_size(self.0)];
            sys::gguf_get_meta_data(self.0, out.as_mut_ptr().cast());
            out
        }
    }

    fn version(&self) -> u32 {
        // SAFETY: self.0 is a live context.
        unsafe { sys::gguf_get_version(self.0) }
    }
    fn alignment(&self) -> u64 {
        // SAFETY: self.0 is a live context.
        unsafe { sys::gguf_get_alignment(self.0) as u64 }
    }
    fn data_offset(&self) -> u64 {
        // SAFETY: self.0 is a live context.
        unsafe { sys::gguf_get_data_offset(self.0) as u64 }
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        // SAFETY: the context came from gguf_init_* and is freed once.
        unsafe { sys::gguf_free(self.0) }
    }
}

/// Element `j` of a packed array of GGUF scalar type `ty` (little-endian host, as llama.cpp).
///
/// # Safety
/// `base` must point at least (j + 1) elements of type `ty`.
unsafe fn decode_raw(ty: u32, base: *const u8, j: usize) -> Value {
    let read = |size: usize| -> Vec<u8> {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(base.add(j * size), size) }.to_vec()
    };
    match ty {
        0 => Value::U8(read(1)[0]),
        1 => Value::I8(read(1)[0] as i8),
        2 => Value::U16(u16::from_le_bytes(read(2).try_into().unwrap())),
        3 => Value::I16(i16::from_le_bytes(read(2).try_into().unwrap())),
        4 => Value::U32(u32::from_le_bytes(read(4).try_into().unwrap())),
        5 => Value::I32(i32::from_le_bytes(read(4).try_into().unwrap())),
        6 => Value::F32(f32::from_le_bytes(read(4).try_into().unwrap())),
        7 => Value::Bool(read(1)[0] != 0),
        10 => Value::U64(u64::from_le_bytes(read(8).try_into().unwrap())),
        11 => Value::I64(i64::from_le_bytes(read(8).try_into().unwrap())),
        12 => Value::F64(f64::from_le_bytes(read(8).try_into().unwrap())),
        other => panic!("unexpected gguf type {other}"),
    }
}

/// Bitwise equality, so that NaN payloads and -0.0 count (PartialEq would not).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.values().zip(y.values()).all(|(a, b)| same_value(&a, &b))
        }
        _ => a == b,
    }
}

fn assert_same_as_llama(ours: &GgufFile, oracle: &Oracle) {
    assert_eq!(ours.version(), oracle.version());
    assert_eq!(ours.alignment(), oracle.alignment());
    assert_eq!(ours.data_offset(), oracle.data_offset());

    let theirs = oracle.metadata();
    assert_eq!(ours.metadata().len(), theirs.len(), "metadata entry count");
    for ((k1, v1), (k2, v2)) in ours.metadata().iter().zip(&theirs) {
        assert_eq!(k1, k2, "metadata keys in file order");
        assert!(same_value(v1, v2), "metadata '{k1}': ours {v1:?}, llama.cpp {v2:?}");
    }

    let theirs = oracle.tensors();
    assert_eq!(ours.tensors().len(), theirs.len(), "tensor count");
    for (t, (name, ty, ne, offset, size)) in ours.tensors().iter().zip(&theirs) {
        assert_eq!(&t.name, name);
        assert_eq!(t.ty.ggml_id(), *ty, "type of {name}");
        let mut padded = [1i64; 4];
        for (p, &d) in padded.iter_mut().zip(&t.dims) {
            *p = d as i64;
        }
        assert_eq!(&padded, ne, "dims of {name}");
        assert_eq!(t.offset, *offset, "offset of {name}");
        assert_eq!(t.n_bytes, *size, "size of {name}");
    }
}

fn check_real_model(path: &Path, expect_tensors: usize) {
    let ours = GgufFile::open(path).unwrap();
    let oracle = Oracle::from_file(path);
    assert_eq!(ours.tensors().len(), expect_tensors);
    assert_same_as_llama(&ours, &oracle);
    // Everything before the data section, byte for byte as llama.cpp would write it.
    let file_bytes = std::fs::read(path).unwrap();
    let meta = oracle.meta_bytes();
    assert_eq!(meta.len() as u64, ours.data_offset());
    assert!(
        meta == file_bytes[..meta.len()],
        "header bytes differ from llama.cpp's writer"
    );

    // Rewriting the file through GgufWriter reproduces it exactly.
    let mut w = GgufWriter::new();
    for (k, v) in ours.metadata() {
        w.add_metadata(k.clone(), v.clone());
    }
    for t in ours.tensor_views() {
        w.add_tensor(t.info.name.clone(), t.info.dims.clone(), t.info.ty, t.data.to_vec())
            .unwrap();
    }
    let mut rewritten = Vec::with_capacity(file_bytes.len());
    w.write_to(&mut rewritten).unwrap();
    assert_eq!(rewritten.len(), file_bytes.len(), "rewritten file size");
    assert!(rewritten == file_bytes, "rewritten file differs from the original");
}

#[test]
fn smollm2_matches_llama_cpp() {
    // 30 layers × 9 tensors + token embedding + output norm.
    check_real_model(&common::model_path(common::RealModel::SmolLm2), 30 * 9 + 2);
}

#[test]
fn gemma3_matches_llama_cpp() {
    // 18 layers × 13 tensors (q/k norms, post-attention/ffw norms) + token embedding + output norm.
    check_real_model(&common::model_path(common::RealModel::Gemma3), 18 * 13 + 2);
}

/// A file with every value type, arrays of each, alignment 64 and every tensor type: llama.cpp
/// loads it (data included) and sees exactly what we wrote.
#[test]
fn llama_cpp_reads_what_we_write() {
    let mut w = GgufWriter::new();
    w.set_alignment(64);
    let scalars = [
        Value::U8(200),
        Value::I8(-100),
        Value::U16(60000),
        Value::I16(-30000),
        Value::U32(4_000_000_000),
        Value::I32(-2_000_000_000),
        Value::U64(u64::MAX - 1),
        Value::I64(i64::MIN + 1),
        Value::F32(-1.5e-7),
        Value::F64(std::f64::consts::PI),
        Value::Bool(true),
        Value::String("héllo, wörld ✓".into()),
    ];
    for (i, v) in scalars.iter().enumerate() {
        w.add_metadata(format!("test.scalar.{i}"), v.clone());
        w.add_metadata(
            format!("test.array.{i}"),
            Value::Array(Array::from_values(vec![v.clone(), v.clone(), v.clone()]).unwrap()),
        );
    }
    w.add_metadata("test.empty_string", Value::String(String::new()));
    let types = QuantType::ALL;
    for (i, &ty) in types.iter().enumerate() {
        // No trailing 1s: llama.cpp's writer drops them, ours writes dims as given.
        let dims = if i % 2 == 0 { vec![256, 3] } else { vec![256, 3, 2] };
        let n = ty.row_bytes(256).unwrap() * 3 * (1 + i % 2);
        let data: Vec<u8> = (0..n).map(|b| (b * 31 + i) as u8).collect();
        w.add_tensor(format!("t.{}", ty.name()), dims, ty, data).unwrap();
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();

    let ours = GgufFile::from_bytes(bytes.clone()).unwrap();
    let oracle = Oracle::from_buffer(&bytes).expect("llama.cpp rejects a file GgufWriter wrote");
    assert_eq!(oracle.alignment(), 64);
    assert_same_as_llama(&ours, &oracle);
    assert!(
        oracle.meta_bytes() == bytes[..ours.data_offset() as usize],
        "header bytes differ from llama.cpp's writer"
    );
}
