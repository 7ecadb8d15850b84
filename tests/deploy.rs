//! The deployment files under deploy/ agree with the `troupe start` command
//! line: every flag the Kubernetes manifests pass is one `troupe start`
//! has and the whole command line parses; the workers' `--address` is the
//! head's Service; the probes hit `--health-port`; the cookie comes from a
//! Secret key that exists; `--num-cpus` equals the CPU request; the
//! Dockerfile's ENTRYPOINT is `troupe start --block`.
//!
//! The manifests are read with yaml-rust2 (a maintained, pure safe Rust,
//! YAML 1.2 parser; serde_yaml is archived and its forks wrap the C libyaml
//! translation) and the flags are listed with clap's `CommandFactory` on
//! `troupe::cluster::cli::Cli`. Nothing here needs docker or kubectl.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use troupe::cluster::cli::Cli;
use yaml_rust2::{Yaml, YamlLoader};

/// What a pod's `$(POD_IP)` expands to here.
const SAMPLE_POD_IP: &str = "10.0.0.7";
/// What a pod's `$(POD_NAME)` (`metadata.name`) expands to here.
const SAMPLE_POD_NAME: &str = "troupe-worker-5d8c9-x7k2p";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// One YAML document of one manifest file.
struct Doc {
    file: String,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.yaml["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.yaml["metadata"]["name"].as_str().unwrap_or("")
    }
}

fn k8s_files() -> Vec<PathBuf> {
    let dir = deploy_dir().join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

/// Every document of every manifest under deploy/k8s.
fn manifests() -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in k8s_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        for yaml in parsed.into_iter().filter(|d| !d.is_null()) {
            docs.push(Doc {
                file: file.clone(),
                yaml,
            });
        }
    }
    docs
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn items(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// Whether a non-empty label selector selects these labels.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A container port given as a number or by name.
fn resolve_port(port: &Yaml, container: &Yaml) -> Option<i64> {
    match port {
        Yaml::Integer(p) => Some(*p),
        Yaml::String(name) => items(&container["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
            .as_i64(),
        _ => None,
    }
}

/// A CPU quantity (`2`, `"2"`, `1.5`, `"500m"`) in CPUs.
fn cpus(q: &Yaml) -> Option<f64> {
    let s = scalar(q)?;
    match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => s.parse().ok(),
    }
}

/// The Dockerfile's exec-form ENTRYPOINT.
fn entrypoint() -> Vec<String> {
    let path = deploy_dir().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .rev() // the last one counts
        .find(|l| l.trim_start().starts_with("ENTRYPOINT"))
        .expect("deploy/Dockerfile has no ENTRYPOINT");
    let json = line.trim_start()["ENTRYPOINT".len()..].trim();
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("ENTRYPOINT is not the exec (JSON array) form: {e}: {json}"))
}

fn start_command() -> clap::Command {
    Cli::command()
        .find_subcommand("start")
        .expect("`troupe` has no `start` subcommand")
        .clone()
}

/// `troupe start`'s long flags.
fn start_flags() -> BTreeSet<String> {
    start_command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(str::to_owned)
        .collect()
}

/// A container running a Troupe node, with its command line parsed the way
/// the pod would run it (the image's ENTRYPOINT, then `args` with `$(VAR)`
/// expanded from the container's env).
struct Node<'a> {
    /// `file: Kind/name`, for messages.
    at: String,
    workload: &'a Yaml,
    container: &'a Yaml,
    /// The container's env: name to literal value or a sample for
    /// `valueFrom`.
    env: BTreeMap<String, String>,
    /// The parsed `start` subcommand.
    matches: ArgMatches,
}

impl Node<'_> {
    fn is_head(&self) -> bool {
        self.explicit("head")
    }

    fn arg_id(long: &str) -> String {
        start_command()
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap_or_else(|| panic!("`troupe start` has no --{long}"))
            .get_id()
            .to_string()
    }

    /// Whether `--long` was given on the command line.
    fn explicit(&self, long: &str) -> bool {
        self.matches.value_source(&Self::arg_id(long)) == Some(ValueSource::CommandLine)
    }

    /// The value the node runs with: the command line's, else the env
    /// variable the flag reads (from the container's env), else the default.
    fn value(&self, long: &str) -> Option<String> {
        let cmd = start_command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap_or_else(|| panic!("`troupe start` has no --{long}"));
        let id = arg.get_id().as_str();
        if self.matches.value_source(id) == Some(ValueSource::CommandLine) {
            return self
                .matches
                .get_raw(id)
                .and_then(|mut v| v.next())
                .map(|v| v.to_string_lossy().into_owned());
        }
        if let Some(var) = arg.get_env().and_then(|v| v.to_str()) {
            if let Some(v) = self.env.get(var) {
                return Some(v.clone());
            }
        }
        arg.get_default_values()
            .first()
            .map(|v| v.to_string_lossy().into_owned())
    }

    fn port_value(&self, long: &str) -> Option<i64> {
        self.value(long).map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{}: --{long}={v} is not a port", self.at))
        })
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        string_map(&self.workload["spec"]["template"]["metadata"]["labels"])
    }
}

