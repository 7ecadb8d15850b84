//! Placement groups on a runtime: the groups this node created (it places
//! their bundles, and places them again when a bundle's node dies) and the
//! bundles this node holds for groups of any node.
//!
//! Message flow: `placement_group` starts a placer for the group; the placer
//! plans over the nodes' free resources (`placement_group::plan`), asks each
//! chosen node to reserve its bundles (`reserve_bundles`: here directly,
//! elsewhere through the cluster's executor), and on any refusal gives back
//! what that round took and tries again, with backoff, until it fits or the
//! group is removed. A node that holds bundles takes their resources out of
//! its free pool for the group's life and offers them again under the
//! bundles' names; work in a bundle asks for those.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::Runtime;
use crate::error::{SpawnError, TaskError};
use crate::ids::{ActorId, NodeId};
use crate::placement_group::{
    bundle_prefix, in_bundle, plan, GroupShared, NodeRoom, PlacementGroup, PlacementGroupError,
    PlacementGroupId, PlacementGroupOptions, PlacementGroupState, PlacementStrategy,
};
use crate::remote::ClusterEvent;
use crate::scheduler::{Reservation, Units};
use crate::spec::{SchedulingStrategy, TaskSpec};
use crate::Resources;

mod placer;
use placer::place_group;

/// Retries of a group that does not fit: from this, doubling.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// ... up to this.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long removal waits for the placer to give everything back.
const REMOVE_DEADLINE: Duration = Duration::from_secs(10);

/// This runtime's placement groups and bundles.
#[derive(Default)]
pub(crate) struct PlacementGroups {
    owned: Mutex<HashMap<PlacementGroupId, Owned>>,
    hosted: Mutex<HashMap<(PlacementGroupId, usize), Hosted>>,
}

struct Owned {
    shared: Arc<GroupShared>,
    placer: Option<tokio::task::JoinHandle<()>>,
}

/// A bundle this node holds.
struct Hosted {
    /// Its resources, out of the free pool.
    _reservation: Reservation,
    /// What it offers instead, under its own names.
    offered: Units,
    /// Actors living in it (stopped with it).
    actors: Vec<ActorId>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One group's placement, as the placer knows it.
impl Runtime {
    /// Creates a placement group: its bundles are reserved in the
    /// background (wait with [`PlacementGroup::ready`]), on this node alone
    /// or, in a cluster, over its nodes as the strategy says. A group that
    /// does not fit now stays pending until it does.
    pub fn placement_group(
        &self,
        options: PlacementGroupOptions,
    ) -> Result<PlacementGroup, PlacementGroupError> {
        options.validate()?;
        let id = PlacementGroupId {
            node: self.node_id(),
            seq: self.inner.ids.task().seq,
        };
        let (state, _) = watch::channel(PlacementGroupState::Pending {
            why: "not placed yet".to_owned(),
        });
        let shared = Arc::new(GroupShared {
            options,
            state,
            next_bundle: Default::default(),
        });
        let placer = self
            .inner
            .handle
            .spawn(place_group(self.downgrade(), id, shared.clone()));
        lock(&self.inner.groups.owned).insert(
            id,
            Owned {
                shared: shared.clone(),
                placer: Some(placer),
            },
        );
        metrics::counter!("troupe_placement_groups_created_total").increment(1);
        Ok(PlacementGroup { id, shared })
    }

    /// Removes a group: its bundles' resources come back on every node,
    /// and the tasks and actors running in them are cancelled and stopped
    /// (Ray's `remove_placement_group`). Returns once given back (or after
    /// a deadline, if a node does not answer).
    pub async fn remove_placement_group(&self, group: &PlacementGroup) {
        let placer = {
            let mut owned = lock(&self.inner.groups.owned);
            owned.remove(&group.id).and_then(|mut o| o.placer.take())
        };
        group
            .shared
            .state
            .send_replace(PlacementGroupState::Removed);
        if let Some(placer) = placer {
            // The placer sees the removal, gives back what it holds, ends.
            let _ = tokio::time::timeout(REMOVE_DEADLINE, placer).await;
        }
        metrics::counter!("troupe_placement_groups_removed_total").increment(1);
    }

