//! Fuzz target for the control frames (`Frame::decode`): every request,
//! reply and notice, the directory (`Notice::Directory`, `Reply::Status`),
//! join hellos, task specs and the encoded arguments they carry.
//!
//! The decoder gets arbitrary bytes, mutations of its seeds
//! (`fuzz/corpus/frame/`) and splices of two seeds: it returns a frame or
//! an error, never panics, and never asks for an allocation much larger
//! than its input; a frame it returns encodes to one that decodes the same.
//! Frames generated here round-trip (compared by `Debug`: frames have no
//! `PartialEq`). See `fuzz/README.md`.

use std::borrow::Cow;
use std::sync::Arc;
use troupe_core::placement_group::PlacementGroupId;

use proptest::prelude::*;
use proptest::strategy::{LazyJust, ValueTree};
use proptest::test_runner::TestRunner;
use troupe_cluster::protocol::{
    Frame, FrameError, Hello, Load, Member, MemberState, Notice, Reply, Request, Role, Welcome,
    MAX_FRAME_BYTES,
};
use troupe_core::error::Failure;
use troupe_core::logs::{LogLine, LogPage, LogQuery};
use troupe_core::remote::{Relocation, RemoteOutcome, RemoteResult, RemoteSpawn, StopHow};
use troupe_core::task::{Returns, TaskArgs, TaskId, TaskOptions, TaskSpec, TraceContext};
use troupe_core::{
    ActorError, ActorId, ActorInfo, ActorOptions, Cause, Encoded, NodeId, ObjectError, ObjectId,
    Resources, SpawnError,
};
use troupe_objects::RemoteError;
use troupe_test_kit::fuzz::{self, Recording};

#[global_allocator]
static ALLOC: Recording = Recording;

/// Cases per target by default (a few seconds of a debug build).
const CASES: u32 = 256;
/// The largest single allocation a decode of a few KiB may ask for (serde
/// preallocates at most 1 MiB for a sequence, whatever length it claims).
const CAP: usize = 2 << 20;

fn node() -> impl Strategy<Value = NodeId> {
    any::<u64>().prop_map(NodeId)
}

fn object_id() -> impl Strategy<Value = ObjectId> {
    (node(), any::<u64>()).prop_map(|(node, seq)| ObjectId { node, seq })
}

fn actor_id() -> impl Strategy<Value = ActorId> {
    (node(), any::<u64>()).prop_map(|(node, seq)| ActorId { node, seq })
}

fn task_id() -> impl Strategy<Value = TaskId> {
    (node(), any::<u64>()).prop_map(|(node, seq)| TaskId { node, seq })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_:.]{0,16}".prop_map(String::from),
        any::<String>().prop_map(|s| s.chars().take(20).collect()),
    ]
}

fn resources() -> impl Strategy<Value = Resources> {
    (
        0.0f64..64.0,
        0.0f64..8.0,
        any::<u64>(),
        prop::collection::btree_map(text(), 0.0f64..100.0, 0..3),
    )
        .prop_map(|(cpus, gpus, memory, custom)| Resources {
            num_cpus: cpus,
            num_gpus: gpus,
            memory,
            custom,
        })
}

