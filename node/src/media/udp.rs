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
///
/// Where the kernel allows it, consecutive datagrams to one destination leave in one message
/// with UDP generic segmentation offload (GSO): the kernel walks its UDP/IP send path once for
/// the run and cuts it into the original datagrams as late as it can (in the network card, or
/// just before the device). A video frame is several packets of one size to each subscriber, so
/// this divides the kernel's per-datagram cost, most of a forwarded packet's CPU, by about the
/// packets in a frame. Receivers see the same datagrams either way.
#[derive(Default)]
pub struct SendQueue {
    queue: Vec<(SocketAddr, bytes::BytesMut)>,
    gso: Gso,
    sent: Sent,
    /// What `sendmmsg` reads, kept between calls so that sending allocates nothing.
    scratch: Scratch,
}

/// Whether datagrams to one destination may share a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Gso {
    /// Not asked yet: the first flush asks the socket.
    #[default]
    Unknown,
    On,
    /// Turned off by configuration, or the kernel or device cannot do it.
    Off,
}

/// What the kernel took (since the last [`SendQueue::take_sent`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    /// Messages handed to `sendmmsg`: fewer than the datagrams when runs were segmented.
    pub messages: u64,
}

/// Datagrams one GSO message carries at most (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes one GSO message carries at most (an IPv6 UDP payload's limit, with room to spare).
const GSO_MAX_BYTES: usize = 65_000;

/// One message of a flush: `count` datagrams from `first` in the destination order, cut by
/// the kernel every `segment` bytes (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Message {
    first: usize,
    count: usize,
    segment: usize,
}

/// Control-message space for one `UDP_SEGMENT` (a `cmsghdr` and a `u16`, aligned).
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
struct Control([u8; 32]);

#[derive(Default)]
struct Scratch {
    /// The queue's indices, grouped by destination in queue order.
    order: Vec<u32>,
    /// (address, port, index) of each datagram, sorted into `order`.
    keys: Vec<(u128, u16, u32)>,
    messages: Vec<Message>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovecs: Vec<libc::iovec>,
    controls: Vec<Control>,
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

    /// Sends every datagram in a message of its own (configuration `rtc.udp_gso = false`).
    pub fn disable_gso(&mut self) {
        self.gso = Gso::Off;
    }

    /// What the kernel took since the last call (the worker reports it as metrics).
    pub fn take_sent(&mut self) -> Sent {
        std::mem::take(&mut self.sent)
    }

    /// Takes the queued datagrams instead of sending them (a simulation delivers them).
    pub fn drain(&mut self) -> impl Iterator<Item = (SocketAddr, bytes::BytesMut)> + '_ {
        self.queue.drain(..)
    }

    /// Sends everything queued. Returns the number of datagrams the kernel refused (full
    /// buffer or unreachable destination); they are dropped, as UDP would drop them anyway.
    pub async fn flush(&mut self, socket: &UdpSocket) -> usize {
        if self.gso == Gso::Unknown {
            self.gso = if gso_supported(socket) {
                Gso::On
            } else {
                Gso::Off
            };
        }
        plan(&self.queue, self.gso == Gso::On, &mut self.scratch);
        let mut dropped = 0;
        let mut start = 0;
        while start < self.scratch.messages.len() {
            let end = (start + BATCH).min(self.scratch.messages.len());
            match send_batch(socket, &self.queue, start..end, &mut self.scratch) {
                Ok(sent) => {
                    let sent = sent.max(1).min(end - start);
                    let took = &self.scratch.messages[start..start + sent];
                    self.sent.messages += sent as u64;
                    self.sent.datagrams += took.iter().map(|m| m.count as u64).sum::<u64>();
                    start += sent;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The send buffer is full: wait until it drains rather than drop a burst.
                    if socket.writable().await.is_err() {
                        dropped += self.scratch.messages[start..]
                            .iter()
                            .map(|m| m.count)
                            .sum::<usize>();
                        break;
                    }
                }
                Err(e) if self.scratch.messages[start].count > 1 && gso_refused(&e) => {
                    // EIO: the device cannot segment (no checksum offload, say), so each
                    // datagram goes on its own from now on. EINVAL: this message could not be
                    // segmented (a path MTU below its size); its datagrams go on their own.
                    let everything = e.raw_os_error() == Some(libc::EIO);
                    if everything {
                        tracing::info!("UDP segmentation offload refused ({e}); sending without");
                        self.gso = Gso::Off;
                    }
                    split(&mut self.scratch.messages, start, everything);
                }
                Err(_) => {
                    // One bad destination (e.g. an unreachable address) fails the call for the
                    // first message only; skip it and go on.
                    dropped += self.scratch.messages[start].count;
                    start += 1;
                }
            }
        }
        self.queue.clear();
        dropped
    }
}