    /// The groups this node created, and where each is (the state API).
    pub fn placement_groups(&self) -> Vec<(PlacementGroupId, Option<String>, PlacementGroupState)> {
        let owned = lock(&self.inner.groups.owned);
        let mut groups: Vec<_> = owned
            .iter()
            .map(|(id, o)| {
                (
                    *id,
                    o.shared.options.name.clone(),
                    o.shared.state.borrow().clone(),
                )
            })
            .collect();
        groups.sort_by_key(|(id, ..)| *id);
        groups
    }

    /// Reserves `bundles` of `group` on this node: all of them or none
    /// (`Err` says why). What another node's placer asks of this one.
    pub fn reserve_bundles(
        &self,
        group: PlacementGroupId,
        bundles: &[(usize, Resources)],
    ) -> Result<(), String> {
        let mut taken = Vec::with_capacity(bundles.len());
        for (index, bundle) in bundles {
            if lock(&self.inner.groups.hosted).contains_key(&(group, *index)) {
                continue; // asked again (a retry): held already
            }
            match self.inner.scheduler.try_reserve(&Units::of(bundle)) {
                Ok(Some(reservation)) => taken.push((*index, bundle, reservation)),
                Ok(None) => {
                    return Err(format!(
                        "node {} has no room for bundle {index} ({bundle:?}) now",
                        self.node_id()
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "node {} can never hold bundle {index} ({bundle:?}): it has {:?} in all",
                        self.node_id(),
                        self.total_resources()
                    ))
                }
            }
        }
        for (index, bundle, reservation) in taken {
            let offered = Units::of(&in_bundle(bundle, group, index));
            self.inner.scheduler.add_capacity(&offered);
            lock(&self.inner.groups.hosted).insert(
                (group, index),
                Hosted {
                    _reservation: reservation,
                    offered,
                    actors: Vec::new(),
                },
            );
            tracing::debug!(%group, bundle = index, "bundle reserved");
        }
        Ok(())
    }

    /// Gives back every bundle of `group` this node holds: what runs in
    /// them is cancelled (tasks) or killed (actors), and their resources
    /// return to the free pool.
    pub fn release_bundles(&self, group: PlacementGroupId) {
        let released: Vec<(usize, Hosted)> = {
            let mut hosted = lock(&self.inner.groups.hosted);
            let keys: Vec<_> = hosted
                .keys()
                .filter(|(g, _)| *g == group)
                .copied()
                .collect();
            keys.into_iter()
                .filter_map(|key| hosted.remove(&key).map(|h| (key.1, h)))
                .collect()
        };
        for (index, bundle) in released {
            for actor in &bundle.actors {
                if let Some(control) = self.inner.actors.get(*actor) {
                    tracing::info!(%actor, %group, bundle = index, "its bundle was removed: killing the actor");
                    tokio::spawn(async move {
                        control
                            .end(crate::actor::StopHow::Kill { no_restart: true })
                            .await;
                    });
                }
            }
            self.inner
                .scheduler
                .remove_capacity(&bundle.offered, &bundle_prefix(group, index));
            tracing::debug!(%group, bundle = index, "bundle released");
            // Dropping the reservation gives its resources back.
        }
    }

    /// The node holding bundle `index` of `group` (created here) now:
    /// `None` while it is being reserved again, or the group is gone.
    pub(crate) fn bundle_node_now(&self, group: PlacementGroupId, index: usize) -> Option<NodeId> {
        let shared = lock(&self.inner.groups.owned).get(&group)?.shared.clone();
        let state = shared.state.borrow();
        match &*state {
            PlacementGroupState::Ready { nodes } => nodes.get(index).copied(),
            _ => None,
        }
    }

    /// The bundles this node holds, by group and index.
    pub fn hosted_bundles(&self) -> Vec<(PlacementGroupId, usize)> {
        let mut held: Vec<_> = lock(&self.inner.groups.hosted).keys().copied().collect();
        held.sort();
        held
    }

