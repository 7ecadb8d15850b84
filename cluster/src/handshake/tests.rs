use super::*;

async fn both(
    server_cookie: &'static [u8],
    client_cookie: &'static [u8],
    expect: Option<NodeId>,
) -> (
    Result<NodeId, HandshakeError>,
    Result<NodeId, HandshakeError>,
) {
    let (mut a, mut b) = tokio::io::duplex(1024);
    let server = tokio::spawn(async move {
        let result = accept(&mut a, Purpose::Link, NodeId(1), server_cookie).await;
        drop(a); // a refused client sees the connection end
        result
    });
    let client = connect(&mut b, Purpose::Link, NodeId(2), client_cookie, expect).await;
    drop(b); // a client that gave up hangs up
    (server.await.expect("joined"), client)
}

#[tokio::test]
async fn both_sides_learn_each_other_when_they_share_the_cookie() {
    let (server, client) = both(b"secret", b"secret", Some(NodeId(1))).await;
    assert_eq!(server.expect("accepted"), NodeId(2));
    assert_eq!(client.expect("connected"), NodeId(1));
}

#[tokio::test]
async fn a_client_without_the_cookie_is_refused_and_learns_it() {
    let (server, client) = both(b"secret", b"guess", None).await;
    assert!(
        matches!(server, Err(HandshakeError::WrongCookie)),
        "{server:?}"
    );
    assert!(
        matches!(client, Err(HandshakeError::WrongCookie)),
        "{client:?}"
    );
}

#[tokio::test]
async fn a_server_without_the_cookie_cannot_pass_for_a_member() {
    // The server answers with a MAC of its own cookie: the client, who
    // would otherwise send its frames, refuses it.
    let (mut a, mut b) = tokio::io::duplex(1024);
    let impostor = tokio::spawn(async move {
        let mut greeting = Vec::new();
        greeting.extend_from_slice(&MAGIC);
        greeting.extend_from_slice(&[VERSION, Purpose::Data as u8]);
        greeting.extend_from_slice(&1u64.to_le_bytes());
        greeting.extend_from_slice(&[7u8; NONCE_BYTES]);
        a.write_all(&greeting).await.expect("sent");
        let mut proof = [0u8; PROOF_BYTES];
        a.read_exact(&mut proof).await.expect("read");
        a.write_all(&[0u8; MAC_BYTES]).await.expect("sent");
    });
    let client = connect(&mut b, Purpose::Data, NodeId(2), b"secret", None).await;
    assert!(
        matches!(client, Err(HandshakeError::WrongCookie)),
        "{client:?}"
    );
    impostor.await.expect("joined");
}

#[tokio::test]
async fn the_wrong_node_or_port_is_refused() {
    let (_, client) = both(b"secret", b"secret", Some(NodeId(9))).await;
    assert!(
        matches!(
            client,
            Err(HandshakeError::WrongNode {
                expected: NodeId(9),
                got: NodeId(1)
            })
        ),
        "{client:?}"
    );
    let (mut a, mut b) = tokio::io::duplex(1024);
    tokio::spawn(async move { accept(&mut a, Purpose::Link, NodeId(1), b"secret").await });
    let client = connect(&mut b, Purpose::Data, NodeId(2), b"secret", None).await;
    assert!(
        matches!(client, Err(HandshakeError::NotTroupe(_))),
        "{client:?}"
    );
}

#[test]
fn admission_bounds_pending_handshakes_in_total_and_per_source() {
    let admission = Admission::new(3, 2);
    let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let first = admission.admit(a).expect("admitted");
    let _second = admission.admit(a).expect("admitted");
    assert!(admission.admit(a).is_none(), "a third from one source");
    let _other = admission.admit(b).expect("another source");
    assert!(admission.admit(b).is_none(), "the total is reached");
    drop(first);
    assert!(
        admission.admit(a).is_some(),
        "a finished handshake frees its place"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_after_the_deadline() {
    let (mut a, _b) = tokio::io::duplex(1024);
    let server = accept(&mut a, Purpose::Link, NodeId(1), b"secret").await;
    assert!(matches!(server, Err(HandshakeError::Timeout)), "{server:?}");
}

#[tokio::test]
async fn the_read_only_token_makes_an_observer_and_never_a_member() {
    let cookie: &[u8] = b"secret";
    let token = crate::cookie::read_only_token(cookie);
    let run = |client_key: Vec<u8>, offered: bool, standing: Standing| async move {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let token = crate::cookie::read_only_token(cookie);
        let server = tokio::spawn(async move {
            let key = offered.then_some(token.as_bytes());
            let result = accept_as(&mut a, Purpose::Session, NodeId(1), cookie, key).await;
            drop(a);
            result
        });
        let client = connect_as(
            &mut b,
            Purpose::Session,
            NodeId(2),
            &client_key,
            None,
            standing,
        )
        .await;
        drop(b);
        (server.await.expect("joined"), client)
    };
    // The token, where observers are welcome: an observer.
    let (server, client) = run(token.clone().into_bytes(), true, Standing::Observer).await;
    assert_eq!(server.expect("accepted").1, Standing::Observer);
    assert_eq!(client.expect("observing"), NodeId(1));
    // The token, by a client that meant to join: refused at its end.
    let (_, client) = run(token.clone().into_bytes(), true, Standing::Member).await;
    assert!(
        matches!(client, Err(HandshakeError::WrongCookie)),
        "{client:?}"
    );
    // The token where only members are: refused.
    let (server, _) = run(token.into_bytes(), false, Standing::Observer).await;
    assert!(
        matches!(server, Err(HandshakeError::WrongCookie)),
        "{server:?}"
    );
    // The cookie: a member, even where observers are welcome.
    let (server, client) = run(cookie.to_vec(), true, Standing::Member).await;
    assert_eq!(server.expect("accepted").1, Standing::Member);
    assert!(client.is_ok());
}
