//! What the controller does next for one deployment, decided from a
//! snapshot of its replicas alone: the state decides, the controller acts
//! (one action per step, then a new snapshot).
//!
//! The rules, in order:
//! 1. a replica dead for good is removed (a new one replaces it below);
//! 2. an unhealthy replica is restarted;
//! 3. a drained replica (no requests left, or its drain time is up) is
//!    stopped;
//! 4. while fewer replicas than the target run the current version, one
//!    is started, as long as at most one replica runs beyond the target
//!    (the surge of a rolling update);
//! 5. while more replicas than the target take requests, one is drained:
//!    an old version first, then the newest.
//!
//! A rolling update of n replicas thus starts one new replica, drains an
//! old one, and so on: at least n replicas take requests throughout, and
//! no replica stops with a request in flight.

/// One replica, as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplicaView {
    pub(crate) index: u64,
    /// It runs the deployment's current version.
    pub(crate) current: bool,
    pub(crate) draining: bool,
    /// Draining and done: no request left, or its drain time is up.
    pub(crate) drained: bool,
    pub(crate) unhealthy: bool,
    /// Dead for good (its restarts are spent).
    pub(crate) dead: bool,
}

/// The next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Action {
    /// Take the replica out of routing and forget it (it is dead).
    Remove(u64),
    /// Restart the replica in place (its health check failed).
    Restart(u64),
    /// Stop the replica (it is drained).
    Stop(u64),
    /// Start a replica of the current version.
    Start,
    /// Stop routing requests to the replica and wait for its requests.
    Drain(u64),
    /// Nothing to do now.
    Idle,
}