/// A sample value for an env var, as the pod would see it.
fn env_sample(var: &Yaml) -> String {
    if let Some(v) = scalar(&var["value"]) {
        return v;
    }
    match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
        Some("status.podIP") => SAMPLE_POD_IP.to_owned(),
        Some("metadata.name") => SAMPLE_POD_NAME.to_owned(),
        _ => "sample".to_owned(),
    }
}

/// Expands Kubernetes' `$(VAR)` references, which must name env vars of the
/// container (Kubernetes leaves an unknown one as it is).
fn expand(arg: &str, env: &BTreeMap<String, String>, at: &str) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find(')')
            .unwrap_or_else(|| panic!("{at}: unclosed `$(` in `{arg}`"))
            + start;
        let var = &rest[start + 2..end];
        let value = env.get(var).unwrap_or_else(|| {
            panic!("{at}: `{arg}` uses $({var}), which the container's env does not define")
        });
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

const WORKLOAD_KINDS: [&str; 2] = ["Deployment", "StatefulSet"];

fn nodes(docs: &[Doc]) -> Vec<Node<'_>> {
    let entry = entrypoint();
    let mut nodes = Vec::new();
    for doc in docs.iter().filter(|d| WORKLOAD_KINDS.contains(&d.kind())) {
        for container in items(&doc.yaml["spec"]["template"]["spec"]["containers"]) {
            let at = format!(
                "{}: {}/{} container {}",
                doc.file,
                doc.kind(),
                doc.name(),
                container["name"].as_str().unwrap_or("?")
            );
            assert!(
                container["command"].is_badvalue(),
                "{at}: `command` replaces the image's ENTRYPOINT (`troupe start --block`); use `args`"
            );
            let args: Vec<String> = items(&container["args"])
                .iter()
                .map(|a| scalar(a).unwrap_or_else(|| panic!("{at}: an arg is not a string")))
                .collect();
            let env: BTreeMap<String, String> = items(&container["env"])
                .iter()
                .map(|v| (scalar(&v["name"]).unwrap_or_default(), env_sample(v)))
                .collect();
            let flags = start_flags();
            let unknown: Vec<&String> = args
                .iter()
                .filter(|a| a.starts_with("--"))
                .filter(|a| {
                    let name = a[2..].split('=').next().unwrap_or("");
                    !flags.contains(name)
                })
                .collect();
            assert!(
                unknown.is_empty(),
                "{at}: `troupe start` has no {unknown:?} (its flags: {flags:?})"
            );
            // The ENTRYPOINT's program is the user's binary; `troupe` is
            // what clap sees as the program name.
            let argv: Vec<String> = entry[1..]
                .iter()
                .cloned()
                .chain(args.iter().map(|a| expand(a, &env, &at)))
                .collect();
            let matches = Cli::command()
                .try_get_matches_from(&argv)
                .unwrap_or_else(|e| panic!("{at}: {argv:?} does not parse:\n{e}"));
            let matches = matches
                .subcommand_matches("start")
                .unwrap_or_else(|| panic!("{at}: {argv:?} is not `troupe start`"))
                .clone();
            nodes.push(Node {
                at,
                workload: &doc.yaml,
                container,
                env,
                matches,
            });
        }
    }
    nodes
}

