"""Properties of the rendered Kubernetes manifests (deploy/overlays/dev and prod).

Run: `pytest tests/deploy` (renders with `kubectl kustomize`), or through
scripts/deploy-check.sh. What is asserted, for both overlays unless said:
- the namespace enforces the restricted Pod Security Standard, and every pod and container is
  restricted (non-root numeric UID, read-only root filesystem, no capability, RuntimeDefault
  seccomp, no privilege escalation, no service-account token); only emptyDir is writable;
- every Deployment: gRPC startup/liveness/readiness probes on its gRPC port, requests and
  limits, zone and node topology spread, maxUnavailable 0, a PodDisruptionBudget selecting it,
  an autoscaling/v2 HPA, its own ServiceAccount with automount off;
- the environment is what `consentgate serve` reads (names parsed from src/main.rs, every
  required setting present), files it names are mounted, databases come from the operator's
  `<cluster>-app` Secret;
- NetworkPolicies: a default deny for ingress and egress, and, evaluated as Kubernetes does
  over a model of the pods involved, exactly the architecture's paths open, nothing else;
- no Secret value (generated in dev) appears in a ConfigMap or a plain env value; the policy
  ConfigMap is generated (hash-suffixed) from the shipped default policy;
- prod: replicas 3/3/2, three PostgreSQL instances per database, synchronous replication for
  the consent database; monitoring objects carry deploy/observability/alerts.yaml.
"""
import base64
import ipaddress
import itertools
import re
import tomllib

import pytest
import yaml

from manifests import DEPLOY, OVERLAYS, ROOT, named, of_kind, render

SERVICES = {
    # component: (gRPC port, gRPC service name that reports SERVING)
    "consent": (50051, "consentgate.consent.v1.ConsentService"),
    "profile": (50052, "consentgate.profile.v1.ProfileService"),
    "recommendation": (50053, "consentgate.recommendation.v1.RecommendationService"),
}
METRICS_PORT = 9464
IMAGE_UID = 65532  # USER in the Dockerfile
PROD_REPLICAS = {"consent": 3, "profile": 3, "recommendation": 2}
SECRETS_OUTSIDE = {"consentgate-tokens", "consentgate-service-tokens", "consentgate-signing-key",
                   "consentgate-request-key"}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def prod():
    return render("prod")


@pytest.fixture(scope="module")
def dev():
    return render("dev")


def pod_templates(objects):
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield o, o["spec"]["template"]
        elif o["kind"] == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]
        elif o["kind"] == "Pod":
            yield o, o


