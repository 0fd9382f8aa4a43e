//! Decoding and validation of a whole GGUF file held in memory. Everything the reader later hands
//! out (metadata, tensor shapes, tensor byte ranges) is checked here, once, before use.
//!
//! Rules follow llama.cpp's gguf.cpp where it is stricter than the format needs (64-byte tensor
//! names, u32 `general.alignment`, no nested arrays) so that every file we accept llama.cpp
//! accepts too. Two differences: we also check that tensor data lies inside the file (llama.cpp
//! leaves that to its loader), and we reject tensors with zero dimensions, because callers index
//! `dims[0]`. Tensor offsets may come in any order as long as they are aligned and disjoint.

use std::collections::HashMap;

use super::value::{type_id, Array, Strings, Value};
use super::{GgufError, QuantType, TensorInfo};

pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's GGML_MAX_NAME (64) counts the terminating NUL.
pub(crate) const MAX_TENSOR_NAME_LEN: usize = 63;
pub(crate) const MAX_DIMS: u64 = 4;
/// llama.cpp's GGUF_MAX_STRING_LENGTH.
const MAX_STRING_LEN: u64 = 1 << 30;
/// Limits that keep memory proportional to real needs whatever a file claims. Bounding counts
/// by the bytes left is not enough: a decoded entry is larger than its encoding (a one-byte u8
/// array element becomes a 32-byte `Value`), and a sparse file can be huge on disk for free.
/// Real models have tens of keys, thousands of tensors and a few million array elements.
const MAX_KV: u64 = 1 << 20;
const MAX_TENSORS: u64 = 1 << 20;
/// Over all metadata arrays together (32 Mi elements, 1 GiB of `Value`s).
const MAX_ARRAY_ELEMENTS: u64 = 1 << 25;
/// Vectors grow past this by pushing parsed entries, so a claimed count costs nothing upfront.
const MAX_PREALLOC: usize = 1 << 16;
/// Smallest encoding of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Smallest encoding of one key/value pair: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// The validated contents of a GGUF file, everything but the tensor bytes themselves.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_start: usize,
    pub metadata: Vec<(String, Value)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
}

/// Reads little-endian fields from a byte slice; every read is bounds-checked and a short read
/// names what was being read. `what` is a closure so the message is only built on failure.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type What<'w> = &'w dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: What) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        // n <= remaining, which is a usize difference, so this cannot truncate.
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: What) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed string's raw bytes; the length is checked against the bytes left
    /// before anything is sliced.
    fn string_bytes(&mut self, what: What) -> Result<&'a [u8], GgufError> {
        let len = self.u64(what)?;
        if len > self.remaining() || len > MAX_STRING_LEN {
            return Err(GgufError::StringTooLong {
                what: what(),
                len,
                remaining: self.remaining(),
            });
        }
        self.take(len, what)
    }

    fn string(&mut self, what: What) -> Result<String, GgufError> {
        self.str(what).map(str::to_string)
    }

    fn str(&mut self, what: What) -> Result<&'a str, GgufError> {
        let bytes = self.string_bytes(what)?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
    fn bound_count(&self, count: u64, min_size: u64, limit: u64, what: What) -> Result<usize, GgufError> {
        let max = (self.remaining() / min_size).min(limit);
        if count > max {
            return Err(GgufError::CountTooLarge {
                what: what(),
                count,
                max,
                remaining: self.remaining(),
            });
        }
        // count <= remaining bytes, so it fits in usize.
        Ok(count as usize)
    }
}

