"""Fuzzing: schemathesis against the live daemon, hypothesis against ids and metadata.

The daemon under fuzz serves every source kind, each holding secrets: local Workers with a
canary in every sensitive field (``tests/test_canaries.py``), a remote runtime whose URL
prefix, bearer token and error text are canaries (its operations fail, so those errors are
exercised), an embedded memory runtime whose operations succeed, and a configured client
whose token is a canary. Schemathesis (``st run``, a separate process, over real HTTP) reads
the daemon's own ``/openapi.json`` and runs its coverage, fuzzing (positive and negative
data) and stateful (following the document's links) phases with every check, a fixed seed
and a bounded number of examples: no 500, every status, header and body as documented,
invalid input refused, valid input accepted, and no planted secret in any answer
(``tests/fuzz_hooks.py``).

The property tests feed arbitrary text to id validation and arbitrary bytes to the local
metadata reader: a valid id or a typed error, a record or a diagnostic, never an exception.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import hypothesis.strategies as st
import trio
from hypothesis import HealthCheck, given, settings

from tests.conftest import StartDaemon, wait_for
from tests.embedded_plugins import INSTANCES, embedded_source_toml
from tests.fake_runtime import FakeRuntime, remote_source_toml, start_fake
from tests.test_api import sources_toml, wait_observed
from tests.test_canaries import Canaries, forbidden, planted_tree
from yoi_registryd.errors import InvalidIdentifier
from yoi_registryd.http.app import ApiState, create_app
from yoi_registryd.http.openapi import build_document, documented_rules
from yoi_registryd.http.security import OPEN_PATHS, STATUS_PAGE
from yoi_registryd.ids import MAX_ID_BYTES, is_valid_identifier, validate_identifier
from yoi_registryd.registry import RegistryActor
from yoi_registryd.sources import local_metadata
from yoi_registryd.sources.local_metadata import LocalOptions, entry_worker_id, evaluate_entry

REPO = Path(__file__).parent.parent
OPEN = OPEN_PATHS | {STATUS_PAGE}
"""Not audited once clients are configured (the status page then loads without data)."""
SEED = 20261124
MAX_EXAMPLES = 25
ST_TIMEOUT_S = 120

ST_CONFIG = """
seed = {seed}
[generation]
database = "none"
max-examples = {max_examples}
[checks.not_a_server_error]
# 500 is a failure. 501-504 are the documented gateway answers (operation unsupported,
# runtime failed, unreachable, timed out); status_code_conformance still demands that each
# is documented for its route.
expected-statuses = ["1XX", "2XX", "3XX", "4XX", "501", "502", "503", "504"]
[[operations]]
# The probes' parameters are free-form (an unknown check name is reported, not refused):
# there is no invalid value to generate.
include-path-regex = "^/(livez|readyz|healthz)$"
generation.mode = "positive"
[[operations]]
# The workspace-scoped twins (/api/w/...) run the handlers of the routes without, which
# get the full budget: a few examples each show they are wired and documented alike.
include-path-regex = "^/api/w/"
generation.max-examples = 3
"""


def st_command() -> list[str]:
    return [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]


async def test_schemathesis_finds_nothing_against_the_live_daemon(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    canary = Canaries()
    tmp, data, run, _ = planted_tree(canary, tmp_path)

    remote_token = canary("remotetoken")
    (tmp / "remote-token").write_text(remote_token)
    remote = FakeRuntime(
        "fz-remote-native",
        token=remote_token,
        error_message=canary("remoteerror"),
        fault="error500",
        fault_routes=frozenset({"operation"}),
    )
    remote.add("w-1", "w-2")
    prefix = "/" + canary("remoteprefix")
    server = await start_fake(nursery, (prefix, remote))

    client_token = canary("clienttoken")
    (tmp / "client-token").write_text(client_token)
    key = uuid.uuid4().hex
    config = (
        sources_toml(("fz-local", data, run), watch=False)
        + remote_source_toml(
            "fz-remote",
            server.url(prefix),
            token_file=str(tmp / "remote-token"),
            poll_interval="200ms",
            stale_after="30s",
        )
        + embedded_source_toml(
            runtime_id="fz-memory",
            factory="tests.embedded_plugins:tracked_memory",
            options={"key": key, "secret": canary("embeddedoption")},
        )
        + f"""
