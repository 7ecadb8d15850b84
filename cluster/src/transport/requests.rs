//! Requests this node waits on: each waits for its reply, its peer's
//! death, or the end of its patience (a deadline, or probes that find the
//! peer no longer works on it); and the requests of peers this node works
//! on, which a probe asks about.

use super::*;

pub(super) struct Waiting {
    pub(super) node: NodeId,
    pub(super) reply: Completion,
    pub(super) sent: Instant,
    pub(super) patience: Patience,
    /// When the peer was last asked about it.
    pub(super) probed: Option<Instant>,
}

/// What is called with a request's reply (or why there is none), on the
/// thread that has it: a reply's comes from the node's dispatcher, an
/// error's from wherever it was found (an I/O thread, say).
pub(crate) type Then = Box<dyn FnOnce(Result<Reply, TransportError>) + Send + 'static>;

/// Where a request's reply goes.
pub(super) enum Completion {
    /// A future waits for it.
    Channel(oneshot::Sender<Result<Reply, TransportError>>),
    /// A callback takes it (in a mutex only to make the table `Sync`:
    /// it is taken once).
    Then(std::sync::Mutex<Then>),
}

impl Completion {
    pub(super) fn send(self, result: Result<Reply, TransportError>) {
        match self {
            Completion::Channel(tx) => {
                let _ = tx.send(result);
            }
            Completion::Then(then) => {
                (then.into_inner().unwrap_or_else(|e| e.into_inner()))(result)
            }
        }
    }
}

