//! Reading UDP datagrams in batches (`recvmmsg`), each with the instant the kernel received
//! it (Linux `SO_TIMESTAMPNS`, where asked for).
//!
//! A light receiver ([`crate::light`]) reads its socket a few times a second rather than at
//! every datagram: arrival times then come from the kernel, so latency and jitter stay what
//! they were on the wire however late the datagram is read. The kernel stamps with the wall
//! clock; [`Clock`] turns that into an [`Instant`] by the offset between the two clocks when
//! the batch is read, so a wall-clock step between receiving and reading moves the arrivals of
//! one batch at most.
//!
//! A light receiver needs the whole of only the datagrams it samples ([`crate::light`]): the
//! others are measured from their RTP header. So a read can be *short*: one slot in
//! [`SAMPLE_EVERY`] (from a random offset, so that which datagrams are sampled does not depend
//! on where they fall in the queue) reads whole datagrams, every other slot only their first
//! [`HEADER_SLOT`] bytes, and the kernel says (`MSG_TRUNC`) how long each datagram was. The
//! kernel then copies a few cache lines of a 1,200-byte media packet instead of all of them,
//! which was the largest single cost of a light receiver once its reads were batched.
//!
//! A light receiver's socket may also ask for *segmented* reads (Linux `UDP_GRO`): a sender
//! that hands the kernel a run of equal-size datagrams as one message (UDP GSO, as this
//! project's node does for each subscriber's frame) then reaches the socket as that one message,
//! with the size of its segments, instead of being cut into datagrams on the way in. The kernel's
//! receive path (queueing, waking, copying out, freeing: some 1.5 µs a datagram on this
//! machine, most of what a light receiver cost) is then paid once per message, and the segments
//! are split here. A segmented read cannot be short (where each segment's header lies is known
//! only once read), so it reads whole messages, and the sample is every [`SAMPLE_EVERY`]th
//! datagram of the read from a random offset. A browser does not ask for this: a full receiver
//! reads datagram by datagram, as one does.
//!
//! The buffers of a batch (some 1.1 MiB) are per thread, not per connection: a peer's task
//! reads and handles a whole batch before it awaits anything, so no two reads on a thread
//! overlap.

use std::cell::RefCell;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Datagrams read by one system call at most.
pub const BATCH: usize = 64;
/// Datagrams read by one system call of a read that is not short (a socket in the reactor,
/// read at readiness: a few datagrams at a time), so that such a read prepares no more
/// message headers than it is likely to fill.
pub const READY_BATCH: usize = 16;

/// Messages read by one system call of a segmented read, each up to 64 KiB (a
/// message holds a frame's datagrams to one receiver: some five of a 1.5 Mbps video stream).
pub const SEGMENTED_BATCH: usize = 16;

/// How a read takes datagrams: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Whole datagrams, [`READY_BATCH`] at most: a socket read at readiness.
    Ready,
    /// Whole datagrams in the sample's slots, the first [`HEADER_SLOT`] bytes in the others.
    Short,
    /// Whole messages of segments (a socket with `UDP_GRO` on).
    Segmented,
}

/// Slots (messages) a read uses: all of them for a short read (on a timer, many datagrams
/// waiting).
pub fn slots(mode: ReadMode) -> usize {
    match mode {
        ReadMode::Ready => READY_BATCH,
        ReadMode::Short => BATCH,
        ReadMode::Segmented => SEGMENTED_BATCH,
    }
}
/// Largest datagram read (media packets stay under 1,200 bytes; DTLS flights under 1,500).
const MAX_DATAGRAM: usize = 2048;
/// Largest message of a segmented read: a UDP payload's limit.
const MAX_MESSAGE: usize = 65_536;
/// Bytes of the data buffers: room for either layout.
const DATA_BYTES: usize = max(BATCH * MAX_DATAGRAM, SEGMENTED_BATCH * MAX_MESSAGE);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}
/// Bytes read of a datagram outside the sample in a short read: an RTP header with its CSRCs
/// and extensions, and whole STUN and SRTCP packets (a binding response is under 100 bytes,
/// a sender report with its SDES under 200), which must reach the peer connection whole.
pub const HEADER_SLOT: usize = 256;
/// One slot in this many reads whole datagrams in a short read: the light receiver's sample.
pub const SAMPLE_EVERY: usize = crate::light::SAMPLE_EVERY as usize;
/// Room for a control message holding a timespec (CMSG_SPACE(16) is 32 bytes) and one holding
/// the segment size (CMSG_SPACE(4) is 24), as u64s so that it is aligned as a cmsghdr must be.
const CONTROL_WORDS: usize = 8;

