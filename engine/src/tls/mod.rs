//! Continuing a live TLS session in user space: the daemon's record layer for TLS sessions that
//! mod_ssl handed over after the `101` (design: `tls-handoff.md` §5).
//!
//! The Apache side sends a [`TlsState`] with the client socket; [`adopt`] derives the keys and
//! proves them on the last record OpenSSL wrote (no byte goes out unless that record opens at
//! `write_seq - 1`, so a miscounted sequence number can never reuse a nonce). [`TlsStream`] then
//! carries the WebSocket session: an `AsyncRead + AsyncWrite` over the socket that first yields
//! the plaintext Apache already decrypted, then the ciphertext Apache had read ahead, then the
//! socket.
//!
//! Supported: TLS 1.3 (`TLS_AES_128_GCM_SHA256`, `TLS_AES_256_GCM_SHA384`,
//! `TLS_CHACHA20_POLY1305_SHA256`) and TLS 1.2 ECDHE with AES-GCM (RFC 5288) or
//! ChaCha20-Poly1305 (RFC 7905). Crypto is ring's (`aead::LessSafeKey`, `hkdf`, `hmac`).
//!
//! Decisions (see also [`TlsStream`]):
//! * TLS 1.2 renegotiation (any handshake record): warning `no_renegotiation`, then close_notify
//!   and the reader gets [`TlsError::Renegotiation`]; the session ends (what OpenSSL's client
//!   does on `no_renegotiation` anyway, and nothing half-negotiated stays around).
//! * TLS 1.2 AES-GCM explicit nonce: OpenSSL's counter, read from `last_server_record`, + 1 per
//!   record (as the kernel does when OpenSSL hands it a session).
//! * TLS 1.3 KeyUpdate from the client: at most [`MAX_KEY_UPDATES_PER_SECOND`] per second, and it
//!   counts toward [`MAX_EMPTY_RECORDS`] consecutive records without application data. A
//!   requested update is answered lazily, right before our next application data record.
//! * Our own KeyUpdate after [`AES_GCM_KEY_UPDATE_LIMIT`] records per AES-GCM key (ChaCha20:
//!   only before the sequence number would wrap).
//! * Secrets are wiped on drop ([`TlsState`], traffic secrets, IVs); ring's expanded AEAD key
//!   schedules are not (ring offers no way to).

mod kdf;
mod record;
mod stream;
#[cfg(test)]
mod tests;

pub use record::{
    Opened, RecordLayer, AES_GCM_KEY_UPDATE_LIMIT, HEADER_LEN, MAX_CIPHERTEXT_TLS12,
    MAX_CIPHERTEXT_TLS13, MAX_EMPTY_RECORDS, MAX_KEY_UPDATES_PER_SECOND, MAX_PLAINTEXT,
};
pub use stream::TlsStream;

use zeroize::Zeroize;

/// TLS 1.2 on the wire.
pub const TLS12: u16 = 0x0303;
/// TLS 1.3 on the wire (as `SSL_version` reports it).
pub const TLS13: u16 = 0x0304;

/// Every (version, suite) the record layer adopts, as [`TlsState`] names them.
pub const SUPPORTED_SUITES: [(u16, u16); 9] = [
    (TLS13, 0x1301),
    (TLS13, 0x1302),
    (TLS13, 0x1303),
    (TLS12, 0xC02B),
    (TLS12, 0xC02F),
    (TLS12, 0xC02C),
    (TLS12, 0xC030),
    (TLS12, 0xCCA8),
    (TLS12, 0xCCA9),
];

