//! Dropbox's `content_hash` (provider-apis §3.3): SHA-256 of each 4 MiB block, then
//! SHA-256 of the concatenated block digests, in lowercase hex. An empty file is the
//! SHA-256 of nothing.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The algorithm's name in `RemoteEntry::hash` ("dropbox:<hex>").
pub const HASH_NAME: &str = "dropbox";

/// Bytes per block.
pub const BLOCK: usize = 4 * 1024 * 1024;

/// The hash, fed in pieces of any size.
#[derive(Default, Clone)]
pub struct ContentHasher {
    overall: Sha256,
    block: Sha256,
    in_block: usize,
}

impl ContentHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (BLOCK - self.in_block).min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take;
            data = &data[take..];
            if self.in_block == BLOCK {
                let digest = std::mem::take(&mut self.block).finalize();
                self.overall.update(digest);
                self.in_block = 0;
            }
        }
    }

    /// Lowercase hex.
    pub fn finish(mut self) -> String {
        if self.in_block > 0 {
            let digest = self.block.finalize();
            self.overall.update(digest);
        }
        hex::encode(self.overall.finalize())
    }
}

/// The hash of a whole buffer.
pub fn content_hash(data: &[u8]) -> String {
    let mut h = ContentHasher::new();
    h.update(data);
    h.finish()
}

/// The hash of a local file (blocking: call on the blocking pool).
pub fn file_content_hash(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = ContentHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_sha256_of_nothing() {
        // The value in the Stone examples (shared/fixtures/dropbox/file_metadata…).
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn blocks_are_hashed_then_their_digests() {
        let data: Vec<u8> = (0..BLOCK + 10).map(|i| (i % 251) as u8).collect();
        let mut digests = Vec::new();
        digests.extend_from_slice(&Sha256::digest(&data[..BLOCK]));
        digests.extend_from_slice(&Sha256::digest(&data[BLOCK..]));
        let want = hex::encode(Sha256::digest(&digests));
        assert_eq!(content_hash(&data), want);
        // Fed in odd pieces: the same.
        let mut h = ContentHasher::new();
        for piece in data.chunks(999_983) {
            h.update(piece);
        }
        assert_eq!(h.finish(), want);
        // One block exactly: one digest, no empty second block.
        let one = &data[..BLOCK];
        assert_eq!(
            content_hash(one),
            hex::encode(Sha256::digest(Sha256::digest(one)))
        );
    }
}
