"""Offline checks of the deployment files in deploy/ — no Docker engine, no cluster, no kubectl
needed (they are used when present):

- every Kubernetes manifest of deploy/kustomization.yaml (and the HAProxy ConfigMap it
  generates) against the Kubernetes API schemas of each release kubernetes-validate ships, in
  strict mode (unknown fields fail), and deliberately broken copies must fail that check;
- deploy/compose.yaml against the Compose specification's JSON schema (compose_spec.json from
  the docker-compose 1.29.2 wheel that tools/venv.sh keeps in .venv/wheels/), with jsonschema;
  broken copies must fail it too;
- what no schema can see: the mounted files exist, HAProxy is started on both deploy/haproxy
  .cfg files, the grace periods outlast --drain-timeout (plus preStop), probes use /health and
  liveness survives a draining replica's 503, the replicas run with --max-connections-per-ip 0
  and the image's uid, the names and ports the pieces use to find each other agree, and every
  variable given to HAProxy is one its config reads;
- `haproxy -c` on the shared config with the environment each deployment gives it (when haproxy
  is on PATH), and a broken config must fail it;
- with kubectl on PATH, `kubectl kustomize deploy/` renders, and its output passes the same
  schema check and carries the .cfg files byte for byte.

Run alone: sh tests/e2e/run_deploy.sh [-k expr] (pytest, like every e2e suite; the last line is
"N passed, N failed, N skipped", for tools/run_tests.sh).
"""

import copy
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import e2e
from e2e import Fail, Skip, check, eq

ROOT = e2e.ROOT
DEPLOY = os.path.join(ROOT, "deploy")
COMPOSE = os.path.join(DEPLOY, "compose.yaml")
KUSTOMIZATION = os.path.join(DEPLOY, "kustomization.yaml")
HAPROXY_DIR = os.path.join(DEPLOY, "haproxy")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
VENV_WHEELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sys.executable))),
                           "wheels")
COMPOSE_WHEEL = "docker_compose-1.29.2-py2.py3-none-any.whl"
COMPOSE_SCHEMA = "compose/config/compose_spec.json"

try:  # the venv's packages (tools/requirements-test.txt); their absence is a failure, below
    import jsonschema
    import kubernetes_validate
    import yaml
    from kubernetes_validate import utils as kv_utils
except ImportError as e:
    IMPORT_ERROR = e
else:
    IMPORT_ERROR = None


suite = e2e.Suite("deploy", budget=60)  # no setup(): no binary, model or server needed


# ---- loading --------------------------------------------------------------------------------


def need_packages():
    if IMPORT_ERROR is not None:
        raise Fail(f"{IMPORT_ERROR}: run 'make venv' (tools/requirements-test.txt)")


def rel(path):
    return os.path.relpath(path, ROOT)


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def kustomization():
    need_packages()
    return load_yaml(KUSTOMIZATION)


def k8s_docs():
    """[(file, document)] for every resource the kustomization lists, then the generated
    ConfigMaps built as kustomize builds them (name, data = each file's content; kustomize adds
    a content hash to the name and to every reference)."""
    k = kustomization()
    out = []
    for r in k.get("resources") or []:
        path = os.path.join(DEPLOY, r)
        check(os.path.isfile(path), f"kustomization.yaml lists {r}, which does not exist")
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    out.append((rel(path), doc))
    for gen in k.get("configMapGenerator") or []:
        data = {}
        for fname in gen.get("files") or []:
            key, _, src = fname.rpartition("=") if "=" in fname else ("", "", fname)
            path = os.path.join(DEPLOY, src)
            check(os.path.isfile(path), f"configMapGenerator {gen['name']}: {src} does not exist")
            with open(path, encoding="utf-8") as f:
                data[key or os.path.basename(src)] = f.read()
        out.append((f"configMapGenerator {gen['name']}",
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]},
                     "data": data}))
    return out


def find(docs, kind, name):
    for _, d in docs:
        if d.get("kind") == kind and d.get("metadata", {}).get("name") == name:
            return d
    raise Fail(f"no {kind} {name} in deploy/kustomization.yaml's resources")


def container(deployment):
    cs = deployment["spec"]["template"]["spec"]["containers"]
    eq(len(cs), 1, f"containers of {deployment['metadata']['name']}")
    return cs[0]


def flag(args, name):
    """The value after flag name in an argument list (None when absent)."""
    args = [str(a) for a in args]
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def compose():
    need_packages()
    return load_yaml(COMPOSE)


def compose_schema():
    need_packages()
    whl = os.path.join(VENV_WHEELS, COMPOSE_WHEEL)
    check(os.path.isfile(whl), f"{whl} is missing: run 'make venv' (tools/venv.sh downloads it)")
    with zipfile.ZipFile(whl) as z:
        return json.loads(z.read(COMPOSE_SCHEMA))


