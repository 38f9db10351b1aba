"""A bounded soak (benchmarks/soak.py, the server in its own process): hundreds of mixed requests
from concurrent clients, streams dropped mid-way and bad bodies among them, half of them beside
slow clients trickling headers and holding idle connections. Every request is answered (no 5xx,
nothing hangs: each has a deadline), the engine ends with every slot free and no queue, and the
server's RSS stays within a bound after warm-up. Connections beyond --max-connections get 503."""

import socket
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak  # noqa: E402
from test_server import artifact  # noqa: E402,F401  (the tiny artifact with a tokenizer)

RSS_GROWTH_MIB = 64


def test_mixed_hostile_load_leaves_every_slot_free_and_rss_bounded(artifact):  # noqa: F811
    result = soak.soak(artifact, requests=300, clients=8, slow_clients=4)
    assert result["requests"] == 300 and result["server_errors"] == 0
    kinds = result["by_kind"]
    for kind in ("completion", "chat_stream", "dropped_stream"):
        assert kinds[kind]["requests"] and set(kinds[kind]["statuses"]) == {"200"}, kinds[kind]
    assert kinds["bad_body"]["requests"] and set(kinds["bad_body"]["statuses"]) <= {"400", "422"}, kinds["bad_body"]
    assert result["end"] == {"active_slots": 0.0, "queue_depth": 0.0}
    rss = result["rss_mib"]
    assert rss["last"] - rss["after_warm_up"] < RSS_GROWTH_MIB, rss


def test_connections_beyond_the_cap_get_503_until_the_idle_ones_leave(artifact):  # noqa: F811
    server = soak.Server(artifact, options=("--max-connections", "2"))
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        time.sleep(0.2)  # the server has accepted them
        assert server.get("/health")[0] == 503
        for s in idle:
            s.close()
        time.sleep(0.2)
        assert server.get("/health")[0] == 200
    finally:
        server.close()