/// Asks the kernel to stamp every datagram received on `fd`.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt with a pointer to an int that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `UDP_GRO` from linux/udp.h (Linux 5.0), which the libc crate names only for some C
/// libraries.
const UDP_GRO: libc::c_int = 104;

/// Asks the kernel to hand over runs of equal-size datagrams sent as one message (UDP GSO) as
/// that one message with its segment size (`UDP_GRO`); `false` where the kernel cannot (before
/// Linux 5.0), and the socket then reads datagram by datagram.
pub fn enable_segments(fd: RawFd) -> io::Result<bool> {
    let on: libc::c_int = 1;
    // SAFETY: as in `enable`.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOPROTOOPT) => Ok(false),
        _ => Err(e),
    }
}

/// Wall-clock and monotonic time read together, to place kernel stamps on the monotonic clock.
/// The wall clock is kept in nanoseconds since the epoch, as the kernel's stamps are turned
/// into: placing a stamp is then one subtraction of integers per datagram rather than
/// `SystemTime` and `Duration` arithmetic (`Batch::datagram` went from 168 to 92 instructions a
/// datagram).
#[derive(Clone, Copy)]
pub struct Clock {
    wall_ns: u64,
    now: Instant,
}

impl Clock {
    pub fn now() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            wall_ns: u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX),
            now: Instant::now(),
        }
    }

    /// The instant of a kernel stamp (nanoseconds since the epoch): as long before `now` as
    /// the stamp is before the wall clock (never after `now`).
    fn instant(&self, stamp_ns: u64) -> Instant {
        let age = Duration::from_nanos(self.wall_ns.saturating_sub(stamp_ns));
        self.now.checked_sub(age).unwrap_or(self.now)
    }
}

/// What `recvmmsg` reads into: datagrams, senders, control messages, and the headers
/// pointing at them.
struct Buffers {
    data: [u8; DATA_BYTES],
    names: [libc::sockaddr_storage; BATCH],
    controls: [[u64; CONTROL_WORDS]; BATCH],
    iovs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
}

/// The buffers of one batch, and what the last read put in them.
pub struct Batch {
    b: Box<Buffers>,
    /// How many datagrams the last read got, and when it read them.
    count: usize,
    clock: Clock,
    /// Slots (datagrams, in a segmented read) `i` with `i % SAMPLE_EVERY == sample_offset`
    /// are the last read's sample.
    sample_offset: usize,
    mode: ReadMode,
}

/// One datagram of a batch.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// What was read of it: all of it, or its first [`HEADER_SLOT`] bytes.
    pub bytes: &'a [u8],
    /// Its length on the wire.
    pub len: usize,
    pub from: SocketAddr,
    /// When the kernel received it (or, on a socket without stamps, when the batch was read).
    pub at: Instant,
    /// Whether it fell in a slot of the sample.
    pub sample: bool,
}

impl Datagram<'_> {
    /// Whether all of it was read.
    pub fn whole(&self) -> bool {
        self.bytes.len() == self.len
    }
}

thread_local! {
    static BUFFERS: RefCell<Batch> = RefCell::new(Batch::new());
}

/// Runs `f` with this thread's batch buffers. `f` must not call it again (it would panic on
/// the second borrow); reading a batch and handling its datagrams never does.
pub fn with_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    BUFFERS.with_borrow_mut(|b| f(b))
}

impl Batch {
    fn new() -> Self {
        let mut b = Box::<Buffers>::new_uninit();
        Self {
            // SAFETY: every field is plain data (bytes, C structs, raw pointers) for which all
            // zeroes is a valid value; the pointers are set before each use.
            b: unsafe {
                b.as_mut_ptr().write_bytes(0, 1);
                b.assume_init()
            },
            count: 0,
            clock: Clock::now(),
            sample_offset: 0,
            mode: ReadMode::Ready,
        }
    }

