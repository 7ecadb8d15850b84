// Troupe's dashboard: renders each snapshot the server sends over
// server-sent events (/api/events): `snapshot` events for this node,
// `cluster` events for every node and the jobs. No framework, nothing fetched from
// elsewhere. Text from the runtime (names, errors) only ever goes through
// textContent, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const closedSupervisors = new Set(); // paths the user folded
  let taskFilter = "";
  let last = null;
  const openNodes = new Set(); // node cards whose lists the user unfolded
  const LOG_KEEP = 64 * 1024; // characters of a job's log the page keeps
  const job = { id: null, next: 0, timer: null, intervalMs: 1000 };

  // ---- small helpers ------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function bytes(n) {
    if (!Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function duration(us) {
    if (us === null || us === undefined || us < 0) return "–";
    if (us < 1000) return us.toFixed(0) + " µs";
    if (us < 1e6) return (us / 1000).toFixed(1) + " ms";
    const s = us / 1e6;
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function ago(atUs, nowUs) {
    return duration(Math.max(0, nowUs - atUs)) + " ago";
  }

  function amount(n) {
    return Number.isInteger(n) ? String(n) : n.toFixed(2);
  }

  const taskId = (id) => `task-${id.node}-${id.seq}`;
  const actorId = (id) => `actor-${id.node}-${id.seq}`;
  const shortType = (name) => (name || "").split("::").pop();

  function fill(tbody, rows, columns, emptyText) {
    tbody.replaceChildren();
    if (rows.length === 0) {
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: columns, text: emptyText })));
      return;
    }
    for (const row of rows) tbody.append(row);
  }

  // ---- sections -----------------------------------------------------------

  function renderHeader(state) {
    $("runtime-name").textContent = state.name;
    $("node-id").textContent = state.node;
    const node = state.nodes[0];
    $("uptime").textContent = node ? duration(state.at_us - node.started_at_us) : "–";
    const link = $("timeline-link");
    link.classList.toggle("disabled", !state.summary.timeline_recording);
    link.title = state.summary.timeline_recording
      ? "Download the Chrome trace of task attempts and actor calls (open it in ui.perfetto.dev)"
      : "The timeline is not recording (Config::record_timeline / rt.record_timeline(true))";
  }

  function resourceRow(label, used, total, format) {
    const share = total > 0 ? Math.min(1, used / total) : 0;
    const bar = el("div", { class: share >= 1 ? "full" : "" });
    bar.style.width = (share * 100).toFixed(1) + "%";
    return el("div", { class: "resource" },
      el("span", { class: "muted", text: label }),
      el("div", { class: "meter" }, bar),
      el("span", { class: "mono", text: `${format(used)} / ${format(total)}` }));
  }

  function renderNodes(state) {
    const rows = state.nodes.map((node) => {
      const total = node.resources;
      const free = node.available;
      const list = el("div", { class: "resources" },
        resourceRow("CPU", total.num_cpus - free.num_cpus, total.num_cpus, amount));
      if (total.num_gpus > 0) {
        list.append(resourceRow("GPU", total.num_gpus - free.num_gpus, total.num_gpus, amount));
      }
      if (total.memory > 0) {
        list.append(resourceRow("memory", total.memory - free.memory, total.memory, bytes));
      }
      for (const [name, have] of Object.entries(total.custom || {})) {
        const left = (free.custom || {})[name] || 0;
        list.append(resourceRow(name, have - left, have, amount));
      }
      return el("tr", { "data-node": node.id },
        el("td", {}, el("code", { text: node.id })),
        el("td", { text: node.name }),
        el("td", { text: node.alive ? "alive" : "dead" }),
        el("td", {}, list));
    });
    fill($("nodes").tBodies[0], rows, 4, "no nodes");
  }

  function renderStore(snapshot) {
    const objects = snapshot.state.summary.objects;
    const stats = $("store-stats");
    stats.replaceChildren(
      stat(String(objects.objects), "objects"),
      stat(bytes(objects.memory_bytes), "in memory"),
      stat(bytes(objects.budget_bytes), "budget"),
      stat(bytes(objects.spilled_bytes), `spilled (${objects.spilled_objects} objects)`));
    const share = objects.budget_bytes > 0 ? objects.memory_bytes / objects.budget_bytes : 0;
    $("store-meter").style.width = Math.min(100, share * 100).toFixed(2) + "%";
    renderChart($("store-chart"), snapshot.store);
  }

  function stat(value, label) {
    return el("div", { class: "stat" }, el("div", { class: "value", text: value }), el("div", { class: "label", text: label }));
  }

  function renderChart(svg, samples) {
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const width = 600, height = 140, pad = 18;
    if (samples.length < 2) {
      const text = document.createElementNS(ns, "text");
      text.setAttribute("x", "12");
      text.setAttribute("y", "24");
      text.setAttribute("class", "axis");
      text.textContent = "collecting samples…";
      svg.append(text);
      return;
    }
    const t0 = samples[0].at_us, t1 = samples[samples.length - 1].at_us;
    const top = Math.max(1, ...samples.map((s) => Math.max(s.memory_bytes, s.spilled_bytes)));
    const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * (width - 2) + 1;
    const y = (v) => height - pad - (v / top) * (height - 2 * pad);
    for (const [key, cls] of [["memory_bytes", "memory"], ["spilled_bytes", "spilled"]]) {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("class", cls);
      line.setAttribute("points", samples.map((s) => `${x(s.at_us).toFixed(1)},${y(s[key]).toFixed(1)}`).join(" "));
      svg.append(line);
    }
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "6");
    label.setAttribute("y", "13");
    label.setAttribute("class", "axis");
    label.textContent = `${bytes(top)} · last ${duration(t1 - t0)}`;
    svg.append(label);
  }

  function childNode(child, parentPath, nowUs) {
    const path = `${parentPath}/${child.id}`;
    const running = child.running;
    const restarts = el("span", {
      class: "restarts" + (child.restarts > 0 ? " some" : ""),
      title: "restarts so far",
      text: `${child.restarts} restart${child.restarts === 1 ? "" : "s"}`,
    });
    const line = el("span", { class: "node" },
      el("span", { class: "dot" + (running ? "" : " stopped"), title: running ? "running" : "not running (restarting)" }),
      el("span", { class: "kind " + child.kind, text: child.kind === "Ractor" ? "process" : child.kind.toLowerCase() }),
      el("span", { class: "name", text: child.id }),
      child.actor_type ? el("span", { class: "muted", text: shortType(child.actor_type) }) : null,
      restarts);
    if (child.last_failure) {
      line.append(el("span", {
        class: "last-failure",
        title: "last failure",
        text: `last failure ${ago(child.last_failure.at_us, nowUs)}: ${child.last_failure.reason}`,
      }));
    }
    const item = el("li", {
      "data-child": child.id,
      "data-path": path,
      "data-kind": child.kind,
      "data-restarts": child.restarts,
    });
    if (child.supervisor) {
      item.append(supervisorNode(child.supervisor, nowUs, line));
    } else {
      item.append(line);
    }
    return item;
  }

  function supervisorNode(view, nowUs, line) {
    const details = el("details", { "data-supervisor": view.path });
    details.open = !closedSupervisors.has(view.path);
    details.addEventListener("toggle", () => {
      if (details.open) closedSupervisors.delete(view.path);
      else closedSupervisors.add(view.path);
    });
    const summary = el("summary", {}, line || el("span", { class: "node" },
      el("span", { class: "kind Supervisor", text: "supervisor" }),
      el("span", { class: "name", text: view.name })));
    const list = el("ul");
    for (const child of view.children) list.append(childNode(child, view.path, nowUs));
    if (view.more > 0) list.append(el("li", { class: "muted", text: `… and ${view.more} more` }));
    if (view.error) list.append(el("li", { class: "error", text: view.error }));
    details.append(summary, list);
    return details;
  }

  function renderTree(state) {
    const tree = $("tree");
    const root = el("ul", {}, el("li", { "data-child": state.supervisors.name, "data-path": state.supervisors.path },
      supervisorNode(state.supervisors, state.at_us)));
    tree.replaceChildren(root);
    const actors = state.summary.actors;
    $("actor-counts").textContent =
      `${actors.alive} actors alive, ${actors.restarting} restarting, ${actors.restarts} restarts in all`;
  }

  function renderTasks(state) {
    const counts = state.summary.tasks;
    const chips = [
      ["queued", counts.queued], ["waiting for arguments", counts.waiting_for_args],
      ["running", counts.running], ["unplaced", counts.unplaced], ["on other nodes", counts.delegated],
    ].map(([label, n]) => el("span", { class: "chip", "data-count": label }, el("b", { text: String(n) }), " " + label));
    $("task-counts").replaceChildren(...chips);

    const functions = state.summary.functions.map((f) => el("tr", { "data-function": f.function },
      el("td", {}, el("code", { text: f.function })),
      ...[f.submitted, f.pending, f.running, f.finished, f.failed, f.retried, f.cancelled]
        .map((n) => el("td", { class: "num", text: String(n) }))));
    fill($("functions").tBodies[0], functions, 8, "no task submitted yet");

    const shown = state.tasks.filter((t) => !taskFilter || t.state === taskFilter);
    const rows = shown.map((t) => {
      const end = t.ended_at_us || state.at_us;
      const ran = t.started_at_us ? end - t.started_at_us : null;
      return el("tr", { "data-task": taskId(t.id), "data-state": t.state },
        el("td", {}, el("code", { text: taskId(t.id) })),
        el("td", {}, el("code", { text: t.function })),
        el("td", { text: t.state }),
        el("td", { class: "num", text: String(t.attempt) }),
        el("td", { class: "num", text: duration(ran) }),
        el("td", { class: "error", text: t.error || "" }));
    });
    fill($("tasks").tBodies[0], rows, 6, "no tasks here");
    $("task-note").textContent = `${shown.length} of the ${state.tasks.length} listed (live ones first, then the last finished)`;
  }

  function renderFailures(snapshot) {
    const now = snapshot.state.at_us;
    const items = snapshot.failures.map((f) => el("li", { "data-kind": f.kind },
      el("span", { class: "when", text: ago(f.at_us, now) }),
      el("span", { class: "who", text: `${f.kind} ${f.who}` }),
      el("span", { class: "reason", text: f.reason })));
    const list = $("failures");
    list.replaceChildren(...items);
    if (items.length === 0) list.append(el("li", { class: "empty", text: "no failures" }));
  }


  // ---- the cluster --------------------------------------------------------

  const STATUS_CLASS = (status) => status.replace(/\s+/g, "-");

  function rowList(title, rows, more, openKey) {
    const details = el("details", { "data-list": title });
    details.open = openNodes.has(openKey);
    details.addEventListener("toggle", () => {
      if (details.open) openNodes.add(openKey);
      else openNodes.delete(openKey);
    });
    details.append(el("summary", { text: `${title} (${rows.length + more})` }));
    const list = el("ul", { class: "rows" });
    for (const row of rows) {
      list.append(el("li", { "data-id": row.id },
        el("code", { text: row.id }), " ", row.what, " ",
        el("span", { class: "muted", text: row.state })));
    }
    if (more > 0) list.append(el("li", { class: "muted", text: `${more} more` }));
    if (rows.length === 0 && more === 0) list.append(el("li", { class: "muted", text: "none" }));
    details.append(list);
    return details;
  }

  function nodeCard(n) {
    const cls = STATUS_CLASS(n.status);
    const card = el("div", {
      class: "node-card " + cls,
      "data-node": n.id,
      "data-status": n.status,
      "data-actors": n.actors,
    });
    card.append(el("div", { class: "head" },
      el("span", { class: "badge " + cls, text: n.status }),
      el("code", { text: n.id }),
      el("b", { text: n.role }),
      el("span", { text: n.name }),
      el("span", { class: "muted mono", text: `${n.address} · pid ${n.pid}` })));
    if (n.why) card.append(el("div", { class: "why", text: n.why }));
    const list = el("div", { class: "resources" });
    for (const r of n.resources) {
      list.append(resourceRow(r.name, r.used, r.total, r.name === "memory" ? bytes : amount));
    }
    if (n.store_budget > 0) list.append(resourceRow("store", n.store_bytes, n.store_budget, bytes));
    card.append(list);
    card.append(el("div", { class: "counts" },
      el("span", { "data-count": "actors" }, el("b", { text: String(n.actors) }), " actors"),
      el("span", { "data-count": "tasks" }, el("b", { text: String(n.tasks) }), " tasks"),
      el("span", { "data-count": "objects" }, el("b", { text: String(n.objects) }), ` objects (${bytes(n.store_bytes)})`),
      el("span", { "data-count": "placement-groups" }, el("b", { text: String(n.placement_groups) }), " placement groups" +
        (n.placement_groups_pending > 0 ? ` (${n.placement_groups_pending} pending)` : "")),
      el("span", { class: "muted", text: `load: ${n.tasks_queued} queued, ${n.tasks_running} running` }),
      n.last_known ? el("span", { class: "muted", text: "(last known)" }) : null));
    card.append(
      rowList("actors", n.actor_list, n.more[0], n.id + "/actors"),
      rowList("tasks", n.task_list, n.more[1], n.id + "/tasks"),
      rowList("objects", n.object_list, n.more[2], n.id + "/objects"));
    return card;
  }

  function renderJobs(panel) {
    const nowUs = panel.polled_at_us;
    const rows = panel.jobs.map((j) => {
      const button = el("button", { class: "link", type: "button", "data-log": j.id, text: "view" });
      button.addEventListener("click", () => showLog(j.id));
      return el("tr", { "data-job": j.id, "data-status": j.status },
        el("td", {}, el("code", { text: j.id })),
        el("td", { text: j.error ? `${j.status}: ${j.error}` : j.status }),
        el("td", {}, el("code", { text: j.command })),
        el("td", { text: ago(j.submitted_at_us, nowUs) }),
        el("td", {}, button));
    });
    const note = panel.jobs_error ? `jobs unavailable: ${panel.jobs_error}` : "no jobs";
    fill($("jobs").tBodies[0], rows, 5, note);
  }

  function renderCluster(panel) {
    const note = $("cluster-note");
    document.body.dataset.clusterAt = String(panel.polled_at_us);
    if (panel.alone) {
      note.textContent = "this node runs alone";
      $("cluster-nodes").replaceChildren();
      $("jobs-block").hidden = true;
      return;
    }
    const age = panel.polled_at_us - panel.nodes_at_us;
    note.textContent = `${panel.nodes.length} nodes` +
      (panel.error ? ` · ${panel.error}` + (age > 0 ? ` (as of ${duration(age)} ago)` : "") : "");
    note.classList.toggle("error", Boolean(panel.error));
    $("cluster-nodes").replaceChildren(...panel.nodes.map(nodeCard));
    $("jobs-block").hidden = false;
    renderJobs(panel);
  }

  // A job's log: followed page by page from the start, the page keeping
  // its last LOG_KEEP characters; polled while shown, until it ended.
  function showLog(id) {
    if (job.timer) clearTimeout(job.timer);
    job.id = id;
    job.next = 0;
    $("job-log").textContent = "";
    $("job-log-id").textContent = id;
    $("job-log-note").textContent = "loading…";
    $("job-log-block").hidden = false;
    followLog(id);
  }

  async function followLog(id) {
    if (job.id !== id) return;
    let wait = job.intervalMs;
    try {
      const response = await fetch(`/api/jobs/log?id=${encodeURIComponent(id)}&from=${job.next}`);
      if (!response.ok) throw new Error(await response.text());
      const page = await response.json();
      if (job.id !== id) return;
      const pre = $("job-log");
      if (page.text) {
        const text = (pre.textContent + page.text);
        pre.textContent = text.length > LOG_KEEP ? text.slice(text.length - LOG_KEEP) : text;
        pre.scrollTop = pre.scrollHeight;
      }
      const more = page.next > job.next;
      job.next = page.next;
      $("job-log-note").textContent = page.ended ? "ended" : "live";
      if (page.ended && !more) return; // all of it is here
      if (more) wait = 0; // catching up
    } catch (err) {
      $("job-log-note").textContent = `could not read the log: ${err.message}`;
    }
    job.timer = setTimeout(() => followLog(id), wait);
  }

  function render(snapshot) {
    last = snapshot;
    job.intervalMs = Math.max(250, snapshot.interval_ms || 1000);
    const state = snapshot.state;
    renderHeader(state);
    renderNodes(state);
    renderStore(snapshot);
    renderTree(state);
    renderTasks(state);
    renderFailures(snapshot);
    document.body.dataset.updatedAt = String(state.at_us);
  }

  // ---- the live connection ----------------------------------------------

  function setStatus(text, cls) {
    const status = $("status");
    status.textContent = text;
    status.className = "status " + cls;
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => setStatus("live", "live"));
    source.addEventListener("cluster", (event) => {
      try {
        renderCluster(JSON.parse(event.data));
      } catch (err) {
        console.error("could not render the cluster", err);
      }
    });
    source.addEventListener("snapshot", (event) => {
      setStatus("live", "live");
      try {
        render(JSON.parse(event.data));
      } catch (err) {
        setStatus("bad update", "down");
        console.error("could not render an update", err);
      }
    });
    // EventSource reconnects by itself; say so meanwhile.
    source.addEventListener("error", () => {
      setStatus(source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting",
        source.readyState === EventSource.CLOSED ? "down" : "reconnecting");
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("task-filter").addEventListener("change", (event) => {
      taskFilter = event.target.value;
      if (last) renderTasks(last.state);
    });
    connect();
  });
})();
