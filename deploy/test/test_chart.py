#!/usr/bin/env python3
"""Deploy checks: the Helm chart, the systemd units and the example configurations.

Run by scripts/test-deploy (which makes the venv with helm-python-sdk and kubernetes-validate);
by hand: `.tools/deploy-venv/bin/python deploy/test/test_chart.py` from the repository root.

What it proves, for every scenario (values) in SCENARIOS, which include every values block of
the upstream deployment guide (deploy/test/guide/, verbatim) layered on its minimal production
values:
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
- the API's inputs follow the values: DATABASE_URL / BAMF_DATABASE_READ_URL / REDIS_URL as the pods
  compose them ($(VAR) expanded; passwords only as Secret references), the TTL flags,
  BAMF_TUNNEL_PORT, BAMF_AUDIT_RETENTION_DAYS, public TLS and CA mounts, the sealing key, images,
  the `helm test` pods, NOTES' `bamf login` line; for the guide's blocks, their documented effect
  written out literally (GUIDE_EFFECTS);
- the guide's minimal production values render with single sign-on wired in (auth.toml, the
  client secret mounted from bamf-auth0-credentials); its web block passes the schema and fails
  the render naming the missing capability; the guide's subchart example renders inside a
  parent chart;
- values.schema.json refuses unknown keys (the chart's earlier keys too) and bad values; every
  value is in docs/deploy.md.
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
from urllib.parse import parse_qs, quote, urlsplit

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
    # Inline external passwords with characters a URL must escape.
    "external_db_password": "ExtDb Pw@5d7f#9b1c+3e",
    "external_redis_password": "ExtRedis:Pw8a0c/2e4d6f",
}
assert len(base64.b64decode(SECRET["ca_encryption"])) == 32

BASE = {
    "gateway": {"hostname": "bamf.test.example", "tunnelDomain": "tunnel.test.example"},
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


DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def profile(name: str) -> dict:
    return yaml.safe_load((CHART / f"values-{name}.yaml").read_text())


SCENARIOS: dict[str, dict] = {
    # Built-in front door, bundled stores, everything optional switched on.
    "builtin-bundled": merge(BASE, {
        "postgresql": {"bundled": {"auth": {"password": SECRET["pg_password"]}},
                       "backup": {"enabled": True, "retentionDays": 5}},
        "redis": {"bundled": {"password": SECRET["redis_password"], "persistence": {"enabled": True}}},
        "agent": merge(AGENT, {"image": {"registry": "other.test.example", "repository": "tools/agent", "tag": "edge"}}),
        "metrics": {"serviceMonitor": {"enabled": True}},
        "bridge": {"preStopSleepSeconds": 5, "shutdownGraceSeconds": 90, "threads": 2,
                   "routes": [{"host": "*.apps.test.example", "backend": "10.0.0.5:443"}]},
        "image": {"registry": "registry.test.example/bamf", "tag": "1.2.3"},
        "api": {"image": {"digest": "sha256:" + "ab" * 32}},
    }),
    # Built-in front door on a non-443 port, external stores and every secret from existing
    # Secrets; PostgreSQL verify-full with a CA bundle and a read replica, Redis over TLS;
    # public TLS from existing Secrets; the CA from an existing Secret with its own keys.
    "builtin-external": merge(BASE, {
        "gateway": {"port": 8443, "frontDoor": {"externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["10.0.0.0/8"]}},
        "admin": {"password": "", "existingSecret": "ops-admin"},
        "bridge": {"joinToken": "", "existingSecret": "ops-bridge", "existingSecretKey": "token",
                   "autoscaling": {"enabled": True, "maxReplicas": 8}},
        "ca": {"provider": "existing", "existing": {"secretName": "ops-ca", "certKey": "ca.pem", "keyKey": "ca-key.pem"},
               "encryptionKey": "", "encryptionKeyExistingSecret": "ops-ca-key"},
        "tls": {"existingSecret": "ops-api-tls", "existingTunnelSecret": "ops-tunnel-tls"},
        "postgresql": {"bundled": {"enabled": False},
                       "external": {"enabled": True, "host": "db.internal", "port": 6432, "database": "bamf_prod",
                                    "username": "bamf_app", "sslmode": "verify-full", "caSecret": "ops-db-ca",
                                    "existingSecret": "ops-db", "existingSecretKey": "pw",
                                    "readReplica": {"enabled": True, "host": "db-ro.internal"}},
                       "backup": {"enabled": True, "persistence": {"existingClaim": "ops-backups"}}},
        "redis": {"bundled": {"enabled": False},
                  "external": {"enabled": True, "host": "redis.internal", "tls": True, "database": 2,
                               "existingSecret": "ops-redis", "existingSecretKey": "pw"}},
        "api": {"trustedProxies": ["10.42.0.0/16"], "config": {"log_level": "debug,bamf_api=trace",
                "certificates": {"user_ttl_hours": 8, "agent_ttl_hours": 720, "bridge_ttl_hours": 6},
                "audit": {"retention_days": 30}}},
    }),
    # External stores with inline passwords (chart Secrets, and the migration hook's own);
    # the CA bundle from a ConfigMap; cert-manager public certificates.
    "builtin-external-inline": merge(BASE, {
        "postgresql": {"bundled": {"enabled": False},
                       "external": {"enabled": True, "host": "db.internal", "sslmode": "verify-ca",
                                    "caConfigMap": "db-ca-bundle", "caKey": "bundle.pem",
                                    "password": SECRET["external_db_password"]}},
        "redis": {"bundled": {"enabled": False},
                  "external": {"enabled": True, "host": "redis.internal", "password": SECRET["external_redis_password"]}},
        "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "letsencrypt-dns01", "kind": "ClusterIssuer"}}},
        "agent": merge(AGENT, {"persistence": {"enabled": False}}),
    }),
    # The password from an ExternalSecret (v1beta1 operators), migrations as a per-revision Job.
    "builtin-external-secret": merge(BASE, {
        "gateway": {"enabled": False},
        "postgresql": {"bundled": {"enabled": False},
                       "external": {"enabled": True, "host": "db.internal", "sslmode": "require",
                                    "externalSecret": {"enabled": True, "apiVersion": "external-secrets.io/v1beta1",
                                                       "secretStoreRef": {"name": "vault", "kind": "SecretStore"},
                                                       "remoteRef": {"key": "bamf/db"}}}},
        "redis": {"bundled": {"enabled": False}, "external": {"enabled": True, "host": "redis.internal"}},
    }),
    "traefik": merge(BASE, {
        "gateway": {"provider": "traefik", "traefik": {"entryPoint": "tunnels"}},
        "bridge": {"maxReplicas": 7, "replicas": 3},
        "postgresql": {"bundled": {"auth": {"password": SECRET["pg_password"]}}},
        "redis": {"bundled": {"password": SECRET["redis_password"]}},
    }),
    "istio": merge(BASE, {
        "gateway": {"provider": "istio", "className": "istio-tls", "port": 9443},
        "bridge": {"maxReplicas": 5, "replicas": 2},
        "ca": {"provider": "cert-manager"},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "postgresql": {"bundled": {"auth": {"password": SECRET["pg_password"]}}},
        "redis": {"bundled": {"password": SECRET["redis_password"]}},
    }),
    "istio-existing-gateway": merge(BASE, {
        "gateway": {"provider": "istio", "istio": {"createGateway": False, "gatewayName": "shared",
                                                    "gatewayNamespace": "istio-ingress", "routeApi": False}},
        "bridge": {"maxReplicas": 4},
    }),
    # The subchart example's values, applied to the chart itself (the parent chart is rendered
    # separately): another full name and a shared ServiceAccount.
    "fullname-shared-sa": merge(BASE, {"fullnameOverride": "myapp-bamf",
                                       "serviceAccount": {"create": False, "name": "myapp-shared-sa"},
                                       "gateway": {"provider": "traefik"}, "bridge": {"maxReplicas": 3}}),
    "profile-dev": merge(profile("dev"), {
        "admin": {"password": SECRET["admin"]}, "bridge": {"joinToken": SECRET["bridge_token"]},
        "postgresql": {"bundled": {"auth": {"password": SECRET["pg_password"]}}},
        "redis": {"bundled": {"password": SECRET["redis_password"]}},
    }),
    "profile-staging": merge(profile("staging"), BASE, {"admin": {"password": ""}}),
    "profile-production": merge(profile("production"), BASE, {
        "admin": {"password": ""}, "bridge": {"joinToken": ""}, "ca": {"encryptionKey": ""},
        "postgresql": {"external": {"host": "bamf-db.internal"}}, "redis": {"external": {"host": "bamf-redis.internal"}},
    }),
}

# The upstream guide's values blocks, verbatim (deploy/test/guide/). Each block is layered on
# the guide's minimal production values as an operator would add it to production-values.yaml
# (its auth block included: password login off, single sign-on through auth0).
GUIDE = ROOT / "deploy/test/guide"


def guide(name: str) -> dict:
    return yaml.safe_load((GUIDE / f"{name}.yaml").read_text())


GUIDE_MINIMAL = guide("minimal-production")
GUIDE_SCENARIOS: dict[str, dict] = {
    f"guide-{name}": merge(GUIDE_MINIMAL, guide(name)) if name != "minimal-production" else GUIDE_MINIMAL
    for name in ("minimal-production", "api", "bridge", "redis-external", "tls-cert-manager", "tls-existing",
                 "ca-helm", "ca-cert-manager", "ca-existing", "gateway-traefik", "gateway-istio")
}
# The PostgreSQL credential options are alternatives ("pick one"): each replaces the minimal
# values' external block.
for name in ("postgresql-external-existing-secret", "postgresql-external-externalsecret", "postgresql-external-inline-password"):
    GUIDE_SCENARIOS[f"guide-{name}"] = merge({k: v for k, v in GUIDE_MINIMAL.items() if k != "postgresql"},
                                             {"postgresql": {"bundled": {"enabled": False}}}, guide(name))
# The bundled stores replace the external ones: the guide's blocks plus switching external off.
GUIDE_SCENARIOS["guide-postgresql-redis-bundled"] = merge(
    GUIDE_MINIMAL, guide("postgresql-bundled"), guide("redis-bundled"),
    {"postgresql": {"external": {"enabled": False}}, "redis": {"external": {"enabled": False}}})
SCENARIOS.update(GUIDE_SCENARIOS)

# What each guide block is documented to do, written out literally (not recomputed from the
# values): (container of the API Deployment) env var or arg -> exact value.
RDS = "bamf-db.cluster-xxx.us-east-1.rds.amazonaws.com"
GUIDE_DB = f"postgres://bamf:<secret:bamf-database-credentials/password>@{RDS}:5432/bamf?sslmode=require"
GUIDE_EFFECTS: dict[str, dict[str, str]] = {
    "guide-minimal-production": {
        "DATABASE_URL": GUIDE_DB,
        "REDIS_URL": "redis://bamf-redis.xxx.cache.amazonaws.com:6379/0?protocol=resp3",
        "BAMF_API_HOST": "bamf.example.com", "BAMF_TUNNEL_DOMAIN": "tunnel.bamf.example.com", "BAMF_TUNNEL_PORT": "443",
        "BAMF_AUTH_CONFIG": "/etc/bamf/auth/auth.toml",
    },
    "guide-api": {
        "BAMF_LOG": "info", "BAMF_AUDIT_RETENTION_DAYS": "90", "--user-cert-lifetime": "12h",
        "--agent-cert-lifetime": "8760h", "--bridge-cert-lifetime": "24h",
    },
    "guide-postgresql-external-existing-secret": {"DATABASE_URL": GUIDE_DB},
    "guide-postgresql-external-externalsecret": {
        "DATABASE_URL": f"postgres://bamf:<secret:bamf-database/password>@{RDS}:5432/bamf?sslmode=require"},
    "guide-postgresql-external-inline-password": {
        "DATABASE_URL": f"postgres://bamf:<secret:bamf-database/password>@{RDS}:5432/bamf?sslmode=require"},
    "guide-redis-external": {
        "REDIS_URL": "redis://:<secret:bamf-redis-credentials/password>@bamf-redis.xxx.cache.amazonaws.com:6379/0?protocol=resp3"},
    "guide-postgresql-redis-bundled": {
        "DATABASE_URL": "postgres://bamf:<secret:bamf-postgresql/POSTGRES_PASSWORD>@bamf-postgresql:5432/bamf?sslmode=disable",
        "REDIS_URL": "redis://:<secret:bamf-redis/REDIS_PASSWORD>@bamf-redis:6379/0?protocol=resp3"},
    "guide-tls-cert-manager": {"BAMF_API_TLS_CERT_FILE": "/etc/bamf/tls/tls.crt", "BAMF_TUNNEL_TLS_CERT_FILE": "/etc/bamf/tunnel-tls/tls.crt"},
    "guide-tls-existing": {"BAMF_API_TLS_CERT_FILE": "/etc/bamf/tls/tls.crt", "BAMF_TUNNEL_TLS_CERT_FILE": "/etc/bamf/tunnel-tls/tls.crt"},
    "guide-ca-existing": {"BAMF_CA_CERT_FILE": "/etc/bamf/ca/tls.crt", "BAMF_CA_KEY_FILE": "/etc/bamf/ca/tls.key"},
    "builtin-external": {
        "BAMF_TUNNEL_PORT": "8443",
        "DATABASE_URL": "postgres://bamf_app:<secret:ops-db/pw>@db.internal:6432/bamf_prod?sslmode=verify-full&sslrootcert=/etc/bamf/database-ca/ca.crt",
        "BAMF_DATABASE_READ_URL": "postgres://bamf_app:<secret:ops-db/pw>@db-ro.internal:5432/bamf_prod?sslmode=verify-full&sslrootcert=/etc/bamf/database-ca/ca.crt",
        "BAMF_DATABASE_CA_FILE": "/etc/bamf/database-ca/ca.crt",
        "REDIS_URL": "rediss://:<secret:ops-redis/pw>@redis.internal:6379/2?protocol=resp3",
        "BAMF_TRUSTED_PROXIES": "10.42.0.0/16", "--user-cert-lifetime": "8h", "--agent-cert-lifetime": "720h",
        "--bridge-cert-lifetime": "6h", "BAMF_AUDIT_RETENTION_DAYS": "30", "BAMF_LOG": "debug,bamf_api=trace",
    },
    "istio": {"BAMF_TUNNEL_PORT": "9443"},
}


def check_effects(docs, values, name: str):
    effects = GUIDE_EFFECTS[name]
    c = one(docs, "Deployment", f"{full_name(values)}-api")["spec"]["template"]["spec"]["containers"][0]
    for var, want in effects.items():
        if var.startswith("--"):
            got = [a.split("=", 1)[1] for a in c["args"] if a.startswith(var + "=")]
            expect(got == [want], f"API arg {var}={got} expected {want}")
        else:
            got = resolve_env(c, var)
            expect(got == want, f"API {var}:\n  got      {got}\n  expected {want}")
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    if name == "guide-minimal-production":
        check_sso_wiring(docs, values, c)
    if name == "guide-tls-cert-manager":
        for name, dns in (("bamf-api-tls", "bamf.example.com"), ("bamf-tunnel-tls", "*.tunnel.bamf.example.com")):
            crt = objects[("Certificate", name)]["spec"]
            expect(crt["dnsNames"] == [dns] and crt["issuerRef"]["name"] == "letsencrypt-prod" and crt["issuerRef"]["kind"] == "ClusterIssuer",
                   f"Certificate {name}: {crt}")

def check_sso_wiring(docs, values, c):
    """The guide's auth block reaches the API: auth.toml in the ConfigMap says password login
    off, auth0 the default provider with the guide's issuer, and its client secret and client id
    are files from bamf-auth0-credentials (keys client_secret and client_id) mounted where
    auth.toml names them; no secret value is in the ConfigMap."""
    fullname = full_name(values)
    cm = one(docs, "ConfigMap", f"{fullname}-auth")
    conf = tomllib.loads(cm["data"]["auth.toml"])
    expect(conf["local"] == {"enabled": False, "break_glass_users": ["admin"]}, f"auth.toml [local]: {conf['local']}")
    expect(conf["sso"]["default_provider"] == "auth0", f"auth.toml [sso]: {conf['sso']}")
    auth0 = conf["sso"]["oidc"]["auth0"]
    expect(auth0 == {"issuer_url": "https://myorg.us.auth0.com/",
                     "client_id_file": "/etc/bamf/sso/auth0/client_id",
                     "client_secret_file": "/etc/bamf/sso/auth0/client_secret"}, f"auth.toml auth0: {auth0}")
    pod = one(docs, "Deployment", f"{fullname}-api")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    expect(mounts["auth"]["mountPath"] == "/etc/bamf/auth" and volumes["auth"]["configMap"]["name"] == f"{fullname}-auth",
           "auth.toml is not mounted from its ConfigMap at /etc/bamf/auth")
    expect(mounts["sso-auth0"]["mountPath"] == "/etc/bamf/sso/auth0" and mounts["sso-auth0"].get("readOnly"),
           f"the auth0 secret mount: {mounts.get('sso-auth0')}")
    secret = volumes["sso-auth0"]["secret"]
    expect(secret["secretName"] == "bamf-auth0-credentials"
           and sorted((i["key"], i["path"]) for i in secret["items"]) == [("client_id", "client_id"), ("client_secret", "client_secret")],
           f"the auth0 secret volume: {secret}")
    # With clientId given, only the secret is mounted and the id is in auth.toml.
    docs2, _ = render(merge(values, {"auth": {"sso": {"oidc": {"auth0": {"clientId": "abc123",
        "roleRules": [{"value": "ops", "roles": ["ssh-prod", "db-readonly"]}]}}}}}))
    conf2 = tomllib.loads(one(docs2, "ConfigMap", f"{fullname}-auth")["data"]["auth.toml"])
    expect(conf2["sso"]["oidc"]["auth0"]["client_id"] == "abc123"
           and conf2["sso"]["oidc"]["auth0"]["role_rules"] == [{"value": "ops", "roles": ["ssh-prod", "db-readonly"]}],
           f"auth.toml with clientId and roleRules: {conf2}")
    pod2 = one(docs2, "Deployment", f"{fullname}-api")["spec"]["template"]["spec"]
    items = [i["path"] for v in pod2["volumes"] if v["name"] == "sso-auth0" for i in v["secret"]["items"]]
    expect(items == ["client_secret"], f"with clientId only the secret is mounted: {items}")


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
        elif k == "Pod":
            yield d, d["metadata"], d["spec"]
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


def resolve_env(container, name: str) -> str:
    """A variable's value with Kubernetes' $(VAR) expansion over the variables defined before
    it; a variable from a Secret reads as <secret:name/key>."""
    seen: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: seen.get(m[1], m[0]), e["value"])
        else:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            value = f"<secret:{ref['name']}/{ref['key']}>" if ref else f"<{e['name']}>"
        seen[e["name"]] = value
        if e["name"] == name:
            return value
    raise Fail(f"{container['name']}: no environment variable {name}")


def full_name(values: dict) -> str:
    return values.get("fullnameOverride") or RELEASE


def image_of(values: dict, component: str) -> str:
    g, i = values["image"], values[component]["image"]
    registry = (i["registry"] or g["registry"]).rstrip("/")
    ref = f"{registry}/{i['repository']}" if registry else i["repository"]
    if i["digest"]:
        return f"{ref}@{i['digest']}"
    return f"{ref}:{i['tag'] or g['tag'] or CHART_VERSION}"


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
    fullname = full_name(values)
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
    expect(conf["tunnel_domain"] == values["gateway"]["tunnelDomain"], "bridge tunnel_domain != gateway.tunnelDomain")
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
    expect(values["gateway"]["hostname"] in routes, "no [[route]] for gateway.hostname")
    expect(routes[values["gateway"]["hostname"]]["backend"] == f"{api_svc['metadata']['name']}:{api_port}", "API route backend != API Service")
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
    check_cert_only_volume(ca_vol, os.path.basename(conf["api"]["ca_file"]), "bridge", values)
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


def check_cert_only_volume(vol, filename, who, values=None):
    """A CA volume holds the certificate only: ca.crt from the chart's ConfigMap, or the CA
    Secret's certificate key (tls.crt, or ca.existing.certKey) and never its private key."""
    cert_keys = {"ca.crt", "tls.crt"}
    if values and values["ca"]["provider"] == "existing":
        cert_keys = {values["ca"]["existing"]["certKey"]}
    if "configMap" in vol:
        items = vol["configMap"].get("items", [])
    elif "secret" in vol:
        items = vol["secret"].get("items")
        expect(items is not None, f"{who}: CA Secret mounted whole (its tls.key would be there)")
    else:
        raise Fail(f"{who}: CA volume is neither a ConfigMap nor a Secret")
    expect([i["path"] for i in items] == [filename], f"{who}: CA volume must hold only {filename}, has {items}")
    expect(all(i["key"] in cert_keys for i in items), f"{who}: CA volume projects {items}")


