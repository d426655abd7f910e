//! When a connected light connection reads its socket: on a timer, as rarely as its socket's
//! receive buffer allows, on a grid shared by every connection of the process.
//!
//! Every read costs a task wake-up, a turn of the peer's loop and a `recvmmsg` whatever it
//! finds; the datagrams it reads cost the kernel's receive path each. Reading 10 datagrams at
//! a time (as the first light receiver did, with Linux's default 208 KiB buffer) paid the
//! fixed part once per 10 packets; reading 100 pays it once per 100. Arrival times come from
//! the kernel's stamps ([`crate::stamped`]), so how long a datagram waits in the queue changes
//! no measurement.
//!
//! The queue must stay well below the receive buffer, or the kernel drops what does not fit
//! and the load tester would report loss the server did not cause. So the socket asks for a
//! larger buffer ([`RCVBUF`], as far as `net.core.rmem_max` allows), and the period adapts to
//! what the kernel granted: a read that found more than a quarter of what the buffer holds
//! halves the period, one that found less than a sixteenth doubles it, between
//! [`READ_PERIOD_MIN`] and [`READ_PERIOD_MAX`].
//!
//! Reads fall on a [`GRID`] of instants shared by all connections, so that the runtime wakes
//! once for every connection due in the same 10 ms instead of once per connection.

use crate::media::epoch;
use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Longest time datagrams wait in a connected light connection's socket: two reads a second
/// at most, where its receiver reports and timers (once a second) fall on every other read.
pub const READ_PERIOD_MAX: Duration = Duration::from_millis(500);
/// The period starts here once connected and adapts to the packet rate.
const READ_PERIOD_START: Duration = Duration::from_millis(50);
const READ_PERIOD_MIN: Duration = Duration::from_millis(10);
/// Receive buffer asked for (the kernel doubles it for its bookkeeping, and caps the request
/// at `net.core.rmem_max`, 208 KiB on a stock machine). Memory is used only while datagrams
/// wait: half a second of a 1.5 Mbps stream is some 100 datagrams, about 280 KB of kernel
/// memory just before a read.
const RCVBUF: usize = 1 << 20;
/// Kernel memory a queued datagram of a full-size media packet takes (its `truesize`: the
/// 2 KiB data buffer and the socket buffer's own structures), rounded up.
const DATAGRAM_TRUESIZE: usize = 3000;
/// Reads are aligned to multiples of this since the process's epoch.
pub const GRID: Duration = Duration::from_millis(10);

/// See the module documentation.
#[derive(Debug)]
pub struct ReadPace {
    period: Duration,
    /// A read of more datagrams than this halves the period; of fewer than `idle`, doubles it.
    busy: usize,
    idle: usize,
    next: Option<Instant>,
}

impl ReadPace {
    /// Asks for a larger receive buffer on `fd` and paces reads by what the kernel granted.
    pub fn for_socket(fd: RawFd) -> io::Result<Self> {
        let want = RCVBUF as libc::c_int;
        // SAFETY: plain socket options with pointers to ints that outlive the calls.
        let granted = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&want as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            let mut got: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            got.max(0) as usize
        };
        Ok(Self::with_buffer(granted))
    }

    /// Pacing for a receive buffer of `bytes` (as the kernel reports it).
    pub fn with_buffer(bytes: usize) -> Self {
        let holds = bytes / DATAGRAM_TRUESIZE;
        let busy = (holds / 4).max(8);
        Self {
            period: READ_PERIOD_START,
            busy,
            idle: busy / 4,
            next: None,
        }
    }

    /// Starts reading on the timer (the connection just connected).
    pub fn start(&mut self, now: Instant) {
        self.next = Some(on_grid(now + self.period));
    }

    /// When the next read is due; `None` before [`ReadPace::start`].
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    /// A read at `now` found `read` datagrams: adapts the period and schedules the next read.
    pub fn after_read(&mut self, now: Instant, read: usize) {
        if read > self.busy {
            self.period = (self.period / 2).max(READ_PERIOD_MIN);
        } else if read < self.idle {
            self.period = (self.period * 2).min(READ_PERIOD_MAX);
        }
        self.next = Some(on_grid(now + self.period));
    }
}

/// The first instant of the grid at or after `t`.
fn on_grid(t: Instant) -> Instant {
    let since = t.saturating_duration_since(epoch()).as_nanos();
    let grid = GRID.as_nanos();
    let up = (grid - since % grid) % grid;
    t + Duration::from_nanos(up as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_follows_the_packet_rate_within_what_the_buffer_holds() {
        // Linux's default buffer as getsockopt reports it (208 KiB doubled): 141 datagrams.
        let mut p = ReadPace::with_buffer(425_984);
        assert_eq!((p.busy, p.idle), (35, 8));
        let t = epoch() + Duration::from_secs(5);
        p.start(t);
        assert_eq!(p.next(), Some(t + READ_PERIOD_START));
        // 100 packets a second: 5 per read at 50 ms, too few: the period doubles to 100 ms,
        // where a read finds 10.
        p.after_read(t, 5);
        assert_eq!(p.period, Duration::from_millis(100));
        assert_eq!(p.next(), Some(t + Duration::from_millis(100)));
        p.after_read(t, 10);
        assert_eq!(p.period, Duration::from_millis(100), "settled");
        // A burst: halved, never below the minimum.
        for _ in 0..10 {
            p.after_read(t, 100);
        }
        assert_eq!(p.period, READ_PERIOD_MIN);
        // A larger buffer lets reads take more at a time; never more than the maximum period.
        let mut big = ReadPace::with_buffer(2 << 20);
        assert_eq!(big.busy, 174);
        big.start(t);
        for _ in 0..10 {
            big.after_read(t, 40);
        }
        assert_eq!(big.period, READ_PERIOD_MAX);
    }

    #[test]
    fn reads_fall_on_the_shared_grid() {
        let t = epoch() + Duration::from_millis(1234) + Duration::from_micros(1);
        assert_eq!(on_grid(t), epoch() + Duration::from_millis(1240));
        let exact = epoch() + Duration::from_millis(1240);
        assert_eq!(on_grid(exact), exact);
    }

    #[test]
    fn a_socket_gets_a_larger_buffer_if_the_kernel_allows() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = ReadPace::for_socket(std::os::fd::AsRawFd::as_raw_fd(&s)).unwrap();
        // At least what a default socket holds; more where rmem_max allows.
        assert!(p.busy >= 8, "{p:?}");
    }
}
