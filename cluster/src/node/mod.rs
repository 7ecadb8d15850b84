//! A node of a cluster: a runtime service that starts the node's
//! ractor_cluster server, its agent and its data path, joins the head (or
//! is the head), heartbeats, follows the directory, and implements core's
//! seams (placement, remote execution, the object directory) over them.
//!
//! State that decides is elsewhere and pure (`membership`, `placement`);
//! this module is the driver that acts on it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};
use tokio::sync::{mpsc, watch};
use troupe_core::error::{ActorError, Failure};
use troupe_core::placement_group::{NodeRoom, PlacementGroupId};
use troupe_core::remote::{
    ActorOwner, ClusterEvent, Placement, PlacementDecision, PlacementRequest, Relocation,
    RemoteExecutor, RemoteOutcome, RemoteSpawn, ReplicaRequest, StopHow, TaskDone,
};
use troupe_core::runtime::{RunningService, RuntimeService, ServiceError, WeakRuntime};
use troupe_core::task::TaskSpec;
use troupe_core::SpawnError;
use troupe_core::{
    task::TaskId, ActorId, ActorInfo, Cause, ClusterSeams, Config, Encoded, Fetched, NodeId,
    ObjectDirectory, ObjectError, ObjectId, Resources, Runtime, SchedulingStrategy,
};

use crate::agent::{agent_name, Agent, AgentMessage, Inbound};
use crate::cookie;
use crate::data_path::{DataClient, DataError, DataLimits, DataServer};
use crate::link::LinkServer;
use crate::membership::{Change, Detector, Directory};
use crate::placement::Placer;
use crate::protocol::{
    Frame, Hello, Load, Member, MemberState, Notice, Reply, Request, Role, PROTOCOL_VERSION,
};
use crate::transport::{LinkSetup, Timeouts, Transport, TransportError};
use crate::ClusterError;

/// The head's default control port.
pub const DEFAULT_PORT: u16 = 6380;

/// How a node joins (or founds) a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// What this process is.
    pub role: Role,
    /// The head's control address (`host:port`), for all but the head.
    pub head: Option<String>,
    /// The interface to listen on (default loopback; `0.0.0.0` for all).
    pub bind: IpAddr,
    /// The host other nodes reach this one at (default: the bind address,
    /// or this machine's name when bound to all interfaces).
    pub advertise: Option<String>,
    /// The control port (0: any free port).
    pub port: u16,
    /// The data path's port (0: any free port).
    pub data_port: u16,
    /// The control link's port (0: any free port).
    pub link_port: u16,
    /// How long the dispatcher (what carries out work from peers on the
    /// runtime's threads) keeps looking for the next piece of work before
    /// it sleeps, while work comes often (0: never). Default 100 µs, or
    /// `TROUPE_DISPATCH_SPIN_US`. Looking trades a little CPU, while
    /// requests come one at a time, for a wake-up per request; an idle
    /// node never looks.
    pub dispatch_spin: Duration,
    /// The shared secret; `None`: `TROUPE_COOKIE`, `TROUPE_COOKIE_FILE`,
    /// then the cookie file in the state directory (a head creates one).
    pub cookie: Option<String>,
    /// The failure detector's timings.
    pub detector: Detector,
    /// This program's build (`None` only for a head that runs no user code:
    /// the first node to join then sets the cluster's build).
    pub build_id: Option<u64>,
    /// How long to wait for a session to the head (or a peer).
    pub connect_timeout: Duration,
    /// How long a control request (a join, a lookup, an object's location)
    /// waits for its answer. Work (a task, an actor call) waits while its
    /// node is alive instead, and is probed (see the transport).
    pub request_timeout: Duration,
    /// Where the cookie and node files live (default `$TROUPE_HOME`, else
    /// `~/.troupe`).
    pub state_dir: Option<PathBuf>,
    /// The data path's limits.
    pub data: DataLimits,
    /// The directory of this node's TLS files (`ca.pem`, `node.pem`,
    /// `node.key`; see [`crate::tls`]): TLS with mutual authentication on
    /// every session, link and data connection. Default `TROUPE_TLS_DIR`;
    /// `None`: plain TCP, with the cookie still proven both ways.
    pub tls_dir: Option<PathBuf>,
    /// Listen beyond loopback without TLS (refused otherwise).
    pub insecure: bool,
}

