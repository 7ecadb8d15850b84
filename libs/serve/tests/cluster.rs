//! Replicas on other nodes (`DeploymentOptions::replicas_on_cluster`),
//! across real processes on loopback: a head and two worker nodes are this
//! test binary re-launched in node mode (`node_process`), and the test is
//! the driver, holding the proxy and the router. The head and the driver
//! offer no CPUs, so every replica runs on one of the two nodes. Each
//! answer says which process made it. Every process a test starts is
//! killed when its cluster drops, even when the test fails.
//!
//! Run with `cargo test -p troupe-serve --features cluster --test cluster`.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::client;
use troupe::cluster::local::{run_node_if_asked, test_binary, LocalCluster, LocalNode};
use troupe::prelude::*;
use troupe_serve::{
    BatchConfig, CallError, Deployment, DeploymentHandle, DeploymentOptions, HandlerError,
    Registry, ReplicaState, Serve, ServeConfig, ServeError, ServeOptions,
};
use troupe_test_kit::{eventually_within, within_for};

/// One cluster per test at a time: each test joins as the driver.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a cluster test may take at most (they take seconds).
const DEADLINE: Duration = Duration::from_secs(120);

/// An answer: the request's text upper-cased, the process that made it,
/// and the size of the batch it was in (1 unbatched).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub pid: u32,
    pub batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ask {
    pub text: String,
}

#[derive(Default)]
pub struct Upper;

/// Requests `Upper::call` answered in this process.
static ANSWERED_HERE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Deployment for Upper {
    type Request = Ask;
    type Response = Answer;

    async fn call(&mut self, ask: Ask) -> Result<Answer, HandlerError> {
        ANSWERED_HERE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if ask.text.is_empty() {
            return Err(HandlerError::bad_request("say something"));
        }
        Ok(Answer {
            text: ask.text.to_uppercase(),
            pid: std::process::id(),
            batch: 1,
        })
    }

    async fn call_batch(&mut self, asks: Vec<Ask>) -> Vec<Result<Answer, HandlerError>> {
        let n = asks.len();
        asks.into_iter()
            .map(|ask| {
                if ask.text.is_empty() {
                    return Err(HandlerError::bad_request("say something"));
                }
                Ok(Answer {
                    text: ask.text.to_uppercase(),
                    pid: std::process::id(),
                    batch: n,
                })
            })
            .collect()
    }
}

troupe_serve::register_deployment!("ClusterTest-Upper", Upper, Upper::default);

/// Node mode: when this binary is re-launched as a node, runs it;
/// otherwise does nothing.
#[test]
fn node_process() {
    run_node_if_asked();
}

/// A head with no CPUs and two nodes with `cpus` CPUs each.
fn head_and_two_nodes(test: &str, cpus: &str) -> (LocalCluster, LocalNode, [LocalNode; 2]) {
    let mut p =
        LocalCluster::new(test, test_binary("node_process", &[])).expect("a temporary directory");
    let head = p.head(&["--num-cpus", "0"]).expect("the head starts");
    let a = p
        .worker(&head, &["--num-cpus", cpus])
        .expect("node a starts");
    let b = p
        .worker(&head, &["--num-cpus", cpus])
        .expect("node b starts");
    (p, head, [a, b])
}

/// This process as a driver (no CPUs) of `head`'s cluster, serving HTTP
/// on a loopback port, once it sees the head and both nodes alive.
async fn serve_as_driver(p: &LocalCluster, head: &LocalNode) -> (Runtime, Serve, SocketAddr) {
    let rt = p
        .join_as_driver(head, 3, DEADLINE)
        .await
        .expect("the driver joins");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let serve = Serve::start(&rt, ServeOptions::new().http(any))
        .await
        .expect("serve starts");
    let addr = serve.http_addr().expect("the proxy runs");
    (rt, serve, addr)
}

fn on_cluster() -> DeploymentOptions {
    DeploymentOptions::new()
        .num_cpus(1.0)
        .route_prefix("/upper")
        .replicas_on_cluster(true)
        .health_check(Duration::from_millis(200), Duration::from_secs(2))
}

async fn ask_http(addr: SocketAddr, text: &str) -> client::Reply {
    let body = serde_json::to_string(&Ask { text: text.into() }).unwrap();
    client::post(addr, "/upper", &body)
        .await
        .expect("the proxy answers")
}

