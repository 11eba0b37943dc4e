//! The production shape, read from the rendered manifests (`kubectl kustomize deploy/overlays/…`)
//! so that the rehearsal and `deploy/` cannot drift apart: each Deployment's replicas, pod and
//! container security context, arguments, environment (values, Secret keys, downward API
//! fields), ports, probes and volume mounts; the Services that select the pods; the ConfigMaps
//! and the CloudNativePG clusters whose Secrets the pods read.
//!
//! Nothing here knows what the services need: whatever a manifest does not say, the rehearsal
//! does not set either, so a setting missing from `deploy/` fails here as it would in a cluster.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The objects one overlay renders to.
pub struct Rendered {
    /// Every object, as JSON.
    pub objects: Vec<Value>,
}

/// Renders an overlay with the same tool and version CI uses (`kubectl kustomize`).
pub fn render(overlay: &Path) -> Rendered {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl (with its kustomize) is needed to render deploy/: {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        overlay.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("rendered manifests are UTF-8");
    let objects = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc).expect("a rendered object parses")
        })
        .filter(|v| !v.is_null())
        .collect();
    Rendered { objects }
}

/// A string field, or "".
fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A map of strings (labels, selectors, ConfigMap data).
fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A number field.
fn n(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

impl Rendered {
    /// The objects of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| s(o, "/kind") == kind)
    }

    /// The namespace the overlay deploys into (every namespaced object names it).
    pub fn namespace(&self) -> String {
        let ns = self
            .of_kind("Deployment")
            .map(|d| s(d, "/metadata/namespace").to_owned())
            .next()
            .expect("a Deployment");
        assert!(!ns.is_empty(), "the Deployments name no namespace");
        ns
    }

    /// Each Deployment as the rehearsal runs it.
    pub fn workloads(&self) -> Vec<Workload> {
        self.of_kind("Deployment").map(Workload::from).collect()
    }

    /// Each Service.
    pub fn services(&self) -> Vec<ServiceDef> {
        self.of_kind("Service").map(ServiceDef::from).collect()
    }

    /// A ConfigMap's data by its (generated) name.
    pub fn config_map(&self, name: &str) -> BTreeMap<String, String> {
        let map = self
            .of_kind("ConfigMap")
            .find(|c| s(c, "/metadata/name") == name)
            .unwrap_or_else(|| panic!("a volume mounts ConfigMap {name}, which is not rendered"));
        string_map(map.pointer("/data"))
    }

    /// The CloudNativePG clusters, by name: each has a `<name>-app` Secret with a `uri`.
    pub fn database_clusters(&self) -> Vec<String> {
        self.of_kind("Cluster")
            .filter(|c| s(c, "/apiVersion").starts_with("postgresql.cnpg.io/"))
            .map(|c| s(c, "/metadata/name").to_owned())
            .collect()
    }

    /// The Secrets the overlay generates, by the name they are referenced by (kustomize appends
    /// a content hash to a generated Secret's name), with their keys.
    pub fn generated_secrets(&self) -> BTreeMap<String, Vec<String>> {
        self.of_kind("Secret")
            .map(|secret| {
                let name = s(secret, "/metadata/name");
                let base = name
                    .rsplit_once('-')
                    .map(|(base, _hash)| base)
                    .unwrap_or(name);
                let keys = ["/data", "/stringData"]
                    .iter()
                    .filter_map(|p| secret.pointer(p).and_then(Value::as_object))
                    .flat_map(|m| m.keys().cloned())
                    .collect();
                (base.to_owned(), keys)
            })
            .collect()
    }
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone)]
pub enum EnvSource {
    /// A literal `value` (which may refer to earlier variables as `$(NAME)`).
    Value(String),
    /// `valueFrom.secretKeyRef`.
    Secret { name: String, key: String },
    /// `valueFrom.fieldRef` (the downward API), e.g. `metadata.name`.
    Field(String),
}

/// What a volume holds.
#[derive(Debug, Clone)]
pub enum VolumeSource {
    /// A ConfigMap's keys as files (`items` picks and renames some), with their mode.
    ConfigMap {
        name: String,
        items: Option<Vec<(String, String)>>,
        mode: u32,
    },
    /// A Secret's keys as files.
    Secret {
        name: String,
        items: Option<Vec<(String, String)>>,
        mode: u32,
    },
    /// Scratch space, writable by the pod.
    EmptyDir,
}