/// The environment variable [`ClusterOptions::tls_dir`] defaults to.
pub const TLS_DIR_ENV: &str = "TROUPE_TLS_DIR";

impl ClusterOptions {
    fn new(role: Role, head: Option<String>) -> Self {
        ClusterOptions {
            role,
            head,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise: None,
            port: if role == Role::Head { DEFAULT_PORT } else { 0 },
            data_port: 0,
            link_port: 0,
            dispatch_spin: std::env::var("TROUPE_DISPATCH_SPIN_US")
                .ok()
                .and_then(|us| us.parse().ok())
                .map(Duration::from_micros)
                .unwrap_or(dispatch::DEFAULT_SPIN),
            cookie: None,
            detector: Detector::default(),
            build_id: Some(troupe_core::registry::build_id()),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            state_dir: None,
            data: DataLimits::default(),
            tls_dir: std::env::var_os(TLS_DIR_ENV).map(PathBuf::from),
            insecure: false,
        }
    }

    /// Options for the head.
    pub fn head() -> Self {
        Self::new(Role::Head, None)
    }

    /// Options for a worker node joining the head at `address`.
    pub fn worker(address: impl Into<String>) -> Self {
        Self::new(Role::Worker, Some(address.into()))
    }

    /// Options for a driver joining the head at `address`.
    pub fn driver(address: impl Into<String>) -> Self {
        Self::new(Role::Driver, Some(address.into()))
    }

    /// Options for a `troupe status`/`stop` command.
    pub fn client(address: impl Into<String>) -> Self {
        let mut options = Self::new(Role::Client, Some(address.into()));
        options.build_id = None;
        options
    }

    fn advertised_host(&self) -> String {
        if let Some(host) = &self.advertise {
            return host.clone();
        }
        if self.bind.is_unspecified() {
            return hostname();
        }
        self.bind.to_string()
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_owned())
}

/// Only one cluster node per process: ractor's process groups and
/// ractor_cluster's sessions are process-wide.
static NODE_IN_PROCESS: AtomicBool = AtomicBool::new(false);
static CURRENT: Mutex<Option<Weak<Shared>>> = Mutex::new(None);

/// A node of a cluster, before and while it runs: hand its
/// [`seams`](Self::seams) and [`service`](Self::service) to the runtime's
/// [`Config`] (or use [`Self::configure`]).
#[derive(Clone)]
pub struct ClusterNode {
    shared: Arc<Shared>,
}

struct Shared {
    options: ClusterOptions,
    runtime: OnceLock<WeakRuntime>,
    transport: OnceLock<Arc<Transport>>,
    data: OnceLock<DataClient>,
    /// The head's id, once joined (another after a restarted head took
    /// this node back).
    head: RwLock<Option<NodeId>>,
    /// The last directory (the head's own, on the head).
    view: RwLock<Vec<Member>>,
    last_directory: Mutex<Instant>,
    directory: Mutex<Option<Directory>>,
    /// Members this node has published `NodeUp` for.
    announced: Mutex<std::collections::HashSet<NodeId>>,
    placer: Placer,
    /// Work from peers, for the runtime's threads.
    dispatcher: dispatch::Dispatcher,
    /// Why the node stopped being part of the cluster, once it has.
    ended: watch::Sender<Option<String>>,
    /// Whether it ended cut off (declared dead, or the head lost) rather
    /// than stopped.
    cut_off: std::sync::atomic::AtomicBool,
    /// What it proves to peers, once started.
    credentials: OnceLock<crate::tls::Credentials>,
    /// On the head: the number of the last directory sent.
    directory_epoch: std::sync::atomic::AtomicU64,
    /// Elsewhere: the directory being received in parts.
    incoming_directory: Mutex<Option<frames::Assembly>>,
    /// On the head: the jobs it runs.
    jobs: OnceLock<Arc<crate::jobs::Jobs>>,
}

