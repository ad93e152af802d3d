//! A weight file mapped into memory, and what to do when it changes under a running engine.
//!
//! Weights are read in place from the mapping (nothing is copied at load), so a file written
//! over in place changes the numbers under the engine, and one cut short makes the next read
//! of a page past its new end a SIGBUS, which would end the whole process. Each file is
//! therefore recorded at load (size, device and inode, modification time, a digest of its
//! header) and checked after every engine step, before the step's results leave the engine;
//! and a read past the end is caught: the SIGBUS handler puts zero pages in place of the
//! mapping and marks it lost, so the step ends, its results are discarded by that check, and
//! the engine stops serving with an error naming the file. Writing a new file and renaming it
//! over the old one is safe: the mapping keeps the old file.

use crate::error::{EngineError, Result};
use memmap2::Mmap;
use std::fs::File;
use std::hash::Hasher;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// What a file was at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// A read-only mapping of a whole file, guarded against the file changing.
pub struct MappedFile {
    path: PathBuf,
    file: File,
    map: Mmap,
    at_load: Identity,
    header_len: usize,
    header_digest: u64,
    slot: usize,
}

impl MappedFile {
    /// Maps `path`; `header_len` bytes from the start (the safetensors length prefix and JSON
    /// header) are digested now and on [`MappedFile::check_header`].
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let meta = file.metadata().map_err(|e| EngineError::io(path, e))?;
        // SAFETY: read-only; a change in place is detected by `check` before results that
        // read it are used, and a read past a shortened end is caught by the SIGBUS guard.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        let slot = guard::register(map.as_ptr() as usize, map.len());
        Ok(MappedFile {
            path: path.to_path_buf(),
            file,
            map,
            at_load: Identity::of(&meta),
            header_len: 0,
            header_digest: 0,
            slot,
        })
    }

    /// Records the digest of the first `len` bytes (read from the file, not the mapping).
    pub fn set_header(&mut self, len: usize) -> Result<()> {
        self.header_len = len.min(self.map.len());
        self.header_digest = self.digest_header()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[..]
    }

    /// A short description for logs: size, inode and header digest.
    pub fn identity(&self) -> String {
        format!(
            "{} bytes, inode {}, header digest {:016x}",
            self.at_load.size, self.at_load.ino, self.header_digest
        )
    }

    /// Cheap (one `fstat`): an error naming the file when it was cut short or written since
    /// load, or a read past its end was caught.
    pub fn check(&self) -> Result<(), String> {
        if guard::lost(self.slot) {
            return Err(format!(
                "{}: a read past its end (the file was cut short while mapped)",
                self.path.display()
            ));
        }
        let now = match self.file.metadata() {
            Ok(m) => Identity::of(&m),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        if now.size != self.at_load.size {
            return Err(format!(
                "{}: its size changed from {} to {} bytes since load",
                self.path.display(),
                self.at_load.size,
                now.size
            ));
        }
        if now.mtime_ns != self.at_load.mtime_ns {
            return Err(format!(
                "{}: it was written since load (modification time changed)",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Rereads the header from the file (a few KiB) and compares its digest with load's:
    /// catches a write in place that kept the size and restored the modification time.
    pub fn check_header(&self) -> Result<(), String> {
        match self.digest_header() {
            Ok(d) if d == self.header_digest => Ok(()),
            Ok(_) => Err(format!(
                "{}: its header changed since load",
                self.path.display()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn digest_header(&self) -> Result<u64> {
        let mut buf = vec![0u8; self.header_len];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| EngineError::io(&self.path, e))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(&buf);
        Ok(h.finish())
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // Before the mapping goes: the handler must not replace a range that is no longer it.
        guard::unregister(self.slot);
    }
}

/// The process-wide SIGBUS guard over registered mappings.
mod guard {
    use super::*;

    /// Mappings at once (a 27b model has a dozen shards per engine).
    const SLOTS: usize = 256;
    const FREE: usize = 0;

    static START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(FREE) }; SLOTS];
    static LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static LOST: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
    static INSTALL: Once = Once::new();

    /// The slot of a mapping (`SLOTS` when every slot is taken: then unguarded, as before).
    pub fn register(start: usize, len: usize) -> usize {
        INSTALL.call_once(install);
        if len == 0 {
            return SLOTS;
        }
        for i in 0..SLOTS {
            if START[i]
                .compare_exchange(FREE, usize::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                LEN[i].store(len, Ordering::SeqCst);
                LOST[i].store(false, Ordering::SeqCst);
                START[i].store(start, Ordering::SeqCst);
                return i;
            }
        }
        tracing::warn!("more than {SLOTS} weight files mapped: the rest are not guarded against being cut short");
        SLOTS
    }

    pub fn unregister(slot: usize) {
        if slot < SLOTS {
            START[slot].store(FREE, Ordering::SeqCst);
        }
    }

    pub fn lost(slot: usize) -> bool {
        slot < SLOTS && LOST[slot].load(Ordering::SeqCst)
    }

    fn install() {
        // SAFETY: a plain sigaction with a handler that only reads atomics, calls mmap and
        // sigaction (both async-signal-safe system calls) and stores an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = handler;
            sa.sa_sigaction = f as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
                tracing::warn!("cannot install the SIGBUS guard: a weight file cut short while mapped ends the process");
            }
        }
    }

    extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: `info` is the kernel's siginfo for this SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize;
        for i in 0..SLOTS {
            let start = START[i].load(Ordering::SeqCst);
            if start == FREE || start == usize::MAX {
                continue;
            }
            let len = LEN[i].load(Ordering::SeqCst);
            if addr >= start && addr < start + len {
                // Zero pages over the whole mapping: the faulting read and every later one
                // succeed, and the engine's check after the step sees the file lost.
                // SAFETY: the range is this process's own mapping of the file, which stays
                // reserved until `MappedFile` drops (after unregistering).
                let p = unsafe {
                    libc::mmap(
                        start as *mut libc::c_void,
                        len,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    LOST[i].store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        // Not a guarded mapping: the default action, as without the guard (the faulting
        // instruction runs again and the process ends with SIGBUS).
        // SAFETY: restoring the default disposition.
        unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("grm-mapped-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn write(path: &Path, bytes: &[u8]) {
        let mut f = File::create(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn a_file_cut_short_while_mapped_reads_zeros_and_is_reported_lost_not_a_crash() {
        let path = scratch("cut");
        let page = 4096;
        write(&path, &vec![7u8; 64 * page]);
        let mut m = MappedFile::open(&path).unwrap();
        m.set_header(16).unwrap();
        assert_eq!(m.bytes()[10 * page], 7);
        m.check().unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        // Past the new end: a SIGBUS without the guard.
        let v = std::hint::black_box(m.bytes())[40 * page];
        assert_eq!(v, 0, "zero pages in place of the lost mapping");
        let e = m.check().unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        drop(m);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_write_in_place_is_seen_and_a_rename_over_the_file_is_not_a_change() {
        let path = scratch("write");
        write(&path, &[1u8; 8192]);
        let mut m = MappedFile::open(&path).unwrap();
        m.set_header(64).unwrap();
        // A new file renamed over the path: the mapping keeps the old one, unchanged.
        let next = scratch("write-next");
        write(&next, &[2u8; 8192]);
        std::fs::rename(&next, &path).unwrap();
        m.check().unwrap();
        m.check_header().unwrap();
        assert_eq!(m.bytes()[100], 1);
        drop(m);

        let mut m = MappedFile::open(&path).unwrap();
        m.set_header(64).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Same size, other bytes, written into the same inode (what `cp` over a file does).
        let mut f = File::options().write(true).open(&path).unwrap();
        f.write_all(&[3u8; 8192]).unwrap();
        drop(f);
        let e = m.check().unwrap_err();
        assert!(e.contains("written since load"), "{e}");
        assert!(m.check_header().is_err());
        drop(m);
        let _ = std::fs::remove_file(&path);
    }
}
