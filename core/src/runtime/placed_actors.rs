//! Actors this runtime spawned on other nodes with restarts left: it owns
//! them (as Ray's owner does), so when one's node dies it spawns the actor
//! again on another node, and tells handles that ask where it went
//! (`Relocation`).
//!
//! State that decides (`PlacedActors::node_died`: which actors restart and
//! which are dead for good) is apart from the driver that acts (the
//! restart loop on the runtime's tokio).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::Runtime;
use crate::actor::Limit;
use crate::ids::{ActorId, ActorInfo, ActorOwner, NodeId};
use crate::remote::{Relocation, RemoteSpawn};
use crate::spec::SchedulingStrategy;

/// How long a restart keeps looking for a node that fits before the actor
/// is declared dead.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// How long the owner holds a `Relocation` question while the actor is
/// restarting (the asker then asks again).
const HOLD_QUESTION: Duration = Duration::from_secs(2);

/// The owner's table of its actors on other nodes.
#[derive(Default)]
pub(crate) struct PlacedActors {
    records: Mutex<HashMap<ActorId, Placed>>,
}

struct Placed {
    /// How it was spawned (its constructor, arguments and options).
    request: RemoteSpawn,
    /// Restarts spent on node deaths.
    restarts: u32,
    /// Where it is; watched by the questions held while it restarts.
    location: watch::Sender<Relocation>,
    /// A supervisor's child on another node: its supervisor restarts it,
    /// not a node's death (`node_died` leaves it restarting).
    supervised: bool,
}

/// What `node_died` decided for one actor.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Spawn it again, with these options' restarts left.
    Restart(ActorId, Box<RemoteSpawn>),
    /// Dead for good.
    Dead(ActorId),
}

