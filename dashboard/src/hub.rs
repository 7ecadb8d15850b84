//! Where snapshots come from: one poller per dashboard, which asks the
//! runtime for its state only while a page is open, encodes each snapshot
//! once, and hands it to every open page; and a sampler of the object
//! store's use, for the page's chart.
//!
//! ```text
//! page connects ─→ clients += 1, wake ─→ poller: state_with(query) ─→ JSON ─→ watch ─→ every page
//!                                          ↑ every interval, or a supervision event
//! page leaves  ─→ clients -= 1 (0: the poller sleeps, and stops listening to events)
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use troupe_core::runtime::WeakRuntime;
use troupe_core::{Runtime, StateQuery, TaskFilter, TaskState};

use crate::view::{self, StoreSample};

/// The poller's shared state.
pub(crate) struct Hub {
    runtime: WeakRuntime,
    query: StateQuery,
    interval: Duration,
    capacity: usize,
    clients: AtomicUsize,
    /// Woken when a page connects (an update at once) and on stop.
    wake: Notify,
    /// The latest snapshot, encoded; `None` until the first poll.
    latest: watch::Sender<Option<Arc<str>>>,
    samples: Mutex<VecDeque<StoreSample>>,
    /// Set when the dashboard stops: open streams end.
    pub(crate) closed: AtomicBool,
    /// Snapshots taken so far.
    polls: AtomicU64,
    /// The poller waits for a page to open (it takes no snapshot and
    /// listens to no event meanwhile).
    idle: AtomicBool,
}

/// Counts an open page while it lives.
pub(crate) struct Client(Arc<Hub>);

impl Drop for Client {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    pub(crate) fn new(
        runtime: WeakRuntime,
        query: StateQuery,
        interval: Duration,
        capacity: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            query,
            interval,
            capacity,
            clients: AtomicUsize::new(0),
            wake: Notify::new(),
            latest: watch::channel(None).0,
            samples: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            polls: AtomicU64::new(0),
            idle: AtomicBool::new(false),
        })
    }

    fn samples(&self) -> MutexGuard<'_, VecDeque<StoreSample>> {
        // One push or one copy per critical section.
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A page opened: it gets every snapshot from now on (the latest one
    /// first, if any), and a fresh one at once.
    pub(crate) fn connect(self: &Arc<Self>) -> (Client, watch::Receiver<Option<Arc<str>>>) {
        self.clients.fetch_add(1, Ordering::AcqRel);
        let mut updates = self.latest.subscribe();
        updates.mark_changed();
        self.wake.notify_one();
        (Client(self.clone()), updates)
    }

    /// How many pages are open.
    pub(crate) fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// How many snapshots were taken so far.
    pub(crate) fn polls(&self) -> u64 {
        self.polls.load(Ordering::Acquire)
    }

    /// Whether the poller waits for a page to open, costing nothing.
    pub(crate) fn idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }

    /// Whether the dashboard has stopped.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The update interval.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// The latest snapshot, polling once if there is none yet.
    pub(crate) async fn latest(&self) -> Option<Arc<str>> {
        if let Some(latest) = self.latest.borrow().clone() {
            return Some(latest);
        }
        let runtime = self.runtime.upgrade()?;
        let json = self.poll(&runtime).await;
        Some(json)
    }

    /// Takes a snapshot and encodes it.
    async fn poll(&self, runtime: &Runtime) -> Arc<str> {
        self.polls.fetch_add(1, Ordering::AcqRel);
        runtime.sample_metrics();
        let state = runtime.state_with(&self.query).await;
        let failed = runtime.tasks(
            &TaskFilter::new()
                .state(TaskState::Failed)
                .limit(view::FAILURES),
        );
        let store = self.samples().iter().copied().collect();
        let snapshot = view::snapshot(state, store, &failed, self.interval.as_millis() as u64);
        match serde_json::to_string(&snapshot) {
            Ok(json) => json.into(),
            // Nothing in a snapshot fails to encode; say so if it ever does.
            Err(err) => serde_json::json!({ "error": err.to_string() })
                .to_string()
                .into(),
        }
    }

    /// Polls while pages are open; sleeps otherwise. Ends when the
    /// runtime is gone.
    pub(crate) async fn run_poller(self: Arc<Self>) {
        loop {
            while self.clients() == 0 {
                self.idle.store(true, Ordering::Release);
                self.wake.notified().await;
            }
            self.idle.store(false, Ordering::Release);
            let Some(runtime) = self.runtime.upgrade() else {
                return;
            };
            if runtime.is_shut_down() {
                return;
            }
            // Listening only while pages are open: with no subscriber,
            // supervisors do not even build their events.
            let mut events = runtime.subscribe();
            let json = self.poll(&runtime).await;
            drop(runtime);
            self.latest.send_replace(Some(json));
            self.wait_for_change(&mut events).await;
        }
    }

    /// Until the next update is due: the interval passed, a supervision
    /// event arrived (after a short pause, so that a burst is one update),
    /// or a page connected.
    async fn wait_for_change(
        &self,
        events: &mut broadcast::Receiver<troupe_core::SupervisionEvent>,
    ) {
        let event = async {
            match events.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // The runtime is going: the interval will tell.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(self.interval) => {}
            _ = event => {}
            _ = self.wake.notified() => {}
        }
    }

    /// Samples the object store once per interval, whether pages are open
    /// or not (three counters of the store), keeping the last `capacity`
    /// samples.
    pub(crate) async fn run_sampler(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(runtime) = self.runtime.upgrade() else {
                return;
            };
            let summary = store_sample(&runtime);
            drop(runtime);
            let mut samples = self.samples();
            if samples.len() >= self.capacity {
                samples.pop_front();
            }
            samples.push_back(summary);
        }
    }

    /// Ends every page's stream (the dashboard stops).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.latest.send_replace(None);
        self.wake.notify_waiters();
    }
}

/// The object store's numbers now, without the rest of the summary.
fn store_sample(runtime: &Runtime) -> StoreSample {
    let store = runtime.objects();
    let (spilled_bytes, _) = store.spilled();
    StoreSample {
        at_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
        objects: store.len() as u64,
        memory_bytes: store.in_memory_bytes(),
        spilled_bytes,
    }
}
