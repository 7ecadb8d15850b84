//! Deployments over time, through HTTP on loopback and handles: batching,
//! composition, health checks, autoscaling, rolling updates and the
//! config file.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::client::{self, Conn};
use support::{start, stop, Echo, Gated, Tagged};
use tokio::sync::Semaphore;
use troupe_serve::{
    AutoscalingConfig, BatchConfig, Deployment, DeploymentHandle, DeploymentOptions, HandlerError,
    Registry, ReplicaState, ServeConfig, ServeError, ServeOptions,
};
use troupe_test_kit::{eventually, eventually_within, within};

/// Doubles each number, a batch at a time, and records the batch sizes.
struct Doubler {
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl Deployment for Doubler {
    type Request = i64;
    type Response = i64;
    async fn call(&mut self, x: i64) -> Result<i64, HandlerError> {
        Ok(2 * x)
    }
    async fn call_batch(&mut self, xs: Vec<i64>) -> Vec<Result<i64, HandlerError>> {
        self.sizes.lock().expect("lock").push(xs.len());
        xs.into_iter().map(|x| Ok(2 * x)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_gives_each_caller_its_own_answer() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let for_factory = sizes.clone();
    serve
        .deploy(
            "double",
            DeploymentOptions::new()
                .max_ongoing_requests(64)
                // Batches go out only when full: 40 requests are 5
                // batches of 8 however they arrive.
                .batching(BatchConfig::new(8, Duration::from_secs(30)))
                .route_prefix("/double"),
            move || Doubler {
                sizes: for_factory.clone(),
            },
        )
        .await
        .expect("deploys");
    let requests: Vec<_> = (0..40i64)
        .map(|x| {
            tokio::spawn(async move { (x, client::post(addr, "/double", &x.to_string()).await) })
        })
        .collect();
    for r in requests {
        let (x, reply) = within("a batched request", r).await.expect("task");
        let reply = reply.expect("answered");
        assert_eq!((reply.status, reply.text()), (200, (2 * x).to_string()));
    }
    assert_eq!(*sizes.lock().expect("lock"), vec![8; 5]);

    // At run time: batches of one from the next batch on.
    serve
        .set_batching("double", BatchConfig::new(1, Duration::ZERO))
        .expect("changes");
    sizes.lock().expect("lock").clear();
    let handle = serve.handle::<Doubler>("double").expect("a handle");
    let calls: Vec<_> = (0..10)
        .map(|x| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.call(x).await })
        })
        .collect();
    for (x, c) in calls.into_iter().enumerate() {
        assert_eq!(
            within("a call", c).await.expect("task").expect("answered"),
            2 * x as i64
        );
    }
    assert_eq!(*sizes.lock().expect("lock"), vec![1; 10]);
    stop(rt, serve).await;
}

/// Adds one to a number, then has `model` double it: a pipeline of two
/// deployments, in-process.
struct Pipeline {
    model: DeploymentHandle<Doubler>,
}

