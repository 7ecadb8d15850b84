//! What tasks and actors log is kept with their ids (`troupe logs --task`,
//! `--actor`). Installs the process's subscriber: alone in its binary.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use troupe::logs::{LogBook, LogCapture, LogQuery};
use troupe::prelude::*;
use troupe::TaskFilter;

#[troupe::remote]
fn sync_work(n: u64) -> u64 {
    tracing::info!(n, "sync task working");
    n + 1
}

#[troupe::remote]
async fn async_work(n: u64) -> u64 {
    tracing::warn!("async task working on {n}");
    n * 2
}

struct Greeter;

#[troupe::actor]
impl Greeter {
    pub fn greet(&mut self, who: String) -> String {
        tracing::info!(%who, "greeting");
        format!("hello {who}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_kept_with_the_task_or_actor_that_wrote_them() {
    let book = Arc::new(LogBook::new(1 << 20));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(LogCapture::new(book.clone())),
    )
    .expect("the only subscriber of this binary");
    let rt = troupe::init(Config::default()).await.unwrap();
    tracing::info!("outside any task");
    let a = sync_work::remote(&rt, 1);
    let b = async_work::remote(&rt, 2);
    assert_eq!(
        (*rt.get(&a).await.unwrap(), *rt.get(&b).await.unwrap()),
        (2, 4)
    );
    let greeter = rt
        .spawn_actor(ActorOptions::new(), || Greeter)
        .await
        .unwrap();
    assert_eq!(greeter.greet("ann".into()).await.unwrap(), "hello ann");

    let tasks = rt.tasks(&TaskFilter::default());
    let id_of = |name: &str| {
        tasks
            .iter()
            .find(|t| t.function.ends_with(name))
            .map(|t| t.id.to_string())
            .expect("the task is listed")
    };
    let of_task = |id: String| {
        book.read(&LogQuery {
            task: Some(id),
            ..LogQuery::default()
        })
        .lines
    };
    let sync_lines = of_task(id_of("::sync_work"));
    assert_eq!(sync_lines.len(), 1, "{sync_lines:?}");
    assert_eq!(sync_lines[0].text, "sync task working n=1");
    assert_eq!(sync_lines[0].level, "INFO");
    let async_lines = of_task(id_of("::async_work"));
    assert_eq!(async_lines.len(), 1, "{async_lines:?}");
    assert_eq!(async_lines[0].text, "async task working on 2");
    assert_eq!(async_lines[0].level, "WARN");

    let actor_lines = book
        .read(&LogQuery {
            actor: Some(greeter.id().to_string()),
            ..LogQuery::default()
        })
        .lines;
    assert_eq!(actor_lines.len(), 1, "{actor_lines:?}");
    assert_eq!(actor_lines[0].text, "greeting who=ann");
    let all = book.read(&LogQuery::default()).lines;
    let outside = all
        .iter()
        .find(|l| l.text == "outside any task")
        .expect("kept");
    assert_eq!((&outside.task, &outside.actor), (&None, &None));
    rt.shutdown().await.unwrap();
}
