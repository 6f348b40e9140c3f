//! A candidate finder for the redactor's patterns that is fast inside WebAssembly.
//!
//! `regex-automata` finds the candidates of a literal prefix set with Teddy (SIMD) on x86-64
//! and aarch64; on `wasm32` it falls back to Rabin-Karp, which costs ~38 instructions a byte
//! and was most of `secret-redact`'s time. This is a small Teddy of our own on WebAssembly's
//! 128-bit SIMD: every match of every pattern begins with one of a finite set of literal
//! prefixes (`regex-syntax`'s prefix extraction, optimised as `regex-automata` does for its own
//! prefilters); their first `width` (≤ 3) bytes are folded into 8 buckets of nibble masks, and a
//! position is a *candidate* when, for each of those bytes, the low- and the high-nibble masks
//! share a bucket with the other bytes. Candidates are a superset of the positions where a
//! literal begins, so no match is missed; a false candidate costs one anchored search. Without
//! a finite prefix set (a pattern that begins with a class repeated, say) there is no filter.
use regex_syntax::hir::{
    Hir,
    literal::{ExtractKind, Extractor, Seq},
};

/// Candidate positions of a pattern set; see the module docs.
#[derive(Clone)]
pub struct Prefilter {
    /// Bytes of each literal that are checked (1 to 3).
    width: usize,
    /// Per checked byte: bucket bits by low nibble, then by high nibble.
    lo: [[u8; 16]; 3],
    hi: [[u8; 16]; 3],
}

impl Prefilter {
    /// The filter for `hirs` (one per pattern), or `None` when some pattern has no finite set
    /// of literal prefixes, or one of them is empty (it would match everywhere).
    pub fn new(hirs: &[Hir]) -> Option<Prefilter> {
        let mut extractor = Extractor::new();
        extractor.kind(ExtractKind::Prefix);
        let mut seq = Seq::empty();
        for hir in hirs {
            seq.union(&mut extractor.extract(hir));
        }
        seq.optimize_for_prefix_by_preference();
        let literals = seq.literals()?;
        let width = literals.iter().map(|l| l.as_bytes().len()).min()?.min(3);
        if width == 0 {
            return None;
        }
        // Literals that begin alike share a bucket, so a bucket's masks stay narrow.
        let mut firsts: Vec<u8> = literals
            .iter()
            .map(|l| l.as_bytes()[0].to_ascii_lowercase())
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        let mut pre = Prefilter {
            width,
            lo: [[0; 16]; 3],
            hi: [[0; 16]; 3],
        };
        for literal in literals {
            let bytes = literal.as_bytes();
            let first = bytes[0].to_ascii_lowercase();
            let bucket = firsts.iter().position(|&b| b == first).unwrap_or(0) % 8;
            let bit = 1u8 << bucket;
            for (t, &b) in bytes[..width].iter().enumerate() {
                pre.lo[t][usize::from(b & 15)] |= bit;
                pre.hi[t][usize::from(b >> 4)] |= bit;
            }
        }
        // Unused offsets accept every byte.
        for t in width..3 {
            pre.lo[t] = [0xff; 16];
            pre.hi[t] = [0xff; 16];
        }
        Some(pre)
    }

    /// How many leading bytes of a literal a candidate is checked against: a position closer
    /// than this to the end of the haystack can never be a candidate, so callers must check
    /// those positions themselves.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The first candidate in `hay[from..to]` (with `to` at most `hay.len() - width + 1`).
    pub fn find(&self, hay: &[u8], from: usize, to: usize) -> Option<usize> {
        let to = to.min((hay.len() + 1).saturating_sub(self.width));
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: `simd::find` reads 16 bytes at `i + t` for `t < 3` only while
        // `i + 18 <= hay.len()`.
        let from = match unsafe { simd::find(self, hay, from, to) } {
            Ok(found) => return Some(found),
            Err(resume) => resume,
        };
        (from..to).find(|&i| self.at(hay, i))
    }

