//! The buffer forwarded packets are written and protected in before they are sent.
//!
//! Each datagram is cut from a large chunk and shares it until the worker has sent it; a chunk
//! whose datagrams are all gone is used again, so once the worker has as many chunks as one
//! turn of its loop fills, sending allocates nothing.

use bytes::BytesMut;

/// Size of a chunk: about fifty full-size packets.
const CHUNK: usize = 64 * 1024;
/// Chunks kept for reuse beyond the one being filled (a turn fanning one packet out to a few
/// thousand subscribers fills this many).
const MAX_SPARE: usize = 64;

/// See the module documentation.
#[derive(Default)]
pub struct SendArena {
    current: BytesMut,
    spare: Vec<BytesMut>,
}

impl SendArena {
    /// The buffer to write the next datagram into, with room for `len` bytes.
    pub fn room(&mut self, len: usize) -> &mut BytesMut {
        if self.current.capacity() < len {
            self.next_chunk(len);
        }
        &mut self.current
    }

    fn next_chunk(&mut self, len: usize) {
        let size = CHUNK.max(len);
        let next = match self.spare.iter_mut().position(|c| c.try_reclaim(size)) {
            Some(i) => self.spare.swap_remove(i),
            None => BytesMut::with_capacity(size),
        };
        let full = std::mem::replace(&mut self.current, next);
        if self.spare.len() < MAX_SPARE && full.capacity() + full.len() > 0 {
            self.spare.push(full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn chunks_come_back_once_their_datagrams_are_sent() {
        let mut arena = SendArena::default();
        let round = |arena: &mut SendArena| {
            let mut sent = Vec::new();
            for _ in 0..200 {
                let b = arena.room(1200);
                b.put_bytes(7, 1200);
                sent.push(b.split_to(1200));
            }
            assert!(sent.iter().all(|d| d.len() == 1200 && d[0] == 7));
            arena.spare.len() + 1
        };
        // The first rounds grow the chunks a turn needs; from then on none is added.
        round(&mut arena);
        let chunks = round(&mut arena);
        for _ in 0..5 {
            assert_eq!(round(&mut arena), chunks, "no new chunk once warm");
        }
    }
}
