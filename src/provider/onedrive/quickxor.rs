//! QuickXorHash, the content hash OneDrive and SharePoint report for every file
//! (`file.hashes.quickXorHash`, base64) and the only one Business accounts have.
//!
//! As Microsoft describes it ("Code snippets: QuickXorHash algorithm", learn.microsoft.com
//! /onedrive/developer/code-snippets/quickxorhash): a 160-bit block; byte `i` of the
//! input is XORed into the block at bit offset `11 * i` (mod 160, wrapping around the
//! end); finally the input length, as a 64-bit little-endian number, is XORed into the
//! block's last 8 bytes. Bits are numbered from the least significant bit of byte 0.

use base64::Engine;

/// The algorithm's name in `RemoteEntry::hash` ("quickxor:<base64>").
pub const HASH_NAME: &str = "quickxor";

const WIDTH_BITS: u64 = 160;
const SHIFT: u64 = 11;

/// An incremental QuickXorHash.
#[derive(Clone, Default)]
pub struct QuickXor {
    block: [u8; 20],
    length: u64,
    /// Bit offset (mod 160) where the next byte goes.
    offset: u64,
}

impl QuickXor {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        for &byte in data {
            let bit = self.offset;
            let (index, within) = ((bit / 8) as usize, (bit % 8) as u32);
            self.block[index] ^= byte << within;
            if within > 0 {
                // The byte straddles two block bytes; past byte 19 it wraps to byte 0.
                self.block[(index + 1) % 20] ^= byte >> (8 - within);
            }
            self.offset = (self.offset + SHIFT) % WIDTH_BITS;
        }
        self.length = self.length.wrapping_add(data.len() as u64);
    }

    /// The 20-byte digest.
    pub fn finish(&self) -> [u8; 20] {
        let mut out = self.block;
        for (i, b) in self.length.to_le_bytes().iter().enumerate() {
            out[12 + i] ^= b;
        }
        out
    }

    /// The digest as Graph reports it (standard base64).
    pub fn finish_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.finish())
    }
}

/// QuickXorHash of `data`, base64.
pub fn quick_xor_base64(data: &[u8]) -> String {
    let mut h = QuickXor::new();
    h.update(data);
    h.finish_base64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The value several independent implementations publish for "hello world".
        assert_eq!(
            quick_xor_base64(b"hello world"),
            "aCgDG9jwBhDc4Q1yawMZAAAAAAA="
        );
        // Nothing in, nothing but the (zero) length: all zero.
        assert_eq!(quick_xor_base64(b""), "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    }

    #[test]
    fn incremental_equals_one_shot_across_the_wrap() {
        // Long enough to wrap the 160-bit block many times, fed in odd pieces.
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut h = QuickXor::new();
        for piece in data.chunks(37) {
            h.update(piece);
        }
        assert_eq!(h.finish_base64(), quick_xor_base64(&data));
        assert_ne!(quick_xor_base64(&data[..9_999]), quick_xor_base64(&data));
    }
}
