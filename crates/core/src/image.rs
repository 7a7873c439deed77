//! Disk images and streams: a block device read whole (`backup --device /dev/vdb`) or what
//! arrives on standard input (`backup --stdin NAME`), stored as one file node below
//! `/.images` with content-defined chunks, and written back to a block device.
//!
//! Empty space costs neither storage nor time: a run of zeros is cut into the same chunk
//! every time without being chunked or hashed again ([`crate::chunker::Chunker::chunk_reader`]),
//! and writing an image back turns all-zero blocks into one zeroing request per run
//! (`fallocate` punching or zeroing the range: a discard on a thin or loop device) instead of
//! writes. A device is read as it is at that moment: a mounted file system that changes
//! while it is read gives an image no fsck will like, so the operator freezes it
//! (`fsfreeze`), or reads an LVM/ZFS snapshot of it (docs/ARCHITECTURE.md, "Disk images").

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use coffer_format::{BlobId, Node};

use crate::chunker::is_zero;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::IndexedRepository;

/// The top-level directory of a snapshot's tree that holds images.
pub const IMAGES_DIR: &str = ".images";

/// One image to back up: where it comes from and how to read it.
pub struct ImageInput {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) source: String,
    pub(crate) reader: Box<dyn Read + Send>,
    /// The size the whole source has (a device's); `None` for a stream.
    pub(crate) expected: Option<u64>,
    pub(crate) warnings: Vec<String>,
}

impl std::fmt::Debug for ImageInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageInput({} from {})", self.name, self.source)
    }
}

/// Check an image's name: one path component, printable, not `.`/`..`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(char::is_control)
        || name.len() > 255
    {
        return Err(Error::Usage(format!(
            "{name:?}: an image name is one file name (no `/`, not `.` or `..`, at most 255 bytes)"
        )));
    }
    Ok(())
}

