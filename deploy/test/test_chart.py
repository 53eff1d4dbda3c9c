#!/usr/bin/env python3
"""Deploy checks: the Helm chart, the systemd units and the example configurations.

Run by scripts/test-deploy (which makes the venv with helm-python-sdk and kubernetes-validate);
by hand: `.tools/deploy-venv/bin/python deploy/test/test_chart.py` from the repository root.

What it proves, for every scenario (values) in SCENARIOS:
- `helm lint --strict` is clean for Kubernetes 1.29 and 1.33;
- every rendered object validates strictly against Kubernetes 1.29 and 1.33 (kubernetes-validate),
  and kinds Kubernetes does not define (Traefik, Gateway API, Prometheus Operator, cert-manager)
  against our own JSON Schemas in deploy/test/schemas/; a kind with neither fails;
- the per-pod Services and routes match bridge.maxReplicas (traefik, istio) or do not exist
  (builtin); Services, the StatefulSet, probes and the rendered bridge.toml agree on names, labels
  and ports; no secret value is in a ConfigMap; every pod runs non-root, read-only, without
  capabilities, under seccomp; the bridges' grace period outlasts their drain; NetworkPolicies
  let only the API (and the migration and backup Jobs) reach PostgreSQL and only the API Redis;
- `bamf-bridge --check` accepts every rendered bridge.toml (the binary must be built);
- the generated CA is a CA whose key is PKCS#8 and matches the certificate (openssl);
- values.schema.json refuses unknown keys and bad values; every value is in docs/deploy.md.
And outside the chart: `systemd-analyze verify` on the three units (ExecStart pointed at stub
executables in a temporary directory: verify only needs them to exist and be executable), their
hardening directives, and the example agent.toml / api.env.

Exits non-zero with the failures listed; never skips: a missing tool is a failure.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate as kv
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/bamf"
SCHEMAS = ROOT / "deploy/test/schemas"
UNITS = ROOT / "deploy/systemd"
DOCS = ROOT / "docs/deploy.md"
KUBE_VERSIONS = ["1.29", "1.33"]
RELEASE = "bamf"
NAMESPACE = "bamf-test"

# Distinctive secret values: each must appear only in Secrets, never in a ConfigMap (or any
# other kind of object).
SECRET = {
    "admin": "AdminPw7f3a9c1e5d",
    "bridge_token": "BridgeJoinTok2b8e4d6f0a",
    "agent_token": "AgentJoinTok9c1d3e5f7b",
    "pg_password": "PgPw4e6a8c0b2d",
    "redis_password": "RedisPw1a3c5e7f9b",
    "ca_encryption": base64.b64encode(b"BAMF-test-CA-encryption-key-32by").decode(),
    "external_db_url": "postgres://bamf:ExtDbPw5d7f9b1c3e@db.internal:5432/bamf",
    "external_redis_url": "redis://:ExtRedisPw8a0c2e4d6f@redis.internal:6379/0",
}
assert len(base64.b64decode(SECRET["ca_encryption"])) == 32

BASE = {
    "apiHost": "bamf.test.example",
    "tunnelDomain": "tunnel.test.example",
    "admin": {"password": SECRET["admin"]},
    "bridge": {"joinToken": SECRET["bridge_token"]},
    "ca": {"encryptionKey": SECRET["ca_encryption"]},
}

AGENT = {
    "enabled": True,
    "joinToken": SECRET["agent_token"],
    "targets": [
        {"name": "orders-db", "kind": "postgres", "address": "orders-db:5432",
         "labels": {"env": "test", "team": "orders"}},
        {"name": "jump", "kind": "ssh", "address": "jump.internal:22"},
    ],
}


def merge(*layers: dict) -> dict:
    """Deep-merges values the way `helm -f a -f b --set ...` does (maps merge, lists replace)."""
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
    return out


def profile(name: str) -> dict:
    return yaml.safe_load((CHART / f"values-{name}.yaml").read_text())


SCENARIOS: dict[str, dict] = {
    # Built-in front door, bundled stores, everything optional switched on.
    "builtin-bundled": merge(BASE, {
        "postgresql": {"bundled": {"password": SECRET["pg_password"]},
                       "backup": {"enabled": True, "retentionDays": 5}},
        "redis": {"bundled": {"password": SECRET["redis_password"], "persistence": {"enabled": True}}},
        "agent": AGENT,
        "metrics": {"serviceMonitor": {"enabled": True}},
        "bridge": {"preStopSleepSeconds": 5, "shutdownGraceSeconds": 90, "threads": 2,
                   "routes": [{"host": "*.apps.test.example", "backend": "10.0.0.5:443"}]},
    }),
    # Built-in front door, external stores and every secret from existing Secrets.
    "builtin-external": merge(BASE, {
        "admin": {"password": "", "existingSecret": "ops-admin"},
        "bridge": {"joinToken": "", "existingSecret": "ops-bridge", "existingSecretKey": "token",
                   "autoscaling": {"enabled": True}},
        "ca": {"provider": "existing", "existingSecret": "ops-ca", "encryptionKey": "",
               "encryptionKeyExistingSecret": "ops-ca-key"},
        "postgresql": {"bundled": {"enabled": False},
                       "external": {"existingSecret": "ops-db", "existingSecretKey": "url"},
                       "backup": {"enabled": True, "persistence": {"existingClaim": "ops-backups"}}},
        "redis": {"bundled": {"enabled": False}, "external": {"existingSecret": "ops-redis"}},
        "gateway": {"frontDoor": {"externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["10.0.0.0/8"]}},
    }),
    # External stores given as URLs in the values (chart Secrets, and a hook Secret).
    "builtin-external-url": merge(BASE, {
        "postgresql": {"bundled": {"enabled": False}, "external": {"url": SECRET["external_db_url"]}},
        "redis": {"bundled": {"enabled": False}, "external": {"url": SECRET["external_redis_url"]}},
        "agent": merge(AGENT, {"persistence": {"enabled": False}}),
    }),
    "traefik": merge(BASE, {
        "gateway": {"provider": "traefik"},
        "bridge": {"maxReplicas": 7, "replicas": 3},
        "postgresql": {"bundled": {"password": SECRET["pg_password"]}},
        "redis": {"bundled": {"password": SECRET["redis_password"]}},
    }),
    "istio": merge(BASE, {
        "gateway": {"provider": "istio"},
        "bridge": {"maxReplicas": 5, "replicas": 2},
        "ca": {"provider": "cert-manager"},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "postgresql": {"bundled": {"password": SECRET["pg_password"]}},
        "redis": {"bundled": {"password": SECRET["redis_password"]}},
    }),
    "istio-existing-gateway": merge(BASE, {
        "gateway": {"provider": "istio", "istio": {"createGateway": False, "gatewayName": "shared",
                                                    "gatewayNamespace": "istio-ingress", "routeApi": False}},
        "bridge": {"maxReplicas": 4},
    }),
    "profile-dev": merge(profile("dev"), {
        "admin": {"password": SECRET["admin"]}, "bridge": {"joinToken": SECRET["bridge_token"]},
        "postgresql": {"bundled": {"password": SECRET["pg_password"]}},
        "redis": {"bundled": {"password": SECRET["redis_password"]}},
    }),
    "profile-staging": merge(profile("staging"), BASE, {"admin": {"password": ""}}),
    "profile-production": merge(profile("production"), BASE, {
        "admin": {"password": ""}, "bridge": {"joinToken": ""}, "ca": {"encryptionKey": ""},
    }),
}

# Scenario -> expected gateway provider, for the per-pod assertions.
PER_POD_KINDS = {"traefik": "IngressRouteTCP", "istio": "TLSRoute"}


# --------------------------------------------------------------------------------------------
# A tiny runner: every check runs, failures are collected, the summary line is the last line.

RESULTS: list[tuple[str, str | None]] = []
REPORT: list[str] = []


def check(name: str, fn, *args) -> None:
    try:
        fn(*args)
        RESULTS.append((name, None))
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        if not isinstance(e, AssertionError):
            detail += "\n" + "".join(traceback.format_tb(e.__traceback__)[-3:])
        RESULTS.append((name, detail))


class Fail(AssertionError):
    pass


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise Fail(msg)


# --------------------------------------------------------------------------------------------
# Rendering and validation.

def render(values: dict) -> tuple[list[dict], str]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, revision=3, is_install=True)
    docs, notes = [], ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                docs.append(doc)
    return docs, notes


def lint(values: dict) -> None:
    for v in KUBE_VERSIONS:
        rep = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{v}.0")
        bad = [m for m in rep.get("messages", []) if m.get("severity", 0) >= 2]
        expect(not rep.get("errors") and not bad,
               f"helm lint --strict (k8s {v}): errors={rep.get('errors')} messages={bad}")


def own_schema(doc: dict):
    group_version = doc.get("apiVersion", "").replace("/", "_")
    path = SCHEMAS / f"{group_version}_{doc.get('kind')}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def validate(doc: dict, version: str) -> str:
    """Validates one object; returns what validated it. Raises on any problem, including a
    kind that has neither a Kubernetes schema nor one of ours."""
    where = f"{doc.get('kind')}/{doc['metadata'].get('name')} (k8s {version})"
    try:
        kv.validate(doc, version, strict=True)
        return "kubernetes"
    except SchemaNotFoundError:
        schema = own_schema(doc)
        if schema is None:
            raise Fail(f"{where}: {doc.get('apiVersion')} {doc.get('kind')} has no Kubernetes schema and "
                       f"no schema under {SCHEMAS.relative_to(ROOT)}: add one, never skip")
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            raise Fail(f"{where}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))
        return "own schema"
    except ValidationError as e:
        raise Fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")


# --------------------------------------------------------------------------------------------
# Helpers over rendered objects.

def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, name):
    found = [d for d in docs if d.get("kind") == kind and d["metadata"].get("name") == name]
    expect(len(found) == 1, f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def pod_specs(docs):
    """(object, pod template metadata, pod spec) of every workload."""
    for d in docs:
        k = d.get("kind")
        if k in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            t = d["spec"]["template"]
            yield d, t.get("metadata", {}), t["spec"]
        elif k == "CronJob":
            t = d["spec"]["jobTemplate"]["spec"]["template"]
            yield d, t.get("metadata", {}), t["spec"]


def selector_matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes LabelSelector (matchLabels + matchExpressions) against labels. An empty
    selector matches everything."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def container_port(containers, ref):
    """Resolves a port reference (name or number) against containers' ports."""
    for c in containers:
        for p in c.get("ports", []):
            if ref == p.get("name") or ref == p["containerPort"]:
                return p["containerPort"]
    raise Fail(f"port {ref!r} is not a container port of {[c['name'] for c in containers]}")