def check_per_pod(docs, values, provider):
    fullname = full_name(values)
    maxr = values["bridge"]["maxReplicas"]
    enabled = values["gateway"]["enabled"]
    per_pod_svcs = [s for s in of_kind(docs, "Service") if s["metadata"].get("labels", {}).get("bamf.io/service-role") == "pod"]
    routes = [d for d in docs if d.get("kind") in ("IngressRouteTCP", "TLSRoute")
              and "bamf.io/bridge-ordinal" in d["metadata"].get("labels", {})]
    if provider == "builtin":
        expect(not per_pod_svcs and not routes, f"builtin renders {len(per_pod_svcs)} per-pod Services and {len(routes)} routes")
        expect(not [d for d in docs if d.get("kind") in ("IngressRouteTCP", "TLSRoute", "Gateway")], "builtin renders gateway routes")
        fds = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == f"{fullname}-bridge"]
        expect(len(fds) == int(enabled), f"gateway.enabled={enabled}: {len(fds)} front-door Services")
        if fds:
            expect(fds[0]["spec"]["type"] == values["gateway"]["frontDoor"]["type"], "front door Service type != gateway.frontDoor.type")
            expect(fds[0]["spec"]["ports"][0]["port"] == values["gateway"]["port"], "front door port != gateway.port")
        return
    kind = PER_POD_KINDS[provider]
    expect(len(per_pod_svcs) == maxr, f"{len(per_pod_svcs)} per-pod Services, bridge.maxReplicas={maxr}")
    if not enabled:
        expect(not [d for d in docs if d.get("kind") in ("IngressRouteTCP", "TLSRoute", "Gateway")], "gateway.enabled=false renders routes")
        return
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
        host = f"{i}.bridge.{values['gateway']['tunnelDomain']}"
        if kind == "IngressRouteTCP":
            expect(r[0]["spec"]["entryPoints"] == [values["gateway"]["traefik"]["entryPoint"]], f"{name}: entryPoints != gateway.traefik.entryPoint")
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
    if provider == "istio" and values["gateway"]["istio"]["createGateway"]:
        gw = of_kind(docs, "Gateway")
        expect(len(gw) == 1, "istio: one Gateway expected")
        expect(gw[0]["spec"]["gatewayClassName"] == values["gateway"]["className"], "Gateway class != gateway.className")
        hosts = {l["hostname"]: l for l in gw[0]["spec"]["listeners"]}
        expect(all(l["port"] == values["gateway"]["port"] for l in hosts.values()), "Gateway listener port != gateway.port")
        expect(f"*.bridge.{values['gateway']['tunnelDomain']}" in hosts, "Gateway has no *.bridge listener")
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
    ca = values["ca"]
    ca_secret = ca["existing"]["secretName"] if ca["provider"] == "existing" else f"{full_name(values)}-ca"
    cert_key = ca["existing"]["certKey"] if ca["provider"] == "existing" else "tls.crt"
    for d, meta, spec in pod_specs(docs):
        for v in spec.get("volumes", []):
            if v.get("secret", {}).get("secretName") == ca_secret:
                keys = [i["key"] for i in v["secret"].get("items") or [{"key": "*"}]]
                if meta["labels"]["app.kubernetes.io/component"] != "api":
                    expect(keys == [cert_key], f"{d['kind']} {d['metadata']['name']} mounts {keys} of the CA Secret")


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
    if not values["networkPolicy"]["enabled"]:
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
    if values["postgresql"]["bundled"]["enabled"]:
        expect(pg is not None, "bundled PostgreSQL has no pod")
        expect("api" in pg and pg <= {"api", "migrations", "backup"}, f"PostgreSQL admits {sorted(pg)}")
    rd = admitted("redis")
    if values["redis"]["bundled"]["enabled"]:
        expect(rd == {"api"}, f"Redis admits {rd and sorted(rd)}")
    # The bridges' peer port admits bridges only.
    bnp = one(docs, "NetworkPolicy", f"{full_name(values)}-bridge")
    for rule in bnp["spec"]["ingress"]:
        if any(p["port"] == "peer" for p in rule.get("ports", [])):
            expect(rule.get("from") and all(selector_matches(f["podSelector"], {"app.kubernetes.io/name": "bamf", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "bridge"}) and
                                            not selector_matches(f["podSelector"], {"app.kubernetes.io/name": "bamf", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "api"})
                                            for f in rule["from"]), "peer port must admit bridges only")


