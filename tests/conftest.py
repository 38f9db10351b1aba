import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real Gemma 3 270M is assembled once into this cache and reused by every test run.
os.environ.setdefault("GEMMA_EXPORT_CACHE", str(REPO / ".cache" / "gemma-export"))


@pytest.fixture(scope="session", autouse=True)
def trace_each_config_once():
    """Tracing (torch.export) takes seconds and depends on the config alone, and the suite exports
    the same tiny configs many times: each config (decoder, encoder or embedder) is traced once per
    session and every export gets a fresh copy of it (its weights hold zeros until export binds the
    checkpoint's)."""
    from gemma_export import export as export_module
    from gemma_export import export_embedding, export_media

    patch = pytest.MonkeyPatch()
    patch.setattr(export_module, "trace", traced_once(export_module.trace))
    # an encoder's constant buffers keep their values; only its weights (meta tensors) are bound later
    patch.setattr(export_media, "trace_encoder", traced_once(export_media.trace_encoder, key=repr, meta_only=True))
    patch.setattr(export_embedding, "trace_embedder", traced_once(export_embedding.trace_embedder))
    yield
    patch.undo()


def traced_once(trace, key=lambda config: config, meta_only: bool = False):
    """trace, remembered per key(config) as a serialized model with zeroed weights."""
    import numpy as np
    import onnx_ir as ir

    models = {}

    def cached(config):
        k = key(config)
        if k not in models:
            model = trace(config)
            for value in model.graph.initializers.values():
                if not meta_only or getattr(getattr(value.const_value, "raw", None), "is_meta", False):
                    value.const_value = ir.Tensor(np.zeros(value.shape.numpy(), np.float32), name=value.name)
            models[k] = ir.serde.serialize_model(model)
        return ir.serde.deserialize_model(models[k])

    return cached


CONFORMANCE_MAX_SEQ_LEN = 64


@pytest.fixture(scope="session")
def gemma4_checkpoints(tmp_path_factory):
    """name -> HF folder of a tiny random Gemma 4 checkpoint (tests/tiny.py's GEMMA4_CONFIGS)."""
    from tiny import GEMMA4_CONFIGS, write_checkpoint

    root = tmp_path_factory.mktemp("gemma4")
    return {name: write_checkpoint(name, root / name) for name in GEMMA4_CONFIGS}


@pytest.fixture(scope="session")
def gemma3n_checkpoints(tmp_path_factory):
    """name -> HF folder of a tiny random Gemma 3n checkpoint (tests/tiny.py's GEMMA3N_CONFIGS)."""
    from tiny import GEMMA3N_CONFIGS, write_checkpoint

    root = tmp_path_factory.mktemp("gemma3n")
    return {name: write_checkpoint(name, root / name) for name in GEMMA3N_CONFIGS}


@pytest.fixture(scope="session")
def target_artifacts(tiny_checkpoints, gemma4_checkpoints, gemma3n_checkpoints, tmp_path_factory):
    """target -> {config name -> artifact folder}: every tiny config (Gemma 1-4, 3n) exported with the
    target's defaults at max_seq_len 64, once per session, when a test first asks for the target.
    The conformance suite and the per-target tests share them."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    exported: dict[str, dict[str, Path]] = {}

    def artifacts(target: str) -> dict[str, Path]:
        if target not in exported:
            root = tmp_path_factory.mktemp(f"target-{target}")
            exported[target] = {}
            for name, folder in {**tiny_checkpoints, **gemma4_checkpoints, **gemma3n_checkpoints}.items():
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
