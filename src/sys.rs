//! Plain libc behind safe signatures, for both processes (no httpd types here): connecting a
//! Unix socket with a deadline, sending and receiving a descriptor (`SCM_RIGHTS`), the fd limit,
//! the effective uid, and `_exit`. The only unsafe module outside `apache/`.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Connects a blocking `UnixStream` to `path`, giving up at `deadline` (`TimedOut`). A Unix
/// `connect` blocks only while the listener's backlog is full; nonblocking, that is `EAGAIN`,
/// retried here until the deadline.
pub fn connect_with_deadline(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr_un(path)?;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let rc = unsafe { libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "listen backlog full"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return Err(err),
        }
    }
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or has a NUL",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Room for the control message of one descriptor (`CMSG_SPACE(sizeof(int))`), aligned.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// `sendmsg` of `data` with `fd` attached as `SCM_RIGHTS`; returns how many bytes went out
/// (the descriptor always travels with the first byte). Never raises SIGPIPE.
pub fn send_with_fd(stream: impl AsFd, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut cmsg_buf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data; the pointers set below outlive the sendmsg call; the
    // control buffer is large and aligned enough for one int (checked against CMSG_SPACE).
    unsafe {
        let space = libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) as usize;
        assert!(space <= cmsg_buf.0.len());
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd.as_raw_fd());
        loop {
            let n = libc::sendmsg(stream.as_fd().as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// One nonblocking `recvmsg` into `buf`, collecting any descriptors that came with it
/// (close-on-exec). `WouldBlock` when nothing is there; `Ok((0, _))` at EOF. Descriptors the
/// kernel had to drop (`MSG_CTRUNC`) make it an error.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov =
        libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut cmsg_buf = CmsgBuf([0; 64]);
    let mut fds = Vec::new();
    // SAFETY: as in `send_with_fd`; every descriptor found in an SCM_RIGHTS message is new in
    // this process and owned exactly once.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = cmsg_buf.0.len() as _;
        let n = loop {
            let n = libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
            );
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other(
                "a passed descriptor was dropped (out of file descriptors?)",
            ));
        }
        Ok((n, fds))
    }
}

/// The soft `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    rl.rlim_cur
}

/// The effective uid of this process (the daemon: Apache's `User` after the privilege drop).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Ends the process at once: no atexit handlers, no destructors (the daemon is a fork of the
/// Apache parent, whose exit handlers are not ours to run).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_travels_with_the_data() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut left, right) = UnixStream::pair().unwrap();
        let sent = send_with_fd(&a, b"hello", right.as_fd()).unwrap();
        assert_eq!(sent, 5);
        drop(right);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        // The received descriptor is `right`: what goes in comes out of `left`.
        let mut passed = UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"via fd").unwrap();
        drop(passed);
        let mut out = String::new();
        left.read_to_string(&mut out).unwrap();
        assert_eq!(out, "via fd");
    }

    #[test]
    fn recv_is_nonblocking_and_sees_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 4];
        let e = recv_with_fds(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((n, fds.len()), (0, 0));
    }

    #[test]
    fn connect_errors() {
        let missing = std::env::temp_dir().join(format!("ncp-missing-{}.sock", std::process::id()));
        let e = connect_with_deadline(&missing, Instant::now() + Duration::from_millis(100))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let long = Path::new("/tmp").join("x".repeat(200));
        assert!(connect_with_deadline(&long, Instant::now()).is_err());
    }
}