    /// Where work asking for `needs` in `bundle` of `group` runs, and what
    /// it asks there; `Ok(None)` while the group is not ready.
    fn bundle_for(
        &self,
        group: PlacementGroupId,
        bundle: Option<usize>,
        needs: &Resources,
        what: &str,
    ) -> Result<Option<(NodeId, Resources, usize)>, PlacementGroupError> {
        let shared = lock(&self.inner.groups.owned)
            .get(&group)
            .map(|o| o.shared.clone())
            .ok_or(if group.node == self.node_id() {
                // Minted here and gone: removed.
                PlacementGroupError::Removed(group)
            } else {
                PlacementGroupError::Unknown(group)
            })?;
        let bundles = &shared.options.bundles;
        let index = match bundle {
            Some(i) if i < bundles.len() => i,
            Some(index) => {
                return Err(PlacementGroupError::NoSuchBundle {
                    id: group,
                    index,
                    count: bundles.len(),
                })
            }
            None => {
                // In turn, over the bundles it fits in.
                let fitting: Vec<usize> = (0..bundles.len())
                    .filter(|i| fits(needs, &bundles[*i]))
                    .collect();
                if fitting.is_empty() {
                    0 // reported as not fitting bundle 0 below
                } else {
                    fitting[shared.next_bundle.fetch_add(1, Ordering::Relaxed) % fitting.len()]
                }
            }
        };
        if !fits(needs, &bundles[index]) || needs.num_gpus > 0.0 {
            return Err(PlacementGroupError::DoesNotFit {
                what: what.to_owned(),
                id: group,
                index,
                needs: Box::new(needs.clone()),
                holds: Box::new(bundles[index].clone()),
            });
        }
        let state = shared.state.borrow().clone();
        match state {
            PlacementGroupState::Ready { nodes } => {
                Ok(Some((nodes[index], in_bundle(needs, group, index), index)))
            }
            PlacementGroupState::Pending { .. } => Ok(None),
            PlacementGroupState::Removed => Err(PlacementGroupError::Removed(group)),
        }
    }

    /// A task in a placement group runs on its bundle's node, out of the
    /// bundle: its options say so from here on. Submitted once the group is
    /// ready (waiting for it first, if need be), or failed.
    pub(crate) fn submit_in_group(
        &self,
        mut spec: TaskSpec,
        body: Arc<dyn crate::function::TaskBody>,
        group: PlacementGroupId,
        bundle: Option<usize>,
    ) {
        let needs = spec.options.needs();
        match self.bundle_for(group, bundle, &needs, &spec.function) {
            Ok(Some((node, renamed, index))) => {
                spec.options = spec
                    .options
                    .into_bundle(group, (bundle, index), node, renamed);
                self.submit_task(spec, body);
            }
            Ok(None) => {
                let rt = self.clone();
                let ready = lock(&self.inner.groups.owned)
                    .get(&group)
                    .map(|o| o.shared.state.subscribe());
                self.inner.handle.spawn(async move {
                    if let Some(mut state) = ready {
                        // Waits as long as the group is pending: as Ray's
                        // tasks in a pending group do (a `get` has its own
                        // deadline; removal ends the wait).
                        let _ = state
                            .wait_for(|s| !matches!(s, PlacementGroupState::Pending { .. }))
                            .await;
                    }
                    rt.submit_task(spec, body);
                });
            }
            Err(cause) => {
                let err = TaskError::PlacementGroup {
                    task: spec.function.clone(),
                    id: spec.id,
                    cause,
                };
                let stats = self.inner.scheduler.stats_of(&spec.function);
                let task = crate::scheduler::Task::new(spec, body, stats);
                self.inner.scheduler.reject(Arc::new(task), err);
            }
        }
    }

