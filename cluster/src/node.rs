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
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeServer, NodeServerMessage};
use tokio::sync::{mpsc, watch};
use troupe_core::error::{ActorError, Failure};
use troupe_core::remote::{
    ClusterEvent, Placement, PlacementDecision, PlacementRequest, RemoteExecutor, RemoteOutcome,
    RemoteSpawn, StopHow,
};
use troupe_core::runtime::{RunningService, RuntimeService, ServiceError, WeakRuntime};
use troupe_core::task::TaskSpec;
use troupe_core::SpawnError;
use troupe_core::{
    ActorId, ActorInfo, Blob, Cause, ClusterSeams, Config, NodeId, ObjectDirectory, ObjectError,
    ObjectId, Resources, Runtime,
};

use crate::agent::{agent_name, Agent, AgentMessage, Inbound, Transport, TransportError};
use crate::cookie;
use crate::data_path::{DataClient, DataError, DataLimits, DataServer};
use crate::membership::{Change, Detector, Directory};
use crate::placement::Placer;
use crate::protocol::{
    Frame, Hello, Load, Member, MemberState, Notice, Reply, Request, Role, PROTOCOL_VERSION,
};
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
    /// The shared secret; `None`: `TROUPE_COOKIE`, `TROUPE_COOKIE_FILE`,
    /// then the cookie file in the state directory (a head creates one).
    pub cookie: Option<String>,
    /// The failure detector's timings.
    pub detector: Detector,
    /// This program's build (`None` only for a head that runs no user code:
    /// the first node to join then sets the cluster's build).
    pub build_id: Option<u64>,
    /// How long to wait for the head (or a peer) to answer.
    pub connect_timeout: Duration,
    /// Where the cookie and node files live (default `$TROUPE_HOME`, else
    /// `~/.troupe`).
    pub state_dir: Option<PathBuf>,
    /// The data path's limits.
    pub data: DataLimits,
}

