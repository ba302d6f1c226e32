//! The push daemon's state that must survive restarts (pid, fingerprint, respawn bookkeeping,
//! socket, vouching key, stop-notice channel), kept by the Apache parent in
//! `ap_retained_data`: plain C-layout memory with no pointers into the DSO, which httpd unloads
//! and reloads at every restart.

use super::{ffi, stop_notice};
use std::ffi::CStr;
use std::path::PathBuf;

const RETAINED_KEY: &CStr = c"mod_nextcloud_push:retained:v4";
const RETAINED_MAGIC: u64 = 0x4e43_5055_5348_0004; // "NCPUSH" v4
/// The previous layout: [`Retained`] without its last field. A graceful restart from a build
/// that used it copies it forward, so that build's daemon is found (and replaced) instead of
/// being left running beside a new one.
const PREVIOUS_KEY: &CStr = c"mod_nextcloud_push:retained:v3";
const PREVIOUS_MAGIC: u64 = 0x4e43_5055_5348_0003;
/// The size of the v3 block (5363410's `Retained`), fixed: it must not follow later changes.
const PREVIOUS_LEN: usize = 248;
const _: () = assert!(PREVIOUS_LEN <= std::mem::offset_of!(Retained, notice_fd_plus_one));

/// Process-lifetime state in `ap_retained_data` (zeroed on creation). Layout is frozen for the
/// key above: change the key when changing it.
#[repr(C)]
pub struct Retained {
    magic: u64,
    /// The running daemon, 0 = none.
    pub pid: i32,
    /// Startup failed: no respawn until the next restart.
    pub no_respawn: u32,
    /// `apr_time_t` of the last spawn.
    pub spawned_at: i64,
    pub fast_failures: u32,
    /// A respawn is due (set when respawning is throttled; done by `monitor`).
    pub respawn_pending: u32,
    /// Real post_config passes so far.
    pub generation: u64,
    /// Hex SHA-1 of the daemon's configuration, NUL-padded.
    fingerprint: [u8; 64],
    /// The running daemon's socket path, NUL-padded (removed by the parent after a stop: the
    /// daemon runs as `User` and usually cannot unlink in DefaultRuntimeDir).
    socket: [u8; 112],
    /// The running daemon's client-IP vouching key (`apache::vouch`): generated in
    /// the parent before each fork of a new daemon from post_config, kept while the daemon is
    /// kept (and on a respawn, which the current children cannot learn about), inherited by
    /// the Apache children through their server configuration.
    pub vouch_key: [u8; nextcloud_push_engine::vouch::KEY_LEN],
    /// The parent's end of the running daemon's stop-notice channel plus one (0 = none; the
    /// memory starts zeroed and 0 is a valid descriptor). See `stop_notice`.
    notice_fd_plus_one: i32,
}

impl Retained {
    pub fn notice_fd(&self) -> Option<std::os::fd::RawFd> {
        (self.notice_fd_plus_one > 0).then_some(self.notice_fd_plus_one - 1)
    }

    /// A new daemon's channel (the descriptor is kept open for the process's life, across
    /// restarts, until [`Retained::close_notice`]).
    pub fn set_notice(&mut self, fd: std::os::fd::OwnedFd) {
        self.close_notice();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(fd);
        self.notice_fd_plus_one = fd + 1;
        stop_notice::set_channel(fd);
    }

    /// The daemon is gone or replaced: forget its channel (the signal wrapper first).
    pub fn close_notice(&mut self) {
        stop_notice::set_channel(-1);
        if let Some(fd) = self.notice_fd() {
            // SAFETY: our own descriptor, stored by set_notice; nothing else owns it.
            unsafe { libc::close(fd) };
        }
        self.notice_fd_plus_one = 0;
    }

    pub fn socket_path(&self) -> Option<PathBuf> {
        let n = self.socket.iter().position(|b| *b == 0).unwrap_or(self.socket.len());
        std::str::from_utf8(&self.socket[..n]).ok().filter(|s| !s.is_empty()).map(PathBuf::from)
    }

    pub fn set_socket_path(&mut self, path: &std::path::Path) {
        self.socket = [0; 112];
        let bytes = path.as_os_str().as_encoded_bytes();
        let n = bytes.len().min(self.socket.len() - 1);
        self.socket[..n].copy_from_slice(&bytes[..n]);
    }
    /// The fingerprint of the daemon this block describes.
    pub fn fingerprint(&self) -> &str {
        let n = self.fingerprint.iter().position(|b| *b == 0).unwrap_or(self.fingerprint.len());
        std::str::from_utf8(&self.fingerprint[..n]).unwrap_or("")
    }

    pub fn set_fingerprint(&mut self, fp: &str) {
        self.fingerprint = [0; 64];
        let n = fp.len().min(63);
        self.fingerprint[..n].copy_from_slice(&fp.as_bytes()[..n]);
    }

    /// The socket is gone with its daemon.
    pub fn clear_socket_path(&mut self) {
        self.socket = [0; 112];
    }
}

/// # Safety
/// Parent only (retained data is process memory of the parent).
pub unsafe fn get<'a>() -> &'a mut Retained {
    // SAFETY: ap_retained_data_create returns zeroed memory of the requested size that lives
    // for the whole process; the parent is single-threaded, so no aliasing &mut exists. A
    // previous-layout block, if any, is at least PREVIOUS_LEN bytes long (see PREVIOUS_KEY).
    unsafe {
        let mut p = ffi::ap_retained_data_get(RETAINED_KEY.as_ptr()) as *mut Retained;
        if p.is_null() {
            p = ffi::ap_retained_data_create(RETAINED_KEY.as_ptr(), std::mem::size_of::<Retained>())
                as *mut Retained;
        }
        // Raw writes first, the reference after them.
        if std::ptr::addr_of!((*p).magic).read() != RETAINED_MAGIC {
            std::ptr::write_bytes(p, 0, 1);
            let previous = ffi::ap_retained_data_get(PREVIOUS_KEY.as_ptr()) as *mut u8;
            // The previous block is PREVIOUS_LEN bytes (its size, 8-aligned) of the same
            // layout; its magic is cleared so it is copied only once.
            if !previous.is_null() && (previous as *const u64).read_unaligned() == PREVIOUS_MAGIC {
                std::ptr::copy_nonoverlapping(previous, p as *mut u8, PREVIOUS_LEN);
                (previous as *mut u64).write_unaligned(0);
            }
            std::ptr::addr_of_mut!((*p).magic).write(RETAINED_MAGIC);
        }
        &mut *p
    }
}
