//! Reed–Solomon parity of packs: written beside each pack, it repairs damage (rot, a bad
//! sector, a truncated upload) without any key. docs/FORMAT.md "Parity" has the layout and the
//! sizing; this module computes, checks and repairs.
//!
//! Parity is untrusted help: whoever can write to storage can write a parity file. A repair is
//! kept only when the rebuilt pack hashes to the pack's name, so a forged or damaged parity
//! file can make a repair fail but never make a wrong pack.

use std::borrow::Cow;

use coffer_format::{parity_shards, shard_layout, PackId, ParityHeader, PARITY_CHECK_LEN};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use thiserror::Error;

/// Why a pack could not be repaired, or a parity file is not the one its pack needs.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParityError {
    #[error("parity file does not decode: {0}")]
    Damaged(String),
    #[error("parity file belongs to pack {0}")]
    OtherPack(String),
    #[error("{damaged} of its {shards} shards are damaged; parity repairs at most {can}")]
    TooDamaged {
        damaged: usize,
        shards: usize,
        can: usize,
    },
    #[error("the rebuilt pack does not hash to its name (the parity file is wrong)")]
    Mismatch,
    #[error("parity file does not match the pack (it was written for other bytes, or is damaged)")]
    Stale,
}

/// The result of a repair.
#[derive(Debug)]
pub struct Repaired {
    /// The pack's bytes, hashing to its name.
    pub bytes: Vec<u8>,
    /// Data shards that were damaged (0: the pack was intact).
    pub damaged_shards: usize,
    /// Parity shards that were damaged (they were not needed).
    pub damaged_parity: usize,
    /// Whether `bytes` differ from what was stored (damaged shards, or bytes past the pack's
    /// end).
    pub changed: bool,
}

fn check_of(shard: &[u8]) -> [u8; PARITY_CHECK_LEN] {
    let h = blake3::hash(shard);
    let mut c = [0u8; PARITY_CHECK_LEN];
    c.copy_from_slice(&h.as_bytes()[..PARITY_CHECK_LEN]);
    c
}

/// The shards of the bytes `parts` hold back to back, `shard_len` each, the last zero-padded.
/// A shard inside one part is borrowed; one that spans parts is copied.
fn shards<'a>(
    parts: &'a [&'a [u8]],
    shard_len: usize,
    count: usize,
) -> impl Iterator<Item = Cow<'a, [u8]>> + 'a {
    let mut part = 0;
    let mut at = 0;
    (0..count).map(move |_| {
        while part < parts.len() && at == parts[part].len() {
            part += 1;
            at = 0;
        }
        if part < parts.len() && parts[part].len() - at >= shard_len {
            let s = &parts[part][at..at + shard_len];
            at += shard_len;
            return Cow::Borrowed(s);
        }
        let mut s = Vec::with_capacity(shard_len);
        while s.len() < shard_len && part < parts.len() {
            let take = (shard_len - s.len()).min(parts[part].len() - at);
            s.extend_from_slice(&parts[part][at..at + take]);
            at += take;
            if at == parts[part].len() {
                part += 1;
                at = 0;
            }
        }
        s.resize(shard_len, 0);
        Cow::Owned(s)
    })
}

/// The parity file of the pack named `pack` whose bytes are `parts` back to back, at `rate`
/// basis points (`rate` > 0).
pub fn encode(pack: &PackId, parts: &[&[u8]], rate: u32) -> Vec<u8> {
    let pack_len: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let (_, data) = shard_layout(pack_len);
    encode_shards(Some(pack), parts, parity_shards(data, rate)).1
}

/// The name of the pack whose bytes are `parts` back to back (its storage id, as
/// [`crate::crypto::storage_id_parts`] gives it) and its parity file at `rate` basis points
/// (`rate` > 0), in one pass over the bytes: each shard is hashed for the name, checked and
/// handed to the encoder while it is in the CPU's cache (a pack the packer has just filled is
/// not; hashing it first and encoding it after read it from memory twice more).
pub fn encode_naming(parts: &[&[u8]], rate: u32) -> (PackId, Vec<u8>) {
    let pack_len: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let (_, data) = shard_layout(pack_len);
    encode_shards(None, parts, parity_shards(data, rate))
}