[[clients]]
name = "fuzzer"
token_file = "{tmp / "client-token"}"
workspaces = ["*"]
[audit]
path = "{tmp_path / "audit.jsonl"}"
"""
    )
    d = await start_daemon(config)
    d.client.headers["Authorization"] = f"Bearer {client_token}"
    await wait_for(lambda: key in INSTANCES, message="the embedded runtime")
    memory = INSTANCES[key]
    for i in range(3):
        memory.spawn(f"m-{i}")
    await wait_observed(d, "fz-local", workers=5)
    await wait_observed(d, "fz-remote", workers=2)
    await wait_observed(d, "fz-memory", workers=3)

    needles = [*forbidden(canary, tmp, d.base_url), client_token, remote_token]
    needles_file = tmp_path / "forbidden.txt"
    needles_file.write_text("\n".join(needles) + "\n")
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(ST_CONFIG.format(seed=SEED, max_examples=MAX_EXAMPLES))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
        "YOI_FUZZ_FORBIDDEN": str(needles_file),
        "NO_COLOR": "1",
    }
    command = [
        *st_command(),
        "--config-file",
        str(config_file),
        "run",
        f"{d.base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {client_token}",
        "--checks",
        "all",
        "--phases",
        "coverage,fuzzing,stateful",
        "--workers",
        "1",
        "--request-timeout",
        "5",
        "--no-color",
    ]
    with trio.fail_after(ST_TIMEOUT_S):
        result = await trio.run_process(
            command, env=env, cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
        )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, output[-20000:]
    # The run really reached the API's logic: every operation, links followed, and cases
    # answered by each kind of source.
    match = re.search(r"(\d+) generated, (\d+) passed", output)
    assert match is not None and int(match.group(1)) > 500, output[-3000:]
    links = re.search(r"API Links:\s+(\d+) covered", output)
    assert links is not None and int(links.group(1)) >= 10, output[-3000:]
    # Every request was audited; the audit shows each route answered 200 at least once, and
    # operations that reached the embedded runtime and were accepted.
    audit = tmp_path / "audit.jsonl"

    def answered_ok() -> set[tuple[str, str]]:
        lines = audit.read_text().splitlines() if audit.exists() else []
        records = [json.loads(line) for line in lines]
        return {(r["method"], r["route"]) for r in records if r["status"] == 200}

    await wait_for(lambda: ("GET", "/api/workers") in answered_ok(), message="audit records")
    ok = answered_ok()
    documented = {(m, r) for m, r, _ in documented_rules(create_app(d.daemon.api).url_map)}
    guarded_gets = {(m, r) for m, r in documented if m == "GET" and r not in OPEN}
    assert guarded_gets <= ok, sorted(guarded_gets - ok)
    assert any(m == "POST" for m, _ in ok), "no worker operation succeeded"


# -- properties ------------------------------------------------------------------------------

DOCUMENT_ID_PATTERN = re.compile(
    build_document(create_app(ApiState(RegistryActor(1))).url_map)["paths"][
        "/api/runtimes/{runtime_id}"
    ]["get"]["parameters"][0]["schema"]["pattern"]
)


@settings(max_examples=300, derandomize=True)
@given(st.text(max_size=140) | st.text(alphabet="Az09_:-.é/ ", max_size=140))
def test_id_validation_agrees_with_the_document(value: str) -> None:
    """The path parameter pattern the document publishes is exactly what the daemon accepts."""
    documented = DOCUMENT_ID_PATTERN.fullmatch(value) is not None and len(value) <= MAX_ID_BYTES
    assert is_valid_identifier(value) == documented
    try:
        assert validate_identifier(value, "runtime_id") == value
    except InvalidIdentifier as error:
        assert not documented
        assert error.status == 400 and error.details == {"parameter": "runtime_id"}


names = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b"..")
)


@settings(max_examples=200, derandomize=True)
@given(names)
def test_any_directory_name_gets_a_valid_stable_worker_id(name: bytes) -> None:
    text = os.fsdecode(name)
    worker_id = entry_worker_id(text)
    assert is_valid_identifier(worker_id)
    assert entry_worker_id(text) == worker_id


def _options(pods: Path) -> LocalOptions:
    return LocalOptions(
        runtime_id="local-worker-runtime",
        directory=pods,
        runtime_dir=pods.parent / "run",
        bound_root=None,
        liveness_check=True,
        max_age_seconds=3600.0,
        max_bytes=64 * 1024,
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
METADATA_KEYS = (
    "worker_name",
    "pod_name",
    "workspace_root",
    "active",
    "resolved_manifest_snapshot",
    "spawned_children",
    "segment_id",
    "session_id",
)
metadata_objects = st.dictionaries(
    st.sampled_from(METADATA_KEYS) | st.text(max_size=12), json_values, max_size=8
).map(lambda d: json.dumps(d).encode())
metadata_bytes = (
    st.binary(max_size=2048) | metadata_objects | metadata_objects.map(lambda b: b[: len(b) // 2])
)


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=metadata_bytes, name=st.sampled_from(["w", "worker-é", "a b", "x" * 200]))
def test_any_metadata_bytes_give_a_record_or_a_diagnostic(
    tmp_path: Path, data: bytes, name: str
) -> None:
    pods = tmp_path / "pods"
    entry = pods / name
    entry.mkdir(parents=True, exist_ok=True)
    (entry / local_metadata.METADATA_FILE).write_bytes(data)
    result = evaluate_entry(name, _options(pods), now=0.0)
    assert result.worker_id == entry_worker_id(name)
    if result.worker is None:
        assert len(result.diagnostics) == 1
        diagnostic = result.diagnostics[0]
        # The catch-all for the unforeseen is never what handled these bytes.
        assert "internal error" not in diagnostic.message
        assert diagnostic.code.startswith("local_pod_")
    else:
        assert result.worker.worker_id == result.worker_id
        assert is_valid_identifier(result.worker.host_id)
    for diagnostic in result.diagnostics:
        assert str(tmp_path) not in diagnostic.message
        assert name not in diagnostic.message or name == "w"
