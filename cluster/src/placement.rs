//! Where a task this node does not run goes: a pure function of the
//! member view (the head's last directory, adjusted by this node's own
//! recent choices) and the request, so every rule is unit-tested.
//!
//! Rules, after Ray's hybrid policy: hard affinity goes to its node or
//! nowhere (it waits while that node is unknown, fails once it is dead);
//! soft affinity to its node when that node fits, else as the default;
//! spread round-robins over the live nodes that could run it; the default
//! prefers nodes whose free resources fit now, the least loaded first, and
//! otherwise any node whose total fits (it queues there). No node fits:
//! wait, until a node that fits joins.
//!
//! A node's free resources and load come from its last heartbeat (up to
//! 200 ms old), and a burst of tasks is placed in microseconds: alone, it
//! would all go to the node that looked freest. So the placer counts what
//! this node sent to each node and has not heard back from ([`Sent`]),
//! and sees a node as that much less free, and that much more loaded.

use std::sync::atomic::{AtomicUsize, Ordering};

use troupe_core::remote::{PlacementDecision, PlacementRequest};
use troupe_core::{NodeId, Resources, SchedulingStrategy};

use crate::protocol::{Member, MemberState, Role};

/// Whether `need` fits in `have`.
pub fn fits(need: &Resources, have: &Resources) -> bool {
    const EPS: f64 = 1e-9;
    need.num_cpus <= have.num_cpus + EPS
        && need.num_gpus <= have.num_gpus + EPS
        && need.memory
            <= have
                .memory
                .max(if need.memory == 0 { 0 } else { have.memory })
        && need
            .custom
            .iter()
            .all(|(k, v)| *v <= have.custom.get(k).copied().unwrap_or(0.0) + EPS)
}

/// What `m` has free now as this node sees it: what it reported, and no
/// more than its total less `sent` (what this node sent it since).
fn free_now(m: &Member, sent: Sent) -> Resources {
    let mut free = m.available.clone();
    free.num_cpus = free.num_cpus.min(m.hello.resources.num_cpus - sent.cpus);
    free.num_gpus = free.num_gpus.min(m.hello.resources.num_gpus - sent.gpus);
    free
}

/// `needs` less the resources of placement group bundles.
fn without_bundles(needs: &Resources) -> std::borrow::Cow<'_, Resources> {
    use troupe_core::placement_group::is_bundle_resource;
    if needs.custom.keys().any(|k| is_bundle_resource(k)) {
        let mut rest = needs.clone();
        rest.custom.retain(|k, _| !is_bundle_resource(k));
        std::borrow::Cow::Owned(rest)
    } else {
        std::borrow::Cow::Borrowed(needs)
    }
}

/// The placement rules over a member view.
#[derive(Default)]
pub struct Placer {
    spread_next: AtomicUsize,
    /// What this node sent to each node and has not heard back from.
    sent: std::sync::Mutex<std::collections::HashMap<NodeId, Sent>>,
}

/// Tasks this node sent to one node and has not heard back from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sent {
    /// How many.
    pub tasks: u64,
    /// The CPUs they hold there.
    pub cpus: f64,
    /// The GPUs they hold there.
    pub gpus: f64,
}