def schema_errors(doc, schema):
    """Every way doc breaks schema, as "path: message" strings (empty when it is valid)."""
    drafts = {"2019-09": jsonschema.Draft201909Validator, "draft-07": jsonschema.Draft7Validator,
              "2020-12": jsonschema.Draft202012Validator}
    cls = next((c for k, c in drafts.items() if k in schema.get("$schema", "")), None)
    check(cls, f"schema of unknown draft: {schema.get('$schema')!r}")
    cls.check_schema(schema)
    v = cls(schema)
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def k8s_versions():
    """Every Kubernetes release whose schemas the installed kubernetes-validate ships."""
    need_packages()
    vs = sorted({kv_utils.major_minor(v) for v in kv_utils.all_versions()},
                key=lambda v: tuple(int(x) for x in v.split(".")))
    check(vs, "kubernetes-validate ships no schemas")
    return vs


def k8s_errors(doc, versions):
    """[(version, message)] for each release doc does not validate against (strict: unknown
    fields are errors)."""
    errs = []
    for v in versions:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path) or "(top)"
            errs.append((v, f"{path}: {e.message}"))
        except kubernetes_validate.SchemaNotFoundError as e:
            errs.append((v, e.message))
    return errs


# ---- values ---------------------------------------------------------------------------------

_QTY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|)$")
_QTY_MUL = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(q, what):
    """A Kubernetes resource quantity ("768Mi", "2", "100m") as a number."""
    m = _QTY.match(str(q))
    check(m, f"{what}: {q!r} is not a Kubernetes quantity")
    return float(m.group(1)) * _QTY_MUL[m.group(2)]


def compose_bytes(s, what):
    """A Compose byte value ("3840M", "1g", "512k"; binary units, as Docker reads them)."""
    m = re.match(r"^([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)b?$", str(s).strip().lower())
    check(m, f"{what}: {s!r} is not a Compose byte value")
    return float(m.group(1)) * 1024 ** "bkmgt".index(m.group(2) or "b")


def duration(s, what):
    """A Compose duration ("40s", "1m30s", "500ms") in seconds."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)", str(s))
    check(parts and "".join(a + b for a, b in parts) == str(s), f"{what}: {s!r} is not a duration")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(a) * unit[b] for a, b in parts)


def dockerfile():
    """What the image promises: its user's uid, its exposed port, the model it holds."""
    with open(DOCKERFILE, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    user = re.findall(r"^USER\s+(\d+)", text, re.M)
    expose = re.findall(r"^EXPOSE\s+(\d+)", text, re.M)
    model = re.findall(r"^COPY\s+--from=\S+\s+\S*?/(models/[^\s/]+\.gguf)\s", text, re.M)
    workdir = re.findall(r"^WORKDIR\s+(\S+)", text, re.M)
    check(user and expose and model and workdir,
          f"Dockerfile: USER/EXPOSE/model COPY/WORKDIR not found ({user}, {expose}, {model})")
    final = text[text.rindex("\nFROM "):]  # the runtime stage
    return {"uid": int(user[-1]), "port": int(expose[-1]),
            "model": os.path.join(workdir[-1], model[-1]),
            "curl": re.search(r"apt-get install[^\n]*\bcurl\b", final) is not None}


def haproxy_cfgs():
    """{basename: text} of deploy/haproxy/*.cfg."""
    out = {}
    for p in sorted(glob.glob(os.path.join(HAPROXY_DIR, "*.cfg"))):
        with open(p, encoding="utf-8") as f:
            out[os.path.basename(p)] = f.read()
    return out


def haproxy_cfg_args(cmd):
    """The -f arguments of an haproxy command line."""
    cmd = [str(c) for c in cmd]
    check(cmd and os.path.basename(cmd[0]) == "haproxy", f"not an haproxy command: {cmd}")
    return [cmd[i + 1] for i, c in enumerate(cmd[:-1]) if c == "-f"]


def replica_slots():
    """How many servers replicas-dns.cfg's server-template lines make (the most replicas that
    HAProxy can route to)."""
    text = haproxy_cfgs().get("replicas-dns.cfg")
    if text is None:
        return None
    counts = []
    for m in re.finditer(r"^\s*server-template\s+\S+\s+(\d+)(?:-(\d+))?\s", text, re.M):
        counts.append(int(m.group(2)) - int(m.group(1)) + 1 if m.group(2) else int(m.group(1)))
    check(counts, "replicas-dns.cfg: no server-template line")
    return min(counts)


def cfg_variables():
    """Names of the environment variables deploy/haproxy/*.cfg read ("${NAME}", "${NAME-def}")."""
    names = set()
    for text in haproxy_cfgs().values():
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    return names


def check_replica_args(args, where, image):
    """The serve flags every deployment of the replicas must have; returns (port, drain s), the
    drain being --drain-delay (out of rotation, still serving) + --drain-timeout."""
    args = [str(a) for a in args]
    check(args[:1] == ["serve"], f"{where}: the replicas do not run `serve`: {args}")
    eq(flag(args, "--host"), "0.0.0.0", f"{where}: --host (reachable from HAProxy)")
    eq(flag(args, "--max-connections-per-ip"), "0",
       f"{where}: --max-connections-per-ip (every client comes from HAProxy's one address)")
    eq(flag(args, "-m") or flag(args, "--model"), image["model"],
       f"{where}: the model in the image")
    port = flag(args, "--port")
    check(port is not None, f"{where}: no --port")
    eq(int(port), image["port"], f"{where}: --port against the Dockerfile's EXPOSE")
    drain = flag(args, "--drain-timeout")
    check(drain is not None, f"{where}: no --drain-timeout")
    check(flag(args, "--registry"), f"{where}: no --registry")
    delay = flag(args, "--drain-delay")
    check(delay is not None and float(delay) >= 2,
          f"{where}: --drain-delay must outlast HAProxy's 2 failed health checks 1 s apart "
          f"(got {delay})")
    return int(port), float(drain) + float(delay)


# ---- Kubernetes: schemas --------------------------------------------------------------------


@suite.test
def k8s_manifests_match_the_api_schemas():
    docs = k8s_docs()
    versions = k8s_versions()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)
    bad = []
    for where, d in docs:
        for v, msg in k8s_errors(d, versions):
            bad.append(f"{where} {d.get('kind')}/{d.get('metadata', {}).get('name')} "
                       f"(Kubernetes {v}): {msg}")
    check(not bad, "schema errors:\n    " + "\n    ".join(bad[:20]))
    print(f"    {len(docs)} objects x Kubernetes {versions[0]}..{versions[-1]} "
          f"({len(versions)} releases), strict: {', '.join(kinds)}")


