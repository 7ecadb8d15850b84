//! The directory's tests: joins (builds, ids, a directory in parts),
//! heartbeats, suspicion and death, leaves, the head's own stalls, and
//! rejoins to a restarted head.

use super::*;

fn hello(node: u64, role: Role, build: u64) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        build_id: build,
        node: NodeId(node),
        name: format!("n{node}"),
        role,
        control_addr: "127.0.0.1:1".into(),
        data_addr: "127.0.0.1:2".parse().unwrap(),
        resources: Resources::cpus(1.0),
        pid: 1,
        metrics: None,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn directory(t0: Instant) -> Directory {
    Directory::new(hello(1, Role::Head, 7), Some(7), Detector::default(), t0)
}

fn state(d: &Directory, node: u64) -> Option<MemberState> {
    d.get(NodeId(node)).map(|m| m.state)
}

#[test]
fn a_restarted_head_takes_members_back_under_their_ids_and_waits_for_the_others() {
    let t0 = Instant::now();
    let mut old = directory(t0);
    for node in [2, 3, 4] {
        old.join(hello(node, Role::Worker, 7), t0).unwrap();
    }
    old.join(hello(5, Role::Client, 0), t0).unwrap();
    let known = old.members();
    // Restarted from the `troupe` binary (no build) as node 9.
    let mut d = Directory::new(hello(9, Role::Head, 0), None, Detector::default(), t0);
    let (welcome, changes) = d
        .rejoin(hello(2, Role::Worker, 7), NodeId(1), known.clone(), t0)
        .unwrap();
    assert_eq!(welcome.head, NodeId(9));
    assert!(changes.contains(&Change::Up(NodeId(2))), "{changes:?}");
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Dead(NodeId(1), why) if why.contains("restarted"))),
        "the lost head is dead: {changes:?}"
    );
    let listed = |id: u64| {
        welcome
            .members
            .iter()
            .find(|m| m.hello.node == NodeId(id))
            .map(|m| m.state)
    };
    assert_eq!(listed(1), Some(MemberState::Dead));
    assert_eq!(listed(2), Some(MemberState::Alive));
    assert_eq!(listed(3), Some(MemberState::Suspect), "expected back");
    assert_eq!(listed(5), None, "a client is not expected back");
    // 3 comes back in time, under its id; the lost head stays dead.
    let (_, changes) = d
        .rejoin(
            hello(3, Role::Worker, 7),
            NodeId(1),
            known.clone(),
            t0 + ms(3000),
        )
        .unwrap();
    assert_eq!(changes, vec![Change::Up(NodeId(3))]);
    assert_eq!(state(&d, 3), Some(MemberState::Alive));
    // 4 never does: dead once the grace has passed, not before.
    for at in [3000, 4900] {
        for node in [2, 3] {
            d.heartbeat(
                NodeId(node),
                Resources::cpus(1.0),
                Load::default(),
                t0 + ms(at),
            );
        }
        assert!(d.tick(t0 + ms(at)).is_empty(), "at {at} ms");
    }
    let dead = d.tick(t0 + REJOIN_GRACE);
    assert!(
        matches!(&dead[..], [Change::Dead(NodeId(4), _)]),
        "{dead:?}"
    );
    // Dead is final: a late rejoin under that id is refused.
    let late = d.rejoin(hello(4, Role::Worker, 7), NodeId(1), known, t0 + ms(5100));
    assert!(late.unwrap_err().contains("already left or died"));
}

#[test]
fn a_rejoin_cannot_kill_a_live_member_or_the_head_nor_take_their_ids() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    d.join(hello(2, Role::Worker, 7), t0).unwrap();
    // It claims that the live head (1) and a live member (2) were the
    // head it lost, and lists the head as a live worker.
    let claims = vec![
        Member {
            available: Resources::default(),
            hello: hello(2, Role::Head, 7),
            state: MemberState::Alive,
            load: Load::default(),
        },
        Member {
            available: Resources::default(),
            hello: hello(1, Role::Worker, 7),
            state: MemberState::Alive,
            load: Load::default(),
        },
    ];
    for lost in [1, 2] {
        let (_, changes) = d
            .rejoin(hello(3, Role::Worker, 7), NodeId(lost), claims.clone(), t0)
            .unwrap();
        assert_eq!(changes, vec![Change::Up(NodeId(3))]);
    }
    assert_eq!(state(&d, 1), Some(MemberState::Alive));
    assert_eq!(state(&d, 2), Some(MemberState::Alive));
    assert_eq!(d.get(NodeId(1)).map(|m| m.hello.role), Some(Role::Head));
    assert!(d
        .rejoin(hello(1, Role::Worker, 7), NodeId(2), Vec::new(), t0)
        .is_err());
}