impl ClusterOptions {
    fn new(role: Role, head: Option<String>) -> Self {
        ClusterOptions {
            role,
            head,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise: None,
            port: if role == Role::Head { DEFAULT_PORT } else { 0 },
            data_port: 0,
            cookie: None,
            detector: Detector::default(),
            build_id: Some(troupe_core::registry::build_id()),
            connect_timeout: Duration::from_secs(10),
            state_dir: None,
            data: DataLimits::default(),
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
    head: OnceLock<NodeId>,
    /// The last directory (the head's own, on the head).
    view: RwLock<Vec<Member>>,
    last_directory: Mutex<Instant>,
    directory: Mutex<Option<Directory>>,
    /// Members this node has published `NodeUp` for.
    announced: Mutex<std::collections::HashSet<NodeId>>,
    placer: Placer,
    /// Why the node stopped being part of the cluster, once it has.
    ended: watch::Sender<Option<String>>,
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
                head: OnceLock::new(),
                view: RwLock::new(Vec::new()),
                last_directory: Mutex::new(Instant::now()),
                directory: Mutex::new(None),
                announced: Mutex::new(Default::default()),
                placer: Placer::default(),
                ended: watch::channel(None).0,
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
        self.shared.head.get().is_some() && !self.shared.is_ended()
    }

    /// The head's node id, once joined.
    pub fn head(&self) -> Option<NodeId> {
        self.shared.head.get().copied()
    }

    /// Resolves once this node is no longer part of the cluster (stopped
    /// by `troupe stop`, or the head was lost), with why.
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

    /// Asks the head for the members (what `troupe status` shows).
    pub async fn status(&self) -> Result<Vec<Member>, ClusterError> {
        let head = self
            .shared
            .head
            .get()
            .copied()
            .ok_or(ClusterError::NotJoined)?;
        match self.request(head, Request::Status).await? {
            Reply::Status(members) => Ok(members),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Asks the head to stop every node and itself (`troupe stop`).
    pub async fn stop_cluster(&self) -> Result<(), ClusterError> {
        let head = self
            .shared
            .head
            .get()
            .copied()
            .ok_or(ClusterError::NotJoined)?;
        match self.request(head, Request::StopCluster).await? {
            Reply::Ok => Ok(()),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    async fn request(&self, node: NodeId, body: Request) -> Result<Reply, ClusterError> {
        let transport = self.shared.transport.get().ok_or(ClusterError::NotJoined)?;
        Ok(transport
            .request(node, body, self.shared.options.connect_timeout)
            .await?)
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
            return Err(ObjectError::Lost { id, node: owner });
        }
        let Some(transport) = self.transport.get() else {
            return Err(ObjectError::Unknown(id));
        };
        match transport
            .request(owner, Request::Locate(id), self.options.connect_timeout)
            .await
        {
            Ok(Reply::Location(Ok(None))) => Ok(owner),
            Ok(Reply::Location(Ok(Some(node)))) => Ok(node),
            Ok(Reply::Location(Err(err))) => Err(err),
            Ok(other) => Err(ObjectError::Fetch {
                id,
                reason: format!("its owner answered {other:?}"),
            }),
            Err(TransportError::NodeDied(_)) => Err(ObjectError::Lost { id, node: owner }),
            Err(err) => Err(ObjectError::Fetch {
                id,
                reason: format!("its owner {owner}: {err}"),
            }),
        }
    }

    /// Pulls `id`'s bytes from `node` over the data path.
    async fn pull(&self, id: ObjectId, node: NodeId) -> Result<Blob, ObjectError> {
        let Some(member) = self.member(node) else {
            return Err(ObjectError::Fetch {
                id,
                reason: format!("node {node}, which holds it, is not a member this node knows"),
            });
        };
        if departed(&member) {
            return Err(ObjectError::Lost { id, node });
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
            // Died while we pulled? Then it is lost, not a glitch.
            Err(_) if self.member(node).is_some_and(|m| departed(&m)) => {
                Err(ObjectError::Lost { id, node })
            }
            Err(err) => Err(ObjectError::Fetch {
                id,
                reason: err.to_string(),
            }),
        }
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

    /// Takes a new directory: publishes what changed to this runtime.
    fn apply_view(&self, members: Vec<Member>) {
        *lock(&self.last_directory) = Instant::now();
        let me = self.me();
        let old = std::mem::replace(&mut *write(&self.view), members.clone());
        let Some(rt) = self.runtime() else { return };
        let was = |node: NodeId| old.iter().find(|m| m.hello.node == node);
        for m in &members {
            let node = m.hello.node;
            if Some(node) == me || m.hello.role == Role::Client {
                continue;
            }
            let departed = matches!(m.state, MemberState::Dead | MemberState::Left);
            let was_departed = was(node)
                .map(|o| matches!(o.state, MemberState::Dead | MemberState::Left))
                .unwrap_or(false);
            let known = was(node).is_some();
            if departed && !was_departed && (known || m.state == MemberState::Dead) {
                if let Some(t) = self.transport.get() {
                    t.peer_down(node);
                }
                let reason = match m.state {
                    MemberState::Left => "left the cluster".to_owned(),
                    _ => "declared dead by the head's failure detector".to_owned(),
                };
                metrics::counter!("troupe_cluster_nodes_down_total").increment(1);
                rt.publish(ClusterEvent::NodeDown { node, reason });
            } else if !departed {
                // Announced once a session to it is up (work can go there);
                // else when it comes up (`Inbound::PeerUp`).
                self.announce(&rt, m);
            }
        }
        let alive = members
            .iter()
            .filter(|m| m.state == MemberState::Alive && m.hello.role != Role::Client)
            .count();
        metrics::gauge!("troupe_cluster_nodes_alive").set(alive as f64);
    }

    /// Publishes `NodeUp` for `m` once: when it is alive in the view and
    /// this node has a session to it.
    fn announce(&self, rt: &Runtime, m: &Member) {
        let node = m.hello.node;
        let connected = self.transport.get().is_some_and(|t| t.connected(node));
        if m.state != MemberState::Alive || !connected {
            return;
        }
        if lock(&self.announced).insert(node) {
            metrics::counter!("troupe_cluster_nodes_up_total").increment(1);
            rt.publish(ClusterEvent::NodeUp {
                node,
                resources: m.hello.resources.clone(),
            });
        }
    }

    fn load(&self) -> (Resources, Load) {
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
            },
        )
    }

    /// On the head: acts on the directory's changes.
    fn head_changes(&self, changes: Vec<Change>) {
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
                Change::Dead(node, why) => tracing::warn!(%node, %why, "node declared dead"),
                Change::Left(node) => tracing::info!(%node, "node left"),
            }
        }
        self.broadcast_directory();
    }

    /// On the head: sends the directory to every live member.
    fn broadcast_directory(&self) {
        let members = match lock(&self.directory).as_ref() {
            Some(d) => d.members(),
            None => return,
        };
        self.apply_view(members.clone());
        let Some(transport) = self.transport.get() else {
            return;
        };
        for m in &members {
            if m.hello.node == transport.me()
                || matches!(m.state, MemberState::Dead | MemberState::Left)
            {
                continue;
            }
            let _ = transport.notify(m.hello.node, Notice::Directory(members.clone()));
        }
    }

    fn handle(self: &Arc<Self>, inbound: Inbound) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        match inbound {
            Inbound::PeerUp(node) => {
                tracing::debug!(%node, "session up");
                if let (Some(rt), Some(m)) = (self.runtime(), self.member(node)) {
                    if m.hello.role != Role::Client {
                        self.announce(&rt, &m);
                    }
                }
            }
            Inbound::PeerDown(node) => {
                tracing::debug!(%node, "session down");
                let changes = lock(&self.directory)
                    .as_mut()
                    .map(|d| d.session_closed(node))
                    .unwrap_or_default();
                self.head_changes(changes);
            }
            Inbound::Frame(frame) => match *frame {
                Frame::Reply { id, body } => transport.complete(id, body),
                Frame::Notice { from, body } => self.notice(from, body),
                // An actor call enters the actor's mailbox now, in the
                // order calls arrived (the caller sent them in order); only
                // waiting for its reply runs apart.
                Frame::Request {
                    id,
                    from,
                    body:
                        Request::CallActor {
                            actor,
                            method,
                            args,
                        },
                } => {
                    let Some(rt) = self.runtime() else {
                        transport.reply(
                            from,
                            id,
                            Reply::Refused("this node is shutting down".into()),
                        );
                        return;
                    };
                    let reply = rt.call_by_name(actor, &method, &args);
                    tokio::spawn(async move {
                        transport.reply(from, id, Reply::Actor(reply.await));
                    });
                }
                Frame::Request { id, from, body } => {
                    let shared = self.clone();
                    tokio::spawn(async move {
                        let reply = shared.answer(from, body).await;
                        transport.reply(from, id, reply);
                    });
                }
            },
        }
    }

