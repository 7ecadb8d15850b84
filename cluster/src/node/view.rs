//! The membership view: a member applies the head's directory (publishing
//! nodes up, down and heard from again to its runtime) and reports its
//! load; the head sends the directory out when it changes.

use super::*;

impl Shared {
    /// Takes a new directory: publishes what changed to this runtime.
    pub(super) fn apply_view(&self, members: Vec<Member>) {
        *lock(&self.last_directory) = Instant::now();
        let me = self.me();
        let old = std::mem::replace(&mut *write(&self.view), members.clone());
        let Some(rt) = self.runtime() else { return };
        let was = |node: NodeId| old.iter().find(|m| m.hello.node == node);
        for m in &members {
            let node = m.hello.node;
            if Some(node) == me && m.state == MemberState::Dead && self.head() != me {
                // Its Fenced notice may have been lost; the directory says
                // the same.
                self.cut_off("the head's directory lists this node as dead".to_owned());
                return;
            }
            if Some(node) == me || m.hello.role == Role::Client {
                continue;
            }
            let departed = matches!(m.state, MemberState::Dead | MemberState::Left);
            if departed {
                if let Some(t) = self.transport.get() {
                    t.fence(node, None);
                }
            }
            let was_departed = was(node)
                .map(|o| matches!(o.state, MemberState::Dead | MemberState::Left))
                .unwrap_or(false);
            let known = was(node).is_some();
            if departed && !was_departed && (known || m.state == MemberState::Dead) {
                let reason = match (m.state, m.hello.role) {
                    (MemberState::Left, _) => "left the cluster".to_owned(),
                    // Only a restarted head lists a head as dead.
                    (_, Role::Head) => "the head was restarted as a new node".to_owned(),
                    _ => "declared dead by the head's failure detector".to_owned(),
                };
                metrics::counter!("troupe_cluster_nodes_down_total").increment(1);
                rt.publish(ClusterEvent::NodeDown { node, reason });
            } else if !departed {
                // Announced once a session to it is up (work can go there);
                // else when it comes up (`Inbound::PeerUp`).
                self.announce(&rt, m);
                let was_suspect = was(node).is_some_and(|o| o.state == MemberState::Suspect);
                if was_suspect && m.state == MemberState::Alive {
                    // Tasks that found no node while it was suspected (a
                    // loaded node's heartbeat came late) would wait for a
                    // join that may never come.
                    rt.publish(ClusterEvent::NodeRecovered { node });
                }
            }
        }
        let alive = members
            .iter()
            .filter(|m| m.state == MemberState::Alive && m.hello.role != Role::Client)
            .count();
        metrics::gauge!("troupe_cluster_nodes_alive").set(alive as f64);
    }

    /// Publishes `NodeUp` for `m` once: when it is alive in the view and
    /// this node has a session to it. Returns whether it was announced
    /// before (then nothing is published).
    pub(super) fn announce(&self, rt: &Runtime, m: &Member) -> bool {
        let node = m.hello.node;
        let connected = self.transport.get().is_some_and(|t| t.connected(node));
        if m.state != MemberState::Alive || !connected {
            return false;
        }
        if !lock(&self.announced).insert(node) {
            return true;
        }
        metrics::counter!("troupe_cluster_nodes_up_total").increment(1);
        rt.publish(ClusterEvent::NodeUp {
            node,
            resources: m.hello.resources.clone(),
        });
        false
    }

    /// What this node reports with each heartbeat: its free resources and
    /// its load.
    pub(super) fn load(&self) -> (Resources, Load) {
        let Some(rt) = self.runtime() else {
            return (Resources::default(), Load::default());
        };
        let counts = rt.task_summary();
        let store = rt.objects();
        (
            rt.available_resources(),
            Load {
                tasks_queued: (counts.queued + counts.waiting_for_args + counts.running) as u64,
                tasks_running: counts.running as u64,
                tasks_unplaced: counts.unplaced as u64,
                actors: rt.live_actors() as u64,
                objects: store.len() as u64,
                object_bytes: store.in_memory_bytes(),
                placement_groups_pending: rt
                    .placement_groups()
                    .iter()
                    .filter(|(_, _, state)| {
                        matches!(
                            state,
                            troupe_core::placement_group::PlacementGroupState::Pending { .. }
                        )
                    })
                    .count() as u64,
            },
        )
    }

    /// On the head: acts on the directory's changes.
    pub(super) fn head_changes(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            match change {
                Change::Up(node) => tracing::info!(%node, "node joined"),
                Change::Suspected(node) => {
                    metrics::counter!("troupe_cluster_suspicions_total").increment(1);
                    tracing::warn!(%node, "node suspected")
                }
                Change::Recovered(node) => tracing::info!(%node, "suspected node heard from again"),
                Change::Dead(node, why) => {
                    tracing::warn!(%node, %why, "node declared dead");
                    // Told first, on its link (a stalled node reads it
                    // when it wakes); fenced everywhere by the directory.
                    if let Some(t) = self.transport.get() {
                        t.fence(*node, Some(Notice::Fenced { why: why.clone() }));
                    }
                }
                Change::Left(node) => tracing::info!(%node, "node left"),
            }
        }
        self.broadcast_directory();
    }

    /// On the head: sends the directory to every live member.
    pub(super) fn broadcast_directory(&self) {
        let members = match lock(&self.directory).as_ref() {
            Some(d) => d.members(),
            None => return,
        };
        self.apply_view(members.clone());
        let Some(transport) = self.transport.get() else {
            return;
        };
        // In parts when one frame cannot hold it; each member gets them in
        // order on its link.
        let epoch = self.directory_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let to: Vec<NodeId> = members
            .iter()
            .filter(|m| {
                m.hello.node != transport.me()
                    && !matches!(m.state, MemberState::Dead | MemberState::Left)
            })
            .map(|m| m.hello.node)
            .collect();
        let parts = crate::membership::directory_parts(members);
        let count = parts.len() as u32;
        for node in to {
            for (part, members) in parts.iter().enumerate() {
                let notice = Notice::Directory {
                    epoch,
                    part: part as u32,
                    parts: count,
                    members: members.clone(),
                };
                if let Err(err) = transport.notify(node, notice) {
                    // A suspected member (silent, or not back yet after the
                    // head restarted) is expected to miss it, every 200 ms.
                    if transport.connected(node) {
                        tracing::warn!(%node, %err, "could not send the directory");
                    } else {
                        tracing::debug!(%node, %err, "could not send the directory");
                    }
                    break;
                }
            }
        }
    }

    /// On the head: how long a heartbeat sent at `sent_at_micros` (by the
    /// member's clock) took to be read here. A heartbeat sent on time that
    /// arrives late was held up on the way (the member's link, the network,
    /// or this head's reading): said past a third of the death limit.
    pub(super) fn heartbeat_transit(&self, from: NodeId, sent_at_micros: u64) {
        let transit = Duration::from_micros(unix_micros().saturating_sub(sent_at_micros));
        metrics::histogram!("troupe_cluster_heartbeat_transit_seconds")
            .record(transit.as_secs_f64());
        if transit > self.options.detector.dead_after / 3 {
            tracing::warn!(
                node = %from,
                transit_ms = transit.as_millis() as u64,
                "a heartbeat took long to reach the head"
            );
        }
    }
}

/// Now, in microseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