    /// An actor's options in a placement group, renamed into its bundle
    /// (waiting for the group to be ready); unchanged outside one.
    pub(crate) async fn actor_in_group(
        &self,
        options: crate::actor::ActorOptions,
        what: &str,
    ) -> Result<crate::actor::ActorOptions, SpawnError> {
        let SchedulingStrategy::PlacementGroup { group, .. } = options.strategy else {
            return Ok(options);
        };
        loop {
            if let Some(placed) = self.actor_in_group_now(&options, what)? {
                return Ok(placed);
            }
            let state = lock(&self.inner.groups.owned)
                .get(&group)
                .map(|o| o.shared.state.subscribe());
            if let Some(mut state) = state {
                let _ = state
                    .wait_for(|s| !matches!(s, PlacementGroupState::Pending { .. }))
                    .await;
            }
        }
    }

    /// [`actor_in_group`](Self::actor_in_group) without waiting: `None`
    /// while the group is pending.
    pub(crate) fn actor_in_group_now(
        &self,
        options: &crate::actor::ActorOptions,
        what: &str,
    ) -> Result<Option<crate::actor::ActorOptions>, SpawnError> {
        let SchedulingStrategy::PlacementGroup { group, bundle } = options.strategy else {
            return Ok(Some(options.clone()));
        };
        match self.bundle_for(group, bundle, &options.resources, what) {
            Ok(Some((node, renamed, _))) => {
                let mut placed = options.clone();
                placed.resources = renamed;
                placed.strategy = SchedulingStrategy::NodeAffinity { node, soft: false };
                Ok(Some(placed))
            }
            Ok(None) => Ok(None),
            Err(err) => Err(SpawnError::PlacementGroup(err)),
        }
    }

    /// Options for an actor spawned in this process, in a placement group:
    /// its bundle must be on this node (elsewhere, `spawn_remote` places
    /// it there).
    pub(crate) async fn local_actor_in_group(
        &self,
        options: crate::actor::ActorOptions,
        what: &str,
    ) -> Result<crate::actor::ActorOptions, SpawnError> {
        let placed = self.actor_in_group(options, what).await?;
        self.here_or_refuse(placed)
    }

    /// Why a supervised child in a pending group cannot start now.
    pub(crate) fn group_not_ready(options: &crate::actor::ActorOptions) -> SpawnError {
        let id = match options.strategy {
            SchedulingStrategy::PlacementGroup { group, .. } => group,
            _ => PlacementGroupId {
                node: NodeId(0),
                seq: 0,
            },
        };
        SpawnError::PlacementGroup(PlacementGroupError::NotReady {
            id,
            waited: Duration::ZERO,
            why: "a supervised child takes its resources when its tree is built: wait for the group's ready() first".to_owned(),
        })
    }

    pub(crate) fn here_or_refuse(
        &self,
        placed: crate::actor::ActorOptions,
    ) -> Result<crate::actor::ActorOptions, SpawnError> {
        match placed.strategy {
            SchedulingStrategy::NodeAffinity { node, soft: false }
                if node != self.node_id()
                    && placed.resources.custom.keys().any(|k| parse_key(k).is_some()) =>
            {
                Err(SpawnError::Remote {
                    node: Some(node),
                    reason: "its placement group bundle is on that node: spawn it there with spawn_remote (A::remote)".to_owned(),
                })
            }
            _ => Ok(placed),
        }
    }

    /// An actor spawned here with a bundle's resources lives in it: it is
    /// killed when the bundle is released.
    pub(crate) fn adopt_into_bundle(&self, resources: &Resources, actor: ActorId) {
        let Some(key) = resources.custom.keys().find_map(|k| parse_key(k)) else {
            return;
        };
        if let Some(hosted) = lock(&self.inner.groups.hosted).get_mut(&key) {
            hosted.actors.push(actor);
        }
    }

    /// A node went down: bundles held for groups of that node are given
    /// back (their creator is gone); this node's groups with bundles there
    /// are placed again (their placers hear it too).
    pub(crate) fn groups_node_down(&self, node: NodeId) {
        let orphaned: Vec<PlacementGroupId> = lock(&self.inner.groups.hosted)
            .keys()
            .filter(|(g, _)| g.node == node)
            .map(|(g, _)| *g)
            .collect();
        for group in orphaned {
            tracing::info!(%group, "its creator is gone: releasing its bundles");
            self.release_bundles(group);
        }
    }