def check_jobs(docs, values):
    fn = full_name(values)
    pg = values["postgresql"]
    bundled = pg["bundled"]["enabled"]
    ext = pg["external"]
    hook = not bundled and not ext["externalSecret"]["enabled"]
    jobs = of_kind(docs, "Job")
    expect(len(jobs) == 1, f"{len(jobs)} migration Jobs")
    job = jobs[0]
    c = job["spec"]["template"]["spec"]["containers"][0]
    expect("--migrate-only" in c["args"] and c["image"] == image_of(values, "api"), "migration Job must run bamf-api --migrate-only")
    ann = job["metadata"].get("annotations", {})
    if not hook:
        expect("helm.sh/hook" not in ann and job["metadata"]["name"].endswith("-3"),
               "with the bundled PostgreSQL or an ExternalSecret the migration Job is a per-revision Job, not a hook")
        if bundled:
            expect(job["spec"]["template"]["spec"].get("initContainers"), "bundled: the Job must wait for PostgreSQL")
    else:
        expect(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"external: the migration Job must be a pre-install/pre-upgrade hook, has {ann}")
        if ext["password"] and not ext["existingSecret"]:
            ref = env_of(c)["BAMF_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]
            hs = one(docs, "Secret", ref["name"])
            expect(hs["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade" and
                   int(hs["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"]),
                   "the hook Job's Secret must be a hook created before it")
            expect(base64.b64decode(hs["data"][ref["key"]]).decode() == quote(ext["password"], safe=""),
                   "the hook Secret must hold the percent-encoded password")
    # The Job reaches the same database as the API (only a hook's password Secret may differ).
    api_c = one(docs, "Deployment", f"{fn}-api")["spec"]["template"]["spec"]["containers"][0]
    expect(env_of(c)["DATABASE_URL"]["value"] == env_of(api_c)["DATABASE_URL"]["value"], "migration DATABASE_URL != the API's")
    check_database_ca_mount(job["spec"]["template"]["spec"], c, values, "migration Job")
    backup = pg["backup"]
    crons = of_kind(docs, "CronJob")
    if backup["enabled"]:
        expect(len(crons) == 1, "backup enabled: one CronJob expected")
        spec = crons[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        c = spec["containers"][0]
        script = " ".join(c["command"])
        expect("pg_dump" in script and "-delete" in script and "RETENTION_DAYS" in script, "backup script must dump and delete old dumps")
        expect(env_of(c)["RETENTION_DAYS"]["value"] == str(backup["retentionDays"]), "RETENTION_DAYS != retentionDays")
        expect(resolve_env(c, "DATABASE_URL") == resolve_env(api_c, "DATABASE_URL"), "backup DATABASE_URL != the API's")
        check_database_ca_mount(spec, c, values, "backup")
        claim = [v for v in spec["volumes"] if v["name"] == "backups"][0]["persistentVolumeClaim"]["claimName"]
        existing = backup["persistence"]["existingClaim"]
        if existing:
            expect(claim == existing and not [p for p in of_kind(docs, "PersistentVolumeClaim") if p["metadata"]["name"] == claim],
                   "backup must use the existing claim and not create one")
        else:
            pvc = one(docs, "PersistentVolumeClaim", claim)
            expect(pvc["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "the backup PVC must survive uninstall")
        expect(crons[0]["spec"]["concurrencyPolicy"] == "Forbid", "backups must not overlap")
    else:
        expect(not crons, "backup disabled but a CronJob is rendered")


def check_database_ca_mount(pod, c, values, who):
    """With postgresql.external.caSecret/caConfigMap, the sslrootcert file of DATABASE_URL is
    under a mount of exactly that Secret or ConfigMap."""
    ext = values["postgresql"]["external"]
    url = env_of(c)["DATABASE_URL"]["value"]
    if values["postgresql"]["bundled"]["enabled"] or not (ext["caSecret"] or ext["caConfigMap"]):
        expect("sslrootcert" not in url, f"{who}: sslrootcert without a CA bundle")
        return
    path = parse_qs(urlsplit(url).query)["sslrootcert"][0]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    expect(os.path.dirname(path) in mounts, f"{who}: sslrootcert {path} is not under a mount")
    vol = vols[mounts[os.path.dirname(path)]["name"]]
    src = vol.get("secret", {}).get("secretName") or vol.get("configMap", {}).get("name")
    expect(src == (ext["caSecret"] or ext["caConfigMap"]), f"{who}: the CA bundle is mounted from {src}")
    items = (vol.get("secret") or vol.get("configMap"))["items"]
    expect(items == [{"key": ext["caKey"], "path": os.path.basename(path)}], f"{who}: CA bundle items {items}")


def expected_database_url(values, host=None, port=None) -> str:
    """DATABASE_URL as the documentation composes it, with the password as <secret:name/key>."""
    fn = full_name(values)
    pg = values["postgresql"]
    if pg["bundled"]["enabled"]:
        a = pg["bundled"]["auth"]
        return f"postgres://{a['username']}:<secret:{fn}-postgresql/POSTGRES_PASSWORD>@{fn}-postgresql:5432/{a['database']}?sslmode=disable"
    e = pg["external"]
    if e["existingSecret"]:
        ref = f"{e['existingSecret']}/{e['existingSecretKey']}"
    elif e["externalSecret"]["enabled"] or e["password"]:
        ref = f"{fn}-database/password"
    else:
        ref = None
    auth = f"{e['username']}:<secret:{ref}>" if ref else e["username"]
    query = f"sslmode={e['sslmode']}"
    if e["caSecret"] or e["caConfigMap"]:
        query += f"&sslrootcert=/etc/bamf/database-ca/{e['caKey']}"
    return f"postgres://{auth}@{host or e['host']}:{port or e['port']}/{e['database']}?{query}"


def expected_redis_url(values) -> str:
    fn = full_name(values)
    rd = values["redis"]
    if rd["bundled"]["enabled"]:
        return f"redis://:<secret:{fn}-redis/REDIS_PASSWORD>@{fn}-redis:6379/0?protocol=resp3"
    e = rd["external"]
    ref = f"{e['existingSecret']}/{e['existingSecretKey']}" if e["existingSecret"] else (f"{fn}-redis-external/password" if e["password"] else None)
    auth = f":<secret:{ref}>@" if ref else ""
    return f"{'rediss' if e['tls'] else 'redis'}://{auth}{e['host']}:{e['port']}/{e['database']}?protocol=resp3"


def check_api_wiring(docs, values):
    fn = full_name(values)
    dep = one(docs, "Deployment", f"{fn}-api")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_of(c)
    gw, cfg = values["gateway"], values["api"]["config"]
    expect(c["image"] == image_of(values, "api"), f"API image {c['image']} != {image_of(values, 'api')}")
    expect(env["BAMF_API_HOST"]["value"] == gw["hostname"], "BAMF_API_HOST != gateway.hostname")
    expect(env["BAMF_TUNNEL_DOMAIN"]["value"] == gw["tunnelDomain"], "BAMF_TUNNEL_DOMAIN != gateway.tunnelDomain")
    expect(env["BAMF_TUNNEL_PORT"]["value"] == str(gw["port"]), f"BAMF_TUNNEL_PORT {env['BAMF_TUNNEL_PORT']['value']} != gateway.port {gw['port']}")
    expect(env["BAMF_LOG"]["value"] == (cfg["log_level"] or values["log"]["level"]), "BAMF_LOG != api.config.log_level")
    expect(env["BAMF_AUDIT_RETENTION_DAYS"]["value"] == str(cfg["audit"]["retention_days"]), "BAMF_AUDIT_RETENTION_DAYS != api.config.audit.retention_days")
    certs = cfg["certificates"]
    for flag, key in (("user", "user_ttl_hours"), ("agent", "agent_ttl_hours"), ("bridge", "bridge_ttl_hours")):
        expect(f"--{flag}-cert-lifetime={certs[key]}h" in c["args"], f"--{flag}-cert-lifetime={certs[key]}h not in the API args {c['args']}")
    expect(env["BAMF_API_LISTEN"]["value"].startswith("0.0.0.0:"), "API must listen on 0.0.0.0")
    alt = env["BAMF_API_ALT_NAMES"]["value"].split(",")
    expect({f"{fn}-api", f"{fn}-api.{NAMESPACE}.svc"} <= set(alt), f"BAMF_API_ALT_NAMES lacks the Service names: {alt}")

    # Stores: the URLs are composed from the values; passwords only through Secrets.
    want = expected_database_url(values)
    expect(resolve_env(c, "DATABASE_URL") == want, f"DATABASE_URL {resolve_env(c, 'DATABASE_URL')} != {want}")
    replica = values["postgresql"]["external"]["readReplica"]
    if not values["postgresql"]["bundled"]["enabled"] and replica["enabled"]:
        want = expected_database_url(values, replica["host"], replica["port"])
        expect(resolve_env(c, "BAMF_DATABASE_READ_URL") == want, f"BAMF_DATABASE_READ_URL {resolve_env(c, 'BAMF_DATABASE_READ_URL')} != {want}")
    else:
        expect("BAMF_DATABASE_READ_URL" not in env, "BAMF_DATABASE_READ_URL without a read replica")
    check_database_ca_mount(pod, c, values, "API")
    if "sslrootcert" in env["DATABASE_URL"]["value"]:
        expect(env["BAMF_DATABASE_CA_FILE"]["value"] == parse_qs(urlsplit(env["DATABASE_URL"]["value"]).query)["sslrootcert"][0],
               "BAMF_DATABASE_CA_FILE != the URL's sslrootcert")
    else:
        expect("BAMF_DATABASE_CA_FILE" not in env, "BAMF_DATABASE_CA_FILE without a CA bundle")
    want = expected_redis_url(values)
    expect(resolve_env(c, "REDIS_URL") == want, f"REDIS_URL {resolve_env(c, 'REDIS_URL')} != {want}")
    ext = values["postgresql"]["external"]
    if not values["postgresql"]["bundled"]["enabled"] and ext["externalSecret"]["enabled"]:
        es = one(docs, "ExternalSecret", f"{fn}-database")
        x = ext["externalSecret"]
        expect(es["apiVersion"] == x["apiVersion"] and es["spec"]["secretStoreRef"] == x["secretStoreRef"], "ExternalSecret store")
        expect(es["spec"]["target"]["name"] == f"{fn}-database", "ExternalSecret target != the Secret DATABASE_URL reads")
        want = {"key": x["remoteRef"]["key"], **({"property": x["remoteRef"]["property"]} if x["remoteRef"]["property"] else {})}
        expect(es["spec"]["data"] == [{"secretKey": "password", "remoteRef": want}], f"ExternalSecret data {es['spec']['data']}")
        expect("urlquery" in es["spec"]["target"]["template"]["data"]["password"], "the ExternalSecret must percent-encode the password")
    else:
        expect(not of_kind(docs, "ExternalSecret"), "an ExternalSecret without postgresql.external.externalSecret.enabled")
    if not values["postgresql"]["bundled"]["enabled"] and ext["password"] and not ext["existingSecret"] and not ext["externalSecret"]["enabled"]:
        s = one(docs, "Secret", f"{fn}-database")
        expect(base64.b64decode(s["data"]["password"]).decode() == quote(ext["password"], safe=""),
               "the inline password must be stored percent-encoded")
    for name in ("BAMF_ADMIN_PASSWORD", "BAMF_CA_ENCRYPTION_KEY", "BAMF_BRIDGE_JOIN_TOKEN"):
        expect("secretKeyRef" in env[name].get("valueFrom", {}), f"{name} must come from a Secret")
    chart_secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] in chart_secrets:
            expect(ref["key"] in chart_secrets[ref["name"]]["data"], f"{e['name']}: Secret {ref['name']} has no key {ref['key']}")
    # The CA sealing key: the given Secret, else the chart's, kept on uninstall.
    seal = env["BAMF_CA_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]
    if values["ca"]["encryptionKeyExistingSecret"]:
        expect(seal == {"name": values["ca"]["encryptionKeyExistingSecret"], "key": values["ca"]["encryptionKeyExistingSecretKey"]},
               f"BAMF_CA_ENCRYPTION_KEY from {seal}")
    else:
        s = one(docs, "Secret", seal["name"])
        expect(s["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", "the sealing key Secret must survive uninstall")
        key = base64.b64decode(base64.b64decode(s["data"][seal["key"]]))
        expect(len(key) == 32, "the sealing key must be base64 of 32 bytes")
        if values["ca"]["encryptionKey"]:
            expect(base64.b64decode(s["data"][seal["key"]]).decode() == values["ca"]["encryptionKey"], "ca.encryptionKey not used")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    for var in ("BAMF_CA_CERT_FILE", "BAMF_CA_KEY_FILE"):
        expect(os.path.dirname(env[var]["value"]) in mounts, f"{var} is not under a mount")
    ca = values["ca"]
    ca_vol = vols[mounts[os.path.dirname(env["BAMF_CA_CERT_FILE"]["value"])]["name"]]["secret"]
    if ca["provider"] == "existing":
        x = ca["existing"]
        expect(ca_vol["secretName"] == x["secretName"] and ca_vol["items"] == [{"key": x["certKey"], "path": "tls.crt"}, {"key": x["keyKey"], "path": "tls.key"}],
               f"ca.existing: the API mounts {ca_vol}")
    else:
        expect(ca_vol["secretName"] == f"{fn}-ca", f"the API's CA volume is {ca_vol['secretName']}")
    # Public certificates: cert-manager's or the existing Secrets, mounted whole (updated in place).
    tls = values["tls"]
    for var, secret, cert in (("BAMF_API_TLS", tls["existingSecret"], f"{fn}-api-tls"),
                              ("BAMF_TUNNEL_TLS", tls["existingTunnelSecret"], f"{fn}-tunnel-tls")):
        want_secret = cert if tls["certManager"]["enabled"] else secret
        if not want_secret:
            expect(f"{var}_CERT_FILE" not in env and f"{var}_KEY_FILE" not in env, f"{var}_* without a certificate")
            continue
        for suffix, key in (("CERT_FILE", "tls.crt"), ("KEY_FILE", "tls.key")):
            path = env[f"{var}_{suffix}"]["value"]
            m = mounts.get(os.path.dirname(path))
            expect(m is not None and "subPath" not in m, f"{var}_{suffix} {path} must be under a whole-Secret mount (no subPath)")
            v = vols[m["name"]]["secret"]
            expect(v["secretName"] == want_secret and {"key": key, "path": os.path.basename(path)} in v["items"],
                   f"{var}_{suffix}: mounted from {v['secretName']} {v['items']}, expected {want_secret}/{key}")
    certs = {d["metadata"]["name"]: d for d in of_kind(docs, "Certificate") if not d["spec"].get("isCA")}
    if tls["certManager"]["enabled"]:
        issuer = tls["certManager"]["issuerRef"]
        for name, dns in ((f"{fn}-api-tls", [gw["hostname"]]), (f"{fn}-tunnel-tls", [f"*.{gw['tunnelDomain']}"])):
            crt = certs.get(name)
            expect(crt is not None, f"no Certificate {name}")
            expect(crt["spec"]["dnsNames"] == dns and crt["spec"]["secretName"] == name, f"Certificate {name}: {crt['spec']}")
            expect(crt["spec"]["issuerRef"] == issuer, f"Certificate {name}: issuerRef {crt['spec']['issuerRef']} != {issuer}")
    else:
        expect(not certs, f"public Certificates without tls.certManager.enabled: {sorted(certs)}")
    if values["api"]["trustedProxies"]:
        expect(env["BAMF_TRUSTED_PROXIES"]["value"] == ",".join(values["api"]["trustedProxies"]), "BAMF_TRUSTED_PROXIES")
    else:
        expect("BAMF_TRUSTED_PROXIES" not in env, "BAMF_TRUSTED_PROXIES without api.trustedProxies")

    # Images of the other components.
    bridge = one(docs, "StatefulSet", f"{fn}-bridge")["spec"]["template"]["spec"]["containers"][0]
    expect(bridge["image"] == image_of(values, "bridge"), f"bridge image {bridge['image']} != {image_of(values, 'bridge')}")

    # helm test: /health and /ready through the API Service, verified against the internal CA.
    api_svc = one(docs, "Service", f"{fn}-api")
    tests = [d for d in of_kind(docs, "Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    urls = set()
    for t in tests:
        tc = t["spec"]["containers"][0]
        expect(tc["image"] == f"{values['tests']['image']['repository']}:{values['tests']['image']['tag']}", "helm test image != tests.image")
        url = tc["command"][-1]
        urls.add(url)
        ca_file = tc["command"][tc["command"].index("--cacert") + 1]
        tm = {m["mountPath"]: m for m in tc["volumeMounts"]}
        tv = {v["name"]: v for v in t["spec"]["volumes"]}
        check_cert_only_volume(tv[tm[os.path.dirname(ca_file)]["name"]], os.path.basename(ca_file), "helm test", values)
        expect(t["spec"]["restartPolicy"] == "Never", "helm test pods must not restart")
    base = f"https://{api_svc['metadata']['name']}:{api_svc['spec']['ports'][0]['port']}"
    expect(urls == {f"{base}/health", f"{base}/ready"}, f"helm test pods check {sorted(urls)}")

    # Agent (when enabled): TOML ports and files agree with the Deployment.
    agents = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == f"{fn}-agent"]
    expect(bool(agents) == bool(values["agent"]["enabled"]), "agent Deployment iff agent.enabled")
    if agents:
        a = agents[0]
        ac = a["spec"]["template"]["spec"]["containers"][0]
        expect(ac["image"] == image_of(values, "agent"), f"agent image {ac['image']}")
        conf = tomllib.loads(one(docs, "ConfigMap", f"{fn}-agent")["data"]["agent.toml"])
        expect(conf["api_url"] == f"https://{api_svc['metadata']['name']}:{api_svc['spec']['ports'][0]['port']}", "agent api_url != API Service")
        expect(addr_port(conf["health_listen"]) == container_port([ac], "health") == container_port([ac], ac["readinessProbe"]["httpGet"]["port"]),
               "agent health_listen, container port and probe disagree")
        expect([r["name"] for r in conf["resources"]] == [t["name"] for t in values["agent"]["targets"]], "agent [[resources]] != agent.targets")
        expect(conf["resources"][0].get("labels") == values["agent"]["targets"][0].get("labels"), "agent labels")
        am = {m["mountPath"]: m for m in ac["volumeMounts"]}
        av = {v["name"]: v for v in a["spec"]["template"]["spec"]["volumes"]}
        check_cert_only_volume(av[am[os.path.dirname(conf["api_ca_file"])]["name"]], os.path.basename(conf["api_ca_file"]), "agent", values)
        expect(conf["data_dir"] in am, "agent data_dir not mounted")
        expect(a["spec"]["replicas"] == 1 and a["spec"]["strategy"]["type"] == "Recreate", "one agent per name: replicas 1, Recreate")


def check_generated_ca(docs, values):
    if values["ca"]["provider"] != "helm":
        return
    openssl = shutil.which("openssl")
    expect(openssl is not None, "openssl is needed to check the generated CA (apt-get install openssl)")
    s = one(docs, "Secret", f"{full_name(values)}-ca")
    expect(s["type"] == "kubernetes.io/tls" and s["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep",
           "the generated CA Secret must be kubernetes.io/tls and kept on uninstall")
    crt = base64.b64decode(s["data"]["tls.crt"]).decode()
    key = base64.b64decode(s["data"]["tls.key"]).decode()
    expect(key.startswith("-----BEGIN PRIVATE KEY-----\n"), "the CA key must be PKCS#8 (bamf-api reads no other)")
    cm = one(docs, "ConfigMap", f"{full_name(values)}-ca-cert")
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
    ext = SCENARIOS["builtin-external"]
    expect_render_fails(merge(ok, {"bridge": {"replicaz": 3}}), "replicaz")
    expect_render_fails(merge(ok, {"gateway": {"provider": "nginx"}}), "provider")
    expect_render_fails(merge(ok, {"api": {"port": "8443"}}), "port")
    expect_render_fails(merge(ok, {"postgresql": {"bundled": {"auth": {"password": "p@ss:word"}}}}), "password")
    expect_render_fails(merge(ok, {"gateway": {"hostname": ""}}), "gateway.hostname is required")
    expect_render_fails(merge(ok, {"postgresql": {"external": {"enabled": True, "host": "db"}}}), "mutually exclusive")
    expect_render_fails(merge(ext, {"postgresql": {"external": {"password": "x"}}}), "mutually exclusive")
    expect_render_fails(merge(ext, {"postgresql": {"external": {"sslmode": "verify"}}}), "sslmode")
    expect_render_fails(merge(ext, {"postgresql": {"external": {"host": ""}}}), "postgresql.external.host is required")
    expect_render_fails(merge(ext, {"redis": {"external": {"enabled": False}}}), "redis: set external.enabled")
    expect_render_fails(merge(ok, {"agent": {"joinToken": ""}}), "agent.enabled needs")
    expect_render_fails(merge(ok, {"ca": {"provider": "existing"}}), "ca.existing.secretName")
    expect_render_fails(merge(ok, {"ca": {"provider": "generated"}}), "provider")
    expect_render_fails(merge(ok, {"bridge": {"replicas": 11}}), "maxReplicas")
    expect_render_fails(merge(ok, {"bridge": {"autoscaling": {"enabled": True, "maxReplicas": 11}}}), "bridge.autoscaling.maxReplicas")
    expect_render_fails(merge(ok, {"tls": {"certManager": {"enabled": True}}}), "issuerRef.name")
    expect_render_fails(merge(ok, {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "x"}}, "existingSecret": "y"}}), "mutually exclusive")
    expect_render_fails(merge(ok, {"bridge": {"apiRouteProxyProtocol": True}}), "api.trustedProxies")
    expect_render_fails(merge(ok, {"api": {"config": {"certificates": {"user_ttl_hours": 0}}}}), "user_ttl_hours")
    # The old keys are gone (nothing was released): each one is refused, not ignored.
    for old in ({"apiHost": "bamf.test.example"}, {"tunnelDomain": "t.test.example"},
                {"gateway": {"frontDoor": {"port": 443}}}, {"gateway": {"traefik": {"entryPoints": ["websecure"]}}},
                {"gateway": {"istio": {"gatewayClassName": "istio"}}}, {"image": {"repository": "bamf"}},
                {"ca": {"existingSecret": "x"}}, {"postgresql": {"external": {"url": "postgres://x"}}},
                {"redis": {"external": {"url": "redis://x"}}}, {"postgresql": {"bundled": {"database": "bamf"}}}):
        expect_render_fails(merge(ok, old), "additional properties")
    # Single sign-on: password login off needs a provider; a provider needs its issuer and Secret.
    expect_render_fails(merge(ok, {"auth": {"local": {"enabled": False}}}), "needs single sign-on")
    expect_render_fails(merge(ok, {"auth": {"sso": {"oidc": {"okta": {"enabled": True, "issuerUrl": "https://x"}}}}}), "existingSecret is required")
    expect_render_fails(merge(ok, {"auth": {"sso": {"oidc": {"okta": {"enabled": True, "existingSecret": "s"}}}}}), "issuerUrl is required")
    expect_render_fails(merge(ok, {"auth": {"sso": {"oidc": {"okta": {"enabled": True, "issuerUrl": "https://x", "existingSecret": "s", "clientSecret": "inline"}}}}}), "not take the client secret inline")
    expect_render_fails(merge(ok, {"auth": {"sso": {"defaultProvider": "okta"}}}), "not an enabled provider")
    expect_render_fails(merge(ok, {"auth": {"sso": {"oidc": {"Bad_Name": {"enabled": False}}}}}), "provider name")
    expect_render_fails(merge(ok, {"auth": {"sso": {"oidc": {"okta": {"algorithms": ["HS256"]}}}}}), "algorithms")
    # Capabilities not built yet: the render fails and says which.
    expect_render_fails(merge(ok, {"web": {"standalone": {"enabled": True}}}), "web UI is not built yet")


def check_guide_refusals():
    """The guide's web block is accepted by the schema but fails the render with the missing
    capability named; its auth block (in the minimal production values) renders (see
    check_sso_wiring)."""
    minimal = guide("minimal-production")
    expect("auth" in minimal, "the guide's minimal production values have an auth block")
    expect_render_fails(merge(GUIDE_MINIMAL, guide("web")), "web UI is not built yet")
    for block in (minimal, guide("web")):
        errors = list(jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text())).iter_errors(merge(DEFAULTS, block)))
        expect(not errors, f"values.schema.json refuses a guide block: {[e.message for e in errors[:3]]}")


def check_subchart():
    """The guide's subchart example: a parent chart with bamf in charts/ and the guide's parent
    values (fullnameOverride, a shared ServiceAccount) plus the hosts: every object validates,
    is named myapp-bamf-*, and the pods run as the shared account."""
    deps = guide("subchart-parent-Chart")["dependencies"]
    expect([d["name"] for d in deps] == [yaml.safe_load((CHART / "Chart.yaml").read_text())["name"]],
           f"the guide's parent chart depends on {deps}, not on this chart's name")
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp, "parent")
        shutil.copytree(CHART, parent / "charts" / "bamf")
        (parent / "Chart.yaml").write_text("apiVersion: v2\nname: parent\nversion: 0.1.0\n")
        values = merge(guide("subchart-parent-values"),
                       {"bamf": {"gateway": {"hostname": "bamf.example.com", "tunnelDomain": "tunnel.bamf.example.com"}}})
        (parent / "values.yaml").write_text(yaml.safe_dump(values))
        out = helm.Chart.load(str(parent)).render({}, name="myapp", namespace=NAMESPACE, revision=1, is_install=True)
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    expect(docs, "the parent chart rendered nothing")
    problems = []
    for d in docs:
        for v in KUBE_VERSIONS:
            try:
                validate(d, v)
            except Fail as e:
                problems.append(str(e))
    expect(not problems, "\n".join(problems[:10]))
    names = [d["metadata"]["name"] for d in docs]
    expect(all(n.startswith("myapp-bamf") for n in names), f"objects not named myapp-bamf-*: {[n for n in names if not n.startswith('myapp-bamf')]}")
    expect(not of_kind(docs, "ServiceAccount"), "serviceAccount.create=false still renders a ServiceAccount")
    for d, meta, spec in pod_specs(docs):
        if meta.get("labels", {}).get("app.kubernetes.io/component") in ("api", "bridge", "agent", "migrations", "test"):
            expect(spec.get("serviceAccountName") == "myapp-shared-sa",
                   f"{d['kind']} {d['metadata']['name']} runs as {spec.get('serviceAccountName')}")


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
             "migrations.resources", "postgresql.bundled.primary.resources", "postgresql.backup.resources",
             "redis.bundled.resources", "web.resources", "tests.resources", "auth.sso.oidc"}


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
           "BAMF_ADMIN_PASSWORD", "BAMF_CA_ENCRYPTION_KEY", "BAMF_CA_CERT_FILE", "BAMF_CA_KEY_FILE", "BAMF_LOG",
           "BAMF_DATABASE_READ_URL", "BAMF_DATABASE_CA_FILE", "BAMF_API_TLS_CERT_FILE", "BAMF_API_TLS_KEY_FILE",
           "BAMF_AUDIT_RETENTION_DAYS", "BAMF_AUTH_CONFIG"}


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