/// Two replicas, one per node: HTTP requests and handle calls are answered
/// exactly, from both nodes and never from here; a handler's error crosses
/// back as a 400; the status names each replica's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_two_nodes_answer_http_and_handles() {
    let _turn = DRIVER.lock().await;
    let (p, head, [a, b]) = head_and_two_nodes("serve-two-nodes", "1");
    let (rt, serve, addr) = serve_as_driver(&p, &head).await;
    let handle = within_for(
        DEADLINE,
        "the deployment starts",
        serve.deploy_registered::<Upper>("upper", on_cluster().replicas(2), "ClusterTest-Upper"),
    )
    .await
    .unwrap();

    let mut pids = BTreeSet::new();
    for i in 0..40 {
        let text = format!("request {i}");
        let reply = ask_http(addr, &text).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let answer: Answer = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer.text, text.to_uppercase());
        pids.insert(answer.pid);

        let answer = within_for(
            DEADLINE,
            "a handle call",
            handle.call(Ask { text: text.clone() }),
        )
        .await
        .unwrap();
        assert_eq!(answer.text, text.to_uppercase());
        pids.insert(answer.pid);
    }
    assert_eq!(
        pids,
        BTreeSet::from([a.pid, b.pid]),
        "both nodes answered, nothing else"
    );

    let refused = ask_http(addr, "").await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("say something"),
        "{}",
        refused.text()
    );
    let Err(CallError::Handler { source, .. }) = handle
        .call(Ask {
            text: String::new(),
        })
        .await
    else {
        panic!("the handler's error reaches the handle");
    };
    assert_eq!(source, HandlerError::bad_request("say something"));

    let status = serve.status();
    let nodes: BTreeSet<String> = status.deployments[0]
        .replicas
        .iter()
        .map(|r| r.node.clone())
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from([a.node.to_string(), b.node.to_string()])
    );

    within_for(DEADLINE, "serve shuts down", serve.shutdown())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
}

/// A batched replica on another node: concurrent callers are gathered
/// into batches there, and each gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_replica_on_another_node_answers_each_caller() {
    let _turn = DRIVER.lock().await;
    let (p, head, nodes) = head_and_two_nodes("serve-batched", "1");
    let (rt, serve, _addr) = serve_as_driver(&p, &head).await;
    let options = on_cluster()
        .replicas(1)
        .max_ongoing_requests(32)
        .batching(BatchConfig::new(8, Duration::from_millis(50)));
    let handle = within_for(
        DEADLINE,
        "the deployment starts",
        serve.deploy_registered::<Upper>("upper", options, "ClusterTest-Upper"),
    )
    .await
    .unwrap();
    let calls = (0..16).map(|i| {
        let handle = handle.clone();
        async move {
            (
                i,
                handle
                    .call(Ask {
                        text: format!("caller {i}"),
                    })
                    .await,
            )
        }
    });
    let answers = within_for(DEADLINE, "16 callers", futures::future::join_all(calls)).await;
    let mut biggest = 0;
    for (i, answer) in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.text, format!("CALLER {i}"));
        assert!(nodes.iter().any(|n| n.pid == answer.pid), "made on a node");
        biggest = biggest.max(answer.batch);
    }
    assert!(biggest > 1, "callers were batched together");
    within_for(DEADLINE, "serve shuts down", serve.shutdown())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
}

