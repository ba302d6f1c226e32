//! Unit tests: key derivation against RFC 8448 and `openssl kdf`, record framing and the
//! protocol rules against a peer record layer (the client's view of the same keys), and the
//! stream over `tokio::io::duplex`.

use super::kdf::{hkdf_expand_label, tls12_prf, Hash};
use super::record::{CT_ALERT, CT_APPLICATION_DATA, CT_CHANGE_CIPHER_SPEC, CT_HANDSHAKE};
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn h(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

// RFC 8448 §3 (Simple 1-RTT Handshake).
const C_AP_SECRET: &str = "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52
                           87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5";
const S_AP_SECRET: &str = "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32
                           82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43";
const S_AP_KEY: &str = "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56";
const S_AP_IV: &str = "cf 78 2b 88 dd 83 54 9a ad f1 e9 84";
const C_AP_KEY: &str = "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51";
const C_AP_IV: &str = "5b 78 92 3d ee 08 57 90 33 e5 23 d9";
/// {client} send application_data record (payload 00 01 .. 31), client seq 0.
const C_APP_RECORD: &str = "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55
    cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b
    62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4";
/// {server} send application_data record (the same payload), server seq 1 (after the
/// NewSessionTicket at seq 0).
const S_APP_RECORD: &str = "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4
    a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8
    fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d";
/// {client} send alert record (close_notify), client seq 1.
const C_ALERT_RECORD: &str =
    "17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3";
/// {server} send alert record (close_notify), server seq 2.
const S_ALERT_RECORD: &str =
    "17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9";

fn rfc8448_state(read_seq: u64, write_seq: u64) -> TlsState {
    let mut state = TlsState::default();
    state.version = TLS13;
    state.suite = 0x1301;
    state.client_secret = h(C_AP_SECRET);
    state.server_secret = h(S_AP_SECRET);
    state.read_seq = read_seq;
    state.write_seq = write_seq;
    state.max_plaintext = MAX_PLAINTEXT;
    state
}

#[test]
fn tls13_hkdf_expand_label_rfc8448() {
    let mut key = [0u8; 16];
    let mut iv = [0u8; 12];
    hkdf_expand_label(Hash::Sha256, &h(S_AP_SECRET), b"key", b"", &mut key).unwrap();
    hkdf_expand_label(Hash::Sha256, &h(S_AP_SECRET), b"iv", b"", &mut iv).unwrap();
    assert_eq!(key.to_vec(), h(S_AP_KEY), "server application write key");
    assert_eq!(iv.to_vec(), h(S_AP_IV), "server application write iv");
    hkdf_expand_label(Hash::Sha256, &h(C_AP_SECRET), b"key", b"", &mut key).unwrap();
    hkdf_expand_label(Hash::Sha256, &h(C_AP_SECRET), b"iv", b"", &mut iv).unwrap();
    assert_eq!(key.to_vec(), h(C_AP_KEY), "client application write key");
    assert_eq!(iv.to_vec(), h(C_AP_IV), "client application write iv");
}

/// RFC 8448 has no KeyUpdate. Expected values from OpenSSL 3.0.19:
/// `openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt mode:EXPAND_ONLY
///  -kdfopt hexkey:<secret> -kdfopt hexinfo:002011746c73313320747261666669632075706400 HKDF`
/// (the info is the HkdfLabel of "tls13 traffic upd", length 32, empty context); Botan's TLS 1.3
/// tests list the same two values. Checked against rustls in engine/tests/tls.rs as well.
#[test]
fn tls13_traffic_update_secret() {
    assert_eq!(
        next_traffic_secret(0x1301, &h(S_AP_SECRET)).unwrap(),
        h("51 92 1b 8a a3 00 19 76 eb 40 1d 0a 43 19 a8 51 64 16 a6 c5 60 01 a3 57 e5 d1 62 03 1e 84 f9 16")
    );
    assert_eq!(
        next_traffic_secret(0x1301, &h(C_AP_SECRET)).unwrap(),
        h("fc df cc 72 72 5a ae e4 8b f6 4e 4f d8 b7 49 cd bd ba b3 9d 90 da 0b 26 e2 24 5c a6 ea 16 72 07")
    );
    assert!(matches!(
        next_traffic_secret(0x1302, &h(S_AP_SECRET)),
        Err(TlsError::BadLength { expected: 48, .. })
    ));
}

/// The trace's application data and close_notify records, both directions, byte for byte.
#[test]
fn tls13_records_rfc8448() {
    let payload: Vec<u8> = (0u8..50).collect();
    // seal as the server at seq 1 and 2
    let state = rfc8448_state(0, 1);
    let mut server = RecordLayer::from_state(&state, false).unwrap();
    let mut out = Vec::new();
    server.seal_data(&payload, &mut out).unwrap();
    assert_eq!(out, h(S_APP_RECORD));
    out.clear();
    server.seal_close_notify(&mut out).unwrap();
    assert_eq!(out, h(S_ALERT_RECORD));
    // open the client's records
    let mut record = h(C_APP_RECORD);
    match server.open_record(&mut record).unwrap() {
        Opened::Data(range) => assert_eq!(record[range], payload[..]),
        other => panic!("{other:?}"),
    }
    let mut record = h(C_ALERT_RECORD);
    assert_eq!(server.open_record(&mut record).unwrap(), Opened::CloseNotify);
    assert_eq!((server.read_seq(), server.write_seq()), (2, 3));

    // adopt() proves the keys on the server's record 1, then writes record 2
    let mut state = rfc8448_state(0, 2);
    state.last_server_record = h(S_APP_RECORD);
    let mut adopted = adopt(state.clone()).unwrap();
    let mut out = Vec::new();
    adopted.seal_close_notify(&mut out).unwrap();
    assert_eq!(out, h(S_ALERT_RECORD));
    // off by one either way: refused
    for write_seq in [1, 3] {
        let mut wrong = state.clone();
        wrong.write_seq = write_seq;
        assert!(matches!(adopt(wrong), Err(TlsError::SelfCheckFailed(_))), "{write_seq}");
    }
    // a record of the other direction does not prove the server key
    let mut wrong = state.clone();
    wrong.last_server_record = h(C_APP_RECORD);
    assert!(matches!(adopt(wrong), Err(TlsError::SelfCheckFailed(_))));
}

const PRF_MS: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                      202122232425262728292a2b2c2d2e2f";

/// Expected values from OpenSSL 3.0.19 (secret 00..2f, server_random 40..5f, client_random
/// 60..7f):
/// `openssl kdf -keylen 88 -kdfopt digest:SHA256 -kdfopt hexsecret:000102..2f
///  -kdfopt hexseed:6b657920657870616e73696f6e<server_random><client_random> TLS1-PRF`
/// and the same with `-keylen 72 -kdfopt digest:SHA384`.
#[test]
fn tls12_prf_matches_openssl() {
    let sr: Vec<u8> = (0x40u8..0x60).collect();
    let cr: Vec<u8> = (0x60u8..0x80).collect();
    let mut out = [0u8; 88];
    tls12_prf(Hash::Sha256, &h(PRF_MS), b"key expansion", &[&sr, &cr], &mut out);
    assert_eq!(
        out.to_vec(),
        h("25b8932c0824c8f2962638ec1c6ec99e1b07457bc265278c23064c1d63c61e04\
           17053567ed3a0d6c431f60219bcc5357c4451e2e158a5edb30d23cd1f2e3b267\
           fed87da243fe882ab7ab42deead4eb57d29451d294f6b4d2")
    );
    let mut out = [0u8; 72];
    tls12_prf(Hash::Sha384, &h(PRF_MS), b"key expansion", &[&sr, &cr], &mut out);
    assert_eq!(
        out.to_vec(),
        h("3288e85d38fe09d3dcbb30ef211d546e81c947e4be7963709d27eb6d5f082fcb\
           5790b97c651f2b7d143853361bc9b1b5ef1aa49d3cc6494deb85c73cd413fea9\
           b1a66b28f715bcea")
    );
}

fn tls12_state(suite: u16, read_seq: u64, write_seq: u64) -> TlsState {
    let mut state = TlsState::default();
    state.version = TLS12;
    state.suite = suite;
    state.master_secret = h(PRF_MS);
    state.server_random = (0x40u8..0x60).collect();
    state.client_random = (0x60u8..0x80).collect();
    state.read_seq = read_seq;
    state.write_seq = write_seq;
    state.max_plaintext = MAX_PLAINTEXT;
    state
}

fn tls13_state(suite: u16) -> TlsState {
    let len = if suite == 0x1302 { 48 } else { 32 };
    let mut state = TlsState::default();
    state.version = TLS13;
    state.suite = suite;
    state.client_secret = vec![0x11; len];
    state.server_secret = vec![0x22; len];
    state.read_seq = 7;
    state.write_seq = 9;
    state.max_plaintext = MAX_PLAINTEXT;
    state
}

const ALL_SUITES: [(u16, u16); 9] = super::SUPPORTED_SUITES;

fn state_for(version: u16, suite: u16) -> TlsState {
    if version == TLS13 {
        tls13_state(suite)
    } else {
        tls12_state(suite, 7, 9)
    }
}

/// Server ↔ peer round trip for every suite; the TLS 1.2 key block split (a swapped key or IV
/// would fail here, both directions).
#[test]
fn tls_round_trip_all_suites() {
    for (version, suite) in ALL_SUITES {
        let state = state_for(version, suite);
        let mut server = RecordLayer::from_state(&state, false).unwrap();
        let mut client = RecordLayer::peer(&state);
        assert_eq!((server.version(), server.suite()), (version, suite), "what NCP0114 logs");
        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        server.seal_data(&big, &mut wire).unwrap();
        assert_eq!(read_all(&mut client, &mut wire).unwrap(), big, "{suite:#x}");
        let mut wire = Vec::new();
        client.seal_data(b"ping", &mut wire).unwrap();
        assert_eq!(read_all(&mut server, &mut wire).unwrap(), b"ping", "{suite:#x}");
        assert_eq!(server.write_seq(), 12, "{suite:#x}: 3 records");
        assert_eq!(server.read_seq(), 8, "{suite:#x}");
    }
}

/// Opens every record in `wire`; returns the concatenated application data.
fn read_all(layer: &mut RecordLayer, wire: &mut [u8]) -> Result<Vec<u8>, TlsError> {
    let mut data = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let len = layer.check_header(&wire[pos..pos + HEADER_LEN])?;
        let record = &mut wire[pos..pos + HEADER_LEN + len];
        if let Opened::Data(range) = layer.open_record(record)? {
            data.extend_from_slice(&record[range]);
        }
        pos += HEADER_LEN + len;
    }
    Ok(data)
}

