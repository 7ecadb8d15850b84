//! The head's directory of members and its failure detector: pure state.
//! The node's driver feeds it joins, heartbeats, session ends and clock
//! ticks, and acts on the [`Change`]s it returns (broadcasts, events);
//! nothing here does I/O or reads the clock, so every rule is unit-tested
//! with made-up instants.
//!
//! Rules (Ray's head checks every 3 s and gives up after 5 misses, ~15 s;
//! Troupe's defaults are 200 ms heartbeats, suspect after 600 ms of
//! silence, dead after 1.5 s):
//! - a member is `Alive` while heard from within `suspect_after`;
//! - silent past `suspect_after` (or its session ended): `Suspect`, sent no
//!   new work; a heartbeat brings it back to `Alive`;
//! - silent past `dead_after`: `Dead`, final for this incarnation: its later
//!   heartbeats are ignored, and a process that comes back joins with a new
//!   node id (every runtime start has one);
//! - a clean leave is `Left`, never reported as a failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use troupe_core::{NodeId, Resources};

use crate::protocol::{Hello, Load, Member, MemberState, Role, Welcome, PROTOCOL_VERSION};

/// The failure detector's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detector {
    /// How often members send heartbeats (and the head its directory).
    pub heartbeat: Duration,
    /// Silence after which a member is suspected.
    pub suspect_after: Duration,
    /// Silence after which a member is dead.
    pub dead_after: Duration,
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            heartbeat: Duration::from_millis(200),
            suspect_after: Duration::from_millis(600),
            dead_after: Duration::from_millis(1500),
        }
    }
}

/// What changed in the directory.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A member joined.
    Up(NodeId),
    /// A member went silent (or lost its session).
    Suspected(NodeId),
    /// A suspected member was heard from again.
    Recovered(NodeId),
    /// A member is dead: why.
    Dead(NodeId, String),
    /// A member left cleanly.
    Left(NodeId),
}

/// The bytes of members one directory part carries at most (a frame holds
/// [`crate::protocol::MAX_FRAME_BYTES`]).
pub const DIRECTORY_PART_BYTES: usize = crate::protocol::MAX_FRAME_BYTES - 4096;

fn encoded_size<T: serde::Serialize>(value: &T) -> usize {
    postcard::to_stdvec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// `members` cut into parts of at most [`DIRECTORY_PART_BYTES`] encoded
/// bytes each, in order (one part for an empty directory).
pub fn directory_parts(members: Vec<Member>) -> Vec<Vec<Member>> {
    if encoded_size(&members) <= DIRECTORY_PART_BYTES {
        return vec![members];
    }
    let mut parts = vec![Vec::new()];
    let mut bytes = 0;
    for member in members {
        let size = encoded_size(&member);
        let last = parts.len() - 1;
        if bytes + size > DIRECTORY_PART_BYTES && !parts[last].is_empty() {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        let last = parts.len() - 1;
        parts[last].push(member);
    }
    parts
}

/// `members` (as [`Directory::members`] orders them: the head, the others,
/// the departed) cut to what one reply can carry, from the end: the
/// departed go first.
pub fn trim_to_frame(mut members: Vec<Member>) -> Vec<Member> {
    let mut bytes = encoded_size(&members);
    while bytes > DIRECTORY_PART_BYTES && members.len() > 1 {
        if let Some(m) = members.pop() {
            bytes = bytes.saturating_sub(encoded_size(&m));
        }
    }
    members
}

/// Departed members kept for `troupe status`.
const KEEP_DEPARTED: usize = 64;

/// The longest name or address a member may declare.
pub const MAX_NAME_BYTES: usize = 256;

/// The most custom resources a member may declare, and the longest name of
/// one: a member's entry stays under 6 KiB, so a welcome lists at least
/// 180 members in one frame, and thousands of typical ones (the directory
/// itself travels in parts: [`directory_parts`]).
pub const MAX_CUSTOM_RESOURCES: usize = 32;
/// See [`MAX_CUSTOM_RESOURCES`].
pub const MAX_RESOURCE_NAME_BYTES: usize = 64;

/// How long a member that a rejoining member knew has to join a
/// restarted head before it is declared dead: members notice the head's
/// loss within the detector's limit (1.5 s), then dial it every second at
/// most.
pub const REJOIN_GRACE: Duration = Duration::from_secs(5);

/// The most members one rejoining member may make the head expect.
const MAX_ADOPTED: usize = 4096;

/// Whether `hello` declares nothing larger than a member may.
fn bounded(hello: &Hello) -> Result<(), String> {
    if hello.name.len() > MAX_NAME_BYTES || hello.control_addr.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a node name or address over {MAX_NAME_BYTES} bytes"
        ));
    }
    let custom = &hello.resources.custom;
    if custom.len() > MAX_CUSTOM_RESOURCES
        || custom.keys().any(|k| k.len() > MAX_RESOURCE_NAME_BYTES)
    {
        return Err(format!(
            "more than {MAX_CUSTOM_RESOURCES} custom resources, or one named with over \
             {MAX_RESOURCE_NAME_BYTES} bytes"
        ));
    }
    Ok(())
}