/// Groups the queue into messages: datagrams to one destination in queue order, a run of one
/// size (the last of a run may be shorter) in one message when `gso` allows it.
fn plan(queue: &[(SocketAddr, bytes::BytesMut)], gso: bool, scratch: &mut Scratch) {
    let order = &mut scratch.order;
    order.clear();
    if gso {
        // An unstable sort on (destination, index) keeps each destination's order without the
        // allocation a stable sort makes; on integer keys made once per datagram, as comparing
        // `SocketAddr`s through the queue cost more than the rest of the plan. Two addresses
        // with one key (an IPv4 address and its IPv6 twin, two IPv6 scopes) only end up next
        // to each other: runs below still compare whole addresses.
        let keys = &mut scratch.keys;
        keys.clear();
        keys.extend(queue.iter().enumerate().map(|(i, (to, _))| {
            let ip = match to.ip() {
                std::net::IpAddr::V4(v4) => u32::from(v4) as u128,
                std::net::IpAddr::V6(v6) => u128::from(v6),
            };
            (ip, to.port(), i as u32)
        }));
        keys.sort_unstable();
        order.extend(keys.iter().map(|k| k.2));
    } else {
        order.extend(0..queue.len() as u32);
    }
    let messages = &mut scratch.messages;
    messages.clear();
    let mut i = 0;
    while i < order.len() {
        let (to, first) = &queue[order[i] as usize];
        let segment = first.len();
        let mut count = 1;
        let mut bytes = segment;
        while gso && segment > 0 && i + count < order.len() && count < GSO_MAX_SEGMENTS {
            let (next_to, next) = &queue[order[i + count] as usize];
            if next_to != to || next.len() > segment || bytes + next.len() > GSO_MAX_BYTES {
                break;
            }
            count += 1;
            bytes += next.len();
            if next.len() < segment {
                break; // only the last segment may be shorter
            }
        }
        messages.push(Message {
            first: i,
            count,
            segment,
        });
        i += count;
    }
}

/// Turns message `from` (and, if `rest`, every later one) into one message per datagram.
fn split(messages: &mut Vec<Message>, from: usize, rest: bool) {
    let end = if rest { messages.len() } else { from + 1 };
    let singles: Vec<Message> = messages[from..end]
        .iter()
        .flat_map(|m| {
            (m.first..m.first + m.count).map(move |first| Message {
                first,
                count: 1,
                segment: m.segment,
            })
        })
        .collect();
    messages.splice(from..end, singles);
}

/// Whether an error means the kernel or device cannot segment (as opposed to a bad address).
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Whether this kernel knows `UDP_SEGMENT` (Linux 4.18 and later).
fn gso_supported(socket: &UdpSocket) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are live locals of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0
}