/// The parity file of the intact pack `bytes` with as many parity shards as the existing
/// file `like` declares (the writer's rate is not stored), or at the default rate when `like`
/// does not decode.
pub fn encode_like(pack: &PackId, bytes: &[u8], like: &[u8]) -> Vec<u8> {
    match ParityHeader::decode(like) {
        Ok((h, _, _)) if h.pack_len == bytes.len() as u64 => {
            encode_shards(Some(pack), &[bytes], h.parity_shards).1
        }
        _ => encode(pack, &[bytes], crate::repo::DEFAULT_PARITY),
    }
}

/// [`encode`] with `parity` parity shards; the pack's name is hashed on the way when not given.
fn encode_shards(pack: Option<&PackId>, parts: &[&[u8]], parity: u32) -> (PackId, Vec<u8>) {
    // one encoder for the process, its working space (about the pack's size) kept from pack to
    // pack: allocated afresh each time it cost page faults on every pack, and one per writer
    // thread cost as many times its size in memory (an encoding takes a few ms: they queue)
    static ENCODER: std::sync::Mutex<Option<ReedSolomonEncoder>> = std::sync::Mutex::new(None);
    let pack_len: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let (shard_len, data) = shard_layout(pack_len);
    let mut checks = Vec::with_capacity((data + parity) as usize);
    {
        let mut guard = ENCODER.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut *guard;
        let (d, p, l) = (data as usize, parity as usize, shard_len as usize);
        #[allow(clippy::expect_used)] // counts and lengths come from shard_layout: always supported
        let enc = match slot {
            Some(e) => {
                e.reset(d, p, l).expect("supported shard layout");
                e
            }
            None => slot.insert(ReedSolomonEncoder::new(d, p, l).expect("supported shard layout")),
        };
        let mut name = blake3::Hasher::new();
        let mut left = pack_len;
        for s in shards(parts, l, d) {
            if pack.is_none() {
                // the pack's own bytes, not the last shard's padding
                let real = (l as u64).min(left) as usize;
                name.update(&s[..real]);
                left -= real as u64;
            }
            checks.push(check_of(&s));
            #[allow(clippy::expect_used)]
            enc.add_original_shard(&s).expect("as many shards as declared");
        }
        #[allow(clippy::expect_used)]
        let result = enc.encode().expect("every shard added");
        let recovery: Vec<&[u8]> = result.recovery_iter().collect();
        checks.extend(recovery.iter().map(|r| check_of(r)));
        let pack = pack
            .copied()
            .unwrap_or_else(|| PackId(coffer_format::Id(*name.finalize().as_bytes())));
        let header = ParityHeader {
            pack,
            pack_len,
            shard_len,
            data_shards: data,
            parity_shards: parity,
            checks,
        };
        let mut out = header.encode_unchecked();
        out.reserve_exact(PARITY_CHECK_LEN + p * l);
        let hc = check_of(&out);
        out.extend_from_slice(&hc);
        for r in recovery {
            out.extend_from_slice(r);
        }
        (pack, out)
    }
}

/// The header of a parity file for `pack`, its own check verified (only the header's bytes
/// are needed: a server checks an upload by its start).
pub fn header(pack: &PackId, parity: &[u8]) -> Result<ParityHeader, ParityError> {
    let (h, check, covered) =
        ParityHeader::decode(parity).map_err(|e| ParityError::Damaged(e.to_string()))?;
    if check_of(&parity[..covered]) != check {
        return Err(ParityError::Damaged("its header's check does not match".into()));
    }
    if h.pack != *pack {
        return Err(ParityError::OtherPack(h.pack.short()));
    }
    Ok(h)
}