/// A replica's node SIGKILLed while a client sends requests: every request
/// gets an answer (200, or 503 saying the replica failed; none hangs), the
/// replica starts again on the other node, and requests then succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_node_killed_its_replica_starts_elsewhere() {
    let _turn = DRIVER.lock().await;
    let (mut p, head, nodes) = head_and_two_nodes("serve-node-dies", "2");
    let (rt, serve, addr) = serve_as_driver(&p, &head).await;
    let options = on_cluster().replicas(2).retry_on_replica_failure(true);
    within_for(
        DEADLINE,
        "the deployment starts",
        serve.deploy_registered::<Upper>("upper", options, "ClusterTest-Upper"),
    )
    .await
    .unwrap();
    // The node the first replica runs on dies.
    let first = serve.status().deployments[0].replicas[0].node.clone();
    let (dead, alive) = if nodes[0].node.to_string() == first {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };

    let client = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for i in 0..400 {
            let reply = within_for(
                Duration::from_secs(70),
                "an answer",
                ask_http(addr, &format!("r{i}")),
            )
            .await;
            statuses.push(reply.status);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| p.kill(dead));

    eventually_within(DEADLINE, "two replicas run on the other node", || {
        let status = serve.status();
        let replicas = &status.deployments[0].replicas;
        replicas.len() == 2
            && replicas
                .iter()
                .all(|r| r.state == ReplicaState::Running && r.node == alive.node.to_string())
    })
    .await;
    let statuses = within_for(DEADLINE, "the client", client).await.unwrap();
    eprintln!(
        "while the node died: {} answered 200, {} answered 503",
        statuses.iter().filter(|s| **s == 200).count(),
        statuses.iter().filter(|s| **s == 503).count()
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "only 200 and 503: {statuses:?}"
    );
    for i in 0..20 {
        let reply = ask_http(addr, &format!("after {i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let answer: Answer = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer.pid, alive.pid, "answered on the surviving node");
    }
    within_for(DEADLINE, "serve shuts down", serve.shutdown())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
}

/// A config file's deployment of a kind registered by name, with
/// `replicas_on_cluster`, runs its replicas on the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_puts_a_registered_kind_on_the_cluster() {
    let _turn = DRIVER.lock().await;
    let (p, head, nodes) = head_and_two_nodes("serve-config", "1");
    let rt = p
        .join_as_driver(&head, 3, DEADLINE)
        .await
        .expect("the driver joins");
    let config = ServeConfig::from_toml(
        r#"
        [http]
        port = 0

        [[deployments]]
        name = "upper"
        kind = "ClusterTest-Upper"
        route_prefix = "/upper"
        replicas = 2
        num_cpus = 1.0
        replicas_on_cluster = true
        "#,
    )
    .unwrap();
    let serve = within_for(
        DEADLINE,
        "the config runs",
        Registry::new().run(&rt, &config),
    )
    .await
    .unwrap();
    let addr = serve.http_addr().unwrap();
    let reply = ask_http(addr, "from a config").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer: Answer = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(answer.text, "FROM A CONFIG");
    assert!(nodes.iter().any(|n| n.pid == answer.pid), "made on a node");
    within_for(DEADLINE, "serve shuts down", serve.shutdown())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
}

/// A closure's replicas cannot go to the cluster, and a kind must be
/// registered, with the type asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_the_cluster_need_a_registered_kind() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let serve = Serve::start(&rt, ServeOptions::new()).await.unwrap();
    let Err(ServeError::InvalidOptions { problem, .. }) =
        serve.deploy("upper", on_cluster(), Upper::default).await
    else {
        panic!("a closure is refused on the cluster");
    };
    assert!(problem.contains("register_deployment!"), "{problem}");
    let Err(ServeError::UnknownKind { registered, .. }) = serve
        .deploy_registered::<Upper>("upper", on_cluster(), "ClusterTest-Nobody")
        .await
    else {
        panic!("an unknown kind is refused");
    };
    assert!(registered.contains(&"ClusterTest-Upper".to_owned()));
    let Err(ServeError::WrongType { .. }) = serve
        .deploy_registered::<support::Echo>("echo", DeploymentOptions::new(), "ClusterTest-Upper")
        .await
    else {
        panic!("another type than the kind's is refused");
    };
    serve.shutdown().await.unwrap();
    rt.shutdown().await.unwrap();
}

/// What a task on a node saw of a deployment through a connected handle.
#[derive(Debug, Serialize, Deserialize)]
pub struct Seen {
    pub answers: Vec<Answer>,
    /// The handler's error for an empty text, as the handle reported it.
    pub refused: String,
    /// The pid of the process the task ran in.
    pub pid: u32,
}

impl troupe::GetSize for Seen {}

/// Connects to deployment `name` of the Serve `app` from the node this
/// task runs on, and asks each text (all at once when `together`).
#[troupe::remote]
async fn ask_from_a_node(
    app: String,
    name: String,
    texts: Vec<String>,
    together: bool,
) -> Result<Seen, String> {
    let rt = troupe::task::runtime().ok_or("not in a runtime")?;
    let handle = DeploymentHandle::<Upper>::connect(&rt, &app, &name)
        .await
        .map_err(|e| e.to_string())?;
    let asks = texts.into_iter().map(|text| handle.call(Ask { text }));
    let answers: Vec<Result<Answer, CallError>> = if together {
        futures::future::join_all(asks).await
    } else {
        let mut answers = Vec::new();
        for ask in asks {
            answers.push(ask.await);
        }
        answers
    };
    let answers = answers
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let refused = match handle
        .call(Ask {
            text: String::new(),
        })
        .await
    {
        Err(CallError::Handler { source, .. }) => source.to_string(),
        other => format!("not the handler's error: {other:?}"),
    };
    Ok(Seen {
        answers,
        refused,
        pid: std::process::id(),
    })
}