def addr_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    expect(m is not None, f"duration {text!r} is not N(ms|s|m|h)")
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def workload_for_service(docs, svc):
    sel = dict(svc["spec"].get("selector") or {})
    pod_name = sel.pop("statefulset.kubernetes.io/pod-name", None)
    matches = [(d, meta, spec) for d, meta, spec in pod_specs(docs)
               if d["kind"] in ("Deployment", "StatefulSet") and selector_matches({"matchLabels": sel}, meta.get("labels", {}))]
    expect(len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} workloads, expected 1")
    d = matches[0][0]
    if pod_name is not None:
        expect(d["kind"] == "StatefulSet" and re.fullmatch(re.escape(d["metadata"]["name"]) + r"-\d+", pod_name),
               f"Service {svc['metadata']['name']}: pod-name {pod_name} is not a pod of {d['metadata']['name']}")
    return matches[0]


# --------------------------------------------------------------------------------------------
# The assertions of one scenario.

def check_services_and_workloads(docs, values):
    """Every Service selects exactly one workload and every targetPort is one of its ports;
    every workload's selector matches its own pod labels."""
    for d, meta, spec in pod_specs(docs):
        if d["kind"] in ("Deployment", "StatefulSet"):
            expect(selector_matches(d["spec"]["selector"], meta.get("labels", {})),
                   f"{d['kind']} {d['metadata']['name']}: selector does not match its pod labels")
    for svc in of_kind(docs, "Service"):
        _, _, spec = workload_for_service(docs, svc)
        for p in svc["spec"]["ports"]:
            container_port(spec["containers"], p.get("targetPort", p["port"]))


