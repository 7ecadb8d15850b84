//! Lineage: what an owner keeps to make an object again when the only copy
//! of it was on a node that died (Ray's lineage reconstruction).
//!
//! For each task this node owns that ran on another node and may be retried
//! (`max_retries > 0`), the table keeps its spec with encoded arguments (the
//! spec holds refs to the objects among them, so that they can be read, or
//! made again, when it runs again) and the attempt it is at. An entry goes
//! when every result of its task is freed; since it holds its arguments,
//! theirs go after it (nothing depending on them is left). Past the cap, the
//! oldest entries are evicted, and a later loss of their results says so.
//!
//! A reconstruction is one shared future per task: concurrent reads of its
//! results wait on the same one.

use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use futures::future::{BoxFuture, FutureExt, Shared};
use troupe_objects::{ObjectError, ObjectId, ObjectStore};

use crate::ids::TaskId;
use crate::spec::{Returns, TaskArgs, TaskSpec};

/// A reconstruction in progress: resolves once its task's results are made
/// again (or could not be).
pub(crate) type Rebuild = Shared<BoxFuture<'static, Result<(), ObjectError>>>;

/// Recovers a lost object (the runtime's; set once it exists).
pub(crate) type Recover =
    Box<dyn Fn(ObjectId) -> BoxFuture<'static, Result<(), ObjectError>> + Send + Sync>;

/// Bytes counted for an entry beyond its encoded arguments (the spec's
/// fixed part and the table's indexes).
const OVERHEAD: u64 = 256;

/// Results whose lineage was evicted, remembered until they are freed, at
/// most this many (the oldest are forgotten first: their loss then reads as
/// that of a task with no lineage).
const EVICTED_KEPT: usize = 1 << 20;

/// The owner's lineage table.
pub(crate) struct Lineage {
    cap: u64,
    table: Mutex<Table>,
    /// Entries taken out of the table, dropped outside its lock one at a
    /// time: dropping one may free its arguments, whose entries go next
    /// (iteratively, however long the chain).
    graveyard: Mutex<Vec<Record>>,
    draining: AtomicBool,
    /// Lost objects being recovered (a copy looked for, then a
    /// reconstruction): one recovery per object, whoever asks.
    recovering: Mutex<HashMap<ObjectId, Rebuild>>,
    /// Objects of this node lost with their node that may be recovered and
    /// were not yet: a task taking one waits for its recovery. With its
    /// size, read first (most steps see none).
    lost: Mutex<HashSet<ObjectId>>,
    lost_count: AtomicUsize,
    recover: OnceLock<Recover>,
    gauge: metrics::Gauge,
}

#[derive(Default)]
struct Table {
    tasks: HashMap<TaskId, Record>,
    by_result: HashMap<ObjectId, TaskId>,
    /// Entries by age (the key is `Record::seq`): the oldest are evicted.
    order: BTreeMap<u64, TaskId>,
    next_seq: u64,
    /// Live results whose entry was evicted (each with its key in
    /// `evicted_order`), until they are freed.
    evicted: HashMap<ObjectId, u64>,
    evicted_order: BTreeMap<u64, ObjectId>,
    next_evicted: u64,
    bytes: u64,
}

struct Record {
    spec: TaskSpec,
    bytes: u64,
    seq: u64,
    /// Results not freed yet.
    live: usize,
    /// The last attempt started (an original run's or a reconstruction's).
    attempt: u32,
    running: Option<Rebuild>,
}

/// What [`Lineage::start`] decided for a lost object.
pub(crate) enum Start {
    /// A reconstruction began: run it, and wait for it.
    Began(Rebuild),
    /// Wait for this reconstruction, running already.
    Wait(Rebuild),
    /// It is not lost here (any more): read it again.
    NotLost,
    /// It cannot be made again: why, and what the user can do.
    Cannot(String),
}