impl ClusterNode {
    /// A node with these options (nothing starts until the runtime does).
    pub fn new(options: ClusterOptions) -> Self {
        ClusterNode {
            shared: Arc::new(Shared {
                options,
                runtime: OnceLock::new(),
                transport: OnceLock::new(),
                data: OnceLock::new(),
                head: RwLock::new(None),
                view: RwLock::new(Vec::new()),
                last_directory: Mutex::new(Instant::now()),
                directory: Mutex::new(None),
                announced: Mutex::new(Default::default()),
                placer: Placer::default(),
                dispatcher: Default::default(),
                ended: watch::channel(None).0,
                cut_off: Default::default(),
                credentials: OnceLock::new(),
                directory_epoch: Default::default(),
                incoming_directory: Mutex::new(None),
                jobs: OnceLock::new(),
            }),
        }
    }

    /// `config` with this node's seams and service.
    pub fn configure(&self, config: Config) -> Config {
        config.cluster(self.seams()).service(self.service())
    }

    /// The seams core calls.
    pub fn seams(&self) -> ClusterSeams {
        ClusterSeams {
            placement: Some(Arc::new(Seams(self.shared.clone()))),
            executor: Some(Arc::new(Seams(self.shared.clone()))),
            objects: Some(Arc::new(Seams(self.shared.clone()))),
            inspector: Some(Arc::new(inspect::Inspector(self.shared.clone()))),
        }
    }

    /// The service that runs the node beside its runtime.
    pub fn service(&self) -> NodeService {
        NodeService(self.shared.clone())
    }

    /// The members as this node last heard of them.
    pub fn members(&self) -> Vec<Member> {
        read(&self.shared.view).clone()
    }

    /// How many nodes that run work (the head and workers, not drivers
    /// or clients) this node last heard of as alive: what a program waits
    /// for before it places work on a cluster it just joined.
    pub fn alive_nodes(&self) -> usize {
        read(&self.shared.view)
            .iter()
            .filter(|m| {
                m.state == crate::MemberState::Alive
                    && matches!(m.hello.role, crate::Role::Head | crate::Role::Worker)
            })
            .count()
    }

    /// The members this node has a session to now.
    pub fn connected(&self) -> Vec<NodeId> {
        self.shared
            .transport
            .get()
            .map(|t| t.peers())
            .unwrap_or_default()
    }

    /// Whether this node is part of its cluster now: joined (or the head)
    /// and not left. What the health endpoint reports.
    pub fn healthy(&self) -> bool {
        self.shared.head().is_some() && !self.shared.is_ended()
    }

    /// The head's node id, once joined.
    pub fn head(&self) -> Option<NodeId> {
        self.shared.head()
    }

