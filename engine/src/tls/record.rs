//! The record layer proper: keys, sealing and opening of single records, and the protocol rules
//! for what arrives inside them (alerts, TLS 1.3 KeyUpdate, renegotiation, empty records).
//! No I/O here; [`super::TlsStream`] drives it.

use super::kdf::{hkdf_expand_label, tls12_prf, Hash};
use super::{TlsError, TlsState, TLS12, TLS13};
use ring::aead;
use std::time::{Duration, Instant};
use zeroize::Zeroize;

pub(crate) const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub(crate) const CT_ALERT: u8 = 21;
pub(crate) const CT_HANDSHAKE: u8 = 22;
pub(crate) const CT_APPLICATION_DATA: u8 = 23;

/// Record header length.
pub const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM explicit nonce length (RFC 5288).
const EXPLICIT_LEN: usize = 8;
/// The protocol's plaintext limit (2^14).
pub const MAX_PLAINTEXT: usize = 16384;
/// Largest ciphertext body accepted in TLS 1.3 (RFC 8446 §5.2: 2^14 + 256).
pub const MAX_CIPHERTEXT_TLS13: usize = MAX_PLAINTEXT + 256;
/// Largest ciphertext body accepted in TLS 1.2 (RFC 5246 §6.2.3: 2^14 + 2048).
pub const MAX_CIPHERTEXT_TLS12: usize = MAX_PLAINTEXT + 2048;
/// Consecutive records without application data that are tolerated (empty application data,
/// ignored warnings, user_canceled, KeyUpdates); OpenSSL's `MAX_EMPTY_RECORDS` is 32.
pub const MAX_EMPTY_RECORDS: u8 = 32;
/// KeyUpdates accepted from the peer per second (GnuTLS allows 8 per second); one more within
/// the same second is fatal (`unexpected_message`).
pub const MAX_KEY_UPDATES_PER_SECOND: u8 = 8;
/// RFC 8446 §5.5: AES-GCM keys may protect 2^24.5 full-size records; we switch after 2^24
/// records (the KeyUpdate record included), as rustls does.
pub const AES_GCM_KEY_UPDATE_LIMIT: u64 = 1 << 24;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;
const HS_KEY_UPDATE: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::ChaCha20Poly1305 => 32,
        }
    }

    fn is_gcm(self) -> bool {
        self != Cipher::ChaCha20Poly1305
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Suite {
    id: u16,
    tls13: bool,
    cipher: Cipher,
    hash: Hash,
}

impl Suite {
    fn find(version: u16, id: u16) -> Result<Suite, TlsError> {
        let (tls13, cipher, hash) = match (version, id) {
            (TLS13, 0x1301) => (true, Cipher::Aes128Gcm, Hash::Sha256),
            (TLS13, 0x1302) => (true, Cipher::Aes256Gcm, Hash::Sha384),
            (TLS13, 0x1303) => (true, Cipher::ChaCha20Poly1305, Hash::Sha256),
            // ECDHE_ECDSA / ECDHE_RSA _WITH_AES_128_GCM_SHA256
            (TLS12, 0xC02B | 0xC02F) => (false, Cipher::Aes128Gcm, Hash::Sha256),
            // ECDHE_ECDSA / ECDHE_RSA _WITH_AES_256_GCM_SHA384
            (TLS12, 0xC02C | 0xC030) => (false, Cipher::Aes256Gcm, Hash::Sha384),
            // ECDHE_RSA / ECDHE_ECDSA _WITH_CHACHA20_POLY1305_SHA256 (RFC 7905)
            (TLS12, 0xCCA8 | 0xCCA9) => (false, Cipher::ChaCha20Poly1305, Hash::Sha256),
            (TLS12 | TLS13, _) => {
                return Err(TlsError::UnsupportedSuite { version, suite: id });
            }
            _ => return Err(TlsError::UnsupportedVersion(version)),
        };
        Ok(Suite { id, tls13, cipher, hash })
    }

    /// The implicit IV length: 12 bytes, except the 4-byte salt of TLS 1.2 AES-GCM.
    fn iv_len(self) -> usize {
        if !self.tls13 && self.cipher.is_gcm() {
            4
        } else {
            12
        }
    }
}

/// A TLS 1.3 traffic secret (up to SHA-384), wiped on drop.
struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    fn empty() -> Secret {
        Secret { bytes: [0; 48], len: 0 }
    }

    fn new(secret: &[u8]) -> Secret {
        let mut s = Secret::empty();
        s.bytes[..secret.len()].copy_from_slice(secret);
        s.len = secret.len() as u8;
        s
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// One direction: the AEAD key, its IV (TLS 1.2 AES-GCM: the 4-byte salt in `iv[..4]`), the next
/// sequence number and, in TLS 1.3, the traffic secret for the next KeyUpdate.
struct Direction {
    key: aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    secret: Secret,
}

impl Drop for Direction {
    fn drop(&mut self) {
        // ring keeps its expanded key schedule private and does not wipe it; the IV is ours.
        self.iv.zeroize();
    }
}

impl Direction {
    fn new(
        cipher: Cipher,
        key: &[u8],
        iv: &[u8],
        seq: u64,
        secret: Secret,
    ) -> Result<Self, TlsError> {
        let key = aead::UnboundKey::new(cipher.algorithm(), key)
            .map_err(|_| TlsError::Internal("AEAD key length"))?;
        let mut iv12 = [0u8; 12];
        iv12[..iv.len()].copy_from_slice(iv);
        Ok(Direction { key: aead::LessSafeKey::new(key), iv: iv12, seq, secret })
    }

    /// TLS 1.3 keys from a traffic secret (RFC 8446 §7.3).
    fn tls13(suite: Suite, secret: &[u8], seq: u64) -> Result<Self, TlsError> {
        let mut key = [0u8; 32];
        let key = &mut key[..suite.cipher.key_len()];
        let mut iv = [0u8; 12];
        hkdf_expand_label(suite.hash, secret, b"key", b"", key)?;
        hkdf_expand_label(suite.hash, secret, b"iv", b"", &mut iv)?;
        let dir = Direction::new(suite.cipher, key, &iv, seq, Secret::new(secret));
        key.zeroize();
        iv.zeroize();
        dir
    }

    /// The next generation after a KeyUpdate (RFC 8446 §7.2), sequence number 0.
    fn next(&self, suite: Suite) -> Result<Self, TlsError> {
        let mut next = Secret::empty();
        next.len = self.secret.len;
        hkdf_expand_label(
            suite.hash,
            self.secret.get(),
            b"traffic upd",
            b"",
            &mut next.bytes[..usize::from(next.len)],
        )?;
        Direction::tls13(suite, next.get(), 0)
    }

    /// `iv XOR (0^4 ‖ seq)` (TLS 1.3, TLS 1.2 ChaCha20-Poly1305).
    fn xor_nonce(&self, seq: u64) -> aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        aead::Nonce::assume_unique_for_key(nonce)
    }

    /// `salt ‖ explicit` (TLS 1.2 AES-GCM, RFC 5288).
    fn gcm_nonce(&self, explicit: [u8; 8]) -> aead::Nonce {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.iv[..4]);
        nonce[4..].copy_from_slice(&explicit);
        aead::Nonce::assume_unique_for_key(nonce)
    }
}

