//! Key derivation for the adopted record layer: TLS 1.3 HKDF-Expand-Label (RFC 8446 §7.1) and the
//! TLS 1.2 PRF (RFC 5246 §5), both on ring's `hkdf` / `hmac`.

use super::TlsError;
use ring::{hkdf, hmac};

/// The suite's hash (PRF hash in TLS 1.2, HKDF hash in TLS 1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha384,
}

impl Hash {
    pub(crate) fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Hash::Sha256 => hkdf::HKDF_SHA256,
            Hash::Sha384 => hkdf::HKDF_SHA384,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha384 => hmac::HMAC_SHA384,
        }
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// `HKDF-Expand-Label(secret, label, context, out.len())` of RFC 8446 §7.1 (the "tls13 " prefix
/// is added here).
pub(crate) fn hkdf_expand_label(
    hash: Hash,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), TlsError> {
    let length = u16::try_from(out.len()).map_err(|_| TlsError::Internal("HKDF length"))?;
    let label_len = u8::try_from(6 + label.len()).map_err(|_| TlsError::Internal("HKDF label"))?;
    let context_len =
        u8::try_from(context.len()).map_err(|_| TlsError::Internal("HKDF context"))?;
    let length = length.to_be_bytes();
    let info: [&[u8]; 6] = [&length, &[label_len], b"tls13 ", label, &[context_len], context];
    hkdf::Prk::new_less_safe(hash.hkdf(), secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| TlsError::Internal("HKDF output too long"))
}

/// The TLS 1.2 PRF of RFC 5246 §5: `P_hash(secret, label ‖ seed)`; `seed` is given in parts.
pub(crate) fn tls12_prf(hash: Hash, secret: &[u8], label: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    let key = hmac::Key::new(hash.hmac(), secret);
    // A(1) = HMAC(secret, label ‖ seed)
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(label);
    for part in seed {
        ctx.update(part);
    }
    let mut a = ctx.sign();
    for chunk in out.chunks_mut(hash.len()) {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(a.as_ref());
        ctx.update(label);
        for part in seed {
            ctx.update(part);
        }
        let p = ctx.sign();
        chunk.copy_from_slice(&p.as_ref()[..chunk.len()]);
        a = hmac::sign(&key, a.as_ref());
    }
}