@suite.test
def a_broken_k8s_manifest_fails_the_schema_check():
    """The check above can fail: each of these copies of the replicas' Deployment, and one
    manifest file with a typo read back from disk like the real ones, must be refused."""
    docs = k8s_docs()
    dep = find(docs, "Deployment", "adaptree")
    versions = k8s_versions()[-1:]

    def broken(fn):
        d = copy.deepcopy(dep)
        fn(d, container(d))
        return d

    def rename(obj, old, new):
        obj[new] = obj.pop(old)

    cases = {
        "misspelt field": broken(lambda d, c: rename(c, "readinessProbe", "readinessProbes")),
        "string port": broken(lambda d, c: c["ports"][0].update(containerPort="8080")),
        "container without a name": broken(lambda d, c: c.pop("name")),
        "string replicas": broken(lambda d, c: d["spec"].update(replicas="3")),
        "retired apiVersion": broken(lambda d, c: d.update(apiVersion="extensions/v1beta1")),
    }
    # A whole file, parsed the way k8s_docs() parses deploy/k8s/*.yaml.
    path = os.path.join(suite.tmp, "broken.yaml")
    with open(os.path.join(DEPLOY, "k8s", "adaptree-service.yaml"), encoding="utf-8") as f:
        text = f.read()
    check("clusterIP:" in text, "adaptree-service.yaml has no clusterIP to break")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("clusterIP:", "clusterIp:"))
    cases["file with clusterIp typo"] = load_yaml(path)
    for what, d in cases.items():
        errs = k8s_errors(d, versions)
        check(errs, f"{what}: passed the schema check")
        print(f"    {what}: refused: {errs[0][1][:110]}")


# ---- Kubernetes: semantics ------------------------------------------------------------------


