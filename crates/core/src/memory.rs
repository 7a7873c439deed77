//! A backend that keeps everything in memory: for tests, and for tests of code built on the
//! core (fault injection, hostile-repository fixtures). It keeps the same guarantees as a
//! real backend: no overwrite, atomic writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{BResult, Backend, BackendError, FileInfo, FileKind, WriteOutcome};

type Files = BTreeMap<(u8, String), Vec<u8>>;

#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    files: Arc<Mutex<Files>>,
    /// Says it is latency-bound, as a remote backend does (see [`MemoryBackend::remote`]).
    remote: bool,
}

fn code(k: FileKind) -> u8 {
    k as u8
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// One that reports itself latency-bound, so that readers take their remote paths
    /// (pack windows, restore read-ahead).
    pub fn remote() -> Self {
        MemoryBackend {
            remote: true,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Files> {
        // a poisoned lock only means another test thread panicked; the map is still whole
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace a stored file's bytes (to simulate damage); returns false if it is missing.
    pub fn tamper(&self, kind: FileKind, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        match self.lock().get_mut(&(code(kind), name.to_string())) {
            Some(b) => {
                f(b);
                true
            }
            None => false,
        }
    }

    /// Every stored file with its bytes.
    pub fn snapshot_all(&self) -> Vec<(FileKind, String, Vec<u8>)> {
        const KINDS: [FileKind; 9] = FileKind::ALL;
        self.lock()
            .iter()
            .map(|((k, n), b)| (KINDS[*k as usize], n.clone(), b.clone()))
            .collect()
    }

    fn not_found(kind: FileKind, name: &str) -> BackendError {
        BackendError::NotFound {
            location: "memory".into(),
            what: format!("{}/{name}", kind.dir()),
        }
    }
}

impl Backend for MemoryBackend {
    fn latency_bound(&self) -> bool {
        self.remote
    }
    fn location(&self) -> String {
        "memory".into()
    }
    fn create(&self) -> BResult<()> {
        Ok(())
    }
    fn exists(&self) -> BResult<bool> {
        Ok(self
            .lock()
            .contains_key(&(code(FileKind::Config), "config".into())))
    }
    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        Ok(self
            .lock()
            .iter()
            .filter(|((k, _), _)| *k == code(kind))
            .map(|((_, n), b)| FileInfo::new(n.clone(), b.len() as u64))
            .collect())
    }
    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        self.lock()
            .get(&(code(kind), name.to_string()))
            .cloned()
            .ok_or_else(|| Self::not_found(kind, name))
    }
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        let files = self.lock();
        let b = files
            .get(&(code(kind), name.to_string()))
            .ok_or_else(|| Self::not_found(kind, name))?;
        let end = offset
            .checked_add(len as u64)
            .filter(|e| *e <= b.len() as u64)
            .ok_or_else(|| BackendError::Io {
                location: "memory".into(),
                what: format!("{}/{name}", kind.dir()),
                detail: format!("file too short for {len} bytes at {offset}"),
                transient: false,
            })?;
        Ok(b[offset as usize..end as usize].to_vec())
    }
    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        self.lock()
            .get(&(code(kind), name.to_string()))
            .map(|b| b.len() as u64)
            .ok_or_else(|| Self::not_found(kind, name))
    }
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        let mut files = self.lock();
        let key = (code(kind), name.to_string());
        if files.contains_key(&key) {
            return Ok(WriteOutcome::Existed);
        }
        files.insert(key, data.to_vec());
        Ok(WriteOutcome::Created)
    }
    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        self.lock().insert((code(kind), name.to_string()), data.to_vec());
        Ok(())
    }
    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        self.lock()
            .remove(&(code(kind), name.to_string()))
            .map(|_| ())
            .ok_or_else(|| Self::not_found(kind, name))
    }
}
