//! A job's output as an agent gets it: the first and the last part of each stream, with the
//! number of bytes left out between them. Memory stays bounded however much a command prints.

use std::collections::VecDeque;

/// One stream's head and tail. Keeps the first `limit / 2` bytes and the last `limit / 2`
/// bytes seen; everything between is only counted.
#[derive(Debug)]
pub struct HeadTail {
    head_limit: usize,
    tail_limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl HeadTail {
    pub fn new(limit: usize) -> HeadTail {
        let head_limit = limit / 2;
        HeadTail {
            head_limit,
            tail_limit: limit - head_limit,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_limit - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_limit {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_limit..]);
        } else {
            let over = (self.tail.len() + data.len()).saturating_sub(self.tail_limit);
            self.tail.drain(..over);
            self.tail.extend(data);
        }
    }

    /// Bytes seen in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes seen but not kept.
    pub fn omitted(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }

    /// The kept text; where bytes were left out, a marker line says how many. A character
    /// cut at either edge of the gap is dropped rather than shown broken.
    pub fn render(&self) -> String {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let omitted = self.omitted();
        if omitted == 0 {
            let mut all = self.head.clone();
            all.extend_from_slice(&tail);
            return String::from_utf8_lossy(&all).into_owned();
        }
        let head = trim_utf8_end(&self.head);
        let tail = trim_utf8_start(&tail);
        let mut out = String::from_utf8_lossy(head).into_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("[… {omitted} bytes left out …]\n"));
        out.push_str(&String::from_utf8_lossy(tail));
        out
    }
}

/// `bytes` without a UTF-8 sequence cut off at its end (the last chunk's invalid part, when
/// it is the start of a character rather than garbage).
fn trim_utf8_end(bytes: &[u8]) -> &[u8] {
    let cut = bytes.utf8_chunks().last().map_or(0, |chunk| {
        let bad = chunk.invalid();
        let incomplete = std::str::from_utf8(bad).is_err_and(|e| e.error_len().is_none());
        if incomplete { bad.len() } else { 0 }
    });
    &bytes[..bytes.len() - cut]
}

/// `bytes` without the continuation bytes of a sequence whose start was cut off.
fn trim_utf8_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take(3)
        .take_while(|b| (**b & 0xC0) == 0x80)
        .count();
    &bytes[skip..]
}

#[cfg(test)]
mod tests {
    use super::HeadTail;

    #[test]
    fn short_output_is_kept_whole() {
        let mut h = HeadTail::new(16);
        h.push(b"hello ");
        h.push(b"world\n");
        assert_eq!(h.render(), "hello world\n");
        assert_eq!((h.total(), h.omitted()), (12, 0));
    }

    #[test]
    fn long_output_keeps_head_and_tail_and_counts_the_rest() {
        let mut h = HeadTail::new(10);
        for i in 0..100u8 {
            h.push(&[b'a' + (i % 26)]);
        }
        h.push(b"0123456789");
        assert_eq!(h.total(), 110);
        assert_eq!(h.omitted(), 100);
        assert_eq!(h.render(), "abcde\n[… 100 bytes left out …]\n56789");
    }

    #[test]
    fn one_big_chunk_is_split_the_same_way() {
        let mut h = HeadTail::new(8);
        h.push(&[b'x'; 1000]);
        assert_eq!(h.omitted(), 992);
        assert!(
            h.render()
                .starts_with("xxxx\n[… 992 bytes left out …]\nxxxx")
        );
    }

    #[test]
    fn characters_cut_at_the_gap_are_dropped() {
        let mut h = HeadTail::new(6);
        h.push("ééééééé".as_bytes()); // 14 bytes, 2 each
        let text = h.render();
        assert!(!text.contains('\u{FFFD}'), "{text}");
        assert_eq!(text, "é\n[… 8 bytes left out …]\né");
    }
}
