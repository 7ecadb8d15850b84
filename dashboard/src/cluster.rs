//! The cluster feed: one poller per dashboard asks the cluster (through
//! core's [`ClusterInspector`] seam, which asks the head, which asks every
//! member with a deadline) for every node's state and the jobs, once per
//! period while a page is open, and hands the encoded panel to every page.
//!
//! ```text
//! poller ─(every cluster_interval, pages open)→ inspector.cluster + jobs ─→ head
//!        ←── ClusterView (a silent node: "no answer"), or the deadline passes
//!        ─→ ClusterPanel JSON ─→ watch ─→ each page's event stream ("cluster")
//! ```
//!
//! The poll runs apart from the page's own snapshots: a cluster slow to
//! answer delays only this section, which then shows its last answer and
//! why it is old.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use troupe_core::runtime::{ClusterInspector, JobLogPage, WeakRuntime};
use troupe_core::{StateQuery, TaskFilter};

use crate::hub::Hub;
use crate::panel::{self, ClusterPanel};

/// What each member lists for the cluster view (its counts are complete).
fn member_query() -> StateQuery {
    let mut query = StateQuery::new()
        .limit(panel::LISTED)
        .tasks(TaskFilter::new().limit(panel::LISTED));
    // A supervisor busy restarting must not hold a member's answer up
    // long: the head waits this plus a few seconds for each.
    query.supervisor_timeout = Duration::from_millis(500);
    query
}

/// The cluster poller's shared state.
pub(crate) struct ClusterFeed {
    runtime: WeakRuntime,
    interval: Duration,
    deadline: Duration,
    /// The latest panel, encoded; `None` until the first poll.
    latest: watch::Sender<Option<Arc<str>>>,
    /// The last panel, for its nodes when a poll fails.
    last: Mutex<Option<ClusterPanel>>,
    /// Woken when a page connects.
    wake: Notify,
    polls: AtomicU64,
    timeouts: AtomicU64,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl ClusterFeed {
    pub(crate) fn new(runtime: WeakRuntime, interval: Duration, deadline: Duration) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            interval,
            deadline,
            latest: watch::channel(None).0,
            last: Mutex::new(None),
            wake: Notify::new(),
            polls: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        })
    }

    /// Panels from now on (the latest one first, if any); a page opened,
    /// so a fresh one is taken at once.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<str>>> {
        let mut updates = self.latest.subscribe();
        updates.mark_changed();
        self.wake.notify_one();
        updates
    }

    /// Polls taken, and those that ran past the deadline.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.polls.load(Ordering::Acquire),
            self.timeouts.load(Ordering::Acquire),
        )
    }

    /// The latest panel, polling once if there is none yet.
    pub(crate) async fn latest(&self) -> Option<Arc<str>> {
        if let Some(latest) = self.latest.borrow().clone() {
            return Some(latest);
        }
        let (json, _) = self.poll().await?;
        self.latest.send_replace(Some(json.clone()));
        Some(json)
    }

    /// A page of job `id`'s log, within the deadline; `None`: no cluster.
    pub(crate) async fn job_log(
        &self,
        id: String,
        from: u64,
    ) -> Option<Result<JobLogPage, String>> {
        let inspector = self.inspector()?;
        let asked = inspector.job_log(id, from);
        Some(match tokio::time::timeout(self.deadline, asked).await {
            Ok(page) => page.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the head did not answer within {:?}",
                self.deadline
            )),
        })
    }

    fn inspector(&self) -> Option<Arc<dyn ClusterInspector>> {
        self.runtime.upgrade()?.cluster_inspector()
    }

    /// Asks the cluster once and encodes the panel, and whether this node
    /// runs alone; `None` once the runtime is gone.
    async fn poll(&self) -> Option<(Arc<str>, bool)> {
        let runtime = self.runtime.upgrade()?;
        let Some(inspector) = runtime.cluster_inspector() else {
            return Some((encode(&panel::alone(now_us())), true));
        };
        let groups: Vec<_> = runtime
            .placement_groups()
            .into_iter()
            .map(|(_, _, state)| state)
            .collect();
        drop(runtime);
        self.polls.fetch_add(1, Ordering::AcqRel);
        metrics::counter!("troupe_dashboard_cluster_polls_total").increment(1);
        let started = Instant::now();
        let asked = futures::future::join(inspector.cluster(member_query()), inspector.jobs());
        let answered = tokio::time::timeout(self.deadline, asked).await;
        metrics::histogram!("troupe_dashboard_cluster_poll_seconds")
            .record(started.elapsed().as_secs_f64());
        let now = now_us();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut panel = last.clone().unwrap_or_default();
        panel.polled_at_us = now;
        match answered {
            Ok((cluster, jobs)) => {
                match cluster {
                    Ok(view) => {
                        let mut cards = panel::cards(&view, &panel::groups_per_node(&groups));
                        panel::carry_forward(&mut cards, &panel.nodes);
                        panel.nodes = cards;
                        panel.head = view.head;
                        panel.me = view.me;
                        panel.nodes_at_us = now;
                        panel.error = None;
                    }
                    Err(err) => panel.error = Some(err.to_string()),
                }
                match jobs {
                    Ok(jobs) => {
                        panel.jobs = panel::jobs_newest_first(jobs);
                        panel.jobs_error = None;
                    }
                    Err(err) => panel.jobs_error = Some(err.to_string()),
                }
            }
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("troupe_dashboard_cluster_polls_timed_out_total").increment(1);
                tracing::debug!(deadline = ?self.deadline, "the cluster did not answer the dashboard in time");
                panel.error = Some(format!(
                    "the cluster did not answer within {:?}; showing its last answer",
                    self.deadline
                ));
            }
        }
        *last = Some(panel.clone());
        Some((encode(&panel), false))
    }

    /// Polls while pages are open (once per interval); sleeps otherwise.
    /// Ends when the runtime or the dashboard is gone.
    pub(crate) async fn run(self: Arc<Self>, hub: Arc<Hub>) {
        loop {
            if hub.is_closed() {
                return;
            }
            if hub.clients() == 0 {
                // Woken by a page; the timeout only rechecks for a close.
                let _ = tokio::time::timeout(self.interval * 10, self.wake.notified()).await;
                continue;
            }
            let Some((json, alone)) = self.poll().await else {
                return;
            };
            self.latest.send_replace(Some(json));
            if alone {
                // A runtime's seams are set when it starts: it never joins
                // a cluster later.
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

fn encode(panel: &ClusterPanel) -> Arc<str> {
    match serde_json::to_string(panel) {
        Ok(json) => json.into(),
        // Nothing in a panel fails to encode; say so if it ever does.
        Err(err) => serde_json::json!({ "error": err.to_string() })
            .to_string()
            .into(),
    }
}