    fn notice(self: &Arc<Self>, from: NodeId, body: Notice) {
        match body {
            Notice::Heartbeat { available, load } => {
                let mut directory = lock(&self.directory);
                if let Some(d) = directory.as_mut() {
                    let changes = d.heartbeat(from, available, load, Instant::now());
                    drop(directory);
                    self.head_changes(changes);
                }
            }
            Notice::Directory(members) => {
                if Some(from) == self.head.get().copied() {
                    self.apply_view(members);
                }
            }
            Notice::Leave => {
                let mut directory = lock(&self.directory);
                if let Some(d) = directory.as_mut() {
                    let changes = d.leave(from, Instant::now());
                    drop(directory);
                    self.head_changes(changes);
                }
            }
            Notice::Stop => {
                if Some(from) == self.head.get().copied() {
                    self.end("stopped by `troupe stop`".to_owned());
                }
            }
            Notice::Released { id } => {
                if let Some(rt) = self.runtime() {
                    rt.objects().remove_borrower(id, from);
                }
            }
        }
    }

    async fn answer(self: &Arc<Self>, from: NodeId, body: Request) -> Reply {
        let Some(rt) = self.runtime() else {
            return Reply::Refused("this node is shutting down".to_owned());
        };
        match body {
            Request::RunTask(spec) => {
                let span = tracing::info_span!("remote_task", task = %spec.id, owner = %from);
                let _ = span.enter();
                Reply::Task(rt.run_spec(spec).await)
            }
            Request::CallActor {
                actor,
                method,
                args,
            } => Reply::Actor(rt.call_by_name(actor, &method, &args).await),
            Request::Join(hello) => {
                let result = match lock(&self.directory).as_mut() {
                    Some(d) => d.join(hello, Instant::now()),
                    None => Err("this node is not the head".to_owned()),
                };
                match result {
                    Ok((welcome, changes)) => {
                        self.head_changes(changes);
                        Reply::Welcome(welcome)
                    }
                    Err(why) => {
                        tracing::warn!(%from, %why, "join refused");
                        Reply::Refused(why)
                    }
                }
            }
            Request::SpawnActor(request) => Reply::Spawned(rt.spawn_requested(request).await),
            Request::StopActor { actor, how } => {
                rt.stop_requested(actor, how).await;
                Reply::Ok
            }
            Request::FindActor(name) => Reply::Found(rt.named_actor(&name)),
            Request::Locate(id) => {
                Reply::Location(rt.objects().location(id).ok_or(ObjectError::Unknown(id)))
            }
            Request::Status => match lock(&self.directory).as_ref() {
                Some(d) => Reply::Status(d.members()),
                None => Reply::Status(read(&self.view).clone()),
            },
            Request::StopCluster => {
                let Some(transport) = self.transport.get() else {
                    return Reply::Refused("not started".to_owned());
                };
                let members = match lock(&self.directory).as_ref() {
                    Some(d) => d.members(),
                    None => return Reply::Refused("this node is not the head".to_owned()),
                };
                for m in members {
                    if m.hello.node != transport.me() && m.hello.node != from {
                        let _ = transport.notify(m.hello.node, Notice::Stop);
                    }
                }
                let shared = self.clone();
                tokio::spawn(async move {
                    // Let the reply and the stops go out first.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    shared.end("stopped by `troupe stop`".to_owned());
                });
                Reply::Ok
            }
        }
    }
}