#[test]
fn a_silent_member_is_suspected_then_dead_and_stays_dead() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    let (welcome, up) = d.join(hello(2, Role::Worker, 7), t0).unwrap();
    assert_eq!(up, vec![Change::Up(NodeId(2))]);
    assert_eq!(welcome.members.len(), 2);
    assert!(d.tick(t0 + ms(500)).is_empty());
    assert_eq!(d.tick(t0 + ms(600)), vec![Change::Suspected(NodeId(2))]);
    assert!(d.tick(t0 + ms(700)).is_empty(), "suspected once");
    let dead = d.tick(t0 + ms(1500));
    assert!(
        matches!(&dead[..], [Change::Dead(NodeId(2), _)]),
        "{dead:?}"
    );
    // Its late heartbeat does not revive it: it must rejoin anew.
    assert!(d
        .heartbeat(
            NodeId(2),
            Resources::cpus(1.0),
            Load::default(),
            t0 + ms(1600)
        )
        .is_empty());
    assert_eq!(d.get(NodeId(2)).unwrap().state, MemberState::Dead);
    assert!(d.join(hello(2, Role::Worker, 7), t0 + ms(1700)).is_err());
    assert!(d.join(hello(3, Role::Worker, 7), t0 + ms(1700)).is_ok());
    // The head never suspects itself.
    assert!(d
        .tick(t0 + ms(60_000))
        .iter()
        .all(|c| !matches!(c, Change::Dead(NodeId(1), _))));
}

#[test]
fn heartbeats_keep_a_member_alive_and_revive_a_suspect() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    d.join(hello(2, Role::Worker, 7), t0).unwrap();
    for i in 1..100 {
        let now = t0 + ms(200 * i);
        d.heartbeat(NodeId(2), Resources::cpus(0.5), Load::default(), now);
        assert!(d.tick(now).is_empty());
    }
    assert_eq!(d.get(NodeId(2)).unwrap().available.num_cpus, 0.5);
    let t1 = t0 + ms(200 * 99);
    assert_eq!(
        d.session_closed(NodeId(2)),
        vec![Change::Suspected(NodeId(2))]
    );
    assert_eq!(
        d.heartbeat(
            NodeId(2),
            Resources::cpus(1.0),
            Load::default(),
            t1 + ms(100)
        ),
        vec![Change::Recovered(NodeId(2))]
    );
}

#[test]
fn a_stalled_head_declares_nobody_dead_for_its_own_stall() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    d.join(hello(2, Role::Worker, 7), t0).unwrap();
    d.forgive(ms(5_000));
    assert!(d.tick(t0 + ms(5_100)).is_empty());
    assert!(
        !d.tick(t0 + ms(6_500)).is_empty(),
        "silence after the stall counts"
    );
}

#[test]
fn a_clean_leave_is_not_a_failure() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    d.join(hello(2, Role::Worker, 7), t0).unwrap();
    assert_eq!(
        d.leave(NodeId(2), t0 + ms(10)),
        vec![Change::Left(NodeId(2))]
    );
    assert!(d.tick(t0 + ms(10_000)).is_empty());
    assert_eq!(d.get(NodeId(2)).unwrap().state, MemberState::Left);
}

#[test]
fn another_build_is_refused_with_a_reason() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    let err = d.join(hello(2, Role::Worker, 8), t0).unwrap_err();
    assert!(err.contains("differs from the cluster's build"), "{err}");
    // A status command is not a node: any build may ask.
    assert!(d.join(hello(3, Role::Client, 8), t0).is_ok());
    let mut old = hello(4, Role::Worker, 7);
    old.protocol = PROTOCOL_VERSION + 1;
    assert!(d.join(old, t0).unwrap_err().contains("protocol version"));
}

#[test]
fn a_head_without_a_build_takes_the_first_joiners() {
    let t0 = Instant::now();
    let mut d = Directory::new(hello(1, Role::Head, 0), None, Detector::default(), t0);
    d.join(hello(3, Role::Client, 99), t0).unwrap();
    d.join(hello(2, Role::Worker, 7), t0).unwrap();
    assert!(d.join(hello(4, Role::Driver, 8), t0).is_err());
    assert!(d.join(hello(5, Role::Driver, 7), t0).is_ok());
}