impl Lineage {
    /// A table that keeps at most `cap` bytes of lineage.
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            cap,
            table: Mutex::new(Table::default()),
            graveyard: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            recovering: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
            lost_count: AtomicUsize::new(0),
            recover: OnceLock::new(),
            gauge: metrics::gauge!("troupe_lineage_bytes"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of lineage kept.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Tasks whose lineage is kept.
    pub(crate) fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    /// Records `spec` (an attempt of a task this node owns, about to run on
    /// another node, its arguments encoded), or the attempt it is at if it
    /// is recorded already. Tasks that are not retried, and generators
    /// (their items are not results known up front), keep no lineage.
    /// Results that `store` freed already (their refs were dropped before
    /// the task ran) are counted as freed.
    pub(crate) fn record(&self, spec: &TaskSpec, store: &ObjectStore) {
        if spec.options.get_max_retries() == 0 || spec.returns == Returns::Stream {
            return;
        }
        let TaskArgs::Encoded(args) = &spec.args else {
            return; // not runnable by name: nothing to keep
        };
        let mut evicted = Vec::new();
        {
            let mut table = self.lock();
            if let Some(record) = table.tasks.get_mut(&spec.id) {
                record.attempt = record.attempt.max(spec.attempt);
                return;
            }
            let bytes = OVERHEAD
                + args.bytes.len() as u64
                + (args.refs.len() + spec.results.len()) as u64 * 16
                + spec.function.len() as u64;
            let seq = table.next_seq;
            table.next_seq += 1;
            for id in &spec.results {
                table.by_result.insert(*id, spec.id);
            }
            table.order.insert(seq, spec.id);
            table.bytes += bytes;
            let record = Record {
                spec: spec.clone(),
                bytes,
                seq,
                live: spec.results.len(),
                attempt: spec.attempt,
                running: None,
            };
            table.tasks.insert(spec.id, record);
            while table.bytes > self.cap {
                let Some((_, oldest)) = table.order.pop_first() else {
                    break;
                };
                let live: Vec<ObjectId> = table.tasks.get(&oldest).map_or_else(Vec::new, |r| {
                    r.spec
                        .results
                        .iter()
                        .filter(|id| table.by_result.get(id) == Some(&oldest))
                        .copied()
                        .collect()
                });
                if let Some(record) = table.remove(oldest) {
                    for id in live {
                        table.remember_evicted(id);
                    }
                    evicted.push(record);
                }
            }
            self.gauge.set(table.bytes as f64);
        }
        if !evicted.is_empty() {
            tracing::debug!(
                entries = evicted.len(),
                "lineage over its cap: oldest evicted"
            );
        }
        self.bury(evicted);
        // Checked after the entry is in: a result freed before that was not
        // found by `freed`, one freed since is found (twice is harmless).
        for id in &spec.results {
            if store.location(*id).is_none() {
                self.freed(*id);
            }
        }
    }

    /// `id`, an object of this node, was freed: its task's entry goes with
    /// its last result.
    pub(crate) fn freed(&self, id: ObjectId) {
        self.unmark_lost(id);
        let gone = {
            let mut table = self.lock();
            if let Some(key) = table.evicted.remove(&id) {
                table.evicted_order.remove(&key);
            }
            let Some(task) = table.by_result.remove(&id) else {
                return;
            };
            let Some(record) = table.tasks.get_mut(&task) else {
                return;
            };
            record.live = record.live.saturating_sub(1);
            if record.live > 0 {
                return;
            }
            let gone = table.remove(task);
            self.gauge.set(table.bytes as f64);
            gone
        };
        self.bury(gone.into_iter().collect());
    }

    /// Drops removed entries outside the table's lock, one at a time.
    fn bury(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        self.graveyard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(records);
        loop {
            if self.draining.swap(true, Ordering::AcqRel) {
                return; // the thread draining now drops them
            }
            loop {
                let next = self
                    .graveyard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop();
                match next {
                    Some(record) => drop(record),
                    None => break,
                }
            }
            self.draining.store(false, Ordering::Release);
            let empty = self
                .graveyard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if empty {
                return;
            }
        }
    }

    /// Why `id`, lost here, cannot be made again; `None` if it can.
    pub(crate) fn why_not(&self, id: ObjectId) -> Option<String> {
        let table = self.lock();
        match table
            .by_result
            .get(&id)
            .and_then(|task| table.tasks.get(task))
        {
            Some(record) => record.spent(),
            None => Some(self.no_entry(&table, id)),
        }
    }

    fn no_entry(&self, table: &Table, id: ObjectId) -> String {
        if table.evicted.contains_key(&id) {
            format!(
                "its lineage was evicted (the owner keeps at most {} bytes of lineage): raise Config::lineage_bytes, or keep fewer results of retriable tasks alive at once",
                self.cap
            )
        } else {
            "it was made by a task that is not retried (max_retries = 0), or by a generator, so no lineage was kept: make it in a task with max_retries > 0 to have it made again when lost".to_owned()
        }
    }

    /// Starts (or joins) making `id` again, if `store` holds it as lost:
    /// `rerun` gets the spec of its task at its next attempt, and the
    /// future it returns is shared by every caller until it ends (it calls
    /// [`finished`](Self::finished) last).
    pub(crate) fn start(
        &self,
        id: ObjectId,
        store: &ObjectStore,
        rerun: impl FnOnce(TaskSpec) -> BoxFuture<'static, Result<(), ObjectError>>,
    ) -> Start {
        let mut table = self.lock();
        let Some(task) = table.by_result.get(&id).copied() else {
            if !matches!(store.failure(id), Some(ObjectError::Lost { .. })) {
                return Start::NotLost;
            }
            return Start::Cannot(self.no_entry(&table, id));
        };
        let Some(record) = table.tasks.get_mut(&task) else {
            return Start::NotLost;
        };
        if let Some(running) = &record.running {
            return Start::Wait(running.clone());
        }
        if !matches!(store.failure(id), Some(ObjectError::Lost { .. })) {
            return Start::NotLost;
        }
        if let Some(why) = record.spent() {
            return Start::Cannot(why);
        }
        record.attempt += 1;
        let mut spec = record.spec.clone();
        spec.attempt = record.attempt;
        let running = rerun(spec).shared();
        record.running = Some(running.clone());
        Start::Began(running)
    }

    /// The recovery of `id` running now, or (with `true`) the one `make`
    /// makes, shared until it calls [`recovered`](Self::recovered).
    pub(crate) fn recovery(
        &self,
        id: ObjectId,
        make: impl FnOnce() -> BoxFuture<'static, Result<(), ObjectError>>,
    ) -> (Rebuild, bool) {
        let mut recovering = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = recovering.get(&id) {
            return (running.clone(), false);
        }
        let running = make().shared();
        recovering.insert(id, running.clone());
        (running, true)
    }

    /// The recovery of `id` ended (its future's last step).
    pub(crate) fn recovered(&self, id: ObjectId) {
        self.recovering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.unmark_lost(id);
    }

    /// Sets how lost objects are recovered (the runtime, once it exists).
    pub(crate) fn set_recover(&self, recover: Recover) {
        let _ = self.recover.set(recover);
    }

    /// `ids`, objects of this node, were lost and may be recovered: tasks
    /// taking them wait for that.
    pub(crate) fn mark_lost(&self, ids: impl IntoIterator<Item = ObjectId>) {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        lost.extend(ids);
        self.lost_count.store(lost.len(), Ordering::Release);
    }

    fn unmark_lost(&self, id: ObjectId) {
        if self.lost_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        lost.remove(&id);
        self.lost_count.store(lost.len(), Ordering::Release);
    }

    /// Whether `id` was lost and its recovery has not ended: a task taking
    /// it waits. One atomic load when nothing is lost.
    pub(crate) fn awaits_recovery(&self, id: ObjectId) -> bool {
        self.lost_count.load(Ordering::Acquire) > 0
            && self
                .lost
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
    }

    /// Recovers `id` if it awaits recovery (resolves at once otherwise).
    pub(crate) fn recover(&self, id: ObjectId) -> BoxFuture<'static, Result<(), ObjectError>> {
        match self.recover.get() {
            Some(recover) if self.awaits_recovery(id) => recover(id),
            _ => Box::pin(async { Ok(()) }),
        }
    }

