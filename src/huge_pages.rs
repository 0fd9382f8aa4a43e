//! Zeroed buffers of numbers in anonymous memory, on transparent huge pages where Linux offers
//! them: the weights' copies that decoding streams (`model`), and the KV cache that attention
//! reads (`engine`).
//!
//! Decoding reads ~100 MiB of weights per token on SmolLM2, and at long contexts as much again
//! of keys and values. On 4 KiB pages every page is a TLB miss and a stop for the hardware
//! prefetchers; on 2 MiB pages the streams run on. With the kernel's THP mode `madvise` (a
//! common default) only a region advised `MADV_HUGEPAGE` gets them, and heap allocations never
//! are. Both the weights' copies and the KV cache decode faster on them (BENCHMARKS.md).

use memmap2::MmapMut;
use std::io::ErrorKind;
use std::marker::PhantomData;
use std::ops::Range;

/// Huge pages are 2 MiB on x86-64 and on 4 KiB-page aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Whether anonymous memory advised `MADV_HUGEPAGE` gets transparent huge pages here: the
/// kernel's THP mode is `always` or `madvise`. Elsewhere (other systems, THP `never`) a
/// [`HugeBuf`] is an ordinary zeroed mapping.
pub fn available() -> bool {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| mode.contains("[always]") || mode.contains("[madvise]"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Numbers for which every bit pattern, all zeros included, is a value.
///
/// # Safety
/// Implement only for such types (no padding, no invalid bit patterns).
pub unsafe trait Plain: Copy {}
// SAFETY: integers and floats: every bit pattern is a value.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}

/// `len` zeroed `T`s starting on a huge-page boundary of an anonymous mapping advised
/// `MADV_HUGEPAGE` (nothing mapped when empty).
pub struct HugeBuf<T: Plain> {
    map: Option<MmapMut>,
    start: usize,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Plain> HugeBuf<T> {
    pub fn zeroed(len: usize) -> std::io::Result<HugeBuf<T>> {
        let bytes = len.checked_mul(size_of::<T>()).ok_or(ErrorKind::OutOfMemory)?;
        if bytes == 0 {
            return Ok(HugeBuf { map: None, start: 0, len: 0, _values: PhantomData });
        }
        // One huge page more than needed, so that the buffer can start on a boundary.
        let map = MmapMut::map_anon(bytes.checked_add(HUGE_PAGE).ok_or(ErrorKind::OutOfMemory)?)?;
        let start = (map.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - map.as_ptr() as usize;
        #[cfg(target_os = "linux")]
        {
            // Advice only: without THP in the kernel the buffer stays on small pages.
            let advised = bytes.next_multiple_of(HUGE_PAGE).min(map.len() - start);
            let _ = map.advise_range(memmap2::Advice::HugePage, start, advised);
        }
        Ok(HugeBuf { map: Some(map), start, len, _values: PhantomData })
    }
}

impl<T: Plain> HugeBuf<T> {
    /// One zeroed buffer for parts of `lens` values laid out one after the other, each starting
    /// on a cache line (and the buffer's length rounded up to one): the buffer and each part's
    /// range in it.
    pub fn parts(lens: impl IntoIterator<Item = usize>) -> std::io::Result<(HugeBuf<T>, Vec<Range<usize>>)> {
        let line = (64 / size_of::<T>()).max(1);
        let mut at = Vec::new();
        let mut end = 0usize;
        for len in lens {
            let start = end;
            end =
                start.checked_add(len).and_then(|e| e.checked_next_multiple_of(line)).ok_or(ErrorKind::OutOfMemory)?;
            at.push(start..start + len);
        }
        Ok((HugeBuf::zeroed(end)?, at))
    }
}

impl<T: Plain> std::ops::Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.map {
            // SAFETY: `start` is a huge-page boundary, so aligned for `T`; the mapping holds
            // `start + len · size_of::<T>()` bytes (`zeroed`), initialized (zeros, then whatever
            // was written as `T`), and every bit pattern is a `T` (`Plain`). The borrow of
            // `self` keeps the mapping alive and unaliased by `&mut`.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().add(self.start).cast::<T>(), self.len) },
            None => &[],
        }
    }
}

impl<T: Plain> std::ops::DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.map {
            // SAFETY: as in `deref`, with the unique borrow of `self`.
            Some(m) => unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().add(self.start).cast::<T>(), self.len) },
            None => &mut [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_writable_and_start_on_a_huge_page() {
        let mut b = HugeBuf::<f32>::zeroed(1000).unwrap();
        assert_eq!(b.len(), 1000);
        assert!(b.iter().all(|&x| x == 0.0));
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        b[999] = 1.5;
        assert_eq!(b[999], 1.5);
        let mut empty = HugeBuf::<u8>::zeroed(0).unwrap();
        assert!(empty.map.is_none() && empty.is_empty() && empty.iter_mut().next().is_none());
        assert!(HugeBuf::<f32>::zeroed(usize::MAX / 2).is_err());
    }

    #[test]
    fn parts_start_on_cache_lines() {
        let (buf, at) = HugeBuf::<u8>::parts([100, 0, 64, 7]).unwrap();
        assert_eq!(at.iter().map(|r| r.start).collect::<Vec<_>>(), [0, 128, 128, 192]);
        assert_eq!(at[0], 0..100);
        assert_eq!(buf.len(), 256);
        assert!(buf.iter().all(|&b| b == 0));
        // In floats, a cache line is 16 of them.
        let (buf, at) = HugeBuf::<f32>::parts([20, 16, 1]).unwrap();
        assert_eq!(at, [0..20, 32..48, 48..49]);
        assert_eq!(buf.len(), 64);
        let (buf, at) = HugeBuf::<u8>::parts([0, 0]).unwrap();
        assert_eq!((at, buf.len()), (vec![0..0, 0..0], 0));
        assert!(HugeBuf::<f32>::parts([usize::MAX - 3]).is_err());
    }
}
