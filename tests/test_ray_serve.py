"""Scale-out on Ray Serve (gemma_runtime/ray_serve.py): a local Ray cluster of two nodes on loopback
(one CPU and a small object store each), two replicas behind Ray's one HTTP proxy; requests reach
both nodes, all complete, and the answers are the standalone server's. A replica killed while its
streams are in flight: those streams end with an error (no hang), the other replica's complete,
Ray starts a replacement and new requests are answered."""

import concurrent.futures
import json
import os
import socket
import time
import urllib.request

import openai
import pytest

import ray  # the [ray] extra, which `make test` installs
from ray import serve
from ray.cluster_utils import Cluster

import gemma_runtime
from gemma_runtime.ray_serve import app
from test_server import artifact  # noqa: F401  (the tiny artifact with a tokenizer)

GUARD_S = 120
APP = "gemma"
REQUEST_GUARD_S = 30  # a request that takes longer hangs
PREFER_LOCAL = "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "include_dashboard": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes():
    # Ray Serve's proxy prefers replicas on its own node; the test has one proxy and wants both
    # nodes used (a real cluster runs a proxy per node: http_options location "EveryNode")
    saved = os.environ.get(PREFER_LOCAL)
    os.environ[PREFER_LOCAL] = "0"
    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE), connect=True)
    worker = cluster.add_node(**{k: v for k, v in NODE.items() if k != "include_dashboard"})
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop(PREFER_LOCAL) if saved is None else os.environ.__setitem__(PREFER_LOCAL, saved)


@pytest.fixture(scope="module")
def deployed(two_nodes, artifact):  # noqa: F811
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app({"artifact": str(artifact), "replicas": 2, "max_batch": 2}), name=APP, route_prefix="/")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=GUARD_S, max_retries=0)
    return port, client


def test_two_replicas_on_two_nodes_serve_every_request(deployed, artifact):  # noqa: F811
    port, client = deployed
    expected = gemma_runtime.load(artifact).generate("abc", max_new_tokens=6).text
    replicas = set()
    deadline = time.time() + GUARD_S
    while len(replicas) < 2 and time.time() < deadline:
        raw = client.completions.with_raw_response.create(model="tiny", prompt="abc", max_tokens=6, temperature=0)
        assert raw.parse().choices[0].text == expected
        replicas.add(raw.headers["x-gemma-replica"])
    nodes = {r.split("/node-")[1] for r in replicas}
    assert len(replicas) == 2 and len(nodes) == 2, replicas
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "ab"}],
                                            max_tokens=4, temperature=0, stream=True)
    assert [c for c in stream]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=GUARD_S) as r:
        assert json.loads(r.read())["status"] == "ok"


def replica_states() -> dict[str, int]:
    return dict(serve.status().applications[APP].deployments["GemmaReplica"].replica_states)


def finish_reason_or_error(client: openai.OpenAI) -> str:
    try:
        answer = client.completions.create(model="tiny", prompt="a", max_tokens=80, temperature=0)
        return answer.choices[0].finish_reason
    except openai.APIError as error:
        return type(error).__name__


def test_a_replica_killed_mid_load_is_replaced_and_its_streams_end(deployed):
    _, client = deployed
    client = client.with_options(timeout=REQUEST_GUARD_S)
    streams = {}  # replica -> streams past their first chunk
    deadline = time.time() + GUARD_S
    while len(streams) < 2 and time.time() < deadline:
        raw = client.completions.with_raw_response.create(model="tiny", prompt="a", max_tokens=80, temperature=0,
                                                          stream=True)
        stream = iter(raw.parse())
        assert next(stream).choices[0].text is not None
        streams.setdefault(raw.headers["x-gemma-replica"], []).append(stream)
    assert len(streams) == 2, streams
    # the replica that answered last still has its stream in flight: kill its actor, with requests
    # (not streamed) on their way to either replica
    victim, survivor = list(streams)[::-1]
    unique_id = victim.split("@")[0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        unary = [pool.submit(finish_reason_or_error, client) for _ in range(4)]
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP}#GemmaReplica#{unique_id}", namespace="serve"), no_restart=True)
        started = time.time()
        with pytest.raises(openai.APIError) as broken:
            for _ in streams[victim][-1]:
                pass
        assert time.time() - started < REQUEST_GUARD_S
        for stream in streams[survivor]:
            assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"
        outcomes = [f.result(timeout=REQUEST_GUARD_S) for f in unary]
    assert set(outcomes) <= {"length", "APIConnectionError", "InternalServerError"}, outcomes
    # new requests: each answered or refused with an error while Ray replaces the replica, none hangs;
    # then a new replica serves and two are running again
    answered_by, refused = set(), 0
    while time.time() < deadline and not (replica_states() == {"RUNNING": 2} and answered_by - {victim, survivor}):
        try:
            raw = client.completions.with_raw_response.create(model="tiny", prompt="abc", max_tokens=4)
            answered_by.add(raw.headers["x-gemma-replica"])
        except openai.APIStatusError as error:
            assert error.status_code >= 500, error
            refused += 1
        time.sleep(0.2)
    assert replica_states() == {"RUNNING": 2}, replica_states()
    assert victim not in answered_by and answered_by - {survivor}, (answered_by, broken.value)
