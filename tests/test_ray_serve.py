"""Scale-out on Ray Serve (gemma_runtime/ray_serve.py): a local Ray cluster of two nodes on loopback
(one CPU and a small object store each), two replicas behind Ray's one HTTP proxy; requests reach
both nodes, all complete, and the answers are the standalone server's."""

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


def test_two_replicas_on_two_nodes_serve_every_request(two_nodes, artifact):  # noqa: F811
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app({"artifact": str(artifact), "replicas": 2, "max_batch": 2}), name="gemma", route_prefix="/")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=GUARD_S, max_retries=0)
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
