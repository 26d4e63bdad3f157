"""A rolling update loses nothing: two replicas of the image behind HAProxy, replaced one at a time under load.

    TEXTGEN_IMAGE=textgen:latest scripts/test.sh -m container tests/e2e/test_rolling_update.py -s   # about 1.5 min

The balancer is deploy/lb (HAProxy from Debian, image built once and kept, tagged by a hash of that folder). All
containers share a Docker network made for the run; only the balancer's port is published, on 127.0.0.1. Replicas
take slots by DNS alias (textgen-N is the balancer's server sN); the balancer sends traffic to a slot only while its
/readyz answers 200, and retries a refused connection on another replica.

Five clients (four plain /generate, one /generate_stream read to its `done` event) send 8-24 token `ignore_eos`
generations through the balancer the whole time, while each old replica is replaced the way a rolling update
does it: start the new one, wait until the balancer has it UP, drain the old one in the balancer (what removing a
pod from a Service's endpoints does in its preStop window), `docker stop -t 120` it (SIGTERM: it finishes what it
has) and check it exited 0. Replicas log their probes too (BentoML skips them by default), so each log shows when
its /readyz turned 200 and that no generation reached it before.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.e2e.docker_support import docker, free_loopback_port, json_log, lb_image, logs_of

pytestmark = pytest.mark.container

API_KEY = secrets.token_urlsafe(24)
BACKEND = "textgen"  # deploy/lb/haproxy.cfg: backend `textgen`, server sN answers to the DNS name textgen-N
ROLLOUT = (("s1", "s3"), ("s2", "s4"))  # (old slot, new slot), in the order they are replaced
PLAIN_CLIENTS, STREAM_CLIENTS = 4, 1
TOKENS = (8, 24)
READY_TIMEOUT_S = 180
STOP_GRACE_S = 120
WARMUP_S, TAIL_S = 5.0, 5.0  # load before the first replacement and after the last
RUN_LIMIT_S = 420  # the clients stop by then whatever happens
MAX_REQUESTS_PER_CLIENT = 5000
REQUEST_TIMEOUT_S = 120
MAX_GAP_S = 5.0  # longest stretch without a completed request
REPLICA_ENV = {
    "API_KEY": API_KEY,
    "TORCH_THREADS": "1",  # up to three replicas share two cores during a replacement
    # Log the probes too (BentoML leaves out /readyz, /livez, /healthz by default): the log shows readiness.
    "BENTOML_CONFIG_OPTIONS": 'services.textgen.logging.access.skip_paths=["/metrics"]',
}


@dataclass
class Outcome:
    stream: bool
    tokens: int
    started: float  # epoch seconds
    ended: float
    served_by: str  # the balancer's X-Served-By: the slot
    error: str | None  # None: a complete answer


@dataclass
class Replacement:
    old: str
    new: str
    old_slot: str
    new_slot: str
    started: float  # `docker run` of the new replica
    up_in_lb: float  # the balancer has the new replica UP
    in_flight_at_stop: int  # requests the old replica still had when it got SIGTERM
    stop_s: float
    exit_code: int


@dataclass
class Rollout:
    outcomes: list[Outcome]
    replacements: list[Replacement]
    load_started: float
    load_ended: float
    logs: dict[str, list[dict[str, Any]]]  # replica name -> its JSON log


class Balancer:
    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url

    def runtime(self, command: str) -> str:
        """HAProxy's runtime API, on its admin socket inside the container."""
        cmd = ("exec", "-i", self.name, "socat", "stdio", "UNIX-CONNECT:/run/haproxy/admin.sock")
        return docker(*cmd, stdin=command + "\n", timeout=20).stdout

    def servers(self) -> dict[str, dict[str, str]]:
        rows = csv.DictReader(self.runtime("show stat").lstrip("# ").splitlines())
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND}

    def wait_for(self, slot: str, status: str, timeout_s: float, alive: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.servers()[slot]["status"] == status:
                return
            alive()
            time.sleep(0.25)
        pytest.fail(f"{slot} not {status} within {timeout_s} s: {self.servers()[slot]['status']}")


class Load:
    """Clients looping through the balancer until stopped, each request checked and counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + RUN_LIMIT_S
        streams = [False] * PLAIN_CLIENTS + [True] * STREAM_CLIENTS
        self._threads = [threading.Thread(target=self._client, args=(i, s)) for i, s in enumerate(streams)]

    def start(self) -> float:
        for thread in self._threads:
            thread.start()
        return time.time()

    def stop(self) -> float:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 10)
        return time.time()

    def _client(self, index: int, stream: bool) -> None:
        rng = random.Random(index)
        with requests.Session() as session:
            for n in range(MAX_REQUESTS_PER_CLIENT):
                if self._stop.is_set() or time.monotonic() > self._deadline:
                    return
                outcome = self._request(session, rng.randint(*TOKENS), f"Client {index} asks {n}:", stream)
                with self._lock:
                    self.outcomes.append(outcome)

    def _request(self, session: requests.Session, tokens: int, prompt: str, stream: bool) -> Outcome:
        body = {"prompt": prompt, "max_new_tokens": tokens, "ignore_eos": True}
        path = "/generate_stream" if stream else "/generate"
        started, served_by = time.time(), ""
        try:
            with session.post(
                self.url + path, json=body, headers={"x-api-key": API_KEY}, stream=stream, timeout=REQUEST_TIMEOUT_S
            ) as r:
                served_by = r.headers.get("x-served-by", "")
                if r.status_code != 200:
                    error = f"{r.status_code}: {r.text[:200]}"
                else:
                    error = read_stream(r, tokens) if stream else check_answer(r.json(), tokens)
        except (requests.RequestException, ValueError) as exc:  # ValueError: a body that is not JSON
            error = f"{type(exc).__name__}: {exc}"
        return Outcome(stream, tokens, started, time.time(), served_by, error)


def check_answer(answer: dict[str, Any], tokens: int) -> str | None:
    got = answer["usage"]["completion_tokens"], answer["finish_reason"]
    return None if got == (tokens, "length") else f"incomplete: {got}, asked {tokens} tokens"


def read_stream(r: requests.Response, tokens: int) -> str | None:
    pieces = 0
    for line in r.iter_lines(decode_unicode=True):
        if not line.startswith("data: "):
            continue
        event = json.loads(line.removeprefix("data: "))
        if event["type"] == "token":
            pieces += 1
        elif event["type"] == "done":
            return check_answer(event, tokens) if pieces else "done without a token event"
        else:
            return f"{event['type']} event: {event}"
    return f"stream ended without `done` after {pieces} token events"


def run_replica(image: str, network: str, slot: str) -> str:
    name = f"textgen-roll-{slot}-{secrets.token_hex(3)}"
    alias = f"textgen-{slot.removeprefix('s')}"
    env = [f"-e{k}={v}" for k, v in REPLICA_ENV.items()]
    docker("run", "-d", "--name", name, "--network", network, "--network-alias", alias, *env, image)
    return name


def still_running(name: str) -> Callable[[], None]:
    def check() -> None:
        if docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() != "true":
            pytest.fail(f"{name} exited:\n{logs_of(name)[-3000:]}")

    return check


def replace(lb: Balancer, old: str, old_slot: str, new: str, new_slot: str) -> Replacement:
    """`new` has just been started in `new_slot`: once the balancer has it UP, drain `old` and stop it."""
    started = time.time()
    lb.wait_for(new_slot, "UP", READY_TIMEOUT_S, still_running(new))
    up_in_lb = time.time()
    lb.runtime(f"set server {BACKEND}/{old_slot} state drain")  # no new requests; the ones it has go on
    lb.wait_for(old_slot, "DRAIN", 10)
    in_flight = int(lb.servers()[old_slot]["scur"])
    t0 = time.monotonic()
    docker("stop", "-t", str(STOP_GRACE_S), old, timeout=STOP_GRACE_S + 60)
    stop_s = time.monotonic() - t0
    exit_code = int(docker("inspect", "-f", "{{.State.ExitCode}}", old).stdout)
    lb.runtime(f"set server {BACKEND}/{old_slot} state ready")  # the slot is free again: its name resolves no more
    return Replacement(old, new, old_slot, new_slot, started, up_in_lb, in_flight, stop_s, exit_code)


@pytest.fixture(scope="module")
def rollout(image: str) -> Iterator[Rollout]:
    run_id = secrets.token_hex(3)
    network, lb_name = f"textgen-roll-{run_id}", f"textgen-roll-lb-{run_id}"
    port = free_loopback_port()
    names = [lb_name]
    load: Load | None = None
    docker("network", "create", network)
    try:
        docker("run", "-d", "--name", lb_name, "--network", network, "-p", f"127.0.0.1:{port}:8080", lb_image())
        lb = Balancer(lb_name, f"http://127.0.0.1:{port}")
        replicas = {}
        for old_slot, _ in ROLLOUT:
            replicas[old_slot] = run_replica(image, network, old_slot)
            names.append(replicas[old_slot])
        for slot, name in replicas.items():
            lb.wait_for(slot, "UP", READY_TIMEOUT_S, still_running(name))

        load = Load(lb.url)
        load_started = load.start()
        time.sleep(WARMUP_S)
        replacements = []
        for old_slot, new_slot in ROLLOUT:
            names.append(run_replica(image, network, new_slot))
            replacements.append(replace(lb, replicas[old_slot], old_slot, names[-1], new_slot))
        time.sleep(TAIL_S)
        load_ended = load.stop()
        logs = {name: json_log(name) for name in names[1:]}
        result = Rollout(list(load.outcomes), replacements, load_started, load_ended, logs)
        report(result)
        yield result
    finally:
        if load is not None:
            load.stop()
        for name in names:
            docker("rm", "-f", name, check=False)
        docker("network", "rm", network, check=False)


def longest_gap(result: Rollout) -> float:
    ends = sorted(o.ended for o in result.outcomes if o.error is None)
    points = [result.load_started, *ends, result.load_ended]
    return max(b - a for a, b in itertools.pairwise(points))


def generations(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if r.get("logger") == "bentoml.access" and str(r.get("path")).startswith("/generate")]


def report(result: Rollout) -> None:
    failed = [o for o in result.outcomes if o.error]
    served = Counter(o.served_by for o in result.outcomes)
    print(
        f"\nrolling update: {len(result.outcomes)} requests sent, {len(result.outcomes) - len(failed)} complete, "
        f"{len(failed)} failed; {len(result.replacements)} replicas replaced; load ran "
        f"{result.load_ended - result.load_started:.1f} s; longest gap between completions {longest_gap(result):.2f} s"
    )
    print(f"served by slot: {dict(sorted(served.items()))}")
    for r in result.replacements:
        print(
            f"  {r.old_slot} -> {r.new_slot}: new replica UP in the balancer after {r.up_in_lb - r.started:.1f} s; "
            f"old one stopped with {r.in_flight_at_stop} in flight in {r.stop_s:.1f} s, exit code {r.exit_code}"
        )
    for o in failed[:10]:
        print(f"  failed ({o.served_by or 'no server'}, {'stream' if o.stream else 'plain'}): {o.error}")


def test_every_request_got_a_complete_answer(rollout: Rollout) -> None:
    failed = [f"{o.served_by or 'no server'}: {o.error}" for o in rollout.outcomes if o.error]
    assert len(rollout.outcomes) > 50
    assert not failed, f"{len(failed)} of {len(rollout.outcomes)} failed: {failed[:10]}"
    assert any(o.stream for o in rollout.outcomes)


def test_each_request_was_generated_once(rollout: Rollout) -> None:
    """The replicas' access logs hold exactly the requests the clients sent: none lost, none sent twice."""
    logged = [r for log in rollout.logs.values() for r in generations(log)]
    assert [r["status"] for r in logged] == [200] * len(logged)
    assert len(logged) == len(rollout.outcomes)


def test_requests_were_served_the_whole_time(rollout: Rollout) -> None:
    assert longest_gap(rollout) < MAX_GAP_S


def test_both_new_replicas_took_traffic(rollout: Rollout) -> None:
    served = Counter(o.served_by for o in rollout.outcomes)
    for r in rollout.replacements:
        assert served[r.new_slot] > 0, r
        assert generations(rollout.logs[r.new]), r


def test_no_generation_reached_a_replica_before_ready(rollout: Rollout) -> None:
    """In each new replica's own log: the balancer probed it while it loaded (503s), and its first generation came
    after its first /readyz 200."""
    for r in rollout.replacements:
        access = [line for line in rollout.logs[r.new] if line.get("logger") == "bentoml.access"]
        ready_at = next(i for i, line in enumerate(access) if line["path"] == "/readyz" and line["status"] == 200)
        assert any(line["path"] == "/readyz" and line["status"] == 503 for line in access[:ready_at]), r
        assert not generations(access[:ready_at]), r


def test_old_replicas_finished_and_exited_cleanly(rollout: Rollout) -> None:
    for r in rollout.replacements:
        assert r.exit_code == 0, r
        assert r.stop_s < STOP_GRACE_S, r  # stopped by SIGTERM, not killed at the end of the grace period
        assert generations(rollout.logs[r.old]), r  # it served before it was replaced
