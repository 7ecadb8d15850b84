//! Supervision events: what supervisors report, for tests and operators.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

/// Something a supervisor did or saw. Every event is also a `tracing` event;
/// restarts and escalations are also `metrics` counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisionEvent {
    /// A child started (first start, not a restart).
    ChildStarted {
        /// The supervisor's name.
        supervisor: Arc<str>,
        /// The child's id.
        child: Arc<str>,
    },
    /// A child exited; `abnormal` is true for panics, errors and kills.
    ChildExited {
        /// The supervisor's name.
        supervisor: Arc<str>,
        /// The child's id.
        child: Arc<str>,
        /// Whether the exit was abnormal.
        abnormal: bool,
        /// The exit reason or error text.
        reason: String,
    },
    /// A child was restarted; `restarts` counts its restarts so far.
    ChildRestarted {
        /// The supervisor's name.
        supervisor: Arc<str>,
        /// The child's id.
        child: Arc<str>,
        /// How many times this child has been restarted.
        restarts: u32,
    },
    /// Starting (or restarting) a child failed.
    ChildStartFailed {
        /// The supervisor's name.
        supervisor: Arc<str>,
        /// The child's id.
        child: Arc<str>,
        /// Why.
        error: String,
    },
    /// A child was removed for good (restart type, own restart cap, or
    /// `terminate_child`).
    ChildRemoved {
        /// The supervisor's name.
        supervisor: Arc<str>,
        /// The child's id.
        child: Arc<str>,
    },
    /// More restarts than the intensity allows: the supervisor stopped all
    /// its children and failed, so its own supervisor sees it fail.
    IntensityExceeded {
        /// The supervisor's name.
        supervisor: Arc<str>,
        /// The limit.
        max_restarts: u32,
        /// Its window.
        period: Duration,
    },
    /// The supervisor stopped (after stopping its children in reverse order).
    SupervisorStopped {
        /// The supervisor's name.
        supervisor: Arc<str>,
    },
}

/// A broadcast of [`SupervisionEvent`]s shared by a tree of supervisors.
/// Sending never blocks; a lagging subscriber loses the oldest events.
#[derive(Clone, Debug, Default)]
pub struct EventBus(Option<broadcast::Sender<SupervisionEvent>>);

impl EventBus {
    /// A bus that keeps the last `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        Self(Some(broadcast::channel(capacity.max(1)).0))
    }

    /// Whether the bus has a channel (a default bus drops everything).
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// Subscribes to events sent from now on. On a bus without a channel the
    /// receiver is closed at once.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisionEvent> {
        match &self.0 {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Sends the event `make` builds, building it only if someone listens
    /// (events clone names and reasons; spawning must not pay for that).
    pub(crate) fn emit(&self, make: impl FnOnce() -> SupervisionEvent) {
        if let Some(tx) = &self.0 {
            if tx.receiver_count() > 0 {
                let _ = tx.send(make());
            }
        }
    }
}
