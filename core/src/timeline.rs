//! What ran when: a runtime's clock, and its timeline of task attempts and
//! actor calls, written as a Chrome trace (openable in Perfetto or
//! `chrome://tracing`).
//!
//! Recording is off unless asked for (`Config::record_timeline`,
//! `Runtime::record_timeline`): a task attempt or an actor call then costs
//! one relaxed atomic load. While recording, each one takes two clock
//! readings and one short critical section to append its event to a
//! bounded ring (the oldest events go first when it is full).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ids::{ActorId, NodeId, TaskId};

/// A runtime's clock: instants as microseconds since the Unix epoch,
/// measured with the monotonic clock from one wall-clock reading at boot
/// (so that events never go backwards when the wall clock is adjusted).
#[derive(Debug)]
pub(crate) struct Clock {
    epoch: Instant,
    epoch_unix_us: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            epoch: Instant::now(),
            epoch_unix_us: wall.as_micros() as u64,
        }
    }

    /// `at` in microseconds since the Unix epoch.
    pub(crate) fn unix_us(&self, at: Instant) -> u64 {
        self.epoch_unix_us + at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Now, in microseconds since the Unix epoch.
    pub(crate) fn now_us(&self) -> u64 {
        self.unix_us(Instant::now())
    }

    /// When the runtime started, in microseconds since the Unix epoch.
    pub(crate) fn started_us(&self) -> u64 {
        self.epoch_unix_us
    }
}

/// What a timeline event was spent on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Work {
    /// One attempt of a task.
    Task {
        /// The task.
        id: TaskId,
        /// Its function's registered name.
        function: Cow<'static, str>,
        /// Which attempt (1 for the first).
        attempt: u32,
    },
    /// One call of an actor method.
    ActorCall {
        /// The actor.
        actor: ActorId,
        /// Its type's registered name.
        actor_type: Cow<'static, str>,
        /// The method.
        method: Cow<'static, str>,
    },
}

/// One span of work on one thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// What ran.
    pub work: Work,
    /// When it started, in microseconds since the Unix epoch.
    pub start_us: u64,
    /// How long it ran, in microseconds (wall time: an async body's awaits
    /// count).
    pub duration_us: u64,
    /// The thread it started on (a number per thread of the process; the
    /// Chrome trace names each).
    pub thread: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The numbers of this process's threads, for timelines: one per thread,
/// given on first use. (Process-wide like the OS's thread ids, which std
/// does not expose; nothing reads it but timelines.)
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// This thread's number (see [`TimelineEvent::thread`]).
pub(crate) fn thread_number() -> u64 {
    THREAD.try_with(|n| *n).unwrap_or(0)
}

struct Recorded {
    events: VecDeque<TimelineEvent>,
    /// Thread numbers and names, for the trace's metadata.
    threads: BTreeMap<u64, String>,
    /// Events dropped because the ring was full.
    dropped: u64,
}