#[test]
fn manifests_parse_and_name_their_objects() {
    let docs = manifests();
    for doc in &docs {
        assert!(
            doc.yaml["apiVersion"].as_str().is_some() && !doc.kind().is_empty(),
            "{}: a document without apiVersion or kind",
            doc.file
        );
        if doc.kind() != "Kustomization" {
            assert!(
                !doc.name().is_empty(),
                "{}: a {} without a name",
                doc.file,
                doc.kind()
            );
        }
    }
    for kind in ["Secret", "Service"] {
        assert!(
            docs.iter().any(|d| d.kind() == kind),
            "no {kind} under deploy/k8s"
        );
    }
    for doc in docs.iter().filter(|d| WORKLOAD_KINDS.contains(&d.kind())) {
        let selector = string_map(&doc.yaml["spec"]["selector"]["matchLabels"]);
        let labels = string_map(&doc.yaml["spec"]["template"]["metadata"]["labels"]);
        assert!(
            selects(&selector, &labels),
            "{}: {}'s selector {selector:?} does not select its pods' labels {labels:?}",
            doc.file,
            doc.name()
        );
    }
}

#[test]
fn every_flag_is_a_troupe_start_flag_and_the_command_line_parses() {
    let docs = manifests();
    let nodes = nodes(&docs);
    assert!(
        nodes.len() >= 2,
        "expected a head and workers, found {} nodes",
        nodes.len()
    );
    for node in &nodes {
        assert!(
            node.explicit("block"),
            "{}: not started with --block (a container's node must stay in the foreground)",
            node.at
        );
        let bind: IpAddr = node.value("bind").unwrap().parse().unwrap();
        assert!(
            bind.is_unspecified(),
            "{}: --bind={bind}: a pod must listen on every interface (0.0.0.0)",
            node.at
        );
        assert_eq!(
            node.value("advertise").as_deref(),
            Some(SAMPLE_POD_IP),
            "{}: --advertise must be $(POD_IP), with POD_IP from the downward API (status.podIP)",
            node.at
        );
        // Bound beyond loopback: TLS, from a Secret mounted where
        // --tls-dir points, never --insecure.
        assert!(
            !node.explicit("insecure"),
            "{}: --insecure in a manifest",
            node.at
        );
        let tls_dir = node
            .value("tls-dir")
            .unwrap_or_else(|| panic!("{}: no --tls-dir (a pod listens beyond loopback)", node.at));
        let mount = items(&node.container["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(tls_dir.as_str()))
            .unwrap_or_else(|| panic!("{}: nothing mounted at --tls-dir={tls_dir}", node.at));
        let volume = items(&node.workload["spec"]["template"]["spec"]["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == mount["name"].as_str())
            .unwrap_or_else(|| panic!("{}: no volume {:?}", node.at, mount["name"]));
        assert_eq!(
            volume["secret"]["secretName"].as_str(),
            Some("troupe-tls"),
            "{}: the TLS files come from the Secret troupe-tls",
            node.at
        );
    }
}

#[test]
fn probes_hit_the_health_port() {
    let docs = manifests();
    for node in nodes(&docs) {
        let health = node
            .port_value("health-port")
            .unwrap_or_else(|| panic!("{}: no --health-port (the probes need /healthz)", node.at));
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &node.container[probe]["httpGet"];
            assert!(!get.is_badvalue(), "{}: no {probe}.httpGet", node.at);
            assert_eq!(
                get["path"].as_str(),
                Some("/healthz"),
                "{}: {probe} path",
                node.at
            );
            assert_eq!(
                resolve_port(&get["port"], node.container),
                Some(health),
                "{}: {probe} port is not --health-port={health}",
                node.at
            );
            // A node with --tls-dir serves /healthz over TLS only.
            let scheme = get["scheme"].as_str().unwrap_or("HTTP");
            let tls = node.value("tls-dir").is_some();
            assert_eq!(
                scheme,
                if tls { "HTTPS" } else { "HTTP" },
                "{}: {probe}.httpGet.scheme (the node has --tls-dir: {tls})",
                node.at
            );
        }
    }
}

#[test]
fn the_head_service_exposes_the_heads_ports_and_workers_join_it() {
    let docs = manifests();
    let nodes = nodes(&docs);
    let heads: Vec<&Node> = nodes.iter().filter(|n| n.is_head()).collect();
    assert_eq!(heads.len(), 1, "exactly one head container (--head)");
    let head = heads[0];
    let replicas = head.workload["spec"]["replicas"].as_i64();
    assert_eq!(
        replicas,
        Some(1),
        "{}: a head's replicas must be 1",
        head.at
    );
    if head.workload["kind"].as_str() == Some("Deployment") {
        assert_eq!(
            head.workload["spec"]["strategy"]["type"].as_str(),
            Some("Recreate"),
            "{}: a rolling update would run two heads",
            head.at
        );
    }
    assert!(
        head.explicit("port"),
        "{}: the head needs a fixed --port for its Service",
        head.at
    );
    let port = head.port_value("port").unwrap();
    let health = head.port_value("health-port").unwrap();

    let head_labels = head.pod_labels();
    let services: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "Service")
        .filter(|d| selects(&string_map(&d.yaml["spec"]["selector"]), &head_labels))
        .collect();
    assert_eq!(
        services.len(),
        1,
        "exactly one Service selects the head's pods"
    );
    let service = services[0];
    let selector = string_map(&service.yaml["spec"]["selector"]);
    for worker in nodes.iter().filter(|n| !n.is_head()) {
        assert!(
            !selects(&selector, &worker.pod_labels()),
            "{}: Service {} also selects this worker",
            worker.at,
            service.name()
        );
    }
    // A Service port: (port, the container port it reaches).
    let ports: Vec<(i64, Option<i64>)> = items(&service.yaml["spec"]["ports"])
        .iter()
        .map(|p| {
            let port = p["port"].as_i64().expect("a Service port without a number");
            let target = &p["targetPort"];
            let target = if target.is_badvalue() {
                Some(port)
            } else {
                resolve_port(target, head.container)
            };
            (port, target)
        })
        .collect();
    assert!(
        ports.contains(&(port, Some(port))),
        "{}: Service {} must expose the head's --port={port} as port {port} (has {ports:?})",
        service.file,
        service.name()
    );
    assert!(
        ports.iter().any(|(_, target)| *target == Some(health)),
        "{}: Service {} must expose the head's --health-port={health} (has {ports:?})",
        service.file,
        service.name()
    );

    let workers: Vec<&Node> = nodes.iter().filter(|n| !n.is_head()).collect();
    assert!(!workers.is_empty(), "no worker nodes");
    for worker in workers {
        let address = worker
            .value("address")
            .unwrap_or_else(|| panic!("{}: a worker without --address", worker.at));
        let (host, at_port) = address
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{}: --address={address} is not HOST:PORT", worker.at));
        assert!(
            host == service.name() || host.starts_with(&format!("{}.", service.name())),
            "{}: --address={address} is not the head's Service `{}`",
            worker.at,
            service.name()
        );
        assert_eq!(
            at_port.parse::<i64>().ok(),
            Some(port),
            "{}: --address={address} is not the Service's port {port}",
            worker.at
        );
    }
}

#[test]
fn the_cookie_comes_from_a_secret_key_that_exists() {
    let docs = manifests();
    for node in nodes(&docs) {
        secret_from_env(&docs, &node, "TROUPE_COOKIE");
    }
}

/// A node serving metrics beyond loopback needs a token (it refuses to
/// start without one): it comes from a Secret, as the cookie does.
#[test]
fn a_node_serving_metrics_takes_its_token_from_a_secret() {
    let docs = manifests();
    let serving: Vec<_> = nodes(&docs)
        .into_iter()
        .filter(|n| n.explicit("metrics-port"))
        .collect();
    assert!(!serving.is_empty(), "no node serves metrics");
    for node in serving {
        let port = node.port_value("metrics-port");
        let exposed = items(&node.container["ports"])
            .iter()
            .any(|p| p["containerPort"].as_i64() == port);
        assert!(
            exposed,
            "{}: --metrics-port {port:?} is not a container port",
            node.at
        );
        secret_from_env(&docs, &node, "TROUPE_METRICS_TOKEN");
    }
}

/// Checks that `node`'s environment variable `var` comes from a key of a
/// Secret in deploy/k8s, which ships it empty (secrets are not committed).
fn secret_from_env(docs: &[Doc], node: &Node<'_>, var: &str) {
    let entry = items(&node.container["env"])
        .iter()
        .find(|v| v["name"].as_str() == Some(var))
        .unwrap_or_else(|| panic!("{}: no {var} in env", node.at));
    assert!(
        entry["value"].is_badvalue(),
        "{}: {var} is written in the manifest; take it from the Secret",
        node.at
    );
    let by = &entry["valueFrom"]["secretKeyRef"];
    let (name, key) = (by["name"].as_str(), by["key"].as_str());
    let secret = docs
        .iter()
        .find(|d| d.kind() == "Secret" && Some(d.name()) == name)
        .unwrap_or_else(|| panic!("{}: {var}'s Secret {name:?} is not in deploy/k8s", node.at));
    let keys: BTreeSet<String> = ["data", "stringData"]
        .iter()
        .flat_map(|field| string_map(&secret.yaml[*field]).into_keys())
        .collect();
    let key = key.filter(|k| keys.contains(*k)).unwrap_or_else(|| {
        panic!(
            "{}: {var}'s key {key:?} is not in Secret {} (keys {keys:?})",
            node.at,
            secret.name()
        )
    });
    for field in ["data", "stringData"] {
        if let Some(value) = string_map(&secret.yaml[field]).get(key) {
            assert!(
                value.is_empty(),
                "{}: Secret {} ships {key}; leave it empty in the repository",
                secret.file,
                secret.name()
            );
        }
    }
}

#[test]
fn num_cpus_equals_the_cpu_request() {
    let docs = manifests();
    for node in nodes(&docs) {
        let requests = &node.container["resources"]["requests"];
        let cpu = cpus(&requests["cpu"])
            .unwrap_or_else(|| panic!("{}: no resources.requests.cpu", node.at));
        assert!(
            !requests["memory"].is_badvalue(),
            "{}: no resources.requests.memory",
            node.at
        );
        assert!(
            node.explicit("num-cpus"),
            "{}: no --num-cpus (it would offer the machine's CPUs, not the pod's)",
            node.at
        );
        let offered: f64 = node.value("num-cpus").unwrap().parse().unwrap();
        assert_eq!(
            offered, cpu,
            "{}: --num-cpus={offered} but the CPU request is {cpu}",
            node.at
        );
    }
}

#[test]
fn the_object_store_fits_within_the_pods_memory_limit() {
    let docs = manifests();
    for node in nodes(&docs) {
        let limit = scalar(&node.container["resources"]["limits"]["memory"])
            .unwrap_or_else(|| panic!("{}: no resources.limits.memory", node.at));
        let limit = troupe::cluster::cli::parse_bytes(&limit)
            .unwrap_or_else(|e| panic!("{}: memory limit {limit}: {e}", node.at));
        let store = node
            .value("object-store-memory")
            .unwrap_or_else(|| panic!("{}: no --object-store-memory", node.at));
        let store = troupe::cluster::cli::parse_bytes(&store).unwrap();
        assert!(
            store <= limit / 2,
            "{}: an object store of {store} bytes in a pod limited to {limit}",
            node.at
        );
    }
}

#[test]
fn the_dockerfile_runs_troupe_start_block() {
    let entry = entrypoint();
    assert!(
        entry.len() == 4 && entry[1..] == ["troupe", "start", "--block"],
        "ENTRYPOINT must be [\"<binary>\", \"troupe\", \"start\", \"--block\"], is {entry:?}"
    );
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("COPY --from=") && l.ends_with(&format!(" {}", entry[0]))),
        "no `COPY --from=...` puts the binary at the ENTRYPOINT's {}",
        entry[0]
    );
    let user = lines
        .iter()
        .rev() // the last one counts
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets no USER (it would run as root)");
    let uid = user.split(':').next().unwrap().trim();
    assert!(uid != "root" && uid != "0", "USER {user} is root");
    // The k8s manifests' `runAsUser` is the image's user.
    let docs = manifests();
    for node in nodes(&docs) {
        let pod = &node.workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"];
        if let Some(run_as) = scalar(pod) {
            assert_eq!(
                run_as, uid,
                "{}: runAsUser is not the image's USER",
                node.at
            );
        }
    }
}

#[test]
fn the_kustomization_lists_every_manifest_and_image() {
    let path = deploy_dir().join("k8s").join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let kustomization = &YamlLoader::load_from_str(&text).unwrap()[0];
    let listed: BTreeSet<String> = items(&kustomization["resources"])
        .iter()
        .filter_map(scalar)
        .collect();
    let files: BTreeSet<String> = k8s_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization.yaml's resources");
    let images: BTreeSet<String> = items(&kustomization["images"])
        .iter()
        .filter_map(|i| scalar(&i["name"]))
        .collect();
    let docs = manifests();
    for node in nodes(&docs) {
        let image = node.container["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no image", node.at));
        // `registry:5000/name:tag` -> `registry:5000/name`.
        let name = match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => image,
        };
        assert!(
            images.contains(name),
            "{}: image {name} is not in kustomization.yaml's images, so `kustomize edit set image` misses it",
            node.at
        );
    }
}
