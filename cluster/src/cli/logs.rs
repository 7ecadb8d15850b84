//! `troupe logs` (Ray's `ray logs`): what the nodes logged, every node's or
//! one's, or only what one task's or actor's code wrote, merged by time;
//! `-f` follows it.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use troupe_core::logs::{LogLine, LogQuery};
use troupe_core::NodeId;

use super::ClientArgs;
use crate::protocol::{MemberState, Role};
use crate::{ClusterError, ClusterNode};

/// How often `-f` asks the nodes for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The most pages read of one node at once (its whole book is 8 MiB).
const MAX_PAGES: usize = 64;

/// `troupe logs`.
#[derive(Debug, Args)]
pub struct NodeLogsArgs {
    /// Only this node's log: its id as `troupe status` shows it, or the
    /// start of it (default: every node's).
    #[arg(long)]
    pub node: Option<String>,
    /// Only what this task's code logged (its id, as `troupe list tasks`
    /// shows it).
    #[arg(long, conflicts_with = "actor")]
    pub task: Option<String>,
    /// Only what this actor's code logged (its id, as `troupe list
    /// actors` shows it).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only the last N lines (default: every line the nodes keep, the last
    /// 8 MiB of each).
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Keep printing new lines as they are logged (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn logs(args: NodeLogsArgs) -> Result<(), ClusterError> {
    if args.client.token_file.is_some() {
        return Err(ClusterError::ReadOnly(
            "logs need the cluster's cookie (they may hold what user code wrote)".to_owned(),
        ));
    }
    let (rt, node) = super::client(&args.client).await?;
    let printed = print_logs(&node, &args).await;
    let _ = rt.shutdown().await;
    printed
}

/// The live nodes `wanted` names (all of them for `None`).
async fn nodes(cluster: &ClusterNode, wanted: Option<&str>) -> Result<Vec<NodeId>, ClusterError> {
    let live: Vec<NodeId> = cluster
        .status()
        .await?
        .into_iter()
        .filter(|m| {
            m.hello.role != Role::Client
                && !matches!(m.state, MemberState::Dead | MemberState::Left)
        })
        .map(|m| m.hello.node)
        .collect();
    let Some(wanted) = wanted else {
        return Ok(live);
    };
    let matching: Vec<NodeId> = live
        .iter()
        .copied()
        .filter(|n| n.to_string().starts_with(wanted))
        .collect();
    match matching.as_slice() {
        [one] => Ok(vec![*one]),
        [] => Err(ClusterError::Query(format!(
            "no live node's id starts with {wanted:?}; the live nodes: {}",
            ids(&live)
        ))),
        many => Err(ClusterError::Query(format!(
            "{wanted:?} names {} nodes ({}): give more of the id",
            many.len(),
            ids(many)
        ))),
    }
}

fn ids(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(NodeId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn print_logs(cluster: &ClusterNode, args: &NodeLogsArgs) -> Result<(), ClusterError> {
    let nodes = nodes(cluster, args.node.as_deref()).await?;
    let query = LogQuery {
        task: args.task.clone(),
        actor: args.actor.clone(),
        ..LogQuery::default()
    };
    let mut cursors: BTreeMap<NodeId, u64> = nodes.iter().map(|n| (*n, 0)).collect();
    let mut silent: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut lines = read_new(cluster, &query, &mut cursors, &mut silent).await;
    if let Some(tail) = args.tail {
        lines.drain(..lines.len().saturating_sub(tail));
    }
    print(&lines);
    for (node, why) in &silent {
        eprintln!("troupe: no log from node {node}: {why}");
    }
    if !args.follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let before = silent.clone();
        let lines = read_new(cluster, &query, &mut cursors, &mut silent).await;
        print(&lines);
        for (node, why) in &silent {
            if before.get(node) != Some(why) {
                eprintln!("troupe: no log from node {node}: {why}");
            }
        }
    }
}

/// Every node's lines past its cursor (moved past them), merged by time;
/// why each node that did not answer did not.
async fn read_new(
    cluster: &ClusterNode,
    query: &LogQuery,
    cursors: &mut BTreeMap<NodeId, u64>,
    silent: &mut BTreeMap<NodeId, String>,
) -> Vec<(NodeId, LogLine)> {
    let reads = cursors.iter().map(|(node, from)| {
        let query = LogQuery {
            from: *from,
            ..query.clone()
        };
        async move { (*node, read_node(cluster, *node, query).await) }
    });
    let mut merged = Vec::new();
    for (node, read) in futures::future::join_all(reads).await {
        match read {
            Ok((lines, next, dropped)) => {
                silent.remove(&node);
                if dropped > 0 && cursors.get(&node).is_some_and(|c| *c > 0) {
                    eprintln!("troupe: node {node} dropped {dropped} lines before they were read");
                }
                cursors.insert(node, next);
                merged.extend(lines.into_iter().map(|l| (node, l)));
            }
            Err(why) => {
                silent.insert(node, why);
            }
        }
    }
    merged.sort_by(|(an, a), (bn, b)| (a.unix_ms, an, a.seq).cmp(&(b.unix_ms, bn, b.seq)));
    merged
}

/// `node`'s lines from `query.from` on, page after page: the lines, the
/// cursor past them, and how many were dropped before they could be read.
async fn read_node(
    cluster: &ClusterNode,
    node: NodeId,
    mut query: LogQuery,
) -> Result<(Vec<LogLine>, u64, u64), String> {
    let mut lines = Vec::new();
    let mut dropped = 0;
    for _ in 0..MAX_PAGES {
        let page = cluster
            .logs(node, query.clone())
            .await
            .map_err(|e| e.to_string())?;
        dropped += page.dropped;
        lines.extend(page.lines);
        query.from = page.next;
        if !page.more {
            break;
        }
    }
    Ok((lines, query.from, dropped))
}

fn print(lines: &[(NodeId, LogLine)]) {
    let mut out = std::io::stdout().lock();
    for (node, line) in lines {
        let _ = writeln!(out, "{}", format_line(*node, line));
    }
    let _ = out.flush();
}

/// `2026-12-06T22:07:11.350Z INFO  node=c12faaeb task=… app::work: text`.
fn format_line(node: NodeId, line: &LogLine) -> String {
    let node = node.to_string();
    let short = node.get(..8).unwrap_or(&node);
    let mut out = format!("{} {:<5} node={short}", utc(line.unix_ms), line.level);
    if let Some(task) = &line.task {
        out.push_str(" task=");
        out.push_str(task);
    }
    if let Some(actor) = &line.actor {
        out.push_str(" actor=");
        out.push_str(actor);
    }
    out.push(' ');
    out.push_str(&line.target);
    out.push_str(": ");
    out.push_str(&line.text);
    out
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_796_595_071_350), "2026-12-06T22:11:11.350Z");
    }

    #[test]
    fn a_line_names_its_node_task_and_target() {
        let line = LogLine {
            seq: 7,
            unix_ms: 0,
            level: "INFO".into(),
            target: "app::work".into(),
            text: "loaded rows=3".into(),
            task: Some("task-1".into()),
            actor: None,
        };
        assert_eq!(
            format_line(NodeId(0xc12f_aaeb_e0bd_b6ca), &line),
            "1970-01-01T00:00:00.000Z INFO  node=c12faaeb task=task-1 app::work: loaded rows=3"
        );
    }
}
