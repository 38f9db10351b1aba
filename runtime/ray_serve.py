"""The OpenAI-compatible server as a Ray Serve application (extra `[ray]`): each replica loads the
artifact and runs its own continuous-batching engine; Ray's HTTP proxy spreads requests over the
replicas, wherever in the cluster they are. Same routes and errors as `gemma-export serve`
(gemma_runtime/server.py); `x-gemma-replica` names the replica and its node. Not here: the
standalone server's --api-key, body limit and CORS (put them in front of Ray's proxy).

    gemma-export serve OUT --ray --replicas 2            # on this machine's Ray (or RAY_ADDRESS)
    serve run gemma_runtime.ray_serve:app artifact=OUT replicas=2 max_batch=8

On a cluster every node must see OUT at the same path (a shared file system, or a copy on each
node); each replica asks for `cpus` CPUs (default 1), so Ray places them where there is room.
"""


import socket
from typing import Any

from fastapi import FastAPI
from ray import serve

from gemma_runtime import api_models
from gemma_runtime.logs import configure_logging
from gemma_runtime.request_body import DepthCheckedRoute
from gemma_runtime.server import (ERROR_RESPONSES, Service, completion_response, embeddings_response,
                                  health_response, install_error_handlers, metrics_response, models_response,
                                  tokenizer_response)
from gemma_runtime.server_embeddings import EmbeddingRequest, EmbeddingResponse

api = FastAPI(title="gemma-export", docs_url=None, redoc_url=None)
api.router.route_class = DepthCheckedRoute
install_error_handlers(api)


@serve.deployment
@serve.ingress(api)
class GemmaReplica:
    def __init__(self, artifact: str, max_batch: int = 8, max_queue: int | None = None, threads: int | None = None,
                 log_level: str = "warning"):
        import ray

        configure_logging(log_level)
        context = serve.get_replica_context()
        node = ray.get_runtime_context().get_node_id()[:12]
        self.service = Service(artifact, max_batch=max_batch, max_queue=max_queue, threads=threads,
                               replica=f"{context.replica_id.unique_id}@{socket.gethostname()}/node-{node}")

    @api.post("/v1/completions", response_model=api_models.CompletionResponse, responses=ERROR_RESPONSES)
    async def completions(self, body: api_models.CompletionRequest):
        return await completion_response(self.service, body)

    @api.post("/v1/chat/completions", response_model=api_models.ChatCompletionResponse, responses=ERROR_RESPONSES)
    async def chat_completions(self, body: api_models.ChatCompletionRequest):
        return await completion_response(self.service, body)

    @api.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def embeddings(self, body: EmbeddingRequest):
        return await embeddings_response(self.service, body)

    @api.post("/tokenize", response_model=api_models.TokenizeResponse, responses=ERROR_RESPONSES)
    async def tokenize(self, body: api_models.TokenizeRequest):
        return await tokenizer_response(self.service, body)

    @api.post("/detokenize", response_model=api_models.DetokenizeResponse, responses=ERROR_RESPONSES)
    async def detokenize(self, body: api_models.DetokenizeRequest):
        return await tokenizer_response(self.service, body)

    @api.get("/v1/models")
    async def list_models(self):
        return models_response(self.service)

    @api.get("/health")
    async def get_health(self):
        return health_response(self.service)

    @api.get("/metrics")
    async def get_metrics(self):
        return metrics_response(self.service)


def run(artifact: str, host: str, port: int, replicas: int, max_batch: int, max_queue: int | None,
        threads: int | None, log_level: str = "warning") -> None:
    """`gemma-export serve --ray`: connects to RAY_ADDRESS's cluster (else starts Ray on this machine),
    deploys the replicas behind Ray's HTTP proxy on host:port, and blocks until interrupted."""
    import time

    import ray

    ray.init(log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app({"artifact": artifact, "replicas": replicas, "max_batch": max_batch, "max_queue": max_queue,
                   "threads": threads, "log_level": log_level}), name="gemma-export", route_prefix="/")
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()


def app(args: dict[str, Any]):
    """The application `serve run gemma_runtime.ray_serve:app artifact=OUT [replicas=N] [max_batch=N]
    [max_queue=N] [threads=N] [cpus=N] [log_level=LEVEL]` builds."""
    if "artifact" not in args:
        raise ValueError("pass artifact=OUT (the artifact folder, at the same path on every node)")
    integer = lambda key: None if args.get(key) is None else int(args[key])  # noqa: E731
    return GemmaReplica.options(
        num_replicas=integer("replicas") or 1,
        ray_actor_options={"num_cpus": float(args.get("cpus", 1))},
        max_ongoing_requests=4 * (integer("max_batch") or 8) + 8,
    ).bind(str(args["artifact"]), integer("max_batch") or 8, integer("max_queue"), integer("threads"),
           str(args.get("log_level", "warning")))