def container(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def component(deployment):
    return deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def selects(selector, labels):
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


# ------------------------------------------------------------------ pod security


def test_namespace_enforces_restricted(overlay):
    _, objects = overlay
    namespaces = of_kind(objects, "Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == ["consentgate"]
    labels = namespaces[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert all(o["metadata"].get("namespace") == "consentgate" for o in namespaced)


def test_every_pod_and_container_is_restricted(overlay):
    _, objects = overlay
    templates = list(pod_templates(objects))
    assert len(templates) == 3
    for owner, template in templates:
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        spec = template["spec"]
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert psc.get("runAsUser") == IMAGE_UID, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{where}: {flag}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert not any("hostPath" in v for v in volumes.values()), where
        for c in spec.get("initContainers", []) + spec["containers"]:
            csc = c.get("securityContext", {})
            at = f"{where} container {c['name']}"
            assert csc.get("runAsNonRoot") is True, at
            assert isinstance(csc.get("runAsUser"), int) and csc["runAsUser"] > 0, at
            assert csc.get("readOnlyRootFilesystem") is True, at
            assert csc.get("allowPrivilegeEscalation") is False, at
            assert not csc.get("privileged"), at
            assert csc.get("capabilities", {}).get("drop") == ["ALL"], at
            assert not csc.get("capabilities", {}).get("add"), at
            assert csc.get("seccompProfile", {}).get("type") == "RuntimeDefault", at
            assert not any(p.get("hostPort") for p in c.get("ports", [])), at
            for m in c.get("volumeMounts", []):
                volume = volumes[m["name"]]
                if not m.get("readOnly"):
                    # The only writable places: scratch space that dies with the pod.
                    assert "emptyDir" in volume, f"{at}: {m['mountPath']} is writable"
                    assert volume["emptyDir"].get("sizeLimit"), f"{at}: unbounded emptyDir"


# ------------------------------------------------------------------ deployments


def test_each_service_has_a_complete_deployment(overlay):
    _, objects = overlay
    deployments = of_kind(objects, "Deployment")
    assert sorted(component(d) for d in deployments) == sorted(SERVICES)
    for d in deployments:
        name = d["metadata"]["name"]
        comp = component(d)
        grpc_port, health_name = SERVICES[comp]
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert selects(d["spec"]["selector"], pod_labels), name
        c = container(d)
        assert c["args"][:2] == ["serve", comp], name
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        # Under mTLS, kubelet probes a plaintext health-only port (it cannot present a
        # certificate); otherwise the gRPC port itself.
        probe_listen = env_of(c).get("CONSENTGATE_PROBE_LISTEN", {}).get("value")
        probe_port = int(probe_listen.rsplit(":", 1)[1]) if probe_listen else grpc_port
        expected_ports = {"grpc": grpc_port, "metrics": METRICS_PORT}
        if probe_listen:
            expected_ports["probes"] = probe_port
        assert ports == expected_ports, name

        # Probes: native gRPC, on the probe port; readiness asks for the service by name (it turns
        # NOT_SERVING while draining), liveness and startup for the server as a whole.
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in c, f"{name}: no {probe}"
            assert c[probe]["grpc"]["port"] == probe_port, f"{name}: {probe}"
            assert set(c[probe]) & {"httpGet", "tcpSocket", "exec"} == set(), f"{name}: {probe}"
        assert c["readinessProbe"]["grpc"].get("service") == health_name, name
        assert c["livenessProbe"]["grpc"].get("service", "") == "", name

        resources = c["resources"]
        for kind in ("requests", "limits"):
            assert set(resources.get(kind, {})) >= {"cpu", "memory"}, f"{name}: {kind}"

        strategy = d["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        assert strategy["rollingUpdate"]["maxSurge"] not in (0, "0%"), name

        spread = d["spec"]["template"]["spec"]["topologySpreadConstraints"]
        keys = {t["topologyKey"] for t in spread}
        assert keys >= {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        for t in spread:
            assert selects(t["labelSelector"], pod_labels), f"{name}: spread selects other pods"

        pdbs = [p for p in of_kind(objects, "PodDisruptionBudget")
                if selects(p["spec"]["selector"], pod_labels)]
        assert len(pdbs) == 1, f"{name}: {len(pdbs)} PodDisruptionBudgets"
        pdb = pdbs[0]["spec"]
        # A budget that allows no eviction at all would block node drains forever.
        if "maxUnavailable" in pdb:
            assert pdb["maxUnavailable"] not in (0, "0%"), name
        else:
            assert pdb["minAvailable"] < d["spec"]["replicas"], name

        hpas = [h for h in of_kind(objects, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}]
        assert len(hpas) == 1, f"{name}: {len(hpas)} HPAs"
        assert hpas[0]["apiVersion"] == "autoscaling/v2", name
        assert hpas[0]["spec"]["minReplicas"] == d["spec"]["replicas"], name
        assert hpas[0]["spec"]["maxReplicas"] > hpas[0]["spec"]["minReplicas"], name

        sa_name = d["spec"]["template"]["spec"]["serviceAccountName"]
        assert sa_name == comp, name
        assert named(objects, "ServiceAccount", sa_name).get("automountServiceAccountToken") is False


def test_services_split_grpc_and_metrics(overlay):
    _, objects = overlay
    for comp, (grpc_port, _) in SERVICES.items():
        grpc = named(objects, "Service", comp)
        assert [(p["name"], p["port"], p["targetPort"]) for p in grpc["spec"]["ports"]] == [
            ("grpc", grpc_port, "grpc")]
        metrics = named(objects, "Service", f"{comp}-metrics")
        assert [(p["name"], p["port"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [
            ("metrics", METRICS_PORT, "metrics")]
        for service in (grpc, metrics):
            assert service["spec"]["selector"] == {
                "app.kubernetes.io/name": "consentgate", "app.kubernetes.io/component": comp}


def serve_settings():
    """Per `serve` subcommand: every env variable it reads, and those without a default."""
    source = (ROOT / "src" / "main.rs").read_text()
    structs = dict(re.findall(r"struct (\w+)Args \{(.*?)\n\}", source, re.S))
    fields = {}
    for struct, body in structs.items():
        fields[struct] = re.findall(r"#\[arg\(((?:[^()]|\([^()]*\))*)\)\]\s*(?:///.*\n\s*)*(\w+): ([^,\n]+),", body)
    settings = {}
    for service in SERVICES:
        struct = service.capitalize()
        assert struct in structs, f"no {struct}Args in src/main.rs"
        names, required = set(), set()
        for attr, _, ty in fields[struct] + fields["Metrics"] + fields["Access"]:
            m = re.search(r'env = "(\w+)"', attr)
            if not m:
                continue
            names.add(m.group(1))
            if not ty.startswith("Option<") and ty != "bool" and "default_value" not in attr:
                required.add(m.group(1))
        settings[service] = (names | {"CONSENTGATE_LOG_JSON"}, required)
    assert settings["consent"][1] >= {"CONSENTGATE_DATABASE_URL", "CONSENTGATE_KEY_FILE"}, settings
    return settings


def test_environment_is_what_serve_reads(overlay):
    _, objects = overlay
    settings = serve_settings()
    for d in of_kind(objects, "Deployment"):
        comp = component(d)
        c = container(d)
        env = env_of(c)
        known, required = settings[comp]
        ours = {n for n in env if n.startswith("CONSENTGATE_")}
        assert ours <= known, f"{comp}: the binary does not read {sorted(ours - known)}"
        assert required <= set(env), f"{comp}: missing {sorted(required - set(env))}"

        # The consent service never creates a signing key in a pod: a missing Secret fails.
        if comp == "consent":
            assert env["CONSENTGATE_KEY_FILE_CREATE"].get("value") == "false", comp

        # Files the binary reads are mounted from the right volumes.
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        for var in ("CONSENTGATE_POLICY", "CONSENTGATE_TOKENS_FILE", "CONSENTGATE_KEY_FILE"):
            if var not in env:
                continue
            path = env[var]["value"]
            directory, _, file = path.rpartition("/")
            assert directory in mounts, f"{comp}: {path} is not on a mounted volume"
            assert mounts[directory].get("readOnly") is True, f"{comp}: {path} is writable"
            volume = volumes[mounts[directory]["name"]]
            if var == "CONSENTGATE_POLICY":
                cm = volume["configMap"]["name"]
                assert file in named(objects, "ConfigMap", cm)["data"], f"{comp}: {path}"
            else:
                items = volume["secret"].get("items")
                assert not volume["secret"].get("optional"), f"{comp}: {var} must not be optional"
                assert items and file in [i["path"] for i in items], f"{comp}: {path}"

        # The database comes from the operator's Secret for this service's own cluster.
        db = env["CONSENTGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert db == {"name": f"{comp}-db-app", "key": "uri"}, comp
        named(objects, "Cluster", f"{comp}-db")

        # Addresses of the other services are their Services' gRPC ports.
        for var, target in (("CONSENTGATE_CONSENT_URL", "consent"),
                            ("CONSENTGATE_PROFILE_URL", "profile"),
                            ("CONSENTGATE_RECOMMENDATION_URL", "recommendation")):
            if var in env:
                scheme = "https" if "CONSENTGATE_TLS_DIR" in env else "http"
                assert env[var]["value"] == f"{scheme}://{target}:{SERVICES[target][0]}", comp
        assert env["CONSENTGATE_LISTEN"]["value"].endswith(f":{SERVICES[comp][0]}")
        assert env["CONSENTGATE_METRICS_LISTEN"]["value"].endswith(f":{METRICS_PORT}")
        # Tokens are never plain values.
        for var in ("CONSENTGATE_CONSENT_TOKEN", "CONSENTGATE_SERVICE_TOKEN"):
            if var in env:
                assert "value" not in env[var] and "secretKeyRef" in env[var]["valueFrom"], comp
    # Erasure cascade: the profile service knows where the recommendation service is.
    profile = env_of(container(named(objects, "Deployment", "profile")))
    assert "CONSENTGATE_RECOMMENDATION_URL" in profile


# ------------------------------------------------------------------ config and secrets


def test_policy_configmap_is_generated_from_the_shipped_policy(overlay):
    _, objects = overlay
    maps = [m for m in of_kind(objects, "ConfigMap") if m["metadata"]["name"].startswith("consentgate-policy")]
    assert len(maps) == 1
    name = maps[0]["metadata"]["name"]
    assert re.fullmatch(r"consentgate-policy-[a-z0-9]{10}", name), f"{name}: no content hash"
    assert maps[0]["data"]["policy.toml"] == (ROOT / "policy" / "default.toml").read_text()
    for d in of_kind(objects, "Deployment"):
        cms = [v["configMap"]["name"] for v in d["spec"]["template"]["spec"]["volumes"]
               if "configMap" in v and v["configMap"]["name"].startswith("consentgate-policy")]
        assert cms == [name], d["metadata"]["name"]


def secret_references(objects):
    refs = set()
    for _, template in pod_templates(objects):
        for v in template["spec"].get("volumes", []):
            if "secret" in v:
                refs.add(v["secret"]["secretName"])
        for c in template["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add(ref["name"])
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    refs.add(e["secretRef"]["name"])
    return refs


def test_prod_references_secrets_by_name_and_contains_none(prod):
    assert of_kind(prod, "Secret") == []
    operator_made = {f"{c}-db-app" for c in SERVICES}
    assert secret_references(prod) == SECRETS_OUTSIDE | operator_made


def test_dev_secrets_are_consistent_and_never_in_a_configmap(dev):
    secrets = {s["metadata"]["name"].rsplit("-", 1)[0]: s for s in of_kind(dev, "Secret")}
    assert set(secrets) == SECRETS_OUTSIDE
    for s in secrets.values():
        assert re.fullmatch(r".+-[a-z0-9]{10}", s["metadata"]["name"]), "generated Secrets carry a hash"
        assert "stringData" not in s
    data = {name: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
            for name, s in secrets.items()}
    tokens = tomllib.loads(data["consentgate-tokens"]["tokens.toml"])
    policy = tomllib.loads((ROOT / "policy" / "default.toml").read_text())
    assert set(tokens) == set(policy["callers"]), "one token per caller of the policy"
    assert len(set(tokens.values())) == len(tokens), "tokens are distinct"
    for caller in ("profile-service", "recommendation-service"):
        assert data["consentgate-service-tokens"][caller] == tokens[caller], caller
    assert re.fullmatch(r"[0-9a-f]{64}\n?", data["consentgate-signing-key"]["signing.key"])
    assert re.fullmatch(r"[0-9a-f]{64}\n?", data["consentgate-request-key"]["request.key"])
    assert all("insecure-dev" in t for t in tokens.values()), "dev tokens say they are fake"
    assert secret_references(dev) == {s["metadata"]["name"] for s in secrets.values()} | {
        f"{c}-db-app" for c in SERVICES}

    values = set(tokens.values()) | {data["consentgate-signing-key"]["signing.key"].strip()}
    values |= {v.strip() for d in data.values() for v in d.values()}
    assert all(len(v) >= 16 for v in values)
    config = [v for m in of_kind(dev, "ConfigMap") for v in (m.get("data") or {}).values()]
    plain_env = [e.get("value", "") for _, t in pod_templates(dev) for c in t["spec"]["containers"]
                 for e in c.get("env", [])]
    for value in values:
        assert not any(value in text for text in config), "a Secret value is in a ConfigMap"
        assert not any(value in text for text in plain_env), "a Secret value is a plain env value"


# ------------------------------------------------------------------ network policies

# The pods that talk to or in the namespace, as (namespace, namespace labels, pod labels, IP).
NS = "consentgate"


def model(objects):
    pods = {}
    for d in of_kind(objects, "Deployment"):
        pods[component(d)] = (NS, {"kubernetes.io/metadata.name": NS},
                              d["spec"]["template"]["metadata"]["labels"], None)
    for c in of_kind(objects, "Cluster"):
        for i in (1, 2):  # two instances of each, to see instance-to-instance traffic
            pods[f"{c['metadata']['name']}-{i}"] = (
                NS, {"kubernetes.io/metadata.name": NS},
                {"cnpg.io/cluster": c["metadata"]["name"], "cnpg.io/podRole": "instance"}, None)
    pods.update({
        "client": ("shop", {"kubernetes.io/metadata.name": "shop", "consentgate.io/client": "true"},
                   {"app": "shop"}, None),
        "stranger": ("other", {"kubernetes.io/metadata.name": "other"}, {"app": "other"}, None),
        "prometheus": ("monitoring", {"kubernetes.io/metadata.name": "monitoring"},
                       {"app.kubernetes.io/name": "prometheus"}, None),
        "cnpg-operator": ("cnpg-system", {"kubernetes.io/metadata.name": "cnpg-system"},
                          {"app.kubernetes.io/name": "cloudnative-pg"}, None),
        "kube-dns": ("kube-system", {"kubernetes.io/metadata.name": "kube-system"},
                     {"k8s-app": "kube-dns"}, None),
        "kube-apiserver": (None, {}, {}, "10.0.0.1"),
        "internet": (None, {}, {}, "203.0.113.7"),
    })
    return pods


PORTS = [(p, "TCP") for p in (53, 80, 443, 5432, 6443, 8000, 8080, 9187, METRICS_PORT, 50051, 50052, 50053)] + [(53, "UDP")]


def peer_matches(peer, policy_ns, pod):
    ns, ns_labels, labels, ip = pod
    if "ipBlock" in peer:
        if ip is None:  # the model keeps ipBlock for addresses outside the cluster
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", []))
    if ns is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif ns != policy_ns:
        return False
    return selects(peer.get("podSelector", {}), labels)


def port_matches(rule, port, protocol):
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if p.get("endPort"):
            if p["port"] <= port <= p["endPort"]:
                return True
        elif p["port"] == port:
            return True
    return False


def allowed(policies, pods, src, dst, port, protocol):
    def side(direction, subject, other, peers_key):
        ns, _, labels, _ = pods[subject]
        if ns != NS:
            return True  # outside the namespace these policies do not apply
        applying = [p for p in policies
                    if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)]
        if not applying:
            return True
        for p in applying:
            for rule in p["spec"].get(direction.lower(), []):
                peers = rule.get(peers_key)
                if (not peers or any(peer_matches(peer, NS, pods[other]) for peer in peers)) \
                        and port_matches(rule, port, protocol):
                    return True
        return False

    return side("Egress", src, dst, "to") and side("Ingress", dst, src, "from")


def expected_paths(pods):
    paths = set()
    ours = [n for n, p in pods.items() if p[0] == NS]
    for name in ours:
        paths |= {(name, "kube-dns", 53, "UDP"), (name, "kube-dns", 53, "TCP")}
    for comp, (port, _) in SERVICES.items():
        paths.add(("client", comp, port, "TCP"))
        paths.add(("prometheus", comp, METRICS_PORT, "TCP"))
        for i in (1, 2):
            db = f"{comp}-db-{i}"
            paths.add((comp, db, 5432, "TCP"))
            paths.add(("prometheus", db, 9187, "TCP"))
            paths |= {("cnpg-operator", db, p, "TCP") for p in (5432, 8000)}
            paths |= {(db, f"{comp}-db-{j}", p, "TCP") for j in (1, 2) if j != i for p in (5432, 8000)}
            # The instance manager talks to the Kubernetes API; its address is not known here,
            # so the base opens 443/6443 to any address (docs/operations.md says to narrow it).
            paths |= {(db, ext, p, "TCP") for ext in ("kube-apiserver", "internet") for p in (443, 6443)}
    paths |= {
        ("profile", "consent", 50051, "TCP"),
        ("recommendation", "consent", 50051, "TCP"),
        ("recommendation", "profile", 50052, "TCP"),
        ("profile", "recommendation", 50053, "TCP"),  # the erasure cascade
    }
    return paths


def test_network_policies_deny_by_default(overlay):
    _, objects = overlay
    policies = of_kind(objects, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}
            and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert len(deny) == 1, "no default-deny policy (empty podSelector, both types, no rules)"
    for p in policies:
        for direction, key in (("ingress", "from"), ("egress", "to")):
            for rule in p["spec"].get(direction, []):
                assert rule.get(key), f"{p['metadata']['name']}: a {direction} rule open to everyone"
                assert rule.get("ports"), f"{p['metadata']['name']}: a {direction} rule on every port"


def test_network_policies_open_exactly_the_architecture(overlay):
    _, objects = overlay
    policies = of_kind(objects, "NetworkPolicy")
    pods = model(objects)
    expected = expected_paths(pods)
    actual = set()
    for src, dst in itertools.permutations(pods, 2):
        if NS not in (pods[src][0], pods[dst][0]) or pods[src][0] is None:
            continue  # not ours to judge, or a caller from outside the cluster (none expected)
        for port, protocol in PORTS:
            if allowed(policies, pods, src, dst, port, protocol):
                actual.add((src, dst, port, protocol))
    assert (sorted(expected - actual), sorted(actual - expected)) == ([], []), \
        "(paths of the architecture that are closed, paths open that it does not have)"


# ------------------------------------------------------------------ overlays


def test_dev_runs_one_of_each(dev):
    for d in of_kind(dev, "Deployment"):
        assert d["spec"]["replicas"] == 1, d["metadata"]["name"]
    for c in of_kind(dev, "Cluster"):
        assert c["spec"]["instances"] == 1, c["metadata"]["name"]


def test_prod_replicas_and_databases(prod):
    replicas = {component(d): d["spec"]["replicas"] for d in of_kind(prod, "Deployment")}
    assert replicas == PROD_REPLICAS
    clusters = {c["metadata"]["name"]: c["spec"] for c in of_kind(prod, "Cluster")}
    assert set(clusters) == {f"{c}-db" for c in SERVICES}
    for name, spec in clusters.items():
        assert spec["instances"] == 3, name
        assert spec["affinity"]["podAntiAffinityType"] == "required", name
    sync = clusters["consent-db"]["postgresql"]["synchronous"]
    assert sync["method"] in ("any", "first") and sync["number"] >= 1
    assert sync["number"] < clusters["consent-db"]["instances"]
    assert sync.get("dataDurability", "required") == "required"


def test_prod_monitoring_carries_the_alert_rules(prod):
    rule = named(prod, "PrometheusRule", "consentgate")
    alerts = yaml.safe_load((DEPLOY / "observability" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    monitor = named(prod, "ServiceMonitor", "consentgate")
    scraped = [s for s in of_kind(prod, "Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in scraped) == sorted(f"{c}-metrics" for c in SERVICES)
    for s in scraped:
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in s["spec"]["ports"]]


# ------------------------------------------------------------------ mutual TLS (prod-mtls)


@pytest.fixture(scope="module")
def mtls():
    return render("prod-mtls")


def test_mtls_gives_each_service_a_certificate_of_its_own_identity(mtls):
    """Each Deployment mounts the Secret of a Certificate whose SPIFFE ID names the Deployment's
    service account, usable at both ends (server and client auth), for the Service's names."""
    certificates = {c["spec"]["secretName"]: c for c in of_kind(mtls, "Certificate")}
    issuers = {i["metadata"]["name"] for i in of_kind(mtls, "Issuer")}
    for deployment in of_kind(mtls, "Deployment"):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]["template"]["spec"]
        tls_volumes = [v for v in spec["volumes"] if v["name"] == "tls"]
        assert len(tls_volumes) == 1, name
        secret = tls_volumes[0]["secret"]["secretName"]
        assert secret in certificates, f"{name} mounts {secret}, which no Certificate issues"
        cert = certificates[secret]["spec"]
        namespace = deployment["metadata"]["namespace"]
        assert cert["uris"] == [
            f"spiffe://cluster.local/ns/{namespace}/sa/{spec['serviceAccountName']}"
        ], name
        assert {"server auth", "client auth"} <= set(cert["usages"]), name
        assert name in cert["dnsNames"], name
        assert cert["issuerRef"]["name"] in issuers, name
        assert {i["key"] for i in tls_volumes[0]["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}
        env = env_of(container(deployment))
        assert env["CONSENTGATE_TLS_DIR"]["value"] == next(
            m["mountPath"] for m in container(deployment)["volumeMounts"] if m["name"] == "tls"
        ), name


def test_mtls_identities_map_the_services_to_their_certificates(mtls):
    """The identities file names exactly the certificates the calling services present, and those
    services send no token any more."""
    identities_map = next(
        c for c in of_kind(mtls, "ConfigMap") if c["metadata"]["name"].startswith("consentgate-identities")
    )
    identities = tomllib.loads(identities_map["data"]["identities.toml"])
    by_secret = {c["spec"]["secretName"]: c["spec"]["uris"][0] for c in of_kind(mtls, "Certificate")}
    assert identities == {
        "profile-service": by_secret["profile-tls"],
        "recommendation-service": by_secret["recommendation-tls"],
    }
    for name, token in (("profile", "CONSENTGATE_CONSENT_TOKEN"), ("recommendation", "CONSENTGATE_SERVICE_TOKEN")):
        env = env_of(container(named(mtls, "Deployment", name)))
        assert token not in env, f"{name} still sends a token"
        urls = [e["value"] for k, e in env.items() if k.endswith("_URL") and k != "CONSENTGATE_DATABASE_URL"]
        assert urls and all(u.startswith("https://") for u in urls), f"{name}: {urls}"


def test_mtls_probes_use_the_plaintext_health_port(mtls):
    """kubelet's gRPC probe cannot present a certificate: every probe targets the probe port."""
    for deployment in of_kind(mtls, "Deployment"):
        c = container(deployment)
        probe_port = int(env_of(c)["CONSENTGATE_PROBE_LISTEN"]["value"].rsplit(":", 1)[1])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[kind]["grpc"]["port"] == probe_port, f"{deployment['metadata']['name']} {kind}"
