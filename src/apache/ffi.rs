//! Raw bindgen output for the httpd/APR items listed in `build.rs`. Never edited by hand.
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code)]
#![allow(unknown_lints, unnecessary_transmutes, clippy::all, unsafe_op_in_unsafe_fn)]
#![allow(missing_docs, clippy::undocumented_unsafe_blocks)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
