//! Shared pieces of the fuzz targets.
//!
//! The glue crate is a cdylib (it cannot be linked into a fuzz target), so its daemon-socket
//! protocol is compiled here from the same source files: `src/wire/` with the three modules it
//! uses (`config`, `error`, `sys`). Their `#[cfg(test)]` parts are left out, as in any non-test
//! build.
#![allow(dead_code, unused_imports, clippy::all)]

#[path = "../../src/config.rs"]
pub mod config;
#[path = "../../src/error.rs"]
pub mod error;
#[path = "../../src/sys.rs"]
pub mod sys;
#[path = "../../src/wire/mod.rs"]
pub mod wire;

/// The input cut into `n` strings at NUL bytes (the last one takes the rest), lossy UTF-8.
pub fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> =
        data.splitn(n, |&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    out.resize(n, String::new());
    out
}

/// Cut points for feeding `len` bytes in chunks, taken from `seed`.
pub fn chunk_sizes(seed: &[u8], len: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = len;
    for &s in seed.iter().cycle().take(64) {
        if left == 0 {
            break;
        }
        let size = (usize::from(s) % 64 + 1).min(left);
        sizes.push(size);
        left -= size;
    }
    if left > 0 {
        sizes.push(left);
    }
    sizes
}
