//! Property tests of the open path of the adopted TLS record layer (`engine/src/tls/`):
//! `RecordLayer::check_header` and `RecordLayer::open_record` on arbitrary bytes, on records with
//! a consistent header and garbage inside, and on valid client records, mutated or not.
//!
//! The layer is built through the public `tls::adopt`, whose self-check needs the last record
//! the server wrote; `tls_seal` seals that record (and the client's records) with ring,
//! independently of the engine's code.

mod tls_seal;

use nextcloud_push_engine::tls::{
    Opened, HEADER_LEN, MAX_CIPHERTEXT_TLS12, MAX_CIPHERTEXT_TLS13, TLS13,
};
use proptest::collection::vec;
use proptest::prelude::*;
use tls_seal::{adopted, seal, APPLICATION_DATA, SUITES};

fn suite() -> impl Strategy<Value = usize> {
    0..SUITES.len()
}

#[test]
fn every_suite_adopts() {
    for suite in 0..SUITES.len() {
        let (mut layer, client) = adopted(suite, 42, 3);
        let mut record = seal(&client, 3, APPLICATION_DATA, b"hello", 0, 99);
        let opened = layer.open_record(&mut record).unwrap();
        assert_eq!(opened, Opened::Data(opened_range(&opened, &record, b"hello")));
    }
}

fn opened_range(opened: &Opened, record: &[u8], data: &[u8]) -> std::ops::Range<usize> {
    match opened {
        Opened::Data(range) if &record[range.clone()] == data => range.clone(),
        other => panic!("{other:?} is not the data {data:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `check_header` on any 5 bytes: never a panic; accepts exactly the content types and
    /// lengths the version allows, and returns the announced length.
    #[test]
    fn check_header_accepts_exactly_the_allowed_headers(suite in suite(), header in any::<[u8; 5]>()) {
        let (layer, _) = adopted(suite, 1, 0);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let tls13 = SUITES[suite].0 == TLS13;
        let type_ok = if tls13 { header[0] == APPLICATION_DATA } else { matches!(header[0], 21..=23) };
        let max = if tls13 { MAX_CIPHERTEXT_TLS13 } else { MAX_CIPHERTEXT_TLS12 };
        match layer.check_header(&header) {
            Ok(n) => {
                prop_assert_eq!(n, len);
                prop_assert!(type_ok && len <= max);
            }
            Err(_) => prop_assert!(!type_ok || len > max),
        }
    }

    /// `open_record` on arbitrary bytes never panics and never yields data.
    #[test]
    fn open_record_never_panics_on_arbitrary_bytes(
        suite in suite(),
        mut bytes in vec(any::<u8>(), 0..400),
    ) {
        let (mut layer, _) = adopted(suite, 2, 5);
        let result = layer.open_record(&mut bytes);
        prop_assert!(!matches!(result, Ok(Opened::Data(_))), "{:?}", result);
    }

    /// Records whose header is consistent (a type the version allows, the body's length) but
    /// whose body is garbage: never a panic, always an error (nothing authenticates).
    #[test]
    fn open_record_refuses_unauthenticated_bodies(
        suite in suite(),
        typ in 21u8..=23,
        body in vec(any::<u8>(), 0..300),
    ) {
        let (mut layer, _) = adopted(suite, 3, 0);
        let typ = if SUITES[suite].0 == TLS13 { APPLICATION_DATA } else { typ };
        let mut record = vec![typ, 3, 3];
        record.extend_from_slice(&(body.len() as u16).to_be_bytes());
        record.extend_from_slice(&body);
        let result = layer.open_record(&mut record);
        prop_assert!(result.is_err(), "{:?}", result);
    }

    /// A valid client record of application data opens to exactly its data, with any TLS 1.3
    /// padding and at any sequence number; one flipped bit anywhere makes it an error.
    #[test]
    fn valid_records_open_and_any_bit_flip_is_refused(
        suite in suite(),
        secret in any::<u8>(),
        read_seq in 0u64..1 << 40,
        data in vec(any::<u8>(), 1..300),
        padding in 0usize..40,
        explicit in any::<u64>(),
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut layer, client) = adopted(suite, secret, read_seq);
        let record = seal(&client, read_seq, APPLICATION_DATA, &data, padding, explicit);
        let mut good = record.clone();
        let opened = layer.open_record(&mut good).unwrap();
        let range = opened_range(&opened, &good, &data);
        prop_assert_eq!(range.len(), data.len());
        prop_assert_eq!(layer.read_seq(), read_seq + 1);

        let (mut layer, _) = adopted(suite, secret, read_seq);
        let mut bad = record;
        let i = flip.index(bad.len());
        bad[i] ^= 1 << bit;
        let result = layer.open_record(&mut bad);
        prop_assert!(result.is_err(), "flipped bit {} of byte {}: {:?}", bit, i, result);
    }

    /// Valid records of any content type and any inner content (alerts, handshake messages,
    /// TLS 1.3 records of only padding, unknown types): never a panic; data only for
    /// application data, and then exactly the data.
    #[test]
    fn any_authenticated_content_never_panics(
        suite in suite(),
        records in vec(
            (
                prop_oneof![Just(21u8), Just(22u8), Just(23u8), Just(0u8), any::<u8>()],
                prop_oneof![
                    vec(any::<u8>(), 0..8),
                    Just(vec![24, 0, 0, 1, 0]),
                    Just(vec![24, 0, 0, 1, 1]),
                    Just(vec![24, 0, 0]),
                    Just(vec![1, 0]),
                    Just(vec![2, 40]),
                    vec(any::<u8>(), 0..64),
                ],
                0usize..4,
            ),
            1..12,
        ),
    ) {
        let (mut layer, client) = adopted(suite, 4, 0);
        for (seq, (typ, data, padding)) in records.into_iter().enumerate() {
            let mut record = seal(&client, seq as u64, typ, &data, padding, seq as u64);
            match layer.open_record(&mut record) {
                Ok(Opened::Data(range)) => {
                    prop_assert_eq!(typ, APPLICATION_DATA);
                    prop_assert_eq!(&record[range], &data[..]);
                }
                Ok(_) => {}
                // An error is fatal: the session ends there.
                Err(_) => break,
            }
        }
    }
}

/// `check_header` takes any `&[u8]`: a slice shorter than `HEADER_LEN` is an error, not a panic
/// (`open_record` checks the length before calling it, and `TlsStream` always passes 5 bytes).
#[test]
fn check_header_on_a_short_slice() {
    let (layer, _) = adopted(0, 1, 0);
    for len in 0..HEADER_LEN {
        let short = vec![APPLICATION_DATA; len];
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| layer.check_header(&short)))
                .unwrap_or_else(|_| panic!("check_header panicked on {len} bytes"));
        assert!(result.is_err(), "{len} bytes accepted as a header: {result:?}");
    }
}