    /// Whether `i` is a candidate (`i + width <= hay.len()`).
    fn at(&self, hay: &[u8], i: usize) -> bool {
        let mut bits = 0xff;
        for t in 0..self.width {
            let b = hay[i + t];
            bits &= self.lo[t][usize::from(b & 15)] & self.hi[t][usize::from(b >> 4)];
        }
        bits != 0
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::Prefilter;
    use core::arch::wasm32::*;

    /// Sixteen positions a step from `at` while 18 bytes are readable: `Ok(candidate)`, or
    /// `Err(position)` where the scalar loop takes over. Safety: `hay` is a valid slice (the
    /// reads stay inside it).
    pub(super) unsafe fn find(
        pre: &Prefilter,
        hay: &[u8],
        mut at: usize,
        to: usize,
    ) -> Result<usize, usize> {
        let table = |t: [u8; 16]| unsafe { v128_load(t.as_ptr().cast()) };
        let (lo0, hi0) = (table(pre.lo[0]), table(pre.hi[0]));
        let (lo1, hi1) = (table(pre.lo[1]), table(pre.hi[1]));
        let (lo2, hi2) = (table(pre.lo[2]), table(pre.hi[2]));
        let nibble = u8x16_splat(15);
        let mask = |x: v128, lo: v128, hi: v128| {
            v128_and(
                u8x16_swizzle(lo, v128_and(x, nibble)),
                u8x16_swizzle(hi, u8x16_shr(x, 4)),
            )
        };
        while at + 16 <= to && at + 18 <= hay.len() {
            let p = unsafe { hay.as_ptr().add(at) };
            let (x0, x1, x2) = unsafe {
                (
                    v128_load(p.cast()),
                    v128_load(p.add(1).cast()),
                    v128_load(p.add(2).cast()),
                )
            };
            let bits = v128_and(
                v128_and(mask(x0, lo0, hi0), mask(x1, lo1, hi1)),
                mask(x2, lo2, hi2),
            );
            if v128_any_true(bits) {
                let hits = u8x16_bitmask(u8x16_ne(bits, u8x16_splat(0)));
                return Ok(at + hits.trailing_zeros() as usize);
            }
            at += 16;
        }
        Err(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::util::syntax;

    fn filter(patterns: &[&str]) -> Option<Prefilter> {
        let cfg = syntax::Config::new().unicode(false).utf8(false);
        let hirs: Vec<Hir> = patterns
            .iter()
            .map(|p| syntax::parse_with(p, &cfg).unwrap())
            .collect();
        Prefilter::new(&hirs)
    }

    #[test]
    fn every_literal_start_is_a_candidate_and_plain_text_mostly_is_not() {
        let pre = filter(&[
            r"AKIA[0-9A-Z]{16}",
            r"(?i:authorization): \S+",
            r"-----BEGIN",
        ])
        .unwrap();
        assert_eq!(pre.width(), 3);
        let hay = b"log line one AKIA0123 and AuThOrIzation: x and -----BEGIN here";
        for needle in [&b"AKIA"[..], b"AuTh", b"-----"] {
            let at = hay.windows(needle.len()).position(|w| w == needle).unwrap();
            assert!(pre.at(hay, at), "{}", String::from_utf8_lossy(needle));
        }
        let text = b"2026-12-01T04:00:00Z INFO served /api/v1/items in 12 ms status=200\n";
        assert_eq!(pre.find(text, 0, text.len()), None);
        assert_eq!(pre.find(hay, 0, hay.len()), Some(13));
    }

    #[test]
    fn no_filter_without_a_finite_prefix_set() {
        assert!(filter(&[r"[a-z]+@example\.com", r"AKIA"]).is_none());
    }

    #[test]
    fn a_short_literal_narrows_the_width() {
        let pre = filter(&[r"x[^a]", r"AKIA"]).unwrap();
        assert_eq!(pre.width(), 1);
        assert_eq!(pre.find(b"abcx1", 0, 5), Some(3));
    }
}