/// Sends `messages` of the plan with one `sendmmsg`; returns how many messages left.
fn send_batch(
    socket: &UdpSocket,
    queue: &[(SocketAddr, bytes::BytesMut)],
    messages: std::ops::Range<usize>,
    scratch: &mut Scratch,
) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    socket.try_io(Interest::WRITABLE, || {
        let Scratch {
            order,
            messages: plan,
            addrs,
            iovecs,
            controls,
            headers,
            keys: _,
        } = &mut *scratch;
        let plan = &plan[messages];
        let base = plan[0].first;
        let last = plan[plan.len() - 1];
        let datagrams = &order[base..last.first + last.count];
        iovecs.clear();
        iovecs.extend(datagrams.iter().map(|&i| {
            let d = &queue[i as usize].1;
            libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            }
        }));
        addrs.clear();
        addrs.extend(
            plan.iter()
                .map(|m| std_to_sockaddr(&queue[order[m.first] as usize].0)),
        );
        controls.clear();
        controls.resize(plan.len(), Control::default());
        headers.clear();
        for ((m, (addr, len)), control) in
            plan.iter().zip(addrs.iter_mut()).zip(controls.iter_mut())
        {
            // SAFETY: msghdr is plain old data; the fields we need are set below.
            let mut h: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = *len;
            // SAFETY: the message's datagrams are within `iovecs` (built from the same plan).
            h.msg_iov = unsafe { iovecs.as_mut_ptr().add(m.first - base) };
            h.msg_iovlen = m.count;
            if m.count > 1 {
                set_segment(&mut h, control, m.segment as u16);
            }
            headers.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        // SAFETY: the headers point into `addrs`, `iovecs`, `controls` and `queue`, all alive
        // and not moved for the call; sendmmsg only reads the buffers.
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

/// Attaches a `UDP_SEGMENT` control message of `segment` bytes to `h`, written into `control`.
fn set_segment(h: &mut libc::msghdr, control: &mut Control, segment: u16) {
    h.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    h.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
    debug_assert!(h.msg_controllen <= std::mem::size_of::<Control>());
    // SAFETY: the control buffer is aligned for cmsghdr and at least CMSG_SPACE(2) long, so
    // the first header and its data are within it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
    }
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

    fn queue(items: &[(u16, usize)]) -> Vec<(SocketAddr, bytes::BytesMut)> {
        items
            .iter()
            .map(|&(port, len)| {
                let to = SocketAddr::new([127, 0, 0, 1].into(), port);
                (to, bytes::BytesMut::from(&vec![0u8; len][..]))
            })
            .collect()
    }

    #[test]
    fn a_destinations_run_of_one_size_is_one_message() {
        // Packet-major, as fan-out queues them: A B A B A B A.
        let q = queue(&[
            (1, 1200),
            (2, 1200),
            (1, 1200),
            (2, 1200),
            (1, 800),
            (2, 1300),
            (1, 1200),
        ]);
        let mut scratch = Scratch::default();
        plan(&q, true, &mut scratch);
        let order: Vec<u32> = scratch.order.clone();
        assert_eq!(order, [0, 2, 4, 6, 1, 3, 5]);
        let m = |first, count, segment| Message {
            first,
            count,
            segment,
        };
        // A's shorter packet ends its run; B's longer one cannot join a 1,200-byte run.
        assert_eq!(
            scratch.messages,
            [m(0, 3, 1200), m(3, 1, 1200), m(4, 2, 1200), m(6, 1, 1300)]
        );
        plan(&q, false, &mut scratch);
        assert_eq!(scratch.order, [0, 1, 2, 3, 4, 5, 6]);
        assert!(scratch.messages.iter().all(|m| m.count == 1));
        assert_eq!(scratch.messages.len(), 7);
    }

    #[test]
    fn a_message_stops_at_the_kernels_limits() {
        let mut scratch = Scratch::default();
        plan(&queue(&[(1, 100); 150]), true, &mut scratch);
        let counts: Vec<usize> = scratch.messages.iter().map(|m| m.count).collect();
        assert_eq!(counts, [64, 64, 22]);
        plan(&queue(&[(1, 1400); 100]), true, &mut scratch);
        let counts: Vec<usize> = scratch.messages.iter().map(|m| m.count).collect();
        assert_eq!(
            counts,
            [46, 46, 8],
            "at most {GSO_MAX_BYTES} bytes a message"
        );
        split(&mut scratch.messages, 1, false);
        let counts: Vec<usize> = scratch.messages.iter().map(|m| m.count).collect();
        assert_eq!(counts.len(), 48);
        assert_eq!((counts[0], counts[1], counts[47]), (46, 1, 8));
    }

    #[tokio::test]
    async fn segmented_messages_arrive_as_the_datagrams_queued() {
        let a = UdpSocket::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let receivers: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap())
            .collect();
        let mut q = SendQueue::default();
        // Frames of five 1,000-byte packets and a 300-byte one, fanned out to two receivers.
        let mut sent = 0usize;
        for frame in 0..10u8 {
            for packet in 0..6u8 {
                let len = if packet == 5 { 300 } else { 1000 };
                for r in &receivers {
                    let mut d = bytes::BytesMut::from(&vec![frame; len][..]);
                    d[1] = packet;
                    q.push(r.local_addr().unwrap(), d);
                    sent += 1;
                }
            }
        }
        assert_eq!(q.flush(&a).await, 0);
        if gso_supported(&a) {
            assert_eq!(q.gso, Gso::On);
            assert_eq!(
                q.scratch.messages.len(),
                20,
                "a frame to a receiver is one message"
            );
        }
        for r in &receivers {
            let mut got = Vec::new();
            let mut batch = RecvBatch::new();
            while got.len() < sent / 2 {
                r.readable().await.unwrap();
                match batch.recv(r) {
                    Ok(_) => got.extend(batch.iter().map(|(_, d)| (d[0], d[1], d.len()))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            let expected: Vec<(u8, u8, usize)> = (0..10u8)
                .flat_map(|f| (0..6u8).map(move |p| (f, p, if p == 5 { 300 } else { 1000 })))
                .collect();
            assert_eq!(got, expected);
        }
    }
}
