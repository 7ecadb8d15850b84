//! What a node does with each frame and peer change the transport hands it:
//! replies complete their requests, notices are acted on in the order they
//! arrived, requests are answered.
//!
//! Frames are handled on the cluster's I/O runtime, in arrival order, and
//! no user code runs there: replies and work (a task, an actor call, a
//! spawn, a stop) go to the dispatcher (`dispatch.rs`), which carries them
//! out on the runtime's own threads, in the same order; notices and
//! control requests are handled here.

use tracing::Instrument;

use super::dispatch::Work;
use super::*;
use crate::transport::Patience;

/// How long a stopping node waits for its stop to be acknowledged or its
/// answer to be written, and a leaving one for the head to record it.
pub(super) const STOP_ACK: Duration = Duration::from_secs(2);

/// A directory arriving in parts (in order, on the head's link).
#[derive(Debug)]
pub(super) struct Assembly {
    epoch: u64,
    parts: u32,
    next: u32,
    members: Vec<Member>,
}

/// The most parts one directory may come in.
const MAX_DIRECTORY_PARTS: u32 = 1024;

impl Assembly {
    /// Adds a part; the whole directory once its last part arrived. A part
    /// of a newer directory drops an unfinished older one; a part out of
    /// order (a link reopened mid-directory) waits for the next part 0.
    pub(super) fn add(
        slot: &mut Option<Assembly>,
        epoch: u64,
        part: u32,
        parts: u32,
        members: Vec<Member>,
    ) -> Option<Vec<Member>> {
        if parts == 0 || parts > MAX_DIRECTORY_PARTS || part >= parts {
            return None;
        }
        if part == 0 {
            *slot = Some(Assembly {
                epoch,
                parts,
                next: 0,
                members: Vec::new(),
            });
        }
        let assembly = slot.as_mut()?;
        if assembly.epoch != epoch || assembly.parts != parts || assembly.next != part {
            *slot = None;
            return None;
        }
        assembly.members.extend(members);
        assembly.next += 1;
        if assembly.next < parts {
            return None;
        }
        slot.take().map(|a| a.members)
    }
}

/// How often a `Locate` makes an object of this node again that keeps
/// being lost while it answers.
const LOCATE_ROUNDS: usize = 3;

impl Shared {
    /// The cluster's members as this node knows them: the directory on the
    /// head, the last view it sent elsewhere.
    pub(super) fn members(&self) -> Vec<Member> {
        match lock(&self.directory).as_ref() {
            Some(d) => d.members(),
            None => read(&self.view).clone(),
        }
    }