    /// Reads up to [`slots`] messages from `fd` without blocking; how many it read (an error,
    /// `WouldBlock` included, when none). See [`ReadMode`] for what each slot takes.
    pub fn recv(&mut self, fd: RawFd, mode: ReadMode) -> io::Result<usize> {
        self.sample_offset = rand::random_range(0..SAMPLE_EVERY);
        self.mode = mode;
        let b = &mut *self.b;
        let slots = slots(mode);
        let slot_bytes = match mode {
            ReadMode::Segmented => MAX_MESSAGE,
            _ => MAX_DATAGRAM,
        };
        for i in 0..slots {
            let whole = mode != ReadMode::Short || i % SAMPLE_EVERY == self.sample_offset;
            b.iovs[i] = libc::iovec {
                iov_base: b.data[i * slot_bytes..].as_mut_ptr().cast(),
                iov_len: if whole { slot_bytes } else { HEADER_SLOT },
            };
            let h = &mut b.headers[i].msg_hdr;
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = b.controls[i].as_mut_ptr().cast();
            h.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            h.msg_flags = 0;
        }
        self.clock = Clock::now();
        // SAFETY: every header points into buffers of this batch, which outlive the call,
        // with the lengths of those buffers (slots * slot_bytes <= DATA_BYTES). MSG_TRUNC:
        // each message's length is the datagram's, however much of it fit.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                b.headers.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        Ok(self.count)
    }

    /// The datagrams of the last read, in the order they arrived: one per message, or each
    /// segment of a segmented message. Messages from a sender that is not an IP address are
    /// skipped.
    pub fn datagrams(&self) -> Datagrams<'_> {
        Datagrams {
            batch: self,
            message: 0,
            segmented: None,
            datagram: 0,
        }
    }

    /// Message `i` of the last read; `None` past the batch or for a sender that is not an IP
    /// address.
    fn message(&self, i: usize) -> Option<Message<'_>> {
        let b = &*self.b;
        let header = b.headers.get(i).filter(|_| i < self.count)?;
        let h = &header.msg_hdr;
        let mut at = self.clock.now;
        let mut segment = None;
        // SAFETY: the kernel filled this header's control buffer with `msg_controllen` bytes
        // of well-formed control messages; the CMSG_* macros walk them within that length,
        // and a control message's data (a timespec, an int) is read unaligned as CMSG_DATA
        // does not promise alignment.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                        let ts: libc::timespec =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        let stamp = (ts.tv_sec as u64)
                            .saturating_mul(1_000_000_000)
                            .saturating_add(ts.tv_nsec as u64);
                        at = self.clock.instant(stamp);
                    }
                    (libc::SOL_UDP, UDP_GRO) => {
                        let size: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        segment = usize::try_from(size).ok().filter(|&s| s > 0);
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        let len = header.msg_len as usize;
        let read = len.min(b.iovs[i].iov_len);
        // SAFETY: the iovec points into `b.data` with a length within it (set by `recv`).
        let bytes = unsafe { std::slice::from_raw_parts(b.iovs[i].iov_base.cast::<u8>(), read) };
        Some(Message {
            bytes,
            len,
            from: socket_addr(&b.names[i])?,
            at,
            segment,
        })
    }
}

/// One message of a read: a datagram, or a run of segments.
struct Message<'a> {
    /// What was read of it.
    bytes: &'a [u8],
    /// Its length on the wire.
    len: usize,
    from: SocketAddr,
    at: Instant,
    /// The size of its segments (`None`: one datagram).
    segment: Option<usize>,
}

