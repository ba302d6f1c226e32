//! Property tests of the daemon-socket frames (the parsers that read what another process
//! sends): [`frame_len`], [`read_frame`], [`Opening::decode`] and the [`Assembler`] of the
//! handoff's step 3 and of the TLS offer, fed arbitrary chunkings of valid and invalid messages.
//!
//! What every test holds to: no input panics; a valid message split anywhere reassembles to
//! itself, and only once its last byte has arrived; a byte past the message is never accepted.
//! The fuzz targets in `fuzz/` drive the same entry points with libFuzzer.
#![cfg(test)]

use super::control::{ControlFrame, ControlRequest};
use super::handoff::{
    encode_handoff, Announces, Assembler, HandoffAssembler, HandoffHeader, Hello, TlsOffer,
    MAX_CIPHERTEXT, MAX_EARLY, MAX_LAST_RECORD,
};
use super::{encode_frame, encode_json, frame_len, read_frame, Opening, MAX_FRAME, PROTOCOL};
use nextcloud_push_engine::tls::TlsState;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use std::net::IpAddr;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from),]
}

fn ips() -> impl Strategy<Value = Vec<IpAddr>> {
    vec(ip(), 0..6)
}

/// Cut positions within a message of `len` bytes: sorted, distinct, inside `1..len`.
fn cuts(len: usize, picks: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> =
        picks.iter().map(|i| i.index(len.max(1))).filter(|&c| c > 0 && c < len).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// `bytes` split at `cuts` (see [`cuts`]).
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts {
        out.push(&bytes[start..cut]);
        start = cut;
    }
    out.push(&bytes[start..]);
    out
}

/// What feeding `parts` one after the other gave: the first completed message (and after which
/// part), or the first error (and at which part), or neither.
enum Fed<H> {
    Done(usize, H, Vec<u8>),
    Failed(usize),
    Pending,
}

fn feed<H: Announces>(parts: &[&[u8]]) -> Fed<H> {
    let mut asm = Assembler::<H>::default();
    for (i, part) in parts.iter().enumerate() {
        let wanted = asm.wanted();
        match asm.push(part) {
            Ok(Some((header, trailing))) => return Fed::Done(i, header, trailing),
            Ok(None) => {
                // `wanted` is an upper bound of what still belongs to the message.
                assert!(part.len() <= wanted, "pushed {} with only {wanted} wanted", part.len());
            }
            Err(_) => return Fed::Failed(i),
        }
    }
    Fed::Pending
}

fn tls_state() -> impl Strategy<Value = TlsState> {
    (
        (any::<u16>(), any::<u16>(), vec(any::<u8>(), 0..49), vec(any::<u8>(), 0..49)),
        (vec(any::<u8>(), 0..49), vec(any::<u8>(), 0..33), vec(any::<u8>(), 0..33)),
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<usize>()),
    )
        .prop_map(
            |(
                (version, suite, client_secret, server_secret),
                (master_secret, client_random, server_random),
                (read_seq, write_seq, owes_key_update, max_plaintext),
            )| {
                // `TlsState` has a Drop: built field by field (see its docs).
                let mut s = TlsState::default();
                s.version = version;
                s.suite = suite;
                s.client_secret = client_secret;
                s.server_secret = server_secret;
                s.master_secret = master_secret;
                s.client_random = client_random;
                s.server_random = server_random;
                s.read_seq = read_seq;
                s.write_seq = write_seq;
                s.owes_key_update = owes_key_update;
                s.max_plaintext = max_plaintext;
                s
            },
        )
}

/// A valid TLS offer and its trailing bytes (small, so the cases stay fast).
fn tls_offer() -> impl Strategy<Value = (TlsOffer, Vec<u8>)> {
    (ips(), proptest::option::of(tls_state()), 0usize..200, 0usize..200, 0usize..200, any::<u8>())
        .prop_map(|(forwarded_for, session, plain, cipher, last, fill)| {
            let offer = TlsOffer {
                forwarded_for,
                session,
                plaintext_len: plain as u32,
                ciphertext_len: cipher as u32,
                last_record_len: last as u32,
            };
            let trailing: Vec<u8> =
                (0..plain + cipher + last).map(|i| fill.wrapping_add(i as u8)).collect();
            (offer, trailing)
        })
}

fn control_request() -> impl Strategy<Value = ControlRequest> {
    (
        any::<u32>(),
        proptest::option::of(".{0,20}"),
        "[A-Z]{0,8}",
        ".{0,40}",
        proptest::option::of(".{0,40}"),
    )
        .prop_map(|(engine, config, method, path, token)| ControlRequest {
            engine,
            config,
            method,
            path,
            token,
        })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(".{0,20}"),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(protocol, engine, config, bridged, timeout_ms, tls_offer, max_bridged)| {
            Hello { protocol, engine, config, bridged, timeout_ms, tls_offer, max_bridged }
        })
}

