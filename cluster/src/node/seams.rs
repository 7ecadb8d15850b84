//! Core's seams (placement, remote execution and actors, the object
//! directory) over the cluster's transport and data path.

use tracing::Instrument;

use super::*;

/// Core's seams over the cluster.
pub(super) struct Seams(pub(super) Arc<Shared>);

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
        // Only nodes this one has a session to, that run this program and
        // did not refuse the task, can be sent it.
        let transport = shared.transport.get();
        let build = shared.options.build_id;
        let runs = |m: &Member| {
            let node = m.hello.node;
            (node == me || transport.is_some_and(|t| t.connected(node)))
                && Some(m.hello.build_id) == build
                && !request.excluded.contains(&node)
        };
        let decision = shared.placer.place(me, &view, &runs, request);
        if let PlacementDecision::Node(node) = decision {
            metrics::counter!("troupe_cluster_tasks_sent_total").increment(1);
            tracing::trace!(task = %request.spec.id, %node, "placed elsewhere");
        }
        decision
    }

    fn spill_to(
        &self,
        request: &PlacementRequest<'_>,
        promised: &[(NodeId, Resources)],
    ) -> Option<NodeId> {
        let shared = &self.0;
        let me = shared.me()?;
        if shared.is_ended() {
            return None;
        }
        let view = read(&shared.view);
        let transport = shared.transport.get()?;
        let build = shared.options.build_id;
        let runs = |m: &Member| {
            transport.connected(m.hello.node)
                && Some(m.hello.build_id) == build
                && !request.excluded.contains(&m.hello.node)
        };
        shared.placer.spill_to(me, &view, &runs, request, promised)
    }

    fn nodes(&self) -> Option<Vec<NodeRoom>> {
        let shared = &self.0;
        let me = shared.me()?;
        if shared.is_ended() {
            return None;
        }
        // Live members running this program that this node reaches.
        let transport = shared.transport.get();
        let build = shared.options.build_id;
        let view = read(&shared.view);
        Some(
            view.iter()
                .filter(|m| {
                    let node = m.hello.node;
                    !departed(m)
                        && Some(m.hello.build_id) == build
                        && (node == me || transport.is_some_and(|t| t.connected(node)))
                })
                .map(|m| NodeRoom {
                    node: m.hello.node,
                    free: m.available.clone(),
                })
                .collect(),
        )
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
            let needs = spec.options.needs();
            shared.placer.sent(node, &needs);
            let answer = transport.request(node, Request::RunTask(spec)).await;
            shared.placer.answered(node, &needs);
            outcome_of(task, node, answer)
        })
    }

    fn run_task_then(
        &self,
        node: NodeId,
        spec: TaskSpec,
        runtime: &tokio::runtime::Handle,
        done: TaskDone,
    ) {
        let shared = self.0.clone();
        let Some(transport) = shared.transport.get().cloned() else {
            runtime.spawn(async move { done(RemoteOutcome::Failed(Failure::NodeDied(node))) });
            return;
        };
        let task = spec.id;
        let needs = spec.options.needs();
        shared.placer.sent(node, &needs);
        let on_runtime = runtime.clone();
        let then: crate::transport::Then =
            Box::new(move |answer: Result<Reply, TransportError>| {
                shared.placer.answered(node, &needs);
                let replied = answer.is_ok();
                let outcome = outcome_of(task, node, answer);
                if replied {
                    // From the node's dispatcher, on the runtime's threads.
                    done(outcome);
                } else {
                    // Found wherever it was found (an I/O thread, say): carried
                    // out on the runtime's threads.
                    on_runtime.spawn(async move { done(outcome) });
                }
            });
        if transport.connected(node) {
            transport.send_request_then(node, Request::RunTask(spec), then);
        } else {
            // Not connected yet: wait for its session, as `request` does.
            runtime.spawn(async move {
                then(transport.request(node, Request::RunTask(spec)).await);
            });
        }
    }

    fn call_actor(
        &self,
        node: NodeId,
        actor: ActorId,
        method: &str,
        args: Encoded,
    ) -> BoxFuture<'static, Result<Encoded, ActorError>> {
        let shared = self.0.clone();
        let method = method.to_owned();
        let died = move |reason: String, method: String| ActorError::ActorDied {
            actor: Arc::new(ActorInfo::unknown(actor, node)),
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
            let _ = transport.request(node, request).await;
        })
    }

    fn reserve_bundles(
        &self,
        node: NodeId,
        group: PlacementGroupId,
        bundles: Vec<(usize, Resources)>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let Some(transport) = shared.transport.get().cloned() else {
                return Err("not joined to a cluster".to_owned());
            };
            match transport
                .request(node, Request::ReserveBundles { group, bundles })
                .await
            {
                Ok(Reply::Ok) => Ok(()),
                Ok(Reply::Refused(why)) => Err(why),
                Ok(other) => Err(format!("node {node} answered {other:?}")),
                Err(err) => Err(format!("node {node}: {err}")),
            }
        })
    }

    fn replicate(&self, copy: ReplicaRequest) -> BoxFuture<'static, Vec<NodeId>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let Some(transport) = shared.transport.get().cloned() else {
                return Vec::new();
            };
            let mut candidates = shared
                .replica_holders(transport.me(), copy.owner)
                .into_iter();
            let ask = |node: NodeId| {
                let request = Request::KeepCopy {
                    id: copy.id,
                    owner: copy.owner,
                    function: copy.function.clone(),
                    index: copy.index,
                };
                let transport = transport.clone();
                async move { (node, transport.request(node, request).await) }
            };
            // The first candidates at once; one that cannot keep a copy
            // hands its turn to the next.
            let mut asked: futures::stream::FuturesUnordered<_> = candidates
                .by_ref()
                .take(usize::from(copy.copies))
                .map(ask)
                .collect();
            let mut kept = Vec::new();
            while let Some((node, answer)) = futures::StreamExt::next(&mut asked).await {
                match answer {
                    Ok(Reply::Ok) => kept.push(node),
                    other => {
                        tracing::debug!(object = %copy.id, %node, answer = ?other, "no replica there");
                        if let Some(next) = candidates.next() {
                            asked.push(ask(next));
                        }
                    }
                }
            }
            kept
        })
    }

    fn release_bundles(&self, node: NodeId, group: PlacementGroupId) -> BoxFuture<'static, ()> {
        let shared = self.0.clone();
        Box::pin(async move {
            let Some(transport) = shared.transport.get().cloned() else {
                return;
            };
            // A node that is gone gave its bundles back with its life.
            let _ = transport
                .request(node, Request::ReleaseBundles(group))
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
                async move { transport.request(node, request).await }
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

    fn locate_actor(&self, owner: ActorOwner) -> BoxFuture<'static, Relocation> {
        let shared = self.0.clone();
        Box::pin(async move {
            let gone = || {
                Relocation::Dead(format!(
                    "its owner {} is gone, and its restarts with it",
                    owner.owner
                ))
            };
            if shared.member(owner.owner).is_some_and(|m| departed(&m)) {
                return gone();
            }
            let Some(transport) = shared.transport.get().cloned() else {
                return Relocation::Dead("this node is not in a cluster".to_owned());
            };
            let request = Request::LocateActor(owner.actor);
            match transport.request(owner.owner, request).await {
                Ok(Reply::ActorAt(now)) => now,
                Ok(other) => Relocation::Dead(format!("its owner answered {other:?}")),
                Err(TransportError::NodeDied(_) | TransportError::NoSession(_)) => gone(),
                // A slow owner: the handle asks again until its deadline.
                Err(_) => Relocation::Restarting,
            }
        })
    }

    fn actor_ended(&self, owner: ActorOwner) {
        if let Some(transport) = self.0.transport.get() {
            let _ = transport.notify(owner.owner, Notice::ActorEnded { actor: owner.actor });
        }
    }

    fn actor_exited(&self, owner: NodeId, actor: ActorId, reason: String) {
        if let Some(transport) = self.0.transport.get() {
            let _ = transport.notify(owner, Notice::ActorExited { actor, reason });
        }
    }

    fn node_alive(&self, node: NodeId) -> bool {
        let shared = &self.0;
        let connected = shared.transport.get().is_some_and(|t| t.connected(node));
        connected && !shared.member(node).is_some_and(|m| departed(&m))
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
        // Each try asks its node to spawn only if it has room now: a node
        // that has none (its heartbeat was stale; another program filled
        // it) refuses, and the actor is placed again on another. With no
        // room anywhere, tries go on with backoff until room frees or the
        // caller gives up; either way no actor is left queued on a node to
        // start after its spawner stopped waiting.
        let mut request = request;
        request.wait_for_room = false;
        let mut refused: Vec<NodeId> = Vec::new();
        let mut pause = SPAWN_FIRST_PAUSE;
        loop {
            let target = match node {
                Some(node) => Some(node),
                None => Self::place_spawn(&shared, &transport, &rt, &request, &refused)?,
            };
            let Some(target) = target else {
                // Every node that can hold it refused: wait, then ask all
                // again.
                tracing::debug!(actor = %request.type_name, ?pause, "no node has room for the actor now; trying again");
                metrics::counter!("troupe_cluster_spawn_no_room_total").increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(SPAWN_MAX_PAUSE);
                refused.clear();
                continue;
            };
            match Self::spawn_at(&shared, &transport, &rt, target, request.clone()).await {
                Err(SpawnError::ResourcesBusy { .. }) => {
                    tracing::debug!(node = %target, actor = %request.type_name, "no room there now: placing the actor again");
                    metrics::counter!("troupe_cluster_spawn_replaced_total").increment(1);
                    if node.is_some() {
                        // Its only node: wait there for room, as a local
                        // spawn would, but from here.
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(SPAWN_MAX_PAUSE);
                    } else {
                        refused.push(target);
                    }
                }
                answer => return answer,
            }
        }
    }

    /// Where an actor goes among the reachable nodes of this program that
    /// have not `refused` it; `None` when they all have; an error when no
    /// node can ever hold it.
    fn place_spawn(
        shared: &Arc<Shared>,
        transport: &Transport,
        rt: &Runtime,
        request: &RemoteSpawn,
        refused: &[NodeId],
    ) -> Result<Option<NodeId>, SpawnError> {
        let me = transport.me();
        let view = read(&shared.view).clone();
        // Reachable, and running this program (its constructors).
        let build = shared.options.build_id;
        let mut reachable: Vec<Member> = view
            .into_iter()
            .filter(|m| m.hello.node == me || transport.connected(m.hello.node))
            .filter(|m| Some(m.hello.build_id) == build)
            .collect();
        // This node's room as it is now, not as last heartbeat said.
        for m in reachable.iter_mut().filter(|m| m.hello.node == me) {
            m.available = rt.available_resources();
        }
        let preferred = match request.options.get_strategy() {
            SchedulingStrategy::NodeAffinity { node, soft: true } => Some(*node),
            _ => None,
        };
        let needs = request.options.get_resources();
        let sent = |node| shared.placer.outstanding(node);
        if crate::placement::place_actor(me, &reachable, needs, preferred, &sent).is_none() {
            return Err(SpawnError::Remote {
                node: None,
                reason: format!("no node can hold an actor needing {needs:?}"),
            });
        }
        reachable.retain(|m| !refused.contains(&m.hello.node));
        Ok(crate::placement::place_actor(
            me, &reachable, needs, preferred, &sent,
        ))
    }

    /// Asks `target` (this node included) to spawn the actor.
    async fn spawn_at(
        shared: &Arc<Shared>,
        transport: &Transport,
        rt: &Runtime,
        target: NodeId,
        request: RemoteSpawn,
    ) -> Result<ActorInfo, SpawnError> {
        if target == transport.me() {
            return rt.spawn_requested(request, target).await;
        }
        // Counted against the target until its heartbeats can show the
        // actor's resources held: a spawn right after this one does not
        // pick the same full node from a stale view.
        let needs = request.options.get_resources().clone();
        shared.placer.sent(target, &needs);
        let answer = transport
            .request(target, Request::SpawnActor(request))
            .await;
        if matches!(answer, Ok(Reply::Spawned(Ok(_)))) {
            let heard_by = shared.options.detector.heartbeat * 2;
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(heard_by).await;
                shared.placer.answered(target, &needs);
            });
        } else {
            shared.placer.answered(target, &needs);
        }
        match answer {
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

/// The first pause before a spawn that found no room anywhere tries
/// again, doubled after each round up to [`SPAWN_MAX_PAUSE`].
const SPAWN_FIRST_PAUSE: Duration = Duration::from_millis(20);
const SPAWN_MAX_PAUSE: Duration = Duration::from_millis(500);

impl ObjectDirectory for Seams {
    fn fetch(
        &self,
        id: ObjectId,
        location: Option<NodeId>,
    ) -> BoxFuture<'static, Result<Fetched, ObjectError>> {
        let shared = self.0.clone();
        Box::pin(
            async move {
                // A transfer that fails on the way (a dropped connection, a
                // holder slow to start) is tried again, a few times, with
                // pauses; the object being lost or failed is final. A holder
                // that went silent (killed, or stalled) is waited for until
                // the failure detector decides: alive again, it is read;
                // dead, the object is lost with it and its owner makes it
                // again (a reader that is the owner is told it is lost,
                // which starts that; any other asks the owner again).
                let mut pause = Duration::from_millis(50);
                let mut tries = 0;
                let mut location = location;
                let verdict_by = std::time::Instant::now() + shared.options.request_timeout;
                loop {
                    tries += 1;
                    let err = match shared.fetch_once(id, location).await {
                        Err(err @ ObjectError::Fetch { .. }) => err,
                        other => return other,
                    };
                    let holder = location.map(|node| (node, shared.holder_state(node)));
                    match holder {
                        Some((node, Holder::Gone)) => {
                            if shared.me() == Some(id.node) {
                                return Err(shared.lost_with(id, node));
                            }
                            location = None; // the owner knows where it is now
                        }
                        Some((_, Holder::Silent)) if std::time::Instant::now() < verdict_by => {}
                        _ if tries < FETCH_TRIES => {}
                        _ => return Err(err),
                    }
                    tracing::debug!(object = %id, %err, tries, "fetch failed; trying again");
                    metrics::counter!("troupe_cluster_fetch_retries_total").increment(1);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(400));
                }
            }
            .instrument(tracing::debug_span!("fetch", object = %id)),
        )
    }

    fn released(&self, id: ObjectId, to: NodeId, times: u32) {
        let shared = &self.0;
        if let Some(transport) = shared.transport.get() {
            if to != transport.me() {
                let _ = transport.notify(to, Notice::Released { id, times });
            }
        }
    }
}

