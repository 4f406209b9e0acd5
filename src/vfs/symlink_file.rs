//! Symbolic links on providers that cannot store them, as regular files in the
//! Minshall-French format that Samba (`mfsymlinks`) and macOS SMB clients use, so other
//! tools read them as links too:
//!
//! ```text
//! XSym\n
//! 0011\n                                 target length, 4 decimal digits
//! 0b4ae9b4c0b8c1c4d1c8a1d9c3b4e1f2\n     MD5 of the target, 32 hex digits
//! ../some/target\n                       the target, then spaces up to 1067 bytes
//! ```

use md5_lite::md5_hex;

/// Every such file is exactly this long, which is how a listing spots candidates.
pub const XSYM_LEN: u64 = 1067;
const MAX_TARGET: usize = 1067 - 4 - 1 - 4 - 1 - 32 - 1 - 1;

pub fn encode(target: &str) -> Option<Vec<u8>> {
    if target.len() > MAX_TARGET {
        return None;
    }
    let mut out = format!(
        "XSym\n{:04}\n{}\n{}\n",
        target.len(),
        md5_hex(target.as_bytes()),
        target
    )
    .into_bytes();
    out.resize(XSYM_LEN as usize, b' ');
    Some(out)
}

pub fn decode(data: &[u8]) -> Option<String> {
    if data.len() as u64 != XSYM_LEN || !data.starts_with(b"XSym\n") {
        return None;
    }
    let len: usize = std::str::from_utf8(&data[5..9]).ok()?.parse().ok()?;
    if data[9] != b'\n' || data[42] != b'\n' || 43 + len > data.len() {
        return None;
    }
    let hash = std::str::from_utf8(&data[10..42]).ok()?;
    let target = std::str::from_utf8(&data[43..43 + len]).ok()?;
    (md5_hex(target.as_bytes()) == hash).then(|| target.to_string())
}

/// MD5, only for the format's integrity check (not for security).
mod md5_lite {
    pub fn md5_hex(data: &[u8]) -> String {
        use md5::{Digest, Md5};
        hex::encode(Md5::digest(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_tampering() {
        let enc = encode("../docs/report.txt").unwrap();
        assert_eq!(enc.len() as u64, XSYM_LEN);
        assert!(enc.starts_with(b"XSym\n0018\n"));
        assert_eq!(decode(&enc).as_deref(), Some("../docs/report.txt"));
        let mut bad = enc.clone();
        bad[45] = b'X';
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(b"XSym\n"), None);
        assert!(encode(&"x".repeat(2000)).is_none());
    }

    #[test]
    fn md5_matches_the_reference_value() {
        // RFC 1321 test suite: MD5("abc").
        assert_eq!(
            md5_lite::md5_hex(b"abc"),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }
}
