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

/// Why a head may not reach this node back: its advertised address
/// (`host:port`) is loopback while the head's is not. Empty otherwise.
pub(super) async fn loopback_hint(advertised: &str, head: &str) -> String {
    match (is_loopback(advertised).await, is_loopback(head).await) {
        (Some(true), Some(false)) => format!(
            " (this node advertises {advertised}, which a head on another machine cannot \
             reach: set --node-ip-address, or ClusterOptions::advertise, to an address of \
             this machine the head can reach)"
        ),
        _ => String::new(),
    }
}

async fn is_loopback(addr: &str) -> Option<bool> {
    tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip().is_loopback())
}

/// The address peers reach this node's `port` at.
pub(super) async fn advertised(host: &str, port: u16) -> Result<SocketAddr, ClusterError> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => resolve_host(host, port).await,
    }
}

/// Where others scrape this node's Prometheus metrics (`host:port`),
/// given the metrics service's endpoint (`http://IP:PORT/metrics`): its
/// own address, or the advertised host where it listens on every
/// interface. `None` for an endpoint that names no socket address.
pub(super) fn metrics_target(endpoint: &str, host: &str) -> Option<String> {
    let authority = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let authority = authority.split('/').next().unwrap_or(authority);
    let listens: SocketAddr = authority.parse().ok()?;
    if !listens.ip().is_unspecified() {
        return Some(listens.to_string());
    }
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, listens.port()).to_string(),
        Err(_) => format!("{host}:{}", listens.port()),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loopback_node_joining_a_routed_head_is_told_why_it_cannot_be_reached() {
        let hint = loopback_hint("127.0.0.1:4000", "192.0.2.10:6380").await;
        assert!(hint.contains("--node-ip-address"), "{hint}");
        assert!(loopback_hint("127.0.0.1:4000", "127.0.0.1:6380")
            .await
            .is_empty());
        assert!(loopback_hint("192.0.2.2:4000", "192.0.2.10:6380")
            .await
            .is_empty());
    }

    #[test]
    fn metrics_are_scraped_where_they_listen_or_at_the_advertised_host() {
        let at = |endpoint, host| metrics_target(endpoint, host);
        assert_eq!(
            at("http://127.0.0.1:9464/metrics", "10.0.0.5").as_deref(),
            Some("127.0.0.1:9464")
        );
        assert_eq!(
            at("http://0.0.0.0:9464/metrics", "10.0.0.5").as_deref(),
            Some("10.0.0.5:9464")
        );
        assert_eq!(
            at("http://[::]:9464/metrics", "fd00::5").as_deref(),
            Some("[fd00::5]:9464")
        );
        assert_eq!(
            at("http://0.0.0.0:9464/metrics", "worker-3.troupe").as_deref(),
            Some("worker-3.troupe:9464")
        );
        assert_eq!(at("not an address", "10.0.0.5"), None);
    }
}
