//! Random bytes and keys from the operating system's CSPRNG.

use rand::{RngCore, rngs::OsRng};
use zeroize::Zeroizing;

/// The operating system's random number generator could not deliver bytes.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {cause}")]
pub struct RandomError {
    cause: rand::Error,
}

/// Fills `buf` with bytes from the operating system's CSPRNG.
///
/// # Errors
///
/// [`RandomError`] when the operating system refuses to deliver random bytes;
/// the buffer must then not be used.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|cause| RandomError { cause })
}

/// Generates a fresh 32-byte key as 64 lowercase hex characters, as printed by
/// `caracal keys generate` (suitable for `ZONE_KEK` and the HMAC keys).
///
/// # Errors
///
/// [`RandomError`] when the operating system's CSPRNG fails.
pub fn random_key_hex() -> Result<Zeroizing<String>, RandomError> {
    let mut key = Zeroizing::new([0_u8; 32]);
    fill_random(key.as_mut_slice())?;
    Ok(Zeroizing::new(hex::encode(key.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::{fill_random, random_key_hex};

    #[test]
    fn random_key_is_64_lowercase_hex_characters() {
        let key = random_key_hex().unwrap();
        assert_eq!(key.len(), 64);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn two_random_keys_differ() {
        assert_ne!(*random_key_hex().unwrap(), *random_key_hex().unwrap());
    }

    #[test]
    fn fill_random_writes_the_whole_buffer() {
        let mut a = [0_u8; 64];
        let mut b = [0_u8; 64];
        fill_random(&mut a).unwrap();
        fill_random(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
