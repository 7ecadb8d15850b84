//! A runtime's list of its live actors, and their names.

use std::sync::{Arc, Weak};

use dashmap::DashMap;

use super::{ActorState, Control};
use crate::ids::{ActorId, ActorInfo};
use crate::supervisor::{LastFailure, Shutdown};

struct Listed {
    control: Arc<dyn Control>,
    /// Supervised in place (spawned with `spawn_actor`), not in a user's
    /// tree: the runtime stops it at shutdown.
    in_place: bool,
}

/// Every live actor of a runtime, and the names they hold.
pub(crate) struct Directory {
    live: DashMap<ActorId, Listed, troupe_objects::IdHashing>,
    names: DashMap<String, ActorId>,
    /// `troupe_actors_alive{type}` per actor type, registered once: a
    /// labelled gauge built per spawn costs two allocations.
    alive: DashMap<String, metrics::Gauge>,
}

/// One actor as the state API lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActorSummary {
    /// Who it is.
    pub info: ActorInfo,
    /// Whether it runs now.
    pub state: ActorState,
    /// Restarts so far.
    pub restarts: u32,
    /// Its supervisor's path: `root/user` for actors spawned with
    /// `spawn_actor`; in a supervision tree of yours, that supervisor's
    /// (`root/user/workers`), empty until the tree starts it.
    pub supervisor: String,
    /// Whether it is supervised in place under `root/user` (spawned with
    /// `spawn_actor`) rather than by a supervisor of yours.
    pub in_place: bool,
    /// Why it failed last (a panic, a kill, a failed restart), if it ever
    /// did.
    pub last_failure: Option<LastFailure>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            live: DashMap::with_hasher(troupe_objects::IdHashing::default()),
            names: DashMap::new(),
            alive: DashMap::new(),
        }
    }
}

impl Directory {
    /// Takes `name` for `id`; false if another live actor holds it.
    pub(crate) fn claim(&self, name: &str, id: ActorId) -> bool {
        match self.names.entry(name.to_owned()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(entry) => {
                entry.insert(id);
                true
            }
        }
    }

    pub(crate) fn add(&self, control: Arc<dyn Control>, in_place: bool) {
        self.alive_gauge(&control.info().type_name).increment(1.0);
        self.live
            .insert(control.info().id, Listed { control, in_place });
    }

    fn alive_gauge(&self, type_name: &str) -> metrics::Gauge {
        if let Some(gauge) = self.alive.get(type_name) {
            return gauge.clone();
        }
        self.alive
            .entry(type_name.to_owned())
            .or_insert_with(
                || metrics::gauge!("troupe_actors_alive", "type" => type_name.to_owned()),
            )
            .clone()
    }

    /// The actor died for good: it leaves the list, and its name is free.
    pub(crate) fn remove(&self, info: &ActorInfo) {
        if self.live.remove(&info.id).is_some() {
            self.alive_gauge(&info.type_name).decrement(1.0);
        }
        if let Some(name) = &info.name {
            self.names.remove_if(name, |_, holder| *holder == info.id);
        }
    }

    /// The actor holding `name`.
    pub(crate) fn named(&self, name: &str) -> Option<Arc<dyn Control>> {
        let id = *self.names.get(name)?;
        self.live.get(&id).map(|l| l.control.clone())
    }

    /// The actor `id`, if it is alive here.
    pub(crate) fn get(&self, id: ActorId) -> Option<Arc<dyn Control>> {
        self.live.get(&id).map(|l| l.control.clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// In-place actors, newest first (the order to stop them in).
    pub(crate) fn in_place_newest_first(&self) -> Vec<Arc<dyn Control>> {
        let mut list: Vec<_> = self
            .live
            .iter()
            .filter(|l| l.in_place)
            .map(|l| l.control.clone())
            .collect();
        list.sort_by_key(|c| std::cmp::Reverse(c.info().id.seq));
        list
    }

    /// Every actor, for the state API, oldest first.
    pub(crate) fn summaries(&self) -> Vec<ActorSummary> {
        let mut list: Vec<_> = self.live.iter().map(|l| summary(&l)).collect();
        list.sort_by_key(|s| s.info.id.seq);
        list
    }

    /// One actor, for the state API.
    pub(crate) fn summary_of(&self, id: ActorId) -> Option<ActorSummary> {
        self.live.get(&id).map(|l| summary(&l))
    }

    /// Stops every in-place actor, newest first, each per its shutdown.
    pub(crate) async fn stop_in_place(&self) {
        for control in self.in_place_newest_first() {
            let shutdown = control.shutdown();
            control.shut_down(shutdown).await;
        }
    }

    /// Asks every actor to stop, without waiting (the runtime was dropped).
    pub(crate) fn request_stop_all(&self) {
        for listed in self.live.iter() {
            listed.control.request_stop();
        }
    }

    /// Kills whatever is still alive (the shutdown deadline passed).
    pub(crate) async fn kill_all(&self) {
        let all: Vec<_> = self.live.iter().map(|l| l.control.clone()).collect();
        for control in all {
            control.shut_down(Shutdown::Brutal).await;
        }
    }
}

fn summary(listed: &Listed) -> ActorSummary {
    let control = &listed.control;
    ActorSummary {
        info: (**control.info()).clone(),
        state: control.state(),
        restarts: control.restarts(),
        supervisor: control.supervisor_path().to_string(),
        in_place: listed.in_place,
        last_failure: control.last_failure(),
    }
}

/// A weak link from an actor's slot to its runtime's directory.
pub(crate) type DirectoryLink = Weak<Directory>;