/// What a task's attempt on `node` came to, from the transport's answer.
fn outcome_of(task: TaskId, node: NodeId, answer: Result<Reply, TransportError>) -> RemoteOutcome {
    match answer {
        Ok(Reply::Task(outcome)) => outcome,
        // Shutting down: another node takes it.
        Ok(Reply::Refused(why)) => RemoteOutcome::Refused(why),
        Ok(other) => RemoteOutcome::Failed(Failure::Error(Cause::new(ClusterError::Protocol(
            format!("task {task}: unexpected reply {other:?}"),
        )))),
        Err(TransportError::NodeDied(_) | TransportError::NoSession(_)) => {
            RemoteOutcome::Failed(Failure::NodeDied(node))
        }
        Err(err @ (TransportError::Lost(_) | TransportError::Unanswered(..))) => {
            RemoteOutcome::Failed(Failure::Lost(node, err.to_string()))
        }
        Err(err) => RemoteOutcome::Failed(Failure::Error(Cause::new(ClusterError::Transport(err)))),
    }
}

/// How often a fetch is tried before its error reaches the reader (whose
/// next read tries again).
const FETCH_TRIES: u32 = 3;

/// What a reader knows of the node that holds an object it could not pull.
enum Holder {
    /// Alive and reachable, as far as this node knows.
    Up,
    /// Suspected, or this node has no session to it: the failure detector
    /// has not decided yet.
    Silent,
    /// Declared dead, or left.
    Gone,
}