/// Core's seams over the cluster.
struct Seams(Arc<Shared>);

impl Placement for Seams {
    fn place(&self, request: &PlacementRequest<'_>) -> PlacementDecision {
        let shared = &self.0;
        let Some(me) = shared.me() else {
            return PlacementDecision::Wait;
        };
        if shared.is_ended() {
            return if request.feasible_here {
                PlacementDecision::Here
            } else {
                PlacementDecision::Infeasible
            };
        }
        let view = read(&shared.view);
        // Only nodes this one has a session to can be sent work.
        let transport = shared.transport.get();
        let reachable: Vec<Member> = view
            .iter()
            .filter(|m| m.hello.node == me || transport.is_some_and(|t| t.connected(m.hello.node)))
            .cloned()
            .collect();
        let decision = shared.placer.place(me, &reachable, request);
        if let PlacementDecision::Node(node) = decision {
            metrics::counter!("troupe_cluster_tasks_sent_total").increment(1);
            tracing::trace!(task = %request.spec.id, %node, "placed elsewhere");
        }
        decision
    }
}

impl RemoteExecutor for Seams {
    fn run_task(&self, node: NodeId, spec: TaskSpec) -> BoxFuture<'static, RemoteOutcome> {
        let shared = self.0.clone();
        Box::pin(async move {
            let Some(transport) = shared.transport.get().cloned() else {
                return RemoteOutcome::Failed(Failure::NodeDied(node));
            };
            let task = spec.id;
            match transport
                .request(node, Request::RunTask(spec), shared.options.connect_timeout)
                .await
            {
                Ok(Reply::Task(outcome)) => outcome,
                Ok(other) => RemoteOutcome::Failed(Failure::Error(Cause::new(
                    ClusterError::Protocol(format!("task {task}: unexpected reply {other:?}")),
                ))),
                Err(TransportError::NodeDied(_) | TransportError::NoSession(_)) => {
                    RemoteOutcome::Failed(Failure::NodeDied(node))
                }
                Err(err) => {
                    RemoteOutcome::Failed(Failure::Error(Cause::new(ClusterError::Transport(err))))
                }
            }
        })
    }

    fn call_actor(
        &self,
        node: NodeId,
        actor: ActorId,
        method: &str,
        args: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, ActorError>> {
        let shared = self.0.clone();
        let method = method.to_owned();
        let died = move |reason: String, method: String| ActorError::ActorDied {
            actor: Arc::new(ActorInfo {
                id: actor,
                name: None,
                type_name: "remote".into(),
                node,
                resources: Resources::default(),
                gpu_ids: Vec::new(),
            }),
            method: method.into(),
            reason,
        };
        let Some(transport) = shared.transport.get().cloned() else {
            let err = died("this node is not in a cluster".into(), method);
            return Box::pin(async move { Err(err) });
        };
        let body = Request::CallActor {
            actor,
            method: method.clone(),
            args,
        };
        // Sent now when a session is up, so that calls made one after
        // another run in that order (as local calls do).
        // No session: its node is gone (handles are made while it is up).
        let sent = transport.send_request(node, body);
        Box::pin(async move {
            let reply = match sent {
                Ok(reply) => reply.await,
                Err(err) => Err(err),
            };
            match reply {
                Ok(Reply::Actor(result)) => result,
                Ok(other) => Err(died(format!("unexpected reply {other:?}"), method)),
                Err(err) => Err(died(err.to_string(), method)),
            }
        })
    }

    fn spawn_actor(
        &self,
        node: Option<NodeId>,
        request: RemoteSpawn,
    ) -> BoxFuture<'static, Result<ActorInfo, SpawnError>> {
        Box::pin(Seams::spawn_on(self.0.clone(), node, request))
    }

    fn stop_actor(&self, node: NodeId, actor: ActorId, how: StopHow) -> BoxFuture<'static, ()> {
        let shared = self.0.clone();
        Box::pin(async move {
            let Some(transport) = shared.transport.get().cloned() else {
                return;
            };
            let request = Request::StopActor { actor, how };
            // A node that is gone took its actor with it: nothing to wait for.
            let _ = transport
                .request(node, request, shared.options.connect_timeout)
                .await;
        })
    }

    fn find_actor(&self, name: &str) -> BoxFuture<'static, Option<ActorInfo>> {
        let shared = self.0.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let transport = shared.transport.get().cloned()?;
            let asks = transport.peers().into_iter().map(|node| {
                let transport = transport.clone();
                let request = Request::FindActor(name.clone());
                let timeout = shared.options.connect_timeout;
                async move { transport.request(node, request, timeout).await }
            });
            futures::future::join_all(asks)
                .await
                .into_iter()
                .find_map(|reply| match reply {
                    Ok(Reply::Found(found)) => found,
                    _ => None,
                })
        })
    }
}

