//! What a process logged: the last lines its `tracing` events made, each
//! tagged with the task or actor whose code wrote it, kept in a bounded
//! [`LogBook`] that `troupe logs` reads page by page (`--node`, `--task`,
//! `--actor`, `-f`). [`LogCapture`] is the `tracing-subscriber` layer that
//! fills it; `troupe start` installs it (a program with its own subscriber
//! adds it as one more layer).
//!
//! ```
//! use std::sync::Arc;
//! use troupe_core::logs::{LogBook, LogCapture, LogQuery};
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let book = Arc::new(LogBook::new(1 << 20));
//! let subscriber = tracing_subscriber::registry().with(LogCapture::new(book.clone()));
//! tracing::subscriber::with_default(subscriber, || tracing::info!(rows = 3, "loaded"));
//! let page = book.read(&LogQuery::default());
//! assert_eq!(page.lines[0].text, "loaded rows=3");
//! ```

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Bytes of lines the process's book keeps (the oldest go first).
pub const LOG_BOOK_BYTES: usize = 8 << 20;
/// The longest line kept; a longer one is cut, and says so.
pub const MAX_LINE_BYTES: usize = 4 << 10;
/// The most bytes of lines one page holds (it travels in one frame).
pub const PAGE_BYTES: usize = 256 << 10;
/// The most lines one page holds.
pub const PAGE_LINES: u32 = 2_000;

/// One line of a log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its place in the book: increasing, never reused.
    pub seq: u64,
    /// When it was written (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// Its level (`ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`).
    pub level: String,
    /// The module that wrote it.
    pub target: String,
    /// Its message, then its other fields as `name=value`.
    pub text: String,
    /// The task whose code wrote it, if any.
    pub task: Option<String>,
    /// The actor whose code wrote it, if any.
    pub actor: Option<String>,
}

/// Which lines to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// The first line wanted (a page's `next` to follow on).
    pub from: u64,
    /// Only the lines this task wrote (its id as shown).
    pub task: Option<String>,
    /// Only the lines this actor wrote (its id as shown).
    pub actor: Option<String>,
    /// The most lines wanted (0: as many as a page holds).
    pub limit: u32,
}

/// A page of lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Where the next page starts: past the last line read, even where no
    /// line matched (following a quiet task costs nothing).
    pub next: u64,
    /// Lines the query asked for that the book no longer holds (it keeps
    /// the last [`LOG_BOOK_BYTES`]).
    pub dropped: u64,
    /// Whether lines past this page are in the book already.
    pub more: bool,
}

/// The last lines a process logged, within a byte budget.
#[derive(Debug)]
pub struct LogBook {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    budget: usize,
    next_seq: u64,
}

fn line_bytes(line: &LogLine) -> usize {
    line.text.len()
        + line.target.len()
        + line.task.as_ref().map_or(0, String::len)
        + line.actor.as_ref().map_or(0, String::len)
        + 64
}

impl LogBook {
    /// A book that keeps the last `budget` bytes of lines.
    pub fn new(budget: usize) -> Self {
        LogBook {
            ring: Mutex::new(Ring {
                budget,
                ..Ring::default()
            }),
        }
    }

    /// The process's book, which [`LogCapture::global`] fills.
    pub fn global() -> Arc<LogBook> {
        static GLOBAL: OnceLock<Arc<LogBook>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Arc::new(LogBook::new(LOG_BOOK_BYTES)))
            .clone()
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `line` (its `seq` is given here), dropping the oldest lines
    /// past the budget.
    pub fn push(&self, mut line: LogLine) {
        if line.text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.text.is_char_boundary(cut) {
                cut -= 1;
            }
            let total = line.text.len();
            line.text.truncate(cut);
            let _ = write!(line.text, "… ({total} bytes, cut)");
        }
        let size = line_bytes(&line);
        let mut ring = self.ring();
        line.seq = ring.next_seq;
        ring.next_seq += 1;
        ring.bytes += size;
        ring.lines.push_back(line);
        while ring.bytes > ring.budget && ring.lines.len() > 1 {
            if let Some(old) = ring.lines.pop_front() {
                ring.bytes -= line_bytes(&old);
            }
        }
    }

    /// A page of the lines `query` asks for.
    pub fn read(&self, query: &LogQuery) -> LogPage {
        let ring = self.ring();
        let first = ring.lines.front().map_or(ring.next_seq, |l| l.seq);
        let limit = match query.limit {
            0 => PAGE_LINES,
            n => n.min(PAGE_LINES),
        } as usize;
        let mut page = LogPage {
            next: ring.next_seq,
            ..LogPage::default()
        };
        // What was asked for and is gone: counted as lines, whatever
        // their task (the book no longer knows whose they were).
        page.dropped = first.saturating_sub(query.from);
        let start = query.from.saturating_sub(first) as usize;
        let mut bytes = 0;
        for line in ring.lines.iter().skip(start) {
            let wanted = query
                .task
                .as_ref()
                .is_none_or(|t| line.task.as_ref() == Some(t))
                && query
                    .actor
                    .as_ref()
                    .is_none_or(|a| line.actor.as_ref() == Some(a));
            if !wanted {
                continue;
            }
            let size = line_bytes(line);
            if page.lines.len() == limit || (bytes + size > PAGE_BYTES && !page.lines.is_empty()) {
                page.next = line.seq;
                page.more = true;
                break;
            }
            bytes += size;
            page.lines.push(line.clone());
        }
        page
    }
}

