//! The placer of one placement group: the loop that reserves its bundles
//! and reserves again those lost with their node.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;

/// The placer of one group: reserves its bundles, and reserves again those
/// lost with their node, until the group is removed; then gives back
/// everything it holds.
pub(super) async fn place_group(
    runtime: crate::runtime::WeakRuntime,
    id: PlacementGroupId,
    shared: Arc<GroupShared>,
) {
    let bundles = shared.options.bundles.clone();
    let strategy = shared.options.strategy;
    let mut placed: Vec<Option<NodeId>> = vec![None; bundles.len()];
    let mut removed = shared.state.subscribe();
    let mut backoff = FIRST_BACKOFF;
    let Some(mut events) = runtime.upgrade().map(|rt| rt.cluster_events()) else {
        return;
    };
    let started = std::time::Instant::now();
    loop {
        if *removed.borrow_and_update() == PlacementGroupState::Removed {
            break;
        }
        let Some(rt) = runtime.upgrade() else { return };
        if rt.is_shut_down() {
            return;
        }
        let missing: Vec<usize> = (0..bundles.len())
            .filter(|i| placed[*i].is_none())
            .collect();
        if missing.is_empty() {
            let nodes: Vec<NodeId> = placed.iter().flatten().copied().collect();
            if matches!(*shared.state.borrow(), PlacementGroupState::Pending { .. }) {
                metrics::histogram!("troupe_placement_group_ready_seconds")
                    .record(started.elapsed().as_secs_f64());
                tracing::info!(group = %id, ?nodes, "placement group ready");
            }
            // Only a change is sent: `removed` watches this state too, so
            // sending the same Ready again would wake this loop at once,
            // and it would spin for as long as the group lives.
            let ready = shared.state.send_if_modified(|s| {
                let next = PlacementGroupState::Ready {
                    nodes: nodes.clone(),
                };
                if *s == PlacementGroupState::Removed || *s == next {
                    return false;
                }
                *s = next;
                true
            });
            if ready {
                // Retries waiting for a bundle reserved again go there now.
                rt.inner.scheduler.node_up();
            }
            drop(rt);
            // Ready: until removed, or a node holding a bundle dies.
            tokio::select! {
                _ = removed.changed() => continue,
                event = events.recv() => {
                    let down = match event {
                        Ok(ClusterEvent::NodeDown { node, .. }) => Some(node),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                        Err(_) => return,
                        Ok(_) => None,
                    };
                    if let Some(node) = down.filter(|n| placed.contains(&Some(*n))) {
                        let lost = placed.iter().filter(|p| **p == Some(node)).count();
                        tracing::warn!(group = %id, %node, bundles = lost, "a node holding bundles died: reserving them again");
                        metrics::counter!("troupe_placement_group_bundles_lost_total").increment(lost as u64);
                        for p in placed.iter_mut().filter(|p| **p == Some(node)) {
                            *p = None;
                        }
                        if strategy == PlacementStrategy::StrictPack {
                            // Together or not at all: the rest go too.
                            if let Some(rt) = runtime.upgrade() {
                                for node in placed.iter().flatten() {
                                    rt.release_on(*node, id).await;
                                }
                            }
                            placed.iter_mut().for_each(|p| *p = None);
                        }
                        shared.state.send_if_modified(|s| {
                            if *s == PlacementGroupState::Removed { return false; }
                            *s = PlacementGroupState::Pending { why: format!("node {node}, which held bundles, died: reserving them again") };
                            true
                        });
                    }
                    continue;
                }
            }
        }
        // Plan the missing bundles over the nodes with room, keeping
        // STRICT_SPREAD's bundles apart from those already placed.
        let mut rooms = rt.node_rooms();
        if strategy == PlacementStrategy::StrictSpread {
            rooms.retain(|r| !placed.contains(&Some(r.node)));
        }
        let wanted: Vec<Resources> = missing.iter().map(|i| bundles[*i].clone()).collect();
        let why = match plan(&wanted, strategy, &rooms) {
            Ok(nodes) => {
                let mut by_node: HashMap<NodeId, Vec<(usize, Resources)>> = HashMap::new();
                for (i, node) in missing.iter().zip(nodes) {
                    by_node
                        .entry(node)
                        .or_default()
                        .push((*i, bundles[*i].clone()));
                }
                let tries = by_node.into_iter().map(|(node, these)| {
                    let rt = rt.clone();
                    async move {
                        let indexes: Vec<usize> = these.iter().map(|(i, _)| *i).collect();
                        (node, indexes, rt.reserve_on(node, id, these).await)
                    }
                });
                let results = futures::future::join_all(tries).await;
                let refused: Vec<String> = results
                    .iter()
                    .filter_map(|(_, _, r)| r.as_ref().err().cloned())
                    .collect();
                if refused.is_empty() {
                    for (node, indexes, _) in results {
                        for i in indexes {
                            placed[i] = Some(node);
                        }
                    }
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                // All of this round or none: give back what it took.
                for (node, _, result) in &results {
                    if result.is_ok() {
                        rt.release_on(*node, id).await;
                    }
                }
                // Bundles placed in earlier rounds were released with
                // them where they shared a node: placed again.
                let touched: Vec<NodeId> = results
                    .iter()
                    .filter(|(_, _, r)| r.is_ok())
                    .map(|(n, ..)| *n)
                    .collect();
                for p in placed.iter_mut() {
                    if p.is_some_and(|n| touched.contains(&n)) {
                        *p = None;
                    }
                }
                metrics::counter!("troupe_placement_group_reservations_refused_total").increment(1);
                refused.join("; ")
            }
            Err(why) => why,
        };
        shared.state.send_if_modified(|s| match s {
            PlacementGroupState::Pending { why: old } if *old != why => {
                *old = why.clone();
                true
            }
            _ => false,
        });
        drop(rt);
        tokio::select! {
            _ = removed.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    // Removed: give back every bundle reserved.
    if let Some(rt) = runtime.upgrade() {
        let mut nodes: Vec<NodeId> = placed.iter().flatten().copied().collect();
        nodes.sort();
        nodes.dedup();
        let releases = nodes.into_iter().map(|node| rt.release_on(node, id));
        futures::future::join_all(releases).await;
        tracing::info!(group = %id, "placement group removed");
    }
}
