//! A member's side of membership: heartbeats to the head, the head's loss
//! noticed, and the member taken back, under its own id and with its work
//! kept, by a head restarted at the same address (or back from a stall).
//!
//! Without its head a member goes on: its sessions to the other members
//! stay up, work already placed runs, new work goes to the members it
//! knew. Only membership stops: nobody joins, and nobody is declared dead
//! (a member that dies meanwhile is declared dead by the restarted head,
//! once the grace it gives the members it was told of has passed).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Instrument;

use super::lifecycle::open_session;
use super::view::unix_micros;
use super::*;

/// The first pause between dials of a lost head, doubled after each failed
/// dial up to [`REDIAL_MAX_PAUSE`]: a restarted head is found within about
/// a second of listening again.
const REDIAL_FIRST_PAUSE: Duration = Duration::from_millis(100);
const REDIAL_MAX_PAUSE: Duration = Duration::from_secs(1);

/// How often a member still without its head says so in its log.
const STILL_LOST_EVERY: Duration = Duration::from_secs(30);

/// Why a dial of the lost head did not take this member back.
enum Redial {
    /// Nobody answered as a head there (yet): dial again.
    Unanswered(String),
    /// A head answered and refused this member (it declared it dead, say):
    /// its work is lost for the cluster.
    Refused(String),
}

/// A member: heartbeats to the head, and watches the head's directory;
/// dials the head again when it is lost.
pub(super) async fn member_loop(
    shared: Arc<Shared>,
    server: ActorRef<NodeServerMessage>,
    hello: Hello,
) {
    // Heartbeats go on while the head is dialed again: a head that is
    // alive but whose frames stopped reaching this node (a link gone
    // silent one way) still hears from it, and does not declare it dead
    // while it rejoins.
    let regaining = Arc::new(AtomicBool::new(false));
    let heartbeats = Heartbeats::start(shared.clone(), regaining.clone());
    watch_head(&shared, &server, &hello, &regaining).await;
    drop(heartbeats);
}

/// The heartbeat loop, on a thread of its own until dropped.
///
/// Not on the cluster's I/O runtime: under load its one thread has a queue
/// of ready tasks (frames, replies, pulls) and shares the cores with every
/// task body, and a heartbeat queued behind them went out a second late,
/// long enough for the head to declare this live node dead. A thread that
/// sleeps between ticks is scheduled as soon as it wakes; the send itself
/// is a socket write from this thread (`LinkWriter::send`).
struct Heartbeats {
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Heartbeats {
    fn start(shared: Arc<Shared>, regaining: Arc<AtomicBool>) -> Heartbeats {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let span = tracing::Span::current();
        let beating = async move {
            tokio::select! {
                _ = heartbeat_loop(shared, regaining) => {}
                _ = stopped => {}
            }
        }
        .instrument(span);
        let thread = std::thread::Builder::new()
            .name("troupe-heartbeat".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                    Ok(rt) => rt.block_on(beating),
                    Err(err) => tracing::error!(%err, "no runtime for the heartbeat thread: this node sends no heartbeats"),
                }
            });
        if let Err(err) = thread {
            tracing::error!(%err, "could not start the heartbeat thread: this node sends no heartbeats");
        }
        Heartbeats { _stop: stop }
    }
}

