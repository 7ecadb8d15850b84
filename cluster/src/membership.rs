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
mod tests;