impl Transport {
    pub(super) fn fail_pending(&self, node: NodeId, err: TransportError) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|e| e.value().node == node)
            .map(|e| *e.key())
            .collect();
        for id in ids {
            if let Some(waiting) = self.settle(id) {
                waiting.reply.send(Err(err.clone()));
            }
        }
    }

    /// Fails requests past their deadlines, asks peers about requests that
    /// waited long (see [`PROBE_AFTER`]), and closes the links of peers
    /// that left a probe unanswered (see [`PROBE_ANSWER_WITHIN`]).
    pub(super) fn watch_pending(&self, now: Instant) {
        let mut expired = Vec::new();
        let mut probes: HashMap<NodeId, Vec<u64>> = HashMap::new();
        for mut entry in self.pending.iter_mut() {
            let id = *entry.key();
            let waiting = entry.value_mut();
            match waiting.patience {
                Patience::Within(after) => {
                    if now.saturating_duration_since(waiting.sent) >= after {
                        expired.push((id, waiting.node, after));
                    }
                }
                Patience::WhileAlive => {
                    let last = waiting.probed.unwrap_or(waiting.sent);
                    if now.saturating_duration_since(last) >= PROBE_AFTER {
                        waiting.probed = Some(now);
                        probes.entry(waiting.node).or_default().push(id);
                    }
                }
            }
        }
        for (id, node, after) in expired {
            if let Some(waiting) = self.settle(id) {
                metrics::counter!("troupe_cluster_request_timeouts_total").increment(1);
                tracing::warn!(%node, request = id, ?after, "a request timed out");
                waiting
                    .reply
                    .send(Err(TransportError::Timeout(node, after)));
            }
        }
        for (node, ids) in probes {
            if self.notify(node, Notice::Probe { ids }).is_ok() {
                if let Some(mut peer) = self.peers.get_mut(&node) {
                    peer.unanswered_probe.get_or_insert(now);
                }
            }
        }
        let silent: Vec<(NodeId, Duration)> = self
            .peers
            .iter()
            .filter_map(|p| {
                let waited = now.saturating_duration_since(p.unanswered_probe?);
                (waited >= PROBE_ANSWER_WITHIN).then_some((*p.key(), waited))
            })
            .collect();
        for (node, waited) in silent {
            self.close_silent_link(node, waited);
        }
    }

    /// `node` answered no probe for `waited`: what waits on it fails (the
    /// request or its reply may be stuck in a connection that will never
    /// deliver it), and this node's link to it is closed, which dials it
    /// again while its session is up.
    fn close_silent_link(&self, node: NodeId, waited: Duration) {
        let outbound = self.peers.get_mut(&node).and_then(|mut peer| {
            peer.unanswered_probe = None;
            peer.outbound.clone()
        });
        metrics::counter!("troupe_cluster_links_silent_total").increment(1);
        tracing::warn!(
            %node,
            ?waited,
            "a peer answered no probe on its control link: closing the link and dialing again"
        );
        self.fail_pending(node, TransportError::Unanswered(node, waited));
        if let Some(outbound) = outbound {
            outbound.writer.abort("the peer answered no probe");
        }
    }

    /// `node` answered a probe: of the requests this node asked about,
    /// these it does not know (not received, or answered already: such a
    /// reply came before this answer, on the same link). Those still
    /// waiting lost their replies. The link to it works both ways.
    pub(crate) fn unknown_to(&self, node: NodeId, ids: &[u64]) {
        if let Some(mut peer) = self.peers.get_mut(&node) {
            peer.unanswered_probe = None;
        }
        for id in ids {
            let ours = self.pending.get(id).is_some_and(|w| w.node == node);
            if !ours {
                continue;
            }
            if let Some(waiting) = self.settle(*id) {
                metrics::counter!("troupe_cluster_requests_lost_total").increment(1);
                tracing::warn!(%node, request = id, "a request's reply was lost");
                waiting.reply.send(Err(TransportError::Lost(node)));
            }
        }
    }

    /// This node works on `node`'s request `id` (answered with
    /// [`reply`](Self::reply)): a probe of it is told so.
    pub(crate) fn working_on(&self, node: NodeId, id: u64) {
        self.working.insert((node, id), ());
    }

    /// Of `node`'s requests `ids`, those this node does not work on.
    pub(crate) fn not_working_on(&self, node: NodeId, ids: Vec<u64>) -> Vec<u64> {
        ids.into_iter()
            .filter(|id| !self.working.contains_key(&(node, *id)))
            .collect()
    }

    /// Sends `body` to `node` and waits for its reply (or its death, or
    /// the end of its patience).
    pub(crate) async fn request(
        &self,
        node: NodeId,
        body: Request,
    ) -> Result<Reply, TransportError> {
        self.session(node, self.timeouts.connect).await?;
        self.send_request(node, body)?.await
    }

    /// Sends `body` to `node` now (before returning: requests sent one
    /// after another leave in that order) if a link to it is up; the
    /// future resolves to its reply (or the node's death, or the end of
    /// the request's patience).
    pub(crate) fn send_request(
        &self,
        node: NodeId,
        body: Request,
    ) -> Result<
        impl std::future::Future<Output = Result<Reply, TransportError>> + use<>,
        TransportError,
    > {
        let (tx, rx) = oneshot::channel();
        self.enqueue(node, body, Completion::Channel(tx))
            .map_err(|(err, _)| err)?;
        Ok(async move {
            match rx.await {
                Ok(result) => result,
                Err(_) => Err(TransportError::NodeDied(node)),
            }
        })
    }

    /// [`send_request`](Self::send_request), calling `then` with the reply
    /// (or why there is none) instead of returning a future: a request
    /// answered at once costs no task's wake-up.
    pub(crate) fn send_request_then(&self, node: NodeId, body: Request, then: Then) {
        if let Err((err, then)) =
            self.enqueue(node, body, Completion::Then(std::sync::Mutex::new(then)))
        {
            then.send(Err(err));
        }
    }

    fn enqueue(
        &self,
        node: NodeId,
        body: Request,
        completion: Completion,
    ) -> Result<(), (TransportError, Completion)> {
        let counted = self
            .peers
            .get_mut(&node)
            .filter(|p| p.connected())
            .map(|mut peer| {
                if peer.pending >= MAX_PENDING_PER_PEER {
                    return Err(TransportError::Backpressure(node));
                }
                peer.pending += 1;
                Ok(())
            })
            .unwrap_or(Err(TransportError::NoSession(node)));
        if let Err(err) = counted {
            return Err((err, completion));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let patience = body.patience(self.timeouts.request);
        self.pending.insert(
            id,
            Waiting {
                node,
                reply: completion,
                sent: Instant::now(),
                patience,
                probed: None,
            },
        );
        let frame = Frame::Request {
            id,
            from: self.me,
            body,
        };
        if let Err(err) = self.send(node, &frame) {
            return match self.settle(id) {
                Some(waiting) => Err((err, waiting.reply)),
                None => Ok(()), // failed meanwhile (its peer went): told already
            };
        }
        // The peer may have gone between the lookup and the insert.
        if !self.connected(node) {
            if let Some(w) = self.settle(id) {
                w.reply.send(Err(TransportError::NodeDied(node)));
            }
        }
        Ok(())
    }

    pub(super) fn settle(&self, id: u64) -> Option<Waiting> {
        let (_, waiting) = self.pending.remove(&id)?;
        if let Some(mut peer) = self.peers.get_mut(&waiting.node) {
            peer.pending = peer.pending.saturating_sub(1);
        }
        Some(waiting)
    }

    /// A reply arrived from `from`: it answers request `id` only if that
    /// request went to `from` (a peer cannot answer another's requests).
    pub(crate) fn complete(&self, from: NodeId, id: u64, body: Reply) {
        let asked = self.pending.get(&id).map(|w| w.node);
        if asked.is_some_and(|asked| asked != from) {
            metrics::counter!("troupe_cluster_impersonations_total").increment(1);
            tracing::warn!(%from, id, ?asked, "dropped a reply to a request sent to another node");
            return;
        }
        if let Some(waiting) = self.settle(id) {
            waiting.reply.send(Ok(body));
        }
    }
}
