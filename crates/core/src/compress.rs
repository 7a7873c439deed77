//! Blob compression. A blob's plaintext is `code:u8 || payload`; incompressible data (the
//! compressed form saves less than 1/32 of the size) is stored with code `none`.

use std::io::Read;

use coffer_format::{Compression, MAX_BLOB_SIZE};

use crate::error::{Error, Result};

/// Compression setting for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressionSpec {
    pub algo: Compression,
    pub level: i32,
}

impl CompressionSpec {
    pub fn default_level(algo: Compression) -> i32 {
        match algo {
            Compression::Zstd => 3,
            Compression::Zlib => 6,
            Compression::Lzma => 6,
            Compression::Lz4 | Compression::None => 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = match self.algo {
            Compression::Zstd => (1..=22).contains(&self.level),
            Compression::Zlib | Compression::Lzma => (0..=9).contains(&self.level),
            Compression::Lz4 | Compression::None => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "compression level {} is out of range for {}",
                self.level,
                self.algo.name()
            )))
        }
    }
}

/// Encode `data` as a blob plaintext (`code || payload`), falling back to `none` when
/// compression does not pay. Compressed output is decompressed and compared before it is
/// accepted, so a compressor bug cannot store data that does not restore (restic #4523).
pub fn encode_blob(spec: CompressionSpec, data: &[u8]) -> Vec<u8> {
    let compressed = match spec.algo {
        Compression::None => None,
        Compression::Zstd => zstd::bulk::compress(data, spec.level).ok(),
        Compression::Lz4 => Some(lz4_flex::block::compress(data)),
        Compression::Zlib => {
            use std::io::Write;
            let mut e =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(spec.level as u32));
            e.write_all(data).and_then(|_| e.finish()).ok()
        }
        Compression::Lzma => {
            let mut out = Vec::new();
            liblzma::read::XzEncoder::new(data, spec.level as u32)
                .read_to_end(&mut out)
                .ok()
                .map(|_| out)
        }
    };
    if let Some(c) = compressed {
        if c.len() + data.len() / 32 < data.len()
            && decode_payload(spec.algo, &c, data.len()).is_ok_and(|d| d == data)
        {
            let mut out = Vec::with_capacity(1 + c.len());
            out.push(spec.algo.code());
            out.extend_from_slice(&c);
            return out;
        }
    }
    let mut out = Vec::with_capacity(1 + data.len());
    out.push(Compression::None.code());
    out.extend_from_slice(data);
    out
}

/// [`encode_blob`] for a stream of blobs on one thread: the zstd contexts and the scratch
/// buffers live as long as the encoder, so encoding allocates nothing per blob (creating a
/// zstd context per blob cost time and, with glibc, resident memory).
pub struct BlobEncoder {
    spec: CompressionSpec,
    zstd: Option<(zstd::bulk::Compressor<'static>, zstd::bulk::Decompressor<'static>)>,
    compressed: Vec<u8>,
    check: Vec<u8>,
}

impl BlobEncoder {
    pub fn new(spec: CompressionSpec) -> Self {
        let zstd = (spec.algo == Compression::Zstd)
            .then(|| {
                Some((
                    zstd::bulk::Compressor::new(spec.level).ok()?,
                    zstd::bulk::Decompressor::new().ok()?,
                ))
            })
            .flatten();
        BlobEncoder {
            spec,
            zstd,
            compressed: Vec::new(),
            check: Vec::new(),
        }
    }

