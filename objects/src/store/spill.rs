//! Spilling least-recently-used objects to disk, and reading them back.
//!
//! Blocking file I/O: the runtime's object store actor calls [`spill`] on a
//! blocking thread; reads of spilled objects from async code go through a
//! blocking thread too. Byte objects ([`Blob`]) are written and read as
//! they are, with no encoding pass, and read back into a pooled buffer.
//!
//! [`spill`]: crate::ObjectStore::spill

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::blob::Blob;
use crate::codec::{AnyValue, DecodeScope, EncodeScope};
use crate::{ObjectError, ObjectId, ObjectStore, SpillOp};

use super::State;

/// What one call to [`ObjectStore::spill`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpillReport {
    /// Objects written to disk.
    pub objects: u64,
    /// Their bytes in memory.
    pub bytes: u64,
}

fn spill_error(op: SpillOp, id: ObjectId, path: &Path, cause: impl ToString) -> ObjectError {
    ObjectError::Spill {
        op,
        id,
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
}

/// Writes `bytes` to `path` through a temporary file, so that a reader
/// never sees half a file.
fn write_file(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        for part in parts {
            file.write_all(part)?;
        }
        Ok(())
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err)
        }
    }
}

impl ObjectStore {
    /// Writes least-recently-used objects to the spill directory until
    /// memory use is under the threshold (and, while puts wait, until they
    /// fit). Blocking file I/O: call it from a blocking thread. On an I/O
    /// error (a full disk) it stops and returns the error; every object is
    /// still readable, in memory or on disk.
    pub fn spill(&self) -> Result<SpillReport, ObjectError> {
        let began = Instant::now();
        let result = self.spill_round();
        let inner = &self.inner;
        let stuck = match &result {
            Ok(report) => report.objects == 0 && self.needs_spill(),
            Err(_) => true,
        };
        inner.stuck.store(stuck, Ordering::Release);
        // Puts waiting for room re-check, whatever happened.
        inner.room.notify_waiters();
        if let Ok(report) = &result {
            if report.objects > 0 {
                metrics::histogram!("troupe_object_store_spill_seconds")
                    .record(began.elapsed().as_secs_f64());
                tracing::debug!(
                    objects = report.objects,
                    bytes = report.bytes,
                    took = ?began.elapsed(),
                    "spilled objects"
                );
            }
        }
        result
    }