def public_api_url(values: dict) -> str:
    gw = values["gateway"]
    return f"https://{gw['hostname']}" + ("" if gw["port"] == 443 else f":{gw['port']}")


def run_scenario(name: str, given: dict, bridge_tomls: list[str]):
    docs_holder: dict = {}
    values = merge(DEFAULTS, given)

    def do_render():
        docs, notes = render(given)
        expect(notes.strip(), "NOTES.txt rendered empty")
        login = f"bamf login --api {public_api_url(values)} --user admin --ca-file bamf-ca.pem"
        expect(login in notes, f"NOTES.txt does not show `{login}`:\n{notes}")
        names = [(d["kind"], d["metadata"]["name"]) for d in docs]
        dupes = {n for n in names if names.count(n) > 1}
        expect(not dupes, f"duplicate objects: {dupes}")
        for d in docs:
            expect(len(d["metadata"]["name"]) <= 63, f"{d['kind']} name longer than 63: {d['metadata']['name']}")
            labels = d["metadata"].get("labels", {})
            expect(labels.get("app.kubernetes.io/instance") == RELEASE and "app.kubernetes.io/component" in labels,
                   f"{d['kind']} {d['metadata']['name']}: missing standard labels")
        docs_holder["docs"] = docs

    check(f"{name}: helm lint --strict (k8s {', '.join(KUBE_VERSIONS)})", lint, given)
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
    provider = values["gateway"]["provider"]
    check(f"{name}: Services, workloads and ports agree", check_services_and_workloads, docs, values)
    check(f"{name}: bridge config, StatefulSet, Services and probes agree", check_bridge, docs, values, bridge_tomls)
    check(f"{name}: per-pod Services and routes ({provider})", check_per_pod, docs, values, provider)
    check(f"{name}: no secret value outside Secrets", check_no_secret_in_configmaps, docs, values)
    check(f"{name}: securityContext on every pod and container", check_security_contexts, docs, values)
    check(f"{name}: NetworkPolicies", check_network_policies, docs, values)
    check(f"{name}: migration Job and backup CronJob", check_jobs, docs, values)
    check(f"{name}: API and agent wiring", check_api_wiring, docs, values)
    check(f"{name}: generated CA", check_generated_ca, docs, values)
    if name in GUIDE_EFFECTS:
        check(f"{name}: the documented effect reaches the API", check_effects, docs, values, name)


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
    check("the guide's web block: accepted by the schema, refused by the render with the reason", check_guide_refusals)
    check("the guide's subchart example renders in a parent chart", check_subchart)
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
