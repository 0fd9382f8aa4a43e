//! A small, fast, non-cryptographic hasher for the tokenizer's lookup tables (keys are token
//! texts and id pairs from the model file, not attacker-chosen at run time).

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hashing over 8-byte words (the Fx scheme used by rustc).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A map from byte strings to ids, its keys in one buffer: a 262k-token vocabulary takes a few
/// MiB instead of the ~20 of a `HashMap<Box<[u8]>, u32>` (a boxed key and a 24-byte bucket each).
/// Open addressing with linear probing over entry indices; a key inserted again takes the new id.
#[derive(Default)]
pub(crate) struct BytesMap {
    bytes: Vec<u8>,
    /// The end of each entry's key in `bytes`.
    ends: Vec<u32>,
    ids: Vec<u32>,
    /// Entry index + 1 per slot, 0 empty; a power of two at least twice the entries.
    slots: Vec<u32>,
}

impl BytesMap {
    pub fn with_capacity(n: usize) -> Self {
        BytesMap {
            slots: vec![0; (2 * n).next_power_of_two().max(16)],
            ends: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            bytes: Vec::new(),
        }
    }

    fn hash(key: &[u8]) -> usize {
        let mut h = FxHasher::default();
        h.write(key);
        h.write_usize(key.len());
        h.finish() as usize
    }

    fn key(&self, entry: usize) -> &[u8] {
        let start = if entry == 0 { 0 } else { self.ends[entry - 1] as usize };
        &self.bytes[start..self.ends[entry] as usize]
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn slot(&self, key: &[u8]) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = Self::hash(key) & mask;
        loop {
            match self.slots[i] {
                0 => return i,
                e if self.key(e as usize - 1) == key => return i,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Maps `key` to `id`; returns the id it had.
    pub fn insert(&mut self, key: &[u8], id: u32) -> Option<u32> {
        if 2 * (self.ids.len() + 1) > self.slots.len() {
            self.grow();
        }
        let i = self.slot(key);
        match self.slots[i] {
            0 => {
                self.bytes.extend_from_slice(key);
                self.ends.push(u32::try_from(self.bytes.len()).expect("keys under 4 GiB in all"));
                self.ids.push(id);
                self.slots[i] = self.ids.len() as u32;
                None
            }
            e => Some(std::mem::replace(&mut self.ids[e as usize - 1], id)),
        }
    }

    fn grow(&mut self) {
        let mut slots = vec![0u32; (self.slots.len() * 2).max(16)];
        let mask = slots.len() - 1;
        for e in 0..self.ids.len() {
            let mut i = Self::hash(self.key(e)) & mask;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = e as u32 + 1;
        }
        self.slots = slots;
    }

    pub fn get(&self, key: &[u8]) -> Option<u32> {
        match self.slots[self.slot(key)] {
            0 => None,
            e => Some(self.ids[e as usize - 1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_map_finds_every_key_and_misses_others() {
        let mut m = BytesMap::with_capacity(3);
        let keys: Vec<Vec<u8>> = (0..5000u32).map(|i| format!("k{i}").into_bytes()).collect();
        for (i, k) in keys.iter().enumerate() {
            m.insert(k, i as u32 * 3);
        }
        m.insert(b"", 7);
        m.insert(b"k10", 1);
        for (i, k) in keys.iter().enumerate() {
            let want = if i == 10 { 1 } else { i as u32 * 3 };
            assert_eq!(m.get(k), Some(want), "{:?}", String::from_utf8_lossy(k));
        }
        assert_eq!(m.get(b""), Some(7));
        assert_eq!(m.get(b"k5000"), None);
        assert_eq!(m.get(b"k"), None);
        assert_eq!(m.ids.len(), 5001);
    }
}
