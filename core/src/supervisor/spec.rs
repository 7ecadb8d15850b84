//! The description of a supervisor.

use std::sync::Arc;

use super::{Backoff, ChildSpec, EventBus, Intensity, Strategy};

/// The description of a supervisor: its strategy, limits and children.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    pub(crate) name: Arc<str>,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Option<Intensity>,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) events: EventBus,
}

impl SupervisorSpec {
    /// A supervisor with the default intensity and no children yet.
    pub fn new(name: impl Into<Arc<str>>, strategy: Strategy) -> Self {
        Self {
            name: name.into(),
            strategy,
            intensity: Some(Intensity::default()),
            backoff: None,
            children: Vec::new(),
            events: EventBus::default(),
        }
    }

    /// A dynamic supervisor: one-for-one, no static children, children added
    /// and removed at run time with [`SupervisorRef::start_child`](super::SupervisorRef::start_child) and
    /// [`SupervisorRef::terminate_child`](super::SupervisorRef::terminate_child). Any supervisor accepts those calls;
    /// this is the conventional shape for many children of one kind.
    pub fn dynamic(name: impl Into<Arc<str>>) -> Self {
        Self::new(name, Strategy::OneForOne)
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = Some(intensity);
        self
    }

    /// Never escalates, however often children restart. Use it where each
    /// child carries its own cap ([`ChildSpec::max_restarts`]), as the
    /// runtime's user-actor supervisor does.
    pub fn unlimited_intensity(mut self) -> Self {
        self.intensity = None;
        self
    }

    /// Waits before each restart.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Adds a child; children start in the order they are added.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// Reports this tree's events on `events` (nested supervisors inherit it).
    pub fn events(mut self, events: EventBus) -> Self {
        self.events = events;
        self
    }

    /// The supervisor's name (a label for events, logs and metrics; it is not
    /// registered anywhere, so it need not be unique).
    pub fn name(&self) -> &str {
        &self.name
    }
}