    fn spill_round(&self) -> Result<SpillReport, ObjectError> {
        let inner = &self.inner;
        let mut report = SpillReport::default();
        if !inner.needs_spill() {
            return Ok(report);
        }
        // Freed buffers kept for reuse go first: memory is wanted.
        inner.pool.trim();
        let mut victims: Vec<(u64, ObjectId)> = inner
            .objects
            .iter()
            .filter(|e| matches!(e.state, State::Ready(_)) && e.size > 0 && !e.pinned)
            .map(|e| (e.last_used.load(Ordering::Relaxed), *e.key()))
            .collect();
        victims.sort_unstable();
        let dir = &inner.config.spill_dir;
        for (_, id) in victims {
            if !inner.needs_spill() {
                break;
            }
            // A file per spill, not per object: a restore deletes the file
            // it read after publishing the value, and a new spill of the
            // same object in between must not lose its file to that.
            let path = dir.join(format!("{id}-{}.obj", inner.tick()));
            // Encode outside the map's lock; the value is shared, not moved.
            let (value, codec, size) = match inner.objects.get(&id) {
                Some(e) => match &e.state {
                    State::Ready(v) => (v.clone(), e.kind.codec(), e.size),
                    _ => continue,
                },
                None => continue,
            };
            std::fs::create_dir_all(dir)
                .map_err(|e| spill_error(SpillOp::Spilling, id, &path, e))?;
            let raw = codec.raw.and_then(|raw| (raw.bytes)(&*value));
            let written = match raw {
                Some(bytes) => write_file(&path, &[bytes]),
                None => {
                    let scope = EncodeScope::enter();
                    let mut bytes = Vec::new();
                    (codec.encode)(&*value, &mut bytes)
                        .map_err(|e| spill_error(SpillOp::Spilling, id, &path, e))?;
                    if scope.saw_a_ref() {
                        // It holds refs: keep it in memory for good.
                        if let Some(mut entry) = inner.objects.get_mut(&id) {
                            entry.pinned = true;
                        }
                        continue;
                    }
                    write_file(&path, &[&bytes])
                }
            };
            if let Err(err) = written {
                tracing::error!(%id, ?path, %err, "spilling failed; the object stays in memory");
                return Err(spill_error(SpillOp::Spilling, id, &path, err));
            }
            let mut spilled = false;
            if let Some(mut entry) = inner.objects.get_mut(&id) {
                // Only if it is still the same in-memory value.
                if matches!(&entry.state, State::Ready(v) if Arc::ptr_eq(v, &value)) {
                    entry.state = State::Spilled(path.clone().into_boxed_path());
                    spilled = true;
                }
            }
            if spilled {
                inner.unaccount(size);
                inner.spilled(size);
                report.objects += 1;
                report.bytes += size;
                metrics::counter!("troupe_object_store_spilled_bytes_total").increment(size);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(report)
    }

    /// The file a spilled object is in.
    #[cfg(test)]
    pub(crate) fn spill_file(&self, id: ObjectId) -> Option<std::path::PathBuf> {
        match &self.inner.objects.get(&id)?.state {
            State::Spilled(path) => Some(path.to_path_buf()),
            _ => None,
        }
    }

    /// Reads a spilled object back into memory (and deletes its file).
    /// Blocking file I/O.
    pub(crate) fn restore(&self, id: ObjectId) -> Result<AnyValue, ObjectError> {
        let inner = &self.inner;
        let (path, codec) = match inner.objects.get(&id) {
            Some(entry) => match &entry.state {
                State::Spilled(path) => (path.clone(), entry.kind.codec()),
                State::Ready(value) => return Ok(value.clone()),
                _ => return Err(ObjectError::Freed(id)),
            },
            None => return Err(ObjectError::Freed(id)),
        };
        let failed =
            |cause: &dyn std::fmt::Display| spill_error(SpillOp::Restoring, id, &path, cause);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) => {
                // Another reader restored it and deleted the file first.
                if let Some(entry) = inner.objects.get(&id) {
                    if let State::Ready(value) = &entry.state {
                        return Ok(value.clone());
                    }
                }
                return Err(failed(&err));
            }
        };
        let len = file.metadata().map_err(|e| failed(&e))?.len() as usize;
        let mut buf = inner.pool.take(len);
        file.read_to_end(&mut buf).map_err(|e| failed(&e))?;
        let blob = Blob::pooled(buf, &inner.pool);
        let value = match codec.raw {
            Some(raw) => (raw.from)(blob),
            None => {
                let _scope = DecodeScope::enter(inner);
                // The buffer goes back to the pool when `blob` drops.
                (codec.decode)(&blob).map_err(|e| failed(&e))?
            }
        };
        let size = (codec.size)(&*value);
        let mut restored = false;
        let mut spilled_size = 0;
        let value = match inner.objects.get_mut(&id) {
            Some(mut entry) => match &entry.state {
                // Another reader restored it first: share theirs.
                State::Ready(theirs) => theirs.clone(),
                State::Spilled(_) => {
                    spilled_size = entry.size;
                    entry.state = State::Ready(value.clone());
                    entry.size = size;
                    entry.last_used.store(inner.tick(), Ordering::Relaxed);
                    // Counted under the entry's lock, before a free of it
                    // can uncount it (see `settle`).
                    inner.account(size);
                    restored = true;
                    value
                }
                _ => value,
            },
            None => return Err(ObjectError::Freed(id)),
        };
        if restored {
            let _ = std::fs::remove_file(&path);
            inner.unspilled(spilled_size);
            metrics::counter!("troupe_object_store_restored_bytes_total").increment(size);
        }
        Ok(value)
    }
}