/// Decodes and validates `bytes` as a GGUF v2/v3 file.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut cur = Cursor { bytes, pos: 0 };

    let magic: [u8; 4] = cur.array(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err(GgufError::VersionV1),
        // A byte-swapped small version has its low 16 bits zero (3 reads as 0x03000000).
        v if v != 0 && v & 0xFFFF == 0 => return Err(GgufError::BigEndian(v)),
        v => return Err(GgufError::UnsupportedVersion(v)),
    }

    let n_tensors = cur.u64(&|| "tensor count".into())?;
    let n_kv = cur.u64(&|| "metadata entry count".into())?;
    let n_tensors = cur.bound_count(n_tensors, MIN_TENSOR_INFO_BYTES, MAX_TENSORS, &|| "tensor count".into())?;
    let n_kv = cur.bound_count(n_kv, MIN_KV_BYTES, MAX_KV, &|| "metadata entry count".into())?;

    let (metadata, key_index) = parse_metadata(&mut cur, n_kv)?;
    let alignment = match key_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) => u64::from(*a),
        Some(other) => {
            return Err(GgufError::AlignmentType {
                found: other.type_name(),
            })
        }
    };
    if !alignment.is_power_of_two() {
        return Err(GgufError::InvalidAlignment(alignment));
    }

    let (tensors, tensor_index) = parse_tensor_infos(&mut cur, n_tensors, alignment)?;

    // The data section starts at the next multiple of the alignment, if there are tensors.
    let file_len = bytes.len() as u64;
    let header_end = cur.pos as u64;
    let data_start = if tensors.is_empty() {
        header_end
    } else {
        match header_end.checked_next_multiple_of(alignment) {
            Some(s) if s <= file_len => s,
            _ => {
                return Err(GgufError::DataSectionOutOfBounds {
                    start: header_end,
                    file_len,
                })
            }
        }
    };
    check_tensor_ranges(&tensors, file_len - data_start)?;

    Ok(Parsed {
        version,
        alignment,
        // data_start <= file_len, a usize.
        data_start: data_start as usize,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

type Metadata = (Vec<(String, Value)>, HashMap<String, usize>);

fn parse_metadata(cur: &mut Cursor, n_kv: usize) -> Result<Metadata, GgufError> {
    let mut metadata = Vec::with_capacity(n_kv.min(MAX_PREALLOC));
    let mut key_index = HashMap::with_capacity(n_kv.min(MAX_PREALLOC));
    let mut array_elements_left = MAX_ARRAY_ELEMENTS;
    for i in 0..n_kv {
        let key = cur.string(&|| format!("key of metadata entry {i}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index: i as u64 });
        }
        if key_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        let ty = cur.u32(&|| format!("value type of '{key}'"))?;
        let value = if ty == type_id::ARRAY {
            let elem_ty = cur.u32(&|| format!("element type of array '{key}'"))?;
            let len = cur.u64(&|| format!("length of array '{key}'"))?;
            if elem_ty == type_id::ARRAY {
                return Err(GgufError::NestedArray { key });
            }
            let min_size = type_id::min_encoded_size(elem_ty).ok_or_else(|| GgufError::UnknownValueType {
                key: key.clone(),
                type_id: elem_ty,
            })?;
            let len = cur.bound_count(len, min_size, array_elements_left, &|| {
                format!("length of array '{key}'")
            })?;
            array_elements_left -= len as u64;
            Value::Array(parse_array(cur, elem_ty, len, &key)?)
        } else {
            parse_scalar(cur, ty, &key, &|| format!("value of '{key}'"))?
        };
        key_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }
    Ok((metadata, key_index))
}

/// The `len` elements of an array of type `elem_ty` (known, not an array). `len` has been
/// bounded by the bytes left, so fixed-size elements are taken in one checked slice and decoded
/// in a loop per type (this is most of the time spent opening a model: its vocabulary).
fn parse_array(cur: &mut Cursor, elem_ty: u32, len: usize, key: &str) -> Result<Array, GgufError> {
    macro_rules! fixed {
        ($t:ty, $variant:ident) => {{
            const SIZE: usize = std::mem::size_of::<$t>();
            let bytes = cur.take((len * SIZE) as u64, &|| format!("elements of array '{key}'"))?;
            Array::$variant(bytes.chunks_exact(SIZE).map(|c| <$t>::from_le_bytes(le_bytes(c))).collect())
        }};
    }
    Ok(match elem_ty {
        type_id::U8 => fixed!(u8, U8),
        type_id::I8 => fixed!(i8, I8),
        type_id::U16 => fixed!(u16, U16),
        type_id::I16 => fixed!(i16, I16),
        type_id::U32 => fixed!(u32, U32),
        type_id::I32 => fixed!(i32, I32),
        type_id::F32 => fixed!(f32, F32),
        type_id::U64 => fixed!(u64, U64),
        type_id::I64 => fixed!(i64, I64),
        type_id::F64 => fixed!(f64, F64),
        type_id::BOOL => {
            let bytes = cur.take(len as u64, &|| format!("elements of array '{key}'"))?;
            Array::Bool(bytes.iter().map(|&b| b != 0).collect())
        }
        type_id::STRING => {
            let mut items = Strings::with_capacity(len.min(MAX_PREALLOC), 0);
            for j in 0..len {
                items.push(cur.str(&|| format!("element {j} of array '{key}'"))?);
            }
            Array::String(items)
        }
        type_id => {
            return Err(GgufError::UnknownValueType {
                key: key.to_string(),
                type_id,
            })
        }
    })
}

/// A chunk from `chunks_exact(N)` as an array.
fn le_bytes<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(chunk);
    out
}

/// One non-array value of type `ty`.
fn parse_scalar(cur: &mut Cursor, ty: u32, key: &str, what: What) -> Result<Value, GgufError> {
    Ok(match ty {
        type_id::U8 => Value::U8(u8::from_le_bytes(cur.array(what)?)),
        type_id::I8 => Value::I8(i8::from_le_bytes(cur.array(what)?)),
        type_id::U16 => Value::U16(u16::from_le_bytes(cur.array(what)?)),
        type_id::I16 => Value::I16(i16::from_le_bytes(cur.array(what)?)),
        type_id::U32 => Value::U32(u32::from_le_bytes(cur.array(what)?)),
        type_id::I32 => Value::I32(i32::from_le_bytes(cur.array(what)?)),
        type_id::F32 => Value::F32(f32::from_le_bytes(cur.array(what)?)),
        type_id::U64 => Value::U64(u64::from_le_bytes(cur.array(what)?)),
        type_id::I64 => Value::I64(i64::from_le_bytes(cur.array(what)?)),
        type_id::F64 => Value::F64(f64::from_le_bytes(cur.array(what)?)),
        // As llama.cpp: any nonzero byte is true.
        type_id::BOOL => Value::Bool(cur.array::<1>(what)?[0] != 0),
        type_id::STRING => Value::String(cur.string(what)?),
        type_id => {
            return Err(GgufError::UnknownValueType {
                key: key.to_string(),
                type_id,
            })
        }
    })
}

type Tensors = (Vec<TensorInfo>, HashMap<String, usize>);

fn parse_tensor_infos(cur: &mut Cursor, n_tensors: usize, alignment: u64) -> Result<Tensors, GgufError> {
    let mut tensors = Vec::with_capacity(n_tensors.min(MAX_PREALLOC));
    let mut tensor_index = HashMap::with_capacity(n_tensors.min(MAX_PREALLOC));
    for i in 0..n_tensors {
        let name_bytes = cur.string_bytes(&|| format!("name of tensor {i}"))?;
        if name_bytes.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                index: i as u64,
                len: name_bytes.len(),
            });
        }
        let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: format!("name of tensor {i}"),
        })?;
        if tensor_index.contains_key(&name) {
            return Err(GgufError::DuplicateTensor(name));
        }
        let n_dims = cur.u32(&|| format!("dimension count of tensor '{name}'"))?;
        if n_dims == 0 || u64::from(n_dims) > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                tensor: name,
                n_dims: n_dims.into(),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(cur.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
        }
        let type_id = cur.u32(&|| format!("type of tensor '{name}'"))?;
        let offset = cur.u64(&|| format!("data offset of tensor '{name}'"))?;

        let ty = QuantType::from_ggml_id(type_id).ok_or_else(|| GgufError::UnsupportedTensorType {
            tensor: name.clone(),
            type_id,
        })?;
        let n_bytes = tensor_n_bytes(&name, &dims, ty)?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedOffset {
                tensor: name,
                offset,
                alignment,
            });
        }
        tensor_index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
        });
    }
    Ok((tensors, tensor_index))
}