/// The TLS 1.2 AAD: `seq ‖ type ‖ version ‖ plaintext length` (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// Decrypts `record` (header and body) in place with `dir` at sequence number `seq`. Returns
/// the content type and the plaintext's range within `record`; TLS 1.3 padding is stripped.
fn decrypt(
    suite: Suite,
    dir: &Direction,
    seq: u64,
    record: &mut [u8],
) -> Result<(u8, std::ops::Range<usize>), TlsError> {
    let (header, body) = record.split_at_mut(HEADER_LEN);
    if suite.tls13 {
        if body.len() < TAG_LEN {
            return Err(TlsError::BadRecordMac);
        }
        let aad = aead::Aad::from(&*header);
        let plain = dir
            .key
            .open_in_place(dir.xor_nonce(seq), aad, body)
            .map_err(|_| TlsError::BadRecordMac)?;
        if plain.len() > MAX_PLAINTEXT + 1 {
            return Err(TlsError::RecordOverflow(plain.len()));
        }
        // TLSInnerPlaintext: content ‖ type ‖ zeros
        let Some(last) = plain.iter().rposition(|&b| b != 0) else {
            return Err(TlsError::UnexpectedMessage("TLS 1.3 record without a content type"));
        };
        let typ = plain[last];
        Ok((typ, HEADER_LEN..HEADER_LEN + last))
    } else {
        let typ = header[0];
        let version = [header[1], header[2]];
        // AES-GCM: the explicit nonce leads the body (RFC 5288); ChaCha20: iv XOR seq (RFC 7905)
        let (nonce, offset) = if suite.cipher.is_gcm() {
            if body.len() < EXPLICIT_LEN + TAG_LEN {
                return Err(TlsError::BadRecordMac);
            }
            let mut explicit = [0u8; EXPLICIT_LEN];
            explicit.copy_from_slice(&body[..EXPLICIT_LEN]);
            (dir.gcm_nonce(explicit), EXPLICIT_LEN)
        } else {
            if body.len() < TAG_LEN {
                return Err(TlsError::BadRecordMac);
            }
            (dir.xor_nonce(seq), 0)
        };
        let ciphertext = &mut body[offset..];
        let aad = tls12_aad(seq, typ, version, ciphertext.len() - TAG_LEN);
        let plain = dir
            .key
            .open_in_place(nonce, aead::Aad::from(aad), ciphertext)
            .map_err(|_| TlsError::BadRecordMac)?;
        if plain.len() > MAX_PLAINTEXT {
            return Err(TlsError::RecordOverflow(plain.len()));
        }
        let start = HEADER_LEN + offset;
        Ok((typ, start..start + plain.len()))
    }
}