/// The server's and the client's view of the same keys.
fn pair(state: &TlsState) -> (RecordLayer, RecordLayer) {
    (RecordLayer::from_state(state, false).unwrap(), RecordLayer::peer(state))
}

fn open_one(layer: &mut RecordLayer, mut wire: Vec<u8>) -> Result<Opened, TlsError> {
    layer.open_record(&mut wire)
}

fn sealed(peer: &mut RecordLayer, typ: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    peer.seal_record(typ, data, &mut out).unwrap();
    out
}

#[test]
fn tls_adopt_refuses_bad_states() {
    let mut s = tls13_state(0x1301);
    s.version = 0x0302;
    assert_eq!(adopt(s).unwrap_err(), TlsError::UnsupportedVersion(0x0302));
    let mut s = tls13_state(0x1301);
    s.suite = 0xC02B;
    assert!(matches!(adopt(s), Err(TlsError::UnsupportedSuite { .. })));
    let mut s = tls12_state(0x009C, 0, 1); // RSA AES128-GCM without ECDHE: not in the list
    s.last_server_record = vec![23, 3, 3, 0, 0];
    assert!(matches!(adopt(s), Err(TlsError::UnsupportedSuite { .. })));
    let mut s = tls13_state(0x1302);
    s.server_secret.truncate(32);
    assert!(matches!(adopt(s), Err(TlsError::BadLength { what: "server_secret", .. })));
    let mut s = tls12_state(0xC02F, 0, 1);
    s.master_secret.pop();
    assert!(matches!(adopt(s), Err(TlsError::BadLength { what: "master_secret", .. })));
    let mut s = tls12_state(0xC02F, 0, 1);
    s.owes_key_update = true;
    assert!(matches!(adopt(s), Err(TlsError::InvalidState(_))));
    let mut s = tls13_state(0x1301);
    s.max_plaintext = 0;
    assert!(matches!(adopt(s), Err(TlsError::InvalidState(_))));
    // no last record, or a truncated one
    let s = tls13_state(0x1301);
    assert!(matches!(adopt(s), Err(TlsError::SelfCheckFailed(_))));
}