impl Seams {
    async fn spawn_on(
        shared: Arc<Shared>,
        node: Option<NodeId>,
        request: RemoteSpawn,
    ) -> Result<ActorInfo, SpawnError> {
        let (Some(transport), Some(rt)) = (shared.transport.get().cloned(), shared.runtime())
        else {
            return Err(SpawnError::Remote {
                node,
                reason: "this node is not part of a cluster".to_owned(),
            });
        };
        let me = transport.me();
        let target = match node {
            Some(node) => node,
            None => {
                let view = read(&shared.view).clone();
                let reachable: Vec<Member> = view
                    .into_iter()
                    .filter(|m| m.hello.node == me || transport.connected(m.hello.node))
                    .collect();
                crate::placement::place_actor(me, &reachable, request.options.get_resources())
                    .ok_or_else(|| SpawnError::Remote {
                        node: None,
                        reason: format!(
                            "no node can hold an actor needing {:?}",
                            request.options.get_resources()
                        ),
                    })?
            }
        };
        if target == me {
            return rt.spawn_requested(request).await;
        }
        match transport
            .request(
                target,
                Request::SpawnActor(request),
                shared.options.connect_timeout,
            )
            .await
        {
            Ok(Reply::Spawned(result)) => result,
            Ok(other) => Err(SpawnError::Remote {
                node: Some(target),
                reason: format!("unexpected reply {other:?}"),
            }),
            Err(err) => Err(SpawnError::Remote {
                node: Some(target),
                reason: err.to_string(),
            }),
        }
    }
}

impl ObjectDirectory for Seams {
    fn fetch(
        &self,
        id: ObjectId,
        location: Option<NodeId>,
    ) -> BoxFuture<'static, Result<Blob, ObjectError>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let span = tracing::debug_span!("fetch", object = %id);
            let _ = span.enter();
            // Where it was last heard of, unless that is its owner: then ask
            // the owner (it may hold the value, or know where it was made).
            // Twice at most: a result may move from its owner to the node
            // that made it while we ask.
            for attempt in 0..2 {
                let node = match location {
                    Some(node) if node != id.node && attempt == 0 => node,
                    _ => shared.locate(id).await?,
                };
                let got = shared.pull(id, node).await;
                match got {
                    Err(ObjectError::Unknown(_)) if attempt == 0 => continue,
                    other => return other,
                }
            }
            Err(ObjectError::Fetch {
                id,
                reason: "its owner kept pointing elsewhere".to_owned(),
            })
        })
    }

    fn released(&self, id: ObjectId, location: Option<NodeId>) {
        let shared = &self.0;
        let node = location.unwrap_or(id.node);
        if let Some(transport) = shared.transport.get() {
            if node != transport.me() {
                let _ = transport.notify(node, Notice::Released { id });
            }
        }
    }
}

/// The runtime service that runs a [`ClusterNode`].
#[derive(Clone)]
pub struct NodeService(Arc<Shared>);

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService")
            .field("role", &self.0.options.role)
            .field("head", &self.0.options.head)
            .finish()
    }
}

/// The service's name in `Runtime::services`.
pub const SERVICE_NAME: &str = "cluster";

impl RuntimeService for NodeService {
    fn name(&self) -> &str {
        SERVICE_NAME
    }

