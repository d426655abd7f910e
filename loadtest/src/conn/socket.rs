//! A connection's UDP socket: in tokio's reactor until a light connection connects, then read
//! on a timer ([`crate::read_pace`]), short or segmented ([`crate::stamped`]).

use crate::stamped::{self, ReadMode};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A connection's socket: in tokio's reactor, to wait on its readiness; or out of it, read on
/// a timer (a connected light connection).
pub(super) enum Socket {
    Reactor(UdpSocket),
    /// Read on a timer, short or segmented.
    Timer(std::net::UdpSocket, ReadMode),
}

impl Socket {
    fn fd(&self) -> RawFd {
        match self {
            Socket::Reactor(s) => s.as_raw_fd(),
            Socket::Timer(s, _) => s.as_raw_fd(),
        }
    }

    pub(super) fn mode(&self) -> ReadMode {
        match self {
            Socket::Reactor(_) => ReadMode::Ready,
            Socket::Timer(_, mode) => *mode,
        }
    }

    /// Reads a batch into `batch`: how many messages, 0 when there were none. A socket read
    /// on a timer (a connected light connection's) reads short (whole datagrams only for the
    /// sample) or segmented ([`stamped`]).
    pub(super) fn recv(&self, batch: &mut stamped::Batch) -> io::Result<usize> {
        let fd = self.fd();
        let r = match self {
            // Readiness is cleared when the closure says `WouldBlock`: after a batch that
            // was not full, the socket is empty (or tokio's next event says otherwise), so the
            // next wake-up is not spent on a read that finds nothing.
            Socket::Reactor(s) => {
                let mut got = 0;
                let r = s.try_io(Interest::READABLE, || {
                    got = batch.recv(fd, ReadMode::Ready)?;
                    if got < stamped::slots(ReadMode::Ready) {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                r.map(|()| got).or_else(|e| match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(got),
                    _ => Err(e),
                })
            }
            Socket::Timer(_, mode) => batch.recv(fd, *mode),
        };
        match r {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            // ICMP port unreachable from a peer that went away surfaces here on Linux.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The socket to wait on for readiness; none once read on a timer.
    pub(super) fn readiness(&self) -> Option<&UdpSocket> {
        match self {
            Socket::Reactor(s) => Some(s),
            Socket::Timer(..) => None,
        }
    }

    /// Leaves the reactor (which closes its descriptor; a duplicate keeps the socket open) to
    /// be read on a timer, segmented if `segments` and the kernel can, else short.
    pub(super) fn read_on_timer(&mut self, segments: bool) -> io::Result<()> {
        if let Socket::Reactor(s) = self {
            let fd = s.as_fd().try_clone_to_owned()?;
            let segmented = segments && stamped::enable_segments(fd.as_raw_fd())?;
            let mode = if segmented {
                ReadMode::Segmented
            } else {
                ReadMode::Short
            };
            *self = Socket::Timer(std::net::UdpSocket::from(fd), mode);
        }
        Ok(())
    }

    /// Sends one datagram. UDP: a send that fails is a lost packet, which the measurements
    /// will show (a socket read on a timer never waits: its send buffer is far from full).
    pub(super) async fn send_to(&self, d: &[u8], to: SocketAddr) {
        let _ = match self {
            Socket::Reactor(s) => s.send_to(d, to).await,
            Socket::Timer(s, _) => s.send_to(d, to),
        };
    }
}