/// Calls through a handle that came in the task's arguments: the answer,
/// and the process the task ran in.
#[troupe::remote]
async fn ask_through_a_sent_handle(
    handle: DeploymentHandle<Upper>,
    text: String,
) -> Result<(String, u32), String> {
    let answer = handle.call(Ask { text }).await.map_err(|e| e.to_string())?;
    Ok((answer.text, std::process::id()))
}

/// Connects from a node and calls until the deployment is gone: how many
/// calls were answered, and the kind of the error that ended them.
#[troupe::remote]
async fn call_until_gone(app: String, name: String) -> Result<(u64, String), String> {
    let rt = troupe::task::runtime().ok_or("not in a runtime")?;
    let handle = DeploymentHandle::<Upper>::connect(&rt, &app, &name)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut answered = 0u64;
    while std::time::Instant::now() < deadline {
        match handle
            .call(Ask {
                text: "still".into(),
            })
            .await
        {
            Ok(_) => answered += 1,
            Err(e) => return Ok((answered, e.kind().to_owned())),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("still answered after a minute ({answered} calls)"))
}

/// What connecting from a node says for `app` and `name`.
#[troupe::remote]
async fn connect_error(app: String, name: String) -> String {
    let Some(rt) = troupe::task::runtime() else {
        return "not in a runtime".into();
    };
    match DeploymentHandle::<Upper>::connect(&rt, &app, &name).await {
        Ok(_) => "connected".into(),
        Err(e) => e.to_string(),
    }
}

/// Handles connected from tasks on other nodes: they reach replicas on the
/// cluster and replicas in the Serve's own process, exactly; calls made
/// together are batched; the handler's errors cross back; a deployment or
/// Serve that does not exist is named in the error; and a deleted
/// deployment's connected handles fail with `no_deployment`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_connected_from_other_nodes_reach_the_replicas() {
    let _turn = DRIVER.lock().await;
    // Three CPUs a node: the two replicas of "upper" may both land on one
    // node, and each task here must find a CPU free wherever it goes.
    let (p, head, [a, b]) = head_and_two_nodes("serve-connect", "3");
    let rt = p
        .join_as_driver(&head, 3, DEADLINE)
        .await
        .expect("the driver joins");
    let serve = Serve::start(&rt, ServeOptions::new().app("shop"))
        .await
        .expect("serve starts");
    within_for(
        DEADLINE,
        "the cluster deployment starts",
        serve.deploy_registered::<Upper>(
            "upper",
            on_cluster()
                .replicas(2)
                .batching(BatchConfig::new(4, Duration::from_millis(200))),
            "ClusterTest-Upper",
        ),
    )
    .await
    .unwrap();
    // Replicas in this process (it offers no CPUs: they ask for none).
    within_for(
        DEADLINE,
        "the local deployment starts",
        serve.deploy(
            "here",
            DeploymentOptions::new().num_cpus(0.0).replicas(1),
            Upper::default,
        ),
    )
    .await
    .unwrap();
    let nodes = BTreeSet::from([a.pid, b.pid]);
    let texts: Vec<String> = (0..16).map(|i| format!("text {i}")).collect();
    let expected: Vec<String> = texts.iter().map(|t| t.to_uppercase()).collect();

    for (name, together) in [("upper", true), ("upper", false), ("here", false)] {
        let asked = ask_from_a_node::remote(
            &rt,
            "shop".to_owned(),
            name.to_owned(),
            texts.clone(),
            together,
        );
        // A task that returns Err fails: its error is the get's.
        let seen = within_for(DEADLINE, "the task's calls", rt.get(&asked))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(nodes.contains(&seen.pid), "the task ran on a node");
        let got: Vec<String> = seen.answers.iter().map(|a| a.text.clone()).collect();
        assert_eq!(got, expected, "{name}: every caller its own answer");
        let makers: BTreeSet<u32> = seen.answers.iter().map(|a| a.pid).collect();
        if name == "here" {
            assert_eq!(makers, BTreeSet::from([std::process::id()]), "made here");
        } else {
            assert!(makers.is_subset(&nodes), "made on the nodes: {makers:?}");
        }
        if together {
            let largest = seen.answers.iter().map(|a| a.batch).max();
            assert!(largest > Some(1), "calls made together are batched");
        }
        assert!(seen.refused.contains("say something"), "{}", seen.refused);
    }

    for (app, name, says) in [
        ("shop", "nope", "no deployment \"nope\""),
        ("elsewhere", "upper", "no Serve called \"elsewhere\""),
    ] {
        let asked = connect_error::remote(&rt, app.to_owned(), name.to_owned());
        let error = within_for(DEADLINE, "the connect fails", rt.get(&asked))
            .await
            .expect("the task runs");
        assert!(error.contains(says), "{error}");
    }

    // A handle made here travels in a task's arguments and connects on
    // the node it lands on.
    let handle = serve.handle::<Upper>("upper").expect("a handle");
    let sent = ask_through_a_sent_handle::remote(&rt, handle, "sent".to_owned());
    let got = within_for(DEADLINE, "the sent handle's call", rt.get(&sent))
        .await
        .expect("the sent handle answers");
    let (text, pid) = &*got;
    assert_eq!(text, "SENT");
    assert!(nodes.contains(pid), "the task ran on a node");

    // A handle connected on a node, calling when the deployment is deleted
    // (its replica is here, so its answers can be counted here).
    let calling = call_until_gone::remote(&rt, "shop".to_owned(), "here".to_owned());
    let answered = || ANSWERED_HERE.load(std::sync::atomic::Ordering::SeqCst);
    let before = answered();
    eventually_within(DEADLINE, "the task's handle is calling", || {
        answered() > before + 5
    })
    .await;
    within_for(DEADLINE, "the delete", serve.delete("here"))
        .await
        .unwrap();
    let ended = within_for(DEADLINE, "the calls end", rt.get(&calling))
        .await
        .expect("the calls end");
    let (answered, kind) = &*ended;
    assert!(*answered > 5, "{answered} calls answered before the delete");
    assert_eq!(kind, "no_deployment");

    within_for(DEADLINE, "serve shuts down", serve.shutdown())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
}

