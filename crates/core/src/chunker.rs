//! Content-defined chunking: FastCDC 2020 (the `fastcdc` crate's cut routine) with a *secret*
//! gear table derived from the repository's chunker key, so chunk boundaries — and the chunk
//! sizes visible in storage — depend on a key an observer does not have (see docs/FORMAT.md).

use std::io::{self, Read};

use coffer_format::ChunkerParams;
use fastcdc::v2020::{cut_gear, select_masks, Normalization};

/// A keyed chunker.
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    /// Length of the chunk cut at the start of a run of at least `max` zero bytes.
    zero_cut: usize,
}

/// Whether `data` is all zero bytes (16 at a time: runs at memory speed).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

impl Chunker {
    pub fn new(params: ChunkerParams, gear: Box<[u64; 256]>) -> Self {
        let mut gear_ls = Box::new([0u64; 256]);
        for (d, s) in gear_ls.iter_mut().zip(gear.iter()) {
            *d = s << 1;
        }
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        let mut c = Chunker {
            gear,
            gear_ls,
            min: params.min_size as usize,
            avg: params.avg_size as usize,
            max: params.max_size as usize,
            mask_s,
            mask_l,
            zero_cut: 0,
        };
        c.zero_cut = c.cut(&vec![0u8; c.max]);
        c
    }

    /// Length of the first chunk of `data` (all of it if shorter than the minimum).
    pub fn cut(&self, data: &[u8]) -> usize {
        if data.len() <= self.min {
            return data.len();
        }
        let (_, n) = cut_gear(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        n.max(1)
    }

    /// Largest chunk this chunker emits.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Read `r` to its end and call `f` with each chunk in order, and whether it is the
    /// chunk cut from a long run of zeros (always the same one: a disk image's empty space
    /// is neither chunked nor hashed again, and the cut is the one [`Self::cut`] would make).
    /// `buf` is reused between calls to avoid reallocating. Returns the number of bytes
    /// read. A read error stops the chunking and is returned after the chunks before it
    /// were delivered.
    pub fn chunk_reader<R: Read, E: From<io::Error>>(
        &self,
        r: &mut R,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&[u8], bool) -> Result<(), E>,
    ) -> Result<u64, E> {
        let cap = 2 * self.max;
        buf.resize(cap, 0);
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            // refill while there is room and the stream has more
            while !eof && end < cap {
                match r.read(&mut buf[end..cap]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        end += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
                if end - start >= self.max {
                    break;
                }
            }
            if start == end {
                return Ok(total);
            }
            // cut while a full max-size window is available (or the stream ended)
            while end - start >= self.max || (eof && start < end) {
                // (the cut looks at no more than `max` bytes: `max` zeros decide it)
                let zero = end - start >= self.max && is_zero(&buf[start..start + self.max]);
                let n = if zero {
                    self.zero_cut
                } else {
                    self.cut(&buf[start..end])
                };
                f(&buf[start..start + n], zero)?;
                start += n;
            }
            if eof && start == end {
                return Ok(total);
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    fn small() -> Chunker {
        let p = ChunkerParams {
            min_size: 256,
            avg_size: 1024,
            max_size: 4096,
        };
        Chunker::new(p, MasterKey::generate().gear_table())
    }

    fn chunks(c: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let n = c
            .chunk_reader::<_, io::Error>(&mut &data[..], &mut buf, |ch, _| {
                out.push(ch.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n as usize, data.len());
        out
    }

    /// A reader that returns at most 7 bytes per call, to exercise refills.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(b.len()).min(7);
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Deterministic pseudo-random bytes (splitmix64), so a failure reproduces.
    fn seeded(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn boundaries_resynchronise_after_an_insert() {
        // Content-defined boundaries come back a few chunks after an edit. How many chunks
        // an edit costs depends on the data (a boundary may fall within the minimum size of
        // the edit), so the test takes 20 fixed inputs: at most 8 chunks lost by any one,
        // at most 2 on average (boundaries tied to offsets would lose every later chunk, ~75).
        let c = small();
        let mut lost_total = 0;
        for seed in 0..20 {
            let data = seeded(seed, 200_000);
            let a = chunks(&c, &data);
            let mut edited = data.clone();
            edited.splice(100_000..100_000, [1u8, 2, 3]);
            let b = chunks(&c, &edited);
            let set: std::collections::HashSet<_> = a.iter().collect();
            let lost = b.len() - b.iter().filter(|x| set.contains(x)).count();
            assert!(
                lost <= 8,
                "seed {seed}: {lost} of {} chunks lost to a 3-byte insert",
                b.len()
            );
            lost_total += lost;
            assert!(a.iter().all(|ch| ch.len() <= 4096));
            assert!(a[..a.len() - 1].iter().all(|ch| ch.len() >= 256));
        }
        assert!(lost_total <= 40, "{lost_total} chunks lost over 20 inserts");
    }

    /// Runs of zeros take the shortcut and get exactly the cuts the gear would make, whatever
    /// surrounds them and however the reads fall.
    #[test]
    fn zero_runs_cut_as_the_gear_would() {
        let c = small();
        for seed in 0..8 {
            let mut data = seeded(seed, 30_000);
            let at = 1000 + 777 * seed as usize;
            data.splice(at..at, std::iter::repeat_n(0u8, 20_000 + 333 * seed as usize));
            data.extend(std::iter::repeat_n(0u8, 9_000));
            // the reference: every cut by the gear
            let mut want = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = c.cut(rest);
                want.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            let mut got = Vec::new();
            let mut zeros = 0;
            let mut buf = Vec::new();
            c.chunk_reader::<_, io::Error>(&mut Dribble(&data), &mut buf, |ch, zero| {
                if zero {
                    assert!(is_zero(ch));
                    zeros += 1;
                }
                got.push(ch.to_vec());
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want, "seed {seed}");
            assert!(zeros >= 4, "seed {seed}: the shortcut was not taken ({zeros})");
        }
        assert!(
            is_zero(&[0; 37]) && !is_zero(&[0, 0, 0, 1]) && !is_zero(&[[0; 33].as_slice(), &[1]].concat())
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn reassembles_and_ignores_read_sizes(data in proptest::collection::vec(any::<u8>(), 0..30_000)) {
            let c = small();
            let a = chunks(&c, &data);
            prop_assert_eq!(a.concat(), data.clone());
            let mut b = Vec::new();
            let mut buf = Vec::new();
            c.chunk_reader::<_, io::Error>(&mut Dribble(&data), &mut buf, |ch, _| { b.push(ch.to_vec()); Ok(()) }).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}