/// What one record amounted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data at this range of the record buffer (never empty).
    Data(std::ops::Range<usize>),
    /// Nothing for the reader: an empty record, an ignored warning, a KeyUpdate.
    Nothing,
    /// The peer's close_notify: answer with close_notify, then end of stream.
    CloseNotify,
}

/// The adopted TLS session: keys, sequence numbers and the little protocol state of the record
/// layer. Built by [`super::adopt`]. Roughly 1.2 KB inline (two ring AEAD keys with their
/// AES/GHASH tables), no heap.
pub struct RecordLayer {
    suite: Suite,
    /// Server → client.
    write: Direction,
    /// Client → server.
    read: Direction,
    /// TLS 1.2 AES-GCM: the explicit nonce of the next record written (OpenSSL's counter,
    /// continued from `last_server_record`).
    explicit_nonce: u64,
    /// Records per write key before a KeyUpdate is sent (TLS 1.3), the KeyUpdate included.
    key_update_limit: u64,
    max_plaintext: u16,
    /// TLS 1.3: a KeyUpdate(update_not_requested) must precede the next application data.
    send_key_update: bool,
    /// TLS 1.3: the start of a handshake message split across records (only KeyUpdate, 5 bytes).
    hs_buf: [u8; 5],
    hs_len: u8,
    /// Consecutive records without application data.
    empty_records: u8,
    /// KeyUpdate rate: start of the current one-second window and KeyUpdates within it.
    key_update_window: Option<Instant>,
    key_updates: u8,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("version", &self.version())
            .field("suite", &format_args!("{:#06x}", self.suite.id))
            .field("read_seq", &self.read.seq)
            .field("write_seq", &self.write.seq)
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// See [`super::adopt`].
    pub(crate) fn adopt(state: &TlsState) -> Result<RecordLayer, TlsError> {
        let mut layer = RecordLayer::from_state(state, false)?;
        layer.self_check(state)?;
        Ok(layer)
    }

