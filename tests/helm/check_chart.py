#!/usr/bin/env python3
"""Checks the Helm chart helm/grm-cluster offline, with no cluster and no helm binary.

For the default values and each file in helm/grm-cluster/ci/, it runs what these helm
commands do, through helm-python-sdk (Helm 4's Go SDK as a shared library):

    helm lint --strict helm/grm-cluster [-f FILE]
    helm template grm helm/grm-cluster --namespace grm [-f FILE]

then validates every rendered object with kubernetes-validate --strict against Kubernetes
K8S_VERSION (CRD kinds, which it has no schema for, are skipped by name and checked here), and
asserts what the chart promises: probes that work (kubelet's grpc probes cannot speak TLS),
GPU requests, TLS and token mounts, etcd wiring, selectors that select, and so on. Secure by
default: TLS with mutual TLS between nodes, a generated certificate that really covers every
name a node registers under or is dialled at (checked with TLS handshakes through Python's
ssl, no cluster), the bundled etcd over TLS with client-certificate auth, the cluster token
on every node; internal services are never left open while the public API is guarded. Values
that cannot work or would be unsafe must be refused. Prints what it checked; exits 1 on any
failure.

Run from anywhere: .venv-test/bin/python tests/helm/check_chart.py
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import helm_python as helm
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parents[2]
CHART = "helm/grm-cluster"
RELEASE = "grm"
NAMESPACE = "grm"
DOMAIN = "cluster.local"
# The newest Kubernetes whose schemas kubernetes-validate (pinned in scripts/setup.sh) ships.
K8S_VERSION = "1.37.0"
# Custom resources: kubernetes-validate has no schema for them; their output is asserted below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
VALUES_FILES = [
    None,
    f"{CHART}/ci/external-etcd-values.yaml",
    f"{CHART}/ci/tls-values.yaml",
    f"{CHART}/ci/tls-off-values.yaml",
]
GRM_COMPONENTS = {"router", "grm-worker", "meta-worker", "aggregator"}
MEMBER_COMPONENTS = GRM_COMPONENTS - {"router"}
FULLNAME = f"{RELEASE}-grm-cluster"
TLS_DIR = "/etc/grm/tls"
TOKEN_DIR = "/etc/grm/cluster-token"

failures: list[str] = []
# The helm commands this run stands for; the README's "Deploy on Kubernetes" must show each.
commands: list[str] = []


_mark = [0]


def begin() -> None:
    """Starts a section: its summary says ok only if none of its checks failed."""
    _mark[0] = len(failures)


def ok(summary: str) -> None:
    n = len(failures) - _mark[0]
    print(f"  ok   {summary}" if n == 0 else f"  FAIL {summary}: {n} check(s) failed (above)")


def check(cond: bool, what: str) -> bool:
    if not cond:
        failures.append(what)
        print(f"  FAIL {what}")
    return cond


# ---------------------------------------------------------------------------------------------
# Reading the rendered objects


class Rendered:
    def __init__(self, manifests: dict[str, str]):
        self.notes = ""
        self.objects: list[dict] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc["__template"] = path
                    self.objects.append(doc)

    def kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def component(self, kind: str, component: str) -> list[dict]:
        return [o for o in self.kind(kind) if labels(o).get("app.kubernetes.io/component") == component]

    def workloads(self) -> list[dict]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def workload(self, component: str) -> dict | None:
        found = [w for w in self.workloads() if component_of(w) == component]
        return found[0] if len(found) == 1 else None


def labels(o: dict) -> dict:
    return o.get("metadata", {}).get("labels", {}) or {}


def component_of(o: dict) -> str:
    return labels(o).get("app.kubernetes.io/component", "")


def pod_spec(w: dict) -> dict:
    return w["spec"]["template"]["spec"]


def main_container(w: dict) -> dict:
    return pod_spec(w)["containers"][0]


def args_of(c: dict) -> list[str]:
    return list(c.get("command", [])) + list(c.get("args", []))


def flag(c: dict, name: str) -> list[str]:
    """The values of --name=VALUE among a container's arguments (all of them)."""
    return [a.split("=", 1)[1] for a in args_of(c) if a.startswith(f"--{name}=")]


def has_flag(c: dict, name: str) -> bool:
    return f"--{name}" in args_of(c) or bool(flag(c, name))


def env_of(c: dict) -> dict:
    return {e["name"]: e for e in c.get("env", [])}


def port_number(c: dict, port) -> int | None:
    if isinstance(port, int):
        return port if any(p.get("containerPort") == port for p in c.get("ports", [])) else None
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def selects(selector: dict, pod_labels: dict) -> bool:
    return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def tls_secret_name(v: dict) -> str:
    """The TLS Secret every pod mounts: the user's, or the one the chart generates."""
    return v["tls"]["secretName"] or f"{FULLNAME}-tls"


def token_secret_name(v: dict) -> str:
    return v["clusterToken"]["existingSecret"] or f"{FULLNAME}-cluster-token"


def secret(r: Rendered, name: str) -> dict | None:
    found = [o for o in r.kind("Secret") if o["metadata"]["name"] == name]
    return found[0] if len(found) == 1 else None


def secret_data(sec: dict, key: str) -> bytes:
    return base64.b64decode(sec.get("data", {}).get(key, ""))


def volumes_of(w: dict) -> dict:
    return {x["name"]: x for x in pod_spec(w).get("volumes", [])}


def mounts_of(c: dict) -> dict:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def secret_mounted(w: dict, c: dict, volume: str, secret_name: str, path: str) -> bool:
    """Whether container c mounts Secret secret_name read-only at path (as volume `volume`)."""
    vol, mount = volumes_of(w).get(volume, {}), mounts_of(c).get(volume, {})
    return (vol.get("secret", {}).get("secretName") == secret_name
            and mount.get("mountPath") == path and mount.get("readOnly") is True)


