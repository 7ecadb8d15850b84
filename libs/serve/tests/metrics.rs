//! The per-deployment metrics, read through a recorder installed for this
//! test binary alone (its own process).

mod support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use support::client::Conn;
use support::{start, stop, Echo};
use troupe_serve::{DeploymentOptions, ServeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_errors_latency_and_replicas_are_recorded_per_deployment() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");

    let (rt, serve, addr) = start(ServeOptions::new()).await;
    serve
        .deploy(
            "echo",
            DeploymentOptions::new().replicas(2).route_prefix("/echo"),
            || Echo,
        )
        .await
        .expect("deploys");
    let mut conn = Conn::connect(addr).await.expect("connects");
    for i in 0..3 {
        assert_eq!(
            conn.post("/echo", &i.to_string())
                .await
                .expect("answered")
                .status,
            200
        );
    }
    assert_eq!(conn.post("/echo", "{").await.expect("answered").status, 400);

    // One snapshot: taking one resets the counters.
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, kind: MetricKind, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                key.kind() == kind
                    && key.key().name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, _, _, value)| value)
    };
    let echo = [("deployment", "echo")];
    assert_eq!(
        find("troupe_serve_requests_total", MetricKind::Counter, &echo),
        Some(&DebugValue::Counter(4))
    );
    assert_eq!(
        find(
            "troupe_serve_errors_total",
            MetricKind::Counter,
            &[("deployment", "echo"), ("kind", "bad_body")]
        ),
        Some(&DebugValue::Counter(1))
    );
    match find("troupe_serve_request_seconds", MetricKind::Histogram, &echo) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 3);
            assert!(samples.iter().all(|s| s.into_inner() > 0.0));
        }
        other => panic!("no latency histogram: {other:?}"),
    }
    assert_eq!(
        find("troupe_serve_replicas", MetricKind::Gauge, &echo),
        Some(&DebugValue::Gauge(2.0.into()))
    );
    stop(rt, serve).await;
}
