//! Pods without a cluster: each replica is the real `consentgate` binary, started as the image
//! would start it and configured exactly as its Deployment says, with only what a cluster would
//! provide substituted: addresses on loopback, mounted volumes as files, Secret values generated
//! in the shape the dev overlay's are, and databases of this rehearsal.
//!
//! As the image runs it: the container's user, group and fsGroup through `setpriv` (when this
//! process is root and `setpriv` exists; otherwise as the current user, and the report says so),
//! no new privileges and an empty capability bounding set when the container drops them all, a
//! read-only, empty working directory, the environment cleared apart from what the manifest sets,
//! and the mounts as their volumes would be (ConfigMap and Secret files read-only, owned by root
//! and group-readable through fsGroup with the volume's mode; an emptyDir writable).
//!
//! The paths a manifest mounts at (`/etc/consentgate/...`) cannot be created on the host without a
//! mount namespace, so each pod's mounts live under its own folder and the environment values that
//! name a mounted path are rewritten to it, as listen addresses, Service URLs and the database
//! clusters' `-rw` hosts are: every rewrite is listed in the report. Each pod reaches PostgreSQL
//! through a proxy of its own, so that the test can partition one pod from its database, or all.

use crate::certs::CertManager;
use crate::manifests::{EnvSource, Mount, Probe, Rendered, VolumeSource, Workload};
use crate::net::Balancer;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The image's entrypoint (Dockerfile `ENTRYPOINT`): what a `command` in a manifest would name.
const ENTRYPOINT: &str = "/usr/local/bin/consentgate";

/// A Service in front of one workload's pods: requests to `service:port` reach the pods' target
/// port through `balancer`.
pub struct Route {
    pub service: String,
    pub port: u16,
    pub workload: String,
    /// The container port (by number) the Service targets.
    pub container_port: u16,
    pub balancer: Balancer,
}

/// Everything the pods share: the binary, the volumes' contents, the Secrets, the databases, the
/// Services.
pub struct Stage {
    /// This rehearsal's folder (removed at the end).
    pub root: PathBuf,
    bin: PathBuf,
    /// `setpriv`, when the pods run under the manifest's user (this process is root).
    setpriv: Option<PathBuf>,
    pub namespace: String,
    pub workloads: BTreeMap<String, Workload>,
    pub routes: Vec<Route>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// (Secret name, key) → value.
    secrets: BTreeMap<(String, String), String>,
    /// Each caller's token.
    pub tokens: BTreeMap<String, String>,
    /// The PostgreSQL server; each pod reaches it through a proxy of its own (see [`Pod`]).
    postgres: SocketAddr,
    /// Databases created for this rehearsal, dropped at the end.
    pub databases: Vec<String>,
    admin_url: String,
    /// Environment rewrites, once per workload, for the report: (workload, variable, rewrite).
    pub rewrites: Vec<(String, String, String)>,
    /// cert-manager's part, when the overlay renders Certificates (`prod-mtls`).
    pub certs: Option<CertManager>,
    started: u32,
}

/// Environment variables (or rewrites of them), in order.
type Variables = Vec<(String, String)>;

