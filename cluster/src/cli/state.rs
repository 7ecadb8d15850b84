//! `troupe list`, `troupe summary` and `troupe get`: the state API across
//! the cluster (Ray's `ray list`, `ray summary`, `ray get`), gathered by
//! the head from every member with a deadline; a member that does not
//! answer is listed as such.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use serde::Serialize;
use troupe_core::StateQuery;

use super::ClientArgs;
use crate::protocol::{Reply, Request};
use crate::state::{ClusterState, NodeAnswer};
use crate::ClusterError;

/// What to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// The cluster's members.
    Nodes,
    /// Live actors.
    Actors,
    /// Tasks (unfinished ones, then the latest finished).
    Tasks,
    /// Objects in the nodes' stores.
    Objects,
}

impl Kind {
    /// One of them, in words.
    fn singular(self) -> &'static str {
        match self {
            Kind::Nodes => "node",
            Kind::Actors => "actor",
            Kind::Tasks => "task",
            Kind::Objects => "object",
        }
    }
}

/// How to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON array of records, each with its `node`.
    Json,
}

/// `troupe list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// What to list.
    pub kind: Kind,
    /// Keep rows whose column equals a value, case-insensitively
    /// (`--filter state=RUNNING`, `--filter function=app::parse`); repeat
    /// to combine.
    #[arg(long = "filter", value_name = "COLUMN=VALUE")]
    pub filters: Vec<String>,
    /// Only this node's rows (a prefix of its id).
    #[arg(long)]
    pub node: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// How to print.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `troupe summary`.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// What to count: tasks by function, actors by type, objects per node.
    pub kind: Kind,
    /// How to print.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `troupe get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What the id names (actors, tasks or objects).
    pub kind: Kind,
    /// Its id, as `troupe list` shows it.
    pub id: String,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `troupe timeline`.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// Where to write the Chrome trace (open it in Perfetto).
    #[arg(short, long)]
    pub output: std::path::PathBuf,
    /// Record on every node for this many seconds first (then stop); by
    /// default, write what the nodes recorded so far.
    #[arg(long, value_name = "SECONDS")]
    pub record: Option<u64>,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `troupe timeline`.
pub(super) async fn timeline(args: TimelineArgs) -> Result<(), ClusterError> {
    if args.client.token_file.is_some() {
        return Err(ClusterError::ReadOnly(
            "the timeline needs the cluster's cookie (it can turn recording on)".to_owned(),
        ));
    }
    let (rt, node) = super::client(&args.client).await?;
    let written = write_timeline(&node, &args).await;
    let _ = rt.shutdown().await;
    let (events, silent) = written?;
    println!(
        "troupe: wrote {events} events from {} nodes to {}{}",
        silent.0,
        args.output.display(),
        if silent.1.is_empty() {
            String::new()
        } else {
            format!("; no timeline from {}", silent.1.join(", "))
        }
    );
    Ok(())
}

/// Records if asked, gathers, writes: the events written, and the nodes
/// that answered and those that did not (with why).
async fn write_timeline(
    node: &crate::ClusterNode,
    args: &TimelineArgs,
) -> Result<(usize, (usize, Vec<String>)), ClusterError> {
    if let Some(seconds) = args.record {
        node.record_cluster_timeline(true).await?;
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        node.record_cluster_timeline(false).await?;
    }
    let timeline = node.cluster_timeline().await?;
    if !timeline.ever_recorded() {
        return Err(ClusterError::Query(
            "no node has recorded a timeline: record one with `troupe timeline --record 10 -o \
             FILE`, or start the runtimes with Config::record_timeline(true)"
                .to_owned(),
        ));
    }
    let trace = timeline.chrome_trace();
    let text = serde_json::to_vec(&trace).map_err(|e| ClusterError::Protocol(e.to_string()))?;
    std::fs::write(&args.output, text).map_err(|source| ClusterError::CookieFile {
        path: args.output.clone(),
        source,
    })?;
    let silent: Vec<String> = timeline
        .nodes
        .iter()
        .filter_map(|n| {
            n.timeline
                .as_ref()
                .err()
                .map(|why| format!("{} ({why})", n.member.hello.node))
        })
        .collect();
    Ok((
        timeline.events(),
        (timeline.nodes.len() - silent.len(), silent),
    ))
}

