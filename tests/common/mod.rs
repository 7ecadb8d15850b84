//! Helpers shared by the integration tests.
#![allow(dead_code)]

#[cfg(feature = "dashboard")]
pub mod browser;
#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "cluster")]
pub mod forwarder;
pub mod http;

use std::sync::{Arc, Mutex};

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;
use troupe::supervisor::SupervisionEvent;

// Not every test file uses both.
#[allow(unused_imports)]
pub use troupe_test_kit::{eventually, within, within_for, DEADLINE};

/// A runtime with the default config (every core, no GPU).
pub async fn runtime() -> troupe::Runtime {
    troupe::init(troupe::Config::default())
        .await
        .expect("runtime starts")
}

/// Waits for the first event that matches, failing after the kit's
/// deadline.
pub async fn next_event<F: FnMut(&SupervisionEvent) -> bool>(
    rx: &mut broadcast::Receiver<SupervisionEvent>,
    mut matches: F,
) -> SupervisionEvent {
    within("a matching supervision event", async {
        loop {
            match rx.recv().await {
                Ok(event) if matches(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("event bus closed"),
            }
        }
    })
    .await
}

/// A shared, ordered log of what test actors did.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, line: impl Into<String>) {
        self.0.lock().unwrap().push(line.into());
    }
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self, line: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|l| *l == line).count()
    }
}

/// A plain ractor actor for supervision tests: logs its starts and stops,
/// and crashes, stops or hangs on request.
#[derive(Clone)]
pub struct Probe {
    pub name: &'static str,
    pub log: Log,
    /// Panic in `pre_start` on these start numbers (1-based).
    pub fail_starts: Vec<usize>,
}

impl Probe {
    pub fn new(name: &'static str, log: &Log) -> Self {
        Self {
            name,
            log: log.clone(),
            fail_starts: Vec::new(),
        }
    }
}

pub enum ProbeMsg {
    Crash,
    Stop,
    Hang,
    Ping(RpcReplyPort<&'static str>),
}

// A workspace build links troupe-cluster, which turns on ractor's `cluster`
// feature: then a local message type needs its own (empty) impl.
troupe::local_message!(ProbeMsg);

impl ractor::Actor for Probe {
    type Msg = ProbeMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<ProbeMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        let start = self.log.count(&format!("start {}", self.name)) + 1;
        self.log.push(format!("start {}", self.name));
        if self.fail_starts.contains(&start) {
            panic!("{} refuses start #{start}", self.name);
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<ProbeMsg>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        self.log.push(format!("stop {}", self.name));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ProbeMsg>,
        msg: ProbeMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProbeMsg::Crash => panic!("{} crashed on request", self.name),
            ProbeMsg::Stop => myself.stop(None),
            ProbeMsg::Hang => std::future::pending::<()>().await,
            ProbeMsg::Ping(reply) => {
                let _ = reply.send(self.name);
            }
        }
        Ok(())
    }
}
