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

/// Departed members kept for `troupe status`.
const KEEP_DEPARTED: usize = 64;

/// The longest name or address a member may declare: the directory goes to
/// every member in one frame, so one joiner must not be able to outgrow it.
pub const MAX_NAME_BYTES: usize = 256;

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
        if hello.name.len() > MAX_NAME_BYTES || hello.control_addr.len() > MAX_NAME_BYTES {
            return Err(format!(
                "a node name or address over {MAX_NAME_BYTES} bytes (the directory goes to every member in one frame)"
            ));
        }
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
        let welcome = Welcome {
            head: self.head,
            build_id: self.build_id.unwrap_or_default(),
            members: self.members(),
            heartbeat_ms: self.detector.heartbeat.as_millis() as u64,
        };
        let changes = if role == Role::Client {
            Vec::new()
        } else {
            vec![Change::Up(node)]
        };
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
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn directory(t0: Instant) -> Directory {
        Directory::new(hello(1, Role::Head, 7), Some(7), Detector::default(), t0)
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
    fn a_join_may_not_take_the_heads_id_nor_grow_the_directory_past_a_frame() {
        let t0 = Instant::now();
        let mut d = directory(t0);
        let err = d.join(hello(1, Role::Worker, 7), t0).unwrap_err();
        assert!(err.contains("head's id"), "{err}");
        let mut long = hello(2, Role::Worker, 7);
        long.name = "x".repeat(1 << 20);
        assert!(d.join(long, t0).is_err());
        assert_eq!(d.members().len(), 1, "nothing was added");
        // Every member at the longest name still fits one frame.
        for n in 0..64 {
            let mut h = hello(10 + n, Role::Worker, 7);
            h.name = "x".repeat(MAX_NAME_BYTES);
            h.control_addr = "y".repeat(MAX_NAME_BYTES);
            d.join(h, t0).unwrap();
        }
        let frame = crate::protocol::Frame::Notice {
            from: NodeId(1),
            body: crate::protocol::Notice::Directory(d.members()),
        };
        assert!(frame.encode().is_ok());
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
