#!/usr/bin/env python3
"""Renders every overlay in ops/k8s/overlays with `kubectl kustomize`, validates the core kinds
offline (kubernetes-validate, PyPI) and checks that the manifests agree with the worker's
configuration (the ConfigMap's worker.toml):

- the KEDA ScaledObject targets the Deployment, watches topology.jobs_queue, and asks for
  concurrency.prefetch messages per replica;
- the probes ask for /readyz (readiness) and /healthz (liveness) on the port of http.bind, the
  Service and the PodMonitor reach /metrics on that port;
- terminationGracePeriodSeconds exceeds shutdown.grace_secs;
- credentials come from Secret references only (no Secret object, no literal credential);
- the model and config paths are mounted; the GPU overlay requests nvidia.com/gpu.

    check_k8s.py [--live http://HOST:9090]   also GET each probe and metrics path from a worker
    check_k8s.py --self-test                 each check must catch a mutated manifest
"""
import argparse
import copy
import glob
import os
import re
import subprocess
import sys
import tomllib
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CORE_KINDS = {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
K8S_VERSION = "1.30.0"
SECRET_ENV = {"INPAINT__BROKER__URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def render(overlay):
    out = subprocess.run(["kubectl", "kustomize", overlay], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, found {len(found)}")
    return found[0]


def problems(docs, overlay_name):
    """Every disagreement between the manifests and the worker's configuration, as text."""
    bad = []
    try:
        deployment = one(docs, "Deployment")
        configmap = one(docs, "ConfigMap")
        scaled = one(docs, "ScaledObject")
        service = one(docs, "Service")
        monitor = one(docs, "PodMonitor")
        pdb = one(docs, "PodDisruptionBudget")
    except AssertionError as e:
        return [str(e)]
    if any(d["kind"] == "Secret" for d in docs):
        bad.append("a Secret is rendered: credentials must be created by the operator, not shipped")
    settings = tomllib.loads(configmap["data"]["worker.toml"])
    jobs_queue = settings.get("topology", {}).get("jobs_queue")
    prefetch = settings.get("concurrency", {}).get("prefetch")
    grace = settings.get("shutdown", {}).get("grace_secs")
    bind = settings.get("http", {}).get("bind", "")
    for key, value in [("topology.jobs_queue", jobs_queue), ("concurrency.prefetch", prefetch),
                       ("shutdown.grace_secs", grace), ("http.bind", bind)]:
        if value in (None, ""):
            bad.append(f"worker.toml must set {key} explicitly (the manifests depend on it)")
    port = int(bind.rsplit(":", 1)[1]) if ":" in bind else None
    if bind.startswith("127.") or bind.startswith("[::1]"):
        bad.append(f"http.bind {bind} is loopback: probes and Prometheus cannot reach it")

    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    worker = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in worker.get("ports", [])}

    def port_of(ref):
        return ports.get(ref) if isinstance(ref, str) else ref

    # KEDA
    if scaled["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
        bad.append("ScaledObject.scaleTargetRef does not name the Deployment")
    triggers = [t for t in scaled["spec"]["triggers"] if t["type"] == "rabbitmq"]
    if len(triggers) != 1:
        bad.append("ScaledObject needs exactly one rabbitmq trigger")
    for t in triggers:
        if t["metadata"].get("queueName") != jobs_queue:
            bad.append(f"ScaledObject queueName {t['metadata'].get('queueName')!r} != topology.jobs_queue {jobs_queue!r}")
        if t["metadata"].get("mode") != "QueueLength":
            bad.append("ScaledObject trigger mode must be QueueLength")
        if str(t["metadata"].get("value")) != str(prefetch):
            bad.append(f"ScaledObject messages per replica {t['metadata'].get('value')!r} != concurrency.prefetch {prefetch!r}")
        if "host" in t["metadata"]:
            bad.append("ScaledObject has the broker URL inline: use a TriggerAuthentication with a Secret")
        auth_name = t.get("authenticationRef", {}).get("name")
        auths = [d for d in docs if d["kind"] == "TriggerAuthentication" and d["metadata"]["name"] == auth_name]
        if not auths or not all(r.get("parameter") == "host" for r in auths[0]["spec"].get("secretTargetRef", [])):
            bad.append("ScaledObject's TriggerAuthentication must take `host` from a Secret")
    lo, hi = scaled["spec"].get("minReplicaCount", 0), scaled["spec"].get("maxReplicaCount", 100)
    if not 0 <= lo <= hi:
        bad.append("ScaledObject min/max replicas out of order")

    # Probes, Service, PodMonitor
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        http = worker.get(probe, {}).get("httpGet")
        if not http:
            bad.append(f"{probe} missing")
            continue
        if http.get("path") != path:
            bad.append(f"{probe} path {http.get('path')!r} != {path!r}")
        if port_of(http.get("port")) != port:
            bad.append(f"{probe} port {http.get('port')!r} is not http.bind's port {port}")
    svc_ports = [port_of(p.get("targetPort", p["port"])) for p in service["spec"]["ports"]]
    if port not in svc_ports:
        bad.append(f"Service targets {svc_ports}, not http.bind's port {port}")
    if service["spec"].get("selector") != deployment["spec"]["selector"]["matchLabels"]:
        bad.append("Service selector does not select the Deployment's pods")
    for ep in monitor["spec"]["podMetricsEndpoints"]:
        if port_of(ep.get("port")) != port or ep.get("path") != "/metrics":
            bad.append(f"PodMonitor endpoint {ep} is not /metrics on port {port}")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind, obj in [("PodMonitor", monitor), ("PodDisruptionBudget", pdb)]:
        match = obj["spec"].get("selector", {}).get("matchLabels")
        if not match or any(labels.get(k) != v for k, v in match.items()):
            bad.append(f"{kind} selector does not select the worker pods")

    # Shutdown
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if grace is not None and not tgps > grace:
        bad.append(f"terminationGracePeriodSeconds {tgps} must exceed shutdown.grace_secs {grace}")

    # Credentials
    for env in worker.get("env", []):
        if env["name"] in SECRET_ENV and "secretKeyRef" not in env.get("valueFrom", {}):
            bad.append(f"env {env['name']} must come from a secretKeyRef")
        if "value" in env and re.search(r"://[^/\s:@]+:[^/\s@]+@", str(env["value"])):
            bad.append(f"env {env['name']} holds a URL with a password")
    if re.search(r"://[^/\s:@]+:[^/\s@]+@", configmap["data"]["worker.toml"]):
        bad.append("worker.toml holds a URL with a password")
    for name in ("INPAINT__BROKER__URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not any(e["name"] == name for e in worker.get("env", [])):
            bad.append(f"env {name} missing")

    # Mounts: the config file and the model folder
    mounts = {m["mountPath"]: m["name"] for m in worker.get("volumeMounts", [])}
    config_path = next((e.get("value") for e in worker.get("env", []) if e["name"] == "INPAINT_CONFIG"), "/etc/inpaint/worker.toml")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_volume = volumes.get(mounts.get(os.path.dirname(config_path)), {})
    if config_volume.get("configMap", {}).get("name") != configmap["metadata"]["name"]:
        bad.append(f"the ConfigMap is not mounted at {os.path.dirname(config_path)}")
    model = settings.get("engine", {}).get("model", "")
    if model and model != "embedded-tiny" and not any(model.startswith(m.rstrip("/") + "/") for m in mounts):
        bad.append(f"engine.model {model} is not under a mounted volume")
    if not model:
        bad.append("worker.toml must set engine.model (a worker without one refuses to start)")

    # GPU overlay
    if overlay_name == "gpu":
        limits = worker.get("resources", {}).get("limits", {})
        if str(limits.get("nvidia.com/gpu")) != "1":
            bad.append("GPU overlay: limits.nvidia.com/gpu must be 1 (one worker process per GPU)")
        if not pod.get("nodeSelector") and not pod.get("tolerations"):
            bad.append("GPU overlay: needs a nodeSelector or tolerations for GPU nodes")
    return bad


def validate_core(docs):
    import kubernetes_validate
    errors = []
    for d in docs:
        if d["kind"] in CORE_KINDS:
            try:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{d['kind']}/{d['metadata']['name']}: {e.message}")
    return errors


MUTATIONS = [
    ("queue name", lambda ds: one(ds, "ScaledObject")["spec"]["triggers"][0]["metadata"].__setitem__("queueName", "other")),
    ("messages per replica", lambda ds: one(ds, "ScaledObject")["spec"]["triggers"][0]["metadata"].__setitem__("value", "99")),
    ("scale target", lambda ds: one(ds, "ScaledObject")["spec"]["scaleTargetRef"].__setitem__("name", "x")),
    ("readiness path", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].__setitem__("path", "/healthz")),
    ("liveness path", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].__setitem__("path", "/live")),
    ("probe port", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].__setitem__("port", 8080)),
    ("container port", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"][0].__setitem__("containerPort", 8080)),
    ("grace period", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", 30)),
    ("inline secret", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"].__setitem__(
        1, {"name": "INPAINT__BROKER__URL", "value": "amqp://u:p@rabbit/%2f"})),
    ("secret object", lambda ds: ds.append({"kind": "Secret", "metadata": {"name": "s"}})),
    ("prefetch in config", lambda ds: one(ds, "ConfigMap")["data"].__setitem__(
        "worker.toml", one(ds, "ConfigMap")["data"]["worker.toml"].replace("prefetch = 4", "prefetch = 8"))),
    ("queue in config", lambda ds: one(ds, "ConfigMap")["data"].__setitem__(
        "worker.toml", one(ds, "ConfigMap")["data"]["worker.toml"].replace('jobs_queue = "inpaint.jobs"', 'jobs_queue = "x"'))),
    ("loopback bind", lambda ds: one(ds, "ConfigMap")["data"].__setitem__(
        "worker.toml", one(ds, "ConfigMap")["data"]["worker.toml"].replace('bind = "0.0.0.0:9090"', 'bind = "127.0.0.1:9090"'))),
    ("pdb selector", lambda ds: one(ds, "PodDisruptionBudget")["spec"].pop("selector")),
    ("metrics path", lambda ds: one(ds, "PodMonitor")["spec"]["podMetricsEndpoints"][0].__setitem__("path", "/stats")),
    ("model not mounted", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].pop(1)),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--live", help="a running worker's base URL: GET the probe and metrics paths")
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args()
    overlays = sorted(glob.glob(os.path.join(ROOT, "ops/k8s/overlays/*")))
    failed = False
    for overlay in overlays:
        name = os.path.basename(overlay)
        docs = render(overlay)
        kinds = sorted(d["kind"] for d in docs)
        bad = problems(docs, name)
        if not args.self_test:
            bad += validate_core(docs)
        print(f"[k8s] overlay {name}: {len(docs)} objects ({', '.join(kinds)}); "
              + ("" if args.self_test else f"core kinds validated offline against Kubernetes {K8S_VERSION}; ") + f"{len(bad)} problem(s)")
        for b in bad:
            print(f"[k8s]   {b}")
        failed |= bool(bad)
        if args.self_test:
            for label, mutate in MUTATIONS + ([("gpu request", lambda ds: one(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"))] if name == "gpu" else []):
                mutated = copy.deepcopy(docs)
                mutate(mutated)
                if not problems(mutated, name):
                    print(f"[k8s]   self-test: mutation {label!r} was not caught")
                    failed = True
            # The offline schema validation must refuse a misspelt field and a wrong type.
            for label, mutate in [
                ("misspelt field", lambda ds: one(ds, "Deployment")["spec"].__setitem__("replica", 1)),
                ("wrong type", lambda ds: one(ds, "Service")["spec"]["ports"][0].__setitem__("port", "http")),
            ]:
                mutated = copy.deepcopy(docs)
                mutate(mutated)
                if not validate_core(mutated):
                    print(f"[k8s]   self-test: schema validation missed a {label}")
                    failed = True
            print(f"[k8s] overlay {name}: self-test of {len(MUTATIONS) + 2} mutations done")
        if args.live and not args.self_test:
            deployment = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
            monitor = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
            for what, path in [("readiness", deployment["readinessProbe"]["httpGet"]["path"]),
                               ("liveness", deployment["livenessProbe"]["httpGet"]["path"]),
                               ("metrics", monitor["path"])]:
                try:
                    with urllib.request.urlopen(args.live.rstrip("/") + path, timeout=5) as r:
                        status = r.status
                except Exception as e:  # noqa: BLE001 - any failure is reported
                    status = e
                print(f"[k8s]   live worker {what} {path}: {status}")
                failed |= status != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