impl ImageInput {
    /// A block device, read whole. Its name is the device's file name (`/dev/vdb` → `vdb`,
    /// `/dev/mapper/vg-root` → `vg-root`). A device mounted read-write gets a warning in the
    /// image's record (and on the terminal): its image is only as consistent as the file
    /// system was still.
    pub fn device(path: &Path) -> Result<ImageInput> {
        let usage = |what: String| Error::Usage(format!("{}: {what}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.file_type().is_block_device() {
            return Err(usage(
                "not a block device (a file is backed up by giving its path; a stream with --stdin NAME)"
                    .into(),
            ));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        check_name(&name)?;
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| Error::io(path, e))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
        let mut warnings = Vec::new();
        if let Some(at) = mounted_rw(meta.rdev()) {
            warnings.push(format!(
                "mounted read-write at {at}: the image is consistent only if nothing wrote to it while it was read \
                 (freeze it with fsfreeze, or back up an LVM/ZFS snapshot of it)"
            ));
        }
        Ok(ImageInput {
            name,
            kind: "device",
            source: path.display().to_string(),
            reader: Box::new(f),
            expected: Some(size),
            warnings,
        })
    }

    /// A stream (standard input) stored under `name`.
    pub fn stream(name: &str, reader: Box<dyn Read + Send>) -> Result<ImageInput> {
        check_name(name)?;
        Ok(ImageInput {
            name: name.to_string(),
            kind: "stdin",
            source: "stdin".into(),
            reader,
            expected: None,
            warnings: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this image's source is, for messages: `/dev/vdb`, `stdin`.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Where a block device (or one of its partitions) is mounted read-write, if anywhere.
fn mounted_rw(rdev: u64) -> Option<String> {
    let mounts = mounts_of(rdev);
    mounts.into_iter().find(|(_, rw)| *rw).map(|(at, _)| at)
}

/// The device numbers of a block device and of its partitions (`/sys/dev/block/M:m/*/dev`).
fn device_and_partitions(rdev: u64) -> Vec<(u32, u32)> {
    let (maj, min) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let mut out = vec![(maj, min)];
    if let Ok(dir) = std::fs::read_dir(format!("/sys/dev/block/{maj}:{min}")) {
        for e in dir.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some((a, b)) = std::fs::read_to_string(p.join("dev")).ok().and_then(|s| {
                    let (a, b) = s.trim().split_once(':')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                }) {
                    out.push((a, b));
                }
            }
        }
    }
    out
}

/// Every mount of a block device or of one of its partitions: (mount point, read-write).
pub fn mounts_of(rdev: u64) -> Vec<(String, bool)> {
    let devs = device_and_partitions(rdev);
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in info.lines() {
        // id parent major:minor root mount-point options ...
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 6 {
            continue;
        }
        let Some((a, b)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) else {
            continue;
        };
        if devs.contains(&(a, b)) {
            let rw = f[5].split(',').any(|o| o == "rw");
            out.push((f[4].replace("\\040", " "), rw));
        }
    }
    out
}

/// What writing an image to a device did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceWrite {
    /// The image's size: everything up to it was written or zeroed.
    pub bytes: u64,
    /// Bytes written with data.
    pub bytes_written: u64,
    /// Bytes zeroed (all-zero blocks, zeroed with one request per run).
    pub bytes_zeroed: u64,
    /// How the zero ranges were zeroed: `punch` (discard that reads back as zeros),
    /// `zero-range`, or `write` (zeros written, where the device offers neither).
    pub zeroing: String,
}

/// Open `dev` to write an image of `size` bytes onto: a block device, not mounted (nor any
/// of its partitions), at least `size` bytes large. Returns it and its size. `write`: open it
/// for writing (a dry run opens it read-only, still exclusively: busy is busy).
pub fn open_device_for_image(dev: &Path, size: u64, write: bool) -> Result<(File, u64)> {
    let usage = |what: String| Error::Usage(format!("{}: {what}", dev.display()));
    let meta = std::fs::metadata(dev).map_err(|e| Error::io(dev, e))?;
    if !meta.file_type().is_block_device() {
        return Err(usage(
            "not a block device (to get the image as a file, restore it with --target)".into(),
        ));
    }
    if let Some((at, _)) = mounts_of(meta.rdev()).into_iter().next() {
        return Err(usage(format!(
            "it (or a partition of it) is mounted at {at}; unmount it first: nothing was written"
        )));
    }
    // O_EXCL on a block device: fails if anything (a mount, a RAID, LVM) holds it exclusively
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc_o_excl())
        .open(dev)
        .map_err(|e| match e.raw_os_error() {
            Some(16) => {
                usage("busy (in use by a mount, LVM, RAID or another program); nothing was written".into())
            }
            _ => Error::io(dev, e),
        })?;
    let mut f = f;
    let dev_size = f.seek(SeekFrom::End(0)).map_err(|e| Error::io(dev, e))?;
    if dev_size < size {
        return Err(usage(format!(
            "{dev_size} bytes, smaller than the image ({size} bytes); nothing was written"
        )));
    }
    Ok((f, dev_size))
}

fn libc_o_excl() -> i32 {
    rustix::fs::OFlags::EXCL.bits() as i32
}

/// Write `len` zero bytes at `off`.
fn write_zeros(f: &File, off: u64, len: u64, path: &Path) -> Result<()> {
    let zeros = vec![0u8; (1 << 20).min(len as usize)];
    let mut at = off;
    while at < off + len {
        let n = zeros.len().min((off + len - at) as usize);
        f.write_all_at(&zeros[..n], at).map_err(|e| Error::io(path, e))?;
        at += n as u64;
    }
    Ok(())
}

/// Zero `len` bytes at `off` of a block device. The part aligned to 4 KiB (a multiple of
/// every logical block size) gets a punch (a discard guaranteed to read back as zeros), else a
/// zero-range request, else written zeros; the unaligned head and tail are written. What the
/// device refuses once (EOPNOTSUPP, EINVAL) is not asked again; `how` says what worked last.
fn zero_range(
    f: &File,
    off: u64,
    len: u64,
    how: &mut String,
    refused: &mut [bool; 2],
    path: &Path,
) -> Result<()> {
    use rustix::fs::FallocateFlags as F;
    const ALIGN: u64 = 4096;
    let end = off + len;
    let (a, b) = (off.div_ceil(ALIGN) * ALIGN, end / ALIGN * ALIGN);
    if a >= b {
        return write_zeros(f, off, len, path);
    }
    write_zeros(f, off, a - off, path)?;
    let mut done = false;
    for (i, (flags, name)) in [
        (F::PUNCH_HOLE | F::KEEP_SIZE, "punch"),
        (F::ZERO_RANGE | F::KEEP_SIZE, "zero-range"),
    ]
    .into_iter()
    .enumerate()
    {
        if refused[i] {
            continue;
        }
        match rustix::fs::fallocate(f, flags, a, b - a) {
            Ok(()) => {
                *how = name.into();
                done = true;
                break;
            }
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::INVAL => refused[i] = true,
            Err(e) => return Err(Error::io(path, e.into())),
        }
    }
    if !done {
        *how = "write".into();
        write_zeros(f, a, b - a, path)?;
    }
    write_zeros(f, b, end - b, path)
}

/// Write an image node's content onto `f` (a device opened by [`open_device_for_image`]),
/// from offset 0: data blocks written, all-zero 4 KiB blocks zeroed by one request per run.
/// Blobs are read ahead on a second thread; a blob known to be all zeros is not read again.
/// Ends with an fsync: when this returns, the device holds the image.
pub fn write_image(
    repo: &IndexedRepository,
    node: &Node,
    f: &File,
    path: &Path,
    progress: &dyn Progress,
) -> Result<DeviceWrite> {
    let mut out = DeviceWrite::default();
    // every chunk is in the index before the first byte is written: a missing pack must not
    // leave the device half overwritten
    for id in &node.content {
        repo.locate(id)?;
    }
    let mut refused = [false; 2];
    let reader = crate::window::WindowReader::new(repo);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(BlobId, Option<Vec<u8>>, usize)>>(8);
    // the zero chunk is one blob used many times: read once, then known by its id
    let zero_ids = std::sync::Mutex::new(std::collections::HashMap::<BlobId, usize>::new());
    std::thread::scope(|s| -> Result<()> {
        let reader = &reader;
        let zero_ids = &zero_ids;
        s.spawn(move || {
            for id in &node.content {
                let known = zero_ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(id)
                    .copied();
                let item = match known {
                    Some(len) => Ok((*id, None, len)),
                    None => reader.read_data(id).map(|d| {
                        let len = d.len();
                        if is_zero(&d) {
                            zero_ids
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(*id, len);
                        }
                        (*id, Some(d), len)
                    }),
                };
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        let mut pos = 0u64;
        // a pending run of zero blocks: (start, length)
        let mut zero_run: Option<(u64, u64)> = None;
        let mut flush_zeros = |run: &mut Option<(u64, u64)>, out: &mut DeviceWrite| -> Result<()> {
            if let Some((at, len)) = run.take() {
                zero_range(f, at, len, &mut out.zeroing, &mut refused, path)?;
                out.bytes_zeroed += len;
            }
            Ok(())
        };
        for item in rx {
            let (_, data, len) = item?;
            // never past the image's end (a forged node's chunks could add up to more)
            if pos + len as u64 > node.size {
                return Err(Error::Integrity {
                    object: path.display().to_string(),
                    detail: format!(
                        "the image's chunks hold more than its {} bytes; stopped at {pos}",
                        node.size
                    ),
                });
            }
            match data {
                None => match &mut zero_run {
                    Some((_, l)) => *l += len as u64,
                    None => zero_run = Some((pos, len as u64)),
                },
                Some(d) => {
                    // 4 KiB blocks aligned to the device offset: zeros join the run, data
                    // runs are written with one call
                    let mut off = 0usize;
                    let mut data_start: Option<usize> = None;
                    while off < d.len() {
                        let abs = pos + off as u64;
                        let n = ((4096 - (abs % 4096)) as usize).min(d.len() - off);
                        if is_zero(&d[off..off + n]) {
                            if let Some(ds) = data_start.take() {
                                f.write_all_at(&d[ds..off], pos + ds as u64)
                                    .map_err(|e| Error::io(path, e))?;
                                out.bytes_written += (off - ds) as u64;
                            }
                            match &mut zero_run {
                                Some((_, l)) => *l += n as u64,
                                None => zero_run = Some((abs, n as u64)),
                            }
                        } else if data_start.is_none() {
                            flush_zeros(&mut zero_run, &mut out)?;
                            data_start = Some(off);
                        }
                        off += n;
                    }
                    if let Some(ds) = data_start {
                        f.write_all_at(&d[ds..], pos + ds as u64)
                            .map_err(|e| Error::io(path, e))?;
                        out.bytes_written += (d.len() - ds) as u64;
                    }
                }
            }
            pos += len as u64;
            progress.bytes(len as u64);
        }
        flush_zeros(&mut zero_run, &mut out)?;
        out.bytes = pos;
        Ok(())
    })?;
    if out.bytes != node.size {
        return Err(Error::Integrity {
            object: path.display().to_string(),
            detail: format!(
                "the image's chunks hold {} bytes, its node says {}",
                out.bytes, node.size
            ),
        });
    }
    f.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(out)
}

/// `/.images/NAME`.
pub fn image_path(name: &str) -> String {
    format!("/{IMAGES_DIR}/{name}")
}