/// Sends a heartbeat to the head every period, while the node runs.
async fn heartbeat_loop(shared: Arc<Shared>, regaining: Arc<AtomicBool>) {
    let period = shared.options.detector.heartbeat;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let mut unsent_said: Option<Instant> = None;
    loop {
        interval.tick().await;
        if shared.is_ended() {
            return;
        }
        let late = last_tick.elapsed().saturating_sub(period);
        last_tick = Instant::now();
        metrics::histogram!("troupe_cluster_heartbeat_late_seconds").record(late.as_secs_f64());
        if late > period * 2 {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "this node's heartbeat went out late: its cluster thread was held up"
            );
        }
        let (Some(transport), Some(head)) = (shared.transport.get(), shared.head()) else {
            continue;
        };
        let (available, load) = shared.load();
        let heartbeat = Notice::Heartbeat {
            available,
            load,
            sent_at_micros: unix_micros(),
        };
        if let Err(err) = transport.notify(head, heartbeat) {
            metrics::counter!("troupe_cluster_heartbeats_unsent_total").increment(1);
            // Said once a second at most, and not while the head is known
            // to be lost (that is said already).
            let quiet = regaining.load(Ordering::Relaxed)
                || unsent_said.is_some_and(|at: Instant| at.elapsed() < Duration::from_secs(1));
            if !quiet {
                unsent_said = Some(Instant::now());
                tracing::warn!(%head, %err, "a heartbeat could not be sent to the head");
            }
        }
    }
}

/// Watches the head: lost once its connections stay closed, or once
/// nothing came from it (its directory doubles as its heartbeat) for long;
/// then dials it until it takes this node back. Returns when the node ends
/// or is cut off.
async fn watch_head(
    shared: &Arc<Shared>,
    server: &ActorRef<NodeServerMessage>,
    hello: &Hello,
    regaining: &AtomicBool,
) {
    let detector = shared.options.detector;
    // Twice the death limit, so that a busy head is not abandoned before
    // it would declare anyone dead itself.
    let head_timeout = (detector.dead_after * 2).max(Duration::from_secs(5));
    let mut interval = tokio::time::interval(detector.heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    // Since when no session and links to the head are up: a head that
    // died (or restarted) closed them, which a busy one does not.
    let mut unreachable_since: Option<Instant> = None;
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
            unreachable_since = None;
        }
        let (Some(transport), Some(head)) = (shared.transport.get(), shared.head()) else {
            return;
        };
        let mut lost = None;
        if transport.connected(head) {
            unreachable_since = None;
        } else {
            let since = *unreachable_since.get_or_insert_with(Instant::now);
            if since.elapsed() > detector.dead_after {
                lost = Some(format!(
                    "its connections closed {} ms ago and did not come back",
                    since.elapsed().as_millis()
                ));
            }
        }
        let silent = lock(&shared.last_directory).elapsed();
        if lost.is_none() && silent > head_timeout {
            lost = Some(format!(
                "nothing heard from it for {} ms",
                silent.as_millis()
            ));
        }
        if let Some(why) = lost {
            regaining.store(true, Ordering::Relaxed);
            let regained = shared.regain_head(server, hello, head, why).await;
            regaining.store(false, Ordering::Relaxed);
            if let Err(why) = regained {
                shared.cut_off(why);
                return;
            }
            unreachable_since = None;
            last_tick = Instant::now();
        }
    }
}