struct Entry {
    member: Member,
    last_heard: Instant,
    departed_at: Option<Instant>,
}

/// The head's directory.
pub struct Directory {
    head: NodeId,
    build_id: Option<u64>,
    detector: Detector,
    members: BTreeMap<NodeId, Entry>,
}

impl Directory {
    /// A directory whose head is `head`. With `build_id` `None` (a head
    /// started from the `troupe` binary, which registers no functions), the
    /// first worker or driver to join sets the cluster's build.
    pub fn new(head: Hello, build_id: Option<u64>, detector: Detector, now: Instant) -> Self {
        let mut members = BTreeMap::new();
        let id = head.node;
        members.insert(
            id,
            Entry {
                member: Member {
                    available: head.resources.clone(),
                    hello: head,
                    state: MemberState::Alive,
                    load: Load::default(),
                },
                last_heard: now,
                departed_at: None,
            },
        );
        Directory {
            head: id,
            build_id,
            detector,
            members,
        }
    }

    /// The detector's timings.
    pub fn detector(&self) -> Detector {
        self.detector
    }

    /// Admits `hello`, or says why not (for the joiner's operator).
    pub fn join(&mut self, hello: Hello, now: Instant) -> Result<(Welcome, Vec<Change>), String> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not the cluster's {PROTOCOL_VERSION}: run the same Troupe version on every node",
                hello.protocol
            ));
        }
        if hello.role != Role::Client {
            match self.build_id {
                Some(cluster) if cluster != hello.build_id => {
                    return Err(format!(
                        "build {:016x} differs from the cluster's build {cluster:016x}: every node must run the same program \
                         (the same binary, built from the same code), which registers the same remote functions and actor types",
                        hello.build_id
                    ));
                }
                Some(_) => {}
                None => self.build_id = Some(hello.build_id),
            }
        }
        bounded(&hello)?;
        if hello.node == self.head {
            return Err(format!("node {} is the head's id", hello.node));
        }
        if let Some(old) = self.members.get(&hello.node) {
            if old.departed_at.is_some() {
                return Err(format!(
                    "node {} already left or died; a restarted node joins with a new id",
                    hello.node
                ));
            }
        }
        let node = hello.node;
        let role = hello.role;
        let previous = self.members.get(&node).map(|e| e.member.clone());
        self.members.insert(
            node,
            Entry {
                member: Member {
                    available: hello.resources.clone(),
                    hello,
                    state: MemberState::Alive,
                    load: Load::default(),
                },
                last_heard: now,
                departed_at: None,
            },
        );
        let all = self.members();
        let live = all
            .iter()
            .filter(|m| !matches!(m.state, MemberState::Dead | MemberState::Left))
            .count();
        let members = trim_to_frame(all);
        if members.len() < live {
            // The joiner must learn every live member to reach it.
            match previous {
                Some(old) => {
                    if let Some(e) = self.members.get_mut(&node) {
                        e.member = old;
                    }
                }
                None => {
                    self.members.remove(&node);
                }
            }
            return Err(format!(
                "the cluster's {live} live members do not fit in one welcome frame: \
                 use shorter node names and fewer custom resources"
            ));
        }
        let welcome = Welcome {
            head: self.head,
            build_id: self.build_id.unwrap_or_default(),
            members,
            heartbeat_ms: self.detector.heartbeat.as_millis() as u64,
        };
        let changes = if role == Role::Client {
            Vec::new()
        } else {
            vec![Change::Up(node)]
        };
        Ok((welcome, changes))
    }

    /// Takes back `hello`, a member of the cluster whose head `lost` it
    /// knew is gone (restarted as this head, or back from a stall), under
    /// its own id: as [`join`](Self::join), and then what it knew. `lost`,
    /// if it is not this head, is dead (its work was lost with it); each
    /// other live member it knew is expected back: kept as `Suspect`, dead
    /// unless it joins within [`REJOIN_GRACE`].
    pub fn rejoin(
        &mut self,
        hello: Hello,
        lost: NodeId,
        known: Vec<Member>,
        now: Instant,
    ) -> Result<(Welcome, Vec<Change>), String> {
        let joiner = hello.node;
        let (mut welcome, mut changes) = self.join(hello, now)?;
        let grace = REJOIN_GRACE.max(self.detector.dead_after * 2);
        let mut adopted = 0;
        for member in known {
            let node = member.hello.node;
            let unknown = node != joiner && node != self.head && !self.members.contains_key(&node);
            let live = !matches!(member.state, MemberState::Dead | MemberState::Left);
            if !unknown
                || !live
                || member.hello.role == Role::Client
                || bounded(&member.hello).is_err()
            {
                continue;
            }
            if adopted == MAX_ADOPTED {
                break;
            }
            adopted += 1;
            let lost_head = node == lost && member.hello.role == Role::Head;
            let entry = Entry {
                member: Member {
                    state: if lost_head {
                        MemberState::Dead
                    } else {
                        MemberState::Suspect
                    },
                    ..member
                },
                // Heard from, as it were, so that it is dead `grace` from now.
                last_heard: now + grace.saturating_sub(self.detector.dead_after),
                departed_at: lost_head.then_some(now),
            };
            self.members.insert(node, entry);
            if lost_head {
                changes.push(Change::Dead(
                    node,
                    "the head restarted as a new node: what ran on the old one was lost".to_owned(),
                ));
            }
        }
        welcome.members = trim_to_frame(self.members());
        Ok((welcome, changes))
    }

    /// A heartbeat from `node`.
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        available: Resources,
        load: Load,
        now: Instant,
    ) -> Vec<Change> {
        let Some(entry) = self.members.get_mut(&node) else {
            return Vec::new();
        };
        if entry.departed_at.is_some() {
            return Vec::new(); // dead is final for an incarnation
        }
        entry.last_heard = now;
        // Only what it declared can be free: a heartbeat cannot grow the
        // directory.
        let declared = &entry.member.hello.resources;
        let mut available = available;
        available
            .custom
            .retain(|name, _| declared.custom.contains_key(name));
        entry.member.available = available;
        entry.member.load = load;
        if entry.member.state == MemberState::Suspect {
            entry.member.state = MemberState::Alive;
            return vec![Change::Recovered(node)];
        }
        Vec::new()
    }

    /// `node`'s session with the head ended: suspected at once (it is
    /// declared dead only if it stays silent: a partition may heal).
    pub fn session_closed(&mut self, node: NodeId) -> Vec<Change> {
        match self.members.get_mut(&node) {
            Some(entry) if entry.member.state == MemberState::Alive && node != self.head => {
                if entry.member.hello.role == Role::Client {
                    // A status command's session: it just went away.
                    self.members.remove(&node);
                    return Vec::new();
                }
                entry.member.state = MemberState::Suspect;
                vec![Change::Suspected(node)]
            }
            _ => Vec::new(),
        }
    }

    /// `node` leaves cleanly.
    pub fn leave(&mut self, node: NodeId, now: Instant) -> Vec<Change> {
        match self.members.get_mut(&node) {
            Some(entry) if entry.departed_at.is_none() && node != self.head => {
                let role = entry.member.hello.role;
                entry.member.state = MemberState::Left;
                entry.departed_at = Some(now);
                if role == Role::Client {
                    self.members.remove(&node);
                    return Vec::new();
                }
                self.forget_old_departures();
                vec![Change::Left(node)]
            }
            _ => Vec::new(),
        }
    }

    /// Applies the detector's limits at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let head = self.head;
        for (node, entry) in self.members.iter_mut() {
            if *node == head || entry.departed_at.is_some() {
                continue;
            }
            let silent = now.saturating_duration_since(entry.last_heard);
            if silent >= self.detector.dead_after {
                entry.member.state = MemberState::Dead;
                entry.departed_at = Some(now);
                changes.push(Change::Dead(
                    *node,
                    format!(
                        "no heartbeat for {} ms (limit {} ms)",
                        silent.as_millis(),
                        self.detector.dead_after.as_millis()
                    ),
                ));
            } else if silent >= self.detector.suspect_after
                && entry.member.state == MemberState::Alive
            {
                entry.member.state = MemberState::Suspect;
                changes.push(Change::Suspected(*node));
            }
        }
        if changes.iter().any(|c| matches!(c, Change::Dead(..))) {
            self.forget_old_departures();
        }
        changes
    }

    /// The head stalled for `stalled` (starved of CPU): counts that time
    /// as heard from everyone, so its own stall declares nobody dead.
    pub fn forgive(&mut self, stalled: Duration) {
        for entry in self.members.values_mut() {
            if entry.departed_at.is_none() {
                entry.last_heard += stalled;
            }
        }
    }

    /// Updates the head's own entry (it heartbeats to itself).
    pub fn head_heartbeat(&mut self, available: Resources, load: Load, now: Instant) {
        let head = self.head;
        let _ = self.heartbeat(head, available, load, now);
    }

    /// How long each live member has been silent (what
    /// `troupe_cluster_heartbeat_age_seconds` shows).
    pub fn silences(&self, now: Instant) -> Vec<(NodeId, Duration)> {
        self.members
            .iter()
            .filter(|(_, e)| e.departed_at.is_none())
            .map(|(node, e)| (*node, now.saturating_duration_since(e.last_heard)))
            .collect()
    }

    /// Every member, departed ones last.
    pub fn members(&self) -> Vec<Member> {
        let mut all: Vec<Member> = self.members.values().map(|e| e.member.clone()).collect();
        all.sort_by_key(|m| {
            (
                matches!(m.state, MemberState::Dead | MemberState::Left),
                m.hello.role != Role::Head,
            )
        });
        all
    }

    /// A member's entry.
    pub fn get(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node).map(|e| &e.member)
    }

    /// Members alive or suspected (not departed).
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|e| e.departed_at.is_none())
            .map(|e| &e.member)
    }

    fn forget_old_departures(&mut self) {
        let mut departed: Vec<(Instant, NodeId)> = self
            .members
            .iter()
            .filter_map(|(id, e)| e.departed_at.map(|at| (at, *id)))
            .collect();
        if departed.len() <= KEEP_DEPARTED {
            return;
        }
        departed.sort();
        let excess = departed.len() - KEEP_DEPARTED;
        for (_, id) in departed.into_iter().take(excess) {
            self.members.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: u64, role: Role, build: u64) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            build_id: build,
            node: NodeId(node),
            name: format!("n{node}"),
            role,
            control_addr: "127.0.0.1:1".into(),
            data_addr: "127.0.0.1:2".parse().unwrap(),
            resources: Resources::cpus(1.0),
            pid: 1,
            metrics: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn directory(t0: Instant) -> Directory {
        Directory::new(hello(1, Role::Head, 7), Some(7), Detector::default(), t0)
    }

    fn state(d: &Directory, node: u64) -> Option<MemberState> {
        d.get(NodeId(node)).map(|m| m.state)
    }

    #[test]
    fn a_restarted_head_takes_members_back_under_their_ids_and_waits_for_the_others() {
        let t0 = Instant::now();
        let mut old = directory(t0);
        for node in [2, 3, 4] {
            old.join(hello(node, Role::Worker, 7), t0).unwrap();
        }
        old.join(hello(5, Role::Client, 0), t0).unwrap();
        let known = old.members();
        // Restarted from the `troupe` binary (no build) as node 9.
        let mut d = Directory::new(hello(9, Role::Head, 0), None, Detector::default(), t0);
        let (welcome, changes) = d
            .rejoin(hello(2, Role::Worker, 7), NodeId(1), known.clone(), t0)
            .unwrap();
        assert_eq!(welcome.head, NodeId(9));
        assert!(changes.contains(&Change::Up(NodeId(2))), "{changes:?}");
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Dead(NodeId(1), why) if why.contains("restarted"))),
            "the lost head is dead: {changes:?}"
        );
        let listed = |id: u64| {
            welcome
                .members
                .iter()
                .find(|m| m.hello.node == NodeId(id))
                .map(|m| m.state)
        };
        assert_eq!(listed(1), Some(MemberState::Dead));
        assert_eq!(listed(2), Some(MemberState::Alive));
        assert_eq!(listed(3), Some(MemberState::Suspect), "expected back");
        assert_eq!(listed(5), None, "a client is not expected back");
        // 3 comes back in time, under its id; the lost head stays dead.
        let (_, changes) = d
            .rejoin(
                hello(3, Role::Worker, 7),
                NodeId(1),
                known.clone(),
                t0 + ms(3000),
            )
            .unwrap();
        assert_eq!(changes, vec![Change::Up(NodeId(3))]);
        assert_eq!(state(&d, 3), Some(MemberState::Alive));
        // 4 never does: dead once the grace has passed, not before.
        for at in [3000, 4900] {
            for node in [2, 3] {
                d.heartbeat(
                    NodeId(node),
                    Resources::cpus(1.0),
                    Load::default(),
                    t0 + ms(at),
                );
            }
            assert!(d.tick(t0 + ms(at)).is_empty(), "at {at} ms");
        }
        let dead = d.tick(t0 + REJOIN_GRACE);
        assert!(
            matches!(&dead[..], [Change::Dead(NodeId(4), _)]),
            "{dead:?}"
        );
        // Dead is final: a late rejoin under that id is refused.
        let late = d.rejoin(hello(4, Role::Worker, 7), NodeId(1), known, t0 + ms(5100));
        assert!(late.unwrap_err().contains("already left or died"));
    }

    #[test]
    fn a_rejoin_cannot_kill_a_live_member_or_the_head_nor_take_their_ids() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        d.join(hello(2, Role::Worker, 7), t0).unwrap();
        // It claims that the live head (1) and a live member (2) were the
        // head it lost, and lists the head as a live worker.
        let claims = vec![
            Member {
                available: Resources::default(),
                hello: hello(2, Role::Head, 7),
                state: MemberState::Alive,
                load: Load::default(),
            },
            Member {
                available: Resources::default(),
                hello: hello(1, Role::Worker, 7),
                state: MemberState::Alive,
                load: Load::default(),
            },
        ];
        for lost in [1, 2] {
            let (_, changes) = d
                .rejoin(hello(3, Role::Worker, 7), NodeId(lost), claims.clone(), t0)
                .unwrap();
            assert_eq!(changes, vec![Change::Up(NodeId(3))]);
        }
        assert_eq!(state(&d, 1), Some(MemberState::Alive));
        assert_eq!(state(&d, 2), Some(MemberState::Alive));
        assert_eq!(d.get(NodeId(1)).map(|m| m.hello.role), Some(Role::Head));
        assert!(d
            .rejoin(hello(1, Role::Worker, 7), NodeId(2), Vec::new(), t0)
            .is_err());
    }

    #[test]
    fn a_silent_member_is_suspected_then_dead_and_stays_dead() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        let (welcome, up) = d.join(hello(2, Role::Worker, 7), t0).unwrap();
        assert_eq!(up, vec![Change::Up(NodeId(2))]);
        assert_eq!(welcome.members.len(), 2);
        assert!(d.tick(t0 + ms(500)).is_empty());
        assert_eq!(d.tick(t0 + ms(600)), vec![Change::Suspected(NodeId(2))]);
        assert!(d.tick(t0 + ms(700)).is_empty(), "suspected once");
        let dead = d.tick(t0 + ms(1500));
        assert!(
            matches!(&dead[..], [Change::Dead(NodeId(2), _)]),
            "{dead:?}"
        );
        // Its late heartbeat does not revive it: it must rejoin anew.
        assert!(d
            .heartbeat(
                NodeId(2),
                Resources::cpus(1.0),
                Load::default(),
                t0 + ms(1600)
            )
            .is_empty());
        assert_eq!(d.get(NodeId(2)).unwrap().state, MemberState::Dead);
        assert!(d.join(hello(2, Role::Worker, 7), t0 + ms(1700)).is_err());
        assert!(d.join(hello(3, Role::Worker, 7), t0 + ms(1700)).is_ok());
        // The head never suspects itself.
        assert!(d
            .tick(t0 + ms(60_000))
            .iter()
            .all(|c| !matches!(c, Change::Dead(NodeId(1), _))));
    }

    #[test]
    fn heartbeats_keep_a_member_alive_and_revive_a_suspect() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        d.join(hello(2, Role::Worker, 7), t0).unwrap();
        for i in 1..100 {
            let now = t0 + ms(200 * i);
            d.heartbeat(NodeId(2), Resources::cpus(0.5), Load::default(), now);
            assert!(d.tick(now).is_empty());
        }
        assert_eq!(d.get(NodeId(2)).unwrap().available.num_cpus, 0.5);
        let t1 = t0 + ms(200 * 99);
        assert_eq!(
            d.session_closed(NodeId(2)),
            vec![Change::Suspected(NodeId(2))]
        );
        assert_eq!(
            d.heartbeat(
                NodeId(2),
                Resources::cpus(1.0),
                Load::default(),
                t1 + ms(100)
            ),
            vec![Change::Recovered(NodeId(2))]
        );
    }

    #[test]
    fn a_stalled_head_declares_nobody_dead_for_its_own_stall() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        d.join(hello(2, Role::Worker, 7), t0).unwrap();
        d.forgive(ms(5_000));
        assert!(d.tick(t0 + ms(5_100)).is_empty());
        assert!(
            !d.tick(t0 + ms(6_500)).is_empty(),
            "silence after the stall counts"
        );
    }

    #[test]
    fn a_clean_leave_is_not_a_failure() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        d.join(hello(2, Role::Worker, 7), t0).unwrap();
        assert_eq!(
            d.leave(NodeId(2), t0 + ms(10)),
            vec![Change::Left(NodeId(2))]
        );
        assert!(d.tick(t0 + ms(10_000)).is_empty());
        assert_eq!(d.get(NodeId(2)).unwrap().state, MemberState::Left);
    }

    #[test]
    fn another_build_is_refused_with_a_reason() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        let err = d.join(hello(2, Role::Worker, 8), t0).unwrap_err();
        assert!(err.contains("differs from the cluster's build"), "{err}");
        // A status command is not a node: any build may ask.
        assert!(d.join(hello(3, Role::Client, 8), t0).is_ok());
        let mut old = hello(4, Role::Worker, 7);
        old.protocol = PROTOCOL_VERSION + 1;
        assert!(d.join(old, t0).unwrap_err().contains("protocol version"));
    }

    #[test]
    fn a_head_without_a_build_takes_the_first_joiners() {
        let t0 = Instant::now();
        let mut d = Directory::new(hello(1, Role::Head, 0), None, Detector::default(), t0);
        d.join(hello(3, Role::Client, 99), t0).unwrap();
        d.join(hello(2, Role::Worker, 7), t0).unwrap();
        assert!(d.join(hello(4, Role::Driver, 8), t0).is_err());
        assert!(d.join(hello(5, Role::Driver, 7), t0).is_ok());
    }

    #[test]
    fn a_join_may_not_take_the_heads_id_and_a_large_directory_goes_in_parts() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        let err = d.join(hello(1, Role::Worker, 7), t0).unwrap_err();
        assert!(err.contains("head's id"), "{err}");
        let mut long = hello(2, Role::Worker, 7);
        long.name = "x".repeat(1 << 20);
        assert!(d.join(long, t0).is_err());
        let mut many = hello(3, Role::Worker, 7);
        for i in 0..=MAX_CUSTOM_RESOURCES {
            many.resources.custom.insert(format!("r{i}"), 1.0);
        }
        assert!(d.join(many, t0).is_err());
        assert_eq!(d.members().len(), 1, "nothing was added");
        // A heartbeat cannot declare what the join did not.
        let mut h = hello(4, Role::Worker, 7);
        h.resources.custom.insert("gpu-a".into(), 1.0);
        d.join(h, t0).unwrap();
        let mut free = Resources::cpus(1.0);
        free.custom.insert("gpu-a".into(), 1.0);
        free.custom.insert("x".repeat(MAX_NAME_BYTES * 100), 1.0);
        d.heartbeat(NodeId(4), free, Load::default(), t0);
        let custom = &d.get(NodeId(4)).unwrap().available.custom;
        assert_eq!(custom.keys().collect::<Vec<_>>(), ["gpu-a"]);
        // Members at the longest names and the most resources, until a
        // welcome cannot list them all: then joins are refused, and the
        // directory of those admitted travels in parts that each fit a
        // frame and give back every member in order.
        let mut admitted = 2;
        let mut next = 100;
        let mut fill = |d: &mut Directory, admitted: &mut usize| loop {
            let mut h = hello(next, Role::Worker, 7);
            next += 1;
            h.name = "x".repeat(MAX_NAME_BYTES);
            h.control_addr = "y".repeat(MAX_NAME_BYTES);
            for i in 0..MAX_CUSTOM_RESOURCES {
                h.resources.custom.insert(format!("{i:0>64}"), 1.0);
            }
            match d.join(h, t0) {
                Ok(_) => *admitted += 1,
                Err(why) => {
                    assert!(why.contains("do not fit in one welcome"), "{why}");
                    break;
                }
            }
            assert!(*admitted < 4096);
        };
        fill(&mut d, &mut admitted);
        assert!(admitted > 180, "{admitted}");
        assert_eq!(d.members().len(), admitted, "the refused one is not kept");
        // Departed members stay listed: with them, the directory outgrows
        // one frame.
        for n in 100..130 {
            d.leave(NodeId(n), t0);
        }
        fill(&mut d, &mut admitted);
        assert_eq!(d.members().len(), admitted);
        let members = d.members();
        let parts = directory_parts(members.clone());
        assert!(parts.len() > 1);
        for part in &parts {
            let frame = crate::protocol::Frame::Notice {
                from: NodeId(1),
                body: crate::protocol::Notice::Directory {
                    epoch: 1,
                    part: 0,
                    parts: parts.len() as u32,
                    members: part.clone(),
                },
            };
            assert!(frame.encode().is_ok());
        }
        let again: Vec<NodeId> = parts.into_iter().flatten().map(|m| m.hello.node).collect();
        let want: Vec<NodeId> = members.iter().map(|m| m.hello.node).collect();
        assert_eq!(again, want);
        // A status reply is cut to one frame, the head first.
        let status = trim_to_frame(members);
        assert!(status.len() < admitted);
        assert_eq!(status[0].hello.node, NodeId(1));
    }

    #[test]
    fn silences_are_how_long_each_live_member_has_not_been_heard() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        d.join(hello(2, Role::Worker, 7), t0).unwrap();
        d.join(hello(3, Role::Worker, 7), t0).unwrap();
        d.join(hello(4, Role::Worker, 7), t0).unwrap();
        d.heartbeat(
            NodeId(2),
            Resources::cpus(1.0),
            Load::default(),
            t0 + ms(1_000),
        );
        d.leave(NodeId(4), t0 + ms(1_000));
        let mut silences = d.silences(t0 + ms(2_000));
        silences.sort();
        assert_eq!(
            silences,
            [
                (NodeId(1), ms(2_000)),
                (NodeId(2), ms(1_000)),
                (NodeId(3), ms(2_000))
            ]
        );
    }

    #[test]
    fn departed_members_are_forgotten_past_a_bound() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        for n in 0..(KEEP_DEPARTED as u64 + 10) {
            d.join(hello(100 + n, Role::Worker, 7), t0).unwrap();
            d.leave(NodeId(100 + n), t0 + ms(n));
        }
        assert_eq!(d.members().len(), KEEP_DEPARTED + 1);
    }
}