impl Deployment for Pipeline {
    type Request = i64;
    type Response = String;
    async fn call(&mut self, x: i64) -> Result<String, HandlerError> {
        let doubled = self
            .model
            .call(x + 1)
            .await
            .map_err(|e| HandlerError::internal(e.to_string()))?;
        Ok(format!("({x} + 1) * 2 = {doubled}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_calls_another_through_a_typed_handle() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let model = serve
        .deploy("model", DeploymentOptions::new().replicas(2), move || {
            Doubler {
                sizes: sizes.clone(),
            }
        })
        .await
        .expect("deploys");
    serve
        .deploy(
            "pipeline",
            DeploymentOptions::new().route_prefix("/"),
            move || Pipeline {
                model: model.clone(),
            },
        )
        .await
        .expect("deploys");
    let reply = client::post(addr, "/", "20").await.expect("answered");
    assert_eq!(
        (reply.status, reply.text()),
        (200, "\"(20 + 1) * 2 = 42\"".to_string())
    );
    assert!(matches!(
        serve.handle::<Echo>("model"),
        Err(ServeError::WrongType { .. })
    ));
    assert!(matches!(
        serve.handle::<Echo>("nothing"),
        Err(ServeError::NoDeployment(_))
    ));
    stop(rt, serve).await;
}

/// Healthy until the test says otherwise, once.
struct Checked {
    sick: Arc<AtomicBool>,
}

impl Deployment for Checked {
    type Request = ();
    type Response = ();
    async fn call(&mut self, _: ()) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn check_health(&mut self) -> Result<(), String> {
        if self.sick.swap(false, Ordering::SeqCst) {
            return Err("sick".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_its_health_check_is_restarted() {
    let (rt, serve, addr) =
        start(ServeOptions::new().control_interval(Duration::from_millis(10))).await;
    let sick = Arc::new(AtomicBool::new(false));
    let for_factory = sick.clone();
    serve
        .deploy(
            "checked",
            DeploymentOptions::new()
                .health_check(Duration::from_millis(20), Duration::from_secs(1))
                .route_prefix("/checked"),
            move || Checked {
                sick: for_factory.clone(),
            },
        )
        .await
        .expect("deploys");
    sick.store(true, Ordering::SeqCst);
    eventually("the replica is restarted after its failed check", || {
        let s = serve.status();
        let r = &s.deployments[0].replicas[0];
        r.restarts == 1 && r.state == ReplicaState::Running
    })
    .await;
    assert_eq!(
        client::post(addr, "/checked", "")
            .await
            .expect("answered")
            .status,
        200
    );
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_adds_replicas_under_load_and_drains_them_after() {
    let (rt, serve, addr) =
        start(ServeOptions::new().control_interval(Duration::from_millis(10))).await;
    let gate = Arc::new(Semaphore::new(0));
    let for_factory = gate.clone();
    serve
        .deploy(
            "scaled",
            DeploymentOptions::new()
                .max_ongoing_requests(2)
                .autoscaling(AutoscalingConfig {
                    min_replicas: 1,
                    max_replicas: 3,
                    target_ongoing_requests: 1.0,
                    upscale_delay: Duration::from_millis(50),
                    downscale_delay: Duration::from_millis(200),
                })
                .route_prefix("/scaled"),
            move || Gated(for_factory.clone()),
        )
        .await
        .expect("deploys");
    assert_eq!(serve.status().deployments[0].replicas.len(), 1);
    let requests: Vec<_> = (0..6)
        .map(|i| tokio::spawn(async move { client::post(addr, "/scaled", &i.to_string()).await }))
        .collect();
    eventually(
        "3 replicas run under the load, each with 2 requests",
        || {
            let s = serve.status();
            let d = &s.deployments[0];
            d.replicas.len() == 3
                && d.replicas
                    .iter()
                    .all(|r| r.ongoing_requests == 2 && r.state == ReplicaState::Running)
        },
    )
    .await;
    gate.add_permits(6);
    for r in requests {
        let reply = within("a request", r)
            .await
            .expect("task")
            .expect("answered");
        assert_eq!(reply.status, 200);
    }
    eventually_within(
        Duration::from_secs(20),
        "back to 1 replica once idle",
        || {
            let s = serve.status();
            s.deployments[0].replicas.len() == 1 && s.deployments[0].target_replicas == 1
        },
    )
    .await;
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_fails_no_request() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    serve
        .deploy(
            "svc",
            DeploymentOptions::new()
                .replicas(3)
                .version("1")
                .route_prefix("/svc"),
            || Tagged("v1"),
        )
        .await
        .expect("deploys");
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (running, failures, answered) =
                (running.clone(), failures.clone(), answered.clone());
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await.expect("connects");
                let mut tags = Vec::new();
                while running.load(Ordering::SeqCst) {
                    match conn.post("/svc", "1").await {
                        Ok(reply) if reply.status == 200 => {
                            let body: serde_json::Value =
                                serde_json::from_slice(&reply.body).expect("JSON");
                            tags.push(body["tag"].as_str().unwrap_or("?").to_owned());
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(reply) => failures.lock().expect("lock").push(reply.text()),
                        Err(e) => failures.lock().expect("lock").push(e.to_string()),
                    }
                }
                tags
            })
        })
        .collect();
    eventually("the clients are being answered", || {
        answered.load(Ordering::SeqCst) > 20
    })
    .await;
    within(
        "the rolling update",
        serve.deploy(
            "svc",
            DeploymentOptions::new()
                .replicas(3)
                .version("2")
                .route_prefix("/svc"),
            || Tagged("v2"),
        ),
    )
    .await
    .expect("updates");
    let after = answered.load(Ordering::SeqCst);
    eventually("the clients are answered after the update", || {
        answered.load(Ordering::SeqCst) > after + 20
    })
    .await;
    running.store(false, Ordering::SeqCst);
    let mut last_tags = Vec::new();
    for c in clients {
        let tags = within("a client", c).await.expect("task");
        last_tags.push(tags.last().cloned());
    }
    assert_eq!(*failures.lock().expect("lock"), Vec::<String>::new());
    assert!(
        last_tags.iter().all(|t| t.as_deref() == Some("v2")),
        "{last_tags:?}"
    );
    let s = serve.status();
    assert_eq!(s.deployments[0].replicas.len(), 3);
    assert!(s.deployments[0].replicas.iter().all(|r| r.version == "2"));
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_runs_its_deployments() {
    let rt = troupe::init(troupe::Config::default())
        .await
        .expect("runtime");
    let config = ServeConfig::from_toml(
        r#"
        [http]
        host = "127.0.0.1"
        port = 0

        [[deployments]]
        name = "echo"
        kind = "echo"
        route_prefix = "/echo"
        replicas = 2
        max_ongoing_requests = 3
        request_timeout = 5.0

        [[deployments]]
        name = "double"
        kind = "double"
        route_prefix = "/double"
        [deployments.batching]
        max_batch_size = 4
        max_wait = 0.001
        "#,
    )
    .expect("parses");
    let registry = Registry::new()
        .register("echo", || Echo)
        .register("double", || Doubler {
            sizes: Arc::default(),
        });
    let serve = registry.run(&rt, &config).await.expect("runs");
    let addr = serve.http_addr().expect("the proxy runs");
    let reply = client::post(addr, "/echo", r#"{"a": [1]}"#)
        .await
        .expect("answered");
    assert_eq!(
        (reply.status, reply.text()),
        (200, r#"{"a":[1]}"#.to_string())
    );
    let reply = client::post(addr, "/double", "21").await.expect("answered");
    assert_eq!((reply.status, reply.text()), (200, "42".to_string()));
    let status = serve.status();
    let names: Vec<&str> = status.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["double", "echo"]);
    assert_eq!(status.deployments[1].replicas.len(), 2);
    assert_eq!(
        status.deployments[0].batching,
        Some(BatchConfig::new(4, Duration::from_millis(1)))
    );
    serve.shutdown().await.expect("shutdown");

    // Errors say where and what.
    let unknown =
        ServeConfig::from_toml("[[deployments]]\nname = \"x\"\nkind = \"nope\"\n").expect("parses");
    let err = registry
        .run(&rt, &unknown)
        .await
        .expect_err("an unknown kind");
    assert!(
        matches!(err, ServeError::UnknownKind { ref kind, .. } if kind == "nope"),
        "{err}"
    );
    let err =
        ServeConfig::from_toml("[[deployments]]\nname = \"x\"\nkind = \"echo\"\nreplica = 2\n")
            .expect_err("a misspelt field");
    assert!(
        err.to_string().contains("unknown field `replica`") && err.to_string().contains("line 4"),
        "{err}"
    );
    rt.shutdown().await.expect("runtime shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_to_zero_and_back_for_a_waiting_request() {
    let (rt, serve, addr) =
        start(ServeOptions::new().control_interval(Duration::from_millis(10))).await;
    let handle = serve
        .deploy(
            "lazy",
            DeploymentOptions::new()
                .autoscaling(AutoscalingConfig {
                    min_replicas: 0,
                    max_replicas: 2,
                    target_ongoing_requests: 2.0,
                    upscale_delay: Duration::from_millis(50),
                    downscale_delay: Duration::from_millis(100),
                })
                .route_prefix("/lazy"),
            || Echo,
        )
        .await
        .expect("deploys");
    assert!(serve.status().deployments[0].replicas.is_empty());
    // The request waits in the queue until a replica has started.
    let reply = within(
        "a request to a deployment scaled to zero",
        client::post(addr, "/lazy", "5"),
    )
    .await
    .expect("answered");
    assert_eq!((reply.status, reply.text()), (200, "5".to_string()));
    assert_eq!(serve.status().deployments[0].replicas.len(), 1);
    eventually("back to zero replicas once idle", || {
        serve.status().deployments[0].replicas.is_empty()
    })
    .await;
    assert_eq!(
        within(
            "a call through the handle",
            handle.call(serde_json::json!(6))
        )
        .await
        .expect("answered"),
        serde_json::json!(6)
    );
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_deployment_drains_and_its_handles_fail() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let gate = Arc::new(Semaphore::new(0));
    let for_factory = gate.clone();
    let handle = serve
        .deploy(
            "slow",
            DeploymentOptions::new().route_prefix("/slow"),
            move || Gated(for_factory.clone()),
        )
        .await
        .expect("deploys");
    let in_flight = tokio::spawn(async move { client::post(addr, "/slow", "1").await });
    eventually("the request is on the replica", || {
        serve.status().deployments[0].replicas[0].ongoing_requests == 1
    })
    .await;
    let deleting = tokio::spawn({
        let serve = serve.clone();
        async move { serve.delete("slow").await }
    });
    eventually("the route is gone", || {
        serve.status().deployments.is_empty()
    })
    .await;
    assert!(matches!(
        handle.call(serde_json::json!(2)).await,
        Err(troupe_serve::CallError::NoDeployment { .. })
    ));
    gate.add_permits(1);
    let reply = within("the drained request", in_flight)
        .await
        .expect("task")
        .expect("answered");
    assert_eq!((reply.status, reply.text()), (200, "1".to_string()));
    within("the delete", deleting)
        .await
        .expect("task")
        .expect("deleted");
    assert_eq!(
        client::post(addr, "/slow", "3")
            .await
            .expect("answered")
            .status,
        404
    );
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hold_their_resources_for_their_life() {
    let node = troupe::Resources::cpus(2.0);
    let rt = troupe::init(troupe::Config::default().resources(node))
        .await
        .expect("runtime");
    let serve = troupe_serve::Serve::start(&rt, ServeOptions::new())
        .await
        .expect("serve");
    let two = serve
        .deploy(
            "two",
            DeploymentOptions::new().replicas(2).num_cpus(1.0),
            || Echo,
        )
        .await
        .expect("2 replicas of 1 CPU fit 2 CPUs");
    assert_eq!(
        two.call(serde_json::json!(1)).await.expect("answered"),
        serde_json::json!(1)
    );
    // The node's CPUs are all held: another replica waits, then gives up.
    let err = serve
        .deploy(
            "third",
            DeploymentOptions::new()
                .num_cpus(1.0)
                .start_timeout(Duration::from_millis(200)),
            || Echo,
        )
        .await
        .expect_err("no CPU left");
    assert!(matches!(err, ServeError::SpawnTimeout { .. }), "{err}");
    // More than the node has can never start.
    let err = serve
        .deploy("huge", DeploymentOptions::new().num_cpus(3.0), || Echo)
        .await
        .expect_err("infeasible");
    assert!(
        matches!(&err, ServeError::Spawn { source, .. } if matches!(**source, troupe::SpawnError::Infeasible { .. })),
        "{err}"
    );
    // Deleting a deployment gives its CPUs back.
    serve.delete("two").await.expect("deleted");
    serve
        .deploy("third", DeploymentOptions::new().num_cpus(1.0), || Echo)
        .await
        .expect("a CPU is free again");
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_is_read_from_disk_and_its_errors_name_it() {
    let rt = troupe::init(troupe::Config::default())
        .await
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("troupe-serve-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        "[http]\nport = 0\n[[deployments]]\nname = \"echo\"\nkind = \"echo\"\nroute_prefix = \"/\"\n",
    )
    .expect("written");
    let registry = Registry::new().register("echo", || Echo);
    let serve = troupe_serve::run_config_file(&rt, &path, &registry)
        .await
        .expect("runs");
    let addr = serve.http_addr().expect("the proxy runs");
    let reply = client::post(addr, "/", "[true]").await.expect("answered");
    assert_eq!((reply.status, reply.text()), (200, "[true]".to_string()));
    serve.shutdown().await.expect("shutdown");
    let missing = dir.join("missing.toml");
    let err = troupe_serve::run_config_file(&rt, &missing, &registry)
        .await
        .expect_err("no such file");
    assert!(
        matches!(&err, ServeError::Config { path, .. } if path.ends_with("missing.toml")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).expect("cleaned up");
    rt.shutdown().await.expect("runtime shutdown");
}

/// Panics on a batch holding a negative number.
struct PickyBatcher;

impl Deployment for PickyBatcher {
    type Request = i64;
    type Response = i64;
    async fn call(&mut self, x: i64) -> Result<i64, HandlerError> {
        Ok(x)
    }
    async fn call_batch(&mut self, xs: Vec<i64>) -> Vec<Result<i64, HandlerError>> {
        assert!(xs.iter().all(|&x| x >= 0), "a negative number in the batch");
        xs.into_iter().map(Ok).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_panics_fails_each_of_its_callers_with_a_503() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    serve
        .deploy(
            "picky",
            DeploymentOptions::new()
                .max_ongoing_requests(16)
                // A batch goes out only once full: the four requests below
                // are one batch however slowly they arrive.
                .batching(BatchConfig::new(4, Duration::from_secs(30)))
                .route_prefix("/picky"),
            || PickyBatcher,
        )
        .await
        .expect("deploys");
    let requests: Vec<_> = [1i64, 2, -3, 4]
        .into_iter()
        .map(|x| tokio::spawn(async move { client::post(addr, "/picky", &x.to_string()).await }))
        .collect();
    for r in requests {
        let reply = within("a request of the failed batch", r)
            .await
            .expect("task")
            .expect("answered");
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            reply.text().contains("a negative number in the batch"),
            "{}",
            reply.text()
        );
    }
    // The restarted replica batches again (batches of one from here on).
    serve
        .set_batching("picky", BatchConfig::new(1, Duration::ZERO))
        .expect("changes");
    let reply = within(
        "a request after the restart",
        client::post(addr, "/picky", "5"),
    )
    .await
    .expect("answered");
    assert_eq!((reply.status, reply.text()), (200, "5".to_string()));
    stop(rt, serve).await;
}

/// `DeploymentHandle::connect` in the `Serve`'s own process: the `Serve`'s
/// handle; an unknown `Serve` or deployment is named in the error; two
/// `Serve`s of one name on one runtime are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_connected_in_the_serves_process_routes_through_its_router() {
    let (rt, serve, _addr) = start(ServeOptions::new().app("shop")).await;
    within(
        "the deployment starts",
        serve.deploy("echo", DeploymentOptions::new().replicas(2), || Echo),
    )
    .await
    .unwrap();
    let echo = DeploymentHandle::<Echo>::connect(&rt, "shop", "echo")
        .await
        .expect("connects");
    let answer = echo.call(serde_json::json!({"n": 7})).await.unwrap();
    assert_eq!(answer, serde_json::json!({"n": 7}));
    assert!(
        serve.status().deployments[0]
            .replicas
            .iter()
            .any(|r| r.served > 0),
        "the Serve's router counted the call"
    );

    match DeploymentHandle::<Echo>::connect(&rt, "elsewhere", "echo").await {
        Err(ServeError::Connect { problem, .. }) => {
            assert!(
                problem.contains("no Serve called \"elsewhere\""),
                "{problem}"
            )
        }
        other => panic!("not a Connect error: {other:?}"),
    }
    match DeploymentHandle::<Echo>::connect(&rt, "shop", "missing").await {
        Err(ServeError::NoDeployment(name)) => assert_eq!(name, "missing"),
        other => panic!("not NoDeployment: {other:?}"),
    }
    match troupe_serve::Serve::start(&rt, ServeOptions::new().app("shop")).await {
        Err(ServeError::AppTaken(app)) => assert_eq!(app, "shop"),
        other => panic!("a second Serve called shop: {other:?}"),
    }
    // A handle travels as its names; decoded where no runtime's code runs
    // (here, outside any task), its call says why it cannot connect. (In
    // a task on another node it connects: tests/cluster.rs.)
    let bytes = serde_json::to_vec(&echo).expect("a handle encodes");
    let decoded: DeploymentHandle<Echo> = serde_json::from_slice(&bytes).expect("and decodes");
    assert_eq!((decoded.app(), decoded.name()), ("shop", "echo"));
    match decoded.call(serde_json::json!(1)).await {
        Err(e @ troupe_serve::CallError::Connect { .. }) => {
            assert!(e.to_string().contains("outside a Troupe runtime"), "{e}");
            assert_eq!(e.status(), 503);
        }
        other => panic!("not a Connect error: {other:?}"),
    }
    stop(rt, serve).await;
}
