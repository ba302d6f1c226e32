//! APR pool helpers: Rust values owned by a pool (dropped by a pool cleanup), pool strings and
//! pool userdata.

use super::ffi;
use std::ffi::{c_char, c_void, CStr};

/// Moves `value` into a heap allocation owned by `pool`: it is dropped when the pool is
/// cleared or destroyed. Returns a pointer valid for the pool's lifetime.
///
/// # Safety
/// `pool` must be a live APR pool. The returned pointer must not be used after the pool is
/// cleared, and `T`'s drop must not depend on memory the pool frees earlier (cleanups run in
/// reverse registration order, after the pool's subpools are destroyed).
pub unsafe fn alloc<T>(pool: *mut ffi::apr_pool_t, value: T) -> *mut T {
    let ptr = Box::into_raw(Box::new(value));
    // SAFETY: `ptr` comes from Box::into_raw and is freed exactly once, by `drop_box::<T>`.
    // The cleanup function lives in this DSO, which mod_so unloads in a pconf cleanup that was
    // registered before any of ours (LoadModule precedes every config callback), so ours runs
    // first.
    unsafe {
        ffi::apr_pool_cleanup_register(
            pool,
            ptr as *const c_void,
            Some(drop_box::<T>),
            Some(ffi::apr_pool_cleanup_null),
        );
    }
    ptr
}

unsafe extern "C" fn drop_box<T>(data: *mut c_void) -> ffi::apr_status_t {
    // SAFETY: registered by `alloc::<T>` with a pointer from Box::into_raw; APR runs each
    // cleanup once. Dropping config values cannot reasonably panic, but never unwind into C.
    super::guard("pool cleanup", (), || drop(unsafe { Box::from_raw(data as *mut T) }));
    0
}

/// Copies `s` into `pool` as a NUL-terminated C string (an interior NUL truncates it for C
/// readers).
///
/// # Safety
/// `pool` must be a live APR pool; the result lives as long as the pool.
pub unsafe fn pstr(pool: *mut ffi::apr_pool_t, s: &str) -> *const c_char {
    // SAFETY: apr_pstrmemdup copies `len` bytes from a valid slice and appends a NUL.
    unsafe { ffi::apr_pstrmemdup(pool, s.as_ptr() as *const c_char, s.len()) }
}

/// Borrows a C string as `&str` (lossy: invalid UTF-8 yields `None`).
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that outlives `'a`.
pub unsafe fn cstr<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// Pool userdata lookup.
///
/// # Safety
/// `pool` must be a live APR pool.
pub unsafe fn userdata_get(pool: *mut ffi::apr_pool_t, key: &CStr) -> *mut c_void {
    let mut data: *mut c_void = std::ptr::null_mut();
    // SAFETY: key is NUL-terminated; data is a valid out pointer.
    unsafe { ffi::apr_pool_userdata_get(&mut data, key.as_ptr(), pool) };
    data
}

/// Pool userdata store (the key is copied by APR; no cleanup).
///
/// # Safety
/// `pool` must be a live APR pool; `data` must stay valid while the pool lives.
pub unsafe fn userdata_set(pool: *mut ffi::apr_pool_t, key: &CStr, data: *mut c_void) {
    // SAFETY: apr_pool_userdata_set duplicates the key into the pool.
    unsafe { ffi::apr_pool_userdata_set(data, key.as_ptr(), None, pool) };
}