/// A deployment that answers with the version of its code.
struct Versioned(&'static str);

impl Deployment for Versioned {
    type Request = ();
    type Response = String;

    async fn call(&mut self, _: ()) -> Result<String, HandlerError> {
        ANSWERED_HERE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(self.0.to_owned())
    }
}

/// Calls deployment `name` of Serve `app` from a node, four at a time,
/// until a replica of `until` answers: the calls answered and the errors.
#[troupe::remote]
async fn call_until_version(app: String, name: String, until: String) -> (u64, Vec<String>) {
    let Some(rt) = troupe::task::runtime() else {
        return (0, vec!["not in a runtime".into()]);
    };
    let handle = match DeploymentHandle::<Versioned>::connect(&rt, &app, &name).await {
        Ok(handle) => handle,
        Err(e) => return (0, vec![e.to_string()]),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut answered, mut errors) = (0u64, Vec::new());
    while std::time::Instant::now() < deadline {
        let calls = futures::future::join_all((0..4).map(|_| handle.call(()))).await;
        let mut done = false;
        for call in calls {
            match call {
                Ok(version) => {
                    answered += 1;
                    done |= version == until;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if done {
            return (answered, errors);
        }
    }
    errors.push(format!("no answer from {until} within a minute"));
    (answered, errors)
}

/// A rolling update while a handle connected from another node calls
/// throughout: no call fails, and the new version answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_fails_no_call_of_a_handle_connected_elsewhere() {
    let _turn = DRIVER.lock().await;
    let (p, head, _nodes) = head_and_two_nodes("serve-connect-update", "2");
    let rt = p
        .join_as_driver(&head, 3, DEADLINE)
        .await
        .expect("the driver joins");
    let serve = Serve::start(&rt, ServeOptions::new())
        .await
        .expect("serve starts");
    // Replicas here, so that their answers can be counted here.
    let options = |version: &str| {
        DeploymentOptions::new()
            .num_cpus(0.0)
            .replicas(2)
            .version(version)
    };
    within_for(
        DEADLINE,
        "v1 starts",
        serve.deploy("versioned", options("v1"), || Versioned("v1")),
    )
    .await
    .unwrap();
    let calling = call_until_version::remote(
        &rt,
        "default".to_owned(),
        "versioned".to_owned(),
        "v2".to_owned(),
    );
    let answered = || ANSWERED_HERE.load(std::sync::atomic::Ordering::SeqCst);
    let before = answered();
    eventually_within(DEADLINE, "the task's handle is calling", || {
        answered() > before + 20
    })
    .await;
    within_for(
        DEADLINE,
        "the rolling update",
        serve.deploy("versioned", options("v2"), || Versioned("v2")),
    )
    .await
    .unwrap();
    let seen = within_for(DEADLINE, "the calls end", rt.get(&calling))
        .await
        .expect("the task runs");
    let (calls, errors) = &*seen;
    assert!(
        errors.is_empty(),
        "{} of {calls} calls failed: {errors:?}",
        errors.len()
    );
    assert!(*calls > 20, "{calls} calls");

    within_for(DEADLINE, "serve shuts down", serve.shutdown())
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
}