/// A volume mounted into the container.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The path inside the container.
    pub path: String,
    pub read_only: bool,
    pub source: VolumeSource,
}

/// A gRPC probe: the port (by number) and the health service name ("" = the whole server).
#[derive(Debug, Clone)]
pub struct Probe {
    pub port: u16,
    pub service: String,
    /// How long the kubelet gives it, in all (period × failure threshold).
    pub patience: Duration,
}

/// One Deployment's pod template, reduced to what running its container needs.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub replicas: u32,
    /// The pod template's labels (what Services select).
    pub labels: BTreeMap<String, String>,
    pub run_as_user: u32,
    pub run_as_group: u32,
    /// Added to the process's groups; mounted files belong to it.
    pub fs_group: Option<u32>,
    pub run_as_non_root: bool,
    pub read_only_root: bool,
    pub no_privilege_escalation: bool,
    pub drop_all_capabilities: bool,
    /// `command` (replacing the image's entrypoint) if set.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, EnvSource)>,
    /// Container ports by name.
    pub ports: BTreeMap<String, u16>,
    pub mounts: Vec<Mount>,
    pub startup: Probe,
    pub readiness: Probe,
    pub grace: Duration,
}

impl Workload {
    /// The container port its API is served on: the port named `grpc`.
    pub fn api_port(&self) -> u16 {
        *self
            .ports
            .get("grpc")
            .unwrap_or_else(|| panic!("{} names no container port grpc", self.name))
    }
}

fn probe(container: &Value, which: &str) -> Probe {
    let p = container
        .get(which)
        .unwrap_or_else(|| panic!("the container has no {which}"));
    let port = n(p, "/grpc/port").unwrap_or_else(|| panic!("{which} is not a gRPC probe"));
    Probe {
        port: u16::try_from(port).expect("a port"),
        service: s(p, "/grpc/service").to_owned(),
        patience: Duration::from_secs(
            n(p, "/periodSeconds").unwrap_or(10) * n(p, "/failureThreshold").unwrap_or(3),
        ),
    }
}

