//! Serving through real HTTP on loopback: routing, bodies, failures,
//! overload, timeouts, status and shutdown.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::client::{self, Conn};
use support::{start, stop, Echo, Fragile, Gated, Tagged};
use tokio::sync::Semaphore;
use troupe_serve::{DeploymentOptions, ReplicaState, ServeOptions, ServeStatus};
use troupe_test_kit::{eventually, within};

fn json(reply: &client::Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_path_prefix() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    for (name, prefix) in [("a", "/a"), ("ab", "/a/b"), ("root", "/")] {
        let tag: &'static str = name;
        serve
            .deploy(
                name,
                DeploymentOptions::new().route_prefix(prefix),
                move || Tagged(tag),
            )
            .await
            .expect("deploys");
    }
    let mut conn = Conn::connect(addr).await.expect("connects");
    for (path, tag) in [
        ("/a", "a"),
        ("/a/x", "a"),
        ("/a/b", "ab"),
        ("/a/b/c", "ab"),
        ("/ab", "root"),
        ("/", "root"),
    ] {
        let reply = within("a request", conn.post(path, "[1, 2]"))
            .await
            .expect("answered");
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(json(&reply)["tag"], tag, "{path}");
        assert_eq!(json(&reply)["echo"], serde_json::json!([1, 2]));
    }
    let routes = json(&conn.get("/-/routes").await.expect("routes"));
    assert_eq!(
        routes,
        serde_json::json!({"/a/b": "ab", "/a": "a", "/": "root"})
    );
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_taken_prefixes_are_refused() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    serve
        .deploy(
            "echo",
            DeploymentOptions::new().route_prefix("/echo"),
            || Echo,
        )
        .await
        .expect("deploys");
    let reply = client::post(addr, "/echoes", "1").await.expect("answered");
    assert_eq!(reply.status, 404);
    assert_eq!(json(&reply)["kind"], "no_route");
    let taken = serve
        .deploy(
            "other",
            DeploymentOptions::new().route_prefix("/echo"),
            || Echo,
        )
        .await;
    assert!(
        matches!(taken, Err(troupe_serve::ServeError::RouteTaken { ref owner, .. }) if owner == "echo"),
        "{taken:?}"
    );
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_is_a_400_naming_the_problem() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let armed = Arc::new(AtomicBool::new(false));
    serve
        .deploy(
            "orders",
            DeploymentOptions::new().route_prefix("/orders"),
            move || Fragile {
                armed: armed.clone(),
            },
        )
        .await
        .expect("deploys");
    let mut conn = Conn::connect(addr).await.expect("connects");
    let reply = conn.post("/orders", r#"{"x": 1"#).await.expect("answered");
    assert_eq!(reply.status, 400);
    let body = json(&reply);
    assert_eq!(body["kind"], "bad_body");
    let message = body["error"].as_str().expect("a message");
    assert!(
        message.contains("EOF while parsing") && message.contains("line 1 column 7"),
        "{message}"
    );
    let reply = conn
        .post("/orders", r#"{"x": "one"}"#)
        .await
        .expect("answered");
    assert_eq!(reply.status, 400);
    assert!(json(&reply)["error"]
        .as_str()
        .expect("a message")
        .contains("invalid type: string \"one\", expected i64"));
    // The handler's own refusal is a 400 too, with its message.
    let reply = conn
        .post("/orders", r#"{"x": -3}"#)
        .await
        .expect("answered");
    assert_eq!(reply.status, 400);
    assert!(json(&reply)["error"]
        .as_str()
        .expect("a message")
        .contains("x must not be negative, got -3"));
    // The connection still serves.
    let reply = conn.post("/orders", r#"{"x": 3}"#).await.expect("answered");
    assert_eq!((reply.status, json(&reply)), (200, serde_json::json!(3)));
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_replica_is_restarted_while_the_other_serves() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let armed = Arc::new(AtomicBool::new(true));
    let for_factory = armed.clone();
    serve
        .deploy(
            "orders",
            DeploymentOptions::new().replicas(2).route_prefix("/orders"),
            move || Fragile {
                armed: for_factory.clone(),
            },
        )
        .await
        .expect("deploys");
    let reply = client::post(addr, "/orders", r#"{"x": 1, "panic": true}"#)
        .await
        .expect("answered");
    assert_eq!(reply.status, 503, "{}", reply.text());
    let body = json(&reply);
    assert_eq!(body["kind"], "replica_failed");
    let message = body["error"].as_str().expect("a message");
    assert!(
        message.contains("panicked: asked to panic") && message.contains("restarted"),
        "{message}"
    );
    // Every later request is answered, by either replica.
    let mut conn = Conn::connect(addr).await.expect("connects");
    for x in 0..50 {
        let reply = within(
            "a request",
            conn.post("/orders", &format!(r#"{{"x": {x}}}"#)),
        )
        .await
        .expect("answered");
        assert_eq!((reply.status, json(&reply)), (200, serde_json::json!(x)));
    }
    eventually(
        "the panicked replica is back and counted as restarted",
        || {
            let status = serve.status();
            let replicas = &status.deployments[0].replicas;
            replicas.len() == 2
                && replicas.iter().all(|r| r.state == ReplicaState::Running)
                && replicas.iter().map(|r| r.restarts).sum::<u32>() == 1
        },
    )
    .await;
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_replica_failed_is_retried_once_when_allowed() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let armed = Arc::new(AtomicBool::new(true));
    let for_factory = armed.clone();
    serve
        .deploy(
            "orders",
            DeploymentOptions::new()
                .replicas(2)
                .retry_on_replica_failure(true)
                .route_prefix("/orders"),
            move || Fragile {
                armed: for_factory.clone(),
            },
        )
        .await
        .expect("deploys");
    let reply = client::post(addr, "/orders", r#"{"x": 7, "panic": true}"#)
        .await
        .expect("answered");
    assert_eq!((reply.status, json(&reply)), (200, serde_json::json!(7)));
    assert!(!armed.load(Ordering::SeqCst), "the first attempt panicked");
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_and_every_request_is_answered() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let gate = Arc::new(Semaphore::new(0));
    let for_factory = gate.clone();
    serve
        .deploy(
            "slow",
            DeploymentOptions::new()
                .replicas(1)
                .max_ongoing_requests(2)
                .max_queued_requests(3)
                .route_prefix("/slow"),
            move || Gated(for_factory.clone()),
        )
        .await
        .expect("deploys");
    // 2 on the replica + 3 queued are held; the 5 others are refused
    // while the gate is still closed.
    let requests: Vec<_> = (0..10)
        .map(|i| tokio::spawn(async move { client::post(addr, "/slow", &i.to_string()).await }))
        .collect();
    eventually("5 requests are held and the 5 others answered", || {
        let s = serve.status();
        let d = &s.deployments[0];
        d.queued_requests == 3
            && d.replicas[0].ongoing_requests == 2
            && requests.iter().filter(|t| t.is_finished()).count() == 5
    })
    .await;
    let mut held = Vec::new();
    for task in requests {
        if !task.is_finished() {
            held.push(task);
            continue;
        }
        let reply = task.await.expect("task").expect("answered");
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(json(&reply)["kind"], "overloaded");
    }
    gate.add_permits(5);
    for task in held {
        let reply = within("a held request", task)
            .await
            .expect("task")
            .expect("answered");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out_with_504() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let gate = Arc::new(Semaphore::new(0));
    let for_factory = gate.clone();
    serve
        .deploy(
            "slow",
            DeploymentOptions::new()
                .request_timeout(Duration::from_millis(100))
                .route_prefix("/slow"),
            move || Gated(for_factory.clone()),
        )
        .await
        .expect("deploys");
    let reply = within("a timed-out request", client::post(addr, "/slow", "1"))
        .await
        .expect("answered");
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(json(&reply)["kind"], "timeout");
    // The replica still has the request: its place stays taken until it
    // answers, then it serves again.
    assert_eq!(
        serve.status().deployments[0].replicas[0].ongoing_requests,
        1
    );
    gate.add_permits(2);
    eventually("the timed-out request has left the replica", || {
        serve.status().deployments[0].replicas[0].ongoing_requests == 0
    })
    .await;
    let reply = client::post(addr, "/slow", "2").await.expect("answered");
    assert_eq!(reply.status, 200);
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_deployments_and_replicas_as_json() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    serve
        .deploy(
            "echo",
            DeploymentOptions::new()
                .replicas(3)
                .version("7")
                .route_prefix("/echo"),
            || Echo,
        )
        .await
        .expect("deploys");
    let reply = client::get(addr, "/-/status").await.expect("answered");
    assert_eq!(reply.status, 200);
    let status: ServeStatus = serde_json::from_slice(&reply.body).expect("a ServeStatus");
    assert_eq!(status, serve.status());
    assert_eq!(status.proxy, Some(addr.to_string()));
    let d = &status.deployments[0];
    assert_eq!(
        (d.name.as_str(), d.version.as_str(), d.target_replicas),
        ("echo", "7", 3)
    );
    assert_eq!(d.route_prefix.as_deref(), Some("/echo"));
    assert_eq!(d.replicas.len(), 3);
    assert!(d
        .replicas
        .iter()
        .all(|r| r.state == ReplicaState::Running && r.version == "7"));
    assert_eq!(
        client::get(addr, "/-/healthz")
            .await
            .expect("answered")
            .text(),
        "ok"
    );
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_requests_in_flight() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let gate = Arc::new(Semaphore::new(0));
    let for_factory = gate.clone();
    serve
        .deploy(
            "slow",
            DeploymentOptions::new().replicas(2).route_prefix("/slow"),
            move || Gated(for_factory.clone()),
        )
        .await
        .expect("deploys");
    let requests: Vec<_> = (0..4)
        .map(|i| tokio::spawn(async move { client::post(addr, "/slow", &i.to_string()).await }))
        .collect();
    eventually("4 requests are on the replicas", || {
        serve.status().deployments[0]
            .replicas
            .iter()
            .map(|r| r.ongoing_requests)
            .sum::<usize>()
            == 4
    })
    .await;
    let stopping = tokio::spawn({
        let serve = serve.clone();
        async move { serve.shutdown().await }
    });
    // The proxy no longer takes connections...
    let mut refused = false;
    for _ in 0..500 {
        if Conn::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "the proxy still accepts connections while shutting down"
    );
    // ...and the requests it had are answered once the replicas can.
    gate.add_permits(4);
    for (i, r) in requests.into_iter().enumerate() {
        let reply = within("a drained request", r)
            .await
            .expect("task")
            .expect("answered");
        assert_eq!((reply.status, reply.text()), (200, i.to_string()));
    }
    within("shutdown", stopping)
        .await
        .expect("task")
        .expect("shut down");
    assert!(serve.status().deployments.is_empty());
    rt.shutdown().await.expect("runtime shutdown");
}

/// A replica whose constructor fails.
struct Broken;

impl troupe_serve::Deployment for Broken {
    type Request = ();
    type Response = ();
    async fn call(&mut self, _: ()) -> Result<(), troupe_serve::HandlerError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_replicas_cannot_start_is_refused_and_removed() {
    let (rt, serve, addr) = start(ServeOptions::new()).await;
    let err = within(
        "a failed deploy",
        serve.deploy(
            "broken",
            DeploymentOptions::new().route_prefix("/broken"),
            || -> Broken { panic!("cannot load the model") },
        ),
    )
    .await
    .expect_err("its replica cannot start");
    assert!(
        matches!(err, troupe_serve::ServeError::Spawn { ref deployment, .. } if deployment == "broken"),
        "{err}"
    );
    assert!(serve.status().deployments.is_empty());
    assert_eq!(
        client::post(addr, "/broken", "null")
            .await
            .expect("answered")
            .status,
        404
    );
    // Options that make no sense are refused before anything starts.
    let err = serve
        .deploy(
            "bad",
            DeploymentOptions::new().max_ongoing_requests(0),
            || Echo,
        )
        .await
        .expect_err("invalid");
    assert!(
        err.to_string()
            .contains("max_ongoing_requests must be at least 1"),
        "{err}"
    );
    stop(rt, serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_sheds_requests_past_its_own_limit() {
    let (rt, serve, addr) = start(ServeOptions::new().max_concurrent_requests(2)).await;
    let gate = Arc::new(Semaphore::new(0));
    let for_factory = gate.clone();
    serve
        .deploy(
            "slow",
            DeploymentOptions::new().route_prefix("/slow"),
            move || Gated(for_factory.clone()),
        )
        .await
        .expect("deploys");
    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(async move { client::post(addr, "/slow", &i.to_string()).await }))
        .collect();
    eventually("2 requests are on the replica", || {
        serve.status().deployments[0].replicas[0].ongoing_requests == 2
    })
    .await;
    // A third is shed at once, whatever its route; the status still
    // answers.
    for path in ["/slow", "/elsewhere"] {
        let reply = within("a shed request", client::post(addr, path, "3"))
            .await
            .expect("answered");
        assert_eq!(reply.status, 503, "{path}: {}", reply.text());
        assert_eq!(json(&reply)["kind"], "proxy_overloaded");
    }
    let status = client::get(addr, "/-/status").await.expect("answered");
    assert_eq!(status.status, 200);
    gate.add_permits(3); // the 2 held and one more after
    for r in held {
        let reply = within("a held request", r)
            .await
            .expect("task")
            .expect("answered");
        assert_eq!(reply.status, 200);
    }
    assert_eq!(
        client::post(addr, "/slow", "4")
            .await
            .expect("answered")
            .status,
        200
    );
    stop(rt, serve).await;
}
