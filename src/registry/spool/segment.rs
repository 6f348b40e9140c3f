//! One segment file as the I/O thread appends to it. Large batches are written with
//! `O_DIRECT` where the file system takes it: they go from one aligned buffer to the disk
//! without a copy into the page cache (that copy, and the kernel's writeback of it, cost more
//! CPU than the rest of the spool; measured in the README). Small ones go through the page
//! cache, where a write costs microseconds rather than a round trip to the device.
//!
//! `O_DIRECT` asks that the buffer's address, the file offset and the length be multiples of
//! the device's logical block size (open(2), "O_DIRECT"); [`BLOCK`] (4096) is the largest
//! such size of nearly every device (one that asks more refuses the write with `EINVAL`, and
//! the file falls back to the page cache). So a segment is written in whole blocks, either
//! way: each write starts at the last partial block, rewriting its bytes followed by the new
//! ones, and pads the end with zeros, which the next write overwrites and
//! [`SegmentFile::finish`] cuts off. Readers read only what was published; where the writer
//! stopped before finishing a segment (a crash, a spool failure) zeros can follow the last
//! record, which readers take as its end (a record's kind is never 0). Where `O_DIRECT` is
//! refused (tmpfs before Linux 6.6), every write goes through the page cache.

use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The alignment of every write.
pub const BLOCK: usize = 4096;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; BLOCK]);

/// A growable byte buffer whose start is [`BLOCK`]-aligned: the I/O thread gathers a batch of
/// one job's records in it.
pub struct Staging {
    blocks: Vec<Block>,
    len: usize,
}

impl Staging {
    pub fn new() -> Staging {
        Staging {
            blocks: Vec::new(),
            len: 0,
        }
    }

    /// The bytes gathered so far.
    pub fn len(&self) -> usize {
        self.len
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.blocks.len() * BLOCK;
        // SAFETY: `Block` is `repr(C)` around `[u8; BLOCK]` with no padding (its size equals
        // its alignment), so the vector's blocks are `n` initialised, contiguous bytes that
        // this borrow of `self` owns exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), n) }
    }

    /// Appends `data`, growing by whole blocks.
    pub fn push(&mut self, data: &[u8]) {
        let end = self.len + data.len();
        let need = end.div_ceil(BLOCK);
        if need > self.blocks.len() {
            self.blocks.resize(need, Block([0; BLOCK]));
        }
        let start = self.len;
        self.bytes_mut()[start..end].copy_from_slice(data);
        self.len = end;
    }

    /// Empties the buffer; keeps its memory unless it grew past `keep` bytes.
    pub fn clear(&mut self, keep: usize) {
        self.len = 0;
        if self.blocks.len() * BLOCK > keep {
            self.blocks.truncate(keep / BLOCK);
            self.blocks.shrink_to_fit();
        }
    }

    /// The gathered bytes followed by zeros up to a whole block.
    fn padded(&mut self) -> &[u8] {
        let (len, end) = (self.len, self.len.next_multiple_of(BLOCK));
        let bytes = self.bytes_mut();
        bytes[len..end].fill(0);
        &bytes[..end]
    }
}

/// A segment file being appended to.
pub struct SegmentFile {
    file: File,
    /// Bytes of the file before `tail`; a multiple of [`BLOCK`].
    base: u64,
    /// The last partial block's bytes (fewer than [`BLOCK`]): on disk padded, and written
    /// again, followed by more, by the next write.
    tail: Vec<u8>,
    /// `O_DIRECT` is set on the file now.
    direct: bool,
    /// The file system refused `O_DIRECT`: every write goes through the page cache.
    refused: bool,
}

impl SegmentFile {
    /// Creates the file (it must not exist).
    pub fn create(path: &Path) -> io::Result<SegmentFile> {
        Ok(SegmentFile {
            file: File::create_new(path)?,
            base: 0,
            tail: Vec::with_capacity(BLOCK),
            direct: false,
            refused: false,
        })
    }

    /// Starts a batch: puts the last partial block first in `staging` (which must be empty).
    pub fn begin(&self, staging: &mut Staging) {
        debug_assert_eq!(staging.len(), 0);
        staging.push(&self.tail);
    }

    /// Writes the batch in `staging` (begun with [`SegmentFile::begin`]), with `O_DIRECT` if
    /// `direct` and the file system takes it, else through the page cache.
    ///
    /// # Errors
    /// The write's error. A refusal of `O_DIRECT` (an error from fcntl(2) `F_SETFL`, or
    /// `EINVAL`/`EOPNOTSUPP` from the write) is not one: the file goes through the page cache
    /// from then on ([`SegmentFile::refused`]) and the write is done that way.
    pub fn commit(&mut self, staging: &mut Staging, direct: bool) -> io::Result<()> {
        let len = staging.len();
        self.set_direct(direct && !self.refused);
        let mut result = self.file.write_all_at(staging.padded(), self.base);
        if let Err(e) = &result
            && self.direct
            && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
        {
            self.refuse();
            result = self.file.write_all_at(staging.padded(), self.base);
        }
        result?;
        let whole = len / BLOCK * BLOCK;
        self.base += whole as u64;
        self.tail.clear();
        self.tail
            .extend_from_slice(&staging.bytes_mut()[whole..len]);
        Ok(())
    }

    /// Whether `O_DIRECT` was refused on this file (the I/O thread then stops asking for it).
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Sets or clears `O_DIRECT` (fcntl(2) `F_SETFL`) if it is not so already.
    fn set_direct(&mut self, on: bool) {
        if on == self.direct {
            return;
        }
        let flags = fcntl_getfl(&self.file).map(|f| {
            if on {
                f | OFlags::DIRECT
            } else {
                f - OFlags::DIRECT
            }
        });
        match flags.and_then(|f| fcntl_setfl(&self.file, f)) {
            Ok(()) => self.direct = on,
            Err(_) if on => self.refuse(),
            // Clearing the flag cannot fail on a file it could be set on.
            Err(_) => {}
        }
    }

    fn refuse(&mut self) {
        tracing::debug!("O_DIRECT refused; a spool segment goes through the page cache");
        self.refused = true;
        self.set_direct(false);
    }

    /// Cuts the last block's padding off: the file ends at its last record.
    pub fn finish(self) -> io::Result<()> {
        self.file.set_len(self.base + self.tail.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_of_any_size_land_exactly_and_the_padding_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut seg = SegmentFile::create(&path).unwrap();
        let mut staging = Staging::new();
        let mut want = Vec::new();
        for (i, n) in [1usize, 4095, 1, 5000, 8192, 3, 0, 70000]
            .into_iter()
            .enumerate()
        {
            let chunk: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8 | 1).collect();
            seg.begin(&mut staging);
            staging.push(&chunk);
            seg.commit(&mut staging, i % 2 == 0).unwrap();
            staging.clear(1 << 20);
            want.extend_from_slice(&chunk);
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(on_disk.len() % BLOCK, 0, "written in whole blocks");
            assert_eq!(&on_disk[..want.len()], &want[..]);
            assert!(
                on_disk[want.len()..].iter().all(|&b| b == 0),
                "zero padding"
            );
        }
        seg.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn staging_starts_aligned_and_shrinks_back() {
        let mut s = Staging::new();
        s.push(&vec![7u8; 3 * BLOCK + 5]);
        assert_eq!(s.bytes_mut().as_ptr() as usize % BLOCK, 0);
        assert_eq!(s.padded().len(), 4 * BLOCK);
        s.clear(BLOCK);
        assert_eq!((s.len(), s.blocks.len()), (0, 1));
    }
}
