//! One anonymous mapping that holds every copy of a model's matrices (row-interleaved ones,
//! `tomoe_quant::MatRef::interleave_into`, and plain ones), on transparent huge pages where
//! Linux offers them.
//!
//! Decoding streams the weights, ~100 MiB per token on SmolLM2. On 4 KiB pages (a mapped file's
//! always are) every page is a TLB miss and a stop for the hardware prefetchers; on 2 MiB pages
//! the streams run on. With the kernel's THP mode `madvise` (a common default) only a region
//! advised `MADV_HUGEPAGE` gets them, and a heap allocation per copy (each under 2 MiB) never
//! could. Measured on SmolLM2 Q8_0 decoding, one thread: +20-40 % with the interleaved kernels,
//! +60 % with the AVX2 ones (BENCHMARKS.md, session 10).

use memmap2::MmapMut;

/// Huge pages are 2 MiB on x86-64 and on 4 KiB-page aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Each copy starts on a cache line.
const ALIGN: usize = 64;

/// Whether anonymous memory advised `MADV_HUGEPAGE` gets transparent huge pages here: the
/// kernel's THP mode is `always` or `madvise`. Elsewhere (other systems, THP `never`) a plain
/// copy of a matrix would read no faster than the mapped file.
pub(super) fn huge_pages() -> bool {
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

/// The buffer of a model's copies: `len` bytes starting at `start` in `map` (the first huge
/// page boundary), or nothing.
pub(super) struct CopyArena {
    map: Option<MmapMut>,
    start: usize,
    len: usize,
}

impl CopyArena {
    pub(super) fn empty() -> CopyArena {
        CopyArena { map: None, start: 0, len: 0 }
    }

    /// Lays out copies of `lens` bytes one after the other, each on a cache line, and maps a
    /// zeroed buffer for them. Returns the arena and each copy's offset in it.
    pub(super) fn new(lens: &[usize]) -> std::io::Result<(CopyArena, Vec<usize>)> {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut len = 0usize;
        for &l in lens {
            offsets.push(len);
            len = (len + l).next_multiple_of(ALIGN);
        }
        if len == 0 {
            return Ok((CopyArena::empty(), offsets));
        }
        // One huge page more than needed, so the buffer can start on a huge-page boundary.
        let map = MmapMut::map_anon(len + HUGE_PAGE)?;
        let start = (map.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - map.as_ptr() as usize;
        #[cfg(target_os = "linux")]
        {
            // Advice only: without THP in the kernel the copies stay on small pages.
            let advised = (len.next_multiple_of(HUGE_PAGE)).min(map.len() - start);
            let _ = map.advise_range(memmap2::Advice::HugePage, start, advised);
        }
        Ok((CopyArena { map: Some(map), start, len }, offsets))
    }

    /// The whole buffer, to write the copies into.
    pub(super) fn buffer_mut(&mut self) -> &mut [u8] {
        match &mut self.map {
            Some(m) => &mut m[self.start..self.start + self.len],
            None => &mut [],
        }
    }

    /// The whole buffer, to view the copies in.
    pub(super) fn buffer(&self) -> &[u8] {
        match &self.map {
            Some(m) => &m[self.start..self.start + self.len],
            None => &[],
        }
    }

    /// Bytes of the buffer (the copies and their alignment padding).
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_laid_out_on_cache_lines_in_a_zeroed_buffer_on_a_huge_page_boundary() {
        let (mut arena, offsets) = CopyArena::new(&[100, 0, 64, 7]).unwrap();
        assert_eq!(offsets, [0, 128, 128, 192]);
        assert_eq!(arena.len(), 256);
        assert!(arena.buffer().iter().all(|&b| b == 0));
        assert_eq!(arena.buffer().as_ptr() as usize % HUGE_PAGE, 0);
        arena.buffer_mut()[255] = 1;
        assert_eq!(arena.buffer()[255], 1);
    }

    #[test]
    fn no_copies_map_nothing() {
        let (mut arena, offsets) = CopyArena::new(&[0, 0]).unwrap();
        assert_eq!(offsets, [0, 0]);
        assert!(arena.map.is_none() && arena.buffer().is_empty() && arena.buffer_mut().is_empty());
    }
}
