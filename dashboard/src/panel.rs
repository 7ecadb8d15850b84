//! The cluster view's model: what the page's cluster section receives,
//! made from core's [`ClusterView`] (a card per node, bounded lists, the
//! head's jobs). Pure, so that what the page shows is unit-tested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use troupe_core::placement_group::PlacementGroupState;
use troupe_core::runtime::{ClusterView, JobView, NodeHealth, NodeReply, NodeView};
use troupe_core::{NodeId, Resources};

/// How many actors, tasks and objects a node's card lists at most (its
/// counts are complete; the rest is "N more").
pub(crate) const LISTED: usize = 20;

/// The cluster section of the page: what `/api/cluster` returns and
/// `/api/events` sends as a `cluster` event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterPanel {
    /// No cluster: this node runs alone (the rest is empty).
    pub alone: bool,
    /// When the cluster was last asked, in microseconds since the Unix
    /// epoch.
    pub polled_at_us: u64,
    /// When its nodes were last heard (equal to `polled_at_us` unless the
    /// last poll failed, and the nodes shown are older).
    pub nodes_at_us: u64,
    /// Why the last poll failed, if it did.
    pub error: Option<String>,
    /// The head.
    pub head: Option<NodeId>,
    /// The node serving this page.
    pub me: Option<NodeId>,
    /// A card per member, the head first.
    pub nodes: Vec<NodeCard>,
    /// The head's jobs, newest first.
    pub jobs: Vec<JobView>,
    /// Why the jobs could not be listed, if they could not.
    pub jobs_error: Option<String>,
}

/// One resource: used and total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceUse {
    /// `CPU`, `GPU`, `memory` or a custom resource's name.
    pub name: String,
    /// In use (total less what was free at the last heartbeat).
    pub used: f64,
    /// Offered.
    pub total: f64,
}

/// A short line about an actor, task or object on a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Its id.
    pub id: String,
    /// Its type, function or value type.
    pub what: String,
    /// Its state (alive, running, in memory, ...).
    pub state: String,
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeCard {
    /// Its id.
    pub id: NodeId,
    /// Its runtime's name.
    pub name: String,
    /// Its control address.
    pub address: String,
    /// `head`, `worker` or `driver`.
    pub role: String,
    /// Its process id.
    pub pid: u32,
    /// `alive`, `suspect`, `dead`, `departed` or `no answer`.
    pub status: String,
    /// Why it did not answer, if it did not.
    pub why: Option<String>,
    /// Resources used and total.
    pub resources: Vec<ResourceUse>,
    /// Tasks queued, running or delegated (its last heartbeat).
    pub tasks_queued: u64,
    /// Tasks running (its last heartbeat).
    pub tasks_running: u64,
    /// Bytes of objects in memory.
    pub store_bytes: u64,
    /// Its store's memory budget (0: not known, it did not answer).
    pub store_budget: u64,
    /// Live actors.
    pub actors: u64,
    /// Live tasks (queued, waiting, running, unplaced, delegated).
    pub tasks: u64,
    /// Objects in its store.
    pub objects: u64,
    /// Placement groups with a bundle reserved on it (as it answered; else
    /// those of the groups this node created).
    pub placement_groups: u64,
    /// Placement groups it created that are not reserved yet.
    pub placement_groups_pending: u64,
    /// Its actors, at most 20.
    pub actor_list: Vec<Row>,
    /// Its tasks (live ones first), at most 20.
    pub task_list: Vec<Row>,
    /// Its objects, at most 20.
    pub object_list: Vec<Row>,
    /// How many more actors, tasks and objects than listed.
    pub more: [u64; 3],
    /// Whether its counts and lists come from its answer to this poll.
    pub answered: bool,
    /// Whether, silent or gone now, its counts and lists are those of its
    /// last answer (otherwise, without an answer, its last heartbeat's).
    pub last_known: bool,
}

/// The panel of a runtime without a cluster.
pub(crate) fn alone(now_us: u64) -> ClusterPanel {
    ClusterPanel {
        alone: true,
        polled_at_us: now_us,
        nodes_at_us: now_us,
        ..ClusterPanel::default()
    }
}