impl Shared {
    fn holder_state(&self, node: NodeId) -> Holder {
        let connected = self.transport.get().is_some_and(|t| t.connected(node));
        match self.member(node).map(|m| m.state) {
            Some(MemberState::Dead | MemberState::Left) => Holder::Gone,
            Some(MemberState::Suspect) => Holder::Silent,
            _ if !connected => Holder::Silent,
            _ => Holder::Up,
        }
    }

    /// `id`, this node's, was held by `node`, which died: lost (the
    /// store's own error when it has one, which says whether it can be
    /// made again).
    fn lost_with(&self, id: ObjectId, node: NodeId) -> ObjectError {
        let known = self.runtime().and_then(|rt| rt.objects().failure(id));
        match known {
            Some(err @ ObjectError::Lost { .. }) => err,
            _ => ObjectError::Lost {
                id,
                node,
                why: "the node that held it died".to_owned(),
            },
        }
    }

    /// One try at fetching `id`: from where it was last heard of, unless
    /// that is its owner (then the owner says where: it may hold the
    /// value, or know where it was made); again if it moved from its owner
    /// to the node that made it while we asked, or was lost with its node.
    async fn fetch_once(
        &self,
        id: ObjectId,
        location: Option<NodeId>,
    ) -> Result<Fetched, ObjectError> {
        let owned_here = self.transport.get().is_some_and(|t| t.me() == id.node);
        // The owner decides whether an object is lost, not a reader: it may
        // hear of a holder's death after this node did, and point at it
        // meanwhile; it is asked again until it makes the object again (its
        // `Locate` answers once made) or says it cannot, within a control
        // request's patience.
        let deadline = std::time::Instant::now() + self.options.request_timeout;
        let mut attempt = 0;
        loop {
            let node = match location {
                // The owner reads its own object from where it is kept (or
                // from a node that may hold a copy): nobody else to ask.
                Some(node) if owned_here => return self.pull(id, node).await,
                Some(node) if node != id.node && attempt == 0 => node,
                _ => self.locate(id).await?,
            };
            attempt += 1;
            match self.pull(id, node).await {
                // Not there (any more), or lost with that node while its
                // owner lives: the owner knows where it is, or makes it again.
                // The owner's own data path too may answer lost, between
                // hearing of the holder's death and starting to make it
                // again; its `Locate` waits for that.
                Err(ObjectError::Unknown(_)) if attempt == 1 => continue,
                Err(ObjectError::Lost { .. })
                    if attempt == 1 || std::time::Instant::now() < deadline =>
                {
                    if attempt > 1 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
                other => return other,
            }
        }
    }
}