/// A random lowercase hex string of `n` characters (n ≤ 64).
pub fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl Stage {
    /// Prepares the stage for `prod`, taking the Secrets' shape from `dev` (which generates them
    /// with fake values) and the policy callers from the mounted policy ConfigMap.
    pub async fn new(prod: &Rendered, dev: &Rendered, admin_url: &str) -> Stage {
        let run = random_hex(8);
        let root = std::env::temp_dir().join(format!("consentgate-rehearsal-{run}"));
        std::fs::create_dir_all(&root).expect("the rehearsal folder");
        set_mode(&root, 0o755);
        let am_root = std::fs::metadata(&root).expect("stat").uid() == 0;
        let setpriv = if am_root {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        } else {
            None
        };
        // The test binary's target folder may be closed to other users: the pods run a copy.
        let bin = root.join("consentgate");
        std::fs::copy(env!("CARGO_BIN_EXE_consentgate"), &bin).expect("copy the binary");
        set_mode(&bin, 0o755);

        let workloads: BTreeMap<String, Workload> = prod
            .workloads()
            .into_iter()
            .map(|w| (w.name.clone(), w))
            .collect();
        let mut config_maps = BTreeMap::new();
        for w in workloads.values() {
            for m in &w.mounts {
                if let VolumeSource::ConfigMap { name, .. } = &m.source {
                    config_maps.insert(name.clone(), prod.config_map(name));
                }
            }
        }

        // The policy's callers, from the policy the pods mount.
        let policy_text = config_maps
            .values()
            .find_map(|data| data.get("policy.toml"))
            .expect("a mounted ConfigMap holds policy.toml");
        let policy_file = root.join("policy.toml");
        std::fs::write(&policy_file, policy_text).expect("write the policy");
        let policy = consentgate_policy::Policy::from_file(&policy_file)
            .unwrap_or_else(|e| panic!("the ConfigMap's policy is invalid: {e}"));
        let tokens: BTreeMap<String, String> = policy
            .callers
            .keys()
            .map(|c| (c.clone(), format!("rehearsal-{}", random_hex(48))))
            .collect();

        let namespace = prod.namespace();
        let postgres = pg_address(admin_url);
        let mut databases = Vec::new();
        let mut secrets = BTreeMap::new();
        for cluster in prod.database_clusters() {
            let db = format!("rehearsal_{run}_{}", cluster.replace('-', "_"));
            create_database(admin_url, &db).await;
            // The shape of CloudNativePG's `<cluster>-app` Secret: user, password, the
            // cluster's -rw Service (which each pod's proxy stands for, see `rewrite`).
            secrets.insert(
                (format!("{cluster}-app"), "uri".to_owned()),
                format!(
                    "postgresql://postgres:{}@{cluster}-rw.{namespace}:5432/{db}",
                    random_hex(16),
                ),
            );
            databases.push(db);
        }
        // The Secrets cert-manager would write, from a CA of the rehearsal's own.
        let certs = CertManager::for_overlay(prod);
        let mut rewrites = Vec::new();
        if let Some(certs) = &certs {
            secrets.extend(certs.secrets());
            for (what, addition) in certs.additions() {
                rewrites.push(("cert-manager".to_owned(), what, addition));
            }
        }
        // Every other Secret in the shape the dev overlay generates it.
        let tokens_toml: String = tokens
            .iter()
            .map(|(c, t)| format!("\"{c}\" = \"{t}\"\n"))
            .collect();
        for (secret, keys) in dev.generated_secrets() {
            for key in keys {
                let value = if key == "tokens.toml" {
                    tokens_toml.clone()
                } else if key.ends_with(".key") {
                    random_hex(64)
                } else if let Some(token) = tokens.get(&key) {
                    token.clone()
                } else {
                    panic!(
                        "the dev overlay generates Secret {secret} key {key}, which the rehearsal \
                         cannot make a value for: teach tests/rehearsal/pods.rs"
                    )
                };
                secrets.insert((secret.clone(), key), value);
            }
        }

        let services = prod.services();
        let mut routes = Vec::new();
        for service in &services {
            let Some(workload) = workloads.values().find(|w| service.selects(w)) else {
                continue;
            };
            for (port, target) in &service.ports {
                let container_port = workload
                    .ports
                    .get(target)
                    .copied()
                    .or_else(|| target.parse().ok())
                    .unwrap_or_else(|| panic!("Service {} targets {target}", service.name));
                routes.push(Route {
                    service: service.name.clone(),
                    port: *port,
                    workload: workload.name.clone(),
                    container_port,
                    balancer: Balancer::start(&format!("{}:{port}", service.name)).await,
                });
            }
        }
        Stage {
            root,
            bin,
            setpriv,
            namespace,
            workloads,
            routes,
            config_maps,
            secrets,
            tokens,
            postgres,
            databases,
            admin_url: admin_url.to_owned(),
            rewrites,
            certs,
            started: 0,
        }
    }

    /// Who the pods run as, for the report.
    pub fn identity(&self) -> String {
        let w = self.workloads.values().next().expect("a workload");
        match &self.setpriv {
            Some(_) => format!(
                "UID {} GID {} groups {} via setpriv, no new privileges, no capabilities (checked in /proc)",
                w.run_as_user,
                w.run_as_group,
                w.fs_group.map_or("none".to_owned(), |g| g.to_string())
            ),
            None => "the current user (not root, or no setpriv): NOT the image's UID".to_owned(),
        }
    }

    /// The Service balancer in front of `workload`'s gRPC port (what clients dial).
    pub fn service_of(&self, workload: &str) -> &Balancer {
        let grpc = self.workloads[workload].api_port();
        &self
            .routes
            .iter()
            .find(|r| r.workload == workload && r.container_port == grpc)
            .unwrap_or_else(|| panic!("no Service in front of {workload}'s gRPC port"))
            .balancer
    }

    /// The value a Secret key would have in the cluster.
    fn secret(&self, name: &str, key: &str) -> String {
        self.secrets
            .get(&(name.to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the manifests reference Secret {name} key {key}, which neither CloudNativePG \
                     nor the dev overlay's generators provide"
                )
            })
    }

    /// Lays out a pod's volumes under `dir`, returning (mount path, host path) pairs.
    fn mount(&self, w: &Workload, dir: &Path) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for Mount {
            path,
            read_only,
            source,
        } in &w.mounts
        {
            let host = dir.join("mounts").join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&host).expect("mount folder");
            self.write_volume(w, &host, source);
            assert!(
                !(*read_only && matches!(source, VolumeSource::EmptyDir)),
                "{}: a read-only emptyDir at {path} is scratch space nobody can write",
                w.name
            );
            out.push((path.clone(), host));
        }
        out
    }

    /// Writes one volume's files into `host` as the kubelet lays them out: ConfigMap and
    /// Secret files owned by root and readable through the fsGroup with the volume's mode; an
    /// emptyDir writable by the container's user. On an update each file is replaced atomically,
    /// one after the other: harsher than the kubelet, which swaps the whole volume at once, as a
    /// reader may see a renewed certificate beside the old key for a moment (the services must
    /// skip such a set and keep what they have).
    fn write_volume(&self, w: &Workload, host: &Path, source: &VolumeSource) {
        let owner_group = w.fs_group.unwrap_or(w.run_as_group);
        let chown = |p: &Path, uid: u32| {
            if self.setpriv.is_some() {
                std::os::unix::fs::chown(p, Some(uid), Some(owner_group))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
            }
        };
        let (data, items, mode): (BTreeMap<String, String>, _, _) = match source {
            VolumeSource::ConfigMap { name, items, mode } => {
                (self.config_maps[name].clone(), items, *mode)
            }
            VolumeSource::Secret { name, items, mode } => (
                self.secrets
                    .iter()
                    .filter(|((secret, _), _)| secret == name)
                    .map(|((_, key), value)| (key.clone(), value.clone()))
                    .collect(),
                items,
                *mode,
            ),
            VolumeSource::EmptyDir => {
                set_mode(host, 0o777);
                chown(host, w.run_as_user);
                return;
            }
        };
        let pick: Vec<(String, String)> = match items {
            Some(items) => items.clone(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, file) in pick {
            let value = data
                .get(&key)
                .unwrap_or_else(|| panic!("{}: volume item {key} is missing", w.name));
            let staged = host.join(format!("..{file}.new"));
            std::fs::write(&staged, value).expect("write a mounted file");
            set_mode(&staged, mode);
            chown(&staged, 0);
            std::fs::rename(&staged, host.join(&file)).expect("swap a mounted file");
        }
        set_mode(host, 0o755);
    }

    /// The container's environment for one pod, resolved and rewritten; also says which
    /// rewrites were made.
    fn environment(
        &self,
        w: &Workload,
        pod: &str,
        ports: &BTreeMap<u16, SocketAddr>,
        mounts: &[(String, PathBuf)],
        database: SocketAddr,
    ) -> (Variables, Variables) {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut rewrites = Vec::new();
        for (name, source) in &w.env {
            let (value, secret) = match source {
                EnvSource::Value(v) => (crate::manifests::expand(v, &env), false),
                EnvSource::Secret { name, key } => (self.secret(name, key), true),
                EnvSource::Field(path) => match path.as_str() {
                    "metadata.name" => (pod.to_owned(), false),
                    "metadata.namespace" => (self.namespace.clone(), false),
                    other => panic!("{}: fieldRef {other} is not given by the rehearsal", w.name),
                },
            };
            let rewritten = self.rewrite(&value, ports, mounts, database);
            if rewritten != value {
                let shown = if secret {
                    format!("(Secret) -> {}", redact_password(&rewritten))
                } else {
                    format!("{value} -> {rewritten}")
                };
                rewrites.push((name.clone(), shown));
            }
            env.push((name.clone(), rewritten));
        }
        (env, rewrites)
    }

    /// Loopback for cluster addresses, the pod's folders for mounted paths.
    fn rewrite(
        &self,
        value: &str,
        ports: &BTreeMap<u16, SocketAddr>,
        mounts: &[(String, PathBuf)],
        database: SocketAddr,
    ) -> String {
        // A database cluster's -rw Service: the pod's own way to PostgreSQL.
        if let Some((scheme, rest)) = value.split_once("://")
            && scheme.starts_with("postgres")
            && let Some((credentials, rest)) = rest.split_once('@')
            && let Some((host, path)) = rest.split_once('/')
            && host.contains("-rw.")
        {
            return format!("{scheme}://{credentials}@{database}/{path}");
        }
        // A listen address on a container port.
        for prefix in ["0.0.0.0:", "[::]:", ":"] {
            if let Some(port) = value
                .strip_prefix(prefix)
                .and_then(|p| p.parse::<u16>().ok())
                && let Some(addr) = ports.get(&port)
            {
                return addr.to_string();
            }
        }
        // A Service URL.
        for scheme in ["http://", "https://"] {
            if let Some(rest) = value.strip_prefix(scheme) {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                if let Some((host, port)) = authority.rsplit_once(':')
                    && let Ok(port) = port.parse::<u16>()
                    && let Some(route) = self.routes.iter().find(|r| {
                        r.port == port
                            && crate::manifests::service_answers_to(
                                &r.service,
                                host,
                                &self.namespace,
                            )
                    })
                {
                    return format!("{scheme}{}{path}", route.balancer.addr);
                }
            }
        }
        // A path under a mount.
        for (path, host) in mounts {
            if let Some(rest) = value.strip_prefix(path.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", host.display());
            }
        }
        value.to_owned()
    }

    /// Starts one pod of `workload` and waits until its probes pass (it is not yet an endpoint
    /// of any Service: see [`Stage::publish`]).
    pub async fn start(&mut self, workload: &str) -> Pod {
        let w = self.workloads[workload].clone();
        self.started += 1;
        let name = format!("{workload}-{}-{}", random_hex(10), random_hex(5));
        let dir = self.root.join("pods").join(&name);
        std::fs::create_dir_all(&dir).expect("pod folder");
        set_mode(&dir, 0o755);
        // The working directory: empty and not writable (the image's root filesystem is
        // read-only and holds no data).
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("work folder");
        set_mode(&work, 0o555);
        let mounts = self.mount(&w, &dir);
        let mut ports = BTreeMap::new();
        for port in w.ports.values() {
            ports.insert(*port, free_port().await);
        }
        // Its own way to PostgreSQL, so that the test can cut one pod off or all of them.
        let postgres = Balancer::start(&format!("{name} to PostgreSQL")).await;
        postgres.add("postgresql", self.postgres);
        let (env, rewrites) = self.environment(&w, &name, &ports, &mounts, postgres.addr);
        if !self.rewrites.iter().any(|(wl, _, _)| wl == workload) {
            self.rewrites.extend(
                rewrites
                    .into_iter()
                    .map(|(var, r)| (workload.to_owned(), var, r)),
            );
        }
        let log = dir.join("log");
        let out = std::fs::File::create(&log).expect("pod log");
        let err = out.try_clone().expect("pod log");
        let mut argv: Vec<String> = Vec::new();
        if let Some(setpriv) = &self.setpriv {
            argv.push(setpriv.display().to_string());
            argv.push(format!("--reuid={}", w.run_as_user));
            argv.push(format!("--regid={}", w.run_as_group));
            match w.fs_group {
                Some(g) => argv.push(format!("--groups={g}")),
                None => argv.push("--clear-groups".into()),
            }
            if w.no_privilege_escalation {
                argv.push("--no-new-privs".into());
            }
            if w.drop_all_capabilities {
                argv.push("--inh-caps=-all".into());
                argv.push("--bounding-set=-all".into());
            }
            // A pod does not outlive the test that runs it.
            argv.push("--pdeathsig=KILL".into());
            argv.push("--".into());
        }
        match w.command.first() {
            None => argv.push(self.bin.display().to_string()),
            Some(entry) if entry == ENTRYPOINT => {
                argv.push(self.bin.display().to_string());
                argv.extend(w.command[1..].iter().cloned());
            }
            Some(other) => panic!("{workload}: command {other} is not the image's binary"),
        }
        argv.extend(w.args.iter().cloned());
        let child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let probe = ports[&w.readiness.port];
        let api = ports[&w.api_port()];
        let scratch = mounts
            .iter()
            .zip(&w.mounts)
            .filter(|(_, m)| matches!(m.source, VolumeSource::EmptyDir))
            .map(|((_, host), _)| host.clone())
            .collect();
        let mut pod = Pod {
            name,
            workload: workload.to_owned(),
            probe,
            api,
            dir: dir.clone(),
            child,
            log,
            startup: w.startup.clone(),
            readiness: w.readiness.clone(),
            grace: w.grace,
            ports,
            postgres,
            scratch,
        };
        pod.wait_ready().await;
        if self.setpriv.is_some() {
            pod.assert_identity(&w);
        }
        pod
    }

    /// cert-manager renews every Certificate (new keys, same CA) and the kubelet updates the
    /// Secret volumes of the running `pods` that mount them; pods started later get the renewed
    /// ones. Returns each renewed Secret's name.
    pub fn renew_certificates<'a>(&mut self, pods: impl Iterator<Item = &'a Pod>) -> Vec<String> {
        let certs = self
            .certs
            .as_mut()
            .expect("the overlay renders Certificates");
        certs.renew();
        let renewed = certs.secrets();
        let names: Vec<String> = renewed.keys().map(|(s, _)| s.clone()).collect();
        self.secrets.extend(renewed);
        for pod in pods {
            let w = &self.workloads[&pod.workload];
            for m in &w.mounts {
                if matches!(&m.source, VolumeSource::Secret { name, .. } if names.contains(name)) {
                    let host = pod.dir.join("mounts").join(m.path.trim_start_matches('/'));
                    self.write_volume(w, &host, &m.source);
                }
            }
        }
        let mut names = names;
        names.dedup();
        names
    }

    /// Makes a ready pod an endpoint of every Service that selects it.
    pub fn publish(&self, pod: &Pod) {
        for r in self.routes.iter().filter(|r| r.workload == pod.workload) {
            r.balancer.add(&pod.name, pod.ports[&r.container_port]);
        }
    }

    /// Takes a pod out of every Service (it is terminating).
    pub fn unpublish(&self, pod: &Pod) {
        for r in self.routes.iter().filter(|r| r.workload == pod.workload) {
            r.balancer.remove(&pod.name);
        }
    }
}