/// The TLS 1.2 AES-GCM self-check learns OpenSSL's explicit nonce and continues it; a wrong
/// write_seq (±1) is refused for every suite.
#[test]
fn tls_self_check_every_suite() {
    for (version, suite) in ALL_SUITES {
        let state = state_for(version, suite);
        // "OpenSSL": the server's own keys at write_seq 8, a random explicit nonce start
        let mut openssl = RecordLayer::from_state(
            &{
                let mut s = state.clone();
                s.write_seq = 8;
                s
            },
            false,
        )
        .unwrap();
        openssl.set_explicit_nonce(0x0123_4567_89ab_cdef);
        let mut last = Vec::new();
        openssl.seal_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &mut last).unwrap();
        let mut s = state.clone();
        s.last_server_record = last.clone();
        let mut layer = adopt(s).unwrap_or_else(|e| panic!("{suite:#x}: {e}"));
        if version == TLS12 && suite != 0xCCA8 && suite != 0xCCA9 {
            assert_eq!(layer.explicit_nonce(), 0x0123_4567_89ab_cdf0, "{suite:#x}");
            let mut out = Vec::new();
            layer.seal_data(b"x", &mut out).unwrap();
            assert_eq!(out[5..13], 0x0123_4567_89ab_cdf0u64.to_be_bytes(), "{suite:#x}");
        }
        for write_seq in [8, 10] {
            let mut s = state.clone();
            s.write_seq = write_seq;
            s.last_server_record = last.clone();
            assert!(matches!(adopt(s), Err(TlsError::SelfCheckFailed(_))), "{suite:#x}");
        }
        let mut s = state.clone();
        s.last_server_record = last[..last.len() - 1].to_vec();
        assert!(matches!(adopt(s), Err(TlsError::SelfCheckFailed(_))), "{suite:#x}");
    }
}

