//! `GgufWriter`: deterministic GGUF v3 files (metadata and tensors in insertion order, zero
//! padding, every tensor's data aligned), written whole, streamed tensor by tensor, or atomically.
//!
//! Layout, as llama.cpp writes it: header, metadata, tensor infos, zero padding to the
//! alignment, then each tensor's data followed by zero padding to the alignment. (One
//! difference: a file without tensors ends right after its metadata, unpadded.)

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::parse::{tensor_n_bytes, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME_LEN};
use super::{Array, GgufError, QuantType, Value};

const VERSION: u32 = 3;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: QuantType,
    n_bytes: u64,
    /// `None` for tensors whose data the caller streams in later (`add_tensor_info`).
    data: Option<Vec<u8>>,
}

/// Builds a GGUF file in memory (metadata, tensor descriptions, optionally tensor data) and
/// writes it out.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<PendingTensor>,
    tensor_index: HashMap<String, usize>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `general.alignment` (written only when it differs from the default 32 or was set
    /// explicitly before). Must be a nonzero power of two; checked when writing.
    pub fn set_alignment(&mut self, a: u64) {
        if a == DEFAULT_ALIGNMENT && !self.key_index.contains_key(ALIGNMENT_KEY) {
            return;
        }
        // An alignment beyond u32 cannot be stored; keep it as u64 so that writing reports it.
        let v = u32::try_from(a).map(Value::U32).unwrap_or(Value::U64(a));
        self.add_metadata(ALIGNMENT_KEY, v);
    }

    /// Adds a metadata entry, or replaces the value of an existing key in place (as llama.cpp's
    /// gguf_set_*). Values are checked when writing: non-empty key, arrays homogeneous and not
    /// nested, `general.alignment` a u32 power of two.
    pub fn add_metadata(&mut self, key: impl Into<String>, v: Value) {
        let key = key.into();
        match self.key_index.get(&key) {
            Some(&i) => self.metadata[i].1 = v,
            None => {
                self.key_index.insert(key.clone(), self.metadata.len());
                self.metadata.push((key, v));
            }
        }
    }

    /// Adds a tensor with its data; `data` must be exactly the size its shape and type need.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: QuantType,
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        self.push_tensor(name.into(), dims, ty, Some(data))
    }

    /// Adds a tensor whose data will be given later, in order, to the stream returned by
    /// [`GgufWriter::write_streaming`] (so a converter need not hold every tensor in memory).
    pub fn add_tensor_info(&mut self, name: impl Into<String>, dims: Vec<u64>, ty: QuantType) -> Result<(), GgufError> {
        self.push_tensor(name.into(), dims, ty, None)
    }

    fn push_tensor(
        &mut self,
        name: String,
        dims: Vec<u64>,
        ty: QuantType,
        data: Option<Vec<u8>>,
    ) -> Result<(), GgufError> {
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                index: self.tensors.len() as u64,
                len: name.len(),
            });
        }
        if self.tensor_index.contains_key(&name) {
            return Err(GgufError::DuplicateTensor(name));
        }
        if dims.is_empty() || dims.len() as u64 > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                tensor: name,
                n_dims: dims.len() as u64,
            });
        }
        let n_bytes = tensor_n_bytes(&name, &dims, ty)?;
        if let Some(d) = &data {
            if d.len() as u64 != n_bytes {
                return Err(GgufError::TensorDataSize {
                    tensor: name,
                    expected: n_bytes,
                    got: d.len() as u64,
                });
            }
        }
        self.tensor_index.insert(name.clone(), self.tensors.len());
        self.tensors.push(PendingTensor {
            name,
            dims,
            ty,
            n_bytes,
            data,
        });
        Ok(())
    }

    /// Writes the whole file. Every tensor must have been given its data (`add_tensor`).
    pub fn write_to<W: Write>(&self, w: W) -> Result<(), GgufError> {
        self.check_all_data_given()?;
        self.write_streaming(w)?.finish()?;
        Ok(())
    }

    fn check_all_data_given(&self) -> Result<(), GgufError> {
        match self.tensors.iter().find(|t| t.data.is_none()) {
            Some(t) => Err(GgufError::MissingTensorData { tensor: t.name.clone() }),
            None => Ok(()),
        }
    }

    /// Writes the header, metadata and tensor infos, then returns a stream that writes the
    /// tensor data in order: tensors added with data are written automatically, the others
    /// must be passed to [`TensorStream::write_tensor`] in insertion order.
    pub fn write_streaming<W: Write>(&self, w: W) -> Result<TensorStream<'_, W>, GgufError> {
        let alignment = self.alignment()?;
        let header = self.encode_header(alignment)?;
        let mut stream = TensorStream {
            writer: self,
            out: w,
            written: 0,
            next: 0,
            alignment,
        };
        stream.put(&header)?;
        // Without tensors there is no data section to align (readers do not expect one); this
        // also keeps a metadata-only file with a huge alignment from growing by that much.
        if !self.tensors.is_empty() {
            stream.pad()?;
        }
        Ok(stream)
    }

    /// Writes the file to a temporary file in `path`'s directory, fsyncs it and renames it over
    /// `path`, so readers see the old file or the complete new one. On error the temporary
    /// file is removed.
    pub fn write_atomic(&self, path: &Path) -> Result<(), GgufError> {
        self.check_all_data_given()?;
        self.write_atomic_streaming(path, |_| Ok::<(), GgufError>(()))
    }

    /// As [`GgufWriter::write_atomic`], with `fill` writing the streamed tensors' data.
    pub fn write_atomic_streaming<E, F>(&self, path: &Path, fill: F) -> Result<(), E>
    where
        E: From<GgufError>,
        F: FnOnce(&mut TensorStream<'_, BufWriter<File>>) -> Result<(), E>,
    {
        let tmp = temp_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let result = (|| -> Result<(), E> {
            let mut stream = self.write_streaming(BufWriter::new(file))?;
            fill(&mut stream)?;
            let file = stream
                .finish()?
                .into_inner()
                .map_err(|e| io_err(&tmp)(e.into_error()))?;
            file.sync_all().map_err(io_err(&tmp))?;
            drop(file);
            fs::rename(&tmp, path).map_err(io_err(path))?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                sync_parent_dir(path);
                Ok(())
            }
            Err(e) => {
                // Best effort: the original error is the one worth reporting.
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// The alignment the metadata asks for, checked as the reader checks it.
    fn alignment(&self) -> Result<u64, GgufError> {
        match self.key_index.get(ALIGNMENT_KEY).map(|&i| &self.metadata[i].1) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some(Value::U32(a)) => Err(GgufError::InvalidAlignment(u64::from(*a))),
            Some(Value::U64(a)) => Err(GgufError::InvalidAlignment(*a)),
            Some(other) => Err(GgufError::AlignmentType {
                found: other.type_name(),
            }),
        }
    }

    fn encode_header(&self, alignment: u64) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            if key.is_empty() {
                return Err(GgufError::EmptyKey {
                    index: self.key_index[key] as u64,
                });
            }
            put_str(&mut out, key);
            encode_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.ggml_id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(t.n_bytes)
                .and_then(|end| end.checked_next_multiple_of(alignment))
                .ok_or_else(|| GgufError::ShapeOverflow {
                    tensor: t.name.clone(),
                    dims: t.dims.clone(),
                })?;
        }
        Ok(out)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_value(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(&value.type_id().to_le_bytes());
    macro_rules! le {
        ($($v:expr),*) => {{ $(for x in $v { out.extend_from_slice(&x.to_le_bytes()); })* }};
    }
    match value {
        Value::U8(v) => le!([v]),
        Value::I8(v) => le!([v]),
        Value::U16(v) => le!([v]),
        Value::I16(v) => le!([v]),
        Value::U32(v) => le!([v]),
        Value::I32(v) => le!([v]),
        Value::U64(v) => le!([v]),
        Value::I64(v) => le!([v]),
        Value::F32(v) => le!([v]),
        Value::F64(v) => le!([v]),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            out.extend_from_slice(&items.elem_type_id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            match items {
                Array::U8(v) => le!(v),
                Array::I8(v) => le!(v),
                Array::U16(v) => le!(v),
                Array::I16(v) => le!(v),
                Array::U32(v) => le!(v),
                Array::I32(v) => le!(v),
                Array::U64(v) => le!(v),
                Array::I64(v) => le!(v),
                Array::F32(v) => le!(v),
                Array::F64(v) => le!(v),
                Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
                Array::String(strings) => strings.iter().for_each(|s| put_str(out, s)),
            }
        }
    }
}

/// The tensor-data part of a file being written: see [`GgufWriter::write_streaming`].
pub struct TensorStream<'w, W: Write> {
    writer: &'w GgufWriter,
    out: W,
    written: u64,
    /// Index of the next tensor whose data goes out.
    next: usize,
    alignment: u64,
}

impl<W: Write> TensorStream<'_, W> {
    /// Writes the data of the next tensor that was added without data. `name` must be that
    /// tensor's name and `data` exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        self.write_buffered_tensors()?;
        let Some(t) = self.writer.tensors.get(self.next) else {
            return Err(GgufError::StreamOrder {
                expected: "<none: all tensors written>".into(),
                got: name.into(),
            });
        };
        if t.name != name {
            return Err(GgufError::StreamOrder {
                expected: t.name.clone(),
                got: name.into(),
            });
        }
        if data.len() as u64 != t.n_bytes {
            return Err(GgufError::TensorDataSize {
                tensor: t.name.clone(),
                expected: t.n_bytes,
                got: data.len() as u64,
            });
        }
        self.put(data)?;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Writes any remaining tensors that have data, checks that nothing is missing, flushes,
    /// and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, GgufError> {
        self.write_buffered_tensors()?;
        let missing = self.writer.tensors.len() - self.next;
        if missing > 0 {
            return Err(GgufError::StreamIncomplete { missing });
        }
        self.out.flush().map_err(GgufError::Write)?;
        Ok(self.out)
    }

    /// Writes tensors from `next` on for as long as they carry their own data.
    fn write_buffered_tensors(&mut self) -> Result<(), GgufError> {
        while let Some(data) = self.writer.tensors.get(self.next).and_then(|t| t.data.as_deref()) {
            self.put(data)?;
            self.pad()?;
            self.next += 1;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.out.write_all(bytes).map_err(GgufError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), GgufError> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut n = self.written.next_multiple_of(self.alignment) - self.written;
        while n > 0 {
            let chunk = n.min(ZEROS.len() as u64);
            self.put(&ZEROS[..chunk as usize])?;
            n -= chunk;
        }
        Ok(())
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> GgufError + '_ {
    move |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<dir>/.<name>.tmp<pid>-<n>`: same directory (so the rename is atomic), hidden, unique per
/// process and call.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gguf".into());
    path.with_file_name(format!(".{name}.tmp{}-{n}", std::process::id()))
}

/// Makes the rename durable. Best effort: not every platform can open a directory to sync it.
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
