"""`prag serve --ray` on a local 2-CPU Ray cluster with 2 replicas: the single-process server's answers and errors
(plain and streamed), routing by document set, a replica killed mid-request, and SIGTERM with requests in flight
(a `prag serve --ray` subprocess, run first: it starts its own local cluster)."""

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_cli import QA, built  # noqa: F401  (the fixture: a tiny work directory written by `prag build`)
from test_serve import free_port, http, prag_serve, running, user, wait_for

from prag_core.answer.config import AnswerConfig, ServeConfig
from prag_core.answer.serve import open_app
from prag_core.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
WINDOW_MS = 1000  # the replicas' batch window: a request waits that long in its replica, time to kill it there
QUESTIONS = [q["question"] for q in QA]


def test_sigterm_finishes_requests_in_flight_and_exits_0(built):  # noqa: F811
    port = free_port()
    proc = prag_serve(built[0], port, "--batch-window-ms", "4000", "--ray", "--replicas", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and _up(url), timeout=120)
        with ThreadPoolExecutor(2) as pool:
            replies = [pool.submit(http, f"{url}/v1/chat/completions", {"messages": user(q)}) for q in QUESTIONS[:2]]
            # Both reach a replica in milliseconds and wait there in its 4 s batch window. (Not probed through
            # /health: without a document set it goes to the less loaded replica, which may be the idle one.)
            time.sleep(2)
            proc.send_signal(signal.SIGTERM)
            replies = [r.result(timeout=150) for r in replies]
        assert proc.wait(timeout=150) == 0  # ... exits 0 once the requests in flight are answered (drain: 120 s)
    except BaseException:
        if proc.poll() is None:  # stop it and its Ray cluster; pytest shows its log with the failure
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=150)
            proc.kill()
        print(proc.stdout.read()[-20000:])
        raise
    log = proc.stdout.read()
    assert [(status, reply["choices"][0]["finish_reason"]) for status, _, reply in replies] == [(200, "length")] * 2
    assert "shutting down" in log and "Traceback" not in log, log
    assert not _up(url)


def _up(url):
    """Whether the app answers /health (Serve's proxy answers 404 until it is deployed)."""
    try:
        return http(f"{url}/health")[2]["status"] == "ok"
    except (OSError, ValueError):  # refused: nothing listens; not JSON: not deployed yet
        return False