    /// The blob plaintext of `data` as its two parts, the compression code and the payload
    /// (in the encoder's buffer, or `data` itself when stored uncompressed): the same result
    /// as [`encode_blob`], including the decompress-and-compare check, without the copy.
    pub fn encode<'a>(&'a mut self, data: &'a [u8]) -> (u8, &'a [u8]) {
        let Some((c, d)) = self.zstd.as_mut() else {
            self.compressed = encode_blob(self.spec, data);
            return match self.compressed.split_first() {
                Some((code, payload)) => (*code, payload),
                None => (Compression::None.code(), data), // encode_blob always writes a code
            };
        };
        // exact: `reserve` would double a buffer that is a little short, and these two
        // buffers live as long as the worker (largest blob seen, not twice that)
        self.compressed.clear();
        self.compressed
            .reserve_exact(zstd::zstd_safe::compress_bound(data.len()));
        let ok = c.compress_to_buffer(data, &mut self.compressed).is_ok()
            && self.compressed.len() + data.len() / 32 < data.len()
            && {
                self.check.clear();
                self.check.reserve_exact(data.len());
                d.decompress_to_buffer(&self.compressed[..], &mut self.check)
                    .is_ok_and(|n| n == data.len())
                    && self.check == data
            };
        if ok {
            (Compression::Zstd.code(), &self.compressed)
        } else {
            (Compression::None.code(), data)
        }
    }

    /// [`BlobEncoder::encode`] that leaves the payload in `data` (compressed data is shorter,
    /// so it fits the buffer already there): the buffer can travel on to be sealed and
    /// packed, and nothing is allocated. Returns the compression code.
    pub fn encode_in_place(&mut self, data: &mut Vec<u8>) -> u8 {
        let (code, as_is, len) = {
            let (code, payload) = self.encode(data);
            (code, std::ptr::eq(payload, &data[..]), payload.len())
        };
        if !as_is {
            // the payload is the tail of the encoder's buffer (after the code, if it has one)
            data.clear();
            data.extend_from_slice(&self.compressed[self.compressed.len() - len..]);
        }
        code
    }
}

/// Decode a blob plaintext; `raw_len` is the expected uncompressed length (from the index),
/// and output beyond it is refused, so a hostile blob cannot expand without bound.
pub fn decode_blob(mut plain: Vec<u8>, raw_len: usize, what: &str) -> Result<Vec<u8>> {
    if plain.is_empty() {
        return Err(Error::integrity(what, "empty blob"));
    }
    let algo = Compression::from_code(plain[0]).map_err(|e| Error::format(what, e))?;
    if raw_len > MAX_BLOB_SIZE as usize {
        return Err(Error::integrity(
            what,
            format!("blob length {raw_len} is over the limit"),
        ));
    }
    let out = if algo == Compression::None {
        plain.remove(0);
        plain
    } else {
        decode_payload(algo, &plain[1..], raw_len)
            .map_err(|e| Error::integrity(what, format!("{} data does not decompress: {e}", algo.name())))?
    };
    if out.len() != raw_len {
        return Err(Error::integrity(
            what,
            format!("decoded {} bytes, index says {raw_len}", out.len()),
        ));
    }
    Ok(out)
}

/// Decode a bundle's plaintext (`code || raw_len:u32le || payload`): its members' bytes.
pub fn decode_bundle(plain: &[u8], what: &str) -> Result<Vec<u8>> {
    if plain.len() < 5 {
        return Err(Error::integrity(what, "bundle too short"));
    }
    let algo = Compression::from_code(plain[0]).map_err(|e| Error::format(what, e))?;
    let raw_len = u32::from_le_bytes([plain[1], plain[2], plain[3], plain[4]]);
    if raw_len > coffer_format::MAX_BUNDLE_SIZE {
        return Err(Error::integrity(
            what,
            format!("bundle length {raw_len} is over the limit"),
        ));
    }
    let out = decode_payload(algo, &plain[5..], raw_len as usize)
        .map_err(|e| Error::integrity(what, format!("{} data does not decompress: {e}", algo.name())))?;
    if out.len() != raw_len as usize {
        return Err(Error::integrity(
            what,
            format!("bundle decoded to {} bytes, it says {raw_len}", out.len()),
        ));
    }
    Ok(out)
}

/// Decode a blob plaintext whose uncompressed length is not recorded elsewhere (file objects:
/// index, snapshot, config), refusing more than `max_len` bytes.
pub fn decode_blob_max(mut plain: Vec<u8>, max_len: usize, what: &str) -> Result<Vec<u8>> {
    if plain.is_empty() {
        return Err(Error::integrity(what, "empty object"));
    }
    let algo = Compression::from_code(plain[0]).map_err(|e| Error::format(what, e))?;
    match algo {
        // (the limit holds for what is stored uncompressed too: found by the fuzzer)
        Compression::None if plain.len() - 1 > max_len => Err(Error::integrity(
            what,
            format!("{} bytes, more than {max_len}", plain.len() - 1),
        )),
        Compression::None => {
            plain.remove(0);
            Ok(plain)
        }
        Compression::Zstd => {
            let payload = &plain[1..];
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(payload)
                .and_then(|d| d.take(max_len as u64 + 1).read_to_end(&mut out))
                .map_err(|e| Error::integrity(what, format!("zstd data does not decompress: {e}")))?;
            if out.len() > max_len {
                return Err(Error::integrity(
                    what,
                    format!("decompresses to more than {max_len} bytes"),
                ));
            }
            Ok(out)
        }
        other => Err(Error::integrity(
            what,
            format!("{} is not used for this object kind", other.name()),
        )),
    }
}