    pub(super) fn handle(self: &Arc<Self>, inbound: Inbound) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        match inbound {
            Inbound::PeerUp(node) => {
                tracing::debug!(%node, "session up");
                if let (Some(rt), Some(m)) = (self.runtime(), self.member(node)) {
                    if m.hello.role != Role::Client && self.announce(&rt, &m) {
                        // Its links came back after a cut or a silent
                        // spell: tasks that found no way to it meanwhile
                        // would wait for a join that never comes.
                        rt.publish(ClusterEvent::NodeRecovered { node });
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
            Inbound::Frame {
                from: sender,
                mut frame,
            } => {
                // The refs a frame carries are held from now on, before any
                // later frame (a release of them, say) is handled.
                if let Some(rt) = self.runtime() {
                    for encoded in frame.encoded_mut() {
                        rt.objects().receive(encoded);
                    }
                }
                match *frame {
                    Frame::Reply { id, body } => self.dispatcher.push(Work::Reply {
                        from: sender,
                        id,
                        body,
                    }),
                    // Told after the replies that came before it (a reply
                    // still queued is not lost).
                    Frame::Notice {
                        from,
                        body: Notice::Unknown { ids },
                    } => self.dispatcher.push(Work::Unknown { from, ids }),
                    Frame::Notice { from, body } => self.notice(from, body),
                    Frame::Request { id, from, body } => self.request(&transport, from, id, body),
                }
            }
        }
    }

    fn request(self: &Arc<Self>, transport: &Arc<Transport>, from: NodeId, id: u64, body: Request) {
        if body.patience(Duration::ZERO) == Patience::WhileAlive {
            // The requester may ask whether this node still works on it.
            transport.working_on(from, id);
        }
        match body {
            Request::RunTask(_)
            | Request::CallActor { .. }
            | Request::SpawnActor(_)
            | Request::StopActor { .. } => self.dispatcher.push(Work::Request { from, id, body }),
            body => {
                let Some(rt) = self.runtime() else {
                    transport.reply(
                        from,
                        id,
                        Reply::Refused("this node is shutting down".into()),
                    );
                    return;
                };
                let shared = self.clone();
                let transport = transport.clone();
                // A stop is answered first, then carried out. A member ends
                // once its answer is in the socket (the head takes its end
                // as an answer too); the head once the requester, which
                // leaves when it has the answer, is gone: its answer must
                // not race the end of its session.
                let stop = match body {
                    Request::Stop => Some(false),
                    Request::StopCluster => Some(true),
                    _ => None,
                };
                tokio::spawn(async move {
                    let reply = shared.answer(&rt, from, body).await;
                    let stopping = stop.filter(|_| matches!(reply, Reply::Ok));
                    transport.reply(from, id, reply);
                    if let Some(whole_cluster) = stopping {
                        let _ = tokio::time::timeout(STOP_ACK, async {
                            transport.flushed(from).await;
                            if whole_cluster {
                                transport.disconnected(from).await;
                            }
                        })
                        .await;
                        shared.end("stopped by `troupe stop`".to_owned());
                    }
                });
            }
        }
    }

    /// Carries out a peer's request that runs user code: on the runtime's
    /// threads (the dispatcher's), in the order requests arrived.
    pub(super) fn work(
        self: &Arc<Self>,
        transport: &Arc<Transport>,
        from: NodeId,
        id: u64,
        body: Request,
    ) {
        let Some(rt) = self.runtime() else {
            transport.reply(
                from,
                id,
                Reply::Refused("this node is shutting down".into()),
            );
            return;
        };
        match body {
            // An actor call enters the actor's mailbox now, in the order
            // calls arrived (the caller sent them in order); only waiting
            // for its reply runs apart.
            Request::CallActor {
                actor,
                method,
                args,
            } => {
                let reply = rt.call_by_name(actor, &method, &args.bytes);
                drop(args);
                let transport = transport.clone();
                tokio::spawn(async move {
                    transport.reply(from, id, Reply::Actor(reply.await));
                });
            }
            // A task of its own (next on this worker: no wake-up), never
            // the dispatcher's: the body may block (a sync body run here
            // waiting for an object), and the dispatcher carries the
            // replies that wait may need.
            Request::RunTask(spec) => {
                let transport = transport.clone();
                tokio::spawn(async move {
                    let span = tracing::info_span!(
                        "remote_task",
                        task = %spec.id,
                        trace = %spec.trace.root,
                        attempt = spec.attempt,
                        owner = %from,
                    );
                    let outcome = rt.run_spec(spec).instrument(span).await;
                    transport.reply(from, id, Reply::Task(outcome));
                });
            }
            Request::SpawnActor(request) => {
                let transport = transport.clone();
                tokio::spawn(async move {
                    let spawned = rt.spawn_requested(request, from).await;
                    transport.reply(from, id, Reply::Spawned(spawned));
                });
            }
            Request::StopActor { actor, how } => {
                let transport = transport.clone();
                tokio::spawn(async move {
                    rt.stop_requested(actor, how).await;
                    transport.reply(from, id, Reply::Ok);
                });
            }
            // Control requests are answered on the I/O threads (`request`).
            _ => transport.reply(
                from,
                id,
                Reply::Refused("a control request reached the dispatcher".into()),
            ),
        }
    }

    fn notice(self: &Arc<Self>, from: NodeId, body: Notice) {
        match body {
            Notice::Fenced { why } => {
                if Some(from) == self.head() && lock(&self.directory).is_none() {
                    self.cut_off(format!("the head declared this node dead ({why})"));
                }
            }
            Notice::Heartbeat {
                available,
                load,
                sent_at_micros,
            } => {
                metrics::counter!("troupe_cluster_heartbeats_received_total", "node" => from.to_string())
                    .increment(1);
                self.heartbeat_transit(from, sent_at_micros);
                let mut directory = lock(&self.directory);
                if let Some(d) = directory.as_mut() {
                    let changes = d.heartbeat(from, available, load, Instant::now());
                    drop(directory);
                    self.head_changes(changes);
                }
            }
            Notice::Directory {
                epoch,
                part,
                parts,
                members,
            } => {
                if Some(from) != self.head() {
                    return;
                }
                let whole = Assembly::add(
                    &mut lock(&self.incoming_directory),
                    epoch,
                    part,
                    parts,
                    members,
                );
                if let Some(members) = whole {
                    self.apply_view(members);
                }
            }
            Notice::Released { id, times } => {
                if let Some(rt) = self.runtime() {
                    rt.objects().remove_borrower(id, from, times);
                }
            }
            Notice::Borrow {
                id,
                borrower,
                delta,
            } => self.borrow(id, borrower, delta),
            // Always answered (with no ids when all are known): an
            // unanswered probe tells the prober the link is broken.
            Notice::Probe { ids } => {
                if let Some(transport) = self.transport.get() {
                    let unknown = transport.not_working_on(from, ids);
                    let _ = transport.notify(from, Notice::Unknown { ids: unknown });
                }
            }
            Notice::Unknown { ids } => {
                if let Some(transport) = self.transport.get() {
                    transport.unknown_to(from, &ids);
                }
            }
            // Taken by the transport as it arrives (`agent::deliver`).
            Notice::Link { .. } => {}
            Notice::ActorEnded { actor } => {
                if let Some(rt) = self.runtime() {
                    rt.forget_placed_actor(actor);
                }
            }
            Notice::ActorExited { actor, reason } => {
                if let Some(rt) = self.runtime() {
                    rt.remote_actor_exited(actor, reason);
                }
            }
        }
    }

    /// Keeps a replica of `id` (result `index` of a task of `function`,
    /// owned by `owner`) pulled from `from`, which made it; why not. Given
    /// two thirds of a request's patience, so that the asker hears the
    /// answer before it stops waiting (a copy kept after it gave up would
    /// never be released).
    async fn keep_copy(
        &self,
        rt: &Runtime,
        from: NodeId,
        id: ObjectId,
        owner: NodeId,
        function: &str,
        index: u32,
    ) -> Result<(), String> {
        let patience = self.options.request_timeout * 2 / 3;
        let kept = tokio::time::timeout(patience, async {
            let fetched = self.pull(id, from).await.map_err(|err| err.to_string())?;
            rt.keep_copy(function, index, id, owner, fetched).await
        })
        .await
        .map_err(|_| format!("its bytes did not arrive from node {from} within {patience:?}"))??;
        // Its owner died while it travelled (after this node heard of the
        // death and let go of what it kept for it): nobody would release it.
        if matches!(
            self.member(owner).map(|m| m.state),
            Some(MemberState::Dead | MemberState::Left)
        ) {
            rt.objects().remove_borrower(id, owner, 1);
            return Err(format!("its owner, node {owner}, died"));
        }
        metrics::counter!("troupe_object_replica_bytes_total").increment(kept);
        Ok(())
    }

    /// Answers a control request (nothing here runs user code).
    async fn answer(self: &Arc<Self>, rt: &Runtime, from: NodeId, body: Request) -> Reply {
        match body {
            Request::Rejoin { lost, .. } if Some(lost) == self.me() => {
                // A member that lost this head while this head's link to it
                // is up: nothing on that link reaches it. A new link takes
                // the answer (within the connect timeout; past it, the
                // member asks again).
                if let Some(transport) = self.transport.get() {
                    if transport.connected(from) {
                        transport.close_unheard_link(from);
                        let _ = transport.session(from, self.options.connect_timeout).await;
                    }
                }
                self.answer_join(from, body)
            }
            Request::Join(_) | Request::Rejoin { .. } => self.answer_join(from, body),
            Request::FindActor(name) => Reply::Found(rt.named_actor(&name)),
            Request::ReserveBundles { group, bundles } => {
                match rt.reserve_bundles(group, &bundles) {
                    Ok(()) => Reply::Ok,
                    Err(why) => Reply::Refused(why),
                }
            }
            Request::ReleaseBundles(group) => {
                rt.release_bundles(group);
                Reply::Ok
            }
            Request::KeepCopy {
                id,
                owner,
                function,
                index,
            } => match self.keep_copy(rt, from, id, owner, &function, index).await {
                Ok(()) => Reply::Ok,
                Err(why) => {
                    tracing::debug!(object = %id, %from, %why, "no replica kept");
                    Reply::Refused(why)
                }
            },
            Request::LocateActor(actor) => Reply::ActorAt(rt.placed_actor_location(actor).await),
            Request::Locate(id) => {
                // Answered once it is made (again, if it was lost with its
                // node): a reader waits here, on the control link, not on a
                // data connection held open. Lost meanwhile (its node's
                // death heard while this waited): made again, a few times.
                let mut answer = Err(ObjectError::Unknown(id));
                for _ in 0..LOCATE_ROUNDS {
                    if let Err(err) = rt.reconstruct(id).await {
                        answer = Err(err);
                        break;
                    }
                    rt.objects().made(id).await;
                    answer = match rt.objects().failure(id) {
                        // Failed here: the reader gets why, not a pull.
                        Some(err) => Err(err),
                        None => rt.objects().location(id).ok_or(ObjectError::Unknown(id)),
                    };
                    let lost_here =
                        id.node == rt.node_id() && matches!(answer, Err(ObjectError::Lost { .. }));
                    if !lost_here {
                        break;
                    }
                }
                if let Err(err) = &answer {
                    tracing::info!(object = %id, %from, %err, "located: failed");
                }
                Reply::Location(answer)
            }
            Request::Status => Reply::Status(crate::membership::trim_to_frame(self.members())),
            Request::NodeState { query, budget } => self.node_state(rt, &query, budget).await,
            Request::ClusterState(query) => Reply::ClusterState(self.gather(query).await),
            Request::JobSubmit(_)
            | Request::JobList
            | Request::JobLogs { .. }
            | Request::JobStop(_) => self.answer_job(body).await,
            Request::TimelinePage { node, from, record } => {
                self.timeline_page(node, from, record).await
            }
            Request::LogPage { node, query } => self.log_page(node, query).await,
            Request::StopCluster => {
                let Some(transport) = self.transport.get() else {
                    return Reply::Refused("not started".to_owned());
                };
                let members = match lock(&self.directory).as_ref() {
                    Some(d) => d.members(),
                    None => return Reply::Refused("this node is not the head".to_owned()),
                };
                // Every member is told, and answers before it ends; this
                // head answers once all did (or the deadline passed), then
                // ends too (`request`).
                let mut stops = tokio::task::JoinSet::new();
                for m in members {
                    let node = m.hello.node;
                    if node != transport.me() && node != from && !departed(&m) {
                        let transport = transport.clone();
                        stops.spawn(async move {
                            tokio::time::timeout(STOP_ACK, transport.request(node, Request::Stop))
                                .await
                        });
                    }
                }
                while stops.join_next().await.is_some() {}
                Reply::Ok
            }
            Request::Stop => {
                if Some(from) == self.head() {
                    Reply::Ok
                } else {
                    Reply::Refused("only the head stops its members".to_owned())
                }
            }
            Request::Leave => {
                let mut directory = lock(&self.directory);
                match directory.as_mut() {
                    Some(d) => {
                        let changes = d.leave(from, Instant::now());
                        drop(directory);
                        self.head_changes(changes);
                        Reply::Ok
                    }
                    None => Reply::Refused("this node is not the head".to_owned()),
                }
            }
            // Work is handled in `request`.
            Request::RunTask(_)
            | Request::CallActor { .. }
            | Request::SpawnActor(_)
            | Request::StopActor { .. } => {
                Reply::Refused("this request is answered elsewhere".to_owned())
            }
        }
    }

    /// Answers a join, or a rejoin after the head was lost.
    fn answer_join(&self, from: NodeId, body: Request) -> Reply {
        let result = match (lock(&self.directory).as_mut(), body) {
            (None, _) => Err("this node is not the head".to_owned()),
            // A node joins as itself: the id its link proved.
            (Some(_), Request::Join(hello) | Request::Rejoin { hello, .. })
                if hello.node != from =>
            {
                Err(format!("node {from} asked to join as node {}", hello.node))
            }
            (
                Some(d),
                Request::Rejoin {
                    hello,
                    lost,
                    members,
                },
            ) => {
                tracing::info!(node = %from, %lost, known = members.len(), "a member of a lost head joins again");
                d.rejoin(hello, lost, members, Instant::now())
            }
            (Some(d), Request::Join(hello)) => d.join(hello, Instant::now()),
            (Some(_), other) => Err(format!("not a join: {}", other.kind())),
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
}