    /// The nodes a group may go to, with their free resources.
    fn node_rooms(&self) -> Vec<NodeRoom> {
        let cluster = self
            .inner
            .config
            .cluster
            .placement
            .as_ref()
            .and_then(|p| p.nodes());
        match cluster {
            Some(mut nodes) => {
                // This node's own view is exact, not a heartbeat old.
                let me = self.node_id();
                for n in nodes.iter_mut().filter(|n| n.node == me) {
                    n.free = self.available_resources();
                }
                nodes
            }
            None => vec![NodeRoom {
                node: self.node_id(),
                free: self.available_resources(),
            }],
        }
    }

    /// Reserves `bundles` of `group` on `node`, here or through the cluster.
    async fn reserve_on(
        &self,
        node: NodeId,
        group: PlacementGroupId,
        bundles: Vec<(usize, Resources)>,
    ) -> Result<(), String> {
        if node == self.node_id() {
            return self.reserve_bundles(group, &bundles);
        }
        match self.inner.config.cluster.executor.clone() {
            Some(executor) => executor.reserve_bundles(node, group, bundles).await,
            None => Err(format!("node {node} cannot be reached: not in a cluster")),
        }
    }

    async fn release_on(&self, node: NodeId, group: PlacementGroupId) {
        if node == self.node_id() {
            self.release_bundles(group);
        } else if let Some(executor) = self.inner.config.cluster.executor.clone() {
            executor.release_bundles(node, group).await;
        }
    }
}

/// Whether `needs` fits in a bundle holding `holds`.
fn fits(needs: &Resources, holds: &Resources) -> bool {
    const EPS: f64 = 1e-9;
    needs.num_cpus <= holds.num_cpus + EPS
        && needs.memory <= holds.memory
        && needs
            .custom
            .iter()
            .all(|(k, v)| *v <= holds.custom.get(k).copied().unwrap_or(0.0) + EPS)
}

/// The group and bundle a bundle resource name belongs to.
fn parse_key(key: &str) -> Option<(PlacementGroupId, usize)> {
    let rest = key.strip_prefix(crate::placement_group::KEY_PREFIX)?;
    let mut parts = rest.split('/');
    let group = parts.next()?.strip_prefix("pg-")?;
    let (node, seq) = group.rsplit_once('-')?;
    let index = parts.next()?.parse().ok()?;
    let node = u64::from_str_radix(node, 16).ok()?;
    Some((
        PlacementGroupId {
            node: NodeId(node),
            seq: seq.parse().ok()?,
        },
        index,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_resource_names_give_back_their_group_and_index() {
        let group = PlacementGroupId {
            node: NodeId(0xabc),
            seq: 42,
        };
        let renamed = in_bundle(&Resources::cpus(1.0), group, 3);
        let key = renamed.custom.keys().next().unwrap();
        assert_eq!(parse_key(key), Some((group, 3)));
        assert_eq!(parse_key("pg/garbage"), None);
        assert_eq!(parse_key("gpu"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ready_group_is_left_alone_until_something_changes() {
        let rt =
            crate::runtime::init(crate::runtime::Config::default().resources(Resources::cpus(2.0)))
                .await
                .expect("a runtime");
        let group = rt
            .placement_group(crate::placement_group::PlacementGroupOptions::new(vec![
                Resources::cpus(1.0),
            ]))
            .expect("a group");
        group
            .ready(std::time::Duration::from_secs(10))
            .await
            .expect("ready");
        // Its placer once sent Ready over and over, waking itself each
        // time: a core spent for as long as the group lived.
        let mut state = group.shared.state.subscribe();
        state.borrow_and_update();
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(200), state.changed()).await;
        assert!(quiet.is_err(), "the state of a ready group keeps changing");
        rt.remove_placement_group(&group).await;
        rt.shutdown().await.expect("shuts down");
    }
}
