//! Sessions between members, kept up: a session to a live member that
//! drops (a reset connection, a middlebox's timeout, a partition between
//! two workers that both still reach the head) is dialed again with
//! backoff, for as long as the head counts that member alive.
//!
//! Of the two ends, the one with the larger node id dials (both would
//! otherwise open a session each at once). Only sessions that were up are
//! dialed again: a member that joins dials the members before it itself.
//! Meanwhile, no new work goes to the member (placement wants a session),
//! requests that waited on the old session failed (their tasks retried
//! elsewhere), and objects are still pulled over the data path.

use std::collections::{HashMap, HashSet};

use super::lifecycle::open_session;
use super::*;

/// The first pause before dialing a dropped session again, doubled after
/// each failed dial up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// A member as the redialer sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub node: NodeId,
    /// Alive in this node's view, and not a client (clients talk to the
    /// head only) nor the head (dialed again by the member loop).
    pub wanted: bool,
    /// Its session is up (its links, which reopen by themselves while the
    /// session lives, may not be).
    pub session: bool,
}

/// Which dropped sessions to dial again, and when (pure: time is given).
#[derive(Debug, Default)]
pub(super) struct Redialer {
    /// Members whose session this node saw up.
    seen: HashSet<NodeId>,
    /// Dropped sessions this node dials: when next, and the pause after.
    waiting: HashMap<NodeId, (Instant, Duration)>,
}

impl Redialer {
    /// The members to dial now, given each member's state at `now`.
    pub(super) fn due(&mut self, me: NodeId, now: Instant, peers: &[Peer]) -> Vec<NodeId> {
        let wanted: HashSet<NodeId> = peers.iter().filter(|p| p.wanted).map(|p| p.node).collect();
        // Gone from the view, dead or left: a member that comes back is a
        // new node, which dials or is dialed as any joiner.
        self.seen.retain(|n| wanted.contains(n));
        self.waiting.retain(|n, _| wanted.contains(n));
        let mut due = Vec::new();
        for peer in peers.iter().filter(|p| p.wanted) {
            if peer.session {
                self.seen.insert(peer.node);
                self.waiting.remove(&peer.node);
                continue;
            }
            if !self.seen.contains(&peer.node) || peer.node > me {
                continue; // never up, or the other end dials
            }
            let (at, _) = self
                .waiting
                .entry(peer.node)
                .or_insert((now + FIRST_PAUSE, FIRST_PAUSE));
            if now >= *at {
                due.push(peer.node);
            }
        }
        due
    }

    /// A dial of `node` at `now` did not bring its session back.
    pub(super) fn failed(&mut self, node: NodeId, now: Instant) {
        if let Some((at, pause)) = self.waiting.get_mut(&node) {
            *pause = (*pause * 2).min(MAX_PAUSE);
            *at = now + *pause;
        }
    }
}