impl PlacedActors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ActorId, Placed>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tracks `info`, just spawned elsewhere by `request`.
    pub(crate) fn track(&self, info: ActorInfo, request: RemoteSpawn) {
        let key = info.id;
        self.lock().insert(
            key,
            Placed {
                request,
                restarts: 0,
                location: watch::channel(Relocation::At(info)).0,
                supervised: false,
            },
        );
    }

    /// Tracks `key`, a supervisor's child on another node not started yet.
    pub(crate) fn supervise(&self, key: ActorId, request: RemoteSpawn) {
        self.lock().insert(
            key,
            Placed {
                request,
                restarts: 0,
                location: watch::channel(Relocation::Restarting).0,
                supervised: true,
            },
        );
    }

    /// The supervised child `key` lives at `info` (started or restarted).
    pub(crate) fn supervised_at(&self, key: ActorId, info: ActorInfo) {
        if let Some(placed) = self.lock().get(&key) {
            placed.location.send_replace(Relocation::At(info));
        }
    }

    /// The incarnation `actor` of the supervised child `key` ended: between
    /// incarnations, unless a newer one already started.
    pub(crate) fn supervised_gone(&self, key: ActorId, actor: ActorId) {
        if let Some(placed) = self.lock().get(&key) {
            placed.location.send_if_modified(|now| match now {
                Relocation::At(info) if info.id == actor => {
                    *now = Relocation::Restarting;
                    true
                }
                _ => false,
            });
        }
    }

    /// Forgets `key` (stopped for good): no restart when its node dies.
    pub(crate) fn forget(&self, key: ActorId) {
        if let Some(placed) = self.lock().remove(&key) {
            placed
                .location
                .send_replace(Relocation::Dead("it was stopped".to_owned()));
        }
    }

    /// `node` died: which of the actors on it restart (marked restarting,
    /// a restart spent) and which are dead for good (forgotten).
    pub(crate) fn node_died(&self, node: NodeId) -> Vec<Verdict> {
        let mut records = self.lock();
        let mut verdicts = Vec::new();
        let mut dead = Vec::new();
        for (key, placed) in records.iter_mut() {
            let on_it =
                matches!(&*placed.location.borrow(), Relocation::At(info) if info.node == node);
            if !on_it {
                continue;
            }
            if placed.supervised {
                // Its supervisor hears of it and decides.
                placed.location.send_replace(Relocation::Restarting);
                continue;
            }
            let options = &placed.request.options;
            let pinned = matches!(
                options.strategy,
                SchedulingStrategy::NodeAffinity { node: n, soft: false } if n == node
            );
            let spent = placed.restarts + 1;
            if pinned || !options.max_restarts.allows(spent) {
                let why = if pinned {
                    format!("its node {node} died, and its hard node affinity allows no other")
                } else {
                    format!("its node {node} died, and it has no restarts left")
                };
                placed.location.send_replace(Relocation::Dead(why));
                dead.push(*key);
                verdicts.push(Verdict::Dead(*key));
                continue;
            }
            placed.restarts = spent;
            placed.location.send_replace(Relocation::Restarting);
            let mut request = placed.request.clone();
            // What is left of its budget goes with it: its new node's
            // supervisor restarts it after panics within that.
            request.options.max_restarts = match options.max_restarts {
                Limit::Finite(max) => Limit::Finite(max.saturating_sub(spent)),
                Limit::Unlimited => Limit::Unlimited,
            };
            if let SchedulingStrategy::NodeAffinity { soft: true, .. } = options.strategy {
                request.options.strategy = SchedulingStrategy::Default;
            }
            verdicts.push(Verdict::Restart(*key, Box::new(request)));
        }
        for key in dead {
            records.remove(&key);
        }
        verdicts
    }

    /// The incarnation `actor` of a placed actor died on its host for good
    /// (its restarts there spent, or stopped): dead, and not restarted
    /// when that host dies later. Supervised children are their
    /// supervisor's to restart.
    pub(crate) fn exited(&self, actor: ActorId, reason: &str) {
        let mut records = self.lock();
        let key = records.iter().find_map(|(key, placed)| {
            let here =
                matches!(&*placed.location.borrow(), Relocation::At(info) if info.id == actor);
            (here && !placed.supervised).then_some(*key)
        });
        if let Some(key) = key {
            if let Some(placed) = records.remove(&key) {
                placed
                    .location
                    .send_replace(Relocation::Dead(format!("it died on its node: {reason}")));
            }
        }
    }

    /// Where `key` lives now if not as `known`, without waiting; `None`
    /// if there, or not tracked.
    pub(crate) fn moved(&self, key: ActorId, known: ActorId) -> Option<Relocation> {
        let records = self.lock();
        let now = records.get(&key)?.location.borrow();
        match &*now {
            Relocation::At(info) if info.id == known => None,
            other => Some(other.clone()),
        }
    }

    /// Where `key` lives now (or that it is restarting); holds the
    /// question up to `HOLD_QUESTION` while it restarts.
    pub(crate) async fn location(&self, key: ActorId) -> Relocation {
        let Some(mut rx) = self.lock().get(&key).map(|p| p.location.subscribe()) else {
            return Relocation::Dead(
                "its owner does not know it: it was stopped, or has no restarts".to_owned(),
            );
        };
        let settled = async {
            loop {
                let now = rx.borrow_and_update().clone();
                if now != Relocation::Restarting {
                    return now;
                }
                if rx.changed().await.is_err() {
                    return Relocation::Dead("its owner forgot it".to_owned());
                }
            }
        };
        tokio::time::timeout(HOLD_QUESTION, settled)
            .await
            .unwrap_or(Relocation::Restarting)
    }

    fn settle(&self, key: ActorId, now: Relocation) {
        let mut records = self.lock();
        let Some(placed) = records.get(&key) else {
            return;
        };
        placed.location.send_replace(now.clone());
        if let Relocation::Dead(_) = now {
            records.remove(&key);
        }
    }
}

impl Runtime {
    /// Where the actor this runtime placed elsewhere as `key` lives now
    /// (what another node's handle asks its owner after the actor's node
    /// died). Waits a little while it is being restarted.
    pub async fn placed_actor_location(&self, key: ActorId) -> Relocation {
        self.inner.placed.location(key).await
    }