/// Placement groups with a bundle on each node, from this node's groups.
pub(crate) fn groups_per_node(groups: &[PlacementGroupState]) -> BTreeMap<NodeId, u64> {
    let mut per_node = BTreeMap::new();
    for group in groups {
        if let PlacementGroupState::Ready { nodes } = group {
            let mut seen: Vec<NodeId> = nodes.clone();
            seen.sort();
            seen.dedup();
            for node in seen {
                *per_node.entry(node).or_insert(0) += 1;
            }
        }
    }
    per_node
}

/// The nodes' cards from the cluster's view.
pub(crate) fn cards(view: &ClusterView, groups: &BTreeMap<NodeId, u64>) -> Vec<NodeCard> {
    view.nodes.iter().map(|n| card(n, groups)).collect()
}

fn resources(total: &Resources, free: &Resources) -> Vec<ResourceUse> {
    let used = |t: f64, f: f64| (t - f).max(0.0);
    let mut out = vec![ResourceUse {
        name: "CPU".to_owned(),
        used: used(total.num_cpus, free.num_cpus),
        total: total.num_cpus,
    }];
    if total.num_gpus > 0.0 {
        out.push(ResourceUse {
            name: "GPU".to_owned(),
            used: used(total.num_gpus, free.num_gpus),
            total: total.num_gpus,
        });
    }
    if total.memory > 0 {
        out.push(ResourceUse {
            name: "memory".to_owned(),
            used: total.memory.saturating_sub(free.memory) as f64,
            total: total.memory as f64,
        });
    }
    for (name, have) in &total.custom {
        let left = free.custom.get(name).copied().unwrap_or(0.0);
        out.push(ResourceUse {
            name: name.clone(),
            used: used(*have, left),
            total: *have,
        });
    }
    out
}

fn card(node: &NodeView, groups: &BTreeMap<NodeId, u64>) -> NodeCard {
    let (status, why) = match (&node.health, &node.reply) {
        (NodeHealth::Dead, _) => ("dead", None),
        (NodeHealth::Left, _) | (_, NodeReply::Departed) => ("departed", None),
        (_, NodeReply::NoAnswer(why)) => ("no answer", Some(why.clone())),
        (NodeHealth::Suspect, _) => ("suspect", None),
        _ => ("alive", None),
    };
    let load = &node.load;
    let mut card = NodeCard {
        id: node.id,
        name: node.name.clone(),
        address: node.address.clone(),
        role: node.role.clone(),
        pid: node.pid,
        status: status.to_owned(),
        why,
        resources: resources(&node.total, &node.available),
        tasks_queued: load.tasks_queued,
        tasks_running: load.tasks_running,
        store_bytes: load.object_bytes,
        store_budget: 0,
        actors: load.actors,
        tasks: load.tasks_queued + load.tasks_unplaced,
        objects: load.objects,
        placement_groups: groups.get(&node.id).copied().unwrap_or(0),
        placement_groups_pending: load.placement_groups_pending,
        actor_list: Vec::new(),
        task_list: Vec::new(),
        object_list: Vec::new(),
        more: [0; 3],
        answered: false,
        last_known: false,
    };
    // A departed node's last answer is not asked for: its heartbeat's
    // numbers are all there is.
    if let NodeReply::State { state, .. } = &node.reply {
        let summary = &state.summary;
        let counts = &summary.tasks;
        card.answered = true;
        // Live: an actor being built counts (it is listed already).
        card.actors = (summary.actors.alive + summary.actors.restarting) as u64;
        card.tasks = (counts.queued
            + counts.waiting_for_args
            + counts.running
            + counts.unplaced
            + counts.delegated) as u64;
        card.objects = summary.objects.objects as u64;
        card.placement_groups = summary.placement_groups as u64;
        card.store_bytes = summary.objects.memory_bytes;
        card.store_budget = summary.objects.budget_bytes;
        card.actor_list = state
            .actors
            .iter()
            .take(LISTED)
            .map(|a| Row {
                id: a.info.id.to_string(),
                what: match &a.info.name {
                    Some(name) => format!("{} \"{name}\"", short(&a.info.type_name)),
                    None => short(&a.info.type_name).to_owned(),
                },
                state: format!("{:?}", a.state).to_lowercase(),
            })
            .collect();
        card.task_list = state
            .tasks
            .iter()
            .take(LISTED)
            .map(|t| Row {
                id: t.id.to_string(),
                what: t.function.to_string(),
                state: format!("{:?}", t.state).to_lowercase(),
            })
            .collect();
        card.object_list = state
            .objects
            .iter()
            .take(LISTED)
            .map(|o| Row {
                id: o.id.to_string(),
                what: short(&o.type_name).to_owned(),
                state: format!("{} ({} B)", o.state, o.size),
            })
            .collect();
        let listed_tasks = state.tasks.len() as u64;
        card.more = [
            card.actors.saturating_sub(card.actor_list.len() as u64),
            listed_tasks.max(card.tasks) - card.task_list.len() as u64,
            card.objects.saturating_sub(card.object_list.len() as u64),
        ];
    }
    card
}