/// The gathered state, by the cookie's way (a client of the cluster) or
/// the read-only token's.
async fn gather(client: &ClientArgs) -> Result<ClusterState, ClusterError> {
    let query = StateQuery::new();
    if let Some(token_file) = &client.token_file {
        return match super::observe(client, token_file, Request::ClusterState(query)).await? {
            Reply::ClusterState(state) => Ok(state),
            Reply::Refused(why) => Err(ClusterError::ReadOnly(why)),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        };
    }
    let (rt, node) = super::client(client).await?;
    let state = node.cluster_state(query).await;
    let _ = rt.shutdown().await;
    state
}

/// One row: a record of one node, with the columns a table shows.
struct Row {
    node: String,
    columns: Vec<(&'static str, String)>,
    record: serde_json::Value,
}

fn record(value: &impl Serialize, node: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert(
            "node".to_owned(),
            serde_json::Value::String(node.to_owned()),
        );
    }
    value
}

fn debug_word(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}").to_uppercase()
}

/// Every row of `kind` across the cluster.
fn rows(state: &ClusterState, kind: Kind) -> Vec<Row> {
    let mut rows = Vec::new();
    for n in &state.nodes {
        let node = n.member.hello.node.to_string();
        let answer = match &n.answer {
            NodeAnswer::State { truncated, .. } if *truncated => "answered (lists cut)".to_owned(),
            NodeAnswer::State { .. } => "answered".to_owned(),
            NodeAnswer::Departed => "departed".to_owned(),
            NodeAnswer::NoAnswer(why) => format!("no answer: {why}"),
        };
        if kind == Kind::Nodes {
            let m = &n.member;
            rows.push(Row {
                node: node.clone(),
                columns: vec![
                    ("node", node.clone()),
                    ("name", m.hello.name.clone()),
                    ("role", debug_word(&m.hello.role)),
                    ("state", debug_word(&m.state)),
                    ("address", m.hello.control_addr.clone()),
                    (
                        "cpus",
                        format!(
                            "{}/{}",
                            m.hello.resources.num_cpus - m.available.num_cpus,
                            m.hello.resources.num_cpus
                        ),
                    ),
                    ("answer", answer),
                ],
                record: record(n, &node),
            });
            continue;
        }
        let NodeAnswer::State { state, .. } = &n.answer else {
            continue;
        };
        match kind {
            Kind::Actors => rows.extend(state.actors.iter().map(|a| Row {
                node: node.clone(),
                columns: vec![
                    ("id", a.info.id.to_string()),
                    ("type", a.info.type_name.to_string()),
                    ("name", a.info.name.clone().unwrap_or_default()),
                    ("state", debug_word(&a.state)),
                    ("restarts", a.restarts.to_string()),
                    ("node", node.clone()),
                ],
                record: record(a, &node),
            })),
            Kind::Tasks => rows.extend(state.tasks.iter().map(|t| Row {
                node: node.clone(),
                columns: vec![
                    ("id", t.id.to_string()),
                    ("function", t.function.to_string()),
                    ("state", debug_word(&t.state)),
                    ("attempt", t.attempt.to_string()),
                    ("ran_on", t.node.map(|n| n.to_string()).unwrap_or_default()),
                    ("node", node.clone()),
                    ("error", t.error.clone().unwrap_or_default()),
                ],
                record: record(t, &node),
            })),
            Kind::Objects => rows.extend(state.objects.iter().map(|o| Row {
                node: node.clone(),
                columns: vec![
                    ("id", o.id.to_string()),
                    ("type", o.type_name.clone()),
                    ("size", o.size.to_string()),
                    ("state", o.state.to_uppercase()),
                    ("refs", o.refs.to_string()),
                    ("node", node.clone()),
                ],
                record: record(o, &node),
            })),
            Kind::Nodes => {}
        }
    }
    if kind == Kind::Tasks {
        // A task sent to another node is listed by its owner (DELEGATED)
        // and by the node that runs it: keep the latter.
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut kept: Vec<Row> = Vec::with_capacity(rows.len());
        for row in rows {
            let id = column(&row, "id").to_owned();
            match seen.get(&id) {
                Some(&at) if column(&kept[at], "state") == "DELEGATED" => kept[at] = row,
                Some(_) => {}
                None => {
                    seen.insert(id, kept.len());
                    kept.push(row);
                }
            }
        }
        return kept;
    }
    rows
}

