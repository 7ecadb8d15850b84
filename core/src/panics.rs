//! How a panic in user code is reported. Troupe catches it (the task
//! fails, the actor restarts) and says so on one line naming the task or
//! actor: as a WARN `tracing` event (target `troupe::panic`, with the
//! backtrace when `RUST_BACKTRACE` asks for one) when a subscriber is
//! installed, which is a node's log, or on stderr otherwise (one line,
//! without the backtrace). Rust's default
//! hook would print two lines per panic, a whole backtrace with
//! `RUST_BACKTRACE=1`, and no id to find the task or actor by. Panics
//! outside tasks and actors go to the hook that was installed before
//! [`install`]; a program that wants its own hook for every panic installs
//! it after the runtime starts.

use std::panic::PanicHookInfo;
use std::sync::Once;

use crate::context;
use crate::error::panic_message;

static INSTALLED: Once = Once::new();

/// Installs the hook (once per process; every runtime's `init` calls it).
pub(crate) fn install() {
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| match who() {
            Some(who) => report(&who, info),
            None => previous(info),
        }));
    });
}

/// The task or actor running this code, in words.
fn who() -> Option<String> {
    if let Some(task) = context::task() {
        return Some(format!(
            "task {} ({}, attempt {})",
            task.task_id, task.function, task.attempt
        ));
    }
    context::actor().map(|actor| format!("actor {} ({})", actor.id, actor.type_name))
}

fn report(who: &str, info: &PanicHookInfo<'_>) {
    let message = panic_message(info.payload());
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_else(|| "an unknown place".to_owned());
    let backtrace = std::backtrace::Backtrace::capture();
    let traced = backtrace.status() == std::backtrace::BacktraceStatus::Captured;
    if tracing::dispatcher::has_been_set() {
        if traced {
            tracing::warn!(target: "troupe::panic", %location, %backtrace, "{who} panicked: {message}");
        } else {
            tracing::warn!(target: "troupe::panic", %location, "{who} panicked: {message}");
        }
    } else {
        // One line even with RUST_BACKTRACE set: a program that crashes
        // actors on purpose must not bury its output; the backtrace is for
        // a subscriber (the node's log).
        eprintln!("{}", line(who, &location, &message));
    }
}

/// The one line for stderr.
fn line(who: &str, location: &str, message: &str) -> String {
    // A multi-line message stays on one line.
    let message = message.replace('\n', " | ");
    format!("troupe: {who} panicked at {location}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_one_line_naming_the_task_the_place_and_the_message() {
        let l = line("task 7f/3 (parse)", "src/main.rs:9", "bad\nline");
        assert_eq!(
            l,
            "troupe: task 7f/3 (parse) panicked at src/main.rs:9: bad | line"
        );
        assert!(!l.contains('\n'));
    }
}