    fn start(
        &self,
        runtime: &Runtime,
    ) -> BoxFuture<'static, Result<Box<dyn RunningService>, ServiceError>> {
        let shared = self.0.clone();
        let rt = runtime.clone();
        Box::pin(async move {
            if NODE_IN_PROCESS.swap(true, Ordering::SeqCst) {
                return Err(Box::new(ClusterError::OnePerProcess) as ServiceError);
            }
            match start(shared, rt).await {
                Ok(running) => Ok(Box::new(running) as Box<dyn RunningService>),
                Err(err) => {
                    NODE_IN_PROCESS.store(false, Ordering::SeqCst);
                    Err(Box::new(err) as ServiceError)
                }
            }
        })
    }
}

/// Session events from ractor_cluster, forwarded to the node.
struct SessionEvents(mpsc::UnboundedSender<SessionEvent>);

#[derive(Debug)]
enum SessionEvent {
    Authenticated,
    Closed { peer: Option<String> },
}

impl ractor_cluster::NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Closed {
            peer: ses.peer_name.map(|n| n.name),
        });
    }
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Authenticated);
    }
}

fn free_port(bind: IpAddr) -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind((bind, 0)).map_err(|source| ClusterError::Bind {
        addr: SocketAddr::new(bind, 0).to_string(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| ClusterError::Bind {
            addr: SocketAddr::new(bind, 0).to_string(),
            source,
        })
}

struct Running {
    shared: Arc<Shared>,
    server: ActorRef<NodeServerMessage>,
    agent: ActorRef<AgentMessage>,
    data_server: DataServer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: String,
}

async fn start(shared: Arc<Shared>, rt: Runtime) -> Result<Running, ClusterError> {
    let options = shared.options.clone();
    let me = rt.node_id();
    let _ = shared.runtime.set(rt.downgrade());
    let transport = Transport::new(me);
    let _ = shared.transport.set(transport.clone());
    let state_dir = cookie::state_dir(options.state_dir.as_deref());
    let cookie = cookie::resolve(
        options.cookie.clone(),
        &state_dir,
        options.role == Role::Head,
    )?;

    // The control server (ractor_cluster) and its session events.
    let port = if options.port == 0 {
        free_port(options.bind)?
    } else {
        options.port
    };
    let host = options.advertised_host();
    let server = NodeServer::new(
        port,
        cookie,
        format!("troupe-{}", me.0),
        host.clone(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(options.bind)
    .with_max_inbound_frame_size(2 * crate::protocol::MAX_FRAME_BYTES as u64);
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| ClusterError::Start(format!("the control server: {e}")))?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let _ = server.cast(NodeServerMessage::SubscribeToEvents {
        id: "troupe".to_owned(),
        subscription: Box::new(SessionEvents(events_tx)),
    });

    // The agent.
    // Weak: the agent must not keep the node alive.
    let handler = Arc::downgrade(&shared);
    let (agent, _) = Actor::spawn(
        Some(agent_name(me)),
        Agent {
            inbound: Arc::new(move |message| {
                if let Some(shared) = handler.upgrade() {
                    shared.handle(message);
                }
            }),
            transport: transport.clone(),
        },
        (),
    )
    .await
    .map_err(|e| ClusterError::Start(format!("the node agent: {e}")))?;

    // The data path.
    let data_server = DataServer::bind(
        SocketAddr::new(options.bind, options.data_port),
        rt.objects().clone(),
        options.data.clone(),
    )
    .await
    .map_err(|source| ClusterError::Bind {
        addr: format!("{}:{}", options.bind, options.data_port),
        source,
    })?;
    let _ = shared
        .data
        .set(DataClient::new(rt.objects().clone(), options.data.clone()));
    let data_addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, data_server.local_addr().port()),
        Err(_) => resolve_host(&host, data_server.local_addr().port()).await?,
    };

    let control_addr = format!("{host}:{port}");
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        build_id: options.build_id.unwrap_or_default(),
        node: me,
        name: rt.config().name.clone(),
        role: options.role,
        control_addr: control_addr.clone(),
        data_addr,
        resources: rt.total_resources(),
        pid: std::process::id(),
    };

    let tasks = Vec::new();

    let mut running = Running {
        shared: shared.clone(),
        server: server.clone(),
        agent: agent.clone(),
        data_server,
        tasks,
        endpoint: control_addr.clone(),
    };

    if options.role == Role::Head {
        let _ = shared.head.set(me);
        *lock(&shared.directory) = Some(Directory::new(
            hello,
            options.build_id,
            options.detector,
            Instant::now(),
        ));
        shared.broadcast_directory();
        let s = shared.clone();
        running.tasks.push(tokio::spawn(head_loop(s)));
        // Session closes feed the detector through pg leaves; drain events.
        running.tasks.push(tokio::spawn(async move {
            while events.recv().await.is_some() {}
        }));
        cookie::write_head_address(&state_dir, &control_addr);
    } else {
        let Some(head_addr) = options.head.clone() else {
            return Err(ClusterError::Start("no head address to join".to_owned()));
        };
        let head = match join(&shared, &server, &mut events, &head_addr, hello).await {
            Ok(head) => head,
            Err(err) => {
                running.stop_now();
                return Err(err);
            }
        };
        let _ = shared.head.set(head);
        running.tasks.push(tokio::spawn(async move {
            while events.recv().await.is_some() {}
        }));
        if options.role != Role::Client {
            running
                .tasks
                .push(tokio::spawn(member_loop(shared.clone())));
        }
    }
    if options.role != Role::Client {
        cookie::write_node_file(&state_dir, me, options.role, &control_addr);
    }
    *lock(&CURRENT) = Some(Arc::downgrade(&shared));
    tracing::info!(node = %me, role = ?options.role, address = %control_addr, "cluster node started");
    Ok(running)
}

async fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, ClusterError> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ClusterError::Bind {
            addr: format!("{host}:{port}"),
            source,
        })?;
    addrs
        .next()
        .ok_or_else(|| ClusterError::Start(format!("{host} resolves to no address")))
}

async fn join(
    shared: &Arc<Shared>,
    server: &ActorRef<NodeServerMessage>,
    events: &mut mpsc::UnboundedReceiver<SessionEvent>,
    head_addr: &str,
    hello: Hello,
) -> Result<NodeId, ClusterError> {
    let options = &shared.options;
    let deadline = tokio::time::Instant::now() + options.connect_timeout;
    let transport = shared
        .transport
        .get()
        .cloned()
        .ok_or(ClusterError::NotJoined)?;
    let connect = ractor_cluster::client_connect(server, head_addr.to_owned());
    match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            return Err(ClusterError::Unreachable {
                addr: head_addr.to_owned(),
                reason: err.to_string(),
            })
        }
        Err(_) => {
            return Err(ClusterError::Unreachable {
                addr: head_addr.to_owned(),
                reason: format!("no answer within {:?}", options.connect_timeout),
            })
        }
    }
    // The head's agent is the first (and only) peer to appear; a session
    // closed before it authenticated means the cookie was refused.
    let mut authenticated = false;
    let head = loop {
        if let Some(node) = transport.peers().first().copied() {
            break node;
        }
        let wait = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                event = events.recv() => Some(event),
                _ = tokio::time::sleep(Duration::from_millis(5)) => None,
            }
        })
        .await;
        match wait {
            Err(_) => {
                return Err(ClusterError::Unreachable {
                    addr: head_addr.to_owned(),
                    reason: format!(
                        "connected, but no Troupe head answered within {:?}",
                        options.connect_timeout
                    ),
                })
            }
            Ok(Some(Some(SessionEvent::Authenticated))) => authenticated = true,
            Ok(Some(Some(SessionEvent::Closed { .. }))) if !authenticated => {
                return Err(ClusterError::CookieRefused {
                    addr: head_addr.to_owned(),
                })
            }
            Ok(Some(Some(SessionEvent::Closed { peer }))) => {
                return Err(ClusterError::Unreachable {
                    addr: head_addr.to_owned(),
                    reason: format!("the session to {peer:?} closed while joining"),
                })
            }
            Ok(_) => {}
        }
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let reply = transport
        .request(
            head,
            Request::Join(hello),
            remaining.max(Duration::from_millis(100)),
        )
        .await?;
    let welcome = match reply {
        Reply::Welcome(welcome) => welcome,
        Reply::Refused(why) => return Err(ClusterError::Refused(why)),
        other => {
            return Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            )))
        }
    };
    if welcome.head != head {
        return Err(ClusterError::Protocol(format!(
            "the node at {head_addr} is not the head (the head is {})",
            welcome.head
        )));
    }
    let me = transport.me();
    let others: Vec<(NodeId, String)> = welcome
        .members
        .iter()
        .filter(|m| {
            m.hello.node != me
                && m.hello.node != head
                && m.hello.role != Role::Client
                && m.state == MemberState::Alive
        })
        .map(|m| (m.hello.node, m.hello.control_addr.clone()))
        .collect();
    // Clients talk to the head only; nodes connect to every earlier member
    // (later ones connect to them), and are ready once those sessions are.
    if shared.options.role != Role::Client {
        for (_, addr) in &others {
            if let Err(err) = ractor_cluster::client_connect(server, addr.clone()).await {
                tracing::warn!(%addr, %err, "could not reach a member");
            }
        }
        let sessions = others.iter().map(|(node, _)| {
            let transport = transport.clone();
            let timeout = options.connect_timeout;
            async move { (*node, transport.session(*node, timeout).await) }
        });
        for (node, session) in futures::future::join_all(sessions).await {
            if let Err(err) = session {
                tracing::warn!(%node, %err, "no session to a member yet");
            }
        }
    }
    shared.apply_view(welcome.members);
    Ok(head)
}