proptest! {
    /// `frame_len` accepts exactly the lengths 1..=MAX_FRAME and returns the announced one.
    #[test]
    fn frame_len_is_the_announced_length_within_range(header in any::<[u8; 4]>()) {
        let announced = u32::from_le_bytes(header) as usize;
        match frame_len(header) {
            Ok(len) => {
                prop_assert_eq!(len, announced);
                prop_assert!((1..=MAX_FRAME).contains(&len));
            }
            Err(_) => prop_assert!(announced == 0 || announced > MAX_FRAME),
        }
    }

    /// `read_frame` on arbitrary bytes never panics and never reads past the frame it returns.
    #[test]
    fn read_frame_never_reads_past_its_frame(bytes in vec(any::<u8>(), 0..64)) {
        let mut reader = &bytes[..];
        if let Ok(payload) = read_frame(&mut reader) {
            prop_assert_eq!(&bytes[4..4 + payload.len()], &payload[..]);
            prop_assert_eq!(reader.len(), bytes.len() - 4 - payload.len());
        }
    }

    /// `Opening::decode` never panics on arbitrary bytes.
    #[test]
    fn opening_decode_never_panics(bytes in vec(any::<u8>(), 0..256)) {
        let _ = Opening::decode(&bytes);
    }

    /// ... nor on arbitrary text that looks like JSON objects with the right keys.
    #[test]
    fn opening_decode_never_panics_on_json_like_text(
        text in r#"\{("(protocol|engine|control|config|bridged|timeout_ms|tls_offer|max_bridged|method|path|token)":(-?[0-9]{1,22}|true|false|null|"[^"]{0,8}"|\{|\}|\[|\]),?){0,8}\}?"#
    ) {
        let _ = Opening::decode(text.as_bytes());
    }

    /// A Hello and a control frame each decode to themselves, never to the other kind.
    #[test]
    fn openings_round_trip(hello in hello(), request in control_request(), protocol in any::<u32>()) {
        let frame = encode_json(&hello);
        match Opening::decode(&frame[4..]) {
            Ok(Opening::Hello(decoded)) => prop_assert_eq!(decoded, hello),
            other => prop_assert!(false, "Hello decoded as {:?}", other),
        }
        let control = ControlFrame { protocol, control: request };
        let frame = encode_json(&control);
        match Opening::decode(&frame[4..]) {
            Ok(Opening::Control(decoded)) => prop_assert_eq!(decoded, control),
            other => prop_assert!(false, "control frame decoded as {:?}", other),
        }
    }

    /// A valid handoff split anywhere reassembles to itself, exactly when its last byte arrives.
    #[test]
    fn handoff_split_anywhere_reassembles(
        forwarded_for in ips(),
        early in vec(any::<u8>(), 0..600),
        picks in vec(any::<Index>(), 0..12),
    ) {
        let msg = encode_handoff(forwarded_for.clone(), &early);
        let cuts = cuts(msg.len(), &picks);
        let parts = chunks(&msg, &cuts);
        match feed::<HandoffHeader>(&parts) {
            Fed::Done(at, header, trailing) => {
                prop_assert_eq!(at, parts.len() - 1, "completed before the last byte");
                prop_assert_eq!(header, HandoffHeader { forwarded_for, early_len: early.len() as u32 });
                prop_assert_eq!(trailing, early);
            }
            Fed::Failed(at) => prop_assert!(false, "valid handoff refused at part {}", at),
            Fed::Pending => prop_assert!(false, "valid handoff never completed"),
        }
    }

    /// Bytes after a handoff are never accepted: in the same push as its end they make it an
    /// error; pushed after it completed, they are an error too.
    #[test]
    fn handoff_never_accepts_trailing_bytes(
        forwarded_for in ips(),
        early in vec(any::<u8>(), 0..100),
        extra in vec(any::<u8>(), 1..40),
        picks in vec(any::<Index>(), 0..10),
    ) {
        let msg = encode_handoff(forwarded_for, &early);
        let mut all = msg.clone();
        all.extend_from_slice(&extra);
        let cuts = cuts(all.len(), &picks);
        let parts = chunks(&all, &cuts);
        let mut asm = HandoffAssembler::default();
        let mut fed = 0;
        let mut completed = false;
        for part in &parts {
            fed += part.len();
            match asm.push(part) {
                Ok(Some((_, trailing))) => {
                    prop_assert!(!completed, "completed twice");
                    prop_assert_eq!(fed, msg.len(), "completed with bytes past the message");
                    prop_assert_eq!(&trailing, &early);
                    completed = true;
                }
                Ok(None) => prop_assert!(fed < msg.len(), "bytes past the message accepted"),
                Err(_) => {
                    prop_assert!(fed > msg.len(), "refused before any extra byte");
                    return Ok(());
                }
            }
        }
        prop_assert!(false, "the extra bytes were never refused");
    }

    /// Arbitrary bytes in arbitrary chunks never panic either assembler; whatever completes is
    /// consistent with its header and consumed every byte pushed.
    #[test]
    fn assemblers_never_panic_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..300),
        picks in vec(any::<Index>(), 0..10),
    ) {
        let cuts = cuts(bytes.len(), &picks);
        let parts = chunks(&bytes, &cuts);
        if let Fed::Done(at, header, trailing) = feed::<HandoffHeader>(&parts) {
            prop_assert_eq!(trailing.len(), header.early_len as usize);
            prop_assert_eq!(at, parts.len() - 1);
        }
        if let Fed::Done(at, offer, trailing) = feed::<TlsOffer>(&parts) {
            prop_assert_eq!(trailing.len(), offer.trailing());
            prop_assert_eq!(at, parts.len() - 1);
        }
    }

    /// A well-framed header of arbitrary JSON-ish payload followed by arbitrary bytes: the same,
    /// with the length prefix right so the decoders are reached.
    #[test]
    fn assemblers_never_panic_on_framed_garbage(
        payload in prop_oneof![
            vec(any::<u8>(), 1..200),
            r#"\{"(forwarded_for|early_len|session|plaintext_len|ciphertext_len|last_record_len)":(\[\]|\["[0-9a-f:.]{0,20}"\]|[0-9]{1,12}|null|\{\}),?("[a-z_]{0,16}":(-?[0-9]{1,20}|null|true)){0,3}\}"#
                .prop_map(String::into_bytes),
        ],
        tail in vec(any::<u8>(), 0..100),
        picks in vec(any::<Index>(), 0..8),
    ) {
        let mut bytes = encode_frame(&payload);
        bytes.extend_from_slice(&tail);
        let cuts = cuts(bytes.len(), &picks);
        let parts = chunks(&bytes, &cuts);
        if let Fed::Done(_, header, trailing) = feed::<HandoffHeader>(&parts) {
            prop_assert_eq!(trailing.len(), header.early_len as usize);
            prop_assert!(header.early_len as usize <= MAX_EARLY);
            prop_assert_eq!(4 + payload.len() + trailing.len(), bytes.len());
        }
        if let Fed::Done(_, offer, trailing) = feed::<TlsOffer>(&parts) {
            prop_assert_eq!(trailing.len(), offer.trailing());
            prop_assert_eq!(4 + payload.len() + trailing.len(), bytes.len());
        }
    }

    /// A valid TLS offer (with or without a session) split anywhere reassembles to itself; one
    /// extra byte makes it an error.
    #[test]
    fn tls_offer_split_anywhere_reassembles(
        (offer, trailing) in tls_offer(),
        picks in vec(any::<Index>(), 0..12),
    ) {
        let mut msg = encode_json(&offer);
        msg.extend_from_slice(&trailing);
        let cuts = cuts(msg.len(), &picks);
        match feed::<TlsOffer>(&chunks(&msg, &cuts)) {
            Fed::Done(at, decoded, got) => {
                prop_assert_eq!(at, cuts.len());
                prop_assert_eq!(decoded, offer);
                prop_assert_eq!(got, trailing);
            }
            Fed::Failed(at) => prop_assert!(false, "valid offer refused at part {}", at),
            Fed::Pending => prop_assert!(false, "valid offer never completed"),
        }
        msg.push(0);
        prop_assert!(Assembler::<TlsOffer>::default().push(&msg).is_err());
    }

    /// Announcing more trailing bytes than allowed is refused as soon as the header arrives.
    #[test]
    fn oversized_announcements_are_refused(
        forwarded_for in ips(),
        over in 1u32..=u32::MAX - MAX_EARLY as u32,
        which in 0usize..3,
    ) {
        let header = HandoffHeader { forwarded_for: forwarded_for.clone(), early_len: MAX_EARLY as u32 + over };
        prop_assert!(HandoffAssembler::default().push(&encode_json(&header)).is_err());
        let mut offer = TlsOffer {
            forwarded_for,
            session: None,
            plaintext_len: 0,
            ciphertext_len: 0,
            last_record_len: 0,
        };
        let limits = [MAX_EARLY, MAX_CIPHERTEXT, MAX_LAST_RECORD];
        let value = (limits[which] as u32).saturating_add(over);
        match which {
            0 => offer.plaintext_len = value,
            1 => offer.ciphertext_len = value,
            _ => offer.last_record_len = value,
        }
        prop_assert!(Assembler::<TlsOffer>::default().push(&encode_json(&offer)).is_err());
    }

    /// A valid handoff with one byte changed never panics; if it still completes, what it gives
    /// is consistent with its header.
    #[test]
    fn mutated_handoffs_never_panic(
        forwarded_for in ips(),
        early in vec(any::<u8>(), 0..64),
        at in any::<Index>(),
        byte in any::<u8>(),
        picks in vec(any::<Index>(), 0..6),
    ) {
        let mut msg = encode_handoff(forwarded_for, &early);
        let i = at.index(msg.len());
        msg[i] = byte;
        let cuts = cuts(msg.len(), &picks);
        if let Fed::Done(_, header, trailing) = feed::<HandoffHeader>(&chunks(&msg, &cuts)) {
            prop_assert_eq!(trailing.len(), header.early_len as usize);
        }
    }
}

#[test]
fn protocol_constant_is_what_hellos_carry() {
    assert_eq!(Hello::new(0, None).protocol, PROTOCOL);
}