impl Shared {
    /// The head `lost` was lost (`why`): dials its address with backoff
    /// until a head there takes this member back (`Ok`), refuses it (`Err`:
    /// why, for the cut-off), or the node ends.
    async fn regain_head(
        &self,
        server: &ActorRef<NodeServerMessage>,
        hello: &Hello,
        lost: NodeId,
        why: String,
    ) -> Result<(), String> {
        let addr = self.options.head.clone().unwrap_or_default();
        tracing::warn!(head = %lost, %addr, %why, "the head was lost: dialing it again; work here goes on");
        metrics::counter!("troupe_cluster_head_lost_total").increment(1);
        self.suspect_head(lost);
        let since = Instant::now();
        let mut said = since;
        let mut pause = REDIAL_FIRST_PAUSE;
        loop {
            if self.is_ended() {
                return Ok(());
            }
            match self.rejoin(server, hello, lost, &addr).await {
                Ok(head) => {
                    let took = since.elapsed();
                    metrics::histogram!("troupe_cluster_head_regained_seconds")
                        .record(took.as_secs_f64());
                    if head == lost {
                        tracing::info!(%head, ?took, "the head answers again and took this node back");
                    } else {
                        tracing::warn!(%head, old = %lost, ?took, "a restarted head took this node back; the old head's work was lost");
                    }
                    return Ok(());
                }
                Err(Redial::Refused(why)) => {
                    return Err(format!(
                        "the head at {addr} did not take this node back: {why}"
                    ))
                }
                Err(Redial::Unanswered(why)) => {
                    if said.elapsed() >= STILL_LOST_EVERY {
                        said = Instant::now();
                        tracing::warn!(%addr, %why, lost_for = ?since.elapsed(), "still no head: dialing it again");
                    } else {
                        tracing::debug!(%addr, %why, "no head yet");
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REDIAL_MAX_PAUSE);
        }
    }

    /// Marks the lost head suspected in this node's view: no new work goes
    /// to it while it is away.
    fn suspect_head(&self, head: NodeId) {
        let mut view = write(&self.view);
        if let Some(m) = view.iter_mut().find(|m| m.hello.node == head) {
            if m.state == MemberState::Alive {
                m.state = MemberState::Suspect;
            }
        }
    }

    /// One dial of the head's address: a session (unless the one to the
    /// lost head is still up), then `Rejoin` with this node's view.
    async fn rejoin(
        &self,
        server: &ActorRef<NodeServerMessage>,
        hello: &Hello,
        lost: NodeId,
        addr: &str,
    ) -> Result<NodeId, Redial> {
        let Some(transport) = self.transport.get().cloned() else {
            return Err(Redial::Refused("the node is not running".to_owned()));
        };
        let timeout = self.options.connect_timeout;
        let head = if transport.connected(lost) {
            lost
        } else {
            match tokio::time::timeout(timeout, open_session(self, server, addr, None)).await {
                Ok(Ok(head)) => head,
                Ok(Err(ClusterError::CookieRefused { addr })) => {
                    return Err(Redial::Refused(format!(
                        "the node at {addr} does not know this cluster's cookie"
                    )))
                }
                Ok(Err(err)) => return Err(Redial::Unanswered(err.to_string())),
                Err(_) => return Err(Redial::Unanswered(format!("no session within {timeout:?}"))),
            }
        };
        if let Err(err) = transport.session(head, timeout).await {
            if head == lost {
                // The same head proved itself but keeps its links shut:
                // it fenced this node (declared it dead), and its notice
                // was lost.
                return Err(Redial::Refused(format!(
                    "it answers but no longer talks to this node, which it declared dead ({err})"
                )));
            }
            return Err(Redial::Unanswered(err.to_string()));
        }
        let members = crate::membership::trim_to_frame(read(&self.view).clone());
        let request = Request::Rejoin {
            hello: hello.clone(),
            lost,
            members,
        };
        let welcome = match tokio::time::timeout(timeout, transport.request(head, request)).await {
            Ok(Ok(Reply::Welcome(welcome))) => welcome,
            Ok(Ok(Reply::Refused(why))) => return Err(Redial::Refused(why)),
            Ok(Ok(other)) => return Err(Redial::Unanswered(format!("it answered {other:?}"))),
            Ok(Err(err)) => return Err(Redial::Unanswered(err.to_string())),
            Err(_) => return Err(Redial::Unanswered(format!("no answer within {timeout:?}"))),
        };
        if welcome.head != head {
            return Err(Redial::Unanswered(format!(
                "node {head} answered, but says the head is {}",
                welcome.head
            )));
        }
        // Known before their sessions are up (work may come at once).
        *write(&self.head) = Some(head);
        self.apply_view(welcome.members.clone());
        // Members that joined while this one was away: reach them too.
        let me = transport.me();
        for m in &welcome.members {
            let node = m.hello.node;
            let fresh = m.state == MemberState::Alive
                && node != me
                && node != head
                && m.hello.role != Role::Client
                && !transport.connected(node);
            if fresh {
                if let Err(err) =
                    open_session(self, server, &m.hello.control_addr, Some(node)).await
                {
                    tracing::warn!(%node, %err, "could not reach a member after joining again");
                }
            }
        }
        Ok(head)
    }
}