def check_bridge(docs, values, bridge_tomls):
    fullname = RELEASE
    sts = one(docs, "StatefulSet", f"{fullname}-bridge")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    cm = one(docs, "ConfigMap", f"{fullname}-bridge")
    text = cm["data"]["bridge.toml"]
    conf = tomllib.loads(text)
    bridge_tomls.append(text)

    expect(spec["podManagementPolicy"] == "Parallel", "bridge podManagementPolicy must be Parallel")
    headless = one(docs, "Service", spec["serviceName"])
    expect(headless["spec"].get("clusterIP") == "None", "the StatefulSet's serviceName must be a headless Service")
    expect(headless["spec"].get("publishNotReadyAddresses") is True, "headless Service must publish not-ready bridges")

    # Ports: TOML listen addresses == container ports == Service targets == probes.
    front = container_port([c], "frontdoor")
    peer = container_port([c], "peer")
    metrics = container_port([c], "metrics")
    expect(addr_port(conf["listen"]) == front == 8443, f"listen {conf['listen']} vs container port {front}")
    expect(addr_port(conf["peer_listen"]) == peer == 8444, f"peer_listen {conf['peer_listen']} vs {peer}")
    expect(addr_port(conf["metrics"]) == metrics == 9090, f"metrics {conf['metrics']} vs {metrics}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        expect(probe in c, f"bridge has no {probe}")
        expect(container_port([c], c[probe]["httpGet"]["port"]) == metrics, f"bridge {probe} is not on the metrics port")
    expect(c["readinessProbe"]["httpGet"]["path"] == "/ready", "bridge readiness must be /ready (false while draining)")
    for p in headless["spec"]["ports"]:
        expect(container_port([c], p["targetPort"]) == p["port"], f"headless port {p['name']} maps {p['port']} elsewhere")

    # Identity and peers.
    expect(conf["tunnel_domain"] == values["tunnelDomain"], "bridge tunnel_domain != tunnelDomain")
    expect(conf["peer_address"] == f"{sts['metadata']['name']}-{{n}}.{headless['metadata']['name']}.{NAMESPACE}.svc:{peer}",
           f"peer_address {conf['peer_address']} does not name the StatefulSet's pods under the headless Service")
    expect("ordinal" not in conf, "the ordinal must come from the pod, not the shared ConfigMap")
    env = env_of(c)
    expect(env["BAMF_BRIDGE_ORDINAL"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']",
           "BAMF_BRIDGE_ORDINAL must come from the pod-index label")
    expect("secretKeyRef" in env["BAMF_JOIN_TOKEN"]["valueFrom"], "BAMF_JOIN_TOKEN must come from a Secret")

    # The route to the API and the [api] table agree with the API Service and container.
    api_svc = one(docs, "Service", f"{fullname}-api")
    api_dep = one(docs, "Deployment", f"{fullname}-api")
    api_c = api_dep["spec"]["template"]["spec"]["containers"][0]
    api_port = api_svc["spec"]["ports"][0]["port"]
    expect(container_port([api_c], api_svc["spec"]["ports"][0]["targetPort"]) == addr_port(env_of(api_c)["BAMF_API_LISTEN"]["value"]),
           "API Service targetPort != BAMF_API_LISTEN port")
    routes = {r["host"]: r for r in conf.get("route", [])}
    expect(values["apiHost"] in routes, "no [[route]] for apiHost")
    expect(routes[values["apiHost"]]["backend"] == f"{api_svc['metadata']['name']}:{api_port}", "API route backend != API Service")
    expect(conf["api"]["url"] == f"https://{api_svc['metadata']['name']}:{api_port}", "[api] url != API Service")

    # Mounts: config file, CA certificate only, data_dir.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    expect("--config=/etc/bamf/bridge.toml" in c["args"], "bridge args must name /etc/bamf/bridge.toml")
    cfg = mounts["/etc/bamf/bridge.toml"]
    expect(vols[cfg["name"]]["configMap"]["name"] == cm["metadata"]["name"] and cfg["subPath"] == "bridge.toml",
           "bridge.toml is not mounted from the bridge ConfigMap")
    ca_dir = os.path.dirname(conf["api"]["ca_file"])
    expect(ca_dir in mounts, f"[api] ca_file {conf['api']['ca_file']} is not under a mount")
    ca_vol = vols[mounts[ca_dir]["name"]]
    check_cert_only_volume(ca_vol, os.path.basename(conf["api"]["ca_file"]), "bridge")
    expect(conf["data_dir"] in mounts and "emptyDir" in vols[mounts[conf["data_dir"]]["name"]],
           "data_dir must be a writable emptyDir mount")

    # Drain: the pod's grace outlasts shutdown_grace (plus the preStop sleep).
    grace = seconds(conf["limits"]["shutdown_grace"])
    expect(grace == values.get("bridge", {}).get("shutdownGraceSeconds", 25), "shutdown_grace != bridge.shutdownGraceSeconds")
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgps = pod["terminationGracePeriodSeconds"]
    expect(tgps > grace + sleep, f"terminationGracePeriodSeconds {tgps} <= shutdown_grace {grace} + preStop {sleep}")

    # The API's own drain and probes.
    api_pod = api_dep["spec"]["template"]["spec"]
    api_grace = [a for a in api_c["args"] if a.startswith("--shutdown-grace=")]
    expect(len(api_grace) == 1 and api_pod["terminationGracePeriodSeconds"] > seconds(api_grace[0].split("=", 1)[1]),
           "API terminationGracePeriodSeconds must exceed --shutdown-grace")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/health")):
        g = api_c[probe]["httpGet"]
        expect(g["scheme"] == "HTTPS" and g["path"] == path and container_port([api_c], g["port"]) == api_port,
               f"API {probe} must be HTTPS {path} on the API port")


def check_cert_only_volume(vol, filename, who):
    if "configMap" in vol:
        items = vol["configMap"].get("items", [])
    elif "secret" in vol:
        items = vol["secret"].get("items")
        expect(items is not None, f"{who}: CA Secret mounted whole (its tls.key would be there)")
    else:
        raise Fail(f"{who}: CA volume is neither a ConfigMap nor a Secret")
    expect([i["path"] for i in items] == [filename], f"{who}: CA volume must hold only {filename}, has {items}")
    expect(all(i["key"] in ("ca.crt", "tls.crt") for i in items), f"{who}: CA volume projects {items}")


def check_per_pod(docs, values, provider):
    fullname = RELEASE
    maxr = values.get("bridge", {}).get("maxReplicas", 10)
    per_pod_svcs = [s for s in of_kind(docs, "Service") if s["metadata"].get("labels", {}).get("bamf.io/service-role") == "pod"]
    routes = [d for d in docs if d.get("kind") in ("IngressRouteTCP", "TLSRoute")
              and "bamf.io/bridge-ordinal" in d["metadata"].get("labels", {})]
    if provider == "builtin":
        expect(not per_pod_svcs and not routes, f"builtin renders {len(per_pod_svcs)} per-pod Services and {len(routes)} routes")
        expect(not [d for d in docs if d.get("kind") in ("IngressRouteTCP", "TLSRoute", "Gateway")], "builtin renders gateway routes")
        fd = one(docs, "Service", f"{fullname}-bridge")
        expect(fd["spec"]["type"] == values.get("gateway", {}).get("frontDoor", {}).get("type", "LoadBalancer"),
               "front door Service type != gateway.frontDoor.type")
        return
    kind = PER_POD_KINDS[provider]
    expect(len(per_pod_svcs) == maxr, f"{len(per_pod_svcs)} per-pod Services, bridge.maxReplicas={maxr}")
    expect(len(routes) == maxr and all(r["kind"] == kind for r in routes), f"{len(routes)} {kind}s, bridge.maxReplicas={maxr}")
    expect(not [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == f"{fullname}-bridge"],
           f"{provider}: no front-door LoadBalancer expected")
    sts = one(docs, "StatefulSet", f"{fullname}-bridge")
    front = container_port(sts["spec"]["template"]["spec"]["containers"], "frontdoor")
    svcs = {s["metadata"]["name"]: s for s in per_pod_svcs}
    for i in range(maxr):
        name = f"{fullname}-bridge-{i}"
        s = svcs.get(name)
        expect(s is not None, f"no per-pod Service {name}")
        expect(s["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == name, f"{name} selects another pod")
        expect(s["metadata"]["labels"]["bamf.io/bridge-ordinal"] == str(i), f"{name}: ordinal label")
        r = [r for r in routes if r["metadata"]["labels"]["bamf.io/bridge-ordinal"] == str(i)]
        expect(len(r) == 1, f"ordinal {i}: {len(r)} routes")
        host = f"{i}.bridge.{values['tunnelDomain']}"
        if kind == "IngressRouteTCP":
            rt = r[0]["spec"]["routes"][0]
            expect(rt["match"] == f"HostSNI(`{host}`)", f"{name}: match {rt['match']}")
            expect(r[0]["spec"]["tls"]["passthrough"] is True, f"{name}: TLS must be passed through")
            backend = rt["services"][0]
        else:
            expect(r[0]["spec"]["hostnames"] == [host], f"{name}: hostnames {r[0]['spec']['hostnames']}")
            backend = r[0]["spec"]["rules"][0]["backendRefs"][0]
        expect(backend["name"] == name and backend["port"] == s["spec"]["ports"][0]["port"], f"{name}: route backend {backend}")
        expect(container_port(sts["spec"]["template"]["spec"]["containers"], s["spec"]["ports"][0]["targetPort"]) == front,
               f"{name}: targetPort is not the front door")
    if provider == "istio" and values["gateway"].get("istio", {}).get("createGateway", True):
        gw = of_kind(docs, "Gateway")
        expect(len(gw) == 1, "istio: one Gateway expected")
        hosts = {l["hostname"]: l for l in gw[0]["spec"]["listeners"]}
        expect(f"*.bridge.{values['tunnelDomain']}" in hosts, "Gateway has no *.bridge listener")
        expect(all(l["tls"]["mode"] == "Passthrough" and l["protocol"] == "TLS" for l in hosts.values()), "Gateway listeners must pass TLS through")


def check_no_secret_in_configmaps(docs, values):
    secrets = [v for v in SECRET.values()]
    # And whatever the chart generated: every value of every Secret it rendered.
    generated = []
    for s in of_kind(docs, "Secret"):
        for k, v in (s.get("data") or {}).items():
            raw = base64.b64decode(v).decode()
            if k != "tls.crt":
                generated.append(raw)
    for d in docs:
        if d.get("kind") == "Secret":
            continue
        blob = json.dumps(d)
        for secret in secrets + [g for g in generated if len(g) >= 12]:
            for needle in {secret, secret.strip()}:
                expect(needle not in blob, f"a secret value is in {d['kind']} {d['metadata']['name']}")
        for line in [l for g in generated for l in g.splitlines() if len(l) >= 40 and "-----" not in l]:
            expect(line not in blob, f"part of a key is in {d['kind']} {d['metadata']['name']}")
    for cm in of_kind(docs, "ConfigMap"):
        expect("PRIVATE KEY" not in json.dumps(cm), f"ConfigMap {cm['metadata']['name']} holds a private key")
    # Only the API pod may mount the CA Secret's key.
    ca_secret = {"generated": f"{RELEASE}-ca", "cert-manager": f"{RELEASE}-ca"}.get(
        values.get("ca", {}).get("provider", "generated"), values.get("ca", {}).get("existingSecret"))
    for d, meta, spec in pod_specs(docs):
        for v in spec.get("volumes", []):
            if v.get("secret", {}).get("secretName") == ca_secret:
                keys = [i["key"] for i in v["secret"].get("items") or [{"key": "*"}]]
                if meta["labels"]["app.kubernetes.io/component"] != "api":
                    expect(keys == ["tls.crt"], f"{d['kind']} {d['metadata']['name']} mounts {keys} of the CA Secret")


def check_security_contexts(docs, values):
    count = 0
    for d, meta, spec in pod_specs(docs):
        where = f"{d['kind']} {d['metadata']['name']}"
        psc = spec.get("securityContext") or {}
        expect(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
        expect(psc.get("runAsUser", 1) != 0, f"{where}: pod runs as root")
        expect((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp RuntimeDefault")
        expect(spec.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext") or {}
            cw = f"{where}/{c['name']}"
            expect(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation")
            expect(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem")
            expect("ALL" in (sc.get("capabilities") or {}).get("drop", []), f"{cw}: capabilities.drop ALL")
            expect(not (sc.get("capabilities") or {}).get("add"), f"{cw}: adds capabilities")
            expect(sc.get("privileged") is not True, f"{cw}: privileged")
            expect(sc.get("runAsUser", 1) != 0, f"{cw}: runs as root")
            expect((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{cw}: seccomp")
            expect("resources" in c and c["resources"].get("requests"), f"{cw}: no resource requests")
            count += 1
    expect(count > 0, "no containers found")


def check_network_policies(docs, values):
    nps = of_kind(docs, "NetworkPolicy")
    if not values.get("networkPolicy", {}).get("enabled", True):
        expect(not nps, "networkPolicy.enabled=false still renders policies")
        return
    pods = [(d, meta.get("labels", {})) for d, meta, _ in pod_specs(docs)]

    def admitted(component):
        """Components whose pods some policy lets reach pods of `component` (and the policies)."""
        targets = [labels for d, labels in pods if labels.get("app.kubernetes.io/component") == component]
        if not targets:
            return None
        policies = [np for np in nps if any(selector_matches(np["spec"]["podSelector"], t) for t in targets)]
        expect(policies, f"no NetworkPolicy selects the {component} pods")
        allowed = set()
        for np in policies:
            expect("Ingress" in np["spec"].get("policyTypes", []), f"{np['metadata']['name']}: not an Ingress policy")
            for rule in np["spec"].get("ingress", []):
                peers = rule.get("from")
                expect(peers, f"{np['metadata']['name']}: a rule without 'from' admits everyone")
                for peer in peers:
                    expect(set(peer) == {"podSelector"}, f"{np['metadata']['name']}: peers other than pods of this namespace: {peer}")
                    for d, labels in pods:
                        if selector_matches(peer["podSelector"], labels):
                            allowed.add(labels["app.kubernetes.io/component"])
        return allowed

    pg = admitted("postgresql")
    if values.get("postgresql", {}).get("bundled", {}).get("enabled", True):
        expect(pg is not None, "bundled PostgreSQL has no pod")
        expect("api" in pg and pg <= {"api", "migrations", "backup"}, f"PostgreSQL admits {sorted(pg)}")
    rd = admitted("redis")
    if values.get("redis", {}).get("bundled", {}).get("enabled", True):
        expect(rd == {"api"}, f"Redis admits {rd and sorted(rd)}")
    # The bridges' peer port admits bridges only.
    bnp = one(docs, "NetworkPolicy", f"{RELEASE}-bridge")
    for rule in bnp["spec"]["ingress"]:
        if any(p["port"] == "peer" for p in rule.get("ports", [])):
            expect(rule.get("from") and all(selector_matches(f["podSelector"], {"app.kubernetes.io/name": "bamf", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "bridge"}) and
                                            not selector_matches(f["podSelector"], {"app.kubernetes.io/name": "bamf", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "api"})
                                            for f in rule["from"]), "peer port must admit bridges only")


def check_jobs(docs, values):
    pg = values.get("postgresql", {})
    bundled = pg.get("bundled", {}).get("enabled", True)
    jobs = of_kind(docs, "Job")
    expect(len(jobs) == 1, f"{len(jobs)} migration Jobs")
    job = jobs[0]
    c = job["spec"]["template"]["spec"]["containers"][0]
    expect("--migrate-only" in c["args"] and c["image"].rsplit("/", 1)[1].startswith("bamf-api:"), "migration Job must run bamf-api --migrate-only")
    ann = job["metadata"].get("annotations", {})
    if bundled:
        expect("helm.sh/hook" not in ann and job["metadata"]["name"].endswith("-3"),
               "with the bundled PostgreSQL the migration Job is a per-revision Job, not a hook")
        expect(job["spec"]["template"]["spec"].get("initContainers"), "bundled: the Job must wait for PostgreSQL")
    else:
        expect(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"external: the migration Job must be a pre-install/pre-upgrade hook, has {ann}")
        ref = env_of(c)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        if pg.get("external", {}).get("existingSecret"):
            expect(ref == {"name": pg["external"]["existingSecret"], "key": pg["external"].get("existingSecretKey", "DATABASE_URL")},
                   f"hook Job DATABASE_URL from {ref}")
        else:
            hs = one(docs, "Secret", ref["name"])
            expect(hs["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade" and
                   int(hs["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"]),
                   "the hook Job's Secret must be a hook created before it")
    backup = pg.get("backup", {})
    crons = of_kind(docs, "CronJob")
    if backup.get("enabled"):
        expect(len(crons) == 1, "backup enabled: one CronJob expected")
        spec = crons[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        c = spec["containers"][0]
        script = " ".join(c["command"])
        expect("pg_dump" in script and "-delete" in script and "RETENTION_DAYS" in script, "backup script must dump and delete old dumps")
        expect(env_of(c)["RETENTION_DAYS"]["value"] == str(backup.get("retentionDays", 7)), "RETENTION_DAYS != retentionDays")
        claim = [v for v in spec["volumes"] if v["name"] == "backups"][0]["persistentVolumeClaim"]["claimName"]
        existing = backup.get("persistence", {}).get("existingClaim")
        if existing:
            expect(claim == existing and not [p for p in of_kind(docs, "PersistentVolumeClaim") if p["metadata"]["name"] == claim],
                   "backup must use the existing claim and not create one")
        else:
            pvc = one(docs, "PersistentVolumeClaim", claim)
            expect(pvc["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "the backup PVC must survive uninstall")
        expect(crons[0]["spec"]["concurrencyPolicy"] == "Forbid", "backups must not overlap")
    else:
        expect(not crons, "backup disabled but a CronJob is rendered")


def check_api_wiring(docs, values):
    dep = one(docs, "Deployment", f"{RELEASE}-api")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = env_of(c)
    expect(env["BAMF_API_HOST"]["value"] == values["apiHost"], "BAMF_API_HOST != apiHost")
    expect(env["BAMF_TUNNEL_DOMAIN"]["value"] == values["tunnelDomain"], "BAMF_TUNNEL_DOMAIN != tunnelDomain")
    expect(env["BAMF_API_LISTEN"]["value"].startswith("0.0.0.0:"), "API must listen on 0.0.0.0")
    alt = env["BAMF_API_ALT_NAMES"]["value"].split(",")
    expect({f"{RELEASE}-api", f"{RELEASE}-api.{NAMESPACE}.svc"} <= set(alt), f"BAMF_API_ALT_NAMES lacks the Service names: {alt}")
    for name in ("DATABASE_URL", "REDIS_URL", "BAMF_ADMIN_PASSWORD"):
        expect("secretKeyRef" in env[name].get("valueFrom", {}), f"{name} must come from a Secret")
    enc = values.get("ca", {}).get("encryptionKey") or values.get("ca", {}).get("encryptionKeyExistingSecret")
    expect(("BAMF_CA_ENCRYPTION_KEY" in env) == bool(enc), "BAMF_CA_ENCRYPTION_KEY present iff configured")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for var in ("BAMF_CA_CERT_FILE", "BAMF_CA_KEY_FILE"):
        expect(os.path.dirname(env[var]["value"]) in mounts, f"{var} is not under a mount")
    for ref_name in ("DATABASE_URL", "REDIS_URL", "BAMF_ADMIN_PASSWORD"):
        ref = env[ref_name]["valueFrom"]["secretKeyRef"]
        chart_secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
        if ref["name"] in chart_secrets:
            expect(ref["key"] in chart_secrets[ref["name"]]["data"], f"{ref_name}: Secret {ref['name']} has no key {ref['key']}")
    # Agent (when enabled): TOML ports and files agree with the Deployment.
    agents = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == f"{RELEASE}-agent"]
    expect(bool(agents) == bool(values.get("agent", {}).get("enabled")), "agent Deployment iff agent.enabled")
    if agents:
        a = agents[0]
        ac = a["spec"]["template"]["spec"]["containers"][0]
        conf = tomllib.loads(one(docs, "ConfigMap", f"{RELEASE}-agent")["data"]["agent.toml"])
        api_svc = one(docs, "Service", f"{RELEASE}-api")
        expect(conf["api_url"] == f"https://{api_svc['metadata']['name']}:{api_svc['spec']['ports'][0]['port']}", "agent api_url != API Service")
        expect(addr_port(conf["health_listen"]) == container_port([ac], "health") == container_port([ac], ac["readinessProbe"]["httpGet"]["port"]),
               "agent health_listen, container port and probe disagree")
        expect([r["name"] for r in conf["resources"]] == [t["name"] for t in values["agent"]["targets"]], "agent [[resources]] != agent.targets")
        expect(conf["resources"][0].get("labels") == values["agent"]["targets"][0].get("labels"), "agent labels")
        am = {m["mountPath"]: m for m in ac["volumeMounts"]}
        av = {v["name"]: v for v in a["spec"]["template"]["spec"]["volumes"]}
        check_cert_only_volume(av[am[os.path.dirname(conf["api_ca_file"])]["name"]], os.path.basename(conf["api_ca_file"]), "agent")
        expect(conf["data_dir"] in am, "agent data_dir not mounted")
        expect(a["spec"]["replicas"] == 1 and a["spec"]["strategy"]["type"] == "Recreate", "one agent per name: replicas 1, Recreate")


def check_generated_ca(docs, values):
    if values.get("ca", {}).get("provider", "generated") != "generated":
        return
    openssl = shutil.which("openssl")
    expect(openssl is not None, "openssl is needed to check the generated CA (apt-get install openssl)")
    s = one(docs, "Secret", f"{RELEASE}-ca")
    expect(s["type"] == "kubernetes.io/tls" and s["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep",
           "the generated CA Secret must be kubernetes.io/tls and kept on uninstall")
    crt = base64.b64decode(s["data"]["tls.crt"]).decode()
    key = base64.b64decode(s["data"]["tls.key"]).decode()
    expect(key.startswith("-----BEGIN PRIVATE KEY-----\n"), "the CA key must be PKCS#8 (bamf-api reads no other)")
    cm = one(docs, "ConfigMap", f"{RELEASE}-ca-cert")
    expect(cm["data"]["ca.crt"].strip() == crt.strip(), "the CA ConfigMap must hold the Secret's certificate")
    GENERATED_CAS.append((crt, key))
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "ca.crt").write_text(crt)
        Path(tmp, "ca.key").write_text(key)
        run = lambda *a: subprocess.run([openssl, *a], capture_output=True, text=True, check=True).stdout
        text = run("x509", "-in", f"{tmp}/ca.crt", "-noout", "-text")
        expect("CA:TRUE" in text and "Certificate Sign" in text, "the generated certificate is not a CA")
        expect(run("pkey", "-in", f"{tmp}/ca.key", "-pubout") == run("x509", "-in", f"{tmp}/ca.crt", "-noout", "-pubkey"),
               "the CA key does not belong to the certificate")
        run("pkey", "-in", f"{tmp}/ca.key", "-check", "-noout")


GENERATED_CAS: list[tuple[str, str]] = []


def binary(name: str) -> Path:
    for profile_dir in ("debug", "release"):
        p = ROOT / "target" / profile_dir / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    raise Fail(f"target/debug/{name} (or target/release) does not exist: build it first "
               "(cargo build --workspace --bins; scripts/test does this before scripts/test-deploy)")


def clean_env(**extra: str) -> dict:
    """The environment without anything a binary would read as its configuration."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BAMF_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(extra)
    return env


def check_api_binary_with_generated_ca():
    """bamf-api --migrate-only works, and bamf-api starts with a CA the chart generated, serves
    /ready with a certificate for its Service name, and drains on SIGTERM."""
    api = binary("bamf-api")
    expect(GENERATED_CAS, "no generated CA was rendered")
    crt, key = GENERATED_CAS[0]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "ca.crt").write_text(crt)
        Path(tmp, "ca.key").write_text(key)
        db = f"sqlite://{tmp}/bamf.db?mode=rwc"
        r = subprocess.run([str(api), "--migrate-only", "--log-format=json"], env=clean_env(DATABASE_URL=db),
                           capture_output=True, text=True, timeout=120, cwd=tmp)
        expect(r.returncode == 0, f"bamf-api --migrate-only exit {r.returncode}:\n{r.stderr[-2000:]}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = clean_env(DATABASE_URL=db, BAMF_API_LISTEN=f"127.0.0.1:{port}", BAMF_API_HOST="bamf.test.example",
                        BAMF_API_ALT_NAMES=f"{RELEASE}-api,{RELEASE}-api.{NAMESPACE}.svc", BAMF_TUNNEL_DOMAIN="tunnel.test.example",
                        BAMF_CA_CERT_FILE=f"{tmp}/ca.crt", BAMF_CA_KEY_FILE=f"{tmp}/ca.key",
                        BAMF_CA_ENCRYPTION_KEY=SECRET["ca_encryption"], BAMF_ADMIN_PASSWORD=SECRET["admin"])
        log = open(Path(tmp, "api.log"), "w+")
        proc = subprocess.Popen([str(api), "--shutdown-grace=5s", "--log-format=json"], env=env, stdout=log, stderr=log, cwd=tmp)
        ctx = ssl.create_default_context(cafile=f"{tmp}/ca.crt")
        answer, last_error = "", None
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                            ctx.wrap_socket(raw, server_hostname=f"{RELEASE}-api") as tls:
                        tls.sendall(f"GET /ready HTTP/1.1\r\nHost: {RELEASE}-api\r\nConnection: close\r\n\r\n".encode())
                        answer = b"".join(iter(lambda: tls.recv(4096), b"")).decode(errors="replace")
                    break
                except (OSError, ssl.SSLError) as e:
                    last_error = e
                    time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "killed"
            log.seek(0)
            output = log.read()[-3000:]
            log.close()
        expect(answer.startswith("HTTP/1.1 200"), f"bamf-api with the generated CA: no 200 from /ready "
                                                  f"(last error {last_error!r}, answer {answer[:200]!r}):\n{output}")
        expect(code == 0, f"bamf-api did not drain cleanly on SIGTERM (exit {code}):\n{output}")


def check_bridge_binary_accepts(tomls: list[str]):
    bridge = binary("bamf-bridge")
    expect(tomls, "no bridge.toml rendered")
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(tomls):
            f = Path(tmp, f"bridge-{i}.toml")
            f.write_text(text)
            for ordinal in ("0", "3"):
                r = subprocess.run([str(bridge), "--check", "--config", str(f)], capture_output=True, text=True,
                                   env=clean_env(BAMF_BRIDGE_ORDINAL=ordinal), timeout=60)
                expect(r.returncode == 0, f"{bridge.relative_to(ROOT)} --check refused a rendered bridge.toml "
                                          f"(ordinal {ordinal}, exit {r.returncode}):\n{r.stderr.strip()}\n--- bridge.toml ---\n{text}")


# --------------------------------------------------------------------------------------------
# Values schema and documentation.

def expect_render_fails(values: dict, needle: str):
    try:
        render(values)
    except helm.HelmError as e:
        expect(needle in str(e), f"render failed, but without {needle!r}: {e}")
        return
    raise Fail(f"render accepted values it must refuse ({needle})")


def check_schema_refuses():
    ok = SCENARIOS["builtin-bundled"]
    expect_render_fails(merge(ok, {"bridge": {"replicaz": 3}}), "replicaz")
    expect_render_fails(merge(ok, {"gateway": {"provider": "nginx"}}), "provider")
    expect_render_fails(merge(ok, {"api": {"port": "8443"}}), "port")
    expect_render_fails(merge(ok, {"postgresql": {"bundled": {"password": "p@ss:word"}}}), "password")
    expect_render_fails(merge(ok, {"apiHost": ""}), "apiHost is required")
    expect_render_fails(merge(ok, {"postgresql": {"external": {"existingSecret": "db"}}}), "mutually exclusive")
    expect_render_fails(merge(ok, {"agent": {"joinToken": ""}}), "agent.enabled needs")
    expect_render_fails(merge(ok, {"ca": {"provider": "existing"}}), "ca.existingSecret")
    expect_render_fails(merge(ok, {"bridge": {"replicas": 11}}), "maxReplicas")


def check_unknown_kind_fails():
    doc = {"apiVersion": "example.invalid/v1", "kind": "Mystery", "metadata": {"name": "x"}, "spec": {}}
    try:
        validate(doc, KUBE_VERSIONS[0])
    except Fail as e:
        expect("no schema" in str(e), f"unexpected failure: {e}")
        return
    raise Fail("a kind without any schema validated: it must fail")


def check_own_schemas_are_strict():
    doc = {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRouteTCP", "metadata": {"name": "x"},
           "spec": {"routes": [{"match": "HostSNI(`a.b`)", "services": [{"name": "s", "port": 1}]}], "tls": {"passthru": True}}}
    try:
        validate(doc, KUBE_VERSIONS[0])
    except Fail as e:
        expect("passthru" in str(e), f"unexpected failure: {e}")
        return
    raise Fail("a misspelt IngressRouteTCP field validated")


def leaf_keys(d: dict, prefix="") -> list[str]:
    out = []
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v and path not in FREE_FORM:
            out += leaf_keys(v, path)
        else:
            out.append(path)
    return out


# Maps whose entries are the operator's (labels, resources, security contexts...): documented as one key.
FREE_FORM = {"podSecurityContext", "containerSecurityContext", "api.resources", "bridge.resources", "agent.resources",
             "migrations.resources", "postgresql.bundled.resources", "postgresql.backup.resources",
             "redis.bundled.resources"}


def check_docs_cover_values():
    expect(DOCS.is_file(), f"{DOCS.relative_to(ROOT)} is missing")
    text = DOCS.read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [k for k in leaf_keys(values) if f"`{k}`" not in text]
    expect(not missing, f"values not in docs/deploy.md's reference: {missing}")
    schema = json.loads((CHART / "values.schema.json").read_text())
    def walk(s, path=""):
        if s.get("type") == "object" and "properties" in s:
            if path not in FREE_FORM:
                expect(s.get("additionalProperties") is False, f"values.schema.json: {path or '<root>'} allows unknown keys")
            for k, sub in s["properties"].items():
                walk(sub, f"{path}.{k}" if path else k)
    walk(schema)
    for k in leaf_keys(values):
        node = schema
        for part in k.split("."):
            node = node.get("properties", {}).get(part)
            expect(node is not None, f"values.schema.json does not describe {k}")


# --------------------------------------------------------------------------------------------
# systemd units and example configurations.

HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "DynamicUser": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "KillSignal": "SIGTERM",
}


def unit_directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def check_systemd_units():
    analyze = shutil.which("systemd-analyze")
    expect(analyze is not None, "systemd-analyze is missing (apt-get install systemd)")
    units = sorted(UNITS.glob("*.service"))
    expect([u.name for u in units] == ["bamf-agent.service", "bamf-api.service", "bamf-bridge.service"], f"units: {units}")
    bridge_grace = seconds(tomllib.loads((ROOT / "deploy/examples/bridge.toml").read_text())["limits"]["shutdown_grace"])
    for u in units:
        d = unit_directives(u)
        for k, v in HARDENING.items():
            expect(d.get(k) == [v], f"{u.name}: {k}={v} expected, has {d.get(k)}")
        expect(d.get("StateDirectory") == [u.stem], f"{u.name}: StateDirectory={u.stem}")
        expect(d.get("EnvironmentFile") and d["EnvironmentFile"][0].lstrip("-") == f"/etc/bamf/{u.stem.removeprefix('bamf-')}.env",
               f"{u.name}: EnvironmentFile for secrets")
        expect("LimitNOFILE" in d, f"{u.name}: LimitNOFILE")
        caps = d.get("CapabilityBoundingSet")
        ambient = d.get("AmbientCapabilities")
        if u.stem == "bamf-bridge":
            expect(caps == ["CAP_NET_BIND_SERVICE"] and ambient == ["CAP_NET_BIND_SERVICE"], f"{u.name}: only CAP_NET_BIND_SERVICE")
            expect(seconds(d["TimeoutStopSec"][0]) > bridge_grace, f"{u.name}: TimeoutStopSec must exceed shutdown_grace {bridge_grace}s")
        else:
            expect(caps == [""] and ambient in (None, [""]), f"{u.name}: no capabilities")
        if u.stem == "bamf-api":
            grace = re.search(r"--shutdown-grace (\S+)", d["ExecStart"][0])
            expect(grace and seconds(d["TimeoutStopSec"][0]) > seconds(grace[1]), f"{u.name}: TimeoutStopSec must exceed --shutdown-grace")
    # Verify copies whose ExecStart (and ExecStartPre) binaries are stubs in a temporary
    # directory: systemd-analyze verify checks that they exist and are executable.
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp, "bin")
        stubs.mkdir()
        for name in ("bamf-api", "bamf-bridge", "bamf-agent"):
            stub = stubs / name
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        copies = []
        for u in units:
            text = u.read_text().replace("/usr/local/bin/", f"{stubs}/")
            expect(str(stubs) in text, f"{u.name}: ExecStart is not /usr/local/bin/...")
            c = Path(tmp, u.name)
            c.write_text(text)
            copies.append(str(c))
        r = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True, timeout=120)
        problems = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
        expect(r.returncode == 0 and not problems, f"systemd-analyze verify (exit {r.returncode}):\n" + "\n".join(problems))


API_ENV = {"BAMF_API_LISTEN", "BAMF_API_HOST", "BAMF_API_ALT_NAMES", "BAMF_TUNNEL_DOMAIN", "DATABASE_URL", "REDIS_URL",
           "BAMF_ADMIN_PASSWORD", "BAMF_CA_ENCRYPTION_KEY", "BAMF_CA_CERT_FILE", "BAMF_CA_KEY_FILE", "BAMF_LOG"}


def check_examples():
    agent = tomllib.loads((ROOT / "deploy/examples/agent.toml").read_text())
    expect(set(agent) == {"name", "api_url", "api_ca_file", "data_dir", "health_listen", "resources"}, f"agent.toml keys {sorted(agent)}")
    expect(agent["data_dir"] == "/var/lib/bamf-agent", "agent.toml data_dir must be the unit's StateDirectory")
    for r in agent["resources"]:
        expect(set(r) <= {"name", "kind", "address", "labels"} and r["kind"] in ("ssh", "postgres", "tcp"), f"agent resource {r}")
        addr_port(r["address"])
    keys = set()
    for line in (ROOT / "deploy/examples/api.env").read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.fullmatch(r"[A-Z_]+=.*", line):
                continue
        if line:
            k, eq, _ = line.partition("=")
            expect(eq == "=" and re.fullmatch(r"[A-Z_]+", k), f"api.env: bad line {line!r}")
            keys.add(k)
    expect(keys <= API_ENV, f"api.env has variables bamf-api does not read: {sorted(keys - API_ENV)}")
    expect({"DATABASE_URL", "BAMF_API_HOST", "BAMF_ADMIN_PASSWORD"} <= keys, "api.env lacks the essentials")
    docker = (ROOT / "deploy/docker/Dockerfile").read_text()
    expect("rust:1.95-bookworm" in docker and "gcr.io/distroless/cc-debian12:nonroot" in docker, "Dockerfile images")
    for target in ("api", "bridge", "agent", "cli"):
        expect(re.search(rf"^FROM \S+ AS {target}$", docker, re.M), f"Dockerfile has no target {target}")
    expect("USER root" not in docker and docker.count("USER 65532:65532") == 4, "every runtime image runs as 65532")


# --------------------------------------------------------------------------------------------

def run_scenario(name: str, values: dict, bridge_tomls: list[str]):
    docs_holder: dict = {}

    def do_render():
        docs, notes = render(values)
        expect(notes.strip(), "NOTES.txt rendered empty")
        names = [(d["kind"], d["metadata"]["name"]) for d in docs]
        dupes = {n for n in names if names.count(n) > 1}
        expect(not dupes, f"duplicate objects: {dupes}")
        for d in docs:
            expect(len(d["metadata"]["name"]) <= 63, f"{d['kind']} name longer than 63: {d['metadata']['name']}")
            labels = d["metadata"].get("labels", {})
            expect(labels.get("app.kubernetes.io/instance") == RELEASE and "app.kubernetes.io/component" in labels,
                   f"{d['kind']} {d['metadata']['name']}: missing standard labels")
        docs_holder["docs"] = docs

    check(f"{name}: helm lint --strict (k8s {', '.join(KUBE_VERSIONS)})", lint, values)
    check(f"{name}: render", do_render)
    docs = docs_holder.get("docs")
    if docs is None:
        return
    for version in KUBE_VERSIONS:
        def validate_all(version=version):
            counts: dict[str, int] = {}
            problems = []
            for d in docs:
                try:
                    how = validate(d, version)
                    counts[how] = counts.get(how, 0) + 1
                except Fail as e:
                    problems.append(str(e))
            expect(not problems, "\n".join(problems))
            REPORT.append(f"{name:24} k8s {version}: {len(docs):3} objects valid "
                          f"({counts.get('kubernetes', 0)} by Kubernetes schemas, {counts.get('own schema', 0)} by ours)")
        check(f"{name}: validate every object (k8s {version}, strict)", validate_all)
    provider = values.get("gateway", {}).get("provider", "builtin")
    check(f"{name}: Services, workloads and ports agree", check_services_and_workloads, docs, values)
    check(f"{name}: bridge config, StatefulSet, Services and probes agree", check_bridge, docs, values, bridge_tomls)
    check(f"{name}: per-pod Services and routes ({provider})", check_per_pod, docs, values, provider)
    check(f"{name}: no secret value outside Secrets", check_no_secret_in_configmaps, docs, values)
    check(f"{name}: securityContext on every pod and container", check_security_contexts, docs, values)
    check(f"{name}: NetworkPolicies", check_network_policies, docs, values)
    check(f"{name}: migration Job and backup CronJob", check_jobs, docs, values)
    check(f"{name}: API and agent wiring", check_api_wiring, docs, values)
    check(f"{name}: generated CA", check_generated_ca, docs, values)


def main() -> int:
    os.chdir(ROOT)
    from importlib.metadata import version
    print(f"Helm SDK {helm.helm_sdk_version()}, kubernetes-validate {version('kubernetes-validate')}, "
          f"Kubernetes {' and '.join(KUBE_VERSIONS)}")
    bridge_tomls: list[str] = []
    for name, values in SCENARIOS.items():
        run_scenario(name, values, bridge_tomls)
    check("bamf-bridge --check accepts every rendered bridge.toml", check_bridge_binary_accepts, bridge_tomls)
    check("bamf-api --migrate-only, and bamf-api serving with the generated CA", check_api_binary_with_generated_ca)
    check("values.schema.json and the templates refuse bad values", check_schema_refuses)
    check("a kind without a schema fails validation", check_unknown_kind_fails)
    check("our CRD schemas refuse unknown fields", check_own_schemas_are_strict)
    check("docs/deploy.md documents every value; the schema is strict", check_docs_cover_values)
    check("systemd units: hardening and systemd-analyze verify", check_systemd_units)
    check("example configurations and Dockerfile", check_examples)

    for line in REPORT:
        print(line)
    failed = [(n, e) for n, e in RESULTS if e]
    for n, _ in RESULTS:
        print(f"{'FAIL' if any(n == f for f, _ in failed) else 'ok  '} {n}")
    for n, e in failed:
        print(f"\n--- FAIL: {n}\n{e}", file=sys.stderr)
    print(f"deploy: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