impl Placer {
    /// Decides for `request`, made on node `me`, given `members`, of which
    /// only those `can_run` says yes to can be sent work (reachable,
    /// running this program, not refused before: a predicate, not a
    /// filtered copy, as this runs once per task that leaves the node).
    pub fn place(
        &self,
        me: NodeId,
        members: &[Member],
        can_run: &dyn Fn(&Member) -> bool,
        request: &PlacementRequest<'_>,
    ) -> PlacementDecision {
        let sent = self.lock().clone();
        let sent_to = |node: NodeId| sent.get(&node).copied().unwrap_or_default();
        let free_now = |m: &Member| free_now(m, sent_to(m.hello.node));
        let load = |m: &Member| m.load.tasks_queued + sent_to(m.hello.node).tasks;
        let needs = request.needs;
        // A node's totals never list bundles' resources (they come and go
        // with placement groups): what it is asked to hold in all is the
        // rest, and the bundle's node checks the bundle.
        let in_all = without_bundles(needs);
        let runnable = |m: &&Member| {
            m.state == MemberState::Alive
                && m.hello.role != Role::Client
                && fits(&in_all, &m.hello.resources)
                && can_run(m)
        };
        match request.spec.options.get_scheduling_strategy() {
            SchedulingStrategy::NodeAffinity { node, soft } => {
                let target = members.iter().find(|m| m.hello.node == *node);
                match target {
                    Some(m) if runnable(&m) => return here_or(me, m.hello.node),
                    Some(m)
                        if !soft && matches!(m.state, MemberState::Dead | MemberState::Left) =>
                    {
                        return PlacementDecision::NodeGone(*node)
                    }
                    None if !soft => return PlacementDecision::Wait,
                    _ if !soft => return PlacementDecision::Wait,
                    _ => {}
                }
            }
            SchedulingStrategy::Spread => {
                let nodes: Vec<&Member> = members.iter().filter(runnable).collect();
                if nodes.is_empty() {
                    return if request.feasible_here {
                        PlacementDecision::Here
                    } else {
                        PlacementDecision::Wait
                    };
                }
                let i = self.spread_next.fetch_add(1, Ordering::Relaxed) % nodes.len();
                return here_or(me, nodes[i].hello.node);
            }
            _ => {}
        }
        // Where the node it waited on saw room (spillback), while live.
        if let Some(preferred) = request.preferred {
            if members
                .iter()
                .any(|m| m.hello.node == preferred && runnable(&m))
            {
                return here_or(me, preferred);
            }
        }
        if request.fits_now {
            return PlacementDecision::Here;
        }
        // Free now, least loaded first (ties: the lowest id, deterministic).
        let free = members
            .iter()
            .filter(runnable)
            .filter(|m| m.hello.node != me && fits(needs, &free_now(m)))
            .min_by_key(|m| (load(m), m.hello.node));
        if let Some(m) = free {
            return PlacementDecision::Node(m.hello.node);
        }
        if request.feasible_here {
            return PlacementDecision::Here;
        }
        let any = members
            .iter()
            .filter(runnable)
            .filter(|m| m.hello.node != me)
            .min_by_key(|m| (load(m), m.hello.node));
        match any {
            Some(m) => PlacementDecision::Node(m.hello.node),
            None => PlacementDecision::Wait,
        }
    }
}

impl Placer {
    /// For a task that has waited on node `me` for resources: another
    /// live node, of those `can_run` says yes to, whose free resources fit
    /// it now (as last heard, less what this node sent it since and what
    /// `promised` spills to it), the least loaded first; `None` if no node
    /// has room (it keeps waiting).
    pub fn spill_to(
        &self,
        me: NodeId,
        members: &[Member],
        can_run: &dyn Fn(&Member) -> bool,
        request: &PlacementRequest<'_>,
        promised: &[(NodeId, Resources)],
    ) -> Option<NodeId> {
        let sent = self.lock().clone();
        let sent_to = |node: NodeId| sent.get(&node).copied().unwrap_or_default();
        members
            .iter()
            .filter(|m| {
                let mut free = free_now(m, sent_to(m.hello.node));
                for (_, needs) in promised.iter().filter(|(n, _)| *n == m.hello.node) {
                    free.num_cpus -= needs.num_cpus;
                    free.num_gpus -= needs.num_gpus;
                }
                m.hello.node != me
                    && m.state == MemberState::Alive
                    && m.hello.role != Role::Client
                    && fits(request.needs, &free)
                    && can_run(m)
            })
            .min_by_key(|m| {
                (
                    m.load.tasks_queued + sent_to(m.hello.node).tasks,
                    m.hello.node,
                )
            })
            .map(|m| m.hello.node)
    }
}

/// Where a new actor needing `needs` goes: its `preferred` node (a soft
/// affinity) when that is live and fits now, else a live node whose free
/// resources fit now (this one first, then the least loaded), else one
/// whose total fits; `None` if no node can ever hold it. Free now is what
/// the node reported, and no more than its total less what this node
/// `sent` it since (spawns its heartbeats may not show yet: two spawns
/// in a row do not both go to a node with room for one).
pub fn place_actor(
    me: NodeId,
    members: &[Member],
    needs: &Resources,
    preferred: Option<NodeId>,
    sent: &dyn Fn(NodeId) -> Sent,
) -> Option<NodeId> {
    let runnable = || {
        members.iter().filter(|m| {
            m.state == MemberState::Alive
                && m.hello.role != Role::Client
                && fits(needs, &m.hello.resources)
        })
    };
    let free_now = |m: &&Member| fits(needs, &free_now(m, sent(m.hello.node)));
    for first in preferred.into_iter().chain([me]) {
        if let Some(m) = runnable().find(|m| m.hello.node == first && free_now(m)) {
            return Some(m.hello.node);
        }
    }
    runnable()
        .filter(free_now)
        .min_by_key(|m| (m.load.actors, m.load.tasks_queued, m.hello.node))
        .or_else(|| runnable().min_by_key(|m| (m.load.actors, m.hello.node)))
        .map(|m| m.hello.node)
}

