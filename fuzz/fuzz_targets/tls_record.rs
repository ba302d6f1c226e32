//! The open path of the adopted TLS record layer: `check_header` and `open_record` on arbitrary
//! bytes, for every supported suite, after a real `tls::adopt`. With the first byte's high bit
//! set, the rest is first sealed as a valid client record (type from the input), so the checks
//! after decryption are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nextcloud_push_engine::tls::HEADER_LEN;

#[allow(dead_code)]
#[path = "../../engine/tests/tls_seal/mod.rs"]
mod tls_seal;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let suite = usize::from(pick & 0x0f) % tls_seal::SUITES.len();
    let (mut layer, client) = tls_seal::adopted(suite, 7, 0);
    let mut record = if pick & 0x80 != 0 {
        let Some((&typ, body)) = rest.split_first() else { return };
        let padding = usize::from(pick >> 4 & 3);
        tls_seal::seal(&client, 0, typ, body, padding, 1)
    } else {
        rest.to_vec()
    };
    if record.len() >= HEADER_LEN {
        let _ = layer.check_header(&record[..HEADER_LEN]);
    }
    let _ = layer.open_record(&mut record);
});
