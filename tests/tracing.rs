//! Tracing spans tell one task's story end to end: a task's span carries
//! its id, its tree's root (`trace`), attempt, function and node, is a child of the span that
//! submitted it, and is the current span inside its body (sync and async);
//! an actor call's span carries the actor, its type, the method and node.
//!
//! Alone in its binary: it installs a process-wide subscriber (bodies run
//! on other threads), a small recording one written here.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Subscriber;
use tracing::{Event, Metadata};
use troupe::prelude::*;

#[derive(Clone, Debug)]
struct SpanRecord {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
    metadata: &'static Metadata<'static>,
}

#[derive(Clone, Debug)]
struct EventRecord {
    message: String,
    span: Option<u64>,
}

#[derive(Default)]
struct Recorded {
    spans: HashMap<u64, SpanRecord>,
    events: Vec<EventRecord>,
}

#[derive(Clone, Default)]
struct Recorder {
    next: Arc<AtomicU64>,
    recorded: Arc<Mutex<Recorded>>,
}

thread_local! {
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

fn current() -> Option<u64> {
    ENTERED.with(|e| e.borrow().last().copied())
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let parent = if attrs.is_root() {
            None
        } else if let Some(parent) = attrs.parent() {
            Some(parent.into_u64())
        } else {
            current()
        };
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let record = SpanRecord {
            name: attrs.metadata().name(),
            fields,
            parent,
            metadata: attrs.metadata(),
        };
        self.recorded.lock().unwrap().spans.insert(id, record);
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(record) = self
            .recorded
            .lock()
            .unwrap()
            .spans
            .get_mut(&span.into_u64())
        {
            values.record(&mut Fields(&mut record.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let span = if event.is_root() {
            None
        } else {
            event.parent().map(Id::into_u64).or_else(current)
        };
        self.recorded.lock().unwrap().events.push(EventRecord {
            message: fields.remove("message").unwrap_or_default(),
            span,
        });
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|e| {
            let mut entered = e.borrow_mut();
            if let Some(at) = entered.iter().rposition(|s| *s == span.into_u64()) {
                entered.remove(at);
            }
        });
    }

    fn current_span(&self) -> tracing_core::span::Current {
        match current() {
            Some(id) => match self.recorded.lock().unwrap().spans.get(&id) {
                Some(record) => tracing_core::span::Current::new(Id::from_u64(id), record.metadata),
                None => tracing_core::span::Current::none(),
            },
            None => tracing_core::span::Current::none(),
        }
    }
}

#[troupe::remote]
fn traced_sync(x: u64) -> u64 {
    tracing::info!("in the sync body");
    x + 1
}

#[troupe::remote]
async fn traced_async(x: u64) -> u64 {
    tokio::task::yield_now().await;
    tracing::info!("in the async body");
    x + 2
}

#[troupe::remote]
fn traced_child() -> u64 {
    tracing::info!("in the child");
    7
}

/// Submits a child task from its body and waits for it.
#[troupe::remote]
async fn traced_parent() -> u64 {
    tracing::info!("in the parent");
    let rt = troupe::task::runtime().expect("in a runtime");
    *rt.get(&traced_child::remote(&rt)).await.expect("the child")
}

struct Greeter;

#[troupe::actor]
impl Greeter {
    pub fn greet(&self, who: String) -> String {
        tracing::info!("in the method");
        format!("hello {who}")
    }
}

impl Recorder {
    fn event(&self, message: &str) -> EventRecord {
        let recorded = self.recorded.lock().unwrap();
        recorded
            .events
            .iter()
            .find(|e| e.message == message)
            .cloned()
            .unwrap_or_else(|| panic!("no event {message:?}"))
    }

    fn span(&self, id: u64) -> SpanRecord {
        self.recorded.lock().unwrap().spans[&id].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_carry_ids_and_follow_the_task_from_its_submitter() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(recorder.clone()).expect("first subscriber");
    let rt = troupe::init(Config::default()).await.unwrap();

    let request = tracing::info_span!("request", request_id = 42);
    let request_id = request.id().expect("enabled").into_u64();
    let (sync, asynchronous) = {
        let _entered = request.enter();
        (traced_sync::remote(&rt, 1), traced_async::remote(&rt, 1))
    };
    assert_eq!(*rt.get(&sync).await.unwrap(), 2);
    assert_eq!(*rt.get(&asynchronous).await.unwrap(), 3);

    for (message, function) in [
        ("in the sync body", "traced_sync"),
        ("in the async body", "traced_async"),
    ] {
        let event = recorder.event(message);
        let span = recorder.span(event.span.expect("the body runs in a span"));
        assert_eq!(span.name, "task", "{span:?}");
        assert!(span.fields["function"].ends_with(function), "{span:?}");
        assert!(span.fields["task"].starts_with("task-"), "{span:?}");
        assert_eq!(span.fields["attempt"], "1");
        assert_eq!(span.fields["trace"], span.fields["task"], "a root's trace");
        assert_eq!(span.fields["node"], rt.node_id().to_string());
        assert_eq!(
            span.parent,
            Some(request_id),
            "a child of the submitter's span"
        );
    }

    // A child's span carries its tree's root as `trace`.
    assert_eq!(*rt.get(&traced_parent::remote(&rt)).await.unwrap(), 7);
    let parent = recorder.span(recorder.event("in the parent").span.expect("in a span"));
    let child = recorder.span(recorder.event("in the child").span.expect("in a span"));
    assert_ne!(child.fields["task"], parent.fields["task"]);
    assert_eq!(child.fields["trace"], parent.fields["task"], "{child:?}");

    let greeter = rt
        .spawn_actor(ActorOptions::new(), || Greeter)
        .await
        .unwrap();
    assert_eq!(greeter.greet("you".into()).await.unwrap(), "hello you");
    let event = recorder.event("in the method");
    let span = recorder.span(event.span.expect("the method runs in a span"));
    assert_eq!(span.name, "actor_call");
    assert_eq!(span.fields["method"], "greet");
    assert_eq!(span.fields["actor"], greeter.id().to_string());
    assert!(span.fields["actor_type"].ends_with("Greeter"));
    assert_eq!(span.fields["node"], rt.node_id().to_string());
    rt.shutdown().await.unwrap();
}
