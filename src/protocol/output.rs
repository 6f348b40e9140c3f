//! How a job's raw output becomes `process.output`: [`OutputEncoder`] turns each read into
//! UTF-8 text (holding back a character split between reads) or base64. The live stream and
//! `attach`'s replay both use it, so a replay in a job's own encoding is the live stream again.

use super::notify::{JobId, Output, OutputEncoding, Stream};
use base64::Engine;

/// Decodes as much of `bytes` as forms complete characters; invalid bytes become U+FFFD (one
/// per maximal invalid sequence, as `String::from_utf8_lossy`). Returns the text and how many
/// bytes it used: an incomplete character at the end is left for the next read unless
/// `at_eof`.
pub fn decode_utf8(bytes: &[u8], at_eof: bool) -> (String, usize) {
    // Fast path: `from_utf8` validates a word at a time, `utf8_chunks` a byte at a time.
    if let Ok(text) = std::str::from_utf8(bytes) {
        return (text.to_owned(), bytes.len());
    }
    let mut out = String::with_capacity(bytes.len());
    let mut used = 0;
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        used += chunk.valid().len();
        let bad = chunk.invalid();
        if bad.is_empty() {
            continue;
        }
        let incomplete = used + bad.len() == bytes.len()
            && std::str::from_utf8(bad).is_err_and(|e| e.error_len().is_none());
        if incomplete && !at_eof {
            break;
        }
        out.push(char::REPLACEMENT_CHARACTER);
        used += bad.len();
    }
    (out, used)
}

/// Encodes one job's reads, both streams, in one encoding.
pub struct OutputEncoder {
    job_id: JobId,
    encoding: OutputEncoding,
    /// Per stream (stdout, stderr): bytes of a character not complete yet (`utf8` only).
    carry: [Vec<u8>; 2],
}

impl OutputEncoder {
    pub fn new(job_id: JobId, encoding: OutputEncoding) -> OutputEncoder {
        OutputEncoder {
            job_id,
            encoding,
            carry: [Vec::new(), Vec::new()],
        }
    }

    /// The notification for one read of `bytes` at `offset` in `stream` (empty `bytes`: the
    /// stream's end, which flushes a held-back partial character as U+FFFD). `None` when
    /// there is nothing to send.
    pub fn encode(
        &mut self,
        stream: Stream,
        seq: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Option<Output> {
        let (data, offset) = match self.encoding {
            OutputEncoding::Base64 if bytes.is_empty() => return None,
            OutputEncoding::Base64 => (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                offset,
            ),
            OutputEncoding::Utf8 => {
                let carry = &mut self.carry[usize::from(stream == Stream::Stderr)];
                let at_eof = bytes.is_empty();
                let start = offset - carry.len() as u64;
                let text = if carry.is_empty() {
                    let (text, used) = decode_utf8(bytes, at_eof);
                    carry.extend_from_slice(&bytes[used..]);
                    text
                } else {
                    let mut joined = std::mem::take(carry);
                    joined.extend_from_slice(bytes);
                    let (text, used) = decode_utf8(&joined, at_eof);
                    *carry = joined[used..].to_vec();
                    text
                };
                if text.is_empty() {
                    return None;
                }
                (text, start)
            }
        };
        Some(Output {
            job_id: self.job_id.clone(),
            stream,
            data,
            seq,
            offset,
            encoding: self.encoding,
        })
    }

    /// Forgets held-back bytes (after a gap in a replay, they cannot be completed).
    pub fn reset(&mut self) {
        self.carry = [Vec::new(), Vec::new()];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_characters_wait_for_the_next_read() {
        let euro = "€".as_bytes(); // 3 bytes
        let (text, used) = decode_utf8(&[b'a', euro[0], euro[1]], false);
        assert_eq!((text.as_str(), used), ("a", 1));
        let (text, used) = decode_utf8(&[b'a', euro[0], euro[1]], true);
        assert_eq!((text.as_str(), used), ("a\u{FFFD}", 3));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (text, used) = decode_utf8(b"a\xffb\xc3", false);
        assert_eq!((text.as_str(), used), ("a\u{FFFD}b", 3));
    }

    #[test]
    fn a_split_character_is_sent_whole_with_its_offset() {
        let mut enc = OutputEncoder::new("j".into(), OutputEncoding::Utf8);
        let euro = "€".as_bytes();
        let first = enc.encode(Stream::Stdout, 1, 0, &[b'a', euro[0]]).unwrap();
        assert_eq!((first.data.as_str(), first.offset), ("a", 0));
        let second = enc.encode(Stream::Stdout, 2, 2, &euro[1..]).unwrap();
        assert_eq!((second.data.as_str(), second.offset), ("€", 1));
        assert!(enc.encode(Stream::Stdout, 3, 4, &[]).is_none());
    }

    #[test]
    fn base64_keeps_every_byte() {
        let mut enc = OutputEncoder::new("j".into(), OutputEncoding::Base64);
        let out = enc.encode(Stream::Stderr, 1, 7, b"\xff\x00a").unwrap();
        assert_eq!((out.data.as_str(), out.offset), ("/wBh", 7));
        assert_eq!(out.encoding, OutputEncoding::Base64);
    }
}
