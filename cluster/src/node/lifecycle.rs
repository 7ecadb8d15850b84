//! A node's life: the runtime service that starts its parts and joins
//! (or founds) the cluster, the head's and members' loops, and stopping.
//!
//! The cluster's I/O (ractor_cluster's sessions, the agent, the control
//! links, the data server, heartbeats and the failure detector) runs on a
//! tokio runtime of its own, [`IO_THREADS`] threads that user code never
//! runs on: a task body that blocks every worker of the program's runtime
//! cannot get its healthy node declared dead.

use super::address::{advertised, metrics_target, reachable_bind};
use super::*;
use crate::handshake::HandshakeError;
use crate::session::{self, SessionError, SessionEvent, SessionEvents, SessionServer};
use crate::tls::{Credentials, Tls};

/// Opens a ractor_cluster session to `addr` (node `expect`, when known)
/// through the session port's handshake (`session.rs`), over TLS when this
/// node has it.
pub(super) async fn open_session(
    shared: &Shared,
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    expect: Option<NodeId>,
) -> Result<NodeId, ClusterError> {
    let me = shared
        .transport
        .get()
        .map(|t| t.me())
        .ok_or(ClusterError::NotJoined)?;
    let credentials = shared
        .credentials
        .get()
        .cloned()
        .ok_or(ClusterError::NotJoined)?;
    let timeout = shared.options.connect_timeout;
    session::open(server, addr, me, &credentials, expect, timeout)
        .await
        .map_err(|err| match err {
            SessionError::Handshake(HandshakeError::WrongCookie) => ClusterError::CookieRefused {
                addr: addr.to_owned(),
            },
            other => ClusterError::Unreachable {
                addr: addr.to_owned(),
                reason: other.to_string(),
            },
        })
}

/// The runtime service that runs a [`ClusterNode`].
#[derive(Clone)]
pub struct NodeService(pub(super) Arc<Shared>);

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

/// Threads of the cluster's own I/O runtime.
pub(super) const IO_THREADS: usize = 1;

fn io_runtime() -> Result<tokio::runtime::Runtime, ClusterError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(IO_THREADS)
        .thread_name("troupe-cluster-io")
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Start(format!("its I/O runtime: {e}")))
}

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
            let io = match io_runtime() {
                Ok(io) => io,
                Err(err) => {
                    NODE_IN_PROCESS.store(false, Ordering::SeqCst);
                    return Err(Box::new(err) as ServiceError);
                }
            };
            // Started on the I/O runtime: everything the node spawns runs
            // there.
            hold_io_if_asked(&io);
            let started = match io.spawn(start(shared, rt)).await {
                Ok(started) => started,
                Err(join) => Err(ClusterError::Start(format!("its start task: {join}"))),
            };
            match started {
                Ok(mut running) => {
                    running.io = Some(io);
                    Ok(Box::new(running) as Box<dyn RunningService>)
                }
                Err(err) => {
                    io.shutdown_background();
                    NODE_IN_PROCESS.store(false, Ordering::SeqCst);
                    Err(Box::new(err) as ServiceError)
                }
            }
        })
    }
}

/// A fault for tests (`tests/cluster_correctness.rs`): set to a number of
/// milliseconds, this node's I/O runtime is held that long without a yield
/// (as a long poll would hold it), three times, 2 s apart. Unset, nothing.
pub const HOLD_IO_ENV: &str = "TROUPE_FAULT_HOLD_IO_MS";

fn hold_io_if_asked(io: &tokio::runtime::Runtime) {
    let Some(hold) = std::env::var(HOLD_IO_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
    else {
        return;
    };
    let hold = Duration::from_millis(hold);
    io.spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tracing::warn!(?hold, "holding the cluster's I/O runtime ({HOLD_IO_ENV})");
            std::thread::sleep(hold);
        }
    });
}

/// Session events from ractor_cluster, forwarded to the node.
struct Running {
    /// The cluster's I/O runtime (set once started; shut down last).
    io: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    server: ActorRef<NodeServerMessage>,
    agent: ActorRef<AgentMessage>,
    data_server: DataServer,
    _link_server: LinkServer,
    _session_server: SessionServer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: String,
}