/// The layer that writes every event it sees into a [`LogBook`], tagged
/// with the task or actor running the code that logged it.
#[derive(Clone, Debug)]
pub struct LogCapture {
    book: Arc<LogBook>,
}

impl LogCapture {
    /// A layer writing into `book`.
    pub fn new(book: Arc<LogBook>) -> Self {
        LogCapture { book }
    }

    /// A layer writing into the process's book ([`LogBook::global`]).
    pub fn global() -> Self {
        LogCapture::new(LogBook::global())
    }
}

impl<S: Subscriber> Layer<S> for LogCapture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let (task, actor) = crate::context::with(|frame| {
            Some((
                frame.task.as_ref().map(|t| t.task_id.to_string()),
                frame.actor.as_ref().map(|a| a.id.to_string()),
            ))
        })
        .unwrap_or_default();
        let meta = event.metadata();
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.book.push(LogLine {
            seq: 0,
            unix_ms,
            level: meta.level().to_string(),
            target: meta.target().to_owned(),
            text: text.into_line(),
            task,
            actor,
        });
    }
}

/// An event's message and fields as one line.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn into_line(self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.fields,
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }

    fn field(&mut self, field: &Field) -> Option<&mut String> {
        if field.name() == "message" {
            return Some(&mut self.message);
        }
        if field.name().starts_with("log.") {
            return None; // the `log` crate's bridge fields
        }
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}=", field.name());
        Some(&mut self.fields)
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(out) = self.field(field) {
            out.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if let Some(out) = self.field(field) {
            let _ = write!(out, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, task: Option<&str>) -> LogLine {
        LogLine {
            seq: 0,
            unix_ms: 0,
            level: "INFO".into(),
            target: "app".into(),
            text: text.into(),
            task: task.map(str::to_owned),
            actor: None,
        }
    }

    #[test]
    fn pages_follow_on_filter_by_task_and_say_what_was_dropped() {
        let book = LogBook::new(1 << 20);
        for i in 0..10 {
            let task = (i % 2 == 0).then_some("task-a");
            book.push(line(&format!("line {i}"), task));
        }
        let all = book.read(&LogQuery::default());
        assert_eq!(all.lines.len(), 10);
        assert_eq!((all.next, all.dropped, all.more), (10, 0, false));
        let mine = book.read(&LogQuery {
            task: Some("task-a".into()),
            limit: 3,
            ..LogQuery::default()
        });
        let texts: Vec<&str> = mine.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 0", "line 2", "line 4"]);
        assert!(mine.more);
        let rest = book.read(&LogQuery {
            from: mine.next,
            task: Some("task-a".into()),
            ..LogQuery::default()
        });
        let texts: Vec<&str> = rest.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 6", "line 8"]);
        // Nothing new: the cursor stays at the end, for `-f`.
        let quiet = book.read(&LogQuery {
            from: rest.next,
            ..LogQuery::default()
        });
        assert!(quiet.lines.is_empty());
        assert_eq!(quiet.next, 10);
    }

    #[test]
    fn the_budget_drops_the_oldest_lines_and_cuts_a_long_one() {
        let book = LogBook::new(10 * 100);
        for i in 0..100 {
            book.push(line(&format!("{i:>20}"), None));
        }
        let page = book.read(&LogQuery::default());
        assert!(page.lines.len() < 20, "{} lines kept", page.lines.len());
        assert_eq!(page.lines.last().map(|l| l.seq), Some(99));
        assert_eq!(page.dropped as usize + page.lines.len(), 100);
        let long = "é".repeat(MAX_LINE_BYTES);
        book.push(line(&long, None));
        let page = book.read(&LogQuery {
            from: 100,
            ..LogQuery::default()
        });
        assert!(page.lines[0].text.len() < MAX_LINE_BYTES + 40);
        assert!(page.lines[0].text.ends_with("bytes, cut)"));
    }

    #[test]
    fn a_page_stays_under_its_byte_cap() {
        let book = LogBook::new(64 << 20);
        for _ in 0..1_000 {
            book.push(line(&"x".repeat(2_000), None));
        }
        let page = book.read(&LogQuery::default());
        let bytes: usize = page.lines.iter().map(line_bytes).sum();
        assert!(bytes <= PAGE_BYTES, "{bytes}");
        assert!(page.more);
        assert_eq!(page.next, page.lines.len() as u64);
    }
}
