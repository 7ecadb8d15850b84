//! Remote functions: chains, retries, errors, dependencies, resources,
//! context, shutdown, and the scheduler's restart without loss.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use common::{eventually, next_event, runtime, within};
use troupe::prelude::*;
use troupe::supervisor::SupervisionEvent;
use troupe::task::TaskCause;

#[troupe::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[troupe::remote]
async fn double_later(x: u64) -> u64 {
    tokio::task::yield_now().await;
    x * 2
}

#[troupe::remote]
fn nothing() {}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[troupe::remote]
fn flaky() -> u32 {
    let n = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= 2 {
        panic!("attempt {n} fails");
    }
    troupe::task::current().map_or(0, |c| c.attempt)
}

static ALWAYS_CALLS: AtomicU32 = AtomicU32::new(0);

#[troupe::remote]
fn always_panics() -> u32 {
    ALWAYS_CALLS.fetch_add(1, Ordering::SeqCst);
    panic!("never works")
}

static ERR_CALLS: AtomicU32 = AtomicU32::new(0);

#[troupe::remote]
fn refuses(label: String) -> Result<u32, String> {
    ERR_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(format!("no {label}"))
}

#[troupe::remote]
async fn forever() -> u32 {
    std::future::pending::<()>().await;
    0
}

#[troupe::remote]
fn context_of() -> (u64, u32, f64) {
    let c = troupe::task::current().expect("inside a task");
    (c.task_id.seq, c.attempt, c.resources.num_cpus)
}

fn task_error(err: &ObjectError) -> &TaskError {
    err.failure::<TaskError>()
        .unwrap_or_else(|| panic!("expected a task error, got {err}"))
}

