//! One buffer on huge pages (`crate::huge_pages`) that holds every copy of a model's matrices:
//! row-interleaved ones (`tomoe_quant::MatRef::interleave_into`) and plain ones.

use crate::huge_pages::HugeBuf;

/// Each copy starts on a cache line.
const ALIGN: usize = 64;

/// The buffer of a model's copies.
pub(super) struct CopyArena {
    buf: HugeBuf<u8>,
}

impl CopyArena {
    pub(super) fn empty() -> CopyArena {
        CopyArena { buf: HugeBuf::zeroed(0).expect("an empty buffer maps nothing") }
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
        Ok((CopyArena { buf: HugeBuf::zeroed(len)? }, offsets))
    }

    /// The whole buffer, to write the copies into.
    pub(super) fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The whole buffer, to view the copies in.
    pub(super) fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of the buffer (the copies and their alignment padding).
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_laid_out_on_cache_lines() {
        let (mut arena, offsets) = CopyArena::new(&[100, 0, 64, 7]).unwrap();
        assert_eq!(offsets, [0, 128, 128, 192]);
        assert_eq!(arena.len(), 256);
        assert!(arena.buffer().iter().all(|&b| b == 0));
        arena.buffer_mut()[255] = 1;
        assert_eq!(arena.buffer()[255], 1);
        let (arena, offsets) = CopyArena::new(&[0, 0]).unwrap();
        assert_eq!((offsets, arena.len()), (vec![0, 0], 0));
    }
}