@suite.test
def kustomization_covers_deploy_k8s():
    k = kustomization()
    listed = sorted(os.path.normpath(r) for r in k.get("resources") or [])
    on_disk = sorted(os.path.relpath(p, DEPLOY)
                     for p in glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml")))
    eq(listed, on_disk, "kustomization.yaml resources against deploy/k8s/*.yaml")
    for _, d in k8s_docs():
        check("namespace" not in d.get("metadata", {}),
              f"{d['kind']}/{d['metadata']['name']} names a namespace (keep them agnostic)")
    check("namespace" not in k, "kustomization.yaml pins a namespace")


def check_k8s_replicas(docs):
    """The replicas' Deployment, its probes, shutdown, registry and resources; returns a
    summary."""
    image = dockerfile()
    dep = find(docs, "Deployment", "adaptree")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    port, drain = check_replica_args(c.get("args") or [], "k8s adaptree", image)
    check("command" not in c, "k8s adaptree: command replaces the image's /app/adaptree")
    named = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    check(port in named.values(), f"k8s adaptree: --port {port} is not a containerPort {named}")

    def probe_port(p):
        v = p.get("port")
        return named.get(v) if isinstance(v, str) else v

    ready = c.get("readinessProbe") or {}
    check("httpGet" in ready, f"k8s adaptree: readiness is not an HTTP probe: {ready}")
    eq(ready["httpGet"].get("path"), "/health", "readinessProbe path")
    eq(probe_port(ready["httpGet"]), port, "readinessProbe port")

    live = c.get("livenessProbe") or {}
    check(live, "k8s adaptree: no livenessProbe")
    if "httpGet" in live:
        raise Fail("k8s adaptree: an httpGet liveness probe fails on the 503 that /health answers "
                   "while draining, so the kubelet would restart a draining replica")
    if "exec" in live:
        cmd = " ".join(live["exec"]["command"])
        check("/health" in cmd and "503" in cmd and "200" in cmd,
              f"k8s adaptree: liveness must accept /health's 200 and 503: {cmd}")
        check(f":{port}/" in cmd, f"k8s adaptree: liveness does not ask port {port}: {cmd}")
        check("curl" not in cmd or image["curl"],
              "k8s adaptree: liveness runs curl, which the Dockerfile's runtime stage lacks")
    else:
        check("tcpSocket" in live and probe_port(live["tcpSocket"]) == port,
              f"k8s adaptree: liveness neither exec on /health nor TCP on {port}: {live}")

    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    pre_s = 0.0
    if "sleep" in pre:
        pre_s = float(pre["sleep"]["seconds"])
    elif "exec" in pre:
        m = re.search(r"\bsleep\s+([0-9.]+)", " ".join(pre["exec"]["command"]))
        check(m, f"k8s adaptree: preStop does not sleep: {pre}")
        pre_s = float(m.group(1))
    check(pre_s > 0, "k8s adaptree: no preStop pause (new requests could still arrive at SIGTERM)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > pre_s + drain,
          f"k8s adaptree: terminationGracePeriodSeconds {grace} <= preStop {pre_s:g} s + "
          f"--drain-timeout {drain:g} s: the kubelet would SIGKILL a drain")
    summary = (f"grace {grace} s > preStop {pre_s:g} s + drain {drain:g} s; readiness GET "
               f"/health; liveness {'exec' if 'exec' in live else 'tcp'} (200 or 503)")

    sc = pod.get("securityContext") or {}
    check(sc.get("runAsNonRoot") is True, "k8s adaptree: runAsNonRoot is not true")
    eq(sc.get("runAsUser"), image["uid"], "k8s adaptree: runAsUser against the Dockerfile's USER")
    eq(dep["spec"]["strategy"]["rollingUpdate"].get("maxUnavailable"), 0,
       "k8s adaptree: rollout maxUnavailable")

    # The registry: the --registry directory is a read-only mount of a ReadOnlyMany claim.
    reg = flag(c["args"], "--registry")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    check(reg in mounts, f"k8s adaptree: --registry {reg} is not a mount point {list(mounts)}")
    check(mounts[reg].get("readOnly") is True, "k8s adaptree: the registry mount is not readOnly")
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    claim = vols[mounts[reg]["name"]].get("persistentVolumeClaim")
    check(claim and claim.get("readOnly") is True,
          f"k8s adaptree: the registry volume is not a read-only claim: {vols}")
    pvc = find(docs, "PersistentVolumeClaim", claim["claimName"])
    eq(pvc["spec"]["accessModes"], ["ReadOnlyMany"], "registry PVC accessModes")

    # Resources: requests <= limits, and no more compute threads than CPUs.
    res = c.get("resources") or {}
    for r in ("cpu", "memory"):
        req = quantity(res["requests"][r], f"requests.{r}")
        lim = quantity(res["limits"][r], f"limits.{r}")
        check(req <= lim, f"k8s adaptree: requests.{r} {req} > limits.{r} {lim}")
    threads = flag(c["args"], "--threads")
    check(threads and 0 < int(threads) <= quantity(res["limits"]["cpu"], "limits.cpu"),
          f"k8s adaptree: --threads {threads} must be set and within the CPU limit (0 = every "
          f"node core)")
    slots = replica_slots()
    if slots is not None:
        check(dep["spec"]["replicas"] <= slots,
              f"k8s adaptree: {dep['spec']['replicas']} replicas, HAProxy has {slots} slots")
    return summary


@suite.test
def k8s_replicas_drain_before_they_are_killed():
    print("    " + check_k8s_replicas(k8s_docs()))


def check_k8s_haproxy(docs, k):
    """HAProxy's Deployment and the Services: names, ports, labels, files and variables agree;
    returns a summary."""
    dep = find(docs, "Deployment", "adaptree")
    rc = container(dep)
    rport = int(flag(rc["args"], "--port"))
    rlabels = dep["spec"]["template"]["metadata"]["labels"]
    eq(dep["spec"]["selector"]["matchLabels"],
       {k_: v for k_, v in rlabels.items() if k_ in dep["spec"]["selector"]["matchLabels"]},
       "adaptree Deployment selector against its pod labels")

    hap = find(docs, "Deployment", "adaptree-haproxy")
    hpod = hap["spec"]["template"]["spec"]
    hc = container(hap)
    hlabels = hap["spec"]["template"]["metadata"]["labels"]

    def selects(svc_or_pdb, labels):
        sel = svc_or_pdb["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        return all(labels.get(k_) == v for k_, v in sel.items())

    # The headless Service selects the replicas (and not HAProxy) on their port.
    svc = find(docs, "Service", "adaptree-replicas")
    eq(svc["spec"].get("clusterIP"), "None", "adaptree-replicas clusterIP (headless: \"None\")")
    check(selects(svc, rlabels) and not selects(svc, hlabels),
          "adaptree-replicas must select the replica pods only")
    tp = svc["spec"]["ports"][0]["targetPort"]
    named = {p.get("name"): p["containerPort"] for p in rc.get("ports") or []}
    eq(named.get(tp, tp), rport, "adaptree-replicas targetPort")
    pdb = find(docs, "PodDisruptionBudget", "adaptree")
    check(selects(pdb, rlabels) and not selects(pdb, hlabels), "the PDB must select the replicas")

    # The client Service selects HAProxy.
    front = find(docs, "Service", "adaptree")
    check(selects(front, hlabels) and not selects(front, rlabels),
          "Service adaptree must select the HAProxy pods only")
    hnamed = {p.get("name"): p["containerPort"] for p in hc.get("ports") or []}
    ftp = front["spec"]["ports"][0]["targetPort"]
    check(hnamed.get(ftp, ftp) in hnamed.values(), f"Service adaptree targetPort {ftp}")

    # HAProxy is started on both files, and they come from the generated ConfigMap.
    cmd = (hc.get("command") or []) + (hc.get("args") or [])
    cfgs = haproxy_cfg_args(cmd)
    eq(sorted(os.path.basename(p) for p in cfgs), ["haproxy.cfg", "replicas-dns.cfg"],
       "k8s haproxy -f files")
    mounts = {m["mountPath"]: m for m in hc.get("volumeMounts") or []}
    vols = {v["name"]: v for v in hpod.get("volumes") or []}
    gens = {g["name"]: g for g in k.get("configMapGenerator") or []}
    for p in cfgs:
        d = os.path.dirname(p)
        check(d in mounts, f"k8s haproxy: {p} is not under a volume mount {list(mounts)}")
        cm = vols[mounts[d]["name"]].get("configMap", {}).get("name")
        check(cm in gens, f"k8s haproxy: {p} is not from a generated ConfigMap ({cm})")
        gen_files = [f.rpartition("=")[2] for f in gens[cm]["files"]]
        eq(sorted(os.path.basename(f) for f in gen_files),
           sorted(os.path.basename(c) for c in cfgs), f"ConfigMap {cm} files against the -f files")
        for f in gen_files:
            eq(os.path.normpath(os.path.join(DEPLOY, f)),
               os.path.join(HAPROXY_DIR, os.path.basename(f)),
               f"ConfigMap {cm} source (must be the repo's deploy/haproxy copy)")

    # Its environment: the replicas' FQDN built from its own namespace, their port, where it
    # listens; every ADAPTREE_* variable it gets is one the config reads.
    env = {e["name"]: e for e in hc.get("env") or []}
    dns = env.get("ADAPTREE_REPLICAS_DNS", {}).get("value", "")
    name = svc["metadata"]["name"]
    check(dns == name or dns.startswith(name + "."),
          f"k8s haproxy: ADAPTREE_REPLICAS_DNS {dns!r} is not the headless Service's name")
    check(".svc." in dns,
          f"k8s haproxy: ADAPTREE_REPLICAS_DNS {dns!r} is not fully qualified (HAProxy's "
          f"resolvers do not apply resolv.conf's search list)")
    for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", dns):
        check(ref in env, f"k8s haproxy: ADAPTREE_REPLICAS_DNS uses $({ref}), which is not set")
    ns_ref = [n for n, e in env.items()
              if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
              == "metadata.namespace"]
    check(any(f"$({n})" in dns for n in ns_ref),
          f"k8s haproxy: ADAPTREE_REPLICAS_DNS {dns!r} does not take the pod's namespace")
    eq(int(env["ADAPTREE_REPLICA_PORT"]["value"]), rport, "k8s haproxy ADAPTREE_REPLICA_PORT")
    listen = env.get("ADAPTREE_LISTEN", {}).get("value", ":8080")
    eq(int(listen.rsplit(":", 1)[1]), hnamed.get(ftp, ftp), "k8s haproxy ADAPTREE_LISTEN port")
    unknown = [n for n in env if n.startswith("ADAPTREE_") and n not in cfg_variables()]
    check(not unknown, f"k8s haproxy: {unknown} are not read by deploy/haproxy/*.cfg")

    hsc = hpod.get("securityContext") or {}
    check(hsc.get("runAsNonRoot") is True and isinstance(hsc.get("runAsUser"), int),
          "k8s haproxy: runAsNonRoot needs a numeric runAsUser (the image's USER is a name)")
    pre = " ".join(((hc.get("lifecycle") or {}).get("preStop") or {}).get("exec", {})
                   .get("command", []))
    check("USR1" in pre, f"k8s haproxy: preStop does not soft-stop HAProxy (SIGUSR1): {pre!r}")
    drain = float(flag(rc["args"], "--drain-timeout"))
    check(hpod.get("terminationGracePeriodSeconds", 30) > drain,
          "k8s haproxy: its grace period must outlast the replicas' drain")
    return f"ADAPTREE_REPLICAS_DNS={dns}; haproxy -f {' -f '.join(cfgs)}"


@suite.test
def k8s_haproxy_finds_the_replicas():
    print("    " + check_k8s_haproxy(k8s_docs(), kustomization()))


@suite.test
def kustomize_renders_when_kubectl_is_here():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise Skip("kubectl is not on PATH (the checks above do not need it)")
    need_packages()
    p = subprocess.run([kubectl, "kustomize", DEPLOY], capture_output=True, text=True,
                       timeout=30)
    check(p.returncode == 0, f"kubectl kustomize deploy/ failed: {p.stderr.strip()[:500]}")
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    cms = [d for d in docs if d["kind"] == "ConfigMap"]
    check(cms, "kubectl kustomize rendered no ConfigMap")
    cfgs = haproxy_cfgs()
    for cm in cms:
        for key, text in cm["data"].items():
            check(key in cfgs, f"rendered ConfigMap has {key}, not in deploy/haproxy/")
            check(text == cfgs[key], f"rendered ConfigMap {key} differs from deploy/haproxy/{key}")
        name = cm["metadata"]["name"]
        users = [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"
                 and any(v.get("configMap", {}).get("name") == name
                         for v in d["spec"]["template"]["spec"].get("volumes") or [])]
        check(users, f"no Deployment mounts the rendered ConfigMap {name} (hash suffix)")
    bad = [f"{d['kind']}/{d['metadata']['name']}: {m}" for d in docs
           for _, m in k8s_errors(d, k8s_versions()[-1:])]
    check(not bad, "rendered manifests fail the schema check:\n    " + "\n    ".join(bad))
    print(f"    {len(docs)} objects rendered; ConfigMap {cms[0]['metadata']['name']}")


# ---- Compose --------------------------------------------------------------------------------


@suite.test
def compose_matches_the_compose_spec():
    schema = compose_schema()
    errs = schema_errors(compose(), schema)
    check(not errs, "deploy/compose.yaml:\n    " + "\n    ".join(errs[:20]))
    print(f"    valid against {COMPOSE_SCHEMA} ({schema.get('$schema')}) from {COMPOSE_WHEEL}")


@suite.test
def a_broken_compose_file_fails_the_schema_check():
    schema = compose_schema()
    base = compose()

    def broken(fn):
        d = copy.deepcopy(base)
        fn(d, d["services"]["adaptree"], d["services"]["haproxy"])
        return d

    cases = {
        "misspelt service key": broken(lambda d, a, h: a.update(stop_grace_periode="40s")),
        "string replicas": broken(lambda d, a, h: a["deploy"].update(replicas="three")),
        "healthcheck typo": broken(lambda d, a, h: a["healthcheck"].update(intervall="1s")),
        "volume as a number": broken(lambda d, a, h: h.update(volumes=[8080])),
        "bad service name": broken(lambda d, a, h: d["services"].update({"adap tree": {}})),
    }
    path = os.path.join(suite.tmp, "compose.yaml")
    with open(COMPOSE, encoding="utf-8") as f:
        text = f.read()
    check("\n    healthcheck:" in text, "compose.yaml has no healthcheck to break")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("\n    healthcheck:", "\n    health_check:", 1))
    cases["file with health_check typo"] = load_yaml(path)
    for what, d in cases.items():
        errs = schema_errors(d, schema)
        check(errs, f"{what}: passed the schema check")
        print(f"    {what}: refused: {errs[0][:110]}")


def check_compose(c, docs):
    """What deploy/compose.yaml must get right beyond its schema; returns a summary."""
    image = dockerfile()
    svcs = c["services"]
    a, h = svcs["adaptree"], svcs["haproxy"]

    # The replicas: built from the repository, the right flags, scalable.
    ctx = a["build"]["context"] if isinstance(a["build"], dict) else a["build"]
    eq(os.path.normpath(os.path.join(DEPLOY, ctx)), ROOT, "compose build context")
    check(os.path.isfile(os.path.join(ROOT, "Dockerfile")), "no Dockerfile at the build context")
    args = a["command"] if isinstance(a["command"], list) else shlex.split(a["command"])
    port, drain = check_replica_args(args, "compose adaptree", image)
    check("entrypoint" not in a, "compose adaptree: entrypoint replaces the image's /app/adaptree")
    check("container_name" not in a and "ports" not in a,
          "compose adaptree: container_name or published ports would stop --scale")
    check(str(port) in [str(p) for p in a.get("expose") or []], f"compose adaptree: expose {port}")
    slots = replica_slots()
    if slots is not None:
        check(a["deploy"]["replicas"] <= slots,
              f"compose: {a['deploy']['replicas']} replicas, HAProxy has {slots} slots")

    # Stopping: Docker waits longer than the drain before SIGKILL, for both services.
    for name, s in (("adaptree", a), ("haproxy", h)):
        g = duration(s.get("stop_grace_period", "10s"), f"{name} stop_grace_period")
        check(g > drain,
              f"compose {name}: stop_grace_period {g:g} s <= --drain-timeout {drain:g} s")
    check(a.get("stop_signal", "SIGTERM") in ("SIGTERM", "SIGINT"),
          "compose adaptree: stop_signal must start a drain (SIGTERM or SIGINT)")

    # Health: /health on the replicas' port.
    test = a["healthcheck"]["test"]
    test = " ".join(test) if isinstance(test, list) else test
    check(f"127.0.0.1:{port}/health" in test, f"compose adaptree healthcheck: {test}")
    check("curl" not in test or image["curl"],
          "compose adaptree: the healthcheck runs curl, which the image lacks")

    # Mounts: every bind source exists; the registry is the repo's, read-only, at --registry.
    mounts = {}
    for svc_name, s in svcs.items():
        for v in s.get("volumes") or []:
            if isinstance(v, dict):
                src, dst, ro = v.get("source"), v["target"], v.get("read_only", False)
            else:
                parts = v.split(":")
                src, dst, ro = parts[0], parts[1], "ro" in parts[2:]
            if src and (src.startswith(".") or src.startswith("/")):
                path = os.path.normpath(os.path.join(DEPLOY, src))
                check(os.path.exists(path),
                      f"compose {svc_name}: {src} ({rel(path)}) does not exist")
                check(ro, f"compose {svc_name}: {src} is not mounted read-only")
                mounts[(svc_name, dst)] = path
    reg = flag(args, "--registry")
    eq(mounts.get(("adaptree", reg)), os.path.join(ROOT, "registry"),
       f"compose adaptree: what is mounted at --registry {reg}")

    # HAProxy: started on both files, each mounted from deploy/haproxy/.
    cmd = (h.get("entrypoint") or []) + (h.get("command") or [])
    cfgs = haproxy_cfg_args(cmd)
    eq(sorted(os.path.basename(p) for p in cfgs), ["haproxy.cfg", "replicas-dns.cfg"],
       "compose haproxy -f files")
    for p in cfgs:
        eq(mounts.get(("haproxy", p)), os.path.join(HAPROXY_DIR, os.path.basename(p)),
           f"compose haproxy: what is mounted at {p}")
    env = h.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    eq(env.get("ADAPTREE_REPLICAS_DNS"), "adaptree",
       "compose haproxy ADAPTREE_REPLICAS_DNS (the replicas' service name)")
    eq(int(env.get("ADAPTREE_REPLICA_PORT", 0)), port, "compose haproxy ADAPTREE_REPLICA_PORT")
    listen = int(str(env.get("ADAPTREE_LISTEN", ":8080")).rsplit(":", 1)[1])
    targets = [int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in h.get("ports") or []]
    check(listen in targets, f"compose haproxy: ADAPTREE_LISTEN port {listen} not published")
    unknown = [n for n in env if n.startswith("ADAPTREE_") and n not in cfg_variables()]
    check(not unknown, f"compose haproxy: {unknown} are not read by deploy/haproxy/*.cfg")

    # Resources agree with the Kubernetes replicas' (the same measurement), threads <= CPUs.
    lim = a["deploy"]["resources"]["limits"]
    dep = find(docs, "Deployment", "adaptree")
    kres = container(dep)["resources"]
    eq(compose_bytes(lim["memory"], "compose memory limit"),
       quantity(kres["limits"]["memory"], "k8s memory limit"), "memory limit, compose against k8s")
    eq(compose_bytes(a["deploy"]["resources"]["reservations"]["memory"], "compose reservation"),
       quantity(kres["requests"]["memory"], "k8s memory request"),
       "memory reservation, compose against the k8s request")
    threads = flag(args, "--threads")
    check(threads and 0 < int(threads) <= float(lim["cpus"]),
          f"compose adaptree: --threads {threads} must be set and within cpus {lim['cpus']}")
    return (f"stop_grace_period {a['stop_grace_period']} > drain {drain:g} s; "
            f"haproxy -f {' -f '.join(cfgs)}; {len(mounts)} bind mounts exist")


@suite.test
def compose_semantics():
    print("    " + check_compose(compose(), k8s_docs()))


@suite.test
def the_semantic_checks_refuse_broken_copies():
    """Each check above can fail: every one of these changes to a copy of the real files must
    be refused, by the check named."""
    docs0, k0, c0 = k8s_docs(), kustomization(), compose()

    def k8s(fn):
        docs = copy.deepcopy(docs0)
        dep = find(docs, "Deployment", "adaptree")
        hap = find(docs, "Deployment", "adaptree-haproxy")
        fn(dep["spec"]["template"]["spec"], container(dep), hap["spec"]["template"]["spec"],
           container(hap), docs)
        return docs

    def comp(fn):
        c = copy.deepcopy(c0)
        fn(c["services"]["adaptree"], c["services"]["haproxy"])
        return c

    def drop_flag(args, name):
        i = [str(a) for a in args].index(name)
        del args[i:i + 2]

    def set_flag(args, name, value):
        args[[str(a) for a in args].index(name) + 1] = value

    def env_set(c, name, value):
        for e in c["env"]:
            if e["name"] == name:
                e["value"] = value

    http_live = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10}
    cases = [
        ("k8s", "grace period 30 s", k8s(lambda p, c, hp, hc, d: p.update(
            terminationGracePeriodSeconds=30))),
        ("k8s", "drain 60 s", k8s(lambda p, c, hp, hc, d: set_flag(c["args"],
                                                                  "--drain-timeout", "60"))),
        ("k8s", "no preStop", k8s(lambda p, c, hp, hc, d: c.pop("lifecycle"))),
        ("k8s", "liveness GET /health", k8s(lambda p, c, hp, hc, d: c.update(
            livenessProbe=http_live))),
        ("k8s", "readiness on /", k8s(lambda p, c, hp, hc, d: c["readinessProbe"]["httpGet"]
                                      .update(path="/"))),
        ("k8s", "no --max-connections-per-ip", k8s(lambda p, c, hp, hc, d: drop_flag(
            c["args"], "--max-connections-per-ip"))),
        ("k8s", "runs as root", k8s(lambda p, c, hp, hc, d: p["securityContext"].update(
            runAsUser=0))),
        ("k8s", "registry mounted read-write", k8s(lambda p, c, hp, hc, d: c["volumeMounts"][0]
                                                   .update(readOnly=False))),
        ("k8s", "memory limit 'lots'", k8s(lambda p, c, hp, hc, d: c["resources"]["limits"]
                                           .update(memory="lots"))),
        ("k8s", "--threads 0", k8s(lambda p, c, hp, hc, d: set_flag(c["args"], "--threads", "0"))),
        ("k8s", "short replicas name", k8s(lambda p, c, hp, hc, d: env_set(
            hc, "ADAPTREE_REPLICAS_DNS", "adaptree-replicas"))),
        ("k8s", "hard-coded namespace", k8s(lambda p, c, hp, hc, d: env_set(
            hc, "ADAPTREE_REPLICAS_DNS", "adaptree-replicas.prod.svc.cluster.local"))),
        ("k8s", "misspelt HAProxy variable", k8s(lambda p, c, hp, hc, d: hc["env"].append(
            {"name": "ADAPTREE_REPLICA_DNS", "value": "x"}))),
        ("k8s", "haproxy on one file", k8s(lambda p, c, hp, hc, d: hc.update(
            command=hc["command"][:-2]))),
        ("k8s", "headless Service with a cluster IP", k8s(lambda p, c, hp, hc, d: find(
            d, "Service", "adaptree-replicas")["spec"].pop("clusterIP"))),
        ("compose", "stop_grace_period 30s", comp(lambda a, h: a.update(
            stop_grace_period="30s"))),
        ("compose", "haproxy stop_grace_period 10s", comp(lambda a, h: h.update(
            stop_grace_period="10s"))),
        ("compose", "no --max-connections-per-ip", comp(lambda a, h: drop_flag(
            a["command"], "--max-connections-per-ip"))),
        ("compose", "haproxy on one file", comp(lambda a, h: h.update(
            entrypoint=h["entrypoint"][:-2]))),
        ("compose", "mount of a missing file", comp(lambda a, h: h["volumes"].__setitem__(
            0, "./haproxy/missing.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"))),
        ("compose", "registry mounted read-write", comp(lambda a, h: a["volumes"].__setitem__(
            0, "../registry:/app/registry"))),
        ("compose", "container_name", comp(lambda a, h: a.update(container_name="adaptree"))),
        ("compose", "replicas' DNS name", comp(lambda a, h: h["environment"].update(
            ADAPTREE_REPLICAS_DNS="replicas"))),
        ("compose", "memory limit differs from k8s", comp(lambda a, h: a["deploy"]["resources"]
                                                           ["limits"].update(memory="1g"))),
    ]
    for where, what, doc in cases:
        try:
            if where == "k8s":
                check_k8s_replicas(doc)
                check_k8s_haproxy(doc, k0)
            else:
                check_compose(doc, docs0)
        except Fail as e:
            print(f"    {where}: {what}: refused: {str(e).splitlines()[0][:100]}")
            continue
        raise Fail(f"{where}: {what}: passed the semantic checks")


