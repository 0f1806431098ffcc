#!/usr/bin/env python3
"""Checks that every metric (and label) the Grafana dashboard queries exists in real scrapes.

    check_dashboard.py --worker http://HOST:9090/metrics [--worker ...] --rabbitmq http://HOST:15692/metrics
    check_dashboard.py --self-test --worker ... --rabbitmq ...   a misspelt name must be caught

inpaint_* names are looked up in the workers' scrapes (merged: a series such as a block count
exists only on the worker that handled such a job), rabbitmq_* names in the broker's. Series
the worker exports only with a GPU (inpaint_gpu_*) are looked up in the scrape when it has any
GPU series; on a machine without a GPU the script says so and looks them up in the worker's
source instead (a weaker check, reported as such).
"""
import argparse
import glob
import json
import os
import re
import sys
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(ROOT, "ops/grafana/inpaint-worker.json")
PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "max", "min", "avg", "count", "by", "without", "on", "ignoring",
    "group_left", "group_right", "histogram_quantile", "label_values", "and", "or", "unless", "topk",
    "bottomk", "offset", "bool", "le", "abs", "clamp_min", "clamp_max", "delta", "deriv", "time",
}
NAME = re.compile(r"(?<![\w$\"{=~.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")


def queried(dashboard):
    """{metric: set(label names)} from every target expression and templating query."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    found = {}
    for expr in exprs:
        expr = re.sub(r"\[[^\]]*\]", "", expr)          # range selectors
        # Labels aggregated by must exist on the metrics of the expression too.
        grouped = {l.strip() for g in re.findall(r"\bby\s*\(([^)]*)\)", expr) for l in g.split(",")}
        expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
        for name, selector in NAME.findall(expr):
            if name in PROMQL_WORDS or name.startswith("__") or re.fullmatch(r"[0-9.]+", name):
                continue
            if not (name.startswith("inpaint_") or name.startswith("rabbitmq_")):
                continue
            labels = set(re.findall(r"(\w+)\s*[=!~]", selector or "")) | grouped
            if not name.endswith("_bucket"):
                labels.discard("le")
            found.setdefault(name, set()).update(labels - {"job", "instance", ""})
    return found


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if m:
            labels = set(re.findall(r"(\w+)=\"", m.group(3) or ""))
            series.setdefault(m.group(1), set()).update(labels)
    return series


def check(wanted, worker, rabbitmq):
    bad, notes = [], []
    gpu_live = any(n.startswith("inpaint_gpu_") for n in worker)
    source = "".join(open(f).read() for f in glob.glob(os.path.join(ROOT, "worker/service/src/**/*.rs"), recursive=True))
    for name, labels in sorted(wanted.items()):
        scrape_ = rabbitmq if name.startswith("rabbitmq_") else worker
        if name.startswith("inpaint_gpu_") and not gpu_live:
            # Without a GPU: the name, and each label as the worker writes it (`gpu="`), in the source.
            missing = [l for l in sorted(labels) if f'{l}=\\"' not in source]
            if name in source and not missing:
                notes.append(f"{name}: no GPU on this machine, found (with its labels) in the worker's source only")
            else:
                bad.append(f"{name}: not in the worker's source with labels {missing} (and no GPU to scrape)")
            continue
        if name not in scrape_:
            bad.append(f"{name}: not in the {'RabbitMQ' if scrape_ is rabbitmq else 'worker'} scrape")
        elif labels - scrape_[name]:
            bad.append(f"{name}: labels {sorted(labels - scrape_[name])} not in the scrape (has {sorted(scrape_[name])})")
    return bad, notes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True, action="append",
                   help="a worker's /metrics URL; repeat for several workers (their series are merged)")
    p.add_argument("--rabbitmq", required=True)
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args()
    dashboard = json.load(open(DASHBOARD))
    wanted = queried(dashboard)
    worker = {}
    for url in args.worker:
        for name, labels in scrape(url).items():
            worker.setdefault(name, set()).update(labels)
    rabbitmq = scrape(args.rabbitmq)
    bad, notes = check(wanted, worker, rabbitmq)
    print(f"[dashboard] {len(dashboard['panels'])} panels query {len(wanted)} metrics: {', '.join(sorted(wanted))}")
    print(f"[dashboard] scrapes: worker {len(worker)} series names, RabbitMQ {len(rabbitmq)}")
    for n in notes:
        print(f"[dashboard]   note: {n}")
    for b in bad:
        print(f"[dashboard]   MISSING {b}")
    failed = bool(bad)
    if args.self_test:
        # Every queried name, misspelt, and every queried label, renamed, must be caught.
        caught = 0
        for name, labels in wanted.items():
            mutants = [({**wanted, name + "_x": labels}, f"{name}_x")]
            mutants += [({**wanted, name: (labels - {l}) | {l + "_x"}}, f"{name}{{{l}_x}}") for l in labels]
            for mutant, label in mutants:
                if check(mutant, worker, rabbitmq)[0] == bad:
                    print(f"[dashboard]   self-test: {label} was not caught")
                    failed = True
                else:
                    caught += 1
        print(f"[dashboard] self-test: {caught} mutations caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
