"""The Helm chart helm/perceptserve, offline: no cluster, no Docker.

Renders the chart with the Helm 3 binary that `make helm-tools` installs (default values, every
option on, and the other model-repository sources), lints it strictly, validates every rendered
manifest against the Kubernetes 1.30 schemas (kubernetes-validate, strict: unknown fields and
unknown kinds fail) and the ServiceMonitor against the Prometheus Operator CRD schema, checks the
security, probe, GPU, autoscaling and restricted-API settings, and that bad values are refused.
A `server` test runs the chart's own command line (`perceptserve serve`, supervising the real
tritonserver 2.51 that stands in for the NGC image's) and the chart's `helm test` script against it;
tests/test_reliability.py runs the same command line through a killed stub and a SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from perceptserve.server.flags import OWNED_FLAGS

from .chart_server import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    ChartServer,
    container_environment,
    of_kind,
    one,
    render,
    run_helm,
    server_pod,
    template_args,
    triton_container,
)

ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
SERVICEMONITOR_CRD = Path(__file__).resolve().parent / "data" / "servicemonitor-crd-v1.json"

ENGINE_CACHE = "/cache/tensorrt"
WRITABLE_MOUNTS = {"/tmp", "/dev/shm", ENGINE_CACHE}
RESTRICTED_APIS = "model-repository,model-config,shared-memory,statistics,trace,logging"
STARTUP_BUDGET_S = 30 * 60

# Variants rendered for the manifest checks: name -> extra `helm template` arguments.
VARIANTS = {
    "default": [],
    "all-on": ["-f", str(ALL_ON_VALUES)],
    "image-emptydir": [
        "--set",
        "modelRepository.source=image",
        "--set",
        "engineCache.type=emptyDir",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "podDisruptionBudget.maxUnavailable=null",
        "--set",
        "podDisruptionBudget.minAvailable=1",
        "--set",
        "tests.enabled=false",
        "--set",
        "preStopSleepSeconds=0",
    ],
    "pvc-subpath-existing-cache": [
        "--set",
        "modelRepository.pvc.claimName=shared-models",
        "--set",
        "modelRepository.pvc.subPath=perceptserve/v1",
        "--set",
        "engineCache.pvc.existingClaim=trt-cache",
        "--set",
        "replicaCount=3",
    ],
}


# --------------------------------------------------------------------------------------------
# Tools


def kubernetes_validate_module():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed in the venv: run `make helm-tools`", pytrace=False)
    return kubernetes_validate


def jsonschema_module():
    try:
        import jsonschema
    except ImportError:
        pytest.fail(
            "jsonschema is not installed in the venv (kubernetes-validate brings it): run `make helm-tools`",
            pytrace=False,
        )
    return jsonschema


# --------------------------------------------------------------------------------------------
# Rendered documents


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(*args) for name, args in VARIANTS.items()}


@pytest.fixture(scope="module")
def default_docs(rendered):
    return rendered["default"]


@pytest.fixture(scope="module")
def all_on_docs(rendered):
    return rendered["all-on"]


def helm_test_pod(docs: list[dict]) -> dict:
    pods = [d for d in of_kind(docs, "Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(pods) == 1, "expected one helm test pod"
    return pods[0]


def arg_value(args: list[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} appears {len(values)} times in {args}"
    return values[0]


def volume(pod_spec: dict, name: str) -> dict:
    found = [v for v in pod_spec["volumes"] if v["name"] == name]
    assert len(found) == 1, f"volume {name} not found once"
    return found[0]


def mounts_by_path(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def all_containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


# --------------------------------------------------------------------------------------------
# Helm itself: binary, lint


def test_helm_is_version_3():
    result = run_helm("version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v3."), result.stdout


@pytest.mark.parametrize("variant", ["default", "all-on"])
def test_lint_strict(variant):
    extra = ["-f", str(ALL_ON_VALUES)] if variant == "all-on" else []
    result = run_helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *extra)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "2.51.0"  # tritonserver 2.51.0 = NGC 24.10
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    for key in (
        "image",
        "triton",
        "modelRepository",
        "engineCache",
        "service",
        "gpu",
        "probes",
        "autoscaling",
        "serviceMonitor",
        "podDisruptionBudget",
        "securityContext",
        "generateJob",
    ):
        assert schema["properties"][key].get("additionalProperties") is False, key


# --------------------------------------------------------------------------------------------
# Kubernetes 1.30 schemas and the ServiceMonitor CRD


def strict_crd_schema(schema):
    """The CRD's openAPIV3Schema with unknown fields refused (the API server would silently
    prune them: a typo would vanish instead of failing)."""
    if isinstance(schema, list):
        return [strict_crd_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_crd_schema(value) for key, value in schema.items()}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def servicemonitor_validator():
    jsonschema = jsonschema_module()
    vendored = json.loads(SERVICEMONITOR_CRD.read_text())
    assert (vendored["group"], vendored["kind"], vendored["version"]) == (
        "monitoring.coreos.com",
        "ServiceMonitor",
        "v1",
    )
    schema = strict_crd_schema(vendored["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def crd_errors(validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_manifests_match_kubernetes_schemas(rendered, servicemonitor_validator, variant):
    kv = kubernetes_validate_module()
    problems = []
    for doc in rendered[variant]:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor":
            problems += [f"{where}: {e}" for e in crd_errors(servicemonitor_validator, doc)]
            continue
        try:
            kv.validate(doc, KUBE_VERSION, strict=True)
        except kv.SchemaNotFoundError:
            problems.append(f"{where}: kind unknown to Kubernetes {KUBE_VERSION} ({doc['apiVersion']})")
        except kv.ValidationError as error:
            problems.append(f"{where}: {error}")
    assert not problems, "\n".join(problems)


def test_unknown_kind_fails_validation():
    """kubernetes-validate's CLI only warns on an unknown kind; through the API it raises, and the
    test above turns that into a failure."""
    kv = kubernetes_validate_module()
    with pytest.raises(kv.SchemaNotFoundError):
        kv.validate(
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, KUBE_VERSION, strict=True
        )


def test_strict_validation_catches_a_misspelt_field(default_docs, servicemonitor_validator, all_on_docs):
    kv = kubernetes_validate_module()
    deployment = copy.deepcopy(one(default_docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)
    monitor = copy.deepcopy(one(all_on_docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "10s"
    assert crd_errors(servicemonitor_validator, monitor)


# --------------------------------------------------------------------------------------------
# What the issue asks of the Deployment


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_security_settings(rendered, variant):
    docs = rendered[variant]
    pods = [server_pod(docs)["spec"]]
    if variant != "image-emptydir":
        pods.append(helm_test_pod(docs)["spec"])
    for spec in pods:
        assert spec["automountServiceAccountToken"] is False
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in all_containers(spec):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, container["name"]
            assert sc["runAsUser"] == 1000, container["name"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
    # Writable volumes only where needed; everything else mounted read-only.
    spec = server_pod(docs)["spec"]
    writable = {path for path, m in mounts_by_path(triton_container(docs)).items() if not m.get("readOnly")}
    assert writable == WRITABLE_MOUNTS
    for init in spec.get("initContainers", []):
        assert set(mounts_by_path(init)) <= {"/models", "/tmp"}
    # Own ServiceAccount without a token.
    if variant == "image-emptydir":
        assert not of_kind(docs, "ServiceAccount")
        assert spec["serviceAccountName"] == "default"
    else:
        account = one(docs, "ServiceAccount")
        assert account["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("variant", ["default", "all-on"])
def test_probes(rendered, variant):
    container = triton_container(rendered[variant])
    startup, ready, live = container["startupProbe"], container["readinessProbe"], container["livenessProbe"]
    # The supervisor's endpoint: Triton's own /v2/health/ready stays 200 after a python stub dies.
    assert startup["httpGet"] == {"path": "/ready", "port": "health"}
    assert ready["httpGet"] == {"path": "/ready", "port": "health"}
    assert live["httpGet"] == {"path": "/live", "port": "health"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_S
    assert ready["failureThreshold"] == 1  # out of the Service at the first probe after a stub died
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "health": 8003}
    assert int(arg_value(container["args"], "--health-port")) == ports["health"]


@pytest.mark.parametrize(("variant", "gpus"), [("default", 1), ("all-on", 2)])
def test_gpu_resources_and_placement(rendered, variant, gpus):
    docs = rendered[variant]
    resources = triton_container(docs)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == gpus
    assert resources["requests"]["nvidia.com/gpu"] == gpus
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    spec = server_pod(docs)["spec"]
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def tritonserver_args(container: dict) -> list[str]:
    """The arguments after `--`, which `perceptserve serve` passes on to tritonserver."""
    args = container["args"]
    assert args.count("--") == 1
    return args[args.index("--") + 1 :]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_server_runs_under_the_supervisor(rendered, variant):
    docs = rendered[variant]
    container = triton_container(docs)
    args = container["args"]
    assert container["command"] == ["perceptserve", "serve"]
    ours = args[: args.index("--")]
    assert arg_value(ours, "--repository") == "/models"
    assert arg_value(ours, "--config") == "gpu"
    assert arg_value(ours, "--host") == "0.0.0.0"
    assert int(arg_value(ours, "--exit-timeout")) > 0 and int(arg_value(ours, "--drain-timeout")) > 0
    assert int(arg_value(ours, "--response-cache-bytes")) > 0
    assert "--log-to-stdout" in ours  # tritonserver's log reaches `kubectl logs`
    # What goes on to tritonserver: only flags the supervisor does not set itself.
    passed = tritonserver_args(container)
    assert not [a for a in passed if a.split("=", 1)[0] in OWNED_FLAGS], passed
    values = yaml.safe_load((ALL_ON_VALUES if variant == "all-on" else CHART / "values.yaml").read_text())
    assert int(arg_value(passed, "--log-verbose")) == values["triton"]["logVerbose"]
    assert [a for a in passed if a.startswith("--backend-config=")] == [
        f"--backend-config={c}" for c in values["triton"]["backendConfig"]
    ]
    extra = values["triton"].get("extraArgs", [])
    assert passed[len(passed) - len(extra) :] == extra
    # Restricted APIs behind a key from a Secret, given to the supervisor in its environment (the
    # names perceptserve.settings reads) and never in the pod spec.
    env = {e["name"]: e for e in container["env"]}
    header = values["triton"]["restrictedApi"].get("header", "perceptserve-api-key")
    assert env["PERCEPTSERVE_API_KEY_HEADER"]["value"] == header
    assert env["PERCEPTSERVE_RESTRICTED_APIS"]["value"] == RESTRICTED_APIS
    ref = env["PERCEPTSERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
    secrets = of_kind(docs, "Secret")
    if variant == "all-on":  # an existing Secret: the chart creates none
        assert ref == {"name": "perceptserve-api-key", "key": "key"}
        assert not secrets
    else:  # a generated key
        assert len(secrets) == 1 and secrets[0]["metadata"]["name"] == ref["name"]
        key = base64.b64decode(secrets[0]["data"][ref["key"]]).decode()
        assert re.fullmatch(r"[A-Za-z0-9]{32,}", key)
        assert key not in json.dumps(container)


def test_settings_read_the_chart_environment(default_docs):
    """`perceptserve serve` restricts the APIs the chart names, with its header and key."""
    from perceptserve.settings import from_env

    container = triton_container(default_docs)
    server = from_env(container_environment(container, default_docs)).server
    assert server.api_key and server.api_key_header == "perceptserve-api-key"
    assert ",".join(server.restricted_apis) == RESTRICTED_APIS


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_termination_grace_covers_the_drain(rendered, variant):
    """preStop sleep, then the supervisor's drain, then Triton's own exit timeout: all within the
    grace period, else the kubelet kills the server with requests in flight."""
    docs = rendered[variant]
    spec = server_pod(docs)["spec"]
    container = triton_container(docs)
    drain = int(arg_value(container["args"], "--drain-timeout"))
    exit_timeout = int(arg_value(container["args"], "--exit-timeout"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = int(pre_stop[1]) if pre_stop else 0
    assert spec["terminationGracePeriodSeconds"] > sleep + drain + exit_timeout


@pytest.mark.parametrize("variant", ["default", "all-on"])
def test_shm_and_tmp_volumes(rendered, variant):
    docs = rendered[variant]
    spec = server_pod(docs)["spec"]
    mounts = mounts_by_path(triton_container(docs))
    shm = volume(spec, mounts["/dev/shm"]["name"])
    assert shm["emptyDir"]["medium"] == "Memory"
    assert shm["emptyDir"]["sizeLimit"]
    assert "emptyDir" in volume(spec, mounts["/tmp"]["name"])


def test_engine_cache_volume(rendered):
    # default: a chart-created claim, kept on uninstall
    docs = rendered["default"]
    mount = mounts_by_path(triton_container(docs))[ENGINE_CACHE]
    claim = volume(server_pod(docs)["spec"], mount["name"])["persistentVolumeClaim"]["claimName"]
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # an existing claim: none created
    docs = rendered["pvc-subpath-existing-cache"]
    mount = mounts_by_path(triton_container(docs))[ENGINE_CACHE]
    assert volume(server_pod(docs)["spec"], mount["name"])["persistentVolumeClaim"]["claimName"] == "trt-cache"
    assert not of_kind(docs, "PersistentVolumeClaim")
    # emptyDir
    docs = rendered["image-emptydir"]
    mount = mounts_by_path(triton_container(docs))[ENGINE_CACHE]
    assert "emptyDir" in volume(server_pod(docs)["spec"], mount["name"])
    assert not of_kind(docs, "PersistentVolumeClaim")


def test_model_repository_sources(rendered):
    # pvc: the claim, read-only, optionally a folder of it
    docs = rendered["pvc-subpath-existing-cache"]
    spec = server_pod(docs)["spec"]
    mount = mounts_by_path(triton_container(docs))["/models"]
    assert mount["readOnly"] is True and mount["subPath"] == "perceptserve/v1"
    source = volume(spec, mount["name"])["persistentVolumeClaim"]
    assert source == {"claimName": "shared-models", "readOnly": True}
    assert "initContainers" not in spec
    # s3: an init container syncs into an emptyDir, credentials from a Secret
    docs = rendered["all-on"]
    spec = server_pod(docs)["spec"]
    mount = mounts_by_path(triton_container(docs))["/models"]
    assert mount["readOnly"] is True
    assert volume(spec, mount["name"])["emptyDir"]["sizeLimit"] == "30Gi"
    (init,) = spec["initContainers"]
    assert init["image"].startswith("amazon/aws-cli:")
    assert "aws s3 sync" in init["command"][2]
    env = {e["name"]: e for e in init["env"]}
    assert env["MODEL_REPOSITORY_URL"]["value"] == "s3://models/perceptserve/repository"
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.storage.svc:9000"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "perceptserve-s3", "key": name}
    assert "args" not in init
    assert init["command"][3:] == ["fetch-model-repository", "--exclude", "*.pth"]  # $0, then "$@"
    assert mounts_by_path(init)["/models"]["name"] == mount["name"]
    # image: nothing mounted over /models
    docs = rendered["image-emptydir"]
    assert "/models" not in mounts_by_path(triton_container(docs))
    assert "model-repository" not in {v["name"] for v in server_pod(docs)["spec"]["volumes"]}


@pytest.mark.parametrize("variant", ["default", "all-on"])
def test_service_and_selectors(rendered, variant):
    docs = rendered[variant]
    service = one(docs, "Service")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}
    selector = service["spec"]["selector"]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    # The helm test pod is neither a Service endpoint nor covered by the budget.
    test_labels = helm_test_pod(docs)["metadata"]["labels"]
    assert not selector.items() <= test_labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector


def test_pod_disruption_budget(rendered):
    assert one(rendered["default"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert one(rendered["all-on"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == "25%"
    spec = one(rendered["image-emptydir"], "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == 1 and "maxUnavailable" not in spec


def test_autoscaling(rendered):
    assert not of_kind(rendered["default"], "HorizontalPodAutoscaler")
    assert one(rendered["default"], "Deployment")["spec"]["replicas"] == 1
    docs = rendered["all-on"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "nv_inference_queue_duration_per_request_us"
    assert metric["pods"]["metric"]["selector"] == {"matchLabels": {"model": "hqsam_encoder_guard"}}
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "20000"}
    # The README carries the prometheus-adapter rule that serves this metric.
    readme = (REPO / "helm" / "README.md").read_text()
    assert "nv_inference_queue_duration_per_request_us" in readme
    assert "delta(nv_inference_queue_duration_us" in readme and "delta(nv_inference_request_success" in readme


def test_service_monitor(rendered):
    assert not of_kind(rendered["default"], "ServiceMonitor")
    docs = rendered["all-on"]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("variant", ["default", "all-on"])
def test_helm_test_pod(rendered, variant):
    docs = rendered[variant]
    pod = helm_test_pod(docs)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["image"] == triton_container(docs)["image"]
    assert container["command"][:2] == ["python3", "-c"]
    script = container["command"][2]
    compile(script, "test_inference.py", "exec")
    assert "/v2/health/ready" in script and "client.infer(MODEL" in script
    env = {e["name"]: e for e in container["env"]}
    assert env["PERCEPTSERVE_MODEL"]["value"] == "hqsam"
    service = one(docs, "Service")
    assert env["PERCEPTSERVE_URL"]["value"] == f"{service['metadata']['name']}.{NAMESPACE}.svc:8000"
    assert (
        env["PERCEPTSERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
        == [e for e in triton_container(docs)["env"] if e["name"] == "PERCEPTSERVE_API_KEY"][0]["valueFrom"][
            "secretKeyRef"
        ]
    )


def test_helm_test_script_uses_the_ensemble_api():
    """The test script's tensors are the hqsam ensemble's public ones (names, types, ranks)."""
    from perceptserve.model_repository import hqsam

    from perceptserve.hqsam.families import HQSAM

    script = (CHART / "files" / "test_inference.py").read_text()
    inputs = {t.name: t for t in hqsam.ENSEMBLE_INPUTS}
    outputs = {t.name: t for t in hqsam.tensors(HQSAM).ensemble_outputs}
    sent = dict(re.findall(r'InferInput\("(\w+)", list\(\w+\.shape\), "(\w+)"\)', script))
    assert sent == {"image": "BYTES", "point_coords": "FP32", "point_labels": "INT32"}
    for name, dtype in sent.items():
        assert inputs[name].dtype == ("STRING" if dtype == "BYTES" else dtype), name
    required = {name for name, tensor in inputs.items() if not tensor.optional}
    assert required <= set(sent)
    assert set(re.findall(r'as_numpy\("(\w+)"\)', script)) == set(outputs)
    assert HQSAM.ensemble == "hqsam"
    assert len(outputs["masks"].dims) == 4 and len(outputs["iou_predictions"].dims) == 2


# --------------------------------------------------------------------------------------------
# The dataset generation Jobs (generateJob): an Indexed Job over the fleet, and the merge


def jobs(docs: list[dict]) -> dict[str, dict]:
    return {doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc for doc in of_kind(docs, "Job")}


def expand(argument: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), argument)


def cli_arguments(container: dict, index: int) -> argparse.Namespace:
    """The container's command line as perceptserve's own parser reads it, for pod `index`."""
    from perceptserve import cli

    command = container["command"] + [expand(a, {"JOB_COMPLETION_INDEX": str(index)}) for a in container["args"]]
    assert command[0] == "perceptserve"
    return cli.build_parser().parse_args(command[1:])


def test_generate_job_is_off_by_default(default_docs):
    assert not of_kind(default_docs, "Job")


def test_generate_job(all_on_docs):
    from perceptserve.clients.shards import Shard

    values = yaml.safe_load(ALL_ON_VALUES.read_text())["generateJob"]
    job = jobs(all_on_docs)["generate"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (values["shards"], values["parallelism"])
    assert spec["backoffLimitPerIndex"] == values["backoffLimitPerIndex"]  # a failed shard retries alone
    assert spec["maxFailedIndexes"] == values["maxFailedIndexes"]
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    index_env = {e["name"]: e for e in container["env"]}["JOB_COMPLETION_INDEX"]
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    # Every pod runs `perceptserve generate` on its own shard of one run, against the Service.
    service = one(all_on_docs, "Service")
    grpc = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
    runs = [cli_arguments(container, index) for index in range(spec["completions"])]
    assert [str(Shard.parse(args.shard)) for args in runs] == [f"{i}/{values['shards']}" for i in range(8)]
    for args in runs:
        assert args.func.__name__ == "cmd_generate"
        assert args.url == f"{service['metadata']['name']}.{NAMESPACE}.svc:{grpc}"
        assert str(args.prompts) == f"/data/{values['prompts']}" and args.classes == "person"
        assert (args.count, args.seed, args.batch, args.concurrency) == (10000, 1000, 4, 2)
        assert (args.height, args.width, args.steps, args.guidance) == (512, 512, 50, 7.5)
        assert args.wait == values["waitForServerSeconds"] and args.negative_prompt == "blurry"
    # A retried pod writes where its first attempt did: it resumes from the shard's manifest.
    assert {str(args.out) for args in runs} == {f"/data/{values['run']}/shards"}
    mounts = mounts_by_path(container)
    assert mounts["/data"]["subPath"] == values["data"]["subPath"]
    assert volume(pod, mounts["/data"]["name"])["persistentVolumeClaim"] == {"claimName": "datasets"}
    # The merge Job reads the shards' folder into the merged one.
    merge = jobs(all_on_docs)["generate-merge"]
    (merger,) = merge["spec"]["template"]["spec"]["containers"]
    args = cli_arguments(merger, 0)
    assert args.func.__name__ == "cmd_dataset_merge"
    assert [str(p) for p in args.shards] == [f"/data/{values['run']}/shards"]
    assert str(args.out) == f"/data/{values['run']}/merged"


def test_generate_jobs_are_hardened_like_the_server(all_on_docs):
    server = server_pod(all_on_docs)["spec"]
    for job in jobs(all_on_docs).values():
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"] == server["securityContext"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == server["serviceAccountName"]
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}  # clients: no GPU nodes needed
        (container,) = pod["containers"]
        assert container["securityContext"] == triton_container(all_on_docs)["securityContext"]
        assert container["image"] == triton_container(all_on_docs)["image"]
        assert "nvidia.com/gpu" not in json.dumps(container["resources"])
        writable = {path for path, m in mounts_by_path(container).items() if not m.get("readOnly")}
        assert writable == {"/data", "/tmp"}
        assert {"HOME": "/tmp"}.items() <= {e["name"]: e.get("value") for e in container["env"]}.items()


# --------------------------------------------------------------------------------------------
# Defaults agree with perceptserve.settings


def test_defaults_follow_perceptserve_settings(default_docs):
    from perceptserve.settings import GpuOnnxRuntime, ServerSettings

    server = ServerSettings()
    container = triton_container(default_docs)
    args = container["args"]
    assert int(arg_value(args, "--exit-timeout")) == server.exit_timeout_s
    assert int(arg_value(args, "--drain-timeout")) == server.drain_timeout_s
    assert int(arg_value(args, "--response-cache-bytes")) == server.response_cache_bytes
    passed = tritonserver_args(container)
    assert f"--backend-config=python,shm-default-byte-size={server.python_shm_default_bytes}" in passed
    assert f"--backend-config=python,shm-growth-byte-size={server.python_shm_growth_bytes}" in passed
    assert (
        int(arg_value(args, "--http-port")),
        int(arg_value(args, "--grpc-port")),
        int(arg_value(args, "--metrics-port")),
    ) == (server.http_port, server.grpc_port, server.metrics_port)
    assert GpuOnnxRuntime().engine_cache_path == ENGINE_CACHE
    assert ENGINE_CACHE in mounts_by_path(container)


# --------------------------------------------------------------------------------------------
# NOTES.txt


def test_notes(tmp_path):
    """`helm template` renders NOTES.txt but does not print it: render a copy of the chart in
    which the notes are also a ConfigMap."""
    chart = tmp_path / "perceptserve"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_copy.tpl").write_text('{{- define "notes.copy" -}}\n' + notes + "\n{{- end }}\n")
    (chart / "templates" / "notes-configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "notes.copy" . | quote }}\n'
    )
    result = run_helm(
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        str(ALL_ON_VALUES),
        "--show-only",
        "templates/notes-configmap.yaml",
    )
    assert result.returncode == 0, result.stderr
    text = yaml.safe_load(result.stdout)["data"]["notes"]
    assert "port-forward svc/perceptserve-ci" in text
    assert "/v2/health/ready" in text and '"hqsam"' in text
    assert "x-perceptserve-key" in text and "secret perceptserve-api-key" in text
    assert '"triton-grpc-protocol-x-perceptserve-key"' in text
    assert f"helm test {RELEASE}" in text
    assert "custom.metrics.k8s.io" in text


# --------------------------------------------------------------------------------------------
# Bad values are refused at render time (so at `helm install` too)


BAD_VALUES = [
    (["--set", "replicaCount=two"], "replicaCount: Invalid type"),
    (["--set-string", "replicaCount=3"], "replicaCount: Invalid type"),
    (["--set", "replicas=2"], "Additional property replicas is not allowed"),
    (["--set", "modelRepository.source=ftp"], "modelRepository.source must be one of"),
    (["--set", "autoscaling.enable=true"], "Additional property enable is not allowed"),
    (["--set", "modelRepository.source=s3"], "modelRepository.s3.url"),
    (["--set", "modelRepository.pvc.claimName="], "modelRepository.pvc.claimName"),
    (["--set", "securityContext.runAsUser=0"], "securityContext.runAsUser"),
    (["--set", "triton.restrictedApi.apis={trace}"], "triton.restrictedApi.apis"),
    (["--set", "triton.restrictedApi.header=X-Key"], "triton.restrictedApi.header"),
    (["--set", "gpu.count=0"], "gpu.count"),
    (["--set", "engineCache.type=hostPath"], "engineCache.type"),
    (["--set", "shm.sizeLimit=lots"], "shm.sizeLimit"),
    (["--set", "podDisruptionBudget.minAvailable=1"], "podDisruptionBudget"),
    (["--set", "terminationGracePeriodSeconds=30"], "terminationGracePeriodSeconds (30) must be greater"),
    (["--set", "terminationGracePeriodSeconds=90"], "drainTimeoutSeconds (60)"),
    (["--set", "drainTimeoutSeconds=0"], "drainTimeoutSeconds"),
    (["--set", "triton.exitTimeoutSeconds=7200"], "triton.exitTimeoutSeconds"),
    (["--set", "triton.modelConfigName=fast"], "triton.modelConfigName"),
    (
        [
            "--set",
            "autoscaling.enabled=true",
            "--set",
            "autoscaling.maxReplicas=1",
            "--set",
            "autoscaling.minReplicas=3",
        ],
        "autoscaling.maxReplicas",
    ),
    (["--set", "resources.limits.nvidia\\.com/gpu=1"], "gpu.count"),
    (["--set", "generateJob.enabled=true"], "generateJob.data.claimName"),
    (
        [
            "--set",
            "generateJob.enabled=true",
            "--set",
            "generateJob.data.claimName=d",
            "--set",
            "generateJob.prompt=a cat",
        ],
        "exactly one of prompts",
    ),
    (
        ["--set", "generateJob.enabled=true", "--set", "generateJob.data.claimName=d", "--set", "generateJob.prompts="],
        "exactly one of prompts",
    ),
    (
        ["--set", "generateJob.enabled=true", "--set", "generateJob.data.claimName=d", "--set", "generateJob.prompts="]
        + ["--set", "generateJob.prompt=a cat"],
        "generateJob.classes",
    ),
    (["--set", "generateJob.shards=0"], "generateJob.shards"),
    (["--set", "generateJob.run=Run_1"], "generateJob.run"),
    (["--set", "generateJob.parallelism=0"], "generateJob.parallelism"),
    (["--set", "generateJob.prompts=/abs/path"], "generateJob.prompts"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_refused(args, message):
    result = run_helm(*template_args(*args))
    assert result.returncode != 0, f"helm template {' '.join(args)} was accepted"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args", [["--set", "replicaCount=two"], ["--set", "modelRepository.source=ftp"], ["--set", "bogus=1"]]
)
def test_lint_refuses_bad_values(args):
    result = run_helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert result.returncode != 0, result.stdout


# --------------------------------------------------------------------------------------------
# The Dockerfile the default image comes from (it cannot be built here: static checks)


def test_dockerfile():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:24\.10-py3$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{TRITON_IMAGE\}$", dockerfile, re.M)
    for package in ('"numpy<2"', '"pillow', '"onnxruntime-gpu', '"tritonclient[grpc,http]', '"tqdm'):
        assert package in dockerfile, package
    assert "pip install --no-deps ." in dockerfile
    # Every source folder of the package is copied (pyproject's package-dir).
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {path.split("/")[0] for path in pyproject["tool"]["setuptools"]["package-dir"].values()}
    for folder in folders:
        assert re.search(rf"^COPY {folder}/ {folder}/$", dockerfile, re.M), folder
    assert re.search(r"^COPY pyproject\.toml README\.md \./$", dockerfile, re.M)
    assert re.search(r"^USER \$\{PERCEPTSERVE_UID\}:\$\{PERCEPTSERVE_GID\}$", dockerfile, re.M)
    assert "ARG PERCEPTSERVE_UID=1000" in dockerfile
    # The supervisor runs the image's tritonserver, as the chart's container does.
    assert 'ENTRYPOINT ["perceptserve", "serve"]' in dockerfile
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    cmd = json.loads(cmd)
    for argument in ("--repository=/models", "--config=gpu", "--host=0.0.0.0", "--health-port=8003", "--log-to-stdout"):
        assert argument in cmd, argument
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "repository", "demo-output", "bench-output", ".git", "**/*.onnx"} <= ignored


# --------------------------------------------------------------------------------------------
# The chart's tritonserver arguments and its `helm test` script, on the real tritonserver 2.51
# (the binary nvidia-pytriton ships) with a stand-in `hqsam` model that has the ensemble's
# public inputs and outputs.

STAND_IN_HQSAM = '''
import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class TritonPythonModel:
    """Answers like the hqsam ensemble: one mask per prompt set, at the image's size."""

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)[0]
            width, height = Image.open(io.BytesIO(bytes(data))).size
            coords = pb_utils.get_input_tensor_by_name(request, "point_coords")
            sets = coords.as_numpy().shape[0] if coords is not None else 1
            masks = np.zeros((sets, 1, height, width), dtype=bool)
            masks[:, :, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("masks", masks),
                pb_utils.Tensor("iou_predictions", np.full((sets, 1), 0.9, dtype=np.float32)),
                pb_utils.Tensor("low_res_logits", np.zeros((sets, 1, 256, 256), dtype=np.float32)),
            ]))
        return responses
