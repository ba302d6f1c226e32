//! The daemon-socket frames (`src/wire/`): `frame_len`, `read_frame`, `Opening::decode`, and the
//! handoff and TLS-offer assemblers fed the input in chunks. Whatever an assembler completes
//! used every byte pushed and matches its header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_nextcloud_push_fuzz::chunk_sizes;
use mod_nextcloud_push_fuzz::wire::handoff::{Announces, Assembler, HandoffHeader, TlsOffer};
use mod_nextcloud_push_fuzz::wire::{frame_len, read_frame, Opening};

fn assemble<H: Announces>(data: &[u8], sizes: &[usize]) {
    let mut asm = Assembler::<H>::default();
    let mut fed = 0;
    for &size in sizes {
        let part = &data[fed..fed + size];
        fed += size;
        match asm.push(part) {
            Ok(Some((header, trailing))) => {
                assert_eq!(trailing.len(), header.trailing());
                assert!(data[..fed].ends_with(&trailing));
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed_len, rest)) = data.split_first() else { return };
    let (seed, data) = rest.split_at(usize::from(seed_len % 8).min(rest.len()));
    if let Ok(header) = <[u8; 4]>::try_from(data.get(..4).unwrap_or_default()) {
        let _ = frame_len(header);
    }
    let mut reader = data;
    if let Ok(payload) = read_frame(&mut reader) {
        let _ = Opening::decode(&payload);
    }
    let _ = Opening::decode(data);
    let sizes = chunk_sizes(seed, data.len());
    assemble::<HandoffHeader>(data, &sizes);
    assemble::<TlsOffer>(data, &sizes);
});
