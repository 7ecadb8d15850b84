//! Troupe's own protocol between node agents: postcard-encoded frames that
//! travel as one ractor_cluster message each (a cast to the peer's agent).
//!
//! Frames are small by construction: bulk bytes take the data path
//! (`data_path`), and every frame is checked against [`MAX_FRAME_BYTES`]
//! when it is encoded (a request too large fails at its sender, with an
//! error) and when it is decoded (a peer's oversize frame is dropped and
//! logged; the node keeps running).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use troupe_core::error::ActorError;
use troupe_core::remote::{RemoteOutcome, RemoteResult};
use troupe_core::task::{TaskArgs, TaskSpec};
use troupe_core::{ActorId, Encoded, NodeId, ObjectId, Resources};

/// The largest control frame a node sends or accepts. Task arguments up
/// to the inline limit (100 KiB) fit many times over; larger ones travel
/// as object refs and are pulled through the data path.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// The version of this protocol; a node speaking another is refused.
pub const PROTOCOL_VERSION: u32 = 11;

/// One message between two agents.
#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// A request that expects exactly one [`Frame::Reply`] with its id.
    Request {
        /// Unique per sender.
        id: u64,
        /// The sender.
        from: NodeId,
        /// What is asked.
        body: Request,
    },
    /// The answer to a request.
    Reply {
        /// The request's id.
        id: u64,
        /// What it gave.
        body: Reply,
    },
    /// A message that expects no answer.
    Notice {
        /// The sender.
        from: NodeId,
        /// What it says.
        body: Notice,
    },
}

/// What a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The head: keeps the cluster directory (and may run tasks too).
    Head,
    /// A worker node: runs tasks for the cluster.
    Worker,
    /// A driver: a program that joined to submit work (runs what fits its
    /// own resources, which default to none).
    Driver,
    /// A `troupe status` or `troupe stop` command: asks, runs nothing.
    Client,
}

/// How a member introduces itself to the head.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Its registry's hash (`troupe::registry::build_id`).
    pub build_id: u64,
    /// Its runtime's node id (random per incarnation).
    pub node: NodeId,
    /// Its runtime's name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Where its ractor_cluster server listens (`host:port`).
    pub control_addr: String,
    /// Where its data path listens.
    pub data_addr: SocketAddr,
    /// What it offers.
    pub resources: Resources,
    /// Its process id (for `troupe status`).
    pub pid: u32,
    /// Where it serves Prometheus metrics (`host:port`), if it does.
    pub metrics: Option<String>,
}

/// A member as the directory lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    /// Who it is and where it listens.
    pub hello: Hello,
    /// Whether it is alive, suspected, dead, or left.
    pub state: MemberState,
    /// What was free at its last heartbeat.
    pub available: Resources,
    /// Its load at its last heartbeat.
    pub load: Load,
}

/// A member's state in the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Heard from recently.
    Alive,
    /// Silent past the suspicion limit (not sent new work).
    Suspect,
    /// Silent past the death limit, or its session ended and it stayed
    /// silent: its work is retried elsewhere. Final for this incarnation.
    Dead,
    /// Left cleanly (`troupe stop`, a driver's shutdown).
    Left,
}

/// What a member reports with each heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Load {
    /// Tasks queued, running or delegated.
    pub tasks_queued: u64,
    /// Tasks running now.
    pub tasks_running: u64,
    /// Tasks waiting for a node that fits (unplaced).
    pub tasks_unplaced: u64,
    /// Live actors.
    pub actors: u64,
    /// Objects in its store.
    pub objects: u64,
    /// Bytes of its objects in memory.
    pub object_bytes: u64,
    /// Placement groups it created that are not (all) reserved yet.
    pub placement_groups_pending: u64,
}

/// The head's answer to a join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Welcome {
    /// The head's node id.
    pub head: NodeId,
    /// The cluster's build id.
    pub build_id: u64,
    /// Every member known now (the joiner connects to each).
    pub members: Vec<Member>,
    /// How often to send heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
}