fn items(v: &Value) -> Option<Vec<(String, String)>> {
    v.get("items").and_then(Value::as_array).map(|items| {
        items
            .iter()
            .map(|i| (s(i, "/key").to_owned(), s(i, "/path").to_owned()))
            .collect()
    })
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl From<&Value> for Workload {
    fn from(d: &Value) -> Workload {
        let name = s(d, "/metadata/name").to_owned();
        let pod = d.pointer("/spec/template/spec").expect("a pod template");
        let containers = pod
            .get("containers")
            .and_then(Value::as_array)
            .expect("containers");
        assert_eq!(
            containers.len(),
            1,
            "{name}: the rehearsal runs one container per pod"
        );
        let c = &containers[0];
        let pod_sc = pod.get("securityContext").cloned().unwrap_or_default();
        let sc = c.get("securityContext").cloned().unwrap_or_default();
        // The container's setting wins over the pod's, as in Kubernetes.
        let either = |field: &str| sc.get(field).or_else(|| pod_sc.get(field)).cloned();
        let volumes: BTreeMap<String, Value> = pod
            .get("volumes")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .map(|v| (s(v, "/name").to_owned(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mounts = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let volume = &volumes[s(m, "/name")];
                        let source = if let Some(cm) = volume.get("configMap") {
                            VolumeSource::ConfigMap {
                                name: s(cm, "/name").to_owned(),
                                items: items(cm),
                                mode: n(cm, "/defaultMode").unwrap_or(0o644) as u32,
                            }
                        } else if let Some(secret) = volume.get("secret") {
                            VolumeSource::Secret {
                                name: s(secret, "/secretName").to_owned(),
                                items: items(secret),
                                mode: n(secret, "/defaultMode").unwrap_or(0o644) as u32,
                            }
                        } else if volume.get("emptyDir").is_some() {
                            VolumeSource::EmptyDir
                        } else {
                            panic!(
                                "{name}: volume {volume} is of a kind the rehearsal cannot mount"
                            )
                        };
                        Mount {
                            path: s(m, "/mountPath").to_owned(),
                            read_only: m.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
                            source,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let env = c
            .get("env")
            .and_then(Value::as_array)
            .map(|vars| {
                vars.iter()
                    .map(|e| {
                        let var = s(e, "/name").to_owned();
                        let source = if let Some(value) = e.get("value") {
                            EnvSource::Value(value.as_str().unwrap_or_default().to_owned())
                        } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                            EnvSource::Secret {
                                name: s(r, "/name").to_owned(),
                                key: s(r, "/key").to_owned(),
                            }
                        } else if let Some(r) = e.pointer("/valueFrom/fieldRef") {
                            EnvSource::Field(s(r, "/fieldPath").to_owned())
                        } else {
                            panic!("{name}: env {var} has a source the rehearsal cannot give")
                        };
                        (var, source)
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            c.get("envFrom").is_none(),
            "{name}: envFrom is not understood by the rehearsal"
        );
        let id = |field: &str| {
            either(field)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
        };
        Workload {
            replicas: n(d, "/spec/replicas").unwrap_or(1) as u32,
            labels: string_map(d.pointer("/spec/template/metadata/labels")),
            run_as_user: id("runAsUser").unwrap_or_else(|| panic!("{name}: no runAsUser")),
            run_as_group: id("runAsGroup").unwrap_or_else(|| panic!("{name}: no runAsGroup")),
            fs_group: pod_sc
                .get("fsGroup")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            run_as_non_root: either("runAsNonRoot")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            read_only_root: sc
                .get("readOnlyRootFilesystem")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            no_privilege_escalation: sc.get("allowPrivilegeEscalation").and_then(Value::as_bool)
                == Some(false),
            drop_all_capabilities: strings(sc.pointer("/capabilities/drop"))
                .iter()
                .any(|c| c == "ALL"),
            command: strings(c.get("command")),
            args: strings(c.get("args")),
            env,
            ports: c
                .get("ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (
                                s(p, "/name").to_owned(),
                                u16::try_from(n(p, "/containerPort").expect("containerPort"))
                                    .expect("a port"),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            mounts,
            startup: probe(c, "startupProbe"),
            readiness: probe(c, "readinessProbe"),
            grace: Duration::from_secs(n(pod, "/terminationGracePeriodSeconds").unwrap_or(30)),
            name,
        }
    }
}

/// A Service: which pods it selects and which ports it maps to which container ports.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// (service port, target port name or number as text).
    pub ports: Vec<(u16, String)>,
}

impl From<&Value> for ServiceDef {
    fn from(v: &Value) -> ServiceDef {
        ServiceDef {
            name: s(v, "/metadata/name").to_owned(),
            selector: string_map(v.pointer("/spec/selector")),
            ports: v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = u16::try_from(n(p, "/port").expect("port")).expect("port");
                            let target = match p.get("targetPort") {
                                Some(Value::String(name)) => name.clone(),
                                Some(Value::Number(num)) => num.to_string(),
                                _ => port.to_string(),
                            };
                            (port, target)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

impl ServiceDef {
    /// Whether the Service selects the pods of `workload`.
    pub fn selects(&self, workload: &Workload) -> bool {
        !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v))
    }
}

/// Whether `host` names the Service `name` from a pod in `namespace` (`consent`,
/// `consent.consentgate`, `consent.consentgate.svc`, `consent.consentgate.svc.cluster.local`).
pub fn service_answers_to(name: &str, host: &str, namespace: &str) -> bool {
    [
        name.to_owned(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ]
    .iter()
    .any(|h| h == host)
}

/// Expands `$(NAME)` references to variables defined earlier, as the kubelet does (`$$` escapes;
/// an undefined reference is left as written).
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn references_expand_as_the_kubelet_does() {
        let defined = vec![("POD_NAME".to_owned(), "consent-abc".to_owned())];
        assert_eq!(
            expand("k8s.pod.name=$(POD_NAME),x=$(NOPE),$$(POD_NAME)", &defined),
            "k8s.pod.name=consent-abc,x=$(NOPE),$(POD_NAME)"
        );
    }
}