    /// The keys of `state`, as the server (`peer == false`) or as the client (`peer == true`,
    /// for tests: writes with the client keys, reads with the server keys). No self-check.
    pub(crate) fn from_state(state: &TlsState, peer: bool) -> Result<RecordLayer, TlsError> {
        let suite = Suite::find(state.version, state.suite)?;
        if !(64..=MAX_PLAINTEXT).contains(&state.max_plaintext) {
            return Err(TlsError::InvalidState("max_plaintext must be within 64..=16384"));
        }
        let (server, client) = if suite.tls13 {
            let need = suite.hash.len();
            check_len("client_secret", &state.client_secret, need)?;
            check_len("server_secret", &state.server_secret, need)?;
            (
                Direction::tls13(suite, &state.server_secret, 0)?,
                Direction::tls13(suite, &state.client_secret, 0)?,
            )
        } else {
            if state.owes_key_update {
                return Err(TlsError::InvalidState("owes_key_update in TLS 1.2"));
            }
            check_len("master_secret", &state.master_secret, 48)?;
            check_len("client_random", &state.client_random, 32)?;
            check_len("server_random", &state.server_random, 32)?;
            let (kl, il) = (suite.cipher.key_len(), suite.iv_len());
            let mut block = [0u8; 2 * 32 + 2 * 12];
            let block = &mut block[..2 * kl + 2 * il];
            tls12_prf(
                suite.hash,
                &state.master_secret,
                b"key expansion",
                &[&state.server_random, &state.client_random],
                block,
            );
            // client_write_key, server_write_key, client_write_IV, server_write_IV
            let (client_key, rest) = block.split_at(kl);
            let (server_key, rest) = rest.split_at(kl);
            let (client_iv, server_iv) = rest.split_at(il);
            let dirs = (
                Direction::new(suite.cipher, server_key, server_iv, 0, Secret::empty()),
                Direction::new(suite.cipher, client_key, client_iv, 0, Secret::empty()),
            );
            block.zeroize();
            (dirs.0?, dirs.1?)
        };
        let (mut write, mut read) = if peer { (client, server) } else { (server, client) };
        write.seq = if peer { state.read_seq } else { state.write_seq };
        read.seq = if peer { state.write_seq } else { state.read_seq };
        Ok(RecordLayer {
            suite,
            write,
            read,
            explicit_nonce: 0,
            key_update_limit: match suite.cipher {
                Cipher::ChaCha20Poly1305 => u64::MAX,
                _ => AES_GCM_KEY_UPDATE_LIMIT,
            },
            max_plaintext: state.max_plaintext as u16,
            send_key_update: state.owes_key_update && !peer,
            hs_buf: [0; 5],
            hs_len: 0,
            empty_records: 0,
            key_update_window: None,
            key_updates: 0,
        })
    }

    /// Opens `last_server_record` with the write key at `write_seq - 1`; for TLS 1.2 AES-GCM
    /// continues OpenSSL's explicit nonce counter after it.
    fn self_check(&mut self, state: &TlsState) -> Result<(), TlsError> {
        let record = &state.last_server_record;
        if record.len() < HEADER_LEN {
            return Err(TlsError::SelfCheckFailed("last_server_record is shorter than a header"));
        }
        let body = usize::from(u16::from_be_bytes([record[3], record[4]]));
        if record.len() != HEADER_LEN + body {
            return Err(TlsError::SelfCheckFailed("last_server_record is not one whole record"));
        }
        if self.suite.tls13 && record[0] != CT_APPLICATION_DATA {
            return Err(TlsError::SelfCheckFailed("last_server_record is not a TLS 1.3 record"));
        }
        let Some(seq) = self.write.seq.checked_sub(1) else {
            return Err(TlsError::SelfCheckFailed("write_seq is 0"));
        };
        let mut copy = record.clone();
        let opened = decrypt(self.suite, &self.write, seq, &mut copy);
        copy.zeroize();
        if opened.is_err() {
            return Err(TlsError::SelfCheckFailed(
                "last_server_record does not open with the server key at write_seq - 1",
            ));
        }
        if !self.suite.tls13 && self.suite.cipher.is_gcm() {
            let mut e = [0u8; 8];
            e.copy_from_slice(&record[HEADER_LEN..HEADER_LEN + EXPLICIT_LEN]);
            // OpenSSL's counter started at a random value and may wrap; uniqueness holds as
            // long as fewer than 2^64 records use this key.
            self.explicit_nonce = u64::from_be_bytes(e).wrapping_add(1);
        }
        Ok(())
    }

    /// 0x0303 or 0x0304.
    pub fn version(&self) -> u16 {
        if self.suite.tls13 {
            TLS13
        } else {
            TLS12
        }
    }