    /// The reconstruction of `task` ended (its future's last step).
    pub(crate) fn finished(&self, task: TaskId) {
        let mut table = self.lock();
        if let Some(record) = table.tasks.get_mut(&task) {
            record.running = None;
        }
    }
}

impl Record {
    /// Why its task cannot run again: every attempt is spent.
    fn spent(&self) -> Option<String> {
        let max = self.spec.options.get_max_retries();
        (self.attempt > max).then(|| {
            format!(
                "its task {} ({}) has spent its {} attempts (max_retries = {max}): submit it again, or with a higher max_retries",
                self.spec.id, self.spec.function, self.attempt
            )
        })
    }
}

impl Table {
    fn remove(&mut self, task: TaskId) -> Option<Record> {
        let record = self.tasks.remove(&task)?;
        self.order.remove(&record.seq);
        for id in &record.spec.results {
            if self.by_result.get(id) == Some(&task) {
                self.by_result.remove(id);
            }
        }
        self.bytes -= record.bytes;
        Some(record)
    }

    fn remember_evicted(&mut self, id: ObjectId) {
        let key = self.next_evicted;
        self.next_evicted += 1;
        if let Some(old) = self.evicted.insert(id, key) {
            self.evicted_order.remove(&old);
        }
        self.evicted_order.insert(key, id);
        while self.evicted.len() > EVICTED_KEPT {
            match self.evicted_order.pop_first() {
                Some((_, old)) => {
                    self.evicted.remove(&old);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
#[path = "lineage/tests.rs"]
mod tests;