/// Requests.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// To the head: let me join.
    Join(Hello),
    /// To the head at the address of the head this member lost (restarted
    /// there, or back from a stall): take me back under my id, keeping my
    /// work; the members I knew are expected back too.
    Rejoin {
        /// Who it is (its id unchanged).
        hello: Hello,
        /// The head it lost.
        lost: NodeId,
        /// Its last view of the members.
        members: Vec<Member>,
    },
    /// Run one attempt of this task here (the sender owns its results).
    RunTask(TaskSpec),
    /// Call a method of an actor living here.
    CallActor {
        /// The actor.
        actor: ActorId,
        /// Its registered method name.
        method: String,
        /// The encoded arguments.
        args: Encoded,
    },
    /// To an object's owner: where is its value? Answered once it is made.
    Locate(ObjectId),
    /// Spawn this actor here.
    SpawnActor(troupe_core::remote::RemoteSpawn),
    /// Stop or kill an actor living here.
    StopActor {
        /// The actor.
        actor: ActorId,
        /// How.
        how: troupe_core::remote::StopHow,
    },
    /// Who holds this name here, if anyone?
    FindActor(String),
    /// To an actor's owner: where does the actor you placed as this id
    /// live now (after its node died)?
    LocateActor(ActorId),
    /// To the head: the cluster's members.
    Status,
    /// To the head: stop every node, then yourself (answered once every
    /// member acknowledged its stop, or after a deadline).
    StopCluster,
    /// Member to head: I am leaving (not a failure). Answered once the
    /// head recorded it, so the member's session may close after.
    Leave,
    /// Head to a member: leave the cluster and stop (`troupe stop`);
    /// answered before the member ends.
    Stop,
    /// This node's state-API snapshot, encoded in at most `budget` bytes
    /// (lists cut to fit).
    NodeState {
        /// What to include.
        query: troupe_core::StateQuery,
        /// The most bytes the snapshot may take.
        budget: u32,
    },
    /// Every member's snapshot, gathered by the node asked (`troupe
    /// list`, `summary`, `get`).
    ClusterState(troupe_core::StateQuery),
    /// To the head: run this job (`troupe job submit`).
    JobSubmit(crate::jobs::JobSpec),
    /// To the head: its jobs (`troupe job list`, `status`).
    JobList,
    /// To the head: a page of a job's log from byte `from`.
    JobLogs {
        /// The job.
        id: String,
        /// The first byte wanted.
        from: u64,
    },
    /// To the head: stop a job (answered once it ended).
    JobStop(String),
    /// A page of `node`'s timeline from event `from` (`troupe timeline`),
    /// after turning its recording on or off if `record` says so. The node
    /// asked answers for itself or asks `node`, measuring the offset of
    /// its clock.
    TimelinePage {
        /// Whose timeline.
        node: NodeId,
        /// The first event wanted.
        from: u64,
        /// Turn recording on or off first.
        record: Option<bool>,
    },
    /// Reserve these bundles of a placement group here: all or none
    /// (answered `Ok`, or `Refused` with why).
    ReserveBundles {
        /// The group.
        group: troupe_core::placement_group::PlacementGroupId,
        /// Each bundle's index and resources.
        bundles: Vec<(usize, troupe_core::Resources)>,
    },
    /// Give back every bundle of this placement group held here.
    ReleaseBundles(troupe_core::placement_group::PlacementGroupId),
    /// A page of `node`'s log (`troupe logs`): the node asked answers for
    /// itself or asks `node`.
    LogPage {
        /// Whose log.
        node: NodeId,
        /// Which lines.
        query: troupe_core::logs::LogQuery,
    },
    /// From the node that made a task's result and keeps it for its owner:
    /// pull it from me and keep a replica for the owner (answered `Ok`
    /// once kept, or `Refused` with why).
    KeepCopy {
        /// The object.
        id: ObjectId,
        /// Its owner, who will release the replica.
        owner: NodeId,
        /// The remote function whose task made it.
        function: String,
        /// Which of the task's results it is.
        index: u32,
    },
}

impl Request {
    /// What is asked, in a few words (for logs and refusals).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Join(_) => "joining",
            Request::Rejoin { .. } => "joining again",
            Request::RunTask(_) => "running a task",
            Request::CallActor { .. } => "calling an actor",
            Request::Locate(_) => "locating an object",
            Request::SpawnActor(_) => "spawning an actor",
            Request::StopActor { .. } => "stopping an actor",
            Request::FindActor(_) => "finding an actor",
            Request::LocateActor(_) => "locating an actor",
            Request::ReserveBundles { .. } => "reserving placement group bundles",
            Request::ReleaseBundles(_) => "releasing placement group bundles",
            Request::KeepCopy { .. } => "keeping a replica",
            Request::LogPage { .. } => "a log",
            Request::Status => "the status",
            Request::StopCluster => "stopping the cluster",
            Request::Leave => "leaving",
            Request::Stop => "stopping a node",
            Request::NodeState { .. } => "a node's state",
            Request::ClusterState(_) => "the cluster's state",
            Request::TimelinePage { .. } => "a timeline",
            Request::JobSubmit(_) => "submitting a job",
            Request::JobList => "the jobs",
            Request::JobLogs { .. } => "a job's log",
            Request::JobStop(_) => "stopping a job",
        }
    }
}