    /// Forgets the actor placed elsewhere as `key`: a handle stopped it for
    /// good, so it is not restarted when its node dies.
    pub fn forget_placed_actor(&self, key: ActorId) {
        self.inner.placed.forget(key);
    }

    /// Keeps track of an actor spawned on another node for `request`, if
    /// it may restart; its owner for handles.
    pub(crate) fn track_placed(
        &self,
        info: &ActorInfo,
        request: RemoteSpawn,
    ) -> Option<ActorOwner> {
        if info.node == self.node_id() || request.options.max_restarts == Limit::Finite(0) {
            return None;
        }
        self.inner.placed.track(info.clone(), request);
        Some(ActorOwner {
            owner: self.node_id(),
            actor: info.id,
        })
    }

    /// `node` died: restarts the actors this runtime placed there on other
    /// nodes, within their restarts.
    pub(crate) fn restart_placed(&self, node: NodeId) {
        let verdicts = self.inner.placed.node_died(node);
        if verdicts.is_empty() {
            return;
        }
        for verdict in verdicts {
            let (key, request) = match verdict {
                Verdict::Dead(key) => {
                    tracing::warn!(actor = %key, %node, "actor's node died; not restarted");
                    continue;
                }
                Verdict::Restart(key, request) => (key, *request),
            };
            let rt = self.clone();
            let span = tracing::info_span!("restart_elsewhere", actor = %key, dead_node = %node);
            let restart = async move {
                let now = rt.respawn(request).await;
                match &now {
                    Relocation::At(info) => {
                        metrics::counter!("troupe_actor_relocations_total").increment(1);
                        tracing::info!(actor = %key, new = %info.id, node = %info.node, "actor restarted on another node");
                    }
                    Relocation::Dead(why) => {
                        tracing::warn!(actor = %key, %why, "actor could not be restarted")
                    }
                    Relocation::Restarting => {}
                }
                rt.inner.placed.settle(key, now);
            };
            self.inner
                .handle
                .spawn(tracing::Instrument::instrument(restart, span));
        }
    }