#[test]
fn a_join_may_not_take_the_heads_id_and_a_large_directory_goes_in_parts() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    let err = d.join(hello(1, Role::Worker, 7), t0).unwrap_err();
    assert!(err.contains("head's id"), "{err}");
    let mut long = hello(2, Role::Worker, 7);
    long.name = "x".repeat(1 << 20);
    assert!(d.join(long, t0).is_err());
    let mut many = hello(3, Role::Worker, 7);
    for i in 0..=MAX_CUSTOM_RESOURCES {
        many.resources.custom.insert(format!("r{i}"), 1.0);
    }
    assert!(d.join(many, t0).is_err());
    assert_eq!(d.members().len(), 1, "nothing was added");
    // A heartbeat cannot declare what the join did not.
    let mut h = hello(4, Role::Worker, 7);
    h.resources.custom.insert("gpu-a".into(), 1.0);
    d.join(h, t0).unwrap();
    let mut free = Resources::cpus(1.0);
    free.custom.insert("gpu-a".into(), 1.0);
    free.custom.insert("x".repeat(MAX_NAME_BYTES * 100), 1.0);
    d.heartbeat(NodeId(4), free, Load::default(), t0);
    let custom = &d.get(NodeId(4)).unwrap().available.custom;
    assert_eq!(custom.keys().collect::<Vec<_>>(), ["gpu-a"]);
    // Members at the longest names and the most resources, until a
    // welcome cannot list them all: then joins are refused, and the
    // directory of those admitted travels in parts that each fit a
    // frame and give back every member in order.
    let mut admitted = 2;
    let mut next = 100;
    let mut fill = |d: &mut Directory, admitted: &mut usize| loop {
        let mut h = hello(next, Role::Worker, 7);
        next += 1;
        h.name = "x".repeat(MAX_NAME_BYTES);
        h.control_addr = "y".repeat(MAX_NAME_BYTES);
        for i in 0..MAX_CUSTOM_RESOURCES {
            h.resources.custom.insert(format!("{i:0>64}"), 1.0);
        }
        match d.join(h, t0) {
            Ok(_) => *admitted += 1,
            Err(why) => {
                assert!(why.contains("do not fit in one welcome"), "{why}");
                break;
            }
        }
        assert!(*admitted < 4096);
    };
    fill(&mut d, &mut admitted);
    assert!(admitted > 180, "{admitted}");
    assert_eq!(d.members().len(), admitted, "the refused one is not kept");
    // Departed members stay listed: with them, the directory outgrows
    // one frame.
    for n in 100..130 {
        d.leave(NodeId(n), t0);
    }
    fill(&mut d, &mut admitted);
    assert_eq!(d.members().len(), admitted);
    let members = d.members();
    let parts = directory_parts(members.clone());
    assert!(parts.len() > 1);
    for part in &parts {
        let frame = crate::protocol::Frame::Notice {
            from: NodeId(1),
            body: crate::protocol::Notice::Directory {
                epoch: 1,
                part: 0,
                parts: parts.len() as u32,
                members: part.clone(),
            },
        };
        assert!(frame.encode().is_ok());
    }
    let again: Vec<NodeId> = parts.into_iter().flatten().map(|m| m.hello.node).collect();
    let want: Vec<NodeId> = members.iter().map(|m| m.hello.node).collect();
    assert_eq!(again, want);
    // A status reply is cut to one frame, the head first.
    let status = trim_to_frame(members);
    assert!(status.len() < admitted);
    assert_eq!(status[0].hello.node, NodeId(1));
}

#[test]
fn silences_are_how_long_each_live_member_has_not_been_heard() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    d.join(hello(2, Role::Worker, 7), t0).unwrap();
    d.join(hello(3, Role::Worker, 7), t0).unwrap();
    d.join(hello(4, Role::Worker, 7), t0).unwrap();
    d.heartbeat(
        NodeId(2),
        Resources::cpus(1.0),
        Load::default(),
        t0 + ms(1_000),
    );
    d.leave(NodeId(4), t0 + ms(1_000));
    let mut silences = d.silences(t0 + ms(2_000));
    silences.sort();
    assert_eq!(
        silences,
        [
            (NodeId(1), ms(2_000)),
            (NodeId(2), ms(1_000)),
            (NodeId(3), ms(2_000))
        ]
    );
}

#[test]
fn departed_members_are_forgotten_past_a_bound() {
    let t0 = Instant::now();
    let mut d = directory(t0);
    for n in 0..(KEEP_DEPARTED as u64 + 10) {
        d.join(hello(100 + n, Role::Worker, 7), t0).unwrap();
        d.leave(NodeId(100 + n), t0 + ms(n));
    }
    assert_eq!(d.members().len(), KEEP_DEPARTED + 1);
}