impl Drop for Stage {
    /// Drops this rehearsal's databases and folder, also when the rehearsal failed half-way
    /// (its pods are killed first: they are dropped before the stage). Dropping runs outside
    /// any runtime the test may still hold, so it uses a private one.
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let databases = std::mem::take(&mut self.databases);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                for db in databases {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
                Some(())
            })
        })
        .join();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `postgresql://user:secret@host/db` → `postgresql://user:***@host/db`, for the report.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let colon = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..colon], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The host and port of the server a PostgreSQL URL names.
fn pg_address(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("the PostgreSQL address {hostport}: {e}"))
}

async fn create_database(admin_url: &str, name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is unreachable: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a rehearsal database");
}

/// A loopback port nobody listens on right now.
async fn free_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

/// One running replica.
pub struct Pod {
    pub name: String,
    pub workload: String,
    /// Its health address (the readiness probe's port: the API port, or under mTLS a plaintext
    /// port of its own).
    pub probe: SocketAddr,
    /// Its API address (the container port named `grpc`).
    pub api: SocketAddr,
    /// Its folder (mounts, log).
    pub dir: PathBuf,
    /// Container port → loopback address.
    pub ports: BTreeMap<u16, SocketAddr>,
    child: tokio::process::Child,
    pub log: PathBuf,
    startup: Probe,
    readiness: Probe,
    grace: Duration,
    /// The proxy between this pod and PostgreSQL (cutting it partitions the pod from its
    /// database).
    pub postgres: Balancer,
    /// Its emptyDir volumes on the host.
    pub scratch: Vec<PathBuf>,
}