    /// The IANA cipher suite id.
    pub fn suite(&self) -> u16 {
        self.suite.id
    }

    /// The sequence number of the next record read (under the current read key).
    pub fn read_seq(&self) -> u64 {
        self.read.seq
    }

    /// The sequence number of the next record written (under the current write key).
    pub fn write_seq(&self) -> u64 {
        self.write.seq
    }

    /// The largest plaintext put into one record.
    pub fn max_plaintext(&self) -> usize {
        usize::from(self.max_plaintext)
    }

    /// TLS 1.3: whether a KeyUpdate(update_not_requested) goes out before the next application
    /// data (owed to the peer, or the key's record limit is reached).
    pub fn key_update_pending(&self) -> bool {
        self.send_key_update
    }

    /// Test hook: records per TLS 1.3 write key, the KeyUpdate record included (at least 2;
    /// default 2^24 for AES-GCM, unlimited for ChaCha20-Poly1305).
    #[doc(hidden)]
    pub fn set_key_update_limit(&mut self, records: u64) {
        self.key_update_limit = records.max(2);
    }

    /// Checks a record header before its body arrives; returns the body length.
    pub fn check_header(&self, header: &[u8]) -> Result<usize, TlsError> {
        if header.len() < HEADER_LEN {
            return Err(TlsError::BadLength {
                what: "record header",
                len: header.len(),
                expected: HEADER_LEN,
            });
        }
        let typ = header[0];
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if self.suite.tls13 {
            if typ != CT_APPLICATION_DATA {
                return Err(TlsError::UnexpectedMessage(
                    "TLS 1.3 record with an outer type other than application_data",
                ));
            }
            if len > MAX_CIPHERTEXT_TLS13 {
                return Err(TlsError::RecordOverflow(len));
            }
        } else {
            match typ {
                CT_ALERT | CT_HANDSHAKE | CT_APPLICATION_DATA => {}
                CT_CHANGE_CIPHER_SPEC => {
                    return Err(TlsError::UnexpectedMessage("ChangeCipherSpec after the handshake"))
                }
                _ => return Err(TlsError::UnexpectedMessage("unknown record type")),
            }
            if len > MAX_CIPHERTEXT_TLS12 {
                return Err(TlsError::RecordOverflow(len));
            }
        }
        Ok(len)
    }

    /// Opens one complete record (`record` = header ‖ body, exactly) in place and applies the
    /// protocol rules. `Err` is fatal: send [`TlsError::alert`] and stop.
    pub fn open_record(&mut self, record: &mut [u8]) -> Result<Opened, TlsError> {
        if record.len() < HEADER_LEN {
            return Err(TlsError::DecodeError("short record"));
        }
        let len = self.check_header(record)?;
        if record.len() != HEADER_LEN + len {
            return Err(TlsError::DecodeError("record length does not match its header"));
        }
        if self.read.seq == u64::MAX {
            return Err(TlsError::SequenceExhausted);
        }
        let (typ, range) = decrypt(self.suite, &self.read, self.read.seq, record)?;
        self.read.seq += 1;
        if self.hs_len > 0 && typ != CT_HANDSHAKE {
            return Err(TlsError::UnexpectedMessage("record interleaved with a handshake message"));
        }
        match typ {
            CT_APPLICATION_DATA if range.is_empty() => {
                self.empty_record()?;
                Ok(Opened::Nothing)
            }
            CT_APPLICATION_DATA => {
                self.empty_records = 0;
                Ok(Opened::Data(range))
            }
            CT_ALERT => {
                let &[level, description] = &record[range] else {
                    return Err(TlsError::DecodeError("alert record is not exactly one alert"));
                };
                match description {
                    CLOSE_NOTIFY => Ok(Opened::CloseNotify),
                    USER_CANCELED => {
                        self.empty_record()?;
                        Ok(Opened::Nothing)
                    }
                    _ if !self.suite.tls13 && level == ALERT_WARNING => {
                        self.empty_record()?;
                        Ok(Opened::Nothing)
                    }
                    _ => Err(TlsError::PeerAlert { level, description }),
                }
            }
            CT_HANDSHAKE if self.suite.tls13 => {
                if range.is_empty() {
                    return Err(TlsError::UnexpectedMessage("empty handshake record"));
                }
                self.handshake(&record[range])?;
                Ok(Opened::Nothing)
            }
            // TLS 1.2: a ClientHello after the handshake is a renegotiation attempt.
            CT_HANDSHAKE => Err(TlsError::Renegotiation),
            _ => Err(TlsError::UnexpectedMessage("unexpected content type")),
        }
    }