/// Repair `stored` (the pack's bytes as read; any length) with its parity file. `Ok` holds
/// bytes that hash to `pack`; `damaged_shards` is 0 when `stored` was intact already.
pub fn repair(pack: &PackId, stored: &[u8], parity: &[u8]) -> Result<Repaired, ParityError> {
    let h = header(pack, parity)?;
    let shard_len = h.shard_len as usize;
    let data = h.data_shards as usize;
    let pack_len = h.pack_len as usize;
    // bytes beyond the pack's length are not the pack; missing ones count as damage
    let body = &stored[..stored.len().min(pack_len)];
    let mut bad = Vec::new();
    for (i, s) in shards(&[body], shard_len, data).enumerate() {
        let short = body.len() < ((i + 1) * shard_len).min(pack_len);
        if short || check_of(&s) != h.checks[i] {
            bad.push(i);
        }
    }
    if bad.is_empty() {
        if crate::crypto::storage_id(body) == pack.0 && stored.len() == pack_len {
            return Ok(Repaired {
                bytes: body.to_vec(),
                damaged_shards: 0,
                damaged_parity: 0,
                changed: false,
            });
        }
        if crate::crypto::storage_id(body) != pack.0 {
            // every shard checks out but the whole does not: the checks are not this pack's
            return Err(ParityError::Mismatch);
        }
    }
    let start = h.header_len();
    let recovery: Vec<Option<&[u8]>> = (0..h.parity_shards as usize)
        .map(|j| {
            let at = start + j * shard_len;
            parity
                .get(at..at + shard_len)
                .filter(|r| check_of(r) == h.checks[data + j])
        })
        .collect();
    let damaged_parity = recovery.iter().filter(|r| r.is_none()).count();
    let usable = recovery.len() - damaged_parity;
    if bad.len() > usable {
        return Err(ParityError::TooDamaged {
            damaged: bad.len(),
            shards: data,
            can: usable,
        });
    }
    let mut out = body.to_vec();
    out.resize(pack_len, 0);
    if !bad.is_empty() {
        #[allow(clippy::expect_used)]
        let mut dec = ReedSolomonDecoder::new(data, h.parity_shards as usize, shard_len)
            .expect("supported shard layout");
        let bad_set: std::collections::HashSet<usize> = bad.iter().copied().collect();
        for (i, s) in shards(&[body], shard_len, data).enumerate() {
            if !bad_set.contains(&i) {
                dec.add_original_shard(i, &s)
                    .map_err(|e| ParityError::Damaged(e.to_string()))?;
            }
        }
        for (j, r) in recovery.iter().enumerate() {
            if let Some(r) = r {
                dec.add_recovery_shard(j, r)
                    .map_err(|e| ParityError::Damaged(e.to_string()))?;
            }
        }
        let result = dec.decode().map_err(|e| ParityError::Damaged(e.to_string()))?;
        for i in &bad {
            let Some(s) = result.restored_original(*i) else {
                return Err(ParityError::Mismatch);
            };
            let from = i * shard_len;
            let to = (from + shard_len).min(pack_len);
            out[from..to].copy_from_slice(&s[..to - from]);
        }
    }
    if crate::crypto::storage_id(&out) != pack.0 {
        return Err(ParityError::Mismatch);
    }
    Ok(Repaired {
        changed: !bad.is_empty() || stored.len() != pack_len,
        bytes: out,
        damaged_shards: bad.len(),
        damaged_parity,
    })
}

/// Whether `parity` is exactly the parity file of the intact pack `bytes` (named `pack`):
/// its header decodes and every parity shard is what encoding the pack gives again.
pub fn matches(pack: &PackId, bytes: &[u8], parity: &[u8]) -> Result<(), ParityError> {
    let h = header(pack, parity)?;
    if h.pack_len != bytes.len() as u64 || encode_shards(Some(pack), &[bytes], h.parity_shards).1 != parity {
        return Err(ParityError::Stale);
    }
    Ok(())
}