/// Cards without an answer now take the counts and lists of their last
/// answer in `previous`: a node that just died shows what it held.
pub(crate) fn carry_forward(cards: &mut [NodeCard], previous: &[NodeCard]) {
    for card in cards.iter_mut().filter(|c| !c.answered) {
        let Some(before) = previous
            .iter()
            .find(|p| p.id == card.id && (p.answered || p.last_known))
        else {
            continue;
        };
        card.actors = before.actors;
        card.tasks = before.tasks;
        card.objects = before.objects;
        card.placement_groups = before.placement_groups;
        card.store_bytes = before.store_bytes;
        card.store_budget = before.store_budget;
        card.actor_list = before.actor_list.clone();
        card.task_list = before.task_list.clone();
        card.object_list = before.object_list.clone();
        card.more = before.more;
        card.last_known = true;
    }
}

/// A type's last path segment (`my_crate::Counter` → `Counter`).
fn short(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

/// Jobs, newest first.
pub(crate) fn jobs_newest_first(mut jobs: Vec<JobView>) -> Vec<JobView> {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.submitted_at_us));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_core::placement_group::PlacementGroupOptions;
    use troupe_core::runtime::{JobView, NodeLoad};
    use troupe_core::{ActorHandle, ActorOptions, Config, StateQuery};

    struct Nobody;

    impl troupe_core::Actor for Nobody {
        type Handle = ActorHandle<Self>;
        const NAME: &'static str = "panel::Nobody";
    }

    fn node(id: u64, health: NodeHealth, reply: NodeReply) -> NodeView {
        NodeView {
            id: NodeId(id),
            name: format!("n{id}"),
            address: format!("127.0.0.1:{}", 7000 + id),
            role: "worker".to_owned(),
            pid: 100 + id as u32,
            health,
            total: Resources::cpus(4.0).with("disk", 2.0),
            available: Resources::cpus(1.5),
            load: NodeLoad {
                tasks_queued: 3,
                tasks_running: 2,
                actors: 7,
                objects: 9,
                object_bytes: 1024,
                placement_groups_pending: 1,
                ..NodeLoad::default()
            },
            reply,
            metrics: None,
        }
    }

    #[tokio::test]
    async fn cards_show_each_node_its_use_and_bounded_lists() {
        let rt = troupe_core::init(Config::default().name("panel"))
            .await
            .unwrap();
        let mut actors = Vec::new();
        for _ in 0..LISTED + 5 {
            actors.push(
                rt.spawn_actor(ActorOptions::new(), || Nobody)
                    .await
                    .unwrap(),
            );
        }
        let _kept = rt.put(vec![1u8; 4096]).await.unwrap();
        let group = rt
            .placement_group(PlacementGroupOptions::new(vec![Resources::cpus(0.5); 2]))
            .unwrap();
        group
            .ready(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let state = rt.state_with(&StateQuery::new().limit(LISTED + 2)).await;
        let me = state.node;
        let view = ClusterView {
            head: Some(me),
            me: Some(me),
            nodes: vec![
                NodeView {
                    id: me,
                    ..node(
                        1,
                        NodeHealth::Alive,
                        NodeReply::State {
                            state: Box::new(state),
                            truncated: false,
                        },
                    )
                },
                node(2, NodeHealth::Suspect, NodeReply::NoAnswer("silent".into())),
                node(3, NodeHealth::Dead, NodeReply::Departed),
                node(4, NodeHealth::Left, NodeReply::Departed),
                node(5, NodeHealth::Suspect, NodeReply::NoAnswer(String::new())),
            ],
        };
        let groups = groups_per_node(&[
            PlacementGroupState::Ready {
                nodes: vec![me, me, NodeId(2)],
            },
            PlacementGroupState::Ready { nodes: vec![me] },
            PlacementGroupState::Pending { why: "full".into() },
            PlacementGroupState::Removed,
        ]);
        let cards = cards(&view, &groups);
        let statuses: Vec<&str> = cards.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(
            statuses,
            ["alive", "no answer", "dead", "departed", "no answer"]
        );
        assert_eq!(cards[1].why.as_deref(), Some("silent"));

        // What answered: counts from its state, lists cut at LISTED.
        let alive = &cards[0];
        assert_eq!(alive.actors, (LISTED + 5) as u64);
        assert_eq!(alive.actor_list.len(), LISTED);
        assert_eq!(alive.more[0], 5, "the rest is counted");
        assert!(alive.actor_list[0].what.starts_with("Nobody"));
        assert_eq!(alive.actor_list[0].state, "alive");
        assert_eq!(alive.objects, 1);
        assert_eq!(alive.object_list.len(), 1);
        assert!(alive.store_bytes >= 4096 && alive.store_budget > 0);
        assert_eq!(alive.placement_groups, 1, "as it answered");
        assert_eq!(alive.placement_groups_pending, 1);

        // What did not: its heartbeat's numbers.
        let silent = &cards[1];
        assert_eq!((silent.actors, silent.objects, silent.tasks), (7, 9, 3));
        assert_eq!(silent.store_bytes, 1024);
        assert_eq!(
            silent.placement_groups, 1,
            "no answer: the groups this node created with a bundle there"
        );
        assert!(silent.actor_list.is_empty() && silent.more == [0; 3]);
        assert!(alive.answered && !silent.answered && !silent.last_known);
        let cpu = &silent.resources[0];
        assert_eq!((cpu.name.as_str(), cpu.used, cpu.total), ("CPU", 2.5, 4.0));
        let disk = silent.resources.iter().find(|r| r.name == "disk").unwrap();
        assert_eq!((disk.used, disk.total), (2.0, 2.0), "none of it free");
        assert!(!silent.resources.iter().any(|r| r.name == "GPU"));

        // The node that answered goes silent: its last answer stays shown.
        let mut later = cards.clone();
        later[0] = card(
            &NodeView {
                id: me,
                ..node(1, NodeHealth::Dead, NodeReply::Departed)
            },
            &groups,
        );
        assert!(later[0].actor_list.is_empty());
        carry_forward(&mut later, &cards);
        assert_eq!(later[0].status, "dead");
        assert!(later[0].last_known && !later[0].answered);
        assert_eq!(later[0].actor_list, cards[0].actor_list);
        assert_eq!(later[0].actors, (LISTED + 5) as u64);
        assert!(!later[1].last_known, "nothing known of it before");
        rt.shutdown().await.unwrap();
    }

    #[test]
    fn jobs_come_newest_first_and_a_lone_node_says_so() {
        let job = |id: &str, at| JobView {
            id: id.to_owned(),
            command: "sh".to_owned(),
            status: "running".to_owned(),
            error: None,
            submitted_at_us: at,
            ended_at_us: None,
        };
        let jobs = jobs_newest_first(vec![job("job-1", 1), job("job-3", 3), job("job-2", 2)]);
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["job-3", "job-2", "job-1"]);
        let lone = serde_json::to_value(alone(5)).unwrap();
        assert_eq!(lone["alone"], true);
        assert_eq!(lone["nodes"], serde_json::json!([]));
    }
}
