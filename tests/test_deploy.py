"""deploy/: the Kubernetes manifests render (``kubectl kustomize``) and every object passes the Kubernetes JSON
schemas (``kubernetes-validate``, strict: unknown fields fail), and they agree with the service: probe paths are
its routes, every EMOTION_* variable is a setting, the grace period covers the shutdown, selectors match the pods.

Without kubectl the files of deploy/base (each a complete object) are validated as they are; the overlay renders
only where kubectl is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = ROOT / "deploy"
KUBECTL = shutil.which("kubectl")
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
CRDS = {"monitoring.coreos.com/v1"}  # no schema bundled: checked by hand below


def render(overlay: str, tmp_path: Path) -> list[dict]:
    """``kubectl kustomize`` of a copy of deploy/ (the production overlay gets a throwaway api-key.env)."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the overlays are rendered only with it")
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    for example in copy.glob("overlays/*/api-key.env.example"):
        example.with_suffix("").write_text("api-key=0123456789abcdef\n")
    out = subprocess.run([KUBECTL, "kustomize", str(copy / overlay)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def base_files() -> list[dict]:
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [doc for doc in yaml.safe_load_all((DEPLOY / "base" / name).read_text()) if doc]
    return docs


def validate(objects: list[dict]) -> None:
    for obj in objects:
        if obj["apiVersion"] in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {obj["kind"]: obj for obj in objects}


def check_consistency(objects: list[dict]) -> None:
    from server.app import create_app
    from server.config import Settings

    kinds = by_kind(objects)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"} <= kinds.keys()
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(service["spec"]["selector"])
    assert selects(kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    backend = kinds["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    annotations = kinds["Ingress"]["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600  # live streams stay open

    # Probes ask the service's own routes, on its port.
    routes = set(create_app(Settings()).openapi()["paths"])
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= routes and str(port) in container["args"]

    # Every EMOTION_* variable is a setting.
    env = {e["name"]: e for e in container["env"]}
    known = {f"EMOTION_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("EMOTION_")} <= known
    settings = Settings(**{k[len("EMOTION_") :].lower(): e["value"] for k, e in env.items() if "value" in e})
    assert settings.cpu_threads <= float(container["resources"]["requests"]["cpu"])
    secret_ref = env["EMOTION_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret_ref["key"] == "api-key"

    # Shutdown: preStop, then the drain and the in-flight requests, all inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + settings.drain_seconds + settings.shutdown_timeout
    assert pod["spec"]["terminationGracePeriodSeconds"] > needed

    # Non-root, read-only root filesystem, a writable /tmp (video uploads) from an emptyDir.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and env["EMOTION_VIDEO_TEMP_DIR"]["value"] == "/tmp"


def test_base_files_validate() -> None:
    objects = base_files()
    validate(objects)
    check_consistency(objects)


def test_base_renders(tmp_path: Path) -> None:
    objects = render("base", tmp_path)
    validate(objects)
    check_consistency(objects)
    assert all(obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "emotion-service" for obj in objects)


def test_production_overlay_renders(tmp_path: Path) -> None:
    objects = render("overlays/production", tmp_path)
    validate(objects)
    check_consistency(objects)
    kinds = by_kind(objects)
    assert all(obj["metadata"].get("namespace") == "emotion" for obj in objects if obj["kind"] != "Namespace")
    # The generated Secret (hashed name) is the one the Deployment reads the key from.
    secret = kinds["Secret"]
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ref = next(e for e in container["env"] if e["name"] == "EMOTION_API_KEY")["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] != "emotion-service-api-key" and "api-key" in secret["data"]
    # Autoscaling on live connections, a metric the service exports.
    metrics = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"]
    custom = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
    assert custom == ["emotion_ws_connections_active"]
    from server.metrics import Metrics

    exported = {metric.name for metric in Metrics().registry.collect()}
    assert custom[0] in exported
    monitor = kinds["ServiceMonitor"]
    service = kinds["Service"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    # With the key set /metrics needs it too: the scrape sends the same Secret as a bearer token.
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert (credentials["name"], credentials["key"]) == (ref["name"], ref["key"])
