//! The runtime: embedding, plain main, several runtimes, ordered shutdown.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, within};
use troupe::prelude::*;
use troupe::ShutdownError;

/// Records its own stop, to check the shutdown order.
struct Tracked {
    label: u32,
    stops: Arc<Mutex<Vec<u32>>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stops.lock().unwrap().push(self.label);
    }
}

#[troupe::actor]
impl Tracked {
    pub fn label(&self) -> u32 {
        self.label
    }

    pub async fn hang(&mut self) {
        std::future::pending::<()>().await
    }

    /// Says it started, then never returns.
    pub async fn hang_started(&mut self, started: tokio::sync::oneshot::Sender<()>) {
        let _ = started.send(());
        std::future::pending::<()>().await
    }
}

/// Sends a call that never returns, and waits until it runs.
async fn hang(a: &TrackedHandle) -> Pending<()> {
    let (started, running) = tokio::sync::oneshot::channel();
    let hung = a.hang_started(started);
    within("the hanging call starts", running).await.unwrap();
    hung
}

#[tokio::test]
async fn boots_a_tree_with_system_and_user_subtrees() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let root = rt.root_supervisor().which_children().await.unwrap();
    let ids: Vec<&str> = root.iter().map(|c| &*c.id).collect();
    assert_eq!(ids, ["system", "user"]);
    assert_eq!(rt.system_supervisor().unwrap().name(), "system");
    assert_eq!(rt.user_supervisor().unwrap().name(), "user");
    // root, system (object store, scheduler), user
    assert_eq!(rt.live_actors(), 5);
    rt.shutdown().await.unwrap();
    assert_eq!(rt.live_actors(), 0);
}

#[test]
fn starts_from_plain_main_with_its_own_tokio() {
    let rt = Runtime::start(Config::default().worker_threads(2)).unwrap();
    let a = rt
        .block_on(rt.spawn_actor(ActorOptions::new(), || Tracked {
            label: 7,
            stops: Arc::default(),
        }))
        .unwrap();
    assert_eq!(rt.block_on(a.label()).unwrap(), 7);
    rt.block_on(rt.shutdown()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_runtimes_live_side_by_side() {
    let mut runtimes = Vec::new();
    for _ in 0..4 {
        runtimes.push(troupe::init(Config::default()).await.unwrap());
    }
    for (i, rt) in runtimes.iter().enumerate() {
        rt.spawn_actor(ActorOptions::new().name("same-name"), move || Tracked {
            label: i as u32,
            stops: Arc::default(),
        })
        .await
        .unwrap();
    }
    for (i, rt) in runtimes.iter().enumerate() {
        let a = rt.get_actor::<Tracked>("same-name").unwrap();
        assert_eq!(a.label().await.unwrap(), i as u32);
    }
    // Shutting one down leaves the others running.
    runtimes[0].shutdown().await.unwrap();
    let a = runtimes[1].get_actor::<Tracked>("same-name").unwrap();
    assert_eq!(a.label().await.unwrap(), 1);
    for rt in &runtimes[1..] {
        rt.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn shutdown_stops_actors_in_reverse_spawn_order() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let stops = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for label in 0..5 {
        let stops = stops.clone();
        let handle = rt
            .spawn_actor(ActorOptions::new(), move || Tracked {
                label,
                stops: stops.clone(),
            })
            .await
            .unwrap();
        handles.push(handle);
    }
    assert_eq!(rt.live_actors(), 5 + 5);
    rt.shutdown().await.unwrap();
    assert_eq!(*stops.lock().unwrap(), [4, 3, 2, 1, 0]);
    assert_eq!(rt.live_actors(), 0);
    // A second shutdown is a no-op.
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_kills_an_actor_that_ignores_stop_after_its_timeout() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let a = rt
        .spawn_actor(
            ActorOptions::new().shutdown(Shutdown::Timeout(Duration::from_millis(100))),
            || Tracked {
                label: 1,
                stops: Arc::default(),
            },
        )
        .await
        .unwrap();
    let hung = hang(&a).await;
    let began = Instant::now();
    rt.shutdown().await.unwrap();
    assert!(began.elapsed() >= Duration::from_millis(100));
    assert!(within("hung call answers", hung).await.is_err());
    assert_eq!(rt.live_actors(), 0);
}

#[tokio::test]
async fn shutdown_past_its_deadline_kills_everything_and_says_so() {
    let config = Config::default().shutdown_timeout(Duration::from_millis(200));
    let rt = troupe::init(config).await.unwrap();
    let a = rt
        .spawn_actor(ActorOptions::new().shutdown(Shutdown::Infinity), || {
            Tracked {
                label: 1,
                stops: Arc::default(),
            }
        })
        .await
        .unwrap();
    let _hung = hang(&a).await;
    let began = Instant::now();
    let err = rt.shutdown().await.unwrap_err();
    assert!(matches!(err, ShutdownError::DeadlineExceeded(d) if d == Duration::from_millis(200)));
    assert!(began.elapsed() < Duration::from_secs(5));
    eventually("everything killed", || {
        rt.live_actors() == 0 && !a.is_alive()
    })
    .await;
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_tree() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let stops = Arc::new(Mutex::new(Vec::new()));
    let s = stops.clone();
    let a = rt
        .spawn_actor(ActorOptions::new(), move || Tracked {
            label: 9,
            stops: s.clone(),
        })
        .await
        .unwrap();
    drop(rt);
    eventually("actor stopped after the runtime was dropped", || {
        !a.is_alive()
    })
    .await;
    eventually("its state dropped", || {
        stops.lock().unwrap().as_slice() == [9]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawning_and_dropping_many_actors_returns_to_baseline() {
    // A long-running service creates actors in waves; collected actors must
    // leave nothing behind in the tree, the supervisor or the registry.
    let rt = troupe::init(Config::default()).await.unwrap();
    let baseline = rt.live_actors();
    for wave in 0..5 {
        let mut handles = Vec::new();
        for i in 0..2_000 {
            let a = rt
                .spawn_actor(ActorOptions::new(), move || Tracked {
                    label: i,
                    stops: Arc::default(),
                })
                .await
                .unwrap();
            handles.push(a);
        }
        let replies: Vec<_> = handles.iter().map(|h| h.label()).collect();
        for (i, r) in replies.into_iter().enumerate() {
            assert_eq!(r.await.unwrap(), i as u32);
        }
        drop(handles);
        eventually(&format!("wave {wave} collected"), || {
            rt.live_actors() == baseline
        })
        .await;
        let user = rt.user_supervisor().unwrap();
        assert!(user.which_children().await.unwrap().is_empty());
    }
    rt.shutdown().await.unwrap();
}
