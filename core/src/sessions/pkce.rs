//! PKCE (RFC 7636, S256 only), OAuth `state` and session ids, all drawn
//! from the injected crypto RNG.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::engine::secret::Secret;

/// A PKCE verifier: 32 random bytes as base64url (43 characters).
pub fn verifier<R: CryptoRng + ?Sized>(rng: &mut R) -> Secret {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    Secret::new(URL_SAFE_NO_PAD.encode(b))
}

/// The S256 challenge of a verifier: base64url(SHA-256(verifier)).
#[must_use]
pub fn challenge(verifier: &Secret) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose().as_bytes()))
}

/// An OAuth `state`: 128 random bits as base64url, independent of the
/// verifier.
pub fn state<R: CryptoRng + ?Sized>(rng: &mut R) -> Secret {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    Secret::new(URL_SAFE_NO_PAD.encode(b))
}

/// A session id: 128 random bits as 32 lowercase hex characters.
pub fn session_id<R: CryptoRng + ?Sized>(rng: &mut R) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time string equality (for `state`).
#[must_use]
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let v = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(challenge(&v), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn shapes_and_independence() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let v = verifier(&mut rng);
        let s = state(&mut rng);
        let id = session_id(&mut rng);
        assert_eq!(v.expose().len(), 43);
        assert_eq!(s.expose().len(), 22);
        assert_ne!(v.expose(), s.expose());
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