/// What a parity file of `pack_len` bytes at `rate` repairs: (shard length, parity shards).
pub fn strength(pack_len: u64, rate: u32) -> (u32, u32) {
    let (shard_len, data) = shard_layout(pack_len);
    (shard_len, parity_shards(data, rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::storage_id;

    fn pack_of(len: usize, seed: u8) -> (PackId, Vec<u8>) {
        let b: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect();
        (PackId(storage_id(&b)), b)
    }

    #[test]
    fn parity_from_parts_is_parity_of_the_whole() {
        let (id, b) = pack_of(300_001, 1);
        let whole = encode(&id, &[&b], 100);
        let cut = [&b[..5], &b[5..100_000], &b[100_000..100_001], &b[100_001..]];
        assert_eq!(encode(&id, &cut, 100), whole);
        assert!(matches(&id, &b, &whole).is_ok());
    }

    #[test]
    fn the_name_hashed_while_encoding_is_the_storage_id() {
        // lengths that end inside a shard, on a shard's end, and a pack of one byte
        for len in [1usize, 16_384 * 40, 300_001, (16 << 20) + 7] {
            let (id, b) = pack_of(len, 3);
            let cut = [&b[..len / 3], &b[len / 3..len / 3], &b[len / 3..]];
            let (named, parity) = encode_naming(&cut, 100);
            assert_eq!(named, id, "{len}");
            assert_eq!(parity, encode(&id, &[&b], 100), "{len}");
        }
    }

    #[test]
    fn flipped_bytes_and_a_damaged_stretch_are_repaired_and_too_much_damage_is_said() {
        for len in [1usize, 100, 4096, 100_000, 1 << 20, (16 << 20) + 12_345] {
            let (id, b) = pack_of(len, len as u8);
            let parity = encode(&id, &[&b], 100);
            let (shard_len, can) = strength(len as u64, 100);
            // intact
            let r = repair(&id, &b, &parity).unwrap();
            assert_eq!((r.bytes == b, r.damaged_shards), (true, 0));
            // one flipped byte at the start, the middle and the last byte
            for at in [0, len / 2, len - 1] {
                let mut d = b.clone();
                d[at] ^= 0x10;
                let r = repair(&id, &d, &parity).unwrap();
                assert!(r.bytes == b && r.damaged_shards == 1, "{len} at {at}");
            }
            // a stretch as long as the parity can take, crossing shard boundaries
            let stretch = ((can as usize - 1) * shard_len as usize).min(len);
            let mut d = b.clone();
            let from = (len - stretch) / 2;
            d[from..from + stretch].iter_mut().for_each(|x| *x = !*x);
            let r = repair(&id, &d, &parity).unwrap();
            assert!(r.bytes == b, "{len}: stretch of {stretch}");
            // truncated
            let r = repair(&id, &b[..len - len.min(shard_len as usize / 2).max(1)], &parity).unwrap();
            assert!(r.bytes == b, "{len}: truncated");
            // one damaged shard more than the parity holds
            if (can as usize) < len / shard_len as usize {
                let mut d = b.clone();
                for k in 0..=can as usize {
                    d[k * shard_len as usize] ^= 1;
                }
                assert!(matches!(
                    repair(&id, &d, &parity),
                    Err(ParityError::TooDamaged { .. })
                ));
            }
        }
    }

    #[test]
    fn a_damaged_or_forged_parity_file_never_makes_a_wrong_pack() {
        let (id, b) = pack_of(200_000, 9);
        let parity = encode(&id, &[&b], 100);
        let mut d = b.clone();
        d[1000] ^= 4;
        // a damaged parity shard is left out; the others repair
        let mut p = parity.clone();
        let last = p.len() - 1;
        p[last] ^= 1;
        let r = repair(&id, &d, &p).unwrap();
        assert_eq!((r.bytes == b, r.damaged_parity), (true, 1));
        assert_eq!(matches(&id, &b, &p), Err(ParityError::Stale));
        // a damaged header is said as such
        let mut p = parity.clone();
        p[40] ^= 1;
        assert!(matches!(repair(&id, &d, &p), Err(ParityError::Damaged(_))));
        // another pack's parity file
        let (other, ob) = pack_of(200_000, 10);
        let op = encode(&other, &[&ob], 100);
        assert!(matches!(repair(&id, &d, &op), Err(ParityError::OtherPack(_))));
        // a forger who rewrites the checks for forged content: the rebuilt pack does not
        // hash to the name, so nothing wrong comes out
        let mut forged = b.clone();
        forged[0] ^= 0xff;
        let fp = encode(&id, &[&forged], 100);
        assert_eq!(repair(&id, &forged, &fp).unwrap_err(), ParityError::Mismatch);
        assert_eq!(repair(&id, &d, &fp).unwrap_err(), ParityError::Mismatch);
    }
}