fn column<'r>(row: &'r Row, name: &str) -> &'r str {
    row.columns
        .iter()
        .find(|(c, _)| *c == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Filters as `(column, value)`, or which one is malformed.
fn parse_filters(filters: &[String]) -> Result<Vec<(String, String)>, ClusterError> {
    filters
        .iter()
        .map(|f| match f.split_once('=') {
            Some((column, value)) if !column.is_empty() => {
                Ok((column.trim().to_lowercase(), value.trim().to_owned()))
            }
            _ => Err(ClusterError::Query(format!(
                "the filter {f:?} is not COLUMN=VALUE (e.g. state=RUNNING)"
            ))),
        })
        .collect()
}

fn keeps(row: &Row, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(column, value)| {
        row.columns
            .iter()
            .any(|(c, v)| *c == column && v.eq_ignore_ascii_case(value))
    })
}

fn table(rows: &[Row]) -> String {
    let Some(first) = rows.first() else {
        return "(none)\n".to_owned();
    };
    let headers: Vec<&str> = first.columns.iter().map(|(c, _)| *c).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, (_, v)) in row.columns.iter().enumerate() {
            widths[i] = widths[i].max(v.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for row in rows {
        out += &line(
            &row.columns
                .iter()
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>(),
        );
    }
    out
}

fn print_records(rows: &[Row]) -> Result<(), ClusterError> {
    let records: Vec<&serde_json::Value> = rows.iter().map(|r| &r.record).collect();
    let text = serde_json::to_string_pretty(&records)
        .map_err(|e| ClusterError::Protocol(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// `troupe list`.
pub(super) async fn list(args: ListArgs) -> Result<(), ClusterError> {
    let filters = parse_filters(&args.filters)?;
    let state = gather(&args.client).await?;
    print!("{}", render_list(&state, &args, &filters)?);
    Ok(())
}

/// What `troupe list` prints for `state`.
fn render_list(
    state: &ClusterState,
    args: &ListArgs,
    filters: &[(String, String)],
) -> Result<String, ClusterError> {
    let mut rows = rows(state, args.kind);
    rows.retain(|r| {
        keeps(r, filters)
            && args
                .node
                .as_deref()
                .is_none_or(|prefix| r.node.starts_with(prefix))
    });
    rows.truncate(args.limit);
    match args.format {
        Format::Table => Ok(table(&rows)),
        Format::Json => {
            let records: Vec<&serde_json::Value> = rows.iter().map(|r| &r.record).collect();
            serde_json::to_string_pretty(&records)
                .map(|t| t + "\n")
                .map_err(|e| ClusterError::Protocol(e.to_string()))
        }
    }
}

/// `troupe summary`.
pub(super) async fn summary(args: SummaryArgs) -> Result<(), ClusterError> {
    let state = gather(&args.client).await?;
    let rows = summarize(&state, args.kind);
    match args.format {
        Format::Table => print!("{}", table(&rows)),
        Format::Json => print_records(&rows)?,
    }
    Ok(())
}

/// Counts across the cluster: tasks by function and state (over the tasks
/// each node lists: its unfinished ones and latest finished ones), actors
/// by type, objects and their bytes by node.
fn summarize(state: &ClusterState, kind: Kind) -> Vec<Row> {
    let mut out = Vec::new();
    match kind {
        Kind::Tasks => {
            // From the listed tasks, each once (see `rows`): every node's
            // own counts would count a task sent elsewhere twice.
            let mut by: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for row in rows(state, Kind::Tasks) {
                *by.entry(column(&row, "function").to_owned())
                    .or_default()
                    .entry(column(&row, "state").to_owned())
                    .or_default() += 1;
            }
            for (function, states) in by {
                let total: u64 = states.values().sum();
                let detail: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
                let record =
                    serde_json::json!({ "function": function, "tasks": total, "by_state": states });
                out.push(Row {
                    node: String::new(),
                    columns: vec![
                        ("function", function),
                        ("tasks", total.to_string()),
                        ("by_state", detail.join(", ")),
                    ],
                    record,
                });
            }
        }
        Kind::Actors => {
            let mut by: BTreeMap<String, usize> = BTreeMap::new();
            for (_, s) in state.answered() {
                for (t, n) in &s.summary.actors.by_type {
                    *by.entry(t.clone()).or_default() += n;
                }
            }
            for (actor_type, n) in by {
                let record = serde_json::json!({ "type": actor_type, "alive": n });
                out.push(Row {
                    node: String::new(),
                    columns: vec![("type", actor_type), ("alive", n.to_string())],
                    record,
                });
            }
        }
        Kind::Objects | Kind::Nodes => {
            for (member, s) in state.answered() {
                let o = &s.summary.objects;
                let node = member.hello.node.to_string();
                out.push(Row {
                    node: node.clone(),
                    columns: vec![
                        ("node", node.clone()),
                        ("objects", o.objects.to_string()),
                        ("memory_bytes", o.memory_bytes.to_string()),
                        ("budget_bytes", o.budget_bytes.to_string()),
                        ("spilled_bytes", o.spilled_bytes.to_string()),
                    ],
                    record: record(o, &node),
                });
            }
        }
    }
    out
}

/// `troupe get`.
pub(super) async fn get(args: GetArgs) -> Result<(), ClusterError> {
    let state = gather(&args.client).await?;
    let found: Vec<Row> = rows(&state, args.kind)
        .into_iter()
        .filter(|r| r.columns.iter().any(|(c, v)| *c == "id" && *v == args.id))
        .collect();
    if found.is_empty() {
        let silent = state
            .nodes
            .iter()
            .filter(|n| !matches!(n.answer, NodeAnswer::State { .. }))
            .count();
        return Err(ClusterError::Query(format!(
            "no {} with id {} on the {} nodes that answered ({silent} did not: departed or silent)",
            args.kind.singular(),
            args.id,
            state.nodes.len() - silent
        )));
    }
    print_records(&found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_column_equals_value_and_bad_ones_are_named() {
        let parsed =
            parse_filters(&["state=RUNNING".into(), " function = app::f ".into()]).expect("parses");
        assert_eq!(
            parsed,
            [
                ("state".to_owned(), "RUNNING".to_owned()),
                ("function".to_owned(), "app::f".to_owned())
            ]
        );
        assert!(parse_filters(&["running".into()]).is_err());
        assert!(parse_filters(&["=x".into()]).is_err());
        let row = Row {
            node: "n1".into(),
            columns: vec![("state", "RUNNING".into()), ("function", "app::f".into())],
            record: serde_json::Value::Null,
        };
        assert!(keeps(&row, &parsed));
        assert!(keeps(&row, &[("state".into(), "running".into())]));
        assert!(!keeps(&row, &[("state".into(), "FINISHED".into())]));
        assert!(!keeps(&row, &[("colour".into(), "red".into())]));
    }

    #[test]
    fn a_table_aligns_its_columns_and_says_when_empty() {
        let rows = vec![
            Row {
                node: String::new(),
                columns: vec![("id", "a".into()), ("state", "RUNNING".into())],
                record: serde_json::Value::Null,
            },
            Row {
                node: String::new(),
                columns: vec![("id", "long-id".into()), ("state", "X".into())],
                record: serde_json::Value::Null,
            },
        ];
        assert_eq!(
            table(&rows),
            "ID       STATE\na        RUNNING\nlong-id  X\n"
        );
        assert_eq!(table(&[]), "(none)\n");
    }
}
