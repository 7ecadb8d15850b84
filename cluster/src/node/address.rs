//! Where a node listens and where its peers reach it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{ClusterError, ClusterOptions, Role};

/// Where a node listens: the bind address asked for, except that a node
/// left on the loopback default (and no advertised host) that joins a head
/// on another machine listens on the address its route to the head leaves
/// from: the head could not reach it back at 127.0.0.1.
pub(super) async fn reachable_bind(options: &ClusterOptions) -> IpAddr {
    let Some(head) = options.head.as_deref() else {
        return options.bind;
    };
    if options.role == Role::Head || !options.bind.is_loopback() || options.advertise.is_some() {
        return options.bind;
    }
    let Some(head) = tokio::net::lookup_host(head)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
    else {
        return options.bind;
    };
    if head.ip().is_loopback() {
        return options.bind;
    }
    let unspecified = match head {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    // Connecting a UDP socket sends nothing: it asks the kernel for the
    // route, whose source address is this machine's on the head's network.
    let local = async {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(unspecified, 0)).await?;
        socket.connect(head).await?;
        socket.local_addr()
    };
    match local.await {
        Ok(local) => {
            tracing::info!(head = %head, bind = %local.ip(), "the head is on another machine: listening on the address that reaches it");
            local.ip()
        }
        Err(err) => {
            tracing::warn!(head = %head, %err, "no route to the head found: staying on loopback");
            options.bind
        }
    }
}

/// The address peers reach this node's `port` at.
pub(super) async fn advertised(host: &str, port: u16) -> Result<SocketAddr, ClusterError> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => resolve_host(host, port).await,
    }
}

async fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, ClusterError> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ClusterError::Bind {
            addr: format!("{host}:{port}"),
            source,
        })?;
    addrs
        .next()
        .ok_or_else(|| ClusterError::Start(format!("{host} resolves to no address")))
}
