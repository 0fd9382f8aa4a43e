//! `GgufFile`: a validated GGUF file, memory-mapped or owned, handing out zero-copy tensor views.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use tomoe_quant::MatRef;

use super::parse::{parse, Parsed};
use super::{GgufError, QuantType, Value};

/// Where a tensor's bytes are and what they hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous row length. 1 to 4 entries.
    pub dims: Vec<u64>,
    pub ty: QuantType,
    /// From the start of the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (the product of `dims`; validated not to overflow).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A tensor's description and its bytes, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    pub info: &'a TensorInfo,
    /// Exactly `info.n_bytes` bytes, zero-copy from the map (or owned buffer).
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// The tensor as a row-major matrix for tomoe-quant's kernels: `dims[0]` columns, the
    /// product of the other dimensions as rows. Zero-copy.
    pub fn as_mat(&self) -> Result<MatRef<'a>, GgufError> {
        // parse() bounded n_elements (hence every partial product) by i64::MAX and n_bytes by
        // the file size, so these conversions only fail on 32-bit targets with huge tensors.
        let view_err = |source| GgufError::TensorView {
            tensor: self.info.name.clone(),
            source,
        };
        let cols = usize::try_from(self.info.dims[0]);
        let rows = usize::try_from(self.info.dims[1..].iter().product::<u64>());
        let (Ok(cols), Ok(rows)) = (cols, rows) else {
            return Err(GgufError::ShapeOverflow {
                tensor: self.info.name.clone(),
                dims: self.info.dims.clone(),
            });
        };
        MatRef::new(self.info.ty, rows, cols, self.data).map_err(view_err)
    }
}

enum Storage {
    /// The map, and the file it maps (for [`GgufFile::read_unmapped`]).
    Mapped(Mmap, File),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m, _) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A GGUF v2/v3 file whose header, metadata and tensor layout have all been validated.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// What [`GgufFile::release`] drops whole: 64 KiB is a multiple of every common page size (4, 16
/// and 64 KiB).
const RELEASE_GRANULE: usize = 64 << 10;

impl GgufFile {
    /// Memory-maps and validates the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_dir() {
            return Err(io_err(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
        }
        let len = meta.len();
        if len == 0 {
            // Mapping an empty file fails on some systems; an empty buffer gives the same
            // "truncated magic" error as any other too-short file.
            return Self::from_bytes(Vec::new());
        }
        // SAFETY: the map is read-only and lives as long as the GgufFile that hands out borrows
        // of it. As with every mmap-based loader (llama.cpp included), another process
        // truncating or rewriting the file while it is mapped is outside what we can guard
        // against; the files are model weights we do not expect to be modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Self::from_storage(Storage::Mapped(map, file))
    }

    /// Validates an in-memory GGUF file (the C ABI's "load from memory").
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<GgufFile, GgufError> {
        let Parsed {
            version,
            alignment,
            data_start,
            metadata,
            key_index,
            tensors,
            tensor_index,
        } = parse(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version,
            alignment,
            data_start,
            metadata,
            key_index,
            tensors,
            tensor_index,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether the bytes are a mapped file ([`GgufFile::open`]), not a buffer in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(..))
    }

    /// Drops the whole pages of `bytes` (part of this file's bytes, e.g. a tensor's data that
    /// was copied) from the process's resident memory: the kernel keeps them in its page cache
    /// and maps them again if they are read. Only lowers the resident set; the bytes read the
    /// same. Does nothing for a buffer in memory, for bytes outside the file, or off unix.
    pub fn release(&self, bytes: &[u8]) {
        self.release_ranges(self.offsets(bytes).into_iter());
    }

    /// [`GgufFile::release`] of many parts of the file at once, with the few bytes between parts
    /// that lie within 64 KiB of each other (alignment padding, a norm's weights): released one
    /// at a time, each part's pages at its ends would stay, which for the hundreds of small
    /// matrices of a small model add up to megabytes. A released byte read again is mapped again.
    pub fn release_many<'b>(&self, parts: impl IntoIterator<Item = &'b [u8]>) {
        let mut ranges: Vec<(usize, usize)> = parts.into_iter().filter_map(|b| self.offsets(b)).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 + RELEASE_GRANULE => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        self.release_ranges(merged.into_iter());
    }

    /// Copies `bytes` (part of the mapped file) into `buf` by reading the file, so that no page
    /// of the map is touched: for rows read one at a time from a tensor whose pages were given
    /// back (a tied embedding beside its output's copy), which read through the map would each
    /// map the pages the kernel maps around a fault, and a long prompt's rows most of the
    /// tensor. `false`, `buf` untouched, for a buffer in memory, bytes outside the file, a `buf`
    /// of another length, or a failed read: the caller reads `bytes` then.
    pub fn read_unmapped(&self, bytes: &[u8], buf: &mut [u8]) -> bool {
        let (Some((start, _)), Storage::Mapped(_, file)) = (self.offsets(bytes), &self.storage) else {
            return false;
        };
        if buf.len() != bytes.len() {
            return false;
        }
        #[cfg(unix)]
        return std::os::unix::fs::FileExt::read_exact_at(file, buf, start as u64).is_ok();
        #[cfg(not(unix))]
        {
            let _ = (file, start);
            false
        }
    }

    /// The offsets in the mapped file of `bytes`; `None` for a buffer in memory or bytes
    /// outside the file.
    fn offsets(&self, bytes: &[u8]) -> Option<(usize, usize)> {
        let Storage::Mapped(map, _) = &self.storage else { return None };
        let base = map.as_ptr() as usize;
        let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
        (start >= base && end <= base + map.len()).then(|| (start - base, end - base))
    }

    /// Drops the whole granules of each range of offsets of the mapped file.
    fn release_ranges(&self, ranges: impl Iterator<Item = (usize, usize)>) {
        #[cfg(unix)]
        if let Storage::Mapped(map, _) = &self.storage {
            for (start, end) in ranges {
                let (first, last) = (start.next_multiple_of(RELEASE_GRANULE), end / RELEASE_GRANULE * RELEASE_GRANULE);
                if first < last {
                    // SAFETY: the map is a read-only shared mapping of the file (`Mmap::map`), so
                    // after MADV_DONTNEED its pages are filled again from the file on the next
                    // read: borrowed slices keep reading the same bytes (the file is not modified
                    // while mapped, the assumption of the whole mapping; see `open`).
                    let _ = unsafe {
                        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
                    };
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ranges;
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file (llama.cpp's gguf_get_data_offset).
    pub fn data_offset(&self) -> u64 {
        self.data_start as u64
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All tensor descriptions, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        let info = &self.tensors[*self.tensor_index.get(name)?];
        Some(self.view(info))
    }

    /// Every tensor with its bytes, in file order.
    pub fn tensor_views(&self) -> impl Iterator<Item = Tensor<'_>> {
        self.tensors.iter().map(|info| self.view(info))
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> Tensor<'a> {
        // parse() checked offset + n_bytes <= data section length, so both fit in usize and
        // the range is in bounds.
        let start = self.data_start + info.offset as usize;
        Tensor {
            info,
            data: &self.storage.bytes()[start..start + info.n_bytes as usize],
        }
    }
}