/// The next step towards `target` replicas of the current version.
pub(crate) fn plan(target: usize, replicas: &[ReplicaView]) -> Action {
    if let Some(r) = replicas.iter().find(|r| r.dead) {
        return Action::Remove(r.index);
    }
    if let Some(r) = replicas.iter().find(|r| r.unhealthy && !r.draining) {
        return Action::Restart(r.index);
    }
    if let Some(r) = replicas.iter().find(|r| r.draining && r.drained) {
        return Action::Stop(r.index);
    }
    let active: Vec<&ReplicaView> = replicas.iter().filter(|r| !r.draining).collect();
    let current = active.iter().filter(|r| r.current).count();
    if current < target && active.len() <= target {
        return Action::Start;
    }
    if active.len() > target {
        let victim = active
            .iter()
            .filter(|r| !r.current)
            .min_by_key(|r| r.index)
            .or_else(|| active.iter().max_by_key(|r| r.index));
        if let Some(r) = victim {
            return Action::Drain(r.index);
        }
    }
    Action::Idle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(index: u64, current: bool) -> ReplicaView {
        ReplicaView {
            index,
            current,
            draining: false,
            drained: false,
            unhealthy: false,
            dead: false,
        }
    }

    /// Applies actions as the controller would, with drains finishing at
    /// once, and returns the actions taken until idle.
    fn run(target: usize, mut replicas: Vec<ReplicaView>) -> (Vec<Action>, Vec<ReplicaView>) {
        let mut actions = Vec::new();
        let mut next = replicas.iter().map(|r| r.index).max().map_or(0, |i| i + 1);
        loop {
            let action = plan(target, &replicas);
            actions.push(action);
            // Never fewer than min(target, what was there) taking requests.
            match action {
                Action::Idle => return (actions, replicas),
                Action::Start => {
                    replicas.push(replica(next, true));
                    next += 1;
                }
                Action::Drain(i) => {
                    let r = replicas.iter_mut().find(|r| r.index == i).unwrap();
                    r.draining = true;
                    r.drained = true;
                }
                Action::Stop(i) | Action::Remove(i) => replicas.retain(|r| r.index != i),
                Action::Restart(i) => {
                    replicas
                        .iter_mut()
                        .find(|r| r.index == i)
                        .unwrap()
                        .unhealthy = false
                }
            }
            assert!(actions.len() < 100, "no convergence: {actions:?}");
        }
    }

    #[test]
    fn starts_up_to_the_target() {
        let (actions, replicas) = run(3, vec![]);
        assert_eq!(
            actions,
            [Action::Start, Action::Start, Action::Start, Action::Idle]
        );
        assert_eq!(replicas.len(), 3);
    }

    #[test]
    fn a_rolling_update_starts_one_then_drains_one() {
        let old = vec![replica(0, false), replica(1, false)];
        let (actions, replicas) = run(2, old);
        assert_eq!(
            actions,
            [
                Action::Start,
                Action::Drain(0),
                Action::Stop(0),
                Action::Start,
                Action::Drain(1),
                Action::Stop(1),
                Action::Idle
            ]
        );
        assert!(replicas.iter().all(|r| r.current && !r.draining));
    }

    #[test]
    fn the_update_keeps_the_target_taking_requests() {
        let old: Vec<_> = (0..4).map(|i| replica(i, false)).collect();
        let mut replicas = old;
        let mut next = 4;
        loop {
            let active = replicas.iter().filter(|r| !r.draining).count();
            assert!((4..=5).contains(&active), "{active} active: {replicas:?}");
            match plan(4, &replicas) {
                Action::Idle => break,
                Action::Start => {
                    replicas.push(replica(next, true));
                    next += 1;
                }
                Action::Drain(i) => {
                    let r = replicas.iter_mut().find(|r| r.index == i).unwrap();
                    r.draining = true;
                    r.drained = true;
                }
                Action::Stop(i) => replicas.retain(|r| r.index != i),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(replicas.len(), 4);
    }

    #[test]
    fn scaling_down_drains_the_newest_and_waits_for_it() {
        let mut replicas: Vec<_> = (0..3).map(|i| replica(i, true)).collect();
        assert_eq!(plan(1, &replicas), Action::Drain(2));
        replicas[2].draining = true;
        // Still draining: nothing else to stop yet, but one more to drain.
        assert_eq!(plan(1, &replicas), Action::Drain(1));
        replicas[1].draining = true;
        assert_eq!(plan(1, &replicas), Action::Idle);
        replicas[1].drained = true;
        assert_eq!(plan(1, &replicas), Action::Stop(1));
    }

    #[test]
    fn health_and_death_come_first() {
        let mut replicas = vec![replica(0, true), replica(1, true)];
        replicas[1].unhealthy = true;
        assert_eq!(plan(2, &replicas), Action::Restart(1));
        replicas[0].dead = true;
        assert_eq!(plan(2, &replicas), Action::Remove(0));
    }

    #[test]
    fn scales_to_zero() {
        let (actions, replicas) = run(0, vec![replica(0, true)]);
        assert_eq!(actions, [Action::Drain(0), Action::Stop(0), Action::Idle]);
        assert!(replicas.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_replica() -> impl Strategy<Value = (bool, bool, bool, bool)> {
            // current, draining, unhealthy, dead
            (
                any::<bool>(),
                any::<bool>(),
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.05),
            )
        }

        proptest! {
            /// From any replicas, with drains that finish some steps
            /// later, the controller reaches exactly `target` healthy
            /// replicas of the current version, none draining; and while
            /// it rolls, replicas taking requests never fall below the
            /// target (or below what there was, if fewer).
            #[test]
            fn converges_without_dropping_below_the_target(
                target in 0usize..6,
                start in prop::collection::vec(any_replica(), 0..8),
                drain_steps in 0usize..3,
            ) {
                let mut replicas: Vec<ReplicaView> = start
                    .iter()
                    .enumerate()
                    .map(|(i, &(current, draining, unhealthy, dead))| ReplicaView {
                        index: i as u64,
                        current,
                        draining,
                        drained: false,
                        unhealthy,
                        dead,
                    })
                    .collect();
                let healthy_active = |rs: &[ReplicaView]| {
                    rs.iter().filter(|r| !r.draining && !r.dead && !r.unhealthy).count()
                };
                let floor = healthy_active(&replicas).min(target);
                let mut next = replicas.len() as u64;
                // Steps since each replica began draining.
                let mut draining_for: Vec<(u64, usize)> =
                    replicas.iter().filter(|r| r.draining).map(|r| (r.index, 0)).collect();
                let mut settled = false;
                for _ in 0..200 {
                    for (index, steps) in draining_for.iter_mut() {
                        *steps += 1;
                        if *steps > drain_steps {
                            if let Some(r) = replicas.iter_mut().find(|r| r.index == *index) {
                                r.drained = true;
                            }
                        }
                    }
                    match plan(target, &replicas) {
                        Action::Idle => {
                            let draining = replicas.iter().any(|r| r.draining);
                            if !draining {
                                settled = true;
                                break;
                            }
                        }
                        Action::Start => {
                            replicas.push(ReplicaView {
                                index: next,
                                current: true,
                                draining: false,
                                drained: false,
                                unhealthy: false,
                                dead: false,
                            });
                            next += 1;
                        }
                        Action::Drain(i) => {
                            let r = replicas.iter_mut().find(|r| r.index == i).unwrap();
                            prop_assert!(!r.draining, "drained twice");
                            r.draining = true;
                            draining_for.push((i, 0));
                        }
                        Action::Stop(i) => {
                            let r = replicas.iter().find(|r| r.index == i).unwrap();
                            prop_assert!(r.draining && r.drained, "stopped before its drain");
                            replicas.retain(|r| r.index != i);
                        }
                        Action::Remove(i) => replicas.retain(|r| r.index != i),
                        Action::Restart(i) => {
                            replicas.iter_mut().find(|r| r.index == i).unwrap().unhealthy = false;
                        }
                    }
                    prop_assert!(
                        healthy_active(&replicas) >= floor
                            || replicas.iter().any(|r| r.unhealthy || r.dead),
                        "fewer than {} replicas take requests: {:?}", floor, replicas
                    );
                }
                prop_assert!(settled, "no convergence: {:?}", replicas);
                prop_assert_eq!(replicas.len(), target);
                prop_assert!(replicas.iter().all(|r| r.current && !r.unhealthy && !r.dead));
            }
        }
    }
}