/// The datagrams of a read: see [`Batch::datagrams`].
pub struct Datagrams<'a> {
    batch: &'a Batch,
    /// The message to read next.
    message: usize,
    /// What is left to split of a segmented message (its `bytes` shrink as segments go).
    segmented: Option<Message<'a>>,
    /// Datagrams yielded so far (a segmented read's sample is picked by this count).
    datagram: usize,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = Datagram<'a>;

    fn next(&mut self) -> Option<Datagram<'a>> {
        loop {
            if let Some(m) = self.segmented.as_mut().filter(|m| !m.bytes.is_empty()) {
                let size = m.segment.unwrap_or(usize::MAX).min(m.bytes.len());
                let (bytes, rest) = m.bytes.split_at(size);
                m.bytes = rest;
                let (from, at) = (m.from, m.at);
                return Some(self.yielded(bytes, bytes.len(), from, at, None));
            }
            let i = self.message;
            if i >= self.batch.count {
                return None;
            }
            self.message += 1;
            let Some(m) = self.batch.message(i) else {
                continue;
            };
            if m.segment.is_some() {
                // A message cut short by its slot loses its last segments, which the
                // measurements count as lost (a slot holds the largest UDP payload, so only a
                // sender that broke the kernel's limits gets here).
                self.segmented = Some(m);
                continue;
            }
            // Outside a segmented read the sample is picked by slot (see `Batch::recv`).
            let slot = (self.batch.mode != ReadMode::Segmented).then_some(i);
            return Some(self.yielded(m.bytes, m.len, m.from, m.at, slot));
        }
    }
}

impl<'a> Datagrams<'a> {
    /// The next datagram: in the sample by its slot, or else by its place in the read.
    fn yielded(
        &mut self,
        bytes: &'a [u8],
        len: usize,
        from: SocketAddr,
        at: Instant,
        slot: Option<usize>,
    ) -> Datagram<'a> {
        let place = slot.unwrap_or(self.datagram);
        self.datagram += 1;
        Datagram {
            bytes,
            len,
            from,
            at,
            sample: place % SAMPLE_EVERY == self.batch.sample_offset,
        }
    }
}

