//! What the tests share: the HTTP client, a runtime with serving on a
//! loopback port, and small deployments.

#![allow(dead_code)]

pub mod client;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::Semaphore;
use troupe::prelude::*;
use troupe_serve::{Deployment, HandlerError, Serve, ServeOptions};

/// A runtime and serving with its proxy on 127.0.0.1:0.
pub async fn start(options: ServeOptions) -> (Runtime, Serve, SocketAddr) {
    let rt = troupe::init(Config::default()).await.expect("runtime");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let serve = Serve::start(&rt, options.http(addr))
        .await
        .expect("serve starts");
    let addr = serve.http_addr().expect("the proxy runs");
    (rt, serve, addr)
}

/// Stops serving, then the runtime, each within the test's deadline.
pub async fn stop(rt: Runtime, serve: Serve) {
    troupe_test_kit::within("serve shuts down", serve.shutdown())
        .await
        .expect("serve shutdown");
    troupe_test_kit::within("the runtime shuts down", rt.shutdown())
        .await
        .expect("runtime shutdown");
}

/// Answers with its request.
pub struct Echo;

impl Deployment for Echo {
    type Request = serde_json::Value;
    type Response = serde_json::Value;
    async fn call(&mut self, request: Self::Request) -> Result<Self::Response, HandlerError> {
        Ok(request)
    }
}

/// Answers `{"tag": tag, "echo": request}`.
pub struct Tagged(pub &'static str);

impl Deployment for Tagged {
    type Request = serde_json::Value;
    type Response = serde_json::Value;
    async fn call(&mut self, request: Self::Request) -> Result<Self::Response, HandlerError> {
        Ok(serde_json::json!({ "tag": self.0, "echo": request }))
    }
}

/// Answers with its request once the test gives it a permit.
pub struct Gated(pub Arc<Semaphore>);

impl Deployment for Gated {
    type Request = serde_json::Value;
    type Response = serde_json::Value;
    async fn call(&mut self, request: Self::Request) -> Result<Self::Response, HandlerError> {
        self.0
            .acquire()
            .await
            .map_err(|e| HandlerError::internal(e.to_string()))?
            .forget();
        Ok(request)
    }
}

/// A request to [`Fragile`].
#[derive(Debug, Deserialize)]
pub struct Order {
    pub x: i64,
    #[serde(default)]
    pub panic: bool,
}

/// Panics on `{"panic": true}` while `armed` (disarming it), else answers
/// `x`; refuses negative `x` as a bad request.
pub struct Fragile {
    pub armed: Arc<AtomicBool>,
}

impl Deployment for Fragile {
    type Request = Order;
    type Response = i64;
    async fn call(&mut self, order: Order) -> Result<i64, HandlerError> {
        if order.panic && self.armed.swap(false, Ordering::SeqCst) {
            panic!("asked to panic");
        }
        if order.x < 0 {
            return Err(HandlerError::bad_request(format!(
                "x must not be negative, got {}",
                order.x
            )));
        }
        Ok(order.x)
    }
}