fn encoded() -> impl Strategy<Value = Encoded> {
    (fuzz::bytes(48), prop::collection::vec(object_id(), 0..4)).prop_map(|(bytes, refs)| {
        let mut e = Encoded::plain(bytes);
        e.refs = refs;
        e
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        (any::<u32>(), any::<u64>(), node(), text()),
        prop_oneof![
            Just(Role::Head),
            Just(Role::Worker),
            Just(Role::Driver),
            Just(Role::Client)
        ],
        (text(), any::<[u8; 4]>(), any::<u16>()),
        resources(),
        (any::<u32>(), proptest::option::of(text())),
    )
        .prop_map(
            |(
                (protocol, build_id, node, name),
                role,
                (control_addr, ip, port),
                resources,
                (pid, metrics),
            )| {
                Hello {
                    protocol,
                    build_id,
                    node,
                    name,
                    role,
                    control_addr,
                    data_addr: (ip, port).into(),
                    resources,
                    pid,
                    metrics,
                }
            },
        )
}

fn load() -> impl Strategy<Value = Load> {
    any::<[u64; 7]>().prop_map(|l| Load {
        tasks_queued: l[0],
        tasks_running: l[1],
        tasks_unplaced: l[2],
        actors: l[3],
        objects: l[4],
        object_bytes: l[5],
        placement_groups_pending: l[6],
    })
}

fn member() -> impl Strategy<Value = Member> {
    (
        hello(),
        prop_oneof![
            Just(MemberState::Alive),
            Just(MemberState::Suspect),
            Just(MemberState::Dead),
            Just(MemberState::Left)
        ],
        resources(),
        load(),
    )
        .prop_map(|(hello, state, available, load)| Member {
            hello,
            state,
            available,
            load,
        })
}

fn members() -> impl Strategy<Value = Vec<Member>> {
    prop::collection::vec(member(), 0..4)
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (
        (task_id(), text(), encoded()),
        prop::collection::vec(object_id(), 0..3),
        (0.0f64..16.0, 0u32..5, any::<bool>()),
        (
            node(),
            any::<u32>(),
            prop::collection::vec(object_id(), 0..3),
        ),
        prop_oneof![
            Just(Returns::One),
            any::<u8>().prop_map(Returns::Many),
            Just(Returns::Stream)
        ],
        (task_id(), prop::option::of(task_id())),
    )
        .prop_map(
            |(
                (id, function, args),
                deps,
                (cpus, retries, retry_exceptions),
                (owner, attempt, results),
                returns,
                (root, parent),
            )| TaskSpec {
                id,
                function: Cow::Owned(function),
                args: TaskArgs::Encoded(args),
                deps,
                options: TaskOptions::default()
                    .num_cpus(cpus)
                    .max_retries(retries)
                    .retry_exceptions(retry_exceptions),
                owner,
                attempt,
                results,
                returns,
                trace: TraceContext { root, parent },
            },
        )
}

fn actor_info() -> impl Strategy<Value = ActorInfo> {
    (
        actor_id(),
        prop::option::of(text()),
        text(),
        node(),
        resources(),
        prop::collection::vec(any::<u32>(), 0..3),
    )
        .prop_map(
            |(id, name, type_name, node, resources, gpu_ids)| ActorInfo {
                id,
                name,
                type_name: Cow::Owned(type_name),
                node,
                resources,
                gpu_ids,
            },
        )
}

fn cause() -> impl Strategy<Value = Cause> {
    prop_oneof![
        prop::collection::vec(text(), 0..4).prop_map(|m| Cause::new(RemoteError::from_messages(m))),
        object_id().prop_map(|id| Cause::new(ObjectError::Freed(id))),
        (object_id(), object_id()).prop_map(|(a, b)| Cause::new(ObjectError::Failed {
            id: a,
            cause: Cause::new(ObjectError::Unknown(b)),
        })),
    ]
}

fn object_error() -> impl Strategy<Value = ObjectError> {
    prop_oneof![
        object_id().prop_map(ObjectError::Unknown),
        (object_id(), node(), text()).prop_map(|(id, node, why)| ObjectError::Lost {
            id,
            node,
            why
        }),
        (object_id(), text()).prop_map(|(id, reason)| ObjectError::Fetch { id, reason }),
        (object_id(), cause()).prop_map(|(id, cause)| ObjectError::Failed { id, cause }),
    ]
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        text().prop_map(Failure::Panicked),
        cause().prop_map(Failure::Error),
        (object_id(), object_error()).prop_map(|(id, e)| Failure::Dependency(id, e)),
        object_error().prop_map(Failure::Store),
        node().prop_map(Failure::NodeDied),
        (node(), text()).prop_map(|(n, why)| Failure::Lost(n, why)),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        hello().prop_map(Request::Join),
        (hello(), node(), prop::collection::vec(member(), 0..4)).prop_map(
            |(hello, lost, members)| Request::Rejoin {
                hello,
                lost,
                members
            }
        ),
        task_spec().prop_map(Request::RunTask),
        (actor_id(), text(), encoded()).prop_map(|(actor, method, args)| Request::CallActor {
            actor,
            method,
            args
        }),
        object_id().prop_map(Request::Locate),
        (text(), text(), encoded(), any::<bool>()).prop_map(
            |(type_name, constructor, args, wait_for_room)| {
                Request::SpawnActor(RemoteSpawn {
                    type_name,
                    constructor,
                    options: ActorOptions::default(),
                    args,
                    wait_for_room,
                })
            }
        ),
        (actor_id(), prop::option::of(any::<bool>())).prop_map(|(actor, kill)| {
            Request::StopActor {
                actor,
                how: match kill {
                    None => StopHow::Stop,
                    Some(no_restart) => StopHow::Kill { no_restart },
                },
            }
        }),
        text().prop_map(Request::FindActor),
        actor_id().prop_map(Request::LocateActor),
        LazyJust::new(|| Request::Status),
        LazyJust::new(|| Request::StopCluster),
        LazyJust::new(|| Request::Leave),
        LazyJust::new(|| Request::Stop),
        (
            node(),
            any::<u64>(),
            prop::collection::vec((any::<usize>(), resources()), 0..4)
        )
            .prop_map(|(node, seq, bundles)| Request::ReserveBundles {
                group: PlacementGroupId { node, seq },
                bundles,
            }),
        (node(), any::<u64>())
            .prop_map(|(node, seq)| Request::ReleaseBundles(PlacementGroupId { node, seq })),
        (node(), any::<u64>(), prop::option::of(text()), any::<u32>()).prop_map(
            |(node, from, task, limit)| Request::LogPage {
                node,
                query: LogQuery {
                    from,
                    task,
                    actor: None,
                    limit,
                },
            }
        ),
        (object_id(), node(), text(), any::<u32>()).prop_map(|(id, owner, function, index)| {
            Request::KeepCopy {
                id,
                owner,
                function,
                index,
            }
        }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let result = prop_oneof![
        encoded().prop_map(RemoteResult::Inline),
        (node(), prop::collection::vec(node(), 0..3))
            .prop_map(|(node, replicas)| RemoteResult::At { node, replicas })
    ];
    prop_oneof![
        (node(), any::<u64>(), members(), any::<u64>()).prop_map(
            |(head, build_id, members, heartbeat_ms)| Reply::Welcome(Welcome {
                head,
                build_id,
                members,
                heartbeat_ms,
            })
        ),
        text().prop_map(Reply::Refused),
        prop::collection::vec((object_id(), result), 0..3)
            .prop_map(|r| Reply::Task(RemoteOutcome::Done(r))),
        failure().prop_map(|f| Reply::Task(RemoteOutcome::Failed(f))),
        text().prop_map(|t| Reply::Task(RemoteOutcome::Refused(t))),
        node().prop_map(|n| Reply::Task(RemoteOutcome::Spilled(n))),
        encoded().prop_map(|e| Reply::Actor(Ok(e))),
        (actor_info(), text(), text()).prop_map(|(actor, method, message)| {
            Reply::Actor(Err(ActorError::Panicked {
                actor: Arc::new(actor),
                method: Cow::Owned(method),
                message,
            }))
        }),
        actor_info().prop_map(|a| Reply::Spawned(Ok(a))),
        text().prop_map(|n| Reply::Spawned(Err(SpawnError::NameTaken(n)))),
        prop::option::of(actor_info()).prop_map(Reply::Found),
        actor_info().prop_map(|a| Reply::ActorAt(Relocation::At(a))),
        LazyJust::new(|| Reply::ActorAt(Relocation::Restarting)),
        text().prop_map(|t| Reply::ActorAt(Relocation::Dead(t))),
        prop::option::of(node()).prop_map(|n| Reply::Location(Ok(n))),
        object_error().prop_map(|e| Reply::Location(Err(e))),
        members().prop_map(Reply::Status),
        LazyJust::new(|| Reply::Ok),
        (
            prop::collection::vec((any::<u64>(), text(), prop::option::of(text())), 0..4),
            any::<u64>()
        )
            .prop_map(|(lines, next)| Reply::LogPage(Box::new(LogPage {
                lines: lines
                    .into_iter()
                    .map(|(seq, text, task)| LogLine {
                        seq,
                        unix_ms: seq / 3,
                        level: "INFO".to_owned(),
                        target: "app".to_owned(),
                        text,
                        task,
                        actor: None,
                    })
                    .collect(),
                next,
                dropped: next / 7,
                more: next % 2 == 0,
            }))),
    ]
}

fn notice() -> impl Strategy<Value = Notice> {
    let ids = || prop::collection::vec(any::<u64>(), 0..6);
    prop_oneof![
        (resources(), load(), any::<u64>()).prop_map(|(available, load, sent_at_micros)| {
            Notice::Heartbeat {
                available,
                load,
                sent_at_micros,
            }
        }),
        (any::<u64>(), any::<u32>(), any::<u32>(), members()).prop_map(
            |(epoch, part, parts, members)| Notice::Directory {
                epoch,
                part,
                parts,
                members
            }
        ),
        (object_id(), any::<u32>()).prop_map(|(id, times)| Notice::Released { id, times }),
        (object_id(), node(), any::<i32>()).prop_map(|(id, borrower, delta)| Notice::Borrow {
            id,
            borrower,
            delta
        }),
        ids().prop_map(|ids| Notice::Probe { ids }),
        ids().prop_map(|ids| Notice::Unknown { ids }),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Notice::Link {
            addr: (ip, port).into()
        }),
        actor_id().prop_map(|actor| Notice::ActorEnded { actor }),
        (actor_id(), text()).prop_map(|(actor, reason)| Notice::ActorExited { actor, reason }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u64>(), node(), request()).prop_map(|(id, from, body)| Frame::Request {
            id,
            from,
            body
        }),
        (any::<u64>(), reply()).prop_map(|(id, body)| Frame::Reply { id, body }),
        (node(), notice()).prop_map(|(from, body)| Frame::Notice { from, body }),
    ]
}

/// Decodes `bytes` as a frame; what decodes re-encodes to the same frame.
fn check(bytes: &[u8]) {
    let decoded = fuzz::within_allocation(CAP, "Frame::decode", || Frame::decode(bytes));
    match decoded {
        Ok(frame) => {
            let _ = (frame.claimed_sender(), frame.carried_refs());
            let again = frame.encode().expect("a decoded frame encodes");
            let back = Frame::decode(&again).expect("its encoding decodes");
            assert_eq!(format!("{back:?}"), format!("{frame:?}"));
        }
        Err(FrameError::Malformed(_)) => {}
        Err(other) => panic!("{} bytes: {other}", bytes.len()),
    }
}

/// Valid frames of every kind, the same on every run, for the corpus.
fn seeds() -> Vec<Vec<u8>> {
    let mut runner = TestRunner::deterministic();
    let mut seeds: Vec<Vec<u8>> = (0..40)
        .map(|_| {
            let f = frame().new_tree(&mut runner).expect("a frame").current();
            f.encode().expect("encodes")
        })
        .collect();
    // A directory of many members, and a heartbeat (the most common frame).
    let many = prop::collection::vec(member(), 12..13)
        .new_tree(&mut runner)
        .expect("members")
        .current();
    seeds.push(
        Frame::Notice {
            from: NodeId(1),
            body: Notice::Directory {
                epoch: 1,
                part: 0,
                parts: 1,
                members: many,
            },
        }
        .encode()
        .unwrap(),
    );
    seeds.push(
        Frame::Notice {
            from: NodeId(2),
            body: Notice::Heartbeat {
                available: Resources::cpus(2.0),
                load: Load::default(),
                sent_at_micros: 1_796_000_000_000_000,
            },
        }
        .encode()
        .unwrap(),
    );
    seeds
}

/// Regenerates the seed corpus: `cargo test -p troupe-cluster --test
/// fuzz_frames -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus: run it to regenerate the seeds"]
fn write_seed_corpus() {
    fuzz::write_corpus("frame", &seeds());
}

#[test]
fn every_seed_replays_and_the_generated_ones_are_current() {
    let on_disk = fuzz::corpus("frame");
    for seed in &on_disk {
        check(seed);
    }
    for seed in seeds() {
        assert!(
            on_disk.contains(&seed),
            "the frame corpus is stale (regenerate it)"
        );
    }
}

#[test]
fn a_length_claiming_gigabytes_is_refused_without_allocating_them() {
    // A directory of u32::MAX members, a probe of u32::MAX ids, and a
    // call whose argument bytes claim 4 GiB.
    // (epoch 1, part 0 of 1, then the member count)
    let mut directory = vec![0x02, 0x01, 0x01, 0x01, 0x00, 0x01];
    directory.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut probe = vec![0x02, 0x01, 0x04];
    probe.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut call = vec![0x00, 0x01, 0x01, 0x02, 0x01, 0x01, 0x01, b'm'];
    call.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    for bytes in [directory, probe, call] {
        let got = fuzz::within_allocation(CAP, "a huge length", || Frame::decode(&bytes));
        assert!(matches!(got, Err(FrameError::Malformed(_))), "{got:?}");
    }
    let oversize = vec![0u8; MAX_FRAME_BYTES + 1];
    let got = fuzz::within_allocation(1024, "an oversize frame", || Frame::decode(&oversize));
    assert!(matches!(got, Err(FrameError::TooLarge { .. })));
}

#[test]
fn the_allocation_recorder_sees_what_a_decoder_asks_for() {
    // Without it, the bounds above would hold of anything.
    fuzz::largest_allocation();
    let v: Vec<u8> = Vec::with_capacity(CAP * 2);
    assert!(fuzz::largest_allocation() >= CAP * 2);
    drop(v);
}

proptest! {
    #![proptest_config(fuzz::config(CASES))]

    #[test]
    fn fuzz_frame(bytes in fuzz::inputs(fuzz::corpus("frame"), 1024)) {
        check(&bytes);
    }

    #[test]
    fn frames_round_trip(f in frame()) {
        let bytes = f.encode().unwrap();
        let back = Frame::decode(&bytes).unwrap();
        prop_assert_eq!(format!("{back:?}"), format!("{f:?}"));
    }
}