/// An IPv4 or IPv6 socket address from the kernel's representation.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in, which it can hold.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn datagrams_arrive_in_a_batch_with_their_sender_and_kernel_stamps() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(rx.as_raw_fd()).unwrap();
        // The kernel switches receive stamping on for the whole machine in deferred work
        // after the first socket asks: until then datagrams are stamped when read. (A load
        // tester's sockets live long; only their first datagrams can be affected.)
        std::thread::sleep(Duration::from_millis(100));
        with_batch(|b| {
            let err = b.recv(rx.as_raw_fd(), ReadMode::Ready).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "never blocks");
            // The first datagram 50 ms before the others: read in one batch, their stamps
            // still differ by that much (stamped on arrival by the kernel, not when read).
            // Compared with each other, not with the clocks, which a loaded machine or a
            // wall-clock step would make this test depend on.
            for i in 0..READY_BATCH + 2 {
                tx.send_to(&[i as u8; 3], rx.local_addr().unwrap()).unwrap();
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            assert_eq!(
                b.recv(rx.as_raw_fd(), ReadMode::Ready).unwrap(),
                READY_BATCH,
                "a full batch"
            );
            let mut stamps = Vec::new();
            let got: Vec<_> = b.datagrams().collect();
            assert_eq!(got.len(), READY_BATCH);
            for (i, d) in got.into_iter().enumerate() {
                assert_eq!(
                    (d.bytes, d.len, d.from),
                    (&[i as u8; 3][..], 3, tx.local_addr().unwrap())
                );
                assert!(d.at <= b.clock.now, "never after the read");
                stamps.push(d.at);
            }
            let apart = stamps[1].saturating_duration_since(stamps[0]);
            assert!(
                apart >= Duration::from_millis(45),
                "kernel stamps 50 ms apart: {apart:?}"
            );
            assert_eq!(
                b.recv(rx.as_raw_fd(), ReadMode::Ready).unwrap(),
                2,
                "then the rest"
            );
            let rest: Vec<_> = b.datagrams().map(|d| d.bytes).collect();
            assert_eq!(
                rest,
                [&[READY_BATCH as u8; 3][..], &[READY_BATCH as u8 + 1; 3][..]],
                "nothing past the batch"
            );
        });
    }

    #[test]
    fn a_short_read_takes_whole_datagrams_only_in_the_sample() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        with_batch(|b| {
            for i in 0..BATCH {
                // Sizes from 1,000 to 1,063 bytes, so that each slot says which it got.
                tx.send_to(&vec![i as u8; 1000 + i], rx.local_addr().unwrap())
                    .unwrap();
            }
            assert_eq!(b.recv(rx.as_raw_fd(), ReadMode::Short).unwrap(), BATCH);
            let mut sample = Vec::new();
            for (i, d) in b.datagrams().enumerate() {
                assert_eq!(
                    d.len,
                    1000 + i,
                    "the length on the wire, however much was read"
                );
                assert_eq!(d.whole(), d.sample);
                assert_eq!(d.bytes.len(), if d.sample { d.len } else { HEADER_SLOT });
                assert!(d.bytes.iter().all(|&x| x == i as u8));
                if d.sample {
                    sample.push(i);
                }
            }
            assert_eq!(sample.len(), BATCH / SAMPLE_EVERY, "{sample:?}");
            assert!(sample.windows(2).all(|w| w[1] - w[0] == SAMPLE_EVERY));
        });
    }

    /// Sends `payload` from `tx` as one message of `segment`-byte datagrams (UDP GSO).
    fn send_segmented(tx: &std::net::UdpSocket, to: SocketAddr, payload: &[u8], segment: u16) {
        let size = libc::c_int::from(segment);
        // SAFETY: a plain setsockopt with a pointer to an int that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "UDP_SEGMENT: {}", io::Error::last_os_error());
        tx.send_to(payload, to).unwrap();
    }

    #[test]
    fn a_segmented_read_takes_a_message_of_datagrams_whole_and_splits_it() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        // Linux 5.0 and later (the node's GSO needs 4.18): a CI machine without it would
        // measure something else than this project's benchmarks, so it fails here.
        assert!(
            enable_segments(rx.as_raw_fd()).unwrap(),
            "this kernel cannot hand over segmented messages (UDP_GRO)"
        );
        enable(rx.as_raw_fd()).unwrap();
        // Three frames of 5, 1 and 70 datagrams (the last one shorter), each sent as one
        // message, and a plain datagram: 77 datagrams, more than one sample's worth.
        let frame = |n: usize, last: usize, tag: u8| {
            let mut f = Vec::new();
            for i in 0..n {
                let len = if i + 1 == n { last } else { 900 };
                f.extend(std::iter::repeat_n(tag.wrapping_add(i as u8), len));
            }
            f
        };
        send_segmented(&tx, to, &frame(5, 300, 0), 900);
        send_segmented(&tx, to, &frame(1, 900, 10), 900);
        send_segmented(&tx, to, &frame(70, 10, 100), 900);
        send_segmented(&tx, to, &[7; 40], 0);
        with_batch(|b| {
            assert_eq!(b.recv(rx.as_raw_fd(), ReadMode::Segmented).unwrap(), 4);
            let got: Vec<_> = b.datagrams().collect();
            let mut want: Vec<(u8, usize)> = (0..5).map(|i| (i, 900)).collect();
            want[4].1 = 300;
            want.push((10, 900));
            want.extend((0..70).map(|i| (100 + i, if i == 69 { 10 } else { 900 })));
            want.push((7, 40));
            let seen: Vec<(u8, usize)> = got.iter().map(|d| (d.bytes[0], d.len)).collect();
            assert_eq!(seen, want, "every datagram, in order, with its own length");
            assert!(
                got.iter()
                    .all(|d| d.whole() && d.from == tx.local_addr().unwrap())
            );
            assert!(
                got.iter().all(|d| d.bytes.iter().all(|&x| x == d.bytes[0])),
                "each datagram's bytes are its own"
            );
            let sample: Vec<usize> = (0..got.len()).filter(|&i| got[i].sample).collect();
            assert!(
                (1..=2).contains(&sample.len()),
                "one datagram in {SAMPLE_EVERY} of the read: {sample:?}"
            );
            assert!(sample.windows(2).all(|w| w[1] - w[0] == SAMPLE_EVERY));
            // The segments of one message arrived together.
            assert!(got[..5].iter().all(|d| d.at == got[0].at));
        });
    }
}