/// Bytes of a tensor of this shape and type: whole blocks per row, rows × the other dimensions.
/// Element counts are kept within i64 as ggml requires.
pub(crate) fn tensor_n_bytes(name: &str, dims: &[u64], ty: QuantType) -> Result<u64, GgufError> {
    let overflow = || GgufError::ShapeOverflow {
        tensor: name.to_string(),
        dims: dims.to_vec(),
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    if n_elements > i64::MAX as u64 || dims.iter().any(|&d| d > i64::MAX as u64) {
        return Err(overflow());
    }
    let row_len = dims[0];
    let block_size = ty.block_size();
    if !row_len.is_multiple_of(block_size as u64) {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: name.to_string(),
            ty: ty.name(),
            row_len,
            block_size,
        });
    }
    let row_len = usize::try_from(row_len).map_err(|_| overflow())?;
    let row_bytes = ty.row_bytes(row_len).ok_or_else(overflow)? as u64;
    // Checked separately: with a zero-length row, n_elements does not bound the row count.
    let n_rows = dims[1..]
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    row_bytes.checked_mul(n_rows).ok_or_else(overflow)
}

/// Every tensor's bytes lie in the data section and no two tensors share a byte.
fn check_tensor_ranges(tensors: &[TensorInfo], data_len: u64) -> Result<(), GgufError> {
    for t in tensors {
        match t.offset.checked_add(t.n_bytes) {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    n_bytes: t.n_bytes,
                    data_len,
                })
            }
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        // Both ends were checked against data_len above, so the addition cannot overflow.
        if pair[0].offset + pair[0].n_bytes > pair[1].offset {
            return Err(GgufError::OverlappingTensors {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}