impl Placer {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<NodeId, Sent>> {
        // One map update per critical section: a panic cannot leave it
        // half-done.
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task needing `needs` was sent to `node`.
    pub fn sent(&self, node: NodeId, needs: &Resources) {
        let mut sent = self.lock();
        let s = sent.entry(node).or_default();
        s.tasks += 1;
        s.cpus += needs.num_cpus;
        s.gpus += needs.num_gpus;
    }

    /// `node` answered for a task needing `needs` (or died).
    pub fn answered(&self, node: NodeId, needs: &Resources) {
        let mut sent = self.lock();
        if let Some(s) = sent.get_mut(&node) {
            s.tasks = s.tasks.saturating_sub(1);
            s.cpus = (s.cpus - needs.num_cpus).max(0.0);
            s.gpus = (s.gpus - needs.num_gpus).max(0.0);
            if s.tasks == 0 {
                sent.remove(&node);
            }
        }
    }

    /// What this node sent to `node` and has not heard back from.
    pub fn outstanding(&self, node: NodeId) -> Sent {
        self.lock().get(&node).copied().unwrap_or_default()
    }
}

fn here_or(me: NodeId, node: NodeId) -> PlacementDecision {
    if node == me {
        PlacementDecision::Here
    } else {
        PlacementDecision::Node(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Hello, Load, PROTOCOL_VERSION};
    use troupe_core::task::{TaskOptions, TaskSpec};

    fn member(node: u64, total: Resources, free: Resources, queued: u64) -> Member {
        Member {
            hello: Hello {
                protocol: PROTOCOL_VERSION,
                build_id: 1,
                node: NodeId(node),
                name: format!("n{node}"),
                role: Role::Worker,
                control_addr: String::new(),
                data_addr: "127.0.0.1:1".parse().unwrap(),
                resources: total,
                pid: 0,
                metrics: None,
            },
            state: MemberState::Alive,
            available: free,
            load: Load {
                tasks_queued: queued,
                ..Load::default()
            },
        }
    }

    /// A task of node 1 with `options`.
    fn spec_of(options: TaskOptions) -> TaskSpec {
        let id = troupe_core::TaskId {
            node: NodeId(1),
            seq: 1,
        };
        TaskSpec {
            id,
            trace: troupe_core::task::TraceContext {
                root: id,
                parent: None,
            },
            function: "f".into(),
            args: troupe_core::task::TaskArgs::Encoded(troupe_core::Encoded::default()),
            deps: Vec::new(),
            options,
            owner: NodeId(1),
            attempt: 1,
            results: Vec::new(),
            returns: troupe_core::task::Returns::One,
        }
    }

    fn decide(
        placer: &Placer,
        members: &[Member],
        options: TaskOptions,
        feasible_here: bool,
        fits_now: bool,
    ) -> PlacementDecision {
        decide_reaching(placer, members, &|_| true, options, feasible_here, fits_now)
    }

    fn decide_reaching(
        placer: &Placer,
        members: &[Member],
        can_run: &dyn Fn(&Member) -> bool,
        options: TaskOptions,
        feasible_here: bool,
        fits_now: bool,
    ) -> PlacementDecision {
        let spec = spec_of(options.clone());
        let needs = options.needs();
        placer.place(
            NodeId(1),
            members,
            can_run,
            &PlacementRequest {
                spec: &spec,
                needs: &needs,
                feasible_here,
                fits_now,
                excluded: &[],
                preferred: None,
            },
        )
    }

    #[test]
    fn a_task_that_waited_goes_where_its_node_saw_room_while_that_node_lives() {
        let c = Resources::cpus(2.0);
        let members = vec![
            // The owner, busy.
            member(1, c.clone(), Resources::default(), 0),
            // Where it waited: CPUs held (by actors, say).
            member(2, c.clone(), Resources::default(), 0),
            member(3, c.clone(), c.clone(), 4),
            member(4, c.clone(), c.clone(), 0),
        ];
        let spec = spec_of(TaskOptions::default());
        let needs = Resources::cpus(1.0);
        let request = |preferred| PlacementRequest {
            spec: &spec,
            needs: &needs,
            feasible_here: true,
            fits_now: false,
            excluded: &[],
            preferred,
        };
        let p = Placer::default();
        let all = |_: &Member| true;
        // Node 2 asks where it may go: the least loaded node with room,
        // never itself, never one it cannot send to.
        assert_eq!(
            p.spill_to(NodeId(2), &members, &all, &request(None), &[]),
            Some(NodeId(4))
        );
        let not_4 = |m: &Member| m.hello.node != NodeId(4);
        assert_eq!(
            p.spill_to(NodeId(2), &members, &not_4, &request(None), &[]),
            Some(NodeId(3))
        );
        // No room elsewhere: it keeps waiting.
        assert_eq!(
            p.spill_to(NodeId(2), &members[..2], &all, &request(None), &[]),
            None
        );
        // The owner sends it where node 2 saw room, over the least loaded...
        assert_eq!(
            p.place(NodeId(1), &members, &all, &request(Some(NodeId(3)))),
            PlacementDecision::Node(NodeId(3))
        );
        // ...unless that node died meanwhile: the usual rules.
        let mut gone = members.clone();
        gone[2].state = MemberState::Dead;
        assert_eq!(
            p.place(NodeId(1), &gone, &all, &request(Some(NodeId(3)))),
            PlacementDecision::Node(NodeId(4))
        );
        // Node 4 has room for two: a check spills two there, the third
        // to node 3, and then none.
        let one = Resources::cpus(1.0);
        let mut promised = Vec::new();
        for want in [Some(4), Some(4), Some(3), Some(3), None] {
            let to = p.spill_to(NodeId(2), &members, &all, &request(None), &promised);
            assert_eq!(to, want.map(NodeId), "after {promised:?}");
            promised.extend(to.map(|n| (n, one.clone())));
        }
        // What this node sent a node since its heartbeat counts against its
        // room.
        p.sent(NodeId(4), &c);
        assert_eq!(
            p.spill_to(NodeId(2), &members, &all, &request(None), &[]),
            Some(NodeId(3))
        );
    }

    #[test]
    fn a_task_goes_to_a_node_with_free_room_least_loaded_first() {
        let c = Resources::cpus(2.0);
        let members = vec![
            member(1, c.clone(), Resources::default(), 9),
            member(2, c.clone(), c.clone(), 5),
            member(3, c.clone(), c.clone(), 1),
            member(4, c.clone(), Resources::default(), 0),
        ];
        let p = Placer::default();
        assert_eq!(
            decide(&p, &members, TaskOptions::default(), true, false),
            PlacementDecision::Node(NodeId(3))
        );
        // It fits here now: here.
        assert_eq!(
            decide(&p, &members, TaskOptions::default(), true, true),
            PlacementDecision::Here
        );
        // A node with no session (or link) up, or another build, is never
        // sent work.
        let not_3 = |m: &Member| m.hello.node != NodeId(3);
        assert_eq!(
            decide_reaching(&p, &members, &not_3, TaskOptions::default(), true, false),
            PlacementDecision::Node(NodeId(2))
        );
    }

    #[test]
    fn a_burst_spreads_by_what_this_node_sent_not_only_by_stale_heartbeats() {
        let c = Resources::cpus(2.0);
        // Both reported all free: the heartbeat is older than the burst.
        let members = vec![
            member(1, Resources::default(), Resources::default(), 0),
            member(2, c.clone(), c.clone(), 0),
            member(3, c.clone(), c.clone(), 0),
        ];
        let p = Placer::default();
        let mut picks = Vec::new();
        for _ in 0..8 {
            let decision = decide(&p, &members, TaskOptions::default(), false, false);
            if let PlacementDecision::Node(node) = decision {
                p.sent(node, &Resources::cpus(1.0));
                picks.push(node.0);
            }
        }
        // The least loaded in turn, counting what this node sent.
        assert_eq!(picks, vec![2, 3, 2, 3, 2, 3, 2, 3]);
        assert_eq!(p.outstanding(NodeId(2)).tasks, 4);
        p.answered(NodeId(2), &Resources::cpus(1.0));
        assert_eq!(p.outstanding(NodeId(2)).tasks, 3);
    }

    #[test]
    fn a_custom_resource_nobody_has_waits_and_a_busy_cluster_queues_where_it_fits() {
        let c = Resources::cpus(2.0);
        let members = vec![
            member(1, c.clone(), c.clone(), 0),
            member(2, c.with("gpu-ish", 1.0), Resources::default(), 3),
        ];
        let p = Placer::default();
        let special = TaskOptions::default().resource("special", 1.0);
        assert_eq!(
            decide(&p, &members, special, false, false),
            PlacementDecision::Wait
        );
        let gpuish = TaskOptions::default().resource("gpu-ish", 1.0);
        assert_eq!(
            decide(&p, &members, gpuish, false, false),
            PlacementDecision::Node(NodeId(2))
        );
    }

    #[test]
    fn spread_visits_every_node_and_skips_dead_ones() {
        let c = Resources::cpus(1.0);
        let mut members = vec![
            member(1, c.clone(), c.clone(), 0),
            member(2, c.clone(), c.clone(), 0),
            member(3, c.clone(), c.clone(), 0),
        ];
        members[2].state = MemberState::Dead;
        let p = Placer::default();
        let spread = TaskOptions::default().scheduling_strategy(SchedulingStrategy::Spread);
        let picks: Vec<_> = (0..4)
            .map(|_| decide(&p, &members, spread.clone(), true, true))
            .collect();
        assert_eq!(
            picks,
            vec![
                PlacementDecision::Here,
                PlacementDecision::Node(NodeId(2)),
                PlacementDecision::Here,
                PlacementDecision::Node(NodeId(2)),
            ]
        );
    }

    #[test]
    fn an_actor_goes_here_when_it_fits_else_to_the_least_busy_node_that_does() {
        let c = Resources::cpus(1.0);
        let mut members = vec![
            member(1, c.clone(), c.clone(), 0),
            member(2, c.clone(), c.clone(), 0),
            member(
                3,
                c.clone().with("gpu-ish", 1.0),
                c.clone().with("gpu-ish", 1.0),
                0,
            ),
        ];
        members[1].load.actors = 5;
        assert_eq!(
            place_actor(NodeId(1), &members, &c, None, &none_sent),
            Some(NodeId(1))
        );
        let gpuish = Resources::default().with("gpu-ish", 1.0);
        assert_eq!(
            place_actor(NodeId(1), &members, &gpuish, None, &none_sent),
            Some(NodeId(3))
        );
        members[0].available = Resources::default();
        assert_eq!(
            place_actor(NodeId(1), &members, &c, None, &none_sent),
            Some(NodeId(3)),
            "fewest actors"
        );
        assert_eq!(
            place_actor(NodeId(1), &members, &Resources::cpus(9.0), None, &none_sent),
            None
        );
        // A soft affinity goes first while its node is live and fits.
        assert_eq!(
            place_actor(NodeId(1), &members, &c, Some(NodeId(2)), &none_sent),
            Some(NodeId(2))
        );
        members[1].state = MemberState::Dead;
        assert_eq!(
            place_actor(NodeId(1), &members, &c, Some(NodeId(2)), &none_sent),
            Some(NodeId(3)),
            "its node is dead: anywhere that fits"
        );
    }

    fn none_sent(_: NodeId) -> Sent {
        Sent::default()
    }

    /// Two spawns in a row, each needing the one free CPU of either of two
    /// nodes whose heartbeats still show both free: the second goes to the
    /// other node, not to queue behind the first.
    #[test]
    fn an_actor_spawned_just_now_counts_against_its_node() {
        let c = Resources::cpus(1.0);
        let members = vec![
            member(2, c.clone(), c.clone(), 0),
            member(3, c.clone(), c.clone(), 0),
        ];
        let placer = Placer::default();
        let first =
            place_actor(NodeId(1), &members, &c, None, &|n| placer.outstanding(n)).expect("a node");
        placer.sent(first, &c);
        let second =
            place_actor(NodeId(1), &members, &c, None, &|n| placer.outstanding(n)).expect("a node");
        assert_ne!(first, second, "both spawns went to {first}");
        // With both counted, the next waits on the one with fewest actors
        // (its total fits), as before.
        placer.sent(second, &c);
        assert!(place_actor(NodeId(1), &members, &c, None, &|n| placer.outstanding(n)).is_some());
        placer.answered(first, &c);
        assert_eq!(
            place_actor(NodeId(1), &members, &c, None, &|n| placer.outstanding(n)),
            Some(first)
        );
    }

    #[test]
    fn hard_affinity_waits_for_its_node_and_fails_once_it_is_dead() {
        let c = Resources::cpus(1.0);
        let mut members = vec![
            member(1, c.clone(), c.clone(), 0),
            member(2, c.clone(), c.clone(), 0),
        ];
        let p = Placer::default();
        let to = |node, soft| {
            TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity {
                node: NodeId(node),
                soft,
            })
        };
        assert_eq!(
            decide(&p, &members, to(2, false), true, true),
            PlacementDecision::Node(NodeId(2))
        );
        assert_eq!(
            decide(&p, &members, to(9, false), true, true),
            PlacementDecision::Wait
        );
        assert_eq!(
            decide(&p, &members, to(9, true), true, true),
            PlacementDecision::Here
        );
        members[1].state = MemberState::Dead;
        assert_eq!(
            decide(&p, &members, to(2, false), true, true),
            PlacementDecision::NodeGone(NodeId(2))
        );
        assert_eq!(
            decide(&p, &members, to(2, true), true, true),
            PlacementDecision::Here
        );
    }
}