'''


def stand_in_repository(root: Path) -> Path:
    from perceptserve.model_repository import hqsam

    from perceptserve.hqsam.families import HQSAM

    def tensors(items) -> str:
        return ",\n".join(
            f'  {{ name: "{t.name}" data_type: TYPE_{t.dtype} dims: [ {", ".join(map(str, t.dims))} ]'
            + (" optional: true" if getattr(t, "optional", False) else "")
            + " }"
            for t in items
        )

    model = root / HQSAM.ensemble
    (model / "configs").mkdir(parents=True)
    (model / "1").mkdir()
    (model / "configs" / "gpu.pbtxt").write_text(
        f'name: "{HQSAM.ensemble}"\nbackend: "python"\nmax_batch_size: 0\n'
        f"input [\n{tensors(hqsam.ENSEMBLE_INPUTS)}\n]\noutput [\n{tensors(hqsam.tensors(HQSAM).ensemble_outputs)}\n]\n"
        "instance_group [ { kind: KIND_CPU, count: 1 } ]\n"
    )
    (model / "1" / "model.py").write_text(STAND_IN_HQSAM)
    # The image's default /models holds a note like this one: Triton must skip plain files.
    (root / "README.txt").write_text("not a model\n")
    return root


@pytest.mark.server
def test_chart_command_and_helm_test_script_on_tritonserver(default_docs, tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server = ChartServer(default_docs, stand_in_repository(tmp_path / "models"), "gpu")
    try:
        server.wait_for("ready:")
        assert server.ready() == (200, "ready\n")
        ports = server.ports

        # The helm test pod's script, with the pod's environment (URL pointed at this server).
        pod = helm_test_pod(default_docs)
        (pod_container,) = pod["spec"]["containers"]
        script_env = dict(os.environ, **container_environment(pod_container, default_docs))
        script_env["PERCEPTSERVE_URL"] = f"127.0.0.1:{ports['http']}"
        script_env["PERCEPTSERVE_TIMEOUT"] = "30"
        script_env.pop("HOME", None)
        result = subprocess.run(
            [sys.executable, "-c", pod_container["command"][2]],
            env=script_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "PASS" in result.stdout
        assert "statistics refused without the key (403)" in result.stdout

        # gRPC: Triton expects the key under the metadata key "triton-grpc-protocol-<header>"
        # (as NOTES.txt and the README say); model control stays off even with it.
        header = "triton-grpc-protocol-" + script_env["PERCEPTSERVE_API_KEY_HEADER"]
        key = script_env["PERCEPTSERVE_API_KEY"]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_inference_statistics("hqsam")
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_inference_statistics("hqsam", headers={script_env["PERCEPTSERVE_API_KEY_HEADER"]: key})
        assert client.get_inference_statistics("hqsam", headers={header: key}).model_stats[0].name == "hqsam"
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_config("hqsam")
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("hqsam", headers={header: key})
        assert "restricted" not in str(refused.value)  # refused by model control mode none
        assert client.is_model_ready("hqsam")
        client.close()
    finally:
        assert server.stop() == 0