    /// Spawns `request` on some live node, trying again (a node that fits
    /// may join) for `RESTART_WINDOW`.
    async fn respawn(&self, request: RemoteSpawn) -> Relocation {
        let Some(executor) = self.inner.config.cluster.executor.clone() else {
            return Relocation::Dead("this runtime left its cluster".to_owned());
        };
        let deadline = tokio::time::Instant::now() + RESTART_WINDOW;
        let mut pause = Duration::from_millis(100);
        loop {
            match executor.spawn_actor(None, request.clone()).await {
                Ok(info) => return Relocation::At(info),
                Err(err) if tokio::time::Instant::now() + pause >= deadline => {
                    return Relocation::Dead(format!(
                        "its node died and no node took it within {RESTART_WINDOW:?}: {err}"
                    ))
                }
                Err(err) => tracing::debug!(%err, "restart elsewhere: trying again"),
            }
            if self.is_shut_down() {
                return Relocation::Dead("its owner shut down".to_owned());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::ActorOptions;
    use crate::Resources;

    fn info(node: u64, seq: u64) -> ActorInfo {
        ActorInfo {
            id: ActorId {
                node: NodeId(node),
                seq,
            },
            name: None,
            type_name: "T".into(),
            node: NodeId(node),
            resources: Resources::default(),
            gpu_ids: Vec::new(),
        }
    }

    fn request(options: ActorOptions) -> RemoteSpawn {
        RemoteSpawn {
            type_name: "T".into(),
            constructor: "new".into(),
            options,
            args: troupe_objects::Encoded::default(),
            wait_for_room: true,
        }
    }

    #[test]
    fn a_node_death_spends_one_restart_and_passes_on_the_rest() {
        let table = PlacedActors::default();
        table.track(info(2, 1), request(ActorOptions::new().max_restarts(3)));
        table.track(info(3, 1), request(ActorOptions::new().max_restarts(3)));
        let verdicts = table.node_died(NodeId(2));
        assert_eq!(verdicts.len(), 1, "only the actor on the dead node");
        let Verdict::Restart(key, again) = &verdicts[0] else {
            panic!("expected a restart, got {verdicts:?}");
        };
        assert_eq!(key.node, NodeId(2));
        assert_eq!(again.options.max_restarts, Limit::Finite(2));
        // Restarting: a second death report of the same node changes nothing.
        assert!(table.node_died(NodeId(2)).is_empty());
    }

    #[test]
    fn a_supervised_child_is_left_to_its_supervisor_and_followed_across_incarnations() {
        let table = PlacedActors::default();
        let key = info(1, 99).id;
        table.supervise(key, request(ActorOptions::new().max_restarts(5)));
        assert_eq!(table.moved(key, key), Some(Relocation::Restarting));
        let first = info(2, 1);
        table.supervised_at(key, first.clone());
        assert_eq!(table.moved(key, first.id), None, "where the handle knows");
        // Its node dies: no restart here, its supervisor decides.
        assert!(table.node_died(NodeId(2)).is_empty());
        assert_eq!(table.moved(key, first.id), Some(Relocation::Restarting));
        let second = info(3, 1);
        table.supervised_at(key, second.clone());
        // The old incarnation's end, heard late, does not undo the new one.
        table.supervised_gone(key, first.id);
        assert_eq!(
            table.moved(key, first.id),
            Some(Relocation::At(second.clone()))
        );
        table.supervised_gone(key, second.id);
        assert_eq!(table.moved(key, second.id), Some(Relocation::Restarting));
        table.forget(key);
        assert_eq!(table.moved(key, second.id), None, "forgotten");
    }

    #[test]
    fn an_actor_that_died_on_its_host_is_not_restarted_when_the_host_dies() {
        let table = PlacedActors::default();
        let placed = info(2, 1);
        table.track(placed.clone(), request(ActorOptions::new().max_restarts(3)));
        table.exited(placed.id, "panicked");
        assert!(table.node_died(NodeId(2)).is_empty(), "dead already");
        assert_eq!(table.moved(placed.id, placed.id), None, "forgotten");
    }

    #[test]
    fn no_restarts_left_or_pinned_to_the_dead_node_is_dead_for_good() {
        let table = PlacedActors::default();
        table.track(info(2, 1), request(ActorOptions::new().max_restarts(1)));
        let pinned = ActorOptions::new().max_restarts(5).scheduling_strategy(
            SchedulingStrategy::NodeAffinity {
                node: NodeId(2),
                soft: false,
            },
        );
        table.track(info(2, 2), request(pinned));
        let verdicts = table.node_died(NodeId(2));
        let pinned_id = ActorId {
            node: NodeId(2),
            seq: 2,
        };
        assert!(verdicts
            .iter()
            .any(|v| matches!(v, Verdict::Dead(key) if *key == pinned_id)));
        let restarted = ActorId {
            node: NodeId(2),
            seq: 1,
        };
        assert!(matches!(&verdicts[..], [_, _]));
        // The restarted one lands on node 4, which then dies too: its one
        // restart is spent.
        table.settle(restarted, Relocation::At(info(4, 9)));
        assert!(matches!(
            &table.node_died(NodeId(4))[..],
            [Verdict::Dead(key)] if *key == restarted
        ));
    }

    #[tokio::test]
    async fn a_question_waits_for_the_restart_and_unknown_actors_are_dead() {
        let table = std::sync::Arc::new(PlacedActors::default());
        let key = info(2, 1).id;
        table.track(info(2, 1), request(ActorOptions::new().max_restarts(1)));
        assert_eq!(table.location(key).await, Relocation::At(info(2, 1)));
        table.node_died(NodeId(2));
        let asking = tokio::spawn({
            let table = table.clone();
            async move { table.location(key).await }
        });
        tokio::task::yield_now().await;
        table.settle(key, Relocation::At(info(3, 7)));
        assert_eq!(asking.await.ok(), Some(Relocation::At(info(3, 7))));
        table.forget(key);
        assert!(matches!(table.location(key).await, Relocation::Dead(_)));
    }
}
