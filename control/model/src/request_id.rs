//! Request ids (wire-contract §1.3).

use std::fmt;

/// A request id: an inbound `X-Request-Id` of 1–128 printable ASCII characters
/// (0x21–0x7E), or one the server generated.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Accepts an inbound header value when it follows the rule; `None` otherwise, and the
    /// caller generates one.
    pub fn from_inbound(value: &[u8]) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value.iter().all(|b| (0x21..=0x7e).contains(b));
        ok.then(|| Self(String::from_utf8_lossy(value).into_owned()))
    }

    /// Wraps an id the server generated (a UUIDv7).
    pub fn generated(id: String) -> Self {
        Self(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_ids_must_be_printable_ascii_up_to_128() {
        assert!(RequestId::from_inbound(b"abc-123").is_some());
        assert!(RequestId::from_inbound(&[b'x'; 128]).is_some());
        for bad in [
            &b""[..],
            &[b'x'; 129][..],
            b"a b",
            b"tab\t",
            "é".as_bytes(),
            b"nl\n",
        ] {
            assert!(RequestId::from_inbound(bad).is_none(), "{bad:?}");
        }
    }
}
