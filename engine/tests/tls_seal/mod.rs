//! Sealing TLS records by hand with ring, for the tests and fuzz target of the adopted record
//! layer: the last server record `tls::adopt` checks, and the client's records. Follows
//! RFC 8446 §5.2/§7.3 (TLS 1.3) and RFC 5246 §5/§6.2.3.3, RFC 5288, RFC 7905 (TLS 1.2),
//! independently of the engine's code. Used by `engine/tests/prop_tls_record.rs` and
//! `fuzz/src/lib.rs`.
#![allow(dead_code)]

use nextcloud_push_engine::tls::{self, RecordLayer, TlsState, TLS13};
use ring::{aead, hkdf, hmac};

pub const APPLICATION_DATA: u8 = 23;

/// The suites the layer supports: (version, id).
pub const SUITES: [(u16, u16); 9] = tls::SUPPORTED_SUITES;

struct Params {
    tls13: bool,
    aead: &'static aead::Algorithm,
    key_len: usize,
    sha384: bool,
}

fn params(version: u16, suite: u16) -> Params {
    let (aead, key_len, sha384) = match suite {
        0x1301 | 0xC02B | 0xC02F => (&aead::AES_128_GCM, 16, false),
        0x1302 | 0xC02C | 0xC030 => (&aead::AES_256_GCM, 32, true),
        _ => (&aead::CHACHA20_POLY1305, 32, false),
    };
    Params { tls13: version == TLS13, aead, key_len, sha384 }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand_label(sha384: bool, secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    let alg = if sha384 { hkdf::HKDF_SHA384 } else { hkdf::HKDF_SHA256 };
    let full = format!("tls13 {label}");
    let info: [&[u8]; 5] =
        [&(len as u16).to_be_bytes(), &[full.len() as u8], full.as_bytes(), &[0], &[]];
    let mut out = vec![0u8; len];
    hkdf::Prk::new_less_safe(alg, secret).expand(&info, Len(len)).unwrap().fill(&mut out).unwrap();
    out
}

fn prf(sha384: bool, secret: &[u8], label: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let key = hmac::Key::new(if sha384 { hmac::HMAC_SHA384 } else { hmac::HMAC_SHA256 }, secret);
    let label_seed = [label, seed].concat();
    let mut a = hmac::sign(&key, &label_seed).as_ref().to_vec();
    let mut out = Vec::new();
    while out.len() < len {
        out.extend_from_slice(hmac::sign(&key, &[&a[..], &label_seed].concat()).as_ref());
        a = hmac::sign(&key, &a).as_ref().to_vec();
    }
    out.truncate(len);
    out
}

/// One direction's key and IV (TLS 1.2 AES-GCM: the 4-byte salt).
pub struct Keys {
    tls13: bool,
    gcm12: bool,
    key: aead::LessSafeKey,
    iv: Vec<u8>,
}

/// (server write keys, client write keys) of `state`.
pub fn keys(state: &TlsState) -> (Keys, Keys) {
    let p = params(state.version, state.suite);
    let make = |key: &[u8], iv: Vec<u8>| Keys {
        tls13: p.tls13,
        gcm12: !p.tls13 && p.aead != &aead::CHACHA20_POLY1305,
        key: aead::LessSafeKey::new(aead::UnboundKey::new(p.aead, key).unwrap()),
        iv,
    };
    if p.tls13 {
        let dir = |secret: &[u8]| {
            make(
                &expand_label(p.sha384, secret, "key", p.key_len),
                expand_label(p.sha384, secret, "iv", 12),
            )
        };
        (dir(&state.server_secret), dir(&state.client_secret))
    } else {
        let iv_len = if p.aead == &aead::CHACHA20_POLY1305 { 12 } else { 4 };
        let seed = [&state.server_random[..], &state.client_random[..]].concat();
        let block = prf(
            p.sha384,
            &state.master_secret,
            b"key expansion",
            &seed,
            2 * p.key_len + 2 * iv_len,
        );
        let (client_key, rest) = block.split_at(p.key_len);
        let (server_key, rest) = rest.split_at(p.key_len);
        let (client_iv, server_iv) = rest.split_at(iv_len);
        (make(server_key, server_iv.to_vec()), make(client_key, client_iv.to_vec()))
    }
}

/// Seals one record: TLS 1.3 `data ‖ typ ‖ padding` under an application_data header; TLS 1.2
/// `data` under a `typ` header (AES-GCM with the explicit nonce `explicit`).
pub fn seal(keys: &Keys, seq: u64, typ: u8, data: &[u8], padding: usize, explicit: u64) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    let mut body = Vec::new();
    let mut plain = data.to_vec();
    if keys.gcm12 {
        nonce[..4].copy_from_slice(&keys.iv);
        nonce[4..].copy_from_slice(&explicit.to_be_bytes());
        body.extend_from_slice(&explicit.to_be_bytes());
    } else {
        nonce.copy_from_slice(&keys.iv);
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
    }
    let outer = if keys.tls13 { APPLICATION_DATA } else { typ };
    let aad: Vec<u8> = if keys.tls13 {
        plain.push(typ);
        plain.extend(std::iter::repeat_n(0, padding));
        let len = (plain.len() + 16) as u16;
        vec![outer, 3, 3, (len >> 8) as u8, len as u8]
    } else {
        let len = data.len() as u16;
        [&seq.to_be_bytes()[..], &[typ, 3, 3], &len.to_be_bytes()].concat()
    };
    let nonce = aead::Nonce::assume_unique_for_key(nonce);
    keys.key.seal_in_place_append_tag(nonce, aead::Aad::from(&aad), &mut plain).unwrap();
    body.extend_from_slice(&plain);
    let len = body.len() as u16;
    let mut record = vec![outer, 3, 3, (len >> 8) as u8, len as u8];
    record.extend_from_slice(&body);
    record
}

/// A session as the Apache side would hand it over, with its last server record sealed.
pub fn state(suite: usize, secret: u8, read_seq: u64, write_seq: u64, explicit: u64) -> TlsState {
    let (version, id) = SUITES[suite];
    let p = params(version, id);
    let mut s = TlsState::default();
    s.version = version;
    s.suite = id;
    let hash_len = if p.sha384 { 48 } else { 32 };
    if p.tls13 {
        s.client_secret = (0..hash_len).map(|i| secret ^ i as u8).collect();
        s.server_secret = (0..hash_len).map(|i| secret.wrapping_add(i as u8)).collect();
    } else {
        s.master_secret = (0..48).map(|i| secret ^ (3 * i) as u8).collect();
        s.client_random = (0..32).map(|i| secret.wrapping_mul(i as u8)).collect();
        s.server_random = (0..32).map(|i| secret.wrapping_sub(i as u8)).collect();
    }
    s.read_seq = read_seq;
    s.write_seq = write_seq;
    s.max_plaintext = 16384;
    let (server, _) = keys(&s);
    s.last_server_record =
        seal(&server, write_seq - 1, APPLICATION_DATA, b"HTTP/1.1 101", 0, explicit);
    s
}

pub fn adopted(suite: usize, secret: u8, read_seq: u64) -> (RecordLayer, Keys) {
    let state = state(suite, secret, read_seq, 7, 0x0102_0304_0506_0708);
    let (_, client) = keys(&state);
    let layer = tls::adopt(state).unwrap_or_else(|e| panic!("adopt suite {suite}: {e}"));
    (layer, client)
}