/// What the Apache side hands over with the client socket. The secret fields are wiped on drop.
///
/// Because of that `Drop`, build it field by field (`TlsState { version, suite, .. }` with every
/// field, or `let mut s = TlsState::default(); s.version = ...`), not with `..Default::default()`.
///
/// It is also the message the Apache side sends (JSON; secrets as base64;
/// `last_server_record` travels as raw bytes next to it and is not serialized).
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsState {
    /// 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3).
    pub version: u16,
    /// IANA cipher suite id: 0x1301, 0x1302, 0x1303 (TLS 1.3); 0xC02B, 0xC02F, 0xC02C, 0xC030,
    /// 0xCCA8, 0xCCA9 (TLS 1.2 ECDHE AES-GCM / ChaCha20-Poly1305).
    pub suite: u16,
    /// TLS 1.3: the current client application traffic secret.
    #[serde(default, with = "base64_bytes")]
    pub client_secret: Vec<u8>,
    /// TLS 1.3: the current server application traffic secret.
    #[serde(default, with = "base64_bytes")]
    pub server_secret: Vec<u8>,
    /// TLS 1.2: the master secret (48 bytes).
    #[serde(default, with = "base64_bytes")]
    pub master_secret: Vec<u8>,
    /// TLS 1.2: 32 bytes.
    #[serde(default, with = "base64_bytes")]
    pub client_random: Vec<u8>,
    /// TLS 1.2: 32 bytes.
    #[serde(default, with = "base64_bytes")]
    pub server_random: Vec<u8>,
    /// The next record the server reads has this sequence number.
    pub read_seq: u64,
    /// The next record the server writes has this sequence number.
    pub write_seq: u64,
    /// TLS 1.3: the client asked for a KeyUpdate that OpenSSL did not send yet; our first record
    /// is then KeyUpdate(update_not_requested).
    #[serde(default)]
    pub owes_key_update: bool,
    /// 16384 unless max_fragment_length (or record_size_limit) was negotiated.
    pub max_plaintext: usize,
    /// The complete ciphertext record (header included) OpenSSL wrote last, at sequence number
    /// `write_seq - 1`.
    #[serde(skip)]
    pub last_server_record: Vec<u8>,
}

/// Secret bytes as base64 strings in JSON.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

impl Drop for TlsState {
    fn drop(&mut self) {
        self.client_secret.zeroize();
        self.server_secret.zeroize();
        self.master_secret.zeroize();
    }
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("version", &format_args!("{:#06x}", self.version))
            .field("suite", &format_args!("{:#06x}", self.suite))
            .field("read_seq", &self.read_seq)
            .field("write_seq", &self.write_seq)
            .field("owes_key_update", &self.owes_key_update)
            .field("max_plaintext", &self.max_plaintext)
            .field("last_server_record", &self.last_server_record.len())
            .finish_non_exhaustive()
    }
}

/// Why a handoff is refused ([`adopt`]) or an adopted session ends.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("unsupported TLS version {0:#06x}")]
    UnsupportedVersion(u16),
    #[error("unsupported cipher suite {suite:#06x} for TLS version {version:#06x}")]
    UnsupportedSuite { version: u16, suite: u16 },
    #[error("{what} has {len} bytes, expected {expected}")]
    BadLength { what: &'static str, len: usize, expected: usize },
    #[error("invalid handoff state: {0}")]
    InvalidState(&'static str),
    /// `last_server_record` did not open with the derived write key at `write_seq - 1`.
    #[error("self-check failed: {0}")]
    SelfCheckFailed(&'static str),
    /// A record failed authentication (also what a wrong `read_seq` gives).
    #[error("bad record mac")]
    BadRecordMac,
    #[error("record overflow ({0} bytes)")]
    RecordOverflow(usize),
    #[error("unexpected message: {0}")]
    UnexpectedMessage(&'static str),
    #[error("decode error: {0}")]
    DecodeError(&'static str),
    #[error("illegal parameter: {0}")]
    IllegalParameter(&'static str),
    /// A fatal alert from the peer (TLS 1.3: any alert but close_notify and user_canceled).
    #[error("peer sent alert {description} (level {level})")]
    PeerAlert { level: u8, description: u8 },
    #[error("more than {MAX_KEY_UPDATES_PER_SECOND} KeyUpdates within a second")]
    KeyUpdateRate,
    #[error("more than {MAX_EMPTY_RECORDS} consecutive records without application data")]
    TooManyEmptyRecords,
    /// TLS 1.2: the client tried to renegotiate (refused with `no_renegotiation`).
    #[error("renegotiation refused")]
    Renegotiation,
    #[error("sequence number space exhausted")]
    SequenceExhausted,
    #[error("peer closed the connection without close_notify")]
    Truncated,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl TlsError {
    /// The alert this error is answered with, `(level, description)`; `None` for errors that
    /// send none (peer alerts, truncation, refused handoffs).
    pub fn alert(&self) -> Option<(u8, u8)> {
        record::alert_for(self)
    }
}

/// Derives the keys and proves them: opens `last_server_record` with the server write key at
/// `write_seq - 1` (for TLS 1.2 AES-GCM it also learns OpenSSL's last explicit nonce from it and
/// continues that counter). `Err`: refuse the handoff and send nothing.
pub fn adopt(state: TlsState) -> Result<RecordLayer, TlsError> {
    RecordLayer::adopt(&state)
}

/// `HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)`: the traffic secret after a
/// KeyUpdate (RFC 8446 §7.2) for the TLS 1.3 `suite`.
pub fn next_traffic_secret(suite: u16, secret: &[u8]) -> Result<Vec<u8>, TlsError> {
    record::next_traffic_secret(suite, secret)
}