/// The head: applies the detector, counts itself, and sends the directory.
async fn head_loop(shared: Arc<Shared>) {
    let detector = shared.options.detector;
    let tick = (detector.heartbeat / 2).max(Duration::from_millis(10));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_broadcast = Instant::now();
    let mut last_tick = Instant::now();
    loop {
        interval.tick().await;
        if shared.is_ended() {
            return;
        }
        let stalled = last_tick.elapsed();
        last_tick = Instant::now();
        let (available, load) = shared.load();
        let changes = {
            let mut directory = lock(&shared.directory);
            let Some(d) = directory.as_mut() else { return };
            // The head itself stalled: members' silence meanwhile is not
            // theirs (heartbeats queued unread); nobody dies for it.
            if stalled > detector.suspect_after {
                d.forgive(stalled);
            }
            d.head_heartbeat(available, load, Instant::now());
            d.tick(Instant::now())
        };
        if !changes.is_empty() {
            shared.head_changes(changes);
            last_broadcast = Instant::now();
        } else if last_broadcast.elapsed() >= detector.heartbeat {
            shared.broadcast_directory();
            last_broadcast = Instant::now();
        }
    }
}

/// A member: heartbeats to the head, and watches the head's directory.
async fn member_loop(shared: Arc<Shared>) {
    let detector = shared.options.detector;
    // The head is lost after this much silence (its directory doubles as
    // its heartbeat); twice the death limit, so that a busy head is not
    // abandoned before it would declare anyone dead itself.
    let head_timeout = (detector.dead_after * 2).max(Duration::from_secs(5));
    let mut interval = tokio::time::interval(detector.heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        interval.tick().await;
        if shared.is_ended() {
            return;
        }
        // This node stalled (starved of CPU): the head's silence meanwhile
        // is ours, not its; start counting again.
        let stalled = last_tick.elapsed();
        last_tick = Instant::now();
        if stalled > detector.suspect_after {
            *lock(&shared.last_directory) = Instant::now();
        }
        let (Some(transport), Some(head)) = (shared.transport.get(), shared.head.get().copied())
        else {
            return;
        };
        let (available, load) = shared.load();
        let _ = transport.notify(head, Notice::Heartbeat { available, load });
        let silent = lock(&shared.last_directory).elapsed();
        if silent > head_timeout {
            let why = format!(
                "the head {head} was lost: {:?} node {} heard nothing from it for {} ms",
                shared.options.role,
                transport.me(),
                silent.as_millis()
            );
            tracing::error!(%why, "leaving the cluster");
            // Everything that lived elsewhere is gone for this node.
            if let Some(rt) = shared.runtime() {
                let others: Vec<NodeId> = read(&shared.view)
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
            shared.end(why);
            return;
        }
    }
}

impl Running {
    fn stop_now(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.agent.stop(None);
        self.server.stop(None);
        self.data_server.shutdown();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_now();
        self.shared.end("the node stopped".to_owned());
        NODE_IN_PROCESS.store(false, Ordering::SeqCst);
    }
}

impl RunningService for Running {
    fn endpoint(&self) -> Option<String> {
        Some(self.endpoint.clone())
    }

    fn stop(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // A clean leave: the head records it as one, not a failure.
            if let (Some(transport), Some(head)) =
                (self.shared.transport.get(), self.shared.head.get().copied())
            {
                if head != transport.me() {
                    let _ = transport.notify(head, Notice::Leave);
                    // Give the notice a moment to leave before the session closes.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            self.stop_now();
        })
    }
}