@pytest.fixture(scope="module")
def cluster(built):  # noqa: F811
    """The base URL of `prag serve --ray --replicas 2 --threads 1` on a local 2-CPU cluster (this process)."""
    import ray
    from ray import serve

    from prag_core.answer.serve_ray import application

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServeConfig(port=port, threads=1, window_ms=WINDOW_MS, ray="", replicas=2)
    serve.run(application(str(built[0]), AnswerConfig(device="cpu"), config), name="prag", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def single(built):  # noqa: F811
    """The base URL of the single-process server on the same work directory."""
    with running(open_app(built[0], AnswerConfig(device="cpu"))) as url:
        yield url


def post(url, body, stream=False):
    """(status, replica id, content) of a chat completion: its JSON, or a stream's events, less ids and times."""
    data = (body if isinstance(body, str) else json.dumps({**body, "stream": stream})).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            status, head, text = r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as err:
        status, head, text = err.code, err.headers, err.read().decode()
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")] if stream else [text]
    content = [e if e == "[DONE]" else json.loads(e) for e in events]
    for event in content:
        if isinstance(event, dict):
            event.pop("id", None), event.pop("created", None)
    return status, head.get("x-prag-replica"), content


def test_answers_and_errors_are_the_single_process_servers(cluster, single):
    bodies = [{"messages": user(q), "max_tokens": 8} for q in QUESTIONS[:3]]
    bodies += [
        {"messages": user(QUESTIONS[3]), "prag": {"mode": "combine", "documents": ["dog", "bell"]}},
        {"messages": user(QUESTIONS[0]), "prag": {"mode": "vanilla"}, "max_tokens": 3},
    ]
    wrong = [
        '{"messages": [',
        {"messages": user("Who?"), "prag": {"mode": "magic"}},
        {"messages": user("Who?"), "prag": {"documents": ["kite", "nope"]}},
        {"messages": user("Who?"), "model": "gpt-9"},
        {"messages": [{"role": "system", "content": "hi"}]},
    ]
    calls = [(b, s) for b in bodies for s in (False, True)] + [(b, False) for b in wrong]
    with ThreadPoolExecutor(len(calls)) as pool:  # together: an answer does not depend on its batch-mates
        ray_replies = list(pool.map(lambda call: post(cluster, *call), calls))
    replies = [post(single, *call) for call in calls]
    assert [(s, c) for s, _, c in ray_replies] == [(s, c) for s, _, c in replies]
    assert [s for s, _, _ in replies] == [200] * 2 * len(bodies) + [400, 400, 404, 404, 400]
    assert replies[1][2][-1] == "[DONE]" and len(replies[1][2]) > 3  # a stream of chunks
    assert all(replica for _, replica, _ in ray_replies)


def test_the_same_documents_go_to_the_replica_that_holds_them(cluster):
    def replica(**prag):
        status, replica, _ = post(cluster, {"messages": user(QUESTIONS[0]), "max_tokens": 2, "prag": prag})
        assert status == 200
        time.sleep(0.5)  # the replica reports the documents it holds every 0.1 s, through Serve's controller
        return replica

    first = replica(documents=["kite", "dog"])
    assert replica(documents=["dog", "kite"]) == first
    assert replica(top_k=2) == first  # the question's top 2 documents: the same set
    figs = replica(documents=["figs"])
    assert replica(documents=["figs"]) == figs
    # A new set goes to the replica holding fewer sets: the tests before hold at most 6 more on one of them.
    sets = [["bell"], ["dog"], ["kite"], ["kite", "bell"], ["kite", "figs"], ["bell", "figs"], ["figs", "dog"]]
    assert len({replica(documents=docs) for docs in sets}) == 2


def test_a_replica_killed_mid_request_gives_503_and_is_replaced(cluster):
    import ray
    from ray import serve

    body = {"messages": user(QUESTIONS[1]), "max_tokens": 4, "prag": {"documents": ["bell"]}}
    _, victim, _ = post(cluster, body)
    time.sleep(0.5)  # the router knows `victim` holds the set
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        reply = pool.submit(post, cluster, body)
        time.sleep(0.3)  # the request waits in the victim's 1 s batch window
        [name] = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(victim)]
        ray.kill(ray.get_actor(name, namespace="serve"))
        status, replica, content = reply.result(timeout=60)
    assert time.monotonic() - started < 30
    if status == 503:  # lost with its replica
        assert content[0]["error"]["code"] == "replica_lost"
    else:  # not there yet when it died: answered by the other
        assert status == 200 and replica != victim, (status, content)

    def replaced():
        replicas = serve.status().applications["prag"].deployments["Replica"].replica_states
        return replicas.get("RUNNING") == 2

    wait_for(replaced, timeout=90)
    answers = [post(cluster, {**body, "prag": {"documents": [d]}}) for d in ("bell", "dog", "kite", "figs")]
    assert all(status == 200 for status, _, _ in answers)
    assert victim not in {replica for _, replica, _ in answers}


def test_ray_flags(built, capsys):  # noqa: F811
    """--replicas needs --ray, --ray needs Ray Serve (one line each), and `prag` imports Ray only for --ray."""
    serve = ["serve", "--workdir", str(built[0]), "--device", "cpu"]
    assert main([*serve, "--replicas", "2"]) == 2
    assert capsys.readouterr().err == "prag: error: --replicas applies to --ray serving\n"
    script = "import sys; sys.modules['ray'] = None; from prag_core.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, *serve, "--ray"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "prag: error: prag serve --ray needs Ray Serve: pip install 'prag[ray]'\n"
    script = "import sys, prag_core.cli as c; c.build_parser().parse_args(['serve', '--workdir', 'W', '--ray']); "
    script += "print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout == "False\n"