#[tokio::test]
async fn tasks_return_refs_to_their_results() {
    let rt = runtime().await;
    let r = add::remote(&rt, 2, 3);
    assert_eq!(*rt.get(&r).await.unwrap(), 5);
    let d = double_later::remote(&rt, 21);
    assert_eq!(*rt.get(&d).await.unwrap(), 42);
    rt.get(&nothing::remote(&rt)).await.unwrap();
    assert!(add::NAME.ends_with("tasks::add"), "{}", add::NAME);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn refs_as_arguments_chain_tasks() {
    let rt = runtime().await;
    let mut r = add::remote(&rt, 0, 1);
    for _ in 0..1000 {
        r = add::remote(&rt, &r, 1);
    }
    let two = rt.put(2u64).await.unwrap();
    let diamond = add::remote(
        &rt,
        double_later::remote(&rt, &two),
        double_later::remote(&rt, &two),
    );
    assert_eq!(*within("chain", rt.get(&r)).await.unwrap(), 1001);
    assert_eq!(*rt.get(&diamond).await.unwrap(), 8);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_on_two_attempts_then_success() {
    let rt = runtime().await;
    let r = flaky::remote(&rt);
    assert_eq!(
        *within("flaky", rt.get(&r)).await.unwrap(),
        3,
        "succeeded on attempt 3"
    );
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn retries_exhausted_is_a_typed_error() {
    let rt = runtime().await;
    let r = always_panics::options(TaskOptions::default().max_retries(2)).remote(&rt);
    let err = within("failing task", rt.get(&r)).await.unwrap_err();
    match task_error(&err) {
        TaskError::Failed {
            task,
            attempts,
            cause,
            ..
        } => {
            assert!(task.ends_with("always_panics"));
            assert_eq!(*attempts, 3);
            assert!(matches!(cause, TaskCause::Panicked(m) if m == "never works"));
        }
        other => panic!("expected Failed, got {other}"),
    }
    assert_eq!(ALWAYS_CALLS.load(Ordering::SeqCst), 3);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_are_retried_only_with_retry_exceptions() {
    let rt = runtime().await;
    let once = refuses::remote(&rt, "thanks".to_owned());
    let err = rt.get(&once).await.unwrap_err();
    assert!(
        matches!(task_error(&err), TaskError::Failed { attempts: 1, cause: TaskCause::Error(e), .. } if e.to_string() == "no thanks")
    );
    let before = ERR_CALLS.load(Ordering::SeqCst);
    let retried = refuses::options(TaskOptions::default().retry_exceptions(true).max_retries(2))
        .remote(&rt, "way".to_owned());
    let err = rt.get(&retried).await.unwrap_err();
    assert!(matches!(
        task_error(&err),
        TaskError::Failed { attempts: 3, .. }
    ));
    assert_eq!(ERR_CALLS.load(Ordering::SeqCst) - before, 3);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_dependency_fails_a_chain_of_100_at_once() {
    let rt = runtime().await;
    let first = refuses::remote(&rt, "root".to_owned());
    // `refuses` gives a u32 and `add` takes u64s: widen in a task of its own.
    let mut r = add::remote(&rt, widen::remote(&rt, first), 1);
    for _ in 0..99 {
        r = add::remote(&rt, &r, 1);
    }
    let err = within("the chain's end fails, never hangs", rt.get(&r))
        .await
        .unwrap_err();
    let last = task_error(&err);
    assert!(matches!(last, TaskError::DependencyFailed { .. }), "{last}");
    match last.root_cause() {
        TaskError::Failed {
            cause: TaskCause::Error(e),
            ..
        } => assert_eq!(e.to_string(), "no root"),
        other => panic!("root cause should be the refusal, got {other}"),
    }
    rt.shutdown().await.unwrap();
}

#[troupe::remote]
fn widen(x: u32) -> u64 {
    x as u64
}

#[tokio::test]
async fn a_failed_chain_of_20_000_keeps_one_error_of_constant_size() {
    let rt = runtime().await;
    let first = refuses::remote(&rt, "root".to_owned());
    let mut r = add::remote(&rt, widen::remote(&rt, first), 1);
    for _ in 0..20_000 {
        r = add::remote(&rt, &r, 1);
    }
    let err = rt.get(&r).await.unwrap_err();
    let last = task_error(&err);
    // The root and the line's length, not one nested error per task: the
    // message is one line, and dropping or formatting it recurses no deeper
    // than a single level (20,000 nested errors would overflow the stack).
    let text = err.to_string();
    assert!(text.len() < 2_000, "{} bytes: {text:.300}", text.len());
    assert!(text.contains("20002 steps up the line"), "{text}");
    match last {
        TaskError::DependencyFailed { depth, .. } => assert_eq!(*depth, 20_002),
        other => panic!("expected DependencyFailed, got {other}"),
    }
    match last.root_cause() {
        TaskError::Failed {
            cause: TaskCause::Error(e),
            ..
        } => assert_eq!(e.to_string(), "no root"),
        other => panic!("root cause should be the refusal, got {other}"),
    }
    drop(err);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn get_with_a_timeout_on_a_task_that_never_finishes() {
    let rt = runtime().await;
    let r = forever::remote(&rt);
    let err = rt
        .get_timeout(&r, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::Timeout { .. }), "{err}");
    rt.shutdown().await.unwrap();
    // Shutdown abandons it: the ref says so instead of hanging.
    let err = within("abandoned task", rt.get(&r)).await.unwrap_err();
    assert!(
        matches!(task_error(&err), TaskError::ShutDown { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_request_that_can_never_fit_fails_at_once() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(2.0)))
        .await
        .unwrap();
    let r = add::options(TaskOptions::default().num_cpus(3.0)).remote(&rt, 1, 1);
    let err = rt
        .get_timeout(&r, Duration::from_secs(1))
        .await
        .unwrap_err();
    match task_error(&err) {
        TaskError::Infeasible { needs, node, .. } => {
            assert_eq!(needs.num_cpus, 3.0);
            assert_eq!(node.num_cpus, 2.0);
        }
        other => panic!("expected Infeasible, got {other}"),
    }
    let gpu = add::options(TaskOptions::default().num_gpus(0.5)).remote(&rt, 1, 1);
    assert!(matches!(
        task_error(&rt.get(&gpu).await.unwrap_err()),
        TaskError::Infeasible { .. }
    ));
    let custom = add::options(TaskOptions::default().resource("tpu", 1.0)).remote(&rt, 1, 1);
    assert!(matches!(
        task_error(&rt.get(&custom).await.unwrap_err()),
        TaskError::Infeasible { .. }
    ));
    rt.shutdown().await.unwrap();
}

/// Sleeps; unlike `occupy`, counts nothing (tests run in parallel).
#[troupe::remote]
async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MAX_RUNNING: AtomicUsize = AtomicUsize::new(0);

#[troupe::remote]
async fn occupy(ms: u64) -> u64 {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_RUNNING.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    ms
}

#[tokio::test]
async fn tasks_run_only_within_the_node_resources() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(2.0)))
        .await
        .unwrap();
    let refs: Vec<_> = (0..8).map(|_| occupy::remote(&rt, 20)).collect();
    let values = within("all finish", rt.get_many(&refs, None))
        .await
        .unwrap();
    assert_eq!(values.len(), 8);
    assert_eq!(
        MAX_RUNNING.load(Ordering::SeqCst),
        2,
        "never more than 2 CPUs' worth"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn waiting_for_arguments_holds_no_resources() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let (input, complete_input) = rt.objects().pending::<u64>();
    let blocked = add::remote(&rt, &input, 1);
    // The only CPU is free for a task submitted later.
    let free = add::remote(&rt, 1, 1);
    assert_eq!(*within("later task runs", rt.get(&free)).await.unwrap(), 2);
    assert!(rt.objects().try_get(&blocked).is_none());
    assert_eq!(rt.task_counts().1, 1, "one task waits for its argument");
    complete_input.complete(41).unwrap();
    assert_eq!(
        *within("blocked task runs", rt.get(&blocked)).await.unwrap(),
        42
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_context_names_the_task_and_attempt() {
    let rt = runtime().await;
    let r = context_of::options(TaskOptions::default().num_cpus(0.5)).remote(&rt);
    let (_, attempt, cpus) = *rt.get(&r).await.unwrap();
    assert_eq!(attempt, 1);
    assert_eq!(cpus, 0.5);
    assert!(
        troupe::task::current().is_none(),
        "no context outside tasks"
    );
    rt.shutdown().await.unwrap();
}

static BLOCKING_STARTED: AtomicUsize = AtomicUsize::new(0);
static RELEASE: AtomicBool = AtomicBool::new(false);

#[troupe::remote]
fn block_a_thread() {
    BLOCKING_STARTED.fetch_add(1, Ordering::SeqCst);
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while !RELEASE.load(Ordering::SeqCst) && std::time::Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Echo;

#[troupe::actor]
impl Echo {
    pub fn echo(&self, x: u32) -> u32 {
        x
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_bodies_do_not_stall_the_async_workers() {
    // 4 CPUs for the blockers, a fifth for the task that must still run.
    let rt = troupe::init(Config::default().resources(Resources::cpus(5.0)))
        .await
        .unwrap();
    let echo = rt.spawn_actor(ActorOptions::new(), || Echo).await.unwrap();
    let blockers: Vec<_> = (0..4).map(|_| block_a_thread::remote(&rt)).collect();
    eventually("4 blocking bodies run", || {
        BLOCKING_STARTED.load(Ordering::SeqCst) == 4
    })
    .await;
    // Both tokio workers are free to answer, though 4 bodies block.
    assert_eq!(within("actor answers", echo.echo(7)).await.unwrap(), 7);
    assert_eq!(*rt.get(&add::remote(&rt, 1, 2)).await.unwrap(), 3);
    RELEASE.store(true, Ordering::SeqCst);
    rt.get_many(&blockers, None).await.unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_scheduler_restart_loses_no_task() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let mut events = rt.subscribe();
    let refs: Vec<_> = (0..50).map(|i| nap::remote(&rt, i % 3)).collect();
    let system = rt.system_supervisor().unwrap();
    let scheduler = system
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .find(|c| &*c.id == "scheduler")
        .and_then(|c| c.actor)
        .expect("scheduler runs");
    scheduler.kill();
    next_event(
        &mut events,
        |e| matches!(e, SupervisionEvent::ChildRestarted { child, .. } if &**child == "scheduler"),
    )
    .await;
    let more: Vec<_> = (0..50).map(|i| add::remote(&rt, i, 1)).collect();
    let done = within("every task completes", rt.get_many(&refs, None))
        .await
        .unwrap();
    assert_eq!(done.len(), 50);
    let sums = rt.get_many(&more, None).await.unwrap();
    assert!(sums.iter().enumerate().all(|(i, s)| **s == i as u64 + 1));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn queued_tasks_fail_cleanly_at_shutdown() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let refs: Vec<_> = (0..20).map(|_| forever::remote(&rt)).collect();
    rt.shutdown().await.unwrap();
    for r in &refs {
        let err = within("abandoned", rt.get(r)).await.unwrap_err();
        assert!(
            matches!(task_error(&err), TaskError::ShutDown { .. }),
            "{err}"
        );
    }
    let late = add::remote(&rt, 1, 1);
    assert!(matches!(
        task_error(&rt.get(&late).await.unwrap_err()),
        TaskError::ShutDown { .. }
    ));
}

#[troupe::remote]
async fn outer_async(depth: u32) -> u32 {
    if depth == 0 {
        return 0;
    }
    let rt = troupe::task::runtime().expect("a task knows its runtime");
    let inner = outer_async::remote(&rt, depth - 1);
    *rt.get(&inner).await.expect("inner task") + 1
}

#[troupe::remote]
fn outer_sync(depth: u32) -> u32 {
    if depth == 0 {
        return 0;
    }
    let rt = troupe::task::runtime().expect("a task knows its runtime");
    let inner = outer_sync::remote(&rt, depth - 1);
    *rt.get_blocking(&inner).expect("inner task") + 1
}

#[tokio::test]
async fn tasks_waiting_on_tasks_lend_their_cpu_and_never_deadlock() {
    // One CPU, and every level of the recursion holds a task waiting on the
    // next: without lending, the second level could never start.
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let r = outer_async::remote(&rt, 10);
    assert_eq!(*within("nested async tasks", rt.get(&r)).await.unwrap(), 10);
    let r = outer_sync::remote(&rt, 10);
    assert_eq!(*within("nested sync tasks", rt.get(&r)).await.unwrap(), 10);
    // All CPUs are back once everything finished.
    let free = add::remote(&rt, 1, 1);
    assert_eq!(
        *within("a later task runs", rt.get(&free)).await.unwrap(),
        2
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn outside_a_task_there_is_no_task_runtime() {
    assert!(troupe::task::runtime().is_none());
}

static CANCEL_SYNC_RAN: AtomicU32 = AtomicU32::new(0);

#[troupe::remote]
fn slow_sync(ms: u64) -> u64 {
    CANCEL_SYNC_RAN.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn is_cancelled(err: &ObjectError) -> bool {
    matches!(
        err.failure::<TaskError>(),
        Some(TaskError::Cancelled { .. })
    )
}

#[tokio::test]
async fn cancel_before_execution_drops_the_task() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let busy = forever::remote(&rt);
    let queued = add::remote(&rt, 1, 2);
    assert!(rt.cancel(&queued, false));
    let err = within("cancelled ref answers", rt.get(&queued))
        .await
        .unwrap_err();
    assert!(is_cancelled(&err), "{err}");
    assert!(!rt.cancel(&queued, false), "nothing left to cancel");
    // Cancelling the running one frees the CPU for what comes next.
    assert!(rt.cancel(&busy, true));
    assert!(is_cancelled(&rt.get(&busy).await.unwrap_err()));
    assert_eq!(
        *within("next task runs", rt.get(&add::remote(&rt, 2, 2)))
            .await
            .unwrap(),
        4
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_during_execution_stops_an_async_body_and_never_retries() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let running = forever::options(TaskOptions::default().max_retries(5)).remote(&rt);
    eventually("it runs", || rt.task_counts().2 == 1).await;
    assert!(rt.cancel(&running, false));
    assert!(is_cancelled(
        &within("answers", rt.get(&running)).await.unwrap_err()
    ));
    eventually("nothing runs or waits", || rt.task_counts() == (0, 0, 0)).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_sync_body_finishes_but_its_result_is_dropped() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let before = CANCEL_SYNC_RAN.load(Ordering::SeqCst);
    let r = slow_sync::remote(&rt, 100);
    eventually("it runs", || {
        CANCEL_SYNC_RAN.load(Ordering::SeqCst) > before
    })
    .await;
    assert!(rt.cancel(&r, true));
    assert!(is_cancelled(
        &within("answers at once", rt.get(&r)).await.unwrap_err()
    ));
    // Its CPU comes back when the body ends.
    assert_eq!(
        *within("next task runs", rt.get(&add::remote(&rt, 1, 1)))
            .await
            .unwrap(),
        2
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_while_waiting_for_arguments() {
    let rt = runtime().await;
    let (input, complete_input) = rt.objects().pending::<u64>();
    let waiting = add::remote(&rt, &input, 1);
    eventually("it waits", || rt.task_counts().1 == 1).await;
    assert!(rt.cancel(&waiting, false));
    assert!(is_cancelled(&rt.get(&waiting).await.unwrap_err()));
    complete_input.complete(1).unwrap();
    eventually("the waiter is gone", || rt.task_counts() == (0, 0, 0)).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancelling_a_finished_task_changes_nothing() {
    let rt = runtime().await;
    let r = add::remote(&rt, 1, 1);
    assert_eq!(*rt.get(&r).await.unwrap(), 2);
    assert!(!rt.cancel(&r, false));
    assert_eq!(*rt.get(&r).await.unwrap(), 2);
    rt.shutdown().await.unwrap();
}

static AFTER_CANCEL_RAN: AtomicU32 = AtomicU32::new(0);

#[troupe::remote]
fn count_runs(x: u64) -> u64 {
    AFTER_CANCEL_RAN.fetch_add(1, Ordering::SeqCst);
    x
}

#[tokio::test]
async fn a_task_cancelled_while_its_argument_task_runs_never_runs() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let first = slow_sync::remote(&rt, 50);
    let second = count_runs::remote(&rt, &first);
    assert!(rt.cancel(&second, false));
    assert_eq!(*within("first finishes", rt.get(&first)).await.unwrap(), 50);
    let after = add::remote(&rt, 1, 1);
    assert_eq!(*rt.get(&after).await.unwrap(), 2);
    assert_eq!(
        AFTER_CANCEL_RAN.load(Ordering::SeqCst),
        0,
        "the cancelled task never ran"
    );
    assert!(is_cancelled(&rt.get(&second).await.unwrap_err()));
    rt.shutdown().await.unwrap();
}

#[troupe::remote]
async fn sum_nested(refs: Vec<ObjectRef<u64>>) -> u64 {
    // Refs nested inside an argument stay refs: the body reads them itself.
    let rt = troupe::task::runtime().expect("task runtime");
    let values = rt.get_many(&refs, None).await.expect("nested refs");
    values.iter().map(|v| **v).sum()
}

#[troupe::remote]
fn count_values(values: Vec<u64>) -> usize {
    values.len()
}

#[tokio::test]
async fn ten_thousand_arguments_to_one_task() {
    let rt = runtime().await;
    let refs: Vec<_> = (0..10_000u64).map(|i| rt.try_put(i).unwrap()).collect();
    let total = sum_nested::remote(&rt, refs);
    assert_eq!(
        *within("10k refs in one argument", rt.get(&total))
            .await
            .unwrap(),
        49_995_000
    );
    let counted = count_values::remote(&rt, (0..10_000u64).collect::<Vec<_>>());
    assert_eq!(*rt.get(&counted).await.unwrap(), 10_000);
    rt.shutdown().await.unwrap();
}

#[troupe::remote(num_returns = 2)]
fn split(x: u64) -> (u64, String) {
    (x * 2, format!("#{x}"))
}

#[troupe::remote(num_returns = 3)]
async fn three(x: u8) -> (u8, u16, u32) {
    (x, x as u16 * 2, x as u32 * 3)
}

#[troupe::remote(num_returns = 2)]
fn halves(x: u64) -> Result<(u64, u64), String> {
    if x % 2 == 1 {
        return Err(format!("{x} is odd"));
    }
    Ok((x / 2, x / 2))
}

#[tokio::test]
async fn num_returns_gives_one_ref_per_value() {
    let rt = runtime().await;
    let (doubled, label) = split::remote(&rt, 21);
    assert_eq!(*rt.get(&doubled).await.unwrap(), 42);
    assert_eq!(*rt.get(&label).await.unwrap(), "#21");
    // Each output is an object of its own: it feeds another task alone.
    let plus = add::remote(&rt, &doubled, 1);
    assert_eq!(*rt.get(&plus).await.unwrap(), 43);
    drop(label);
    assert_eq!(
        *rt.get(&doubled).await.unwrap(),
        42,
        "one output outlives the other"
    );

    let (a, b, c) = three::remote(&rt, 5);
    assert_eq!(
        (
            *rt.get(&a).await.unwrap(),
            *rt.get(&b).await.unwrap(),
            *rt.get(&c).await.unwrap()
        ),
        (5, 10, 15)
    );

    let (x, y) = halves::remote(&rt, 10);
    assert_eq!(
        (*rt.get(&x).await.unwrap(), *rt.get(&y).await.unwrap()),
        (5, 5)
    );
    let (x, y) = halves::remote(&rt, 7);
    for err in [rt.get(&x).await.unwrap_err(), rt.get(&y).await.unwrap_err()] {
        assert!(
            matches!(task_error(&err), TaskError::Failed { cause: TaskCause::Error(e), .. } if e.to_string() == "7 is odd")
        );
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn any_of_a_tasks_refs_cancels_it() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let busy = forever::remote(&rt);
    let (first, second) = split::remote(&rt, 1);
    assert!(rt.cancel(&second, false));
    assert!(is_cancelled(&rt.get(&first).await.unwrap_err()));
    assert!(is_cancelled(&rt.get(&second).await.unwrap_err()));
    assert!(!rt.cancel(&first, false));
    rt.cancel(&busy, true);
    rt.shutdown().await.unwrap();
}

#[troupe::remote(generator)]
fn countdown(from: u64) -> impl Iterator<Item = u64> {
    (0..=from).rev()
}

static GEN_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[troupe::remote(generator)]
fn breaks_after_three(total: u32) -> impl Iterator<Item = u32> {
    let attempt = GEN_ATTEMPTS.fetch_add(1, Ordering::SeqCst) + 1;
    (0..total).inspect(move |i| {
        if attempt == 1 && *i == 3 {
            panic!("generator broke at {i}");
        }
    })
}

#[troupe::remote(generator)]
fn always_breaks() -> impl Iterator<Item = u32> {
    (0..10).inspect(|i| {
        if *i == 2 {
            panic!("broke at 2");
        }
    })
}

#[tokio::test]
async fn a_generator_yields_one_ref_per_item_in_order() {
    let rt = runtime().await;
    let mut stream = countdown::remote(&rt, 4);
    let mut seen = Vec::new();
    while let Some(item) = stream.next().await {
        seen.push(*rt.get(&item.unwrap()).await.unwrap());
    }
    assert_eq!(seen, [4, 3, 2, 1, 0]);
    rt.get(stream.completion()).await.unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retried_generator_skips_what_it_already_yielded() {
    let rt = runtime().await;
    let refs = within("generator", breaks_after_three::remote(&rt, 6).collect())
        .await
        .unwrap();
    let values: Vec<u32> = rt
        .get_many(&refs, None)
        .await
        .unwrap()
        .iter()
        .map(|v| **v)
        .collect();
    assert_eq!(values, [0, 1, 2, 3, 4, 5], "no duplicates after the retry");
    assert_eq!(GEN_ATTEMPTS.load(Ordering::SeqCst), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_generator_ends_with_its_error_after_its_items() {
    let rt = runtime().await;
    let mut stream = always_breaks::options(TaskOptions::default().max_retries(0)).remote(&rt);
    let mut items = Vec::new();
    let mut failure = None;
    while let Some(item) = within("next", stream.next()).await {
        match item {
            Ok(r) => items.push(*rt.get(&r).await.unwrap()),
            Err(err) => failure = Some(err),
        }
    }
    assert_eq!(items, [0, 1]);
    let failure = failure.expect("the failure comes last");
    assert!(
        matches!(task_error(&failure), TaskError::Failed { cause: TaskCause::Panicked(m), .. } if m == "broke at 2")
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn remote_functions_run_by_name_from_encoded_arguments() {
    let rt = runtime().await;
    // What another node would send: the name and the encoded arguments.
    use troupe::task::Arg;
    let args = postcard::to_allocvec(&(Arg::Value(40u64), Arg::Value(2u64))).unwrap();
    let r = rt
        .submit_by_name(add::NAME, TaskOptions::default(), &args)
        .unwrap();
    assert_eq!(*rt.get(&r.results[0].typed::<u64>()).await.unwrap(), 42);

    // Refs travel as ids and attach to this node's objects.
    let refs: Vec<ObjectRef<u64>> = (1..=3u64).map(|i| rt.try_put(i).unwrap()).collect();
    // The sender keeps its refs while they are in flight.
    let args = postcard::to_allocvec(&(Arg::Value(refs.clone()),)).unwrap();
    let r = rt
        .submit_by_name(sum_nested::NAME, TaskOptions::default(), &args)
        .unwrap();
    assert_eq!(*rt.get(&r.results[0].typed::<u64>()).await.unwrap(), 6);

    // A wrong type read back is an error, not a bad value.
    assert!(matches!(
        rt.get(&r.results[0].typed::<String>()).await,
        Err(ObjectError::WrongType { .. })
    ));
    let err = rt
        .submit_by_name("no::such::function", TaskOptions::default(), &[])
        .unwrap_err();
    assert!(
        matches!(err, TaskError::UnknownFunction { ref task, .. } if task == "no::such::function"),
        "{err}"
    );
    let err = rt
        .submit_by_name(add::NAME, TaskOptions::default(), &[1])
        .unwrap_err();
    assert!(matches!(err, TaskError::BadArguments { .. }), "{err}");
    assert!(troupe::task::remote_function(add::NAME).is_some());
    rt.shutdown().await.unwrap();
}

#[troupe::remote(generator)]
fn ticks(n: u64) -> impl futures::Stream<Item = u64> {
    futures::stream::unfold(0u64, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some((i * 10, i + 1))
    })
}

#[tokio::test]
async fn an_async_generator_streams_refs_as_items_arrive() {
    let rt = runtime().await;
    let mut stream = ticks::remote(&rt, 5);
    let first = within("first item", stream.next()).await.unwrap().unwrap();
    assert_eq!(*rt.get(&first).await.unwrap(), 0);
    let rest = within("the rest", stream.collect()).await.unwrap();
    let values: Vec<u64> = rt
        .get_many(&rest, None)
        .await
        .unwrap()
        .iter()
        .map(|v| **v)
        .collect();
    assert_eq!(values, [10, 20, 30, 40]);
    rt.shutdown().await.unwrap();
}

/// The running task's place in its tree of tasks.
#[troupe::remote]
fn my_trace() -> troupe::task::TraceContext {
    troupe::task::current().expect("in a task").trace
}

/// Its own id, and the trace of a child it submits.
#[troupe::remote]
async fn with_a_child() -> (troupe::task::TaskId, troupe::task::TraceContext) {
    let rt = troupe::task::runtime().expect("in a runtime");
    let me = troupe::task::current().expect("in a task");
    let child = my_trace::remote(&rt);
    (
        me.task_id,
        *rt.get(&child).await.expect("the child's trace"),
    )
}

/// A task submitted outside any task starts a tree of its own; one
/// submitted by a task's body names that task as its parent and shares its
/// root (what every span of the tree carries as `trace`).
#[tokio::test]
async fn tasks_submitted_by_tasks_share_their_trace() {
    use troupe::task::TraceContext;
    let rt = runtime().await;
    let alone = *rt.get(&my_trace::remote(&rt)).await.unwrap();
    assert_eq!(alone.parent, None);
    let (parent, child) = *rt.get(&with_a_child::remote(&rt)).await.unwrap();
    assert_eq!(
        child,
        TraceContext {
            root: parent,
            parent: Some(parent)
        }
    );
    assert_ne!(alone.root, parent, "two trees, two roots");
    rt.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Races between a task and its caller.

#[troupe::remote]
fn quick(x: u64) -> u64 {
    x + 1
}

/// `cancel` says what happened, even when it races the body's return: true
/// only if `get` then fails as cancelled, never while it returns the value.
/// Two rounds whose outcome is certain come first (the task still waits
/// for its argument; the task has stored its result), then rounds that race
/// the cancel with the body at varying points, each checked the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_says_exactly_whether_it_stopped_the_task() {
    let rt = runtime().await;
    let (input, _keep_pending) = rt.objects().pending::<u64>();
    let waiting = quick::remote(&rt, input);
    assert!(rt.cancel(&waiting, false), "a waiting task is stopped");
    assert!(is_cancelled(
        &within("get", rt.get(&waiting)).await.unwrap_err()
    ));
    let done = quick::remote(&rt, 1);
    assert_eq!(*within("get", rt.get(&done)).await.unwrap(), 2);
    assert!(!rt.cancel(&done, false), "a finished task is not stopped");
    assert_eq!(*rt.get(&done).await.unwrap(), 2);

    for i in 0..2000u64 {
        let r = quick::remote(&rt, i);
        for _ in 0..(i % 7) {
            tokio::task::yield_now().await;
        }
        let cancelled = rt.cancel(&r, false);
        match within("get after cancel", rt.get(&r)).await {
            Ok(v) => {
                assert!(!cancelled, "round {i}: cancel said yes, but get gave {v}");
                assert_eq!(*v, i + 1);
            }
            Err(err) => {
                assert!(
                    cancelled,
                    "round {i}: cancel said no, but get failed: {err}"
                );
                assert!(is_cancelled(&err), "{err}");
            }
        }
    }
    rt.shutdown().await.unwrap();
}

static PRODUCED: AtomicUsize = AtomicUsize::new(0);

#[troupe::remote(generator)]
fn many(n: usize) -> impl Iterator<Item = u64> {
    (0..n).map(|i| {
        PRODUCED.fetch_add(1, Ordering::SeqCst);
        i as u64
    })
}

/// A generator's channel is bounded: a fast producer does not fill the
/// store with items nobody has read; it waits when the reader falls behind.
/// After each read the producer runs ahead until the channel is full (which
/// the test waits to see), and never further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_waits_for_a_slow_reader() {
    const ITEMS: usize = 300;
    const BOUND: usize = 4;
    let rt = runtime().await;
    let mut stream = many::options(TaskOptions::default().generator_backpressure(BOUND as u32))
        .remote(&rt, ITEMS);
    let mut read = 0;
    while let Some(item) = within("next", stream.next()).await {
        assert_eq!(*rt.get(&item.unwrap()).await.unwrap(), read as u64);
        read += 1;
        // The channel holds BOUND unread items; one more may be stored and
        // waiting to be sent.
        let full = (read + BOUND).min(ITEMS);
        eventually("the producer fills the channel", || {
            PRODUCED.load(Ordering::SeqCst) >= full
        })
        .await;
        let ahead = PRODUCED.load(Ordering::SeqCst);
        assert!(
            ahead <= read + BOUND + 1,
            "{ahead} items produced for {read} read"
        );
    }
    assert_eq!(read, ITEMS);
    rt.shutdown().await.unwrap();
}

/// A task waiting for an argument made elsewhere (here: a pending object
/// nobody completes) had a waiter that was never reaped when the task was
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_task_stops_its_waiter() {
    let rt = runtime().await;
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = alive();
    let mut held = Vec::new();
    let mut refs = Vec::new();
    for _ in 0..50 {
        let (input, done) = rt.objects().pending::<u64>();
        held.push(done);
        refs.push(quick::remote(&rt, input));
    }
    eventually("waiters started", || alive() >= before + 50).await;
    for r in &refs {
        assert!(rt.cancel(r, false));
    }
    eventually("waiters reaped", || alive() <= before).await;
    rt.shutdown().await.unwrap();
}

#[troupe::remote]
async fn reads_blocking(r: ObjectRef<u64>) -> u64 {
    let rt = troupe::task::runtime().expect("in a task");
    // Sync code inside an async body: it must not panic.
    *rt.get_blocking(&r).expect("read")
}

/// `get_blocking` works from async task bodies (it must not panic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_blocking_works_in_async_task_bodies() {
    let rt = runtime().await;
    let input = rt.put(41u64).await.unwrap();
    let out = reads_blocking::remote(&rt, input);
    assert_eq!(*within("read", rt.get(&out)).await.unwrap(), 41);
    rt.shutdown().await.unwrap();
}

/// `num_gpus = 1e10` passed validation and aborted the process at start.
#[tokio::test]
async fn absurd_gpu_counts_are_refused_not_allocated() {
    let err = troupe::init(Config::default().resources(Resources::cpus(1.0).with_gpus(1e10)))
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::InvalidResources(_)), "{err}");
    assert!(err.to_string().contains("num_gpus"), "{err}");
    // A node cannot have half a GPU (it would silently have none).
    let err = troupe::init(Config::default().resources(Resources::cpus(1.0).with_gpus(0.5)))
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::InvalidResources(_)), "{err}");
    let rt = runtime().await;
    let r = add::options(TaskOptions::default().num_gpus(1e7)).remote(&rt, 1, 1);
    let err = rt.get(&r).await.unwrap_err();
    assert!(
        matches!(task_error(&err), TaskError::InvalidResources { .. }),
        "{err}"
    );
    rt.shutdown().await.unwrap();
}
