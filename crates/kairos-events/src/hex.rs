//! Lowercase hex: how digests, HMACs and signatures are written in events and tables.

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower- or upper-case hex `text`; `None` unless it is whole bytes of hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The 32 bytes (a SHA-256 digest or HMAC) of `text`; `None` for anything else.
pub fn decode32(text: &str) -> Option<[u8; 32]> {
    decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_anything_else_is_refused() {
        assert_eq!(encode(&[0, 255, 16]), "00ff10");
        assert_eq!(decode("00FF10"), Some(vec![0, 255, 16]));
        for bad in ["zz", "0", "0g", "é0"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode32(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode32(&"ab".repeat(31)), None);
    }
}