async fn start(shared: Arc<Shared>, rt: Runtime) -> Result<Running, ClusterError> {
    let options = shared.options.clone();
    let me = rt.node_id();
    let _ = shared.runtime.set(rt.downgrade());
    let transport = Transport::new(
        me,
        Timeouts {
            connect: options.connect_timeout,
            request: options.request_timeout,
        },
    );
    let _ = shared.transport.set(transport.clone());
    let lender = Arc::downgrade(&shared);
    transport.set_lend(Arc::new(move |to, refs: &[ObjectId], register| {
        if let Some(shared) = lender.upgrade() {
            shared.lend(to, refs, register);
        }
    }));
    let state_dir = cookie::state_dir(options.state_dir.as_deref());
    let cookie = cookie::resolve(
        options.cookie.clone(),
        &state_dir,
        options.role == Role::Head,
    )?;

    // The control server (ractor_cluster) and its session events.
    let mut options = options;
    options.bind = reachable_bind(&options).await;
    let host = options.advertised_host();
    let tls = match &options.tls_dir {
        Some(dir) => Some(Tls::load(dir)?),
        None if !options.bind.is_loopback() && !options.insecure => {
            return Err(ClusterError::Insecure {
                addr: options.bind.to_string(),
            })
        }
        None => None,
    };
    if tls.is_none() && !options.bind.is_loopback() {
        tracing::warn!(bind = %options.bind, "listening beyond loopback without TLS (--insecure): the cluster's traffic is readable on the network");
    }
    let credentials = Credentials {
        cookie: Arc::from(cookie.as_bytes()),
        tls: tls.clone(),
    };
    let _ = shared.credentials.set(credentials.clone());
    // ractor's own listener: loopback, sealed (`session.rs`); sessions come
    // in through the session port below.
    let sealed = session::sealed()
        .map_err(|e| ClusterError::Start(format!("sealing the session listener: {e}")))?;
    let server = NodeServer::new(
        0,
        cookie,
        format!("troupe-{}", me.0),
        host.clone(),
        Some(ractor_cluster::IncomingEncryptionMode::Tls(sealed)),
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    .with_max_inbound_frame_size(2 * crate::protocol::MAX_FRAME_BYTES as u64);
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| ClusterError::Start(format!("the control server: {e}")))?;
    let observed = Arc::downgrade(&shared);
    let session_server = SessionServer::bind(
        SocketAddr::new(options.bind, options.port),
        me,
        credentials.clone(),
        server.clone(),
        Arc::new(move |request| {
            let shared = observed.upgrade();
            Box::pin(async move {
                match (shared, request) {
                    (Some(s), Request::Status) => {
                        Reply::Status(crate::membership::trim_to_frame(s.members()))
                    }
                    (Some(s), Request::ClusterState(query)) => {
                        Reply::ClusterState(s.gather(query).await)
                    }
                    (None, _) => Reply::Refused("this node is stopping".to_owned()),
                    (Some(_), other) => {
                        Reply::Refused(format!("not a read-only request: {}", other.kind()))
                    }
                }
            })
        }),
    )
    .await
    .map_err(|source| {
        server.stop(None);
        ClusterError::Bind {
            addr: format!("{}:{}", options.bind, options.port),
            source,
        }
    })?;
    let port = session_server.local_addr().port();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let _ = server.cast(NodeServerMessage::SubscribeToEvents {
        id: "troupe".to_owned(),
        subscription: Box::new(SessionEvents(events_tx)),
    });

    // Where frames and peer changes go. Weak: the transport must not keep
    // the node alive.
    let handler = Arc::downgrade(&shared);
    let inbound: Arc<dyn Fn(Inbound) + Send + Sync> = Arc::new(move |message| {
        if let Some(shared) = handler.upgrade() {
            shared.handle(message);
        }
    });

    // The control link's server, before the agent (peers are told where
    // it listens as soon as their sessions come up).
    let deliver_to = Arc::downgrade(&transport);
    let deliver_inbound = inbound.clone();
    let seen_by = Arc::downgrade(&transport);
    let link_server = LinkServer::bind(
        SocketAddr::new(options.bind, options.link_port),
        me,
        credentials.clone(),
        Arc::new(move |from, bytes: &[u8]| {
            if let Some(transport) = deliver_to.upgrade() {
                let source = crate::agent::Source::Link(from);
                crate::agent::deliver(&transport, &*deliver_inbound, source, bytes);
            }
        }),
        Arc::new(move |from, serial, up| {
            if let Some(transport) = seen_by.upgrade() {
                transport.inbound_link(from, serial, up);
            }
        }),
    )
    .await
    .map_err(|source| ClusterError::Bind {
        addr: format!("{}:{}", options.bind, options.link_port),
        source,
    })?;
    let link_addr = advertised(&host, link_server.local_addr().port()).await?;
    transport.set_link(LinkSetup {
        addr: link_addr,
        credentials: credentials.clone(),
        inbound: inbound.clone(),
    });

    // The agent.
    let (agent, _) = Actor::spawn(
        Some(agent_name(me)),
        Agent {
            inbound,
            transport: transport.clone(),
        },
        (),
    )
    .await
    .map_err(|e| ClusterError::Start(format!("the node agent: {e}")))?;

    // The data path.
    let lender = Arc::downgrade(&shared);
    let data_server = DataServer::bind_lending(
        SocketAddr::new(options.bind, options.data_port),
        rt.objects().clone(),
        options.data.clone(),
        credentials.clone(),
        Arc::new(move |to, refs: &[ObjectId], register| {
            if let Some(shared) = lender.upgrade() {
                shared.lend(to, refs, register);
            }
        }),
    )
    .await
    .map_err(|source| ClusterError::Bind {
        addr: format!("{}:{}", options.bind, options.data_port),
        source,
    })?;
    let _ = shared.data.set(DataClient::new(
        rt.objects().clone(),
        options.data.clone(),
        credentials.clone(),
    ));
    let data_addr = advertised(&host, data_server.local_addr().port()).await?;

    let control_addr = format!("{host}:{port}");
    // A metrics service configured before this one has started: its
    // endpoint goes to every member, for Prometheus's discovery.
    let metrics = rt
        .services()
        .into_iter()
        .find(|s| s.name == troupe_core::runtime::METRICS_SERVICE)
        .and_then(|s| s.endpoint)
        .and_then(|endpoint| metrics_target(&endpoint, &host));
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
        metrics,
    };

    // The dispatcher, on the runtime's threads (work that arrived before it
    // started waits in its queue).
    let tasks = vec![rt
        .tokio_handle()
        .spawn(shared.clone().dispatch(options.dispatch_spin))];

    let mut running = Running {
        io: None,
        shared: shared.clone(),
        server: server.clone(),
        agent: agent.clone(),
        data_server,
        _link_server: link_server,
        _session_server: session_server,
        tasks,
        endpoint: control_addr.clone(),
    };

    if options.role == Role::Head {
        *write(&shared.head) = Some(me);
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
        let _ = shared.jobs.set(crate::jobs::Jobs::new(
            &state_dir,
            control_addr.clone(),
            credentials.cookie.clone(),
            options.tls_dir.clone(),
        ));
    } else {
        let Some(head_addr) = options.head.clone() else {
            return Err(ClusterError::Start("no head address to join".to_owned()));
        };
        let hello_again = hello.clone();
        let head = match join(&shared, &server, &mut events, &head_addr, hello).await {
            Ok(head) => head,
            Err(err) => {
                running.stop_now();
                return Err(err);
            }
        };
        *write(&shared.head) = Some(head);
        running.tasks.push(tokio::spawn(async move {
            while events.recv().await.is_some() {}
        }));
        if options.role != Role::Client {
            running.tasks.push(tokio::spawn(super::member::member_loop(
                shared.clone(),
                server.clone(),
                hello_again,
            )));
            running.tasks.push(tokio::spawn(super::peers::redial_loop(
                shared.clone(),
                server.clone(),
            )));
        }
    }
    if options.role != Role::Client {
        cookie::write_node_file(&state_dir, me, options.role, &control_addr);
    }
    *lock(&CURRENT) = Some(Arc::downgrade(&shared));
    tracing::info!(node = %me, role = ?options.role, address = %control_addr, "cluster node started");
    Ok(running)
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
    let connect = open_session(shared, server, head_addr, None);
    let proven = match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(proven)) => proven,
        Ok(Err(err)) => return Err(err),
        Err(_) => {
            return Err(ClusterError::Unreachable {
                addr: head_addr.to_owned(),
                reason: format!("no answer within {:?}", options.connect_timeout),
            })
        }
    };
    // The head's agent is the first (and only) peer to appear.
    let mut authenticated = false;
    let mut peers_changed = transport.watch_peers();
    let head = loop {
        if let Some(node) = transport.peers().first().copied() {
            break node;
        }
        let wait = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                event = events.recv() => Some(event),
                _ = peers_changed.changed() => None,
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
                return Err(ClusterError::Unreachable {
                    addr: head_addr.to_owned(),
                    reason: "the session closed before ractor_cluster established it".to_owned(),
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
    if head != proven {
        return Err(ClusterError::Protocol(format!(
            "the session at {head_addr} proved node {proven}, but node {head} answered on it"
        )));
    }
    let control_addr = hello.control_addr.clone();
    let reply = match tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now() + Duration::from_millis(100)),
        transport.request(head, Request::Join(hello)),
    )
    .await
    {
        Ok(reply) => reply?,
        Err(_) => {
            return Err(ClusterError::Unreachable {
                addr: head_addr.to_owned(),
                reason: format!(
                    "the head did not answer the join within {:?}{}",
                    options.connect_timeout,
                    super::address::loopback_hint(&control_addr, head_addr).await
                ),
            })
        }
    };
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
    // The members are known before any session to them is up: once one
    // is, it may send work at once (a task whose argument it holds), and
    // this node must know where to pull it from.
    shared.apply_view(welcome.members);
    // Clients talk to the head only; nodes connect to every earlier member
    // (later ones connect to them), and are ready once those sessions are.
    if shared.options.role != Role::Client {
        for (node, addr) in &others {
            if let Err(err) = open_session(shared, server, addr, Some(*node)).await {
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
            for (node, silent) in d.silences(Instant::now()) {
                metrics::gauge!("troupe_cluster_heartbeat_age_seconds", "node" => node.to_string())
                    .set(silent.as_secs_f64());
            }
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
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
    }
}

impl RunningService for Running {
    fn endpoint(&self) -> Option<String> {
        Some(self.endpoint.clone())
    }

    fn stop(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // A clean leave: the head records it as one, not a failure.
            if let (Some(transport), Some(head)) = (self.shared.transport.get(), self.shared.head())
            {
                if head != transport.me() {
                    // Answered once the head recorded it: the session may
                    // close after (a head that does not answer in time
                    // sees a failure, not a leave).
                    let leave = transport.request(head, Request::Leave);
                    let _ = tokio::time::timeout(super::frames::STOP_ACK, leave).await;
                }
            }
            self.stop_now();
        })
    }
}
