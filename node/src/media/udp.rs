//! The worker's UDP socket, read and written in batches.
//!
//! One `recvmmsg` call reads up to [`BATCH`] datagrams and one `sendmmsg` call writes up to
//! [`BATCH`]: a packet fanned out to a hundred subscribers costs two system calls, not a hundred.
//! The unsafe code is confined to filling the `mmsghdr` arrays that these calls take.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Largest datagram we read; WebRTC keeps packets under about 1,200 bytes.
pub const MAX_DATAGRAM: usize = 2048;
/// Kernel socket buffer size: room for bursts of keyframes fanned out to many subscribers.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Binds a non-blocking UDP socket with large buffers (convert it with
/// `UdpSocket::from_std` inside the runtime that will poll it).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Receive buffers for one batch.
pub struct RecvBatch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            bufs: vec![[0u8; MAX_DATAGRAM]; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH],
            lens: vec![0; BATCH],
            count: 0,
        }
    }

    /// Reads as many datagrams as are waiting, up to [`BATCH`]. `WouldBlock` if none.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let n = socket.try_io(Interest::READABLE, || {
            let mut iovecs: Vec<libc::iovec> = self
                .bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: MAX_DATAGRAM,
                })
                .collect();
            let mut headers: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .zip(self.addrs.iter_mut())
                .map(|(iov, addr)| {
                    // SAFETY: msghdr is plain old data; the fields we need are set below.
                    let mut h: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                    h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                    h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                    h.msg_iov = iov;
                    h.msg_iovlen = 1;
                    libc::mmsghdr {
                        msg_hdr: h,
                        msg_len: 0,
                    }
                })
                .collect();
            // SAFETY: every header points at a live buffer and address slot owned by `self`
            // (or by `iovecs`, which outlives the call).
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    headers.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for (i, h) in headers.iter().take(n as usize).enumerate() {
                self.lens[i] = h.msg_len as usize;
            }
            Ok(n as usize)
        })?;
        self.count = n;
        Ok(n)
    }

    /// The datagrams of the last [`recv`](Self::recv).
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.count).filter_map(|i| {
            let addr = sockaddr_to_std(&self.addrs[i])?;
            Some((addr, &self.bufs[i][..self.lens[i].min(MAX_DATAGRAM)]))
        })
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// Datagrams waiting to be sent, flushed with `sendmmsg`.
#[derive(Default)]
pub struct SendQueue {
    queue: Vec<(SocketAddr, bytes::BytesMut)>,
    /// What `sendmmsg` reads, kept between calls so that sending allocates nothing.
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl SendQueue {
    pub fn push(&mut self, to: SocketAddr, datagram: bytes::BytesMut) {
        self.queue.push((to, datagram));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Takes the queued datagrams instead of sending them (a simulation delivers them).
    pub fn drain(&mut self) -> impl Iterator<Item = (SocketAddr, bytes::BytesMut)> + '_ {
        self.queue.drain(..)
    }

    /// Sends everything queued. Returns the number of datagrams the kernel refused (full
    /// buffer or unreachable destination); they are dropped, as UDP would drop them anyway.
    pub async fn flush(&mut self, socket: &UdpSocket) -> usize {
        let mut dropped = 0;
        let mut start = 0;
        while start < self.queue.len() {
            let end = (start + BATCH).min(self.queue.len());
            match send_batch(socket, &self.queue[start..end], &mut self.scratch) {
                Ok(sent) => start += sent.max(1).min(end - start),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The send buffer is full: wait until it drains rather than drop a burst.
                    if socket.writable().await.is_err() {
                        dropped += self.queue.len() - start;
                        break;
                    }
                }
                Err(_) => {
                    // One bad destination (e.g. an unreachable address) fails the call for the
                    // first datagram only; skip it and go on.
                    dropped += 1;
                    start += 1;
                }
            }
        }
        self.queue.clear();
        dropped
    }
}

fn send_batch(
    socket: &UdpSocket,
    batch: &[(SocketAddr, bytes::BytesMut)],
    scratch: &mut Scratch,
) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    socket.try_io(Interest::WRITABLE, || {
        let Scratch {
            addrs,
            iovecs,
            headers,
        } = &mut *scratch;
        addrs.clear();
        addrs.extend(batch.iter().map(|(a, _)| std_to_sockaddr(a)));
        iovecs.clear();
        iovecs.extend(batch.iter().map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        }));
        headers.clear();
        headers.extend(
            iovecs
                .iter_mut()
                .zip(addrs.iter_mut())
                .map(|(iov, (addr, len))| {
                    // SAFETY: msghdr is plain old data; the fields we need are set below.
                    let mut h: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                    h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                    h.msg_namelen = *len;
                    h.msg_iov = iov;
                    h.msg_iovlen = 1;
                    libc::mmsghdr {
                        msg_hdr: h,
                        msg_len: 0,
                    }
                }),
        );
        // SAFETY: the headers point into `addrs`, `iovecs` and `batch`, all alive and not moved
        // for the call; sendmmsg only reads the buffers.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                headers.len() as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into(),
                u16::from_be(a.sin6_port),
            ))
        }
        _ => None,
    }
}

fn std_to_sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let s: socket2::SockAddr = (*a).into();
    // SAFETY: SockAddr holds a valid sockaddr of `len` bytes, which fits in sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let len = s.len();
    unsafe {
        std::ptr::copy_nonoverlapping(
            s.as_ptr() as *const u8,
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    (storage, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_round_trip_over_loopback() {
        let a = UdpSocket::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let b = UdpSocket::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let mut q = SendQueue::default();
        for i in 0..100u8 {
            q.push(to, bytes::BytesMut::from(&[i; 10][..]));
        }
        assert_eq!(q.flush(&a).await, 0);
        let mut got = Vec::new();
        let mut batch = RecvBatch::new();
        while got.len() < 100 {
            b.readable().await.unwrap();
            match batch.recv(&b) {
                Ok(_) => got.extend(batch.iter().map(|(from, d)| {
                    assert_eq!(from, a.local_addr().unwrap());
                    d[0]
                })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<u8>>());
    }
}