#[test]
fn tls_framing_overflow() {
    let s13 = tls13_state(0x1301);
    let server = RecordLayer::from_state(&s13, false).unwrap();
    assert_eq!(server.check_header(&[23, 3, 3, 0x41, 0x00]).unwrap(), 16640);
    assert_eq!(server.check_header(&[23, 3, 3, 0x41, 0x01]), Err(TlsError::RecordOverflow(16641)));
    let s12 = tls12_state(0xC02F, 0, 0);
    let server = RecordLayer::from_state(&s12, false).unwrap();
    assert_eq!(server.check_header(&[23, 3, 3, 0x48, 0x00]).unwrap(), 18432);
    assert_eq!(server.check_header(&[23, 3, 3, 0x48, 0x01]), Err(TlsError::RecordOverflow(18433)));
    assert_eq!(TlsError::RecordOverflow(1).alert(), Some((2, 22)));

    // an authentic TLS 1.3 record whose inner plaintext exceeds 2^14 + 1
    let (mut server, mut peer) = pair(&s13);
    let rec = sealed(&mut peer, CT_APPLICATION_DATA, &[1u8; MAX_PLAINTEXT + 1]);
    assert_eq!(open_one(&mut server, rec), Err(TlsError::RecordOverflow(MAX_PLAINTEXT + 2)));
    // and TLS 1.2 above 2^14
    let (mut server, mut peer) = pair(&s12);
    let rec = sealed(&mut peer, CT_APPLICATION_DATA, &[1u8; MAX_PLAINTEXT + 1]);
    assert_eq!(open_one(&mut server, rec), Err(TlsError::RecordOverflow(MAX_PLAINTEXT + 1)));
}

#[test]
fn tls13_framing_outer_type_must_be_application_data() {
    let s = tls13_state(0x1303);
    let (mut server, mut peer) = pair(&s);
    for typ in [CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_HANDSHAKE, 24] {
        let mut rec = sealed(&mut peer, CT_APPLICATION_DATA, b"x");
        rec[0] = typ;
        assert!(matches!(open_one(&mut server, rec), Err(TlsError::UnexpectedMessage(_))));
    }
    assert_eq!(TlsError::UnexpectedMessage("").alert(), Some((2, 10)));
}

#[test]
fn tls_framing_bad_inner_or_outer_type() {
    // TLS 1.3: CCS and unknown types inside, and no type at all
    let s = tls13_state(0x1301);
    let (mut server, mut peer) = pair(&s);
    for typ in [CT_CHANGE_CIPHER_SPEC, 24, 99] {
        let rec = sealed(&mut peer, typ, b"x");
        assert!(matches!(open_one(&mut server, rec), Err(TlsError::UnexpectedMessage(_))), "{typ}");
    }
    let rec = sealed(&mut peer, 0, &[0, 0]); // all padding
    assert!(matches!(open_one(&mut server, rec), Err(TlsError::UnexpectedMessage(_))));
    // TLS 1.2: CCS and unknown types are refused on the header
    let s = tls12_state(0xCCA9, 0, 0);
    let server = RecordLayer::from_state(&s, false).unwrap();
    for typ in [CT_CHANGE_CIPHER_SPEC, 24, 0] {
        assert!(matches!(
            server.check_header(&[typ, 3, 3, 0, 20]),
            Err(TlsError::UnexpectedMessage(_))
        ));
    }
}