    /// Resolves once this node is no longer part of the cluster (stopped
    /// by `troupe stop`, or cut off: declared dead, or refused by its head),
    /// with why.
    pub async fn ended(&self) -> String {
        let mut rx = self.shared.ended.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the node was dropped".to_owned();
            }
        }
    }

    /// Whether this node ended cut off from the cluster (the head declared
    /// it dead, or a head refused to take it back) rather than stopped: a
    /// worker process then starts again as a new node (`troupe start`
    /// does), since the cluster handled its work as lost.
    pub fn was_cut_off(&self) -> bool {
        self.shared.cut_off.load(Ordering::SeqCst)
    }

    /// The head's id, once joined.
    fn head_id(&self) -> Result<NodeId, ClusterError> {
        self.shared.head().ok_or(ClusterError::NotJoined)
    }

    /// Asks the head for the members (what `troupe status` shows).
    pub async fn status(&self) -> Result<Vec<Member>, ClusterError> {
        let head = self.head_id()?;
        match self.request(head, Request::Status).await? {
            Reply::Status(members) => Ok(members),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Asks the head to stop every node and itself (`troupe stop`).
    pub async fn stop_cluster(&self) -> Result<(), ClusterError> {
        let head = self.head_id()?;
        match self.request(head, Request::StopCluster).await? {
            Reply::Ok => Ok(()),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    async fn request(&self, node: NodeId, body: Request) -> Result<Reply, ClusterError> {
        let transport = self.shared.transport.get().ok_or(ClusterError::NotJoined)?;
        Ok(transport.request(node, body).await?)
    }

    /// The node running in this process, if any.
    pub fn current() -> Option<ClusterNode> {
        let current = CURRENT.lock().ok()?;
        let shared = current.as_ref()?.upgrade()?;
        Some(ClusterNode { shared })
    }
}

fn departed(m: &Member) -> bool {
    matches!(m.state, MemberState::Dead | MemberState::Left)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn runtime(&self) -> Option<Runtime> {
        self.runtime.get()?.upgrade()
    }

    fn head(&self) -> Option<NodeId> {
        *read(&self.head)
    }

    fn me(&self) -> Option<NodeId> {
        self.transport.get().map(|t| t.me())
    }

    fn member(&self, node: NodeId) -> Option<Member> {
        read(&self.view)
            .iter()
            .find(|m| m.hello.node == node)
            .cloned()
    }

    /// Asks `id`'s owner where its value is.
    async fn locate(&self, id: ObjectId) -> Result<NodeId, ObjectError> {
        let owner = id.node;
        if self.member(owner).is_some_and(|m| departed(&m)) {
            return Err(ObjectError::owner_died(id));
        }
        let Some(transport) = self.transport.get() else {
            return Err(ObjectError::Unknown(id));
        };
        match transport.request(owner, Request::Locate(id)).await {
            Ok(Reply::Location(Ok(None))) => Ok(owner),
            Ok(Reply::Location(Ok(Some(node)))) => Ok(node),
            Ok(Reply::Location(Err(err))) => Err(err),
            Ok(other) => Err(ObjectError::Fetch {
                id,
                reason: format!("its owner answered {other:?}"),
            }),
            Err(TransportError::NodeDied(_)) => Err(ObjectError::owner_died(id)),
            Err(err) => Err(ObjectError::Fetch {
                id,
                reason: format!("its owner {owner}: {err}"),
            }),
        }
    }

    /// Where replicas of an object `owner` owns, made here, may go, best
    /// first: live members running this program that this node reaches,
    /// not this one, the least memory in use first, the owner last (it
    /// may run short of memory; a copy there survives what the object can).
    fn replica_holders(&self, me: NodeId, owner: NodeId) -> Vec<NodeId> {
        let transport = self.transport.get();
        let build = self.options.build_id;
        let mut holders: Vec<(bool, u64, NodeId)> = read(&self.view)
            .iter()
            .filter(|m| {
                let node = m.hello.node;
                m.state == MemberState::Alive
                    && node != me
                    && Some(m.hello.build_id) == build
                    && transport.is_some_and(|t| t.connected(node))
            })
            .map(|m| (m.hello.node == owner, m.load.object_bytes, m.hello.node))
            .collect();
        holders.sort_unstable();
        holders.into_iter().map(|(.., node)| node).collect()
    }

    /// Pulls `id`'s bytes from `node` over the data path.
    async fn pull(&self, id: ObjectId, node: NodeId) -> Result<Fetched, ObjectError> {
        let Some(member) = self.member(node) else {
            return Err(ObjectError::Fetch {
                id,
                reason: format!("node {node}, which holds it, is not a member this node knows"),
            });
        };
        if departed(&member) {
            return Err(lost_at(id, node));
        }
        let Some(data) = self.data.get() else {
            return Err(ObjectError::Fetch {
                id,
                reason: "the data path is not running".to_owned(),
            });
        };
        match data.pull(member.hello.data_addr, id).await {
            Ok(blob) => Ok(blob),
            Err(DataError::Remote(err)) => Err(err),
            // Died while we pulled? Then it is lost, not a glitch. Nobody
            // listening at its address says so even while this node's links
            // to it still look up (their end is not read yet, under load).
            Err(err) if self.declared_dead(id, node, refused(&err)).await => Err(lost_at(id, node)),
            Err(err) => Err(ObjectError::Fetch {
                id,
                reason: err.to_string(),
            }),
        }
    }

    /// After a failed pull of `id` from `node`: whether `node` died. A
    /// process that died refuses connections and its links end at once,
    /// before the head's verdict: while its links are down, this waits for
    /// the verdict (bounded by the detector's limit), so that the read
    /// becomes a recovery rather than an error. A node still connected had
    /// a glitch (the read tries again), unless it `refused` the connection:
    /// nobody listens there, whatever the links say yet.
    async fn declared_dead(&self, id: ObjectId, node: NodeId, refused: bool) -> bool {
        let dead_after = self
            .options
            .detector
            .dead_after
            .max(Duration::from_millis(1500));
        let deadline = Instant::now() + dead_after * 2 + Duration::from_secs(1);
        loop {
            if self.member(node).is_some_and(|m| departed(&m)) {
                break;
            }
            let connected = self.transport.get().is_some_and(|t| t.connected(node));
            if (connected && !refused) || Instant::now() >= deadline || self.is_ended() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The view says so before the runtime has handled the death: an
        // object of this node is marked lost (and so made again) then.
        let owned = self.transport.get().is_some_and(|t| t.me() == id.node);
        if let (true, Some(rt)) = (owned, self.runtime()) {
            let marked = Instant::now() + Duration::from_secs(1);
            while !matches!(rt.objects().failure(id), Some(ObjectError::Lost { .. }))
                && Instant::now() < marked
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        true
    }

    fn end(&self, why: String) {
        self.ended.send_if_modified(|ended| {
            if ended.is_none() {
                *ended = Some(why);
                true
            } else {
                false
            }
        });
    }

    fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// A member cut off from the cluster (declared dead by the head, or
    /// a head refused to take it back): every other node's work is gone for this
    /// one, as if they had all died, and it stops being a member (a worker
    /// process then rejoins as a new node: `cli/start.rs`).
    fn cut_off(&self, why: String) {
        if self.is_ended() {
            return;
        }
        tracing::error!(%why, "cut off from the cluster: leaving it");
        metrics::counter!("troupe_cluster_cut_off_total").increment(1);
        if let (Some(rt), Some(transport)) = (self.runtime(), self.transport.get()) {
            let others: Vec<NodeId> = read(&self.view)
                .iter()
                .filter(|m| m.hello.node != transport.me() && m.hello.role != Role::Client)
                .map(|m| m.hello.node)
                .collect();
            for node in others {
                transport.peer_down(node);
                rt.publish(ClusterEvent::NodeDown {
                    node,
                    reason: why.clone(),
                });
            }
        }
        self.cut_off.store(true, Ordering::SeqCst);
        self.end(why);
    }
}

mod address;
mod borrows;
mod dispatch;
mod frames;
mod inspect;
mod jobs;
mod lifecycle;
mod member;
mod peers;
mod seams;
mod state;
mod view;

pub use lifecycle::{NodeService, HOLD_IO_ENV, SERVICE_NAME};
use seams::Seams;

#[cfg(test)]
mod tests;

/// `id` was lost with `node`, which held it: its owner makes it again if
/// it can (a read asks the owner again); if `node` was its owner, it cannot.
/// Whether a pull failed because nothing listens at the holder's data
/// address: its process is gone (or another took its port).
fn refused(err: &DataError) -> bool {
    matches!(err, DataError::Connect { source, .. }
        if source.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn lost_at(id: ObjectId, node: NodeId) -> ObjectError {
    if node == id.node {
        return ObjectError::owner_died(id);
    }
    ObjectError::Lost {
        id,
        node,
        why: "its owner did not make it again".to_owned(),
    }
}
