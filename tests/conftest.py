import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real Gemma 3 270M is assembled once into this cache and reused by every test run.
os.environ.setdefault("GEMMA_EXPORT_CACHE", str(REPO / ".cache" / "gemma-export"))


@pytest.fixture(scope="session", autouse=True)
def trace_each_config_once():
    """Tracing (torch.export) takes seconds and depends on the config alone, and the suite exports
    the same tiny configs many times: each config (decoder or encoder) is traced once per session
    and every export gets a fresh copy of it (its weights hold zeros until export binds the
    checkpoint's)."""
    import numpy as np
    import onnx_ir as ir

    from gemma_export import export as export_module

    trace = export_module.trace
    traced = {}

    def cached(cfg):
        if cfg not in traced:
            model = trace(cfg)
            for value in model.graph.initializers.values():
                value.const_value = ir.Tensor(np.zeros(value.shape.numpy(), np.float32), name=value.name)
            traced[cfg] = ir.serde.serialize_model(model)
        return ir.serde.deserialize_model(traced[cfg])

    from gemma_export import export_media

    trace_encoder = export_media.trace_encoder
    encoders = {}

    def cached_encoder(encoder):  # its constant buffers keep their values; its weights are bound later
        key = repr(encoder)
        if key not in encoders:
            model = trace_encoder(encoder)
            for value in model.graph.initializers.values():
                if getattr(getattr(value.const_value, "raw", None), "is_meta", False):
                    value.const_value = ir.Tensor(np.zeros(value.shape.numpy(), np.float32), name=value.name)
            encoders[key] = ir.serde.serialize_model(model)
        return ir.serde.deserialize_model(encoders[key])

    from gemma_export import export_embedding

    trace_embedder = export_embedding.trace_embedder
    embedders = {}

    def cached_embedder(cfg):
        if cfg not in embedders:
            model = trace_embedder(cfg)
            for value in model.graph.initializers.values():
                value.const_value = ir.Tensor(np.zeros(value.shape.numpy(), np.float32), name=value.name)
            embedders[cfg] = ir.serde.serialize_model(model)
        return ir.serde.deserialize_model(embedders[cfg])

    patch = pytest.MonkeyPatch()
    patch.setattr(export_module, "trace", cached)
    patch.setattr(export_media, "trace_encoder", cached_encoder)
    patch.setattr(export_embedding, "trace_embedder", cached_embedder)
    yield
    patch.undo()


CONFORMANCE_MAX_SEQ_LEN = 64


@pytest.fixture(scope="session")
def gemma4_checkpoints(tmp_path_factory):
    """name -> HF folder of a tiny random Gemma 4 checkpoint (tests/tiny.py's GEMMA4_CONFIGS)."""
    from tiny import GEMMA4_CONFIGS, write_checkpoint

    root = tmp_path_factory.mktemp("gemma4")
    return {name: write_checkpoint(name, root / name) for name in GEMMA4_CONFIGS}


@pytest.fixture(scope="session")
def target_artifacts(tiny_checkpoints, gemma4_checkpoints, tmp_path_factory):
    """target -> {config name -> artifact folder}: every tiny config (Gemma 1-4) exported with the
    target's defaults at max_seq_len 64, once per session, when a test first asks for the target.
    The conformance suite and the per-target tests share them."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    exported: dict[str, dict[str, Path]] = {}

    def artifacts(target: str) -> dict[str, Path]:
        if target not in exported:
            root = tmp_path_factory.mktemp(f"target-{target}")
            exported[target] = {}
            for name, folder in {**tiny_checkpoints, **gemma4_checkpoints}.items():
                export(folder, root / name, ExportOptions(target=target, max_seq_len=CONFORMANCE_MAX_SEQ_LEN))
                exported[target][name] = root / name
        return exported[target]

    return artifacts


@pytest.fixture(scope="session")
def embedding_checkpoint(tmp_path_factory):
    """A tiny random EmbeddingGemma in sentence-transformers' folder layout (tests/tiny_embedding.py)."""
    from tiny_embedding import write_embedding_checkpoint

    return write_embedding_checkpoint(tmp_path_factory.mktemp("embedding") / "st")


@pytest.fixture(scope="session")
def embedding_artifacts(embedding_checkpoint, tmp_path_factory):
    """(target, dtype) -> the tiny EmbeddingGemma's artifact, exported when first asked for."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    root = tmp_path_factory.mktemp("embedding-artifacts")
    exported = {}

    def artifact(target: str, dtype: str):
        if (target, dtype) not in exported:
            exported[target, dtype] = root / f"{target}-{dtype}"
            export(embedding_checkpoint, exported[target, dtype], ExportOptions(target=target, dtype=dtype))
        return exported[target, dtype]

    return artifact


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """name -> HF folder of a tiny random checkpoint (see tests/tiny.py)."""
    from tiny import CONFIGS, write_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: write_checkpoint(name, root / name) for name in CONFIGS}


@pytest.fixture(scope="session")
def precision_checkpoints(tmp_path_factory):
    """"peaked" and "huge_residual" tiny Gemma 3 checkpoints (see tests/precision_models.py)."""
    from precision_models import write

    root = tmp_path_factory.mktemp("precision_checkpoints")
    return {"peaked": write(root / "peaked"), "huge_residual": write(root / "huge_residual", huge_residual=True)}


@pytest.fixture(scope="session")
def generic_artifacts(tiny_checkpoints, tmp_path_factory):
    """name -> generic-target artifact of each tiny checkpoint."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for name, folder in tiny_checkpoints.items():
        export(folder, root / name, ExportOptions(target="generic"))
        out[name] = root / name
    return out


SERVER_MAX_SEQ_LEN = 96


@pytest.fixture(scope="session")
def server_artifact(tmp_path_factory):
    """The server tests' model (read only): tiny_server_artifact at max_seq_len 96."""
    return tiny_server_artifact(tmp_path_factory.mktemp("server"), SERVER_MAX_SEQ_LEN)


def tiny_server_artifact(root: Path, max_seq_len: int, **overrides) -> Path:
    """A tiny Gemma 1 (multi-query) artifact with a SentencePiece tokenizer, exported under root;
    overrides: of the tiny config (tests/tiny.py)."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions
    from test_chat_tokens import gemma1_like_tokenizer
    from tiny import write_checkpoint

    folder = write_checkpoint("gemma-mqa", root / "ckpt", **overrides)
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    export(folder, root / "tiny", ExportOptions(max_seq_len=max_seq_len))
    return root / "tiny"