# ---- HAProxy --------------------------------------------------------------------------------


def haproxy_check(cfgs, env):
    p = subprocess.run(["haproxy", "-c"] + [a for c in cfgs for a in ("-f", c)],
                       capture_output=True, text=True, timeout=30,
                       env={**{k: v for k, v in os.environ.items()
                               if not k.startswith("ADAPTREE_")}, **env})
    return p.returncode, (p.stdout + p.stderr).strip()


@suite.test
def haproxy_accepts_the_shared_config():
    if not shutil.which("haproxy"):
        raise Skip("haproxy is not on PATH (make deps installs it)")
    cfgs = [os.path.join(HAPROXY_DIR, n) for n in ("haproxy.cfg", "replicas-dns.cfg")]
    missing = [rel(p) for p in cfgs if not os.path.isfile(p)]
    if missing:
        raise Skip(f"{', '.join(missing)} not written yet")
    # The environment each deployment gives HAProxy ($(VAR) expanded as the kubelet does).
    hc = container(find(k8s_docs(), "Deployment", "adaptree-haproxy"))
    k8s_env = {}
    for e in hc.get("env") or []:
        if "valueFrom" in e:
            k8s_env[e["name"]] = "default"  # metadata.namespace
        else:
            k8s_env[e["name"]] = re.sub(r"\$\(([A-Za-z_0-9]+)\)",
                                        lambda m: k8s_env.get(m.group(1), m.group(0)), e["value"])
    h = compose()["services"]["haproxy"]
    compose_env = {k: str(v) for k, v in (h.get("environment") or {}).items()}
    for where, env in (("kubernetes", k8s_env), ("compose", compose_env), ("defaults", {})):
        rc, out = haproxy_check(cfgs, env)
        check(rc == 0, f"haproxy -c with the {where} environment: exit {rc}\n{out[-1500:]}")
        print(f"    {where}: {out.splitlines()[-1] if out else 'ok'}")
    # ... and the check can fail: a config with an unknown directive.
    bad = os.path.join(suite.tmp, "broken.cfg")
    with open(cfgs[1], encoding="utf-8") as f, open(bad, "w", encoding="utf-8") as g:
        g.write(f.read() + "\nbackend broken from adaptree\n    balanse roundrobin\n")
    rc, out = haproxy_check([cfgs[0], bad], compose_env)
    check(rc != 0, "haproxy -c accepted a config with an unknown keyword")
    print(f"    broken config refused: exit {rc}: "
          f"{next((l for l in out.splitlines() if 'balanse' in l), out[-200:])[:120]}")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