/// A runtime's timeline recorder.
pub(crate) struct Timeline {
    recording: AtomicBool,
    /// Whether it ever recorded (a timeline asked for while never recording
    /// is a mistake worth a clear error).
    ever: AtomicBool,
    capacity: usize,
    recorded: Mutex<Recorded>,
    clock: Arc<Clock>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("recording", &self.is_recording())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Timeline {
    pub(crate) fn new(capacity: usize, recording: bool, clock: Arc<Clock>) -> Self {
        Self {
            clock,
            recording: AtomicBool::new(recording && capacity > 0),
            ever: AtomicBool::new(recording && capacity > 0),
            capacity,
            recorded: Mutex::new(Recorded {
                events: VecDeque::new(),
                threads: BTreeMap::new(),
                dropped: 0,
            }),
        }
    }

    /// The runtime's clock.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Whether events are recorded now: the one check on the hot paths.
    #[inline]
    pub(crate) fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// Starts or stops recording; false if it cannot record (capacity 0).
    pub(crate) fn set_recording(&self, on: bool) -> bool {
        if on && self.capacity == 0 {
            return false;
        }
        self.recording.store(on, Ordering::Relaxed);
        if on {
            self.ever.store(true, Ordering::Relaxed);
        }
        true
    }

    pub(crate) fn ever_recorded(&self) -> bool {
        self.ever.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // Each critical section is one push or one copy: poisoning cannot
        // leave it inconsistent.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event of this thread (the caller checked
    /// [`is_recording`](Self::is_recording)).
    pub(crate) fn record(&self, event: TimelineEvent) {
        let mut recorded = self.lock();
        // Named by the thread itself (an async call may end on another).
        if !recorded.threads.contains_key(&event.thread) && event.thread == thread_number() {
            let name = std::thread::current()
                .name()
                .map_or_else(|| format!("thread {}", event.thread), str::to_owned);
            recorded.threads.insert(event.thread, name);
        }
        if recorded.events.len() >= self.capacity {
            recorded.events.pop_front();
            recorded.dropped += 1;
        }
        recorded.events.push_back(event);
    }

    /// The events recorded so far, oldest first, and how many were dropped.
    pub(crate) fn events(&self) -> (Vec<TimelineEvent>, u64) {
        let recorded = self.lock();
        (recorded.events.iter().cloned().collect(), recorded.dropped)
    }

    /// Forgets every event recorded so far.
    pub(crate) fn clear(&self) {
        let mut recorded = self.lock();
        recorded.events.clear();
        recorded.dropped = 0;
    }

    /// Writes the events as a Chrome trace (the JSON array format): one
    /// complete event (`"ph": "X"`) per task attempt and actor call, on the
    /// thread it started on, and metadata naming the process and threads.
    /// Returns how many events it wrote.
    pub(crate) fn write_chrome_trace(
        &self,
        out: &mut dyn Write,
        process: &str,
        node: NodeId,
    ) -> Result<usize, serde_json::Error> {
        let (events, threads) = self.events_and_threads();
        let trace = chrome_trace_part(
            &TracePart {
                pid: u64::from(std::process::id()),
                process: format!("{process} (node {node})"),
                threads,
                offset_us: 0,
            },
            &events,
        );
        serde_json::to_writer(out, &trace)?;
        Ok(events.len())
    }

    /// The events, oldest first, and the names of the threads they ran on.
    pub(crate) fn events_and_threads(&self) -> (Vec<TimelineEvent>, BTreeMap<u64, String>) {
        let (events, threads, _) = self.window(0, usize::MAX);
        (events, threads)
    }

    /// At most `max` events from the `from`th (oldest first), the thread
    /// names, and how many events there are in all: copies only the window.
    pub(crate) fn window(
        &self,
        from: usize,
        max: usize,
    ) -> (Vec<TimelineEvent>, BTreeMap<u64, String>, usize) {
        let recorded = self.lock();
        let total = recorded.events.len();
        let events = recorded
            .events
            .iter()
            .skip(from)
            .take(max)
            .cloned()
            .collect();
        (events, recorded.threads.clone(), total)
    }
}

/// A window of a runtime's timeline at one moment
/// (`Runtime::timeline_snapshot`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineSnapshot {
    /// The window's events, oldest first.
    pub events: Vec<TimelineEvent>,
    /// The index of the window's first event.
    pub from: u64,
    /// Events in the whole timeline.
    pub total: u64,
    /// Thread numbers and names.
    pub threads: BTreeMap<u64, String>,
    /// Whether it records now.
    pub recording: bool,
    /// Whether it ever recorded.
    pub ever_recorded: bool,
    /// The runtime's clock when the snapshot was taken, in microseconds
    /// since the Unix epoch.
    pub now_us: u64,
}

/// Where one process's events go in a Chrome trace that may hold several
/// (a cluster's: one process per node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePart {
    /// The trace's process id for these events.
    pub pid: u64,
    /// The process's name in the trace.
    pub process: String,
    /// Thread numbers and names (unnamed threads are called `thread N`).
    pub threads: BTreeMap<u64, String>,
    /// Added to every event's start: the offset from this process's clock
    /// to the trace's.
    pub offset_us: i64,
}