def tls_handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> str | None:
    """A TLS handshake in memory, the client naming `name`: None when both sides accept it,
    else why not (the certificate does not cover the name, a client certificate is missing...)."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    srv = server.wrap_bio(bios[0], bios[1], server_side=True)
    cli = client.wrap_bio(bios[2], bios[3], server_hostname=name)
    done = {"client": False, "server": False}
    try:
        for _ in range(16):
            for side, conn in (("client", cli), ("server", srv)):
                if not done[side]:
                    try:
                        conn.do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
            bios[0].write(bios[3].read())
            bios[2].write(bios[1].read())
            # Under TLS 1.3 the client is done first; the server judges its certificate after.
            if all(done.values()):
                return None
        return "the handshake did not finish"
    except ssl.SSLError as e:
        return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# The checks of one rendering


def check_schemas(r: Rendered) -> None:
    begin()
    validated, skipped = 0, []
    for o in r.objects:
        doc = {k: v for k, v in o.items() if k != "__template"}
        name = f"{o['kind']}/{o['metadata']['name']} ({o['__template']})"
        if (o["apiVersion"], o["kind"]) in CRD_KINDS:
            skipped.append(o["kind"])
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
            validated += 1
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            check(False, f"{name} is not valid Kubernetes {K8S_VERSION}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            check(False, f"{name}: no schema in Kubernetes {K8S_VERSION} ({e.message})")
    ok(f"kubernetes-validate --strict -k {K8S_VERSION}: {validated} objects valid"
          + (f"; skipped (CRD, asserted below): {', '.join(sorted(skipped))}" if skipped else ""))


def check_wiring(r: Rendered) -> None:
    """Selectors select, named ports exist, services behind StatefulSets are headless."""
    begin()
    workloads = r.workloads()
    for w in workloads:
        sel = w["spec"]["selector"]["matchLabels"]
        check(selects(sel, w["spec"]["template"]["metadata"]["labels"]),
              f"{w['kind']}/{w['metadata']['name']}: its selector does not match its pods")
        if w["kind"] == "StatefulSet":
            svc = [s for s in r.kind("Service") if s["metadata"]["name"] == w["spec"]["serviceName"]]
            check(len(svc) == 1 and svc[0]["spec"].get("clusterIP") == "None"
                  and svc[0]["spec"].get("publishNotReadyAddresses") is True,
                  f"StatefulSet/{w['metadata']['name']}: serviceName must be a headless Service "
                  "publishing not-ready addresses")
    for s in r.kind("Service"):
        targets = [w for w in workloads if selects(s["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        if not check(len(targets) == 1, f"Service/{s['metadata']['name']} selects {len(targets)} workloads"):
            continue
        c = main_container(targets[0])
        for p in s["spec"]["ports"]:
            check(port_number(c, p["targetPort"]) is not None,
                  f"Service/{s['metadata']['name']}: targetPort {p['targetPort']} is not a port of its pods")
    for p in r.kind("PodDisruptionBudget"):
        n = sum(selects(p["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]) for w in workloads)
        check(n == 1, f"PodDisruptionBudget/{p['metadata']['name']} selects {n} workloads")
    covered = {component_of(p) for p in r.kind("PodDisruptionBudget")}
    check(covered == {component_of(w) for w in workloads},
          f"every workload has a PodDisruptionBudget (have {sorted(covered)})")
    for w in workloads:
        ps = pod_spec(w)
        check(ps.get("securityContext", {}).get("runAsNonRoot") is True,
              f"{w['metadata']['name']}: pods must run as non-root")
        check(ps.get("automountServiceAccountToken") is False,
              f"{w['metadata']['name']}: no service account token is needed")
    ok(f"wiring: {len(workloads)} workloads, {len(r.kind('Service'))} services, "
          f"{len(r.kind('PodDisruptionBudget'))} disruption budgets")


def probe_handlers(p: dict) -> list[str]:
    return [h for h in ("grpc", "httpGet", "tcpSocket", "exec") if h in p]


def check_probes(r: Rendered, v: dict) -> None:
    begin()
    tls = v["tls"]["enabled"]
    n = 0
    for w in r.workloads():
        comp = component_of(w)
        for c in pod_spec(w)["containers"]:
            where = f"{w['metadata']['name']}/{c['name']}"
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                p = c.get(kind)
                if p is None and kind == "startupProbe":
                    continue
                if not check(p is not None, f"{where}: no {kind}"):
                    continue
                n += 1
                hs = probe_handlers(p)
                if not check(len(hs) == 1, f"{where}: {kind} has handlers {hs}"):
                    continue
                h = hs[0]
                if h in ("grpc", "httpGet", "tcpSocket"):
                    check(port_number(c, p[h]["port"]) is not None,
                          f"{where}: {kind} port {p[h]['port']} is not a container port")
                if comp not in GRM_COMPONENTS:
                    continue
                grpc_port = listen_port(flag(c, "listen")[0])
                if not tls:
                    check(h == "grpc" and p["grpc"]["port"] == grpc_port,
                          f"{where}: {kind} must be kubelet's grpc check on the --listen port {grpc_port}")
                    continue
                # TLS: kubelet's grpc probe cannot do the handshake; what is used instead must
                # reach a plaintext port this process really serves, or speak TLS itself.
                check(h != "grpc", f"{where}: {kind} is a grpc probe, which cannot speak TLS")
                if comp == "router":
                    check(h == "httpGet" and port_number(c, p["httpGet"]["port"]) == listen_port(flag(c, "http-listen")[0]),
                          f"{where}: {kind} must be an httpGet on the --http-listen port")
                elif comp.endswith("-worker"):
                    check(h == "httpGet" and p["httpGet"]["path"] == "/metrics"
                          and port_number(c, p["httpGet"]["port"]) == listen_port(flag(c, "metrics-listen")[0]),
                          f"{where}: {kind} must be an httpGet of /metrics on the --metrics-listen port "
                          "(a worker's metrics server serves /metrics only)")
                elif comp == "aggregator":
                    if v["tls"]["aggregatorProbe"] == "http":
                        check(h == "httpGet" and p["httpGet"]["path"] == "/metrics"
                              and port_number(c, p["httpGet"]["port"]) == listen_port(flag(c, "metrics-listen")[0]),
                              f"{where}: {kind} must be an httpGet of /metrics on the --metrics-listen port")
                    elif v["tls"]["aggregatorProbe"] == "exec":
                        cmd = p.get("exec", {}).get("command", [])
                        good = (h == "exec" and cmd[:1] == ["/usr/local/bin/grpc_health_probe"]
                              and f"-addr=127.0.0.1:{grpc_port}" in cmd and "-tls" in cmd
                              and f"-tls-ca-cert={TLS_DIR}/ca.crt" in cmd
                              and any(a.startswith("-tls-server-name=") for a in cmd))
                        if v["tls"]["mutual"]:
                            good = good and f"-tls-client-cert={TLS_DIR}/tls.crt" in cmd and f"-tls-client-key={TLS_DIR}/tls.key" in cmd
                        check(good, f"{where}: {kind} must run grpc_health_probe over TLS with the mounted files: {cmd}")
                    else:
                        check(h == "tcpSocket", f"{where}: {kind} must be a tcpSocket probe")
    ok(f"probes: {n} probes, liveness and readiness on every container"
          + (f" (TLS: HTTP on plaintext ports; aggregators: {v['tls']['aggregatorProbe']})" if tls else " (kubelet grpc on each --listen port)"))


ETCD_TLS_FLAGS = {
    "cert-file": f"{TLS_DIR}/tls.crt",
    "key-file": f"{TLS_DIR}/tls.key",
    "trusted-ca-file": f"{TLS_DIR}/ca.crt",
    "peer-cert-file": f"{TLS_DIR}/tls.crt",
    "peer-key-file": f"{TLS_DIR}/tls.key",
    "peer-trusted-ca-file": f"{TLS_DIR}/ca.crt",
}


def check_etcd(r: Rendered, v: dict) -> None:
    begin()
    external = v["etcd"]["external"]["endpoints"]
    tls = v["tls"]["enabled"]
    if external:
        want = ",".join(external)
        check(not r.component("StatefulSet", "etcd") and not r.component("Service", "etcd")
              and not r.component("PodDisruptionBudget", "etcd"),
              "external etcd: no bundled etcd objects are rendered")
    else:
        sts = r.component("StatefulSet", "etcd")
        if not check(len(sts) == 1, "bundled etcd: one StatefulSet"):
            return
        sts = sts[0]
        replicas, name, svc = v["etcd"]["replicas"], sts["metadata"]["name"], sts["spec"]["serviceName"]
        check(sts["spec"]["replicas"] == replicas, f"etcd has {replicas} members")
        check(sts["spec"].get("podManagementPolicy") == "Parallel",
              "etcd members start in parallel (each waits for the others to elect a leader)")
        domain = f"{svc}.{NAMESPACE}.svc.{DOMAIN}"
        c = main_container(sts)
        # TLS on: etcd serves TLS to clients and peers and refuses those without a certificate
        # of the CA, so nobody outside the cluster can write a member into it.
        scheme = "https" if tls else "http"
        peers = ",".join(f"{name}-{i}={scheme}://{name}-{i}.{domain}:2380" for i in range(replicas))
        check(flag(c, "initial-cluster") == [peers], f"etcd --initial-cluster names every member: {flag(c, 'initial-cluster')}")
        check(flag(c, "name") == ["$(POD_NAME)"]
              and flag(c, "initial-advertise-peer-urls") == [f"{scheme}://$(POD_NAME).{domain}:2380"]
              and flag(c, "advertise-client-urls") == [f"{scheme}://$(POD_NAME).{domain}:2379"],
              f"etcd members are named and advertised as their pods ({scheme})")
        check(flag(c, "listen-client-urls") == [f"{scheme}://0.0.0.0:2379"]
              and flag(c, "listen-peer-urls") == [f"{scheme}://0.0.0.0:2380"],
              f"etcd listens for clients and peers over {scheme}")
        check("POD_NAME" in env_of(c), "etcd gets POD_NAME")
        args = args_of(c)
        if tls:
            for f, path in ETCD_TLS_FLAGS.items():
                check(flag(c, f) == [path], f"etcd --{f}={path} (have {flag(c, f)})")
            check("--client-cert-auth" in args and "--peer-client-cert-auth" in args,
                  "etcd requires client certificates of clients (--client-cert-auth) and peers (--peer-client-cert-auth)")
            check(secret_mounted(sts, c, "tls", tls_secret_name(v), TLS_DIR),
                  f"etcd mounts the TLS Secret {tls_secret_name(v)} read-only at {TLS_DIR}")
        else:
            check(not any(a.startswith(("--cert-file", "--key-file", "--trusted-ca-file", "--client-cert-auth", "--peer-"))
                          for a in args) and "tls" not in volumes_of(sts),
                  "etcd: no TLS flags or mount when TLS is off")
        # Probes: kubelet has no client certificate, so under client-cert auth the client port
        # cannot answer it; they must use the plaintext /health of --listen-metrics-urls.
        metrics = flag(c, "listen-metrics-urls")
        murl = urlsplit(metrics[0]) if len(metrics) == 1 else None
        if check(murl is not None and murl.scheme == "http" and murl.port is not None,
                 f"etcd --listen-metrics-urls is one plain http URL (have {metrics})"):
            check(murl.port not in (2379, 2380) and port_number(c, murl.port) == murl.port,
                  f"etcd's probe port {murl.port} is a container port apart from the client and peer ports")
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = c.get(kind, {})
                h = p.get("httpGet", {})
                check(probe_handlers(p) == ["httpGet"] and port_number(c, h.get("port")) == murl.port
                      and h.get("path", "").startswith("/health") and h.get("scheme", "HTTP") == "HTTP",
                      f"etcd {kind}: GET /health on the plaintext probe port {murl.port}")
            # A lost quorum must not restart every member: liveness asks this member only.
            check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/health?serializable=true",
                  "etcd liveness is serializable (this member only)")
        want = ",".join(f"{scheme}://{name}-{i}.{domain}:2379" for i in range(replicas))
    for w in r.workloads():
        if component_of(w) in GRM_COMPONENTS:
            got = flag(main_container(w), "etcd")
            check(got == [want], f"{w['metadata']['name']}: --etcd={got}, want {want}")
    n = len(want.split(","))
    how = "external" if external else ("bundled, TLS with client-certificate auth" if tls else "bundled, plaintext")
    ok(f"etcd: {how}; the same {n} {urlsplit(want.split(',')[0]).scheme} client URLs in every node's --etcd")


def check_workers(r: Rendered, v: dict) -> None:
    begin()
    for role, comp, role_flag in (("grm", "grm-worker", "grm"), ("meta", "meta-worker", "meta-rm")):
        begin()
        wv = v["workers"][role]
        w = r.workload(comp)
        if not wv["enabled"]:
            check(w is None, f"{comp}: disabled, yet rendered")
            continue
        if not check(w is not None and w["kind"] == "StatefulSet", f"{comp}: one StatefulSet"):
            continue
        name = w["metadata"]["name"]
        c, ps = main_container(w), pod_spec(w)
        gpus, res = wv["gpu"]["count"], wv["gpu"]["resourceName"]
        check(gpus > 0, f"{comp}: the chart's CI values give workers a GPU")
        for part in ("requests", "limits"):
            got = c.get("resources", {}).get(part, {}).get(res)
            check(got == gpus, f"{name}: resources.{part}[{res}] = {got}, want {gpus}")
        check(flag(c, "device") == ["cuda:0"], f"{name}: --device=cuda:0 with a GPU")
        check(flag(c, "role") == [role_flag], f"{name}: --role={role_flag}")
        check(any(t.get("key") == "nvidia.com/gpu" for t in ps.get("tolerations", [])),
              f"{name}: tolerates the GPU nodes' taint")
        check(ps.get("nodeSelector", {}) == wv["nodeSelector"], f"{name}: nodeSelector from values")
        grpc = port_number(c, "grpc")
        check(flag(c, "listen") == [f"0.0.0.0:{grpc}"], f"{name}: --listen on the grpc port")
        check(flag(c, "metrics-listen") == [f"0.0.0.0:{port_number(c, 'metrics')}"], f"{name}: --metrics-listen on the metrics port")
        want_adv = f"$(POD_NAME).{w['spec']['serviceName']}.{NAMESPACE}.svc.{DOMAIN}:{grpc}"
        check(flag(c, "advertise") == [want_adv], f"{name}: --advertise={flag(c, 'advertise')}, want {want_adv}")
        check(ps["terminationGracePeriodSeconds"] > int(flag(c, "drain-timeout-s")[0]),
              f"{name}: the grace period outlasts --drain-timeout-s")
        check("startupProbe" in c, f"{name}: a startup probe covers model loading")
        frac = wv.get("gpuMemoryFraction")
        check(flag(c, "gpu-memory-fraction") == ([] if frac is None else [str(frac)]),
              f"{name}: --gpu-memory-fraction follows values ({frac})")
        # The model.
        model = wv["model"]
        src = model["source"]
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        vols = {x["name"]: x for x in ps.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        model_dir = flag(c, "model")
        if src == "embedded":
            check(model_dir == [f"/opt/grm/models/{role_flag}"] and "model" not in mounts,
                  f"{name}: the embedded model from the image")
        else:
            check(len(model_dir) == 1 and model_dir[0].startswith("/models")
                  and mounts.get("model", {}).get("mountPath") == "/models"
                  and mounts["model"].get("readOnly") is True,
                  f"{name}: --model={model_dir} under the read-only /models mount")
        if src == "pvc":
            check(vols.get("model", {}).get("persistentVolumeClaim", {}).get("claimName") == model["pvc"]["claimName"]
                  and mounts["model"].get("subPath", "") == model["pvc"]["subPath"],
                  f"{name}: the model from PVC {model['pvc']['claimName']}")
        if src == "download":
            init = {i["name"]: i for i in ps.get("initContainers", [])}
            dl = init.get("download-model")
            if check(dl is not None, f"{name}: an init container downloads the model"):
                env = env_of(dl)
                check(env["MODEL_REPO"]["value"] == model["download"]["repo"]
                      and env["MODEL_DIR"]["value"] == model_dir[0],
                      f"{name}: the download goes where --model points")
                secret = v["modelDownload"]["hfTokenSecret"]
                if secret["name"]:
                    ref = env.get("HF_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
                    check(ref == {"name": secret["name"], "key": secret["key"]},
                          f"{name}: HF_TOKEN from Secret {secret['name']}")
                else:
                    check("HF_TOKEN" not in env, f"{name}: no token without a Secret")
                check(any(m["name"] == "model" and m["mountPath"] == "/models" for m in dl["volumeMounts"]),
                      f"{name}: the init container writes the model volume")
            if model["download"]["storage"]["persistent"]:
                check("model" in claims and "model" not in vols, f"{name}: a volume claim per pod keeps the download")
            else:
                check("emptyDir" in vols.get("model", {}) and not claims, f"{name}: the download in an emptyDir")
        ok(f"{comp}: {wv['replicas']} × {gpus} {res}, model {src}, advertised as {want_adv}")


def check_router(r: Rendered, v: dict) -> None:
    begin()
    rv = v["router"]
    w = r.workload("router")
    if not check(w is not None and w["kind"] == "Deployment", "router: one Deployment"):
        return
    c = main_container(w)
    svc = r.component("Service", "router")
    ports = {p["name"]: p for p in svc[0]["spec"]["ports"]} if svc else {}
    check(set(ports) == {"grpc", "http"}, f"router Service ports grpc and http (have {sorted(ports)})")
    check(flag(c, "listen") == [f"0.0.0.0:{rv['grpcPort']}"] and flag(c, "http-listen") == [f"0.0.0.0:{rv['httpPort']}"],
          "router listens on its grpc and http ports")
    hpa = r.kind("HorizontalPodAutoscaler")
    if rv["autoscaling"]["enabled"]:
        good = (len(hpa) == 1 and hpa[0]["apiVersion"] == "autoscaling/v2"
              and hpa[0]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": w["metadata"]["name"]}
              and "replicas" not in w["spec"])
        check(good, "router: an autoscaling/v2 HPA owns the Deployment's replicas")
    else:
        check(not hpa and w["spec"].get("replicas") == rv["replicas"], "router: fixed replicas, no HPA")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {x["name"]: x for x in pod_spec(w).get("volumes", [])}
    if v["auth"]["enabled"]:
        sec = vols.get("auth", {}).get("secret", {})
        check(flag(c, "auth-token-file") == ["/etc/grm/auth/token"]
              and sec.get("secretName") == v["auth"]["existingSecret"]
              and sec.get("items") == [{"key": v["auth"]["key"], "path": "token"}]
              and mounts.get("auth", {}).get("mountPath") == "/etc/grm/auth",
              "router: the token Secret mounted and --auth-token-file given")
    else:
        check(not has_flag(c, "auth-token-file") and "auth" not in vols, "router: no token without auth")
    ok(f"router: {'HPA ' + str(rv['autoscaling']['minReplicas']) + '..' + str(rv['autoscaling']['maxReplicas']) if rv['autoscaling']['enabled'] else str(rv['replicas']) + ' replicas'}"
          f", auth {'on' if v['auth']['enabled'] else 'off'}")


def check_aggregator(r: Rendered, v: dict) -> None:
    begin()
    w = r.workload("aggregator")
    if not v["aggregator"]["enabled"]:
        check(w is None and not r.component("Service", "aggregator"), "aggregator disabled: nothing rendered")
        ok("aggregator: disabled (routers aggregate)")
        return
    if not check(w is not None, "aggregator: one workload"):
        return
    c = main_container(w)
    port = port_number(c, "grpc")
    want = f"$(POD_NAME).{w['spec']['serviceName']}.{NAMESPACE}.svc.{DOMAIN}:{port}"
    check(flag(c, "advertise") == [want], f"aggregator --advertise={flag(c, 'advertise')}, want {want}")
    check(flag(c, "metrics-listen") == [f"0.0.0.0:{port_number(c, 'metrics')}"], "aggregator: --metrics-listen on the metrics port")
    ok(f"aggregator: {w['spec']['replicas']} replicas advertised as {want}, /metrics on its metrics port")


def check_tls(r: Rendered, v: dict) -> None:
    begin()
    t = v["tls"]
    for w in r.workloads():
        comp = component_of(w)
        if comp not in GRM_COMPONENTS:
            continue
        c, name = main_container(w), w["metadata"]["name"]
        if not t["enabled"]:
            check("tls" not in volumes_of(w) and not any(a.startswith("--tls") for a in args_of(c)),
                  f"{name}: no TLS when off")
            continue
        check(secret_mounted(w, c, "tls", tls_secret_name(v), TLS_DIR),
              f"{name}: TLS Secret {tls_secret_name(v)} mounted read-only at {TLS_DIR}")
        check(flag(c, "tls-cert") == [f"{TLS_DIR}/tls.crt"] and flag(c, "tls-key") == [f"{TLS_DIR}/tls.key"]
              and flag(c, "tls-ca") == [f"{TLS_DIR}/ca.crt"], f"{name}: --tls-cert, --tls-key, --tls-ca")
        # Members refuse callers without a certificate of the CA under tls.mutual; the router's
        # --tls-client-auth applies to its public clients too, hence its own value.
        want_client_auth = t["routerClientAuth"] if comp == "router" else t["mutual"]
        check(("--tls-client-auth" in args_of(c)) == want_client_auth,
              f"{name}: --tls-client-auth {'present' if want_client_auth else 'absent'}")
    generated = [s for s in r.kind("Secret") if component_of(s) == "tls"]
    if t["enabled"] and not t["secretName"]:
        check_generated_tls(r, v)
    else:
        check(not generated, f"no generated TLS Secret unless TLS is on without tls.secretName (have {len(generated)})")
    if t["enabled"]:
        ok(f"TLS: Secret {tls_secret_name(v)}{' (generated)' if not t['secretName'] else ''} and --tls-* on every node, "
           f"mutual {'on' if t['mutual'] else 'off'}, router client auth {'on' if t['routerClientAuth'] else 'off'}")


def registered_names(r: Rendered) -> list[str]:
    """Every name a node is dialled at and verified against: the pod names workers and
    aggregators register in etcd (their --advertise, one per replica and one more), the etcd members' names
    in the nodes' --etcd and etcd's --initial-cluster, the router Service as clients in the
    cluster name it, the name an exec probe checks, and the loopback of a port-forward."""
    names: list[str] = []
    bundled_etcd = bool(r.component("StatefulSet", "etcd"))  # an external etcd has its own certificate
    for w in r.workloads():
        c = main_container(w)
        tls_names = flag(c, "advertise-tls-name")
        for adv in flag(c, "advertise"):
            host = adv.rsplit(":", 1)[0]
            if host == "$(POD_IP)":
                # Routers register by pod IP (a Deployment's pods have no stable names); peers
                # check their certificate against the router Service's name instead, which
                # must then be one the certificate covers (the Services' names, below).
                if has_flag(c, "tls-cert"):
                    svc = f"{w['metadata']['name']}.{NAMESPACE}.svc"
                    check(tls_names == [svc], f"{w['metadata']['name']}: --advertise-tls-name={tls_names} names its Service {svc}")
                continue
            if check(host.startswith("$(POD_NAME)."), f"{w['metadata']['name']}: --advertise={adv} names the pod"):
                # One more than the replicas: scaling up must not need a new certificate.
                names += [host.replace("$(POD_NAME)", f"{w['metadata']['name']}-{i}") for i in range(w["spec"]["replicas"] + 1)]
        etcd_urls = flag(c, "etcd") + [u.split("=", 1)[1] for u in ",".join(flag(c, "initial-cluster")).split(",") if "=" in u]
        for urls in etcd_urls if bundled_etcd else []:
            names += [urlsplit(u).hostname for u in urls.split(",")]
        for kind in ("livenessProbe", "readinessProbe"):
            for a in c.get(kind, {}).get("exec", {}).get("command", []):
                if a.startswith("-tls-server-name="):
                    names.append(a.split("=", 1)[1])
    for svc in r.component("Service", "router"):
        n = svc["metadata"]["name"]
        names += [n, f"{n}.{NAMESPACE}", f"{n}.{NAMESPACE}.svc", f"{n}.{NAMESPACE}.svc.{DOMAIN}"]
    names += ["localhost", "127.0.0.1"]
    return sorted(set(names))


def check_generated_tls(r: Rendered, v: dict) -> None:
    """The generated Secret: a CA and a certificate that every node can serve and call with,
    for every name it is reached at, proven by TLS handshakes (mutual when tls.mutual)."""
    start = len(failures)
    name = tls_secret_name(v)
    leaf, ca = secret(r, name), secret(r, f"{FULLNAME}-tls-ca")
    if not check(leaf is not None and ca is not None, f"TLS on without tls.secretName: Secrets {name} and {FULLNAME}-tls-ca are generated"):
        return
    check(leaf.get("type") == "kubernetes.io/tls" and set(leaf.get("data", {})) == {"tls.crt", "tls.key", "ca.crt"},
          f"Secret {name}: kubernetes.io/tls with tls.crt, tls.key and ca.crt (has {sorted(leaf.get('data', {}))})")
    check(bool(leaf["metadata"].get("annotations", {}).get("grm-cluster/tls-fingerprint")),
          f"Secret {name}: the fingerprint of its names, kept to reuse it on upgrade")
    check(secret_data(ca, "ca.crt") == secret_data(leaf, "ca.crt") and secret_data(ca, "ca.key").startswith(b"-----BEGIN"),
          f"Secret {FULLNAME}-tls-ca holds the same CA and its key")
    for w in r.workloads():
        for vol in volumes_of(w).values():
            check(vol.get("secret", {}).get("secretName") != f"{FULLNAME}-tls-ca",
                  f"{w['metadata']['name']}: the CA's key is mounted in no pod")
    names = registered_names(r)
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for key in ("tls.crt", "tls.key", "ca.crt"):
            files[key] = os.path.join(d, key)
            Path(files[key]).write_bytes(secret_data(leaf, key))
        Path(d, "ca.key").write_bytes(secret_data(ca, "ca.key"))
        try:
            # The key is the certificate's, and the CA's key is the CA's.
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.load_cert_chain(files["tls.crt"], files["tls.key"])
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files["ca.crt"], os.path.join(d, "ca.key"))
        except ssl.SSLError as e:
            check(False, f"Secret {name}: a certificate and key that do not go together: {e}")
            return
        mutual = v["tls"]["mutual"]
        if mutual:
            server.verify_mode = ssl.CERT_REQUIRED
            server.load_verify_locations(files["ca.crt"])
        # A node calling another: verifies against ca.crt and the name it dials, presents its own.
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(files["ca.crt"])
        client.load_cert_chain(files["tls.crt"], files["tls.key"])
        for n in names:
            err = tls_handshake(server, client, n)
            check(err is None, f"the generated certificate does not serve {n}: {err}")
        # Controls: the same handshakes must fail for a name outside the release, and (mutual)
        # for a caller without a certificate, or the ones above prove nothing.
        outsider = f"{FULLNAME}-grm-worker-0.{FULLNAME}-grm-worker-headless.elsewhere.svc.{DOMAIN}"
        check(tls_handshake(server, client, outsider) is not None,
              f"the generated certificate must not cover {outsider}")
        if mutual:
            anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            anonymous.load_verify_locations(files["ca.crt"])
            check(tls_handshake(server, anonymous, names[0]) is not None,
                  "under mutual TLS a caller without a certificate must be refused")
    pods = [n for n in names if re.match(r".*-\d+\.", n)]
    summary = (f"generated TLS certificate: {len(names)} names by handshake{' (mutual)' if mutual else ''}, "
               f"{len(pods)} of them pods' (e.g. {pods[0] if pods else '-'}); not {outsider.split('.')[2]}'s")
    n = len(failures) - start
    print(f"  ok   {summary}" if n == 0 else f"  FAIL {summary}: {n} check(s) failed (above)")


def check_cluster_token(r: Rendered, v: dict) -> None:
    begin()
    ct = v["clusterToken"]
    name = token_secret_name(v)
    generated = [s for s in r.kind("Secret") if component_of(s) == "cluster-token"]
    for w in r.workloads():
        if component_of(w) not in GRM_COMPONENTS:
            continue
        c, wname = main_container(w), w["metadata"]["name"]
        if ct["enabled"]:
            check(flag(c, "cluster-token-file") == [f"{TOKEN_DIR}/token"],
                  f"{wname}: --cluster-token-file={TOKEN_DIR}/token (have {flag(c, 'cluster-token-file')})")
            check(secret_mounted(w, c, "cluster-token", name, TOKEN_DIR)
                  and volumes_of(w)["cluster-token"]["secret"].get("items") == [{"key": ct["key"], "path": "token"}],
                  f"{wname}: Secret {name} (key {ct['key']}) mounted read-only at {TOKEN_DIR}/token")
        else:
            check(not has_flag(c, "cluster-token-file") and "cluster-token" not in volumes_of(w),
                  f"{wname}: no cluster token when off")
    if ct["enabled"] and not ct["existingSecret"]:
        sec = secret(r, name)
        if check(sec is not None and generated == [sec], f"a generated Secret {name} holds the cluster token"):
            token = secret_data(sec, ct["key"]).decode()
            check(re.fullmatch(r"[A-Za-z0-9]{48}", token) is not None,
                  f"Secret {name}: the token is 48 random letters and digits (have {len(token)} characters)")
    else:
        check(not generated, "no generated cluster token Secret unless enabled without existingSecret")
    if ct["enabled"]:
        ok(f"cluster token: Secret {name}{' (generated)' if not ct['existingSecret'] else ''} "
           "mounted and passed as --cluster-token-file on every grm node")


def check_guarded(r: Rendered, v: dict) -> None:
    """When the public API is guarded, so is every internal service; the router the chart
    renders would start (it refuses --auth-token-file without internal credentials)."""
    begin()
    router = r.workload("router")
    if router is None:
        return
    rc = main_container(router)
    if not has_flag(rc, "auth-token-file"):
        return
    # The router's own start check: a cluster token, or a certificate to present under mutual TLS.
    router_creds = has_flag(rc, "cluster-token-file") or (
        has_flag(rc, "tls-cert") and has_flag(rc, "tls-key") and has_flag(rc, "tls-ca"))
    check(router_creds, "the router has --auth-token-file but neither --cluster-token-file nor a certificate for mutual TLS: it would not start")
    for w in r.workloads():
        if component_of(w) in MEMBER_COMPONENTS:
            c = main_container(w)
            check(has_flag(c, "cluster-token-file") or "--tls-client-auth" in args_of(c),
                  f"{w['metadata']['name']}: the public API is guarded, but it would answer callers without credentials")
    ok("public API guarded: the router has internal credentials and every worker and aggregator requires them")


def check_env(r: Rendered, v: dict) -> None:
    begin()
    o = v["otel"]
    for w in r.workloads():
        c, name = main_container(w), w["metadata"]["name"]
        env = c.get("env", [])
        # $(VAR) only expands for variables defined earlier in the list.
        defined: set[str] = set()
        for e in env:
            for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                check(ref in defined, f"{name}: {e['name']} uses $({ref}) before it is defined")
            defined.add(e["name"])
        for a in args_of(c):
            for ref in re.findall(r"\$\((\w+)\)", a):
                check(ref in defined, f"{name}: argument {a} uses $({ref}), which is not in env")
        if component_of(w) not in GRM_COMPONENTS:
            continue
        names = env_of(c)
        check(names.get("GRM_LOG_FORMAT", {}).get("value") == v["log"]["format"], f"{name}: GRM_LOG_FORMAT")
        if o["enabled"]:
            check(names.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") == o["endpoint"]
                  and names.get("OTEL_SERVICE_NAME", {}).get("value") == f"grm-{component_of(w)}",
                  f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME")
        else:
            check(not any(k.startswith("OTEL_") for k in names), f"{name}: no OTEL_* when off")
    if o["enabled"]:
        ok(f"OpenTelemetry: OTEL_EXPORTER_OTLP_ENDPOINT={o['endpoint']} on every grm container")


def check_service_monitor(r: Rendered, v: dict) -> None:
    begin()
    sms = r.kind("ServiceMonitor")
    if not v["serviceMonitor"]["enabled"]:
        check(not sms, "no ServiceMonitor unless enabled")
        return
    if not check(len(sms) == 1 and sms[0]["apiVersion"] == "monitoring.coreos.com/v1", "one monitoring.coreos.com/v1 ServiceMonitor"):
        return
    sm = sms[0]
    for k, val in v["serviceMonitor"]["labels"].items():
        check(labels(sm).get(k) == val, f"ServiceMonitor label {k}={val}")
    selected = [s for s in r.kind("Service") if selects(sm["spec"]["selector"]["matchLabels"], labels(s))]
    comps = sorted(component_of(s) for s in selected)
    want = sorted(c for c in ("router", "grm-worker", "meta-worker", "aggregator")
                  if c == "router" or (c == "aggregator" and v["aggregator"]["enabled"])
                  or (c.endswith("-worker") and v["workers"][c.split("-")[0]]["enabled"]))
    check(comps == want, f"ServiceMonitor selects the router, worker and aggregator Services (selects {comps})")
    check(sm["spec"].get("namespaceSelector", {}).get("matchNames") == [NAMESPACE], "ServiceMonitor: the release's namespace")
    for ep in sm["spec"]["endpoints"]:
        serving = [s["metadata"]["name"] for s in selected if any(p["name"] == ep["port"] for p in s["spec"]["ports"])]
        check(bool(serving) and ep.get("path") == "/metrics", f"ServiceMonitor endpoint port {ep['port']} is on a selected Service")
    ok(f"ServiceMonitor: scrapes {', '.join(comps)} on ports {[e['port'] for e in sm['spec']['endpoints']]}")


def check_grafana_dashboard(r: Rendered, v: dict) -> None:
    """The dashboard ConfigMap: labelled for Grafana's sidecar, holding exactly the dashboard
    deploy/grafana ships (both written by deploy/grafana/make_dashboard.py)."""
    begin()
    g = v["grafanaDashboard"]
    maps = [c for c in r.kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    if not g["enabled"]:
        check(not maps, "no dashboard ConfigMap unless enabled")
        return
    if not check(len(maps) == 1, f"one dashboard ConfigMap (have {len(maps)})"):
        return
    cm = maps[0]
    for k, val in g["labels"].items():
        check(labels(cm).get(k) == val, f"dashboard ConfigMap label {k}={val}")
    shipped = Path("deploy/grafana/grm-cluster.json").read_text()
    data = cm.get("data", {}).get("grm-cluster.json", "")
    check(json.loads(data) == json.loads(shipped), "the ConfigMap holds deploy/grafana/grm-cluster.json")
    panels = [p for p in json.loads(data)["panels"] if p["type"] != "row"]
    ok(f"Grafana dashboard ConfigMap with {len(panels)} panels, labelled {g['labels']}")


def check_notes(r: Rendered, v: dict) -> None:
    begin()
    check(f"{RELEASE}-grm-cluster-router" in r.notes, "NOTES.txt names the router Service")
    # Plaintext etcd: NOTES.txt says what that allows.
    external = v["etcd"]["external"]["endpoints"]
    plaintext = any(e.startswith("http://") for e in external) if external else not v["tls"]["enabled"]
    warned = "WARNING: the nodes reach etcd in plaintext" in r.notes
    check(warned == plaintext, f"NOTES.txt warns about a plaintext etcd exactly when it is one (plaintext: {plaintext})")
    if plaintext and not v["clusterToken"]["enabled"]:
        check("forged scores" in r.notes, "NOTES.txt: without a cluster token, a member written into etcd judges with forged scores")
    if v["tls"]["enabled"] and not v["tls"]["secretName"]:
        check(f"get secret {tls_secret_name(v)}" in r.notes, "NOTES.txt: how to get the generated CA")
    if plaintext:
        ok("NOTES.txt warns that anyone who can write to the plaintext etcd can register a member")


# ---------------------------------------------------------------------------------------------


def run_values_file(chart: helm.Chart, path: str | None) -> None:
    suffix = f" -f {path}" if path else ""
    values = helm.values_from_yaml(Path(path).read_text()) if path else None

    commands.append(f"helm lint --strict {CHART}{suffix}")
    print(f"$ {commands[-1]}")
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    for m in problems:
        check(False, f"lint: {m.get('path', '')}: {m['error'].strip()}")
    if not problems:
        print(f"  ok   lint: no warnings or errors ({len(report['messages'])} info)")

    commands.append(f"helm template {RELEASE} {CHART} --namespace {NAMESPACE}{suffix}")
    print(f"$ {commands[-1]}")
    try:
        r = Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))
    except helm.HelmError as e:
        check(False, f"render: {e}")
        return
    merged = chart.merge_values(values)
    sections = [
        lambda: check_schemas(r),
        lambda: check_wiring(r),
        lambda: check_probes(r, merged),
        lambda: check_etcd(r, merged),
        lambda: check_router(r, merged),
        lambda: check_workers(r, merged),
        lambda: check_aggregator(r, merged),
        lambda: check_tls(r, merged),
        lambda: check_cluster_token(r, merged),
        lambda: check_guarded(r, merged),
        lambda: check_env(r, merged),
        lambda: check_service_monitor(r, merged),
        lambda: check_grafana_dashboard(r, merged),
        lambda: check_notes(r, merged),
    ]
    for section in sections:
        try:
            section()
        except Exception as e:  # a malformed object: report it, go on with the next section
            check(False, f"a check stopped on the rendered output: {e!r}")


AUTH = {"enabled": True, "existingSecret": "grm-auth"}
# Values that cannot work or would be unsafe, and the words the refusal must contain.
REFUSED = [
    ({"router": {"replica": 3}}, ["additional properties 'replica'"]),
    ({"etcd": {"replicas": 2}}, ["/etcd/replicas"]),
    ({"workers": {"grm": {"model": {"source": "s3"}}}}, ["/workers/grm/model/source"]),
    ({"tls": {"enabled": False, "routerClientAuth": True}}, ["tls.routerClientAuth", "tls.enabled"]),
    ({"tls": {"generated": {"extraDnsNames": ["not a name"]}}}, ["/tls/generated/extraDnsNames"]),
    ({"auth": {"enabled": True}}, ["auth.existingSecret"]),
    # The public API guarded, the internal services open (the issue this chart refuses).
    ({"auth": AUTH, "tls": {"enabled": False}, "clusterToken": {"enabled": False}},
     ["auth.enabled", "tls.enabled=false", "clusterToken.enabled=false"]),
    # TLS, but the workers and aggregators not on mutual TLS: they would answer anyone.
    ({"auth": AUTH, "tls": {"mutual": False}, "clusterToken": {"enabled": False}},
     ["auth.enabled", "clusterToken.enabled=false", "tls.mutual"]),
    ({"clusterToken": {"enabled": False, "existingSecret": "grm-cluster-token"}},
     ["clusterToken.existingSecret", "clusterToken.enabled"]),
    ({"otel": {"enabled": True}}, ["otel.endpoint"]),
    ({"workers": {"meta": {"model": {"source": "pvc"}}}}, ["workers.meta.model.pvc.claimName"]),
    ({"workers": {"grm": {"model": {"source": "download"}}}}, ["workers.grm.model.download.repo"]),
]

# Their neighbours, which must render (so that the refusals above are not blanket ones), each
# checked like the values files.
ACCEPTED = [
    # `--set tls.enabled=false` alone: tls.mutual's default does not get in the way.
    {"tls": {"enabled": False}},
    # The public API guarded without TLS: the cluster token guards the internal services.
    {"auth": AUTH, "tls": {"enabled": False}},
    # ...or, with no cluster token, mutual TLS between nodes: the router presents its
    # certificate to the members (its public clients need none)...
    {"auth": AUTH, "clusterToken": {"enabled": False}},
    # ...or on the router's public API too (and the aggregators probed over TLS: the
    # generated certificate must serve the probe's name).
    {"auth": AUTH, "tls": {"routerClientAuth": True, "aggregatorProbe": "exec"}, "clusterToken": {"enabled": False}},
    # Nothing guarded at all is allowed (a laptop), if loudly (NOTES.txt).
    {"tls": {"enabled": False}, "clusterToken": {"enabled": False}},
]


def check_refusals(chart: helm.Chart) -> None:
    begin()
    print("$ helm template ... --set <values that cannot work>")
    for values, words in REFUSED:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
            check(False, f"{values} was accepted")
        except helm.HelmError as e:
            missing = [w for w in words if w not in str(e)]
            check(not missing, f"{values} refused, but the message lacks {missing}: {e}")
    ok(f"{len(REFUSED)} impossible or unsafe values refused with a message naming the values")


def check_accepted(chart: helm.Chart) -> None:
    for values in ACCEPTED:
        print(f"$ helm template ... --set {values}")
        begin()
        try:
            r = Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))
        except helm.HelmError as e:
            check(False, f"{values} was refused: {e}")
            continue
        merged = chart.merge_values(values)
        for section in (check_schemas, lambda r: check_probes(r, merged), lambda r: check_etcd(r, merged),
                        lambda r: check_tls(r, merged), lambda r: check_cluster_token(r, merged),
                        lambda r: check_guarded(r, merged), lambda r: check_notes(r, merged)):
            try:
                section(r)
            except Exception as e:
                check(False, f"a check stopped on the rendered output: {e!r}")


def main() -> int:
    os.chdir(ROOT)
    print(f"helm-python-sdk: Helm {helm.helm_sdk_version()}; kubernetes-validate schemas up to {kv.latest_version()}")
    with helm.Chart.load(CHART) as chart:
        for path in VALUES_FILES:
            run_values_file(chart, path)
        check_refusals(chart)
        check_accepted(chart)
    readme = Path("README.md").read_text()
    missing = [c for c in commands if c not in readme.splitlines()]
    check(not missing, f"README.md shows the commands this check runs; missing: {missing}")
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("\nthe chart passed every check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
