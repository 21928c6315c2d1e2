"""compose/ and compose/k8s/, validated offline: the Kubernetes and Compose schemas, the shape each workload
needs (probes, resources, one beat), and every command resolving to something that exists in the image."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from reactive.up import WS_MAX_SIZE

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S_FILES = sorted((COMPOSE_DIR / "k8s").glob("*.yaml"))
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
WORKLOADS = ("Deployment", "Job")
# Variables read by programs other than reactive/settings.py.
FOREIGN_VARIABLES = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "DJANGO_SETTINGS_MODULE",
}
# Host names a site's own probes and processes use, on top of its public host.
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}


@functools.cache
def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_named(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container per role"
    return dict(containers[0])


def k8s_env(workload: dict[str, Any]) -> dict[str, str]:
    """What a pod of this workload sees: the ConfigMap, the Secret, then the container's own env."""
    env: dict[str, str] = {}
    for source in container(workload).get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s_named("ConfigMap")[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            env.update(k8s_named("Secret")[source["secretRef"]["name"]]["stringData"])
    env.update({item["name"]: item["value"] for item in container(workload).get("env", [])})
    return env


def compose_services() -> dict[str, dict[str, Any]]:
    """The services as docker compose reads them with no compose/.env: ``${VAR:-default}`` gives its default,
    nested ones (``${A:-x${B:-y}}``) from the inside out."""
    text, before = COMPOSE.read_text(), ""
    while text != before:
        before, text = text, re.sub(r"\$\{[A-Z_]+(?::?-([^${}]*))?\}", lambda m: m.group(1) or "", text)
    return dict(yaml.safe_load(text)["services"])


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    return {name: value for name, value in pairs}


def ours(service: dict[str, Any]) -> bool:
    return "build" in service


# -- schemas ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    assert K8S_FILES, "no manifests under compose/k8s"
    for doc in k8s_documents():
        kubernetes_validate.validate(doc, version, strict=True)


def test_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- shape --------------------------------------------------------------------------------------------------
def test_every_role_has_a_k8s_workload_that_runs_what_its_name_says() -> None:
    deployments = k8s_named("Deployment")
    runs = {name: " ".join(container(d)["args"]) for name, d in deployments.items()}
    assert set(runs) == {
        "master-web",
        "master-worker",
        "master-beat",
        *(f"{c}-{role}" for c in ("alpha", "beta") for role in ("web", "beat", "listener")),
    }
    for name, command in runs.items():
        role = name.rsplit("-", 1)[1]
        site = name.rsplit("-", 1)[0]
        wanted = {
            "web": "uvicorn master_site.asgi:application"
            if site == "master"
            else "uvicorn client_site.asgi:application",
            "worker": f"celery -A {site}_site worker",
            "beat": "celery -A master_site beat" if site == "master" else f"reactive beat --client {site}",
            "listener": f"reactive listen --client {site}",
        }[role]
        assert command.startswith(wanted), f"{name} runs {command!r}"
        if role == "web" and site != "master":
            assert "--ws-per-message-deflate false" in command, f"{name} compresses every tiny frame"
            assert f"--ws-max-size {WS_MAX_SIZE}" in command, f"{name} takes 16 MiB frames nobody sends"
        if site != "master":
            assert k8s_env(deployments[name])["REACTIVE_CLIENT"] == site, (
                f"{name} is not configured as {site}"
            )
    assert len(set(runs.values())) == len(runs), "two workloads run the same command"


def test_beats_run_once_and_webs_are_probed_on_health() -> None:
    for name, deployment in k8s_named("Deployment").items():
        spec, box = deployment["spec"], container(deployment)
        if name.endswith("-beat"):
            assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", f"{name} could run twice"
        if name.endswith("-web"):
            port = box["args"][box["args"].index("--port") + 1]
            assert [p["containerPort"] for p in box["ports"]] == [int(port)], f"{name}: port mismatch"
            ready = box["readinessProbe"]["httpGet"]
            assert ready["path"] == "/health", f"{name}: readiness is not on /health"
            # The kubelet sends the pod's IP as Host: Django answers 400 to a host ALLOWED_HOSTS lacks.
            hosts = {h["value"] for h in ready.get("httpHeaders", []) if h["name"] == "Host"}
            allowed = k8s_env(deployment)["DJANGO_ALLOWED_HOSTS"].split(",")
            assert hosts and hosts <= set(allowed), f"{name}: readiness asks for a host the site refuses"
            assert_live_on_the_loop(name, box)
            service = k8s_named("Service")[name]
            assert service["spec"]["selector"] == spec["selector"]["matchLabels"], (
                f"{name}: service selects nothing"
            )


def assert_live_on_the_loop(name: str, box: dict[str, Any]) -> None:
    """A web's liveness: /live (the event loop answers it, asking no service), with timing that restarts a
    process whose loop stays blocked, never one that is only busy a moment."""
    from reactive.health import LIVE_PATH

    live, ready = box["livenessProbe"], box["readinessProbe"]
    # Not tcpSocket (the kernel accepts for a hung process), not /health (an outage would restart every pod).
    assert set(live) & {"httpGet", "tcpSocket", "exec", "grpc"} == {"httpGet"}, (
        f"{name}: liveness is not HTTP"
    )
    assert live["httpGet"]["path"] == LIVE_PATH and live["httpGet"]["port"] == "http", f"{name}: not on /live"
    assert live["timeoutSeconds"] >= ready["timeoutSeconds"], f"{name}: liveness less patient than readiness"
    assert live["periodSeconds"] * live["failureThreshold"] >= 30, f"{name}: a GC pause would restart it"
    assert live["periodSeconds"] * live["failureThreshold"] <= 120, f"{name}: a hung loop lives for minutes"
    assert live.get("initialDelaySeconds", 0) >= 10 or "startupProbe" in box, f"{name}: killed while starting"


# -- liveness of the loops: the heartbeat file ------------------------------------------------------------
HEARTBEAT_PROBE = ["python", "-m", "reactive.heartbeat", "--max-age"]


def heartbeat_minimum(role: str) -> float:
    """The least max-age that never restarts a loop that is merely waiting: a listener's longest round is
    one AWS call timing out on each attempt (the first and MAX_ATTEMPTS retries), with standard mode's
    longest backoff between them (a long poll is 20 s); a beat goes round at least every second."""
    from botocore.retries.standard import ExponentialBackoff

    from reactive.heartbeat import EVERY_SECONDS
    from reactive.transport.sqs import MAX_ATTEMPTS, READ_TIMEOUT_SECONDS

    if role == "listener":
        calls = READ_TIMEOUT_SECONDS * (MAX_ATTEMPTS + 1)
        return max(2 * 20.0, calls + MAX_ATTEMPTS * ExponentialBackoff._MAX_BACKOFF)
    return 10 * EVERY_SECONDS


def heartbeat_probe(name: str, command: list[str], env: dict[str, str]) -> float:
    """The probe's max age, after checking it is ours and reads the file the process writes."""
    assert command[: len(HEARTBEAT_PROBE)] == HEARTBEAT_PROBE, f"{name}: liveness is not the heartbeat probe"
    path = env.get("REACTIVE_HEARTBEAT_FILE", "")
    assert path.startswith("/tmp/"), f"{name}: no heartbeat file, or one uid 10001 may not write"
    # With no path of its own the probe reads REACTIVE_HEARTBEAT_FILE, as the listener and beat do.
    assert command[len(HEARTBEAT_PROBE) + 1 :] in ([], [path]), f"{name}: the probe reads another file"
    return float(command[len(HEARTBEAT_PROBE)])


def loop_workloads() -> Iterator[tuple[str, str, list[str], dict[str, str]]]:
    """(name, role, probe command, environment) of every listener and `reactive beat`, k8s and compose."""
    for name, deployment in k8s_named("Deployment").items():
        role = name.rsplit("-", 1)[1]
        if role == "listener" or (role == "beat" and container(deployment)["args"][0] == "reactive"):
            box = container(deployment)
            yield f"k8s {name}", role, box["livenessProbe"]["exec"]["command"], k8s_env(deployment)
    example = env_example()
    for name, service in compose_services().items():
        command = " ".join(str(a) for a in service.get("command", []))
        clock = "reactive beat" in command or (
            command.startswith("celery -A client_site") and "--beat" in command
        )
        role = "listener" if command.startswith("reactive listen") else "beat" if clock else ""
        if role:
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD", f"compose {name}: the healthcheck must run the probe as it is"
            yield f"compose {name}", role, list(test[1:]), {**example, **service.get("environment", {})}


def test_listeners_and_beats_are_live_while_their_heartbeat_file_is_fresh() -> None:
    found = list(loop_workloads())
    roles = [role for _, role, _, _ in found]
    # Listeners: alpha and beta, in k8s and compose; clocks: `reactive beat` in k8s, Celery beat in compose.
    assert roles.count("listener") == 4 and roles.count("beat") == 4, found
    for name, role, command, env in found:
        assert heartbeat_probe(name, command, env) >= heartbeat_minimum(role), (
            f"{name}: restarts a waiting loop"
        )
    for name, deployment in k8s_named("Deployment").items():
        if name.endswith(("-listener", "-beat")) and not name.startswith("master"):
            live = container(deployment)["livenessProbe"]
            assert live.get("initialDelaySeconds", 0) >= 15, f"{name}: probed before its loop starts"
            assert live["timeoutSeconds"] >= 5, f"{name}: a Python start-up on a throttled CPU times out"


@pytest.mark.parametrize("age", ["fresh", "stale", "missing"])
def test_the_heartbeat_probes_pass_on_a_fresh_file_and_fail_on_a_stale_or_missing_one(
    tmp_path: Path, age: str
) -> None:
    """Each probe exactly as the manifest gives it, in its container's environment (its file moved under
    tmp_path, the same path below it), run as the kubelet would: by a fresh interpreter."""
    for index, (name, _role, command, env) in enumerate(loop_workloads()):
        max_age = heartbeat_probe(name, command, env)
        path = tmp_path / str(index) / env["REACTIVE_HEARTBEAT_FILE"].lstrip("/")
        if age != "missing":
            path.parent.mkdir(parents=True)
            path.touch()
            then = time.time() - (max_age + 5 if age == "stale" else 0)
            os.utime(path, (then, then))
        argv = [sys.executable if command[0] == "python" else command[0], *command[1:]]
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REACTIVE_", "DATABASE_URL"))
        }
        done = subprocess.run(
            argv,
            env={**clean, **env, "REACTIVE_HEARTBEAT_FILE": str(path), "PYTHONPATH": str(ROOT)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == (0 if age == "fresh" else 1), f"{name}, {age} file: {done.stderr}"


def test_every_container_has_requests_limits_and_runs_as_non_root() -> None:
    for doc in k8s_documents():
        if doc["kind"] not in WORKLOADS:
            continue
        name, box = doc["metadata"]["name"], container(doc)
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(box["resources"][bound]), f"{name}: no {bound}"
        assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, name


def test_jobs_migrate_every_site_and_provision() -> None:
    jobs = {name: container(job)["args"] for name, job in k8s_named("Job").items()}
    assert jobs["provision"] == ["reactive", "provision"]
    for site, settings in (("master", "master_site"), ("alpha", "client_site"), ("beta", "client_site")):
        assert jobs[f"migrate-{site}"][:4] == ["python", "-m", "django", "migrate"]
        assert f"{settings}.settings" in jobs[f"migrate-{site}"]
        if site != "master":
            assert k8s_env(k8s_named("Job")[f"migrate-{site}"])["REACTIVE_CLIENT"] == site


# -- what each site's pods may see ---------------------------------------------------------------------------
def site_of(env: dict[str, str]) -> str | None:
    """The site a container runs: "master", a client's name, or None (provisioning: no site at all)."""
    module = env.get("DJANGO_SETTINGS_MODULE", "")
    if module.startswith("client_site"):
        return env["REACTIVE_CLIENT"]
    return "master" if module.startswith("master_site") else None


def k8s_workloads() -> Iterator[tuple[str, dict[str, str]]]:
    for doc in k8s_documents():
        if doc["kind"] in WORKLOADS:
            yield f"k8s {doc['metadata']['name']}", k8s_env(doc)


def compose_workloads() -> Iterator[tuple[str, dict[str, str]]]:
    example = env_example()
    for name, service in compose_services().items():
        if ours(service):
            yield f"compose {name}", {**example, **service.get("environment", {})}


def database_opened(env: dict[str, str]) -> str:
    """The database URL a container's site opens, as reactive/settings.py chooses it from its environment."""
    from reactive import settings

    site = site_of(env)
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("DATABASE_URL")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("DATABASE_URL"):
                patch.setenv(name, value)
        if site == "master":
            return settings.database_url("master")
        return settings.database_url("client", site)


def assert_sites_see_only_their_own_database(workloads: list[tuple[str, dict[str, str]]]) -> None:
    """Each site's containers open one database, the one its migrations use, and no container holds another
    site's: not its URL, not a DATABASE_URL_<CLIENT> of another client, not a template that gives it."""
    by_site: dict[str, set[str]] = defaultdict(set)
    for _name, env in workloads:
        if site := site_of(env):
            by_site[site].add(database_opened(env))
    assert set(by_site) == {"master", "alpha", "beta"}, by_site
    for site, databases in by_site.items():
        assert len(databases) == 1, f"the containers of {site} open different databases: {databases}"
    own = {site: next(iter(databases)) for site, databases in by_site.items()}
    assert len(set(own.values())) == len(own), f"two sites share a database: {own}"
    for name, env in workloads:
        site = site_of(env)
        others = {s: url for s, url in own.items() if s != site}
        for variable, value in env.items():
            if site is None and variable.startswith("DATABASE_URL"):
                raise AssertionError(f"{name} opens no database but is given {variable}")
            if variable.startswith("DATABASE_URL_") and site is not None:
                mine = site != "master" and variable == f"DATABASE_URL_{site.upper().replace('-', '_')}"
                assert mine, f"{name} ({site}) is given {variable}, another site's database"
            for other, url in others.items():
                seen = {value, *(value.replace("{client}", s) for s in own)}
                assert url not in seen, (
                    f"{name} ({site or 'no site'}) can read {other}'s database from {variable}"
                )


def test_no_k8s_pod_sees_another_sites_database() -> None:
    assert_sites_see_only_their_own_database(list(k8s_workloads()))


def test_no_compose_client_container_sees_another_sites_database() -> None:
    assert_sites_see_only_their_own_database(list(compose_workloads()))


def test_the_isolation_check_catches_a_shared_secret() -> None:
    """Without this, a check that looks at nothing would pass: the layout this replaced (one Secret with every
    site's URL, and a compose DATABASE_URL template every container got) must fail it."""
    master, alpha, beta = (f"postgres://u:p@db/{s}" for s in ("master", "alpha", "beta"))
    shared = {"DATABASE_URL": master, "DATABASE_URL_ALPHA": alpha, "DATABASE_URL_BETA": beta}
    pods = [
        ("master", {**shared, "DJANGO_SETTINGS_MODULE": "master_site.settings"}),
        *(
            (c, {**shared, "DJANGO_SETTINGS_MODULE": "client_site.settings", "REACTIVE_CLIENT": c})
            for c in ("alpha", "beta")
        ),
    ]
    with pytest.raises(AssertionError, match="database"):
        assert_sites_see_only_their_own_database(pods)
    # The master with a URL of its own, the clients with the template: "{client}" gives the master's too.
    template = "postgres://u:p@db/{client}"
    pods = [
        (name, {**{k: v for k, v in env.items() if not k.startswith("DATABASE_URL_")}, "DATABASE_URL": url})
        for (name, env), url in zip(pods, (master, template, template), strict=True)
    ]
    with pytest.raises(AssertionError, match="can read master's database"):
        assert_sites_see_only_their_own_database(pods)


def test_each_k8s_site_has_a_django_key_of_its_own_and_only_aws_callers_get_credentials() -> None:
    """The Django key signs a site's sessions: one site's pods must not hold another's. AWS credentials go to
    the pods that call AWS (README, IAM permissions by role), the SSO key to every site."""
    keys: dict[str, set[str]] = defaultdict(set)
    aws_callers = {"master-worker", "alpha-listener", "beta-listener", "provision"}
    for name, env in k8s_workloads():
        site = site_of(env)
        if site:
            keys[site].add(env["DJANGO_SECRET_KEY"])
            assert env["REACTIVE_SSO_KEY"], f"{name}: no SSO key"
        else:
            assert not {"DJANGO_SECRET_KEY", "REACTIVE_SSO_KEY"} & set(env), f"{name} needs no Django key"
        calls_aws = name.removeprefix("k8s ") in aws_callers
        has_aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
        assert has_aws == calls_aws, (
            f"{name}: AWS credentials {'missing' if calls_aws else 'given to a pod that calls no AWS'}"
        )
    assert all(len(values) == 1 for values in keys.values()), keys
    assert len({next(iter(values)) for values in keys.values()}) == len(keys), (
        f"two sites share a Django key: {keys}"
    )


def test_no_secret_is_also_in_a_configmap() -> None:
    secret_keys = {key for secret in k8s_named("Secret").values() for key in secret["stringData"]}
    for name, config in k8s_named("ConfigMap").items():
        assert not secret_keys & set(config["data"]), f"a secret is also in ConfigMap {name}"


def public_host(env: dict[str, str]) -> str:
    """The host browsers reach this container's site on: REACTIVE_MASTER_URL, or its REACTIVE_CLIENT_URLS entry."""
    site = site_of(env)
    if site == "master":
        url = env["REACTIVE_MASTER_URL"]
    else:
        url = dict(item.split("=", 1) for item in env["REACTIVE_CLIENT_URLS"].split(","))[str(site)]
    return str(urlsplit(url).hostname)


def test_each_k8s_site_allows_its_own_host_only() -> None:
    """ALLOWED_HOSTS is also the websocket origin check (AllowedHostsOriginValidator): a site that listed
    another's host would take websockets opened by that site's pages, and CSRF-checked posts likewise."""
    seen = set()
    for name, env in k8s_workloads():
        if not site_of(env):
            continue
        own = public_host(env)
        hosts = set(env["DJANGO_ALLOWED_HOSTS"].split(","))
        assert own in hosts and hosts - LOOPBACK_HOSTS == {own}, f"{name} allows {sorted(hosts)}"
        origins = env.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",")
        assert origins == [f"https://{own}"], f"{name} trusts forms from {origins}"
        seen.add(own)
    assert len(seen) == 3, seen


def test_compose_has_every_service_healthchecks_and_its_settings_from_the_env_example() -> None:
    services = compose_services()
    for needed in ("redis", "moto", "provision", "master-web", "master-worker", "master-beat"):
        assert needed in services
    for client in ("alpha", "beta"):
        for role in ("web", "worker-beat", "listener"):
            assert f"{client}-{role}" in services
    assert services["provision"]["command"] == ["reactive", "provision"]
    for name, service in services.items():
        if ours(service):
            assert [e["path"] for e in service["env_file"]][0] == ".env.example", name
        if name.endswith("-web"):
            assert "/health" in " ".join(service["healthcheck"]["test"]), f"{name}: no healthcheck on /health"
        if name.endswith("-web") and name != "master-web":
            assert "--ws-per-message-deflate false" in " ".join(service["command"]), name
            assert f"--ws-max-size {WS_MAX_SIZE}" in " ".join(service["command"]), name


def test_every_setting_the_manifests_give_is_one_that_is_read() -> None:
    """A variable nobody reads is a typo or a leftover: reactive/settings.py (or boto3) must read it."""
    source = (ROOT / "reactive" / "settings.py").read_text()
    given = set(env_example())
    for doc in k8s_documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            given |= set(doc.get("data") or doc.get("stringData") or {})
    for name in sorted(given - FOREIGN_VARIABLES):
        read = f'"{name}"' in source or (name.startswith("DATABASE_URL_") and '"DATABASE_URL_' in source)
        assert read, f"{name} is given to the containers but reactive/settings.py never reads it"


# -- commands ---------------------------------------------------------------------------------------------
# What an operator puts in compose/.env or the Secret: the sites refuse the examples' placeholders.
OPERATOR_KEYS = {"DJANGO_SECRET_KEY": "s" * 48, "REACTIVE_SSO_KEY": "k" * 48}


def commands_by_site() -> dict[tuple[str, ...], list[list[str]]]:
    """Every command our image runs, grouped by the environment it runs in (source and variables)."""
    groups: dict[tuple[str, ...], list[list[str]]] = defaultdict(list)
    example = env_example()
    for service in compose_services().values():
        if ours(service):
            env = {**example, **OPERATOR_KEYS, **service.get("environment", {})}
            groups[_site_key(env, "compose")].append([str(a) for a in service["command"]])
    for doc in k8s_documents():
        if doc["kind"] in WORKLOADS:
            groups[_site_key({**k8s_env(doc), **OPERATOR_KEYS}, "k8s")].append(list(container(doc)["args"]))
    return groups


def test_the_examples_keys_are_placeholders_the_sites_refuse() -> None:
    """Shipped keys are public: a site that accepted one would let anybody mint login links."""
    from reactive.errors import ConfigError
    from reactive.settings import secret_key, sso_key

    given_by = [env_example(), *(secret["stringData"] for secret in k8s_named("Secret").values())]
    checked = [
        name for given in given_by for name in given if name in ("DJANGO_SECRET_KEY", "REACTIVE_SSO_KEY")
    ]
    assert checked.count("DJANGO_SECRET_KEY") == 4 and checked.count("REACTIVE_SSO_KEY") == 2, checked
    for given in given_by:
        for name, read in (("DJANGO_SECRET_KEY", secret_key), ("REACTIVE_SSO_KEY", sso_key)):
            if name not in given:
                continue
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(name, given[name])
                with pytest.raises(ConfigError, match="placeholder" if given[name] else "not set"):
                    read(False)


def _site_key(env: dict[str, str], source: str) -> tuple[str, ...]:
    return (source, *(f"{k}={v}" for k, v in sorted(env.items())))


def _unresolved(key: tuple[str, ...], commands: list[list[str]], var: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REACTIVE_", "DATABASE_URL"))}
    env.update(dict(item.split("=", 1) for item in key[1:]))
    env.update(REACTIVE_VAR_DIR=str(var), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.resolve_commands"],
        input=json.dumps(commands),
        env=env,
        cwd=var,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for command, problem in json.loads(done.stdout).items():
        yield f"{key[0]}: `{command}`: {problem}"


def test_every_command_resolves_to_something_that_exists(tmp_path: Path) -> None:
    problems = [p for key, cmds in commands_by_site().items() for p in _unresolved(key, cmds, tmp_path)]
    assert not problems, "\n".join(problems)


def test_the_resolver_catches_what_does_not_exist(tmp_path: Path) -> None:
    """Without this, a resolver that accepts anything would make the test above pass."""
    bad = [
        ["reactive", "lsiten", "--client", "alpha"],
        ["reactive", "listen", "--clients", "alpha"],
        ["celery", "-A", "master_sight", "worker"],
        ["celery", "-A", "master_site", "wroker"],
        ["uvicorn", "master_site.asgi:app", "--port", "8000"],
        ["python", "-m", "django", "migrat"],
    ]
    key = ("k8s", "DJANGO_SETTINGS_MODULE=master_site.settings")
    assert len(list(_unresolved(key, bad, tmp_path))) == len(bad)


def test_every_template_and_static_file_goes_into_the_wheel() -> None:
    """A `pip install .` deployment serves the sites from site-packages: a template or stylesheet that
    package-data does not list is missing there (the master's stylesheet was), while a checkout works."""
    import fnmatch
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    site_files = [
        path
        for path in tracked.stdout.splitlines()
        if path.split("/")[0] in ("client_site", "master_site")
        and ("/templates/" in path or "/static/" in path)
    ]
    assert site_files, "no site files found: the test no longer looks where they are"

    def packaged(path: str) -> bool:
        for package, patterns in listed.items():
            folder = package.replace(".", "/") + "/"
            inside = path.removeprefix(folder)
            if path.startswith(folder) and any(
                fnmatch.fnmatch(inside, p.replace("**/", "*")) for p in patterns
            ):
                return True
        return False

    assert [path for path in site_files if not packaged(path)] == []