/// A member's sessions to the other members, dialed again while they live
/// (every heartbeat, the dials themselves outside the loop's way).
pub(super) async fn redial_loop(shared: Arc<Shared>, server: ActorRef<NodeServerMessage>) {
    let mut interval = tokio::time::interval(shared.options.detector.heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut redialer = Redialer::default();
    let mut dialing: HashSet<NodeId> = HashSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(NodeId, bool)>();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            Some((node, up)) = done_rx.recv() => {
                dialing.remove(&node);
                if !up {
                    redialer.failed(node, Instant::now());
                }
                continue;
            }
        }
        if shared.is_ended() {
            return;
        }
        let Some(transport) = shared.transport.get().cloned() else {
            return;
        };
        let me = transport.me();
        let head = shared.head();
        let peers: Vec<(Peer, String)> = read(&shared.view)
            .iter()
            .map(|m| {
                let node = m.hello.node;
                let peer = Peer {
                    node,
                    wanted: m.state == MemberState::Alive
                        && m.hello.role != Role::Client
                        && node != me
                        && Some(node) != head
                        && !transport.is_fenced(node),
                    session: transport.has_agent(node),
                };
                (peer, m.hello.control_addr.clone())
            })
            .collect();
        let states: Vec<Peer> = peers.iter().map(|(p, _)| *p).collect();
        for node in redialer.due(me, Instant::now(), &states) {
            if !dialing.insert(node) {
                continue; // a dial of it is under way
            }
            let Some(addr) = peers
                .iter()
                .find(|(p, _)| p.node == node)
                .map(|(_, addr)| addr.clone())
            else {
                continue;
            };
            let (shared, server, transport, done) = (
                shared.clone(),
                server.clone(),
                transport.clone(),
                done_tx.clone(),
            );
            tokio::spawn(async move {
                let timeout = shared.options.connect_timeout;
                let opened = tokio::time::timeout(
                    timeout,
                    open_session(&shared, &server, &addr, Some(node)),
                )
                .await;
                let up = match opened {
                    // Up once its links are (they follow the session).
                    Ok(Ok(_)) => transport.session(node, timeout).await.is_ok(),
                    Ok(Err(err)) => {
                        tracing::debug!(%node, %addr, %err, "a dropped session: not back yet");
                        false
                    }
                    Err(_) => false,
                };
                if up {
                    metrics::counter!("troupe_cluster_sessions_redialed_total").increment(1);
                    tracing::info!(%node, %addr, "a dropped session to a live member is up again");
                }
                let _ = done.send((node, up));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: u64, wanted: bool, session: bool) -> Peer {
        Peer {
            node: NodeId(node),
            wanted,
            session,
        }
    }

    #[test]
    fn only_a_session_that_was_up_is_dialed_again_and_by_its_larger_end() {
        let mut r = Redialer::default();
        let t0 = Instant::now();
        let me = NodeId(5);
        // 3 and 9 never connected: neither is dialed (a joiner dials).
        assert!(r
            .due(me, t0, &[peer(3, true, false), peer(9, true, false)])
            .is_empty());
        // Both up, then both drop.
        assert!(r
            .due(me, t0, &[peer(3, true, true), peer(9, true, true)])
            .is_empty());
        let dropped = [peer(3, true, false), peer(9, true, false)];
        assert!(r.due(me, t0, &dropped).is_empty(), "after a first pause");
        // This end dials 3 (5 > 3); 9 dials this one.
        assert_eq!(r.due(me, t0 + FIRST_PAUSE, &dropped), vec![NodeId(3)]);
    }

    #[test]
    fn failed_dials_back_off_and_a_dead_or_returned_member_is_forgotten() {
        let mut r = Redialer::default();
        let t0 = Instant::now();
        let me = NodeId(5);
        r.due(me, t0, &[peer(3, true, true)]);
        let dropped = [peer(3, true, false)];
        r.due(me, t0, &dropped);
        let mut now = t0 + FIRST_PAUSE;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            assert_eq!(r.due(me, now, &dropped), vec![NodeId(3)]);
            r.failed(NodeId(3), now);
            let next = (1..=4_000)
                .map(|ms| now + Duration::from_millis(ms))
                .find(|t| !r.due(me, *t, &dropped).is_empty())
                .expect("dialed again within 4 s");
            pauses.push((next - now).as_millis());
            now = next;
        }
        assert_eq!(pauses, [200, 400, 800, 1600, 2000, 2000]);
        // Back up: the backoff starts over after the next drop.
        r.due(me, now, &[peer(3, true, true)]);
        r.due(me, now, &dropped);
        assert_eq!(r.due(me, now + FIRST_PAUSE, &dropped), vec![NodeId(3)]);
        // Declared dead: never dialed again, even when it comes back as
        // the same id in the view (a rejoin dials or is dialed anew).
        r.due(me, now, &[peer(3, false, false)]);
        assert!(r.due(me, now + MAX_PAUSE, &dropped).is_empty());
    }
}