    fn empty_record(&mut self) -> Result<(), TlsError> {
        self.empty_records += 1;
        if self.empty_records > MAX_EMPTY_RECORDS {
            return Err(TlsError::TooManyEmptyRecords);
        }
        Ok(())
    }

    /// TLS 1.3 post-handshake messages: only KeyUpdate is accepted.
    fn handshake(&mut self, mut data: &[u8]) -> Result<(), TlsError> {
        while !data.is_empty() {
            let have = usize::from(self.hs_len);
            let take = (self.hs_buf.len() - have).min(data.len());
            self.hs_buf[have..have + take].copy_from_slice(&data[..take]);
            self.hs_len += take as u8;
            data = &data[take..];
            if self.hs_buf[0] != HS_KEY_UPDATE {
                return Err(TlsError::UnexpectedMessage("handshake message other than KeyUpdate"));
            }
            let header_end = usize::from(self.hs_len).min(4);
            if self.hs_buf[1..header_end].iter().zip([0u8, 0, 1]).any(|(a, b)| *a != b) {
                return Err(TlsError::DecodeError("KeyUpdate length is not 1"));
            }
            if usize::from(self.hs_len) < self.hs_buf.len() {
                continue;
            }
            if !data.is_empty() {
                return Err(TlsError::UnexpectedMessage("KeyUpdate not at the end of its record"));
            }
            self.hs_len = 0;
            self.key_update_received(self.hs_buf[4])?;
        }
        Ok(())
    }

    fn key_update_received(&mut self, request: u8) -> Result<(), TlsError> {
        match request {
            0 => {}
            1 => self.send_key_update = true,
            _ => return Err(TlsError::IllegalParameter("KeyUpdate request")),
        }
        self.empty_record()?;
        let now = Instant::now();
        match self.key_update_window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                self.key_updates += 1;
                if self.key_updates > MAX_KEY_UPDATES_PER_SECOND {
                    return Err(TlsError::KeyUpdateRate);
                }
            }
            _ => {
                self.key_update_window = Some(now);
                self.key_updates = 1;
            }
        }
        self.read = self.read.next(self.suite)?;
        Ok(())
    }

    /// Seals `data` as application data records of at most `max_plaintext` bytes each, appended
    /// to `out`; a KeyUpdate goes first when one is owed or the key's limit is reached.
    pub fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        for chunk in data.chunks(self.max_plaintext()) {
            self.before_data_record(out)?;
            self.seal_record(CT_APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Seals an alert record (`level` 1 warning, 2 fatal).
    pub fn seal_alert(
        &mut self,
        level: u8,
        description: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        self.seal_record(CT_ALERT, &[level, description], out)
    }

    /// Seals close_notify.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.seal_alert(ALERT_WARNING, CLOSE_NOTIFY, out)
    }

    fn before_data_record(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        if !self.suite.tls13 {
            return Ok(());
        }
        // the KeyUpdate itself takes the key's last allowed record
        if self.send_key_update || self.write.seq.saturating_add(1) >= self.key_update_limit {
            self.seal_record(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0], out)?;
            self.write = self.write.next(self.suite)?;
            self.send_key_update = false;
        }
        Ok(())
    }

    /// Seals one record of content type `typ` (`data.len() <= max_plaintext`) onto `out`.
    pub(crate) fn seal_record(
        &mut self,
        typ: u8,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        let seq = self.write.seq;
        // never use the last value, so the counter cannot wrap
        if seq == u64::MAX {
            return Err(TlsError::SequenceExhausted);
        }
        let tls13 = self.suite.tls13;
        // TLS 1.2 AES-GCM: the explicit nonce goes into the record (RFC 5288)
        let explicit = (!tls13 && self.suite.cipher.is_gcm()).then(|| {
            let explicit = self.explicit_nonce.to_be_bytes();
            self.explicit_nonce = self.explicit_nonce.wrapping_add(1);
            explicit
        });
        let offset = if explicit.is_some() { EXPLICIT_LEN } else { 0 };
        // TLS 1.3: TLSInnerPlaintext = data ‖ type, the outer type is application_data
        let inner_len = data.len() + usize::from(tls13);
        let [hi, lo] = ((offset + inner_len + TAG_LEN) as u16).to_be_bytes();
        let header = [if tls13 { CT_APPLICATION_DATA } else { typ }, 3, 3, hi, lo];
        let (nonce, aad, aad_len) = match explicit {
            _ if tls13 => {
                let mut aad = [0u8; 13];
                aad[..HEADER_LEN].copy_from_slice(&header);
                (self.write.xor_nonce(seq), aad, HEADER_LEN)
            }
            Some(explicit) => {
                (self.write.gcm_nonce(explicit), tls12_aad(seq, typ, [3, 3], data.len()), 13)
            }
            None => (self.write.xor_nonce(seq), tls12_aad(seq, typ, [3, 3], data.len()), 13),
        };
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(explicit.as_ref().map_or(&[][..], |e| &e[..]));
        out.extend_from_slice(data);
        if tls13 {
            out.push(typ);
        }
        let sealed = self.write.key.seal_in_place_separate_tag(
            nonce,
            aead::Aad::from(&aad[..aad_len]),
            &mut out[start + HEADER_LEN + offset..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.write.seq = seq + 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(TlsError::Internal("AEAD seal"))
            }
        }
    }
}