/// `events` as Chrome trace records (metadata naming the process and its
/// threads, then one complete event, `"ph": "X"`, per task attempt and
/// actor call), to be written in one JSON array with other parts.
pub fn chrome_trace_part(part: &TracePart, events: &[TimelineEvent]) -> Vec<serde_json::Value> {
    let pid = part.pid;
    let mut threads = part.threads.clone();
    for event in events {
        threads
            .entry(event.thread)
            .or_insert_with(|| format!("thread {}", event.thread));
    }
    let mut trace = Vec::with_capacity(events.len() + threads.len() + 1);
    trace.push(serde_json::json!({
        "name": "process_name", "ph": "M", "pid": pid,
        "args": { "name": part.process },
    }));
    for (tid, name) in &threads {
        trace.push(serde_json::json!({
            "name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
            "args": { "name": name },
        }));
    }
    for event in events {
        let (name, cat, mut args) = match &event.work {
            Work::Task {
                id,
                function,
                attempt,
            } => (
                function.to_string(),
                "task",
                serde_json::json!({ "task": id.to_string(), "attempt": attempt }),
            ),
            Work::ActorCall {
                actor,
                actor_type,
                method,
            } => {
                let short = actor_type.rsplit("::").next().unwrap_or(actor_type);
                (
                    format!("{short}.{method}"),
                    "actor_call",
                    serde_json::json!({ "actor": actor.to_string(), "type": actor_type }),
                )
            }
        };
        if let (Some(error), Some(args)) = (&event.error, args.as_object_mut()) {
            args.insert("error".to_owned(), serde_json::Value::from(error.as_str()));
        }
        let ts = i64::try_from(event.start_us)
            .unwrap_or(i64::MAX)
            .saturating_add(part.offset_us)
            .max(0);
        trace.push(serde_json::json!({
            "name": name, "cat": cat, "ph": "X",
            "ts": ts, "dur": event.duration_us.max(1),
            "pid": pid, "tid": event.thread, "args": args,
        }));
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_event(seq: u64, thread: u64) -> TimelineEvent {
        TimelineEvent {
            work: Work::Task {
                id: TaskId {
                    node: NodeId(1),
                    seq,
                },
                function: "f".into(),
                attempt: 1,
            },
            start_us: 1_000 + seq,
            duration_us: 5,
            thread,
            error: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_events() {
        let timeline = Timeline::new(3, true, Arc::new(Clock::new()));
        for seq in 0..5 {
            timeline.record(task_event(seq, 1));
        }
        let (events, dropped) = timeline.events();
        assert_eq!(dropped, 2);
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| match &e.work {
                Work::Task { id, .. } => id.seq,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(seqs, [2, 3, 4]);
    }

    #[test]
    fn a_window_copies_only_its_events_and_counts_them_all() {
        let timeline = Timeline::new(10, true, Arc::new(Clock::new()));
        for seq in 0..8 {
            timeline.record(task_event(seq, 1));
        }
        let seqs = |events: &[TimelineEvent]| -> Vec<u64> {
            events
                .iter()
                .map(|e| match &e.work {
                    Work::Task { id, .. } => id.seq,
                    _ => unreachable!(),
                })
                .collect()
        };
        let (events, _, total) = timeline.window(3, 2);
        assert_eq!((seqs(&events), total), (vec![3, 4], 8));
        let (events, _, _) = timeline.window(6, 10);
        assert_eq!(seqs(&events), [6, 7]);
        assert!(timeline.window(20, 10).0.is_empty());
    }

    #[test]
    fn a_capacity_of_zero_never_records() {
        let timeline = Timeline::new(0, true, Arc::new(Clock::new()));
        assert!(!timeline.is_recording());
        assert!(!timeline.set_recording(true));
        assert!(!timeline.ever_recorded());
    }

    #[test]
    fn the_chrome_trace_has_one_complete_event_per_record_and_names_threads() {
        let timeline = Timeline::new(10, true, Arc::new(Clock::new()));
        timeline.record(task_event(1, thread_number()));
        let mut failed = task_event(2, 99);
        failed.error = Some("boom \"quoted\"".to_owned());
        timeline.record(failed);
        timeline.record(TimelineEvent {
            work: Work::ActorCall {
                actor: ActorId {
                    node: NodeId(1),
                    seq: 3,
                },
                actor_type: "app::Counter".into(),
                method: "incr".into(),
            },
            start_us: 2_000,
            duration_us: 0,
            thread: 99,
            error: None,
        });
        let mut out = Vec::new();
        let written = timeline
            .write_chrome_trace(&mut out, "test", NodeId(1))
            .unwrap();
        assert_eq!(written, 3);
        let trace: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
        let complete: Vec<_> = trace.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(complete.len(), 3);
        assert_eq!(complete[1]["args"]["error"], "boom \"quoted\"");
        assert_eq!(complete[2]["name"], "Counter.incr");
        assert_eq!(complete[2]["dur"], 1, "zero-length spans stay visible");
        let names: Vec<_> = trace
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["tid"].as_u64().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{trace:?}");
    }
}
