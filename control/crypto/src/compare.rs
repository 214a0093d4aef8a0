//! Constant-time comparison of byte strings.

use subtle::ConstantTimeEq;

/// Compares two byte strings in time that depends only on their lengths.
///
/// Use this for every comparison of a secret, a MAC tag or a hash against a
/// value that came from outside. Strings of different lengths compare unequal
/// (the length itself is not treated as secret).
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn equal_bytes_compare_equal() {
        assert!(ct_eq(b"caracal", b"caracal"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn different_bytes_or_lengths_compare_unequal() {
        assert!(!ct_eq(b"caracal", b"caracaL"));
        assert!(!ct_eq(b"caracal", b"caraca"));
        assert!(!ct_eq(b"", b"x"));
    }
}