#[cfg(test)]
impl RecordLayer {
    /// The client's view of `state` (writes with the client keys, reads with the server keys).
    pub(super) fn peer(state: &TlsState) -> RecordLayer {
        RecordLayer::from_state(state, true).expect("peer keys")
    }

    /// Switches the write key as a KeyUpdate would, without sending one.
    pub(super) fn switch_write_key(&mut self) {
        self.write = self.write.next(self.suite).expect("next write key");
    }

    /// Decrypts the next record without applying any protocol rule: (content type, plaintext).
    pub(super) fn open_raw(&mut self, record: &mut [u8]) -> (u8, Vec<u8>) {
        let (typ, range) = decrypt(self.suite, &self.read, self.read.seq, record).expect("opens");
        self.read.seq += 1;
        (typ, record[range].to_vec())
    }

    pub(super) fn explicit_nonce(&self) -> u64 {
        self.explicit_nonce
    }

    pub(super) fn set_explicit_nonce(&mut self, nonce: u64) {
        self.explicit_nonce = nonce;
    }
}

fn check_len(what: &'static str, value: &[u8], expected: usize) -> Result<(), TlsError> {
    if value.len() != expected {
        return Err(TlsError::BadLength { what, len: value.len(), expected });
    }
    Ok(())
}

/// The alert to send for a fatal error: (level, description).
pub(crate) fn alert_for(error: &TlsError) -> Option<(u8, u8)> {
    match error {
        TlsError::BadRecordMac => Some((ALERT_FATAL, 20)),
        TlsError::RecordOverflow(_) => Some((ALERT_FATAL, 22)),
        TlsError::UnexpectedMessage(_)
        | TlsError::TooManyEmptyRecords
        | TlsError::KeyUpdateRate => Some((ALERT_FATAL, 10)),
        TlsError::DecodeError(_) => Some((ALERT_FATAL, 50)),
        TlsError::IllegalParameter(_) => Some((ALERT_FATAL, 47)),
        TlsError::Renegotiation => Some((ALERT_WARNING, 100)),
        TlsError::Internal(_) => Some((ALERT_FATAL, 80)),
        _ => None,
    }
}

/// `HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)` for `suite` (RFC 8446 §7.2).
pub(crate) fn next_traffic_secret(suite: u16, secret: &[u8]) -> Result<Vec<u8>, TlsError> {
    let suite = Suite::find(TLS13, suite)?;
    check_len("secret", secret, suite.hash.len())?;
    let mut out = vec![0u8; suite.hash.len()];
    hkdf_expand_label(suite.hash, secret, b"traffic upd", b"", &mut out)?;
    Ok(out)
}