/// Replies, one per request kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The join was accepted.
    Welcome(Welcome),
    /// The join was refused: why, for the operator.
    Refused(String),
    /// How a task attempt ended.
    Task(RemoteOutcome),
    /// An actor call's encoded result.
    Actor(Result<Encoded, ActorError>),
    /// The actor spawned (or why not).
    Spawned(Result<troupe_core::ActorInfo, troupe_core::SpawnError>),
    /// The actor holding a name here, if any.
    Found(Option<troupe_core::ActorInfo>),
    /// Where an actor lives now, or that it is restarting, or dead.
    ActorAt(troupe_core::remote::Relocation),
    /// Where an object's value is: `Ok(None)` at the owner itself.
    Location(Result<Option<NodeId>, troupe_core::ObjectError>),
    /// The cluster's members.
    Status(Vec<Member>),
    /// A node's snapshot, and whether lists were cut to fit.
    NodeState {
        /// The snapshot.
        state: Box<troupe_core::State>,
        /// Whether lists were cut to fit the budget.
        truncated: bool,
    },
    /// Every member's snapshot.
    ClusterState(crate::state::ClusterState),
    /// A page of a node's timeline.
    TimelinePage(Box<crate::state::TimelinePage>),
    /// A page of a node's log.
    LogPage(Box<troupe_core::logs::LogPage>),
    /// A job.
    Job(Box<crate::jobs::JobInfo>),
    /// The head's jobs, oldest first.
    Jobs(Vec<crate::jobs::JobInfo>),
    /// A page of a job's log.
    JobLogs(crate::jobs::LogPage),
    /// Done.
    Ok,
}

/// One-way messages.
#[derive(Debug, Serialize, Deserialize)]
pub enum Notice {
    /// Member to head: I am alive, with this much free.
    Heartbeat {
        /// Free resources now.
        available: Resources,
        /// Load now.
        load: Load,
        /// When it was sent, in microseconds since the Unix epoch by the
        /// sender's clock: the head measures how long heartbeats take to
        /// reach it (meaningful where clocks agree: one host, or NTP).
        sent_at_micros: u64,
    },
    /// Head to members: the directory (sent periodically: it is also the
    /// head's heartbeat), in `parts` notices of one `epoch` when one frame
    /// cannot hold it; applied once every part arrived.
    Directory {
        /// Counts the head's broadcasts.
        epoch: u64,
        /// This part's index, from 0.
        part: u32,
        /// How many parts make this directory.
        parts: u32,
        /// This part's members.
        members: Vec<Member>,
    },
    /// To the owner of `id` (or to the node keeping a result the sender
    /// owns): the sender holds no ref to `id` any more; the receiver drops
    /// `times` registrations of the sender, and frees what nobody needs.
    Released {
        /// The object.
        id: ObjectId,
        /// How many registrations of the sender end.
        times: u32,
    },
    /// To the owner of `id`, from a node that sent (`delta` 1) refs to it
    /// to `borrower`, or that could not after all (-1): the owner counts
    /// `borrower` as holding one more (or one fewer). Sent on the sender's
    /// link to the owner before any release of the sender's own.
    Borrow {
        /// The object.
        id: ObjectId,
        /// The node the ref went to.
        borrower: NodeId,
        /// +1, or -1 to take one back.
        delta: i32,
    },
    /// Which of these requests of the sender does the receiver still work
    /// on? (Asked of requests that waited long; see `transport/requests.rs`.)
    Probe {
        /// The requests' ids.
        ids: Vec<u64>,
    },
    /// The answer to a probe (always sent, empty when all are known): the
    /// receiver does not know these requests (never received, or answered
    /// before this notice).
    Unknown {
        /// The requests' ids.
        ids: Vec<u64>,
    },
    /// Through ractor_cluster, when a session comes up: this node's
    /// control link listens here (the receiver connects to it).
    Link {
        /// The advertised address of the sender's link server.
        addr: std::net::SocketAddr,
    },
    /// To an actor's owner: a handle stopped it for good; do not restart
    /// it when its node dies.
    ActorEnded {
        /// The actor, by the id it was first spawned with.
        actor: ActorId,
    },
    /// Head to a member it declared dead (the last frame it sends there):
    /// the cluster handled this incarnation's work as lost and drops its
    /// frames; the member leaves (a worker process rejoins as a new node).
    Fenced {
        /// Why it was declared dead.
        why: String,
    },
    /// Host to an actor's owner: the actor it ran for the owner is dead
    /// for good (a supervisor there restarts it).
    ActorExited {
        /// The actor.
        actor: ActorId,
        /// Why.
        reason: String,
    },
}

impl Request {
    /// How long the requester waits for its reply: control requests a
    /// bounded time (`control`), work that may take any time while its
    /// node is alive and still works on it.
    pub fn patience(&self, control: std::time::Duration) -> crate::transport::Patience {
        use crate::transport::Patience;
        match self {
            Request::RunTask(_)
            | Request::CallActor { .. }
            | Request::SpawnActor(_)
            | Request::StopActor { .. }
            | Request::Locate(_) => Patience::WhileAlive,
            _ => Patience::Within(control),
        }
    }
}