thread_local! {
    /// One zstd decompression context per thread: creating one per blob (as
    /// `zstd::bulk::decompress` does) allocated and cleared ~100 KiB each time, 6 % of an
    /// unchanged re-backup's CPU (decoding the parent's trees) and as much for every small
    /// file a restore decodes.
    static ZSTD_DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decode_payload(algo: Compression, payload: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    let limit = raw_len as u64 + 1;
    match algo {
        Compression::None => Ok(payload.to_vec()),
        Compression::Zstd => ZSTD_DCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = match slot.take() {
                Some(d) => d,
                None => zstd::bulk::Decompressor::new()?,
            };
            slot.insert(d).decompress(payload, raw_len)
        }),
        Compression::Lz4 => lz4_flex::block::decompress(payload, raw_len)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Compression::Zlib => {
            let mut out = Vec::with_capacity(raw_len);
            flate2::read::ZlibDecoder::new(payload)
                .take(limit)
                .read_to_end(&mut out)?;
            Ok(out)
        }
        Compression::Lzma => {
            let mut out = Vec::with_capacity(raw_len);
            liblzma::read::XzDecoder::new(payload)
                .take(limit)
                .read_to_end(&mut out)?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blob_encoder_matches_encode_blob() {
        let spec = CompressionSpec {
            algo: Compression::Zstd,
            level: 3,
        };
        let mut enc = BlobEncoder::new(spec);
        let text = b"log line 42 GET /index.html 200\n".repeat(3000);
        let random: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for data in [&text[..], &random[..], b"", b"x"] {
            let (code, payload) = enc.encode(data);
            let out = [&[code][..], payload].concat();
            assert_eq!(out, encode_blob(spec, data));
            assert_eq!(decode_blob(out.clone(), data.len(), "t").unwrap(), data);
        }
    }

    /// In place, every algorithm leaves the same payload in the buffer as `encode_blob`.
    #[test]
    fn encode_in_place_matches_encode_blob() {
        let text = b"log line 42 GET /index.html 200\n".repeat(3000);
        let random: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for algo in ALL {
            let spec = CompressionSpec {
                algo,
                level: CompressionSpec::default_level(algo),
            };
            let mut enc = BlobEncoder::new(spec);
            for data in [&text[..], &random[..], b"", b"x"] {
                let mut buf = data.to_vec();
                let code = enc.encode_in_place(&mut buf);
                let out = [&[code][..], &buf].concat();
                assert_eq!(out, encode_blob(spec, data), "{}", algo.name());
            }
        }
    }

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Zstd,
        Compression::Lz4,
        Compression::Zlib,
        Compression::Lzma,
    ];

    #[test]
    fn text_compresses_random_does_not() {
        let text = b"the quick brown fox jumps over the lazy dog\n".repeat(1000);
        let mut random = vec![0u8; 50_000];
        crate::crypto::random_bytes(&mut random);
        for algo in ALL {
            let spec = CompressionSpec {
                algo,
                level: CompressionSpec::default_level(algo),
            };
            let e = encode_blob(spec, &text);
            if algo != Compression::None {
                assert_eq!(e[0], algo.code());
                assert!(e.len() < text.len() / 4);
            }
            assert_eq!(decode_blob(e, text.len(), "t").unwrap(), text);
            let r = encode_blob(spec, &random);
            assert_eq!(
                r[0],
                Compression::None.code(),
                "{algo:?} stored random data compressed"
            );
            assert_eq!(decode_blob(r, random.len(), "t").unwrap(), random);
        }
    }

    #[test]
    fn wrong_length_is_refused() {
        let text = b"abc".repeat(1000);
        let spec = CompressionSpec {
            algo: Compression::Zstd,
            level: 3,
        };
        let e = encode_blob(spec, &text);
        assert!(decode_blob(e.clone(), text.len() - 1, "t").is_err());
        assert!(decode_blob(e, text.len() + 1, "t").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn round_trip(data in proptest::collection::vec(0u8..4, 0..20_000), a in 0usize..5) {
            let algo = ALL[a];
            let spec = CompressionSpec { algo, level: CompressionSpec::default_level(algo) };
            let e = encode_blob(spec, &data);
            prop_assert_eq!(decode_blob(e, data.len(), "t").unwrap(), data);
        }
    }
}