#[test]
fn tls13_padding_is_stripped() {
    let s = tls13_state(0x1302);
    let (mut server, mut peer) = pair(&s);
    // inner plaintext "hello" ‖ 23 ‖ 0 0 0 (seal_record appends the last zero as the "type")
    let mut rec = sealed(&mut peer, 0, b"hello\x17\x00\x00");
    match server.open_record(&mut rec).unwrap() {
        Opened::Data(r) => assert_eq!(&rec[r], b"hello"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tls_framing_too_many_empty_records() {
    for state in [tls13_state(0x1301), tls12_state(0xC030, 0, 0)] {
        let (mut server, mut peer) = pair(&state);
        for _ in 0..MAX_EMPTY_RECORDS {
            let rec = sealed(&mut peer, CT_APPLICATION_DATA, b"");
            assert_eq!(open_one(&mut server, rec), Ok(Opened::Nothing));
        }
        // data resets the count
        let rec = sealed(&mut peer, CT_APPLICATION_DATA, b"x");
        assert!(matches!(open_one(&mut server, rec), Ok(Opened::Data(_))));
        for _ in 0..MAX_EMPTY_RECORDS {
            let rec = sealed(&mut peer, CT_APPLICATION_DATA, b"");
            assert_eq!(open_one(&mut server, rec), Ok(Opened::Nothing));
        }
        let rec = sealed(&mut peer, CT_APPLICATION_DATA, b"");
        assert_eq!(open_one(&mut server, rec), Err(TlsError::TooManyEmptyRecords));
    }
}

#[test]
fn tls_bad_record_mac() {
    for (version, suite) in ALL_SUITES {
        let state = state_for(version, suite);
        let (mut server, mut peer) = pair(&state);
        let mut rec = sealed(&mut peer, CT_APPLICATION_DATA, b"data");
        let last = rec.len() - 1;
        rec[last] ^= 1;
        assert_eq!(open_one(&mut server, rec), Err(TlsError::BadRecordMac));
        // a record at the wrong sequence number
        let mut server = RecordLayer::from_state(&state, false).unwrap();
        let _skipped = sealed(&mut peer, CT_APPLICATION_DATA, b"data");
        let rec = sealed(&mut peer, CT_APPLICATION_DATA, b"data");
        assert_eq!(open_one(&mut server, rec), Err(TlsError::BadRecordMac));
        // too short for a tag
        let mut server = RecordLayer::from_state(&state, false).unwrap();
        assert_eq!(
            open_one(&mut server, vec![23, 3, 3, 0, 3, 1, 2, 3]),
            Err(TlsError::BadRecordMac)
        );
    }
    assert_eq!(TlsError::BadRecordMac.alert(), Some((2, 20)));
}

#[test]
fn tls_alerts() {
    // TLS 1.3: close_notify ends, user_canceled is ignored, anything else is fatal
    let s = tls13_state(0x1301);
    let (mut server, mut peer) = pair(&s);
    assert_eq!(open_one(&mut server, sealed(&mut peer, CT_ALERT, &[1, 90])), Ok(Opened::Nothing));
    assert_eq!(
        open_one(&mut server, sealed(&mut peer, CT_ALERT, &[1, 42])),
        Err(TlsError::PeerAlert { level: 1, description: 42 })
    );
    assert_eq!(TlsError::PeerAlert { level: 2, description: 40 }.alert(), None);
    let (mut server, mut peer) = pair(&s);
    assert!(matches!(
        open_one(&mut server, sealed(&mut peer, CT_ALERT, &[1, 0, 0])),
        Err(TlsError::DecodeError(_))
    ));
    let (mut server, mut peer) = pair(&s);
    assert_eq!(
        open_one(&mut server, sealed(&mut peer, CT_ALERT, &[2, 0])),
        Ok(Opened::CloseNotify)
    );
    // TLS 1.2: warnings are ignored, fatal alerts end
    let s = tls12_state(0xC02B, 0, 0);
    let (mut server, mut peer) = pair(&s);
    assert_eq!(open_one(&mut server, sealed(&mut peer, CT_ALERT, &[1, 42])), Ok(Opened::Nothing));
    assert_eq!(
        open_one(&mut server, sealed(&mut peer, CT_ALERT, &[2, 40])),
        Err(TlsError::PeerAlert { level: 2, description: 40 })
    );
}

#[test]
fn tls12_renegotiation_is_refused() {
    let s = tls12_state(0xCCA8, 0, 0);
    let (mut server, mut peer) = pair(&s);
    let hello = sealed(&mut peer, CT_HANDSHAKE, &[1, 0, 0, 2, 3, 3]);
    assert_eq!(open_one(&mut server, hello), Err(TlsError::Renegotiation));
    assert_eq!(TlsError::Renegotiation.alert(), Some((1, 100)));
}

/// Client KeyUpdate: whole or split over records, requested or not, answered before the next
/// data record; malformed ones are fatal.
#[test]
fn tls13_key_update_received() {
    let s = tls13_state(0x1301);
    let (mut server, mut peer) = pair(&s);
    // requested, in two records
    assert_eq!(
        open_one(&mut server, sealed(&mut peer, CT_HANDSHAKE, &[24, 0])),
        Ok(Opened::Nothing)
    );
    assert_eq!(
        open_one(&mut server, sealed(&mut peer, CT_HANDSHAKE, &[0, 1, 1])),
        Ok(Opened::Nothing)
    );
    peer.switch_write_key();
    assert_eq!(server.read_seq(), 0);
    assert!(server.key_update_pending());
    let mut rec = sealed(&mut peer, CT_APPLICATION_DATA, b"after");
    assert!(matches!(server.open_record(&mut rec), Ok(Opened::Data(_))));
    // the answer: KeyUpdate(update_not_requested) first, then the data under the next key
    let mut wire = Vec::new();
    let before = server.write_seq();
    server.seal_data(b"reply", &mut wire).unwrap();
    assert!(!server.key_update_pending());
    assert_eq!(server.write_seq(), 1);
    let ku_len = HEADER_LEN + 5 + 1 + 16;
    let mut ku = wire[..ku_len].to_vec();
    assert_eq!(before, 9);
    // the peer (still at the old read key) sees a KeyUpdate, then the data
    assert_eq!(peer.open_record(&mut ku), Ok(Opened::Nothing));
    assert!(!peer.key_update_pending(), "update_not_requested");
    assert_eq!(read_all(&mut peer, &mut wire[ku_len..]).unwrap(), b"reply");

    // malformed
    type Check = fn(&TlsError) -> bool;
    let cases: [(&[u8], Check); 4] = [
        (&[24, 0, 0, 1, 2], |e| matches!(e, TlsError::IllegalParameter(_))),
        (&[24, 0, 0, 2, 0, 0], |e| matches!(e, TlsError::DecodeError(_))),
        (&[24, 0, 0, 1, 0, 23], |e| matches!(e, TlsError::UnexpectedMessage(_))),
        (&[4, 0, 0, 1, 0], |e| matches!(e, TlsError::UnexpectedMessage(_))),
    ];
    for (msg, check) in cases {
        let (mut server, mut peer) = pair(&s);
        let e = open_one(&mut server, sealed(&mut peer, CT_HANDSHAKE, msg)).unwrap_err();
        assert!(check(&e), "{msg:?}: {e}");
    }
    // empty handshake record; a record between the parts of a message
    let (mut server, mut peer) = pair(&s);
    assert!(matches!(
        open_one(&mut server, sealed(&mut peer, CT_HANDSHAKE, &[])),
        Err(TlsError::UnexpectedMessage(_))
    ));
    let (mut server, mut peer) = pair(&s);
    assert_eq!(
        open_one(&mut server, sealed(&mut peer, CT_HANDSHAKE, &[24, 0])),
        Ok(Opened::Nothing)
    );
    assert!(matches!(
        open_one(&mut server, sealed(&mut peer, CT_APPLICATION_DATA, b"x")),
        Err(TlsError::UnexpectedMessage(_))
    ));
}

#[test]
fn tls13_key_update_rate_limit() {
    let s = tls13_state(0x1303);
    let (mut server, mut peer) = pair(&s);
    for i in 0..MAX_KEY_UPDATES_PER_SECOND {
        let rec = sealed(&mut peer, CT_HANDSHAKE, &[24, 0, 0, 1, 0]);
        peer.switch_write_key();
        assert_eq!(open_one(&mut server, rec), Ok(Opened::Nothing), "{i}");
        let rec = sealed(&mut peer, CT_APPLICATION_DATA, b"x");
        assert!(matches!(open_one(&mut server, rec), Ok(Opened::Data(_))));
    }
    let rec = sealed(&mut peer, CT_HANDSHAKE, &[24, 0, 0, 1, 0]);
    assert_eq!(open_one(&mut server, rec), Err(TlsError::KeyUpdateRate));
}

/// Our own KeyUpdate before the AEAD limit (forced low): every key carries at most `limit`
/// records, the KeyUpdate included, and the peer follows.
#[test]
fn tls13_key_update_sent_at_limit() {
    let s = tls13_state(0x1302);
    let mut server = RecordLayer::from_state(&s, false).unwrap();
    server.set_key_update_limit(3);
    let mut peer = RecordLayer::peer(&s);
    let mut wire = Vec::new();
    // (16 records: the peer accepts at most 8 KeyUpdates a second)
    for i in 0..16u8 {
        server.seal_data(&[i], &mut wire).unwrap();
        assert!(server.write_seq() < 3);
    }
    assert_eq!(read_all(&mut peer, &mut wire).unwrap(), (0..16u8).collect::<Vec<_>>());
    // write_seq 9 is past the limit: a KeyUpdate first, then 2 data records per key (the
    // KeyUpdate takes the key's third slot)
    let records = count_records(&wire);
    assert_eq!(records, 16 + 8, "16 data records and 8 KeyUpdates");
    // without the override no KeyUpdate for a long while
    let mut server = RecordLayer::from_state(&s, false).unwrap();
    let mut wire = Vec::new();
    for _ in 0..100 {
        server.seal_data(b"x", &mut wire).unwrap();
    }
    assert_eq!(server.write_seq(), 109);
}

fn count_records(wire: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while pos < wire.len() {
        pos += HEADER_LEN + usize::from(u16::from_be_bytes([wire[pos + 3], wire[pos + 4]]));
        n += 1;
    }
    n
}

#[test]
fn tls_owed_key_update_goes_first() {
    let mut s = tls13_state(0x1301);
    s.owes_key_update = true;
    let (mut server, mut peer) = pair(&s);
    // an alert needs no KeyUpdate first; data does
    let mut wire = Vec::new();
    server.seal_data(b"first", &mut wire).unwrap();
    assert_eq!(count_records(&wire), 2);
    assert_eq!(server.write_seq(), 1);
    assert_eq!(read_all(&mut peer, &mut wire).unwrap(), b"first");
    // the peer's read key moved along: another record opens too
    let mut wire = Vec::new();
    server.seal_data(b"second", &mut wire).unwrap();
    assert_eq!(read_all(&mut peer, &mut wire).unwrap(), b"second");
}

#[test]
fn tls12_sequence_numbers_never_wrap() {
    let s = tls12_state(0xCCA8, u64::MAX - 1, u64::MAX - 1);
    let (mut server, mut peer) = pair(&s);
    let mut wire = Vec::new();
    server.seal_data(b"last", &mut wire).unwrap();
    assert_eq!(server.seal_data(b"one more", &mut wire), Err(TlsError::SequenceExhausted));
    assert_eq!(read_all(&mut peer, &mut wire).unwrap(), b"last");
    let rec = sealed(&mut RecordLayer::peer(&s), CT_APPLICATION_DATA, b"x");
    assert!(matches!(open_one(&mut server, rec), Ok(Opened::Data(_))));
    let rec = vec![23, 3, 3, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(open_one(&mut server, rec), Err(TlsError::SequenceExhausted));
}

// --- the stream over a duplex pipe, with the peer layer as the client ---

fn stream_pair(
    state: &TlsState,
    plaintext_prefix: Vec<u8>,
    ciphertext_prefix: Vec<u8>,
) -> (TlsStream<tokio::io::DuplexStream>, tokio::io::DuplexStream, RecordLayer) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let layer = RecordLayer::from_state(state, false).unwrap();
    (TlsStream::new(a, layer, plaintext_prefix, ciphertext_prefix), b, RecordLayer::peer(state))
}

/// Reads one whole record from the raw client side.
async fn raw_record(raw: &mut tokio::io::DuplexStream) -> Vec<u8> {
    let mut header = [0u8; HEADER_LEN];
    raw.read_exact(&mut header).await.unwrap();
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut record = header.to_vec();
    record.resize(HEADER_LEN + len, 0);
    raw.read_exact(&mut record[HEADER_LEN..]).await.unwrap();
    record
}

/// Reads one record from the raw client side and opens it with the peer layer.
async fn peer_read(raw: &mut tokio::io::DuplexStream, peer: &mut RecordLayer) -> (Opened, Vec<u8>) {
    let mut record = raw_record(raw).await;
    let opened = peer.open_record(&mut record).unwrap();
    let data = match &opened {
        Opened::Data(r) => record[r.clone()].to_vec(),
        _ => Vec::new(),
    };
    (opened, data)
}

#[tokio::test]
async fn tls_stream_prefixes_and_idle_buffers() {
    for (version, suite) in [(TLS13, 0x1301), (TLS12, 0xC02C)] {
        let state = state_for(version, suite);
        let mut peer = RecordLayer::peer(&state);
        let mut wire = Vec::new();
        peer.seal_data(b"record one|", &mut wire).unwrap();
        peer.seal_data(b"record two|", &mut wire).unwrap();
        // the ciphertext prefix ends 3 bytes into the second record's header
        let first_len = HEADER_LEN + usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        let cut = first_len + 3;
        let (mut tls, mut raw, _) = stream_pair(&state, b"plain|".to_vec(), wire[..cut].to_vec());
        let mut peer = RecordLayer::peer(&state);
        peer.seal_data(b"record one|", &mut Vec::new()).unwrap();
        peer.seal_data(b"record two|", &mut Vec::new()).unwrap();
        raw.write_all(&wire[cut..]).await.unwrap();
        let mut got = vec![0u8; 6 + 11 + 11];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"plain|record one|record two|");
        assert_eq!(tls.buffered_capacity(), (0, 0, 0), "idle: no buffers");
        // a record arriving in 1-byte pieces
        let mut wire = Vec::new();
        peer.seal_data(&[7u8; 20_000], &mut wire).unwrap();
        let writer = tokio::spawn(async move {
            for b in wire {
                raw.write_all(&[b]).await.unwrap();
            }
            raw
        });
        let mut got = vec![0u8; 20_000];
        tls.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        let _raw = writer.await.unwrap();
        assert_eq!(tls.buffered_capacity(), (0, 0, 0));
        tls.write_all(b"out").await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(tls.buffered_capacity(), (0, 0, 0));
    }
}

#[tokio::test]
async fn tls_stream_close_notify_from_peer() {
    let state = tls13_state(0x1303);
    let (mut tls, mut raw, mut peer) = stream_pair(&state, Vec::new(), Vec::new());
    let mut wire = Vec::new();
    peer.seal_data(b"bye", &mut wire).unwrap();
    peer.seal_close_notify(&mut wire).unwrap();
    raw.write_all(&wire).await.unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    // our answer, then end of stream (write side shut down)
    assert_eq!(peer_read(&mut raw, &mut peer).await.0, Opened::CloseNotify);
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(tls.write(b"late").await.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn tls_stream_shutdown_sends_close_notify() {
    let state = tls12_state(0xC02F, 3, 4);
    let (mut tls, mut raw, mut peer) = stream_pair(&state, Vec::new(), Vec::new());
    tls.write_all(b"last words").await.unwrap();
    tls.shutdown().await.unwrap();
    assert_eq!(peer_read(&mut raw, &mut peer).await.1, b"last words");
    assert_eq!(peer_read(&mut raw, &mut peer).await.0, Opened::CloseNotify);
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn tls_stream_fatal_errors_send_alerts() {
    // wrong read_seq: bad_record_mac to the peer, InvalidData to the reader
    let mut state = tls13_state(0x1301);
    let mut peer = RecordLayer::peer(&state);
    state.read_seq += 1;
    let (mut tls, mut raw, _) = stream_pair(&state, Vec::new(), Vec::new());
    let mut wire = Vec::new();
    peer.seal_data(b"hello", &mut wire).unwrap();
    raw.write_all(&wire).await.unwrap();
    let e = tls.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(
        e.get_ref().and_then(|e| e.downcast_ref::<TlsError>()),
        Some(&TlsError::BadRecordMac)
    );
    let mut peer = RecordLayer::peer(&tls13_state(0x1301));
    assert_eq!(peer.open_raw(&mut raw_record(&mut raw).await), (CT_ALERT, vec![2, 20]));
    assert!(tls.read(&mut [0u8; 16]).await.is_err(), "stays failed");
    assert!(tls.write(b"x").await.is_err());

    // TLS 1.2 renegotiation: warning no_renegotiation, close_notify, error
    let state = tls12_state(0xC02B, 0, 0);
    let (mut tls, mut raw, mut peer) = stream_pair(&state, Vec::new(), Vec::new());
    raw.write_all(&sealed(&mut peer, CT_HANDSHAKE, &[1, 0, 0, 0])).await.unwrap();
    let e = tls.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(
        e.get_ref().and_then(|e| e.downcast_ref::<TlsError>()),
        Some(&TlsError::Renegotiation)
    );
    assert_eq!(peer.open_raw(&mut raw_record(&mut raw).await), (CT_ALERT, vec![1, 100]));
    assert_eq!(peer_read(&mut raw, &mut peer).await.0, Opened::CloseNotify);

    // overflow announced in the header: alert before the body arrives
    let state = tls13_state(0x1301);
    let (mut tls, mut raw, mut peer) = stream_pair(&state, Vec::new(), Vec::new());
    raw.write_all(&[23, 3, 3, 0x41, 0x01]).await.unwrap();
    let e = tls.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(
        e.get_ref().and_then(|e| e.downcast_ref::<TlsError>()),
        Some(&TlsError::RecordOverflow(16641))
    );
    assert_eq!(peer.open_raw(&mut raw_record(&mut raw).await), (CT_ALERT, vec![2, 22]));

    // end of stream without close_notify
    let (mut tls, raw, _) = stream_pair(&state, Vec::new(), Vec::new());
    drop(raw);
    let e = tls.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[test]
fn tls_sizes() {
    let layer = std::mem::size_of::<RecordLayer>();
    let stream = std::mem::size_of::<TlsStream<tokio::net::TcpStream>>();
    let key = std::mem::size_of::<ring::aead::LessSafeKey>();
    println!(
        "size_of RecordLayer = {layer} (2 x LessSafeKey = {}), TlsStream<TcpStream> = {stream}",
        2 * key
    );
    assert!(layer <= 1400, "{layer}");
    assert!(stream <= layer + 256, "{stream}");
}

/// The Apache side sends the state as JSON with the secrets in base64: they arrive intact.
#[test]
fn tls_state_json_keeps_the_secrets() {
    let mut state = TlsState::default();
    state.version = 0x0303;
    state.suite = 0xC02F;
    state.client_secret = vec![1; 32];
    state.server_secret = vec![2; 32];
    state.master_secret = (0..48).collect();
    state.client_random = vec![4; 32];
    state.server_random = vec![5; 32];
    state.read_seq = 7;
    state.write_seq = 9;
    let json = serde_json::to_string(&state).unwrap();
    let master =
        r#""master_secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v""#;
    assert!(json.contains(master), "{json}");
    let back: TlsState = serde_json::from_str(&json).unwrap();
    assert!(back == state, "the secrets changed on the way");
    let bad = r#"{"version":771,"suite":49199,"master_secret":"not base64!"}"#;
    assert!(serde_json::from_str::<TlsState>(bad).is_err());
}