impl Frame {
    /// The encoded values this frame carries (their refs are the frame's).
    fn encoded(&self) -> Vec<&Encoded> {
        match self {
            Frame::Request { body, .. } => match body {
                Request::RunTask(spec) => match &spec.args {
                    TaskArgs::Encoded(encoded) => vec![encoded],
                    TaskArgs::Local => Vec::new(),
                },
                Request::CallActor { args, .. } => vec![args],
                Request::SpawnActor(spawn) => vec![&spawn.args],
                _ => Vec::new(),
            },
            Frame::Reply { body, .. } => match body {
                Reply::Task(RemoteOutcome::Done(results)) => results
                    .iter()
                    .filter_map(|(_, r)| match r {
                        RemoteResult::Inline(encoded) => Some(encoded),
                        RemoteResult::At { .. } => None,
                    })
                    .collect(),
                Reply::Actor(Ok(encoded)) => vec![encoded],
                _ => Vec::new(),
            },
            Frame::Notice { .. } => Vec::new(),
        }
    }

    /// The encoded values this frame carries, to hold their refs on
    /// arrival.
    pub fn encoded_mut(&mut self) -> Vec<&mut Encoded> {
        match self {
            Frame::Request { body, .. } => match body {
                Request::RunTask(spec) => match &mut spec.args {
                    TaskArgs::Encoded(encoded) => vec![encoded],
                    TaskArgs::Local => Vec::new(),
                },
                Request::CallActor { args, .. } => vec![args],
                Request::SpawnActor(spawn) => vec![&mut spawn.args],
                _ => Vec::new(),
            },
            Frame::Reply { body, .. } => match body {
                Reply::Task(RemoteOutcome::Done(results)) => results
                    .iter_mut()
                    .filter_map(|(_, r)| match r {
                        RemoteResult::Inline(encoded) => Some(encoded),
                        RemoteResult::At { .. } => None,
                    })
                    .collect(),
                Reply::Actor(Ok(encoded)) => vec![encoded],
                _ => Vec::new(),
            },
            Frame::Notice { .. } => Vec::new(),
        }
    }

    /// The objects this frame carries refs to (its receiver becomes a
    /// borrower of each, once per value that holds it).
    pub fn carried_refs(&self) -> Vec<ObjectId> {
        self.encoded()
            .into_iter()
            .flat_map(|e| e.refs.iter().copied())
            .collect()
    }
}

/// A frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Larger than [`MAX_FRAME_BYTES`].
    #[error(
        "a control frame of {bytes} bytes exceeds the {MAX_FRAME_BYTES}-byte limit \
         (pass large values as objects: they travel on the data path)"
    )]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// Not a frame of this protocol.
    #[error("malformed control frame: {0}")]
    Malformed(#[from] postcard::Error),
}

impl Frame {
    /// The node the frame says sent it (a reply names none).
    pub fn claimed_sender(&self) -> Option<NodeId> {
        match self {
            Frame::Request { from, .. } | Frame::Notice { from, .. } => Some(*from),
            Frame::Reply { .. } => None,
        }
    }

    /// Encodes the frame, refusing one over the limit.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let bytes = postcard::to_stdvec(self)?;
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { bytes: bytes.len() });
        }
        Ok(bytes)
    }

    /// Decodes a peer's frame, refusing one over the limit before parsing.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { bytes: bytes.len() });
        }
        Ok(postcard::from_bytes(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = Frame::Notice {
            from: NodeId(7),
            body: Notice::Heartbeat {
                available: Resources::cpus(2.0).with("special", 1.0),
                load: Load {
                    tasks_running: 3,
                    ..Load::default()
                },
                sent_at_micros: 5,
            },
        };
        let bytes = frame.encode().unwrap();
        match Frame::decode(&bytes).unwrap() {
            Frame::Notice {
                from,
                body:
                    Notice::Heartbeat {
                        available,
                        load,
                        sent_at_micros: 5,
                    },
            } => {
                assert_eq!(from, NodeId(7));
                assert_eq!(available.custom["special"], 1.0);
                assert_eq!(load.tasks_running, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_oversize_frames_are_errors_not_panics() {
        assert!(matches!(
            Frame::decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(Frame::decode(&[]), Err(FrameError::Malformed(_))));
        let huge = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            Frame::decode(&huge),
            Err(FrameError::TooLarge { .. })
        ));
        let big = Frame::Request {
            id: 1,
            from: NodeId(1),
            body: Request::CallActor {
                actor: ActorId {
                    node: NodeId(1),
                    seq: 1,
                },
                method: "m".into(),
                args: Encoded::plain(vec![0; MAX_FRAME_BYTES]),
            },
        };
        assert!(matches!(big.encode(), Err(FrameError::TooLarge { .. })));
    }
}