impl Pod {
    /// The last lines of the pod's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// What the health service says about `service` ("" = the whole server).
    pub async fn health(&self, service: &str) -> Option<ServingStatus> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.probe))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(answer.into_inner().status).ok()
    }

    /// Waits for the startup probe, then the readiness probe, within the kubelet's patience;
    /// a pod that exits first fails the rehearsal with its log.
    pub async fn wait_ready(&mut self) {
        for probe in [self.startup.clone(), self.readiness.clone()] {
            let deadline = Instant::now() + probe.patience;
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "{} exited ({status}) before its {:?} probe passed:\n{}",
                        self.name,
                        probe.service,
                        self.log_tail()
                    );
                }
                if self.health(&probe.service).await == Some(ServingStatus::Serving) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not pass its probe of {:?} within {:?}:\n{}",
                    self.name,
                    probe.service,
                    probe.patience,
                    self.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGKILL, as a crashed node or the OOM killer would.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, as the kubelet sends it, and the exit within the grace period; a pod that does
    /// not exit cleanly in time fails the rehearsal.
    pub async fn terminate(mut self) -> Duration {
        let began = Instant::now();
        let pid = self.child.id().expect("a running pod has a pid");
        let sent = std::process::Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal {}", self.name);
        let status = tokio::time::timeout(self.grace, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit within its grace period of {:?} after SIGTERM:\n{}",
                    self.name,
                    self.grace,
                    self.log_tail()
                )
            })
            .expect("wait");
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM:\n{}",
            self.name,
            self.log_tail()
        );
        began.elapsed()
    }

    /// Checks, from `/proc`, that the process runs as the manifest says: its user and group,
    /// the fsGroup as its only supplementary group, no effective, permitted or bounding
    /// capabilities when the container drops them all, no new privileges.
    fn assert_identity(&self, w: &Workload) {
        let pid = self.child.id().expect("a running pod has a pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        let uid = w.run_as_user.to_string();
        let gid = w.run_as_group.to_string();
        assert_eq!(field("Uid"), [uid.as_str(); 4].join(" "), "{}", self.name);
        assert_eq!(field("Gid"), [gid.as_str(); 4].join(" "), "{}", self.name);
        if let Some(g) = w.fs_group {
            assert_eq!(field("Groups"), g.to_string(), "{}", self.name);
        }
        if w.drop_all_capabilities {
            for caps in ["CapEff", "CapPrm", "CapBnd"] {
                assert_eq!(field(caps), "0000000000000000", "{}: {caps}", self.name);
            }
        }
        if w.no_privilege_escalation {
            assert_eq!(field("NoNewPrivs"), "1", "{}", self.name);
        }
    }

    /// What the pod wrote into its scratch space (`serve` writes nothing to disk).
    pub fn scratch_files(&self) -> usize {
        self.scratch
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .map(|entries| entries.count())
            .sum()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
