"""Bad input gets one clear line on stderr, exit code 2, and no partial artifact."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cli_util import cli


@pytest.fixture
def checkpoint(tiny_checkpoints, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["gemma-mqa"], folder)
    return folder


def _edit_tensors(folder, fn):
    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file(tensors, folder / "model.safetensors")


def _edit_config(folder, fn):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg))


def _truncate(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


BREAKAGES = {
    "missing tensor": (lambda f: _edit_tensors(f, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                       "model.layers.1.mlp.up_proj.weight' is missing"),
    "wrong shape": (lambda f: _edit_tensors(f, lambda t: t.update(
        {"model.layers.0.self_attn.k_proj.weight": np.zeros((48, 48), np.float32)})), "has shape [48, 48]"),
    "truncated safetensors": (_truncate, "truncated"),
    "unknown model_type": (lambda f: _edit_config(f, lambda c: c.update(model_type="mistral")), "unknown model_type"),
    "unknown config field": (lambda f: _edit_config(f, lambda c: c.update(my_new_field=1)), "my_new_field"),
    "pickle only": (lambda f: ((f / "model.safetensors").rename(f / "pytorch_model.bin")), "never unpickled"),
}


def _assert_clean_failure(code, err, out_dir, expected):
    assert code == 2
    lines = err.strip().splitlines()  # progress lines, then one error line
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert expected in lines[-1]
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_checkpoint(breakage, checkpoint, tmp_path, capsys):
    breaker, expected = BREAKAGES[breakage]
    breaker(checkpoint)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", checkpoint, "-o", out)
    _assert_clean_failure(code, err, out, expected)


def test_missing_source(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", tmp_path / "nowhere", "-o", out)
    _assert_clean_failure(code, err, out, "no such file or folder")


def test_unsupported_option_combination(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", checkpoint, "-o", out, "--target", "generic", "--quant", "int4")
    _assert_clean_failure(code, err, out, "generic")
    code, _, err = cli(capsys, "export", checkpoint, "-o", out, "--calibrate")
    _assert_clean_failure(code, err, out, "--calibrate")


@pytest.mark.parametrize("args,expected", [
    (["--quant", "int3"], "unknown quantization 'int3'"),
    (["--quant", "int4", "--max-size", "0.001"], "below the all-int4 size"),
    (["--quant", "int4-uniform", "--max-size", "100"], "--max-size is the budget of the int8 / int4 / source recipes"),
    (["--quant", "source"], "--quant source keeps a quantized GGUF's own blocks"),
    (["--quant", "source", "--target", "tensorrt"], "not source"),
])
def test_bad_quantization_options(args, expected, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", checkpoint, "-o", out, *args)
    _assert_clean_failure(code, err, out, expected)


def test_existing_output_is_refused_unless_forced(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "export", checkpoint, "-o", out)[0] == 0
    before = (out / "manifest.json").read_text()
    code, _, err = cli(capsys, "export", checkpoint, "-o", out)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (out / "manifest.json").read_text() == before  # untouched
    code, stdout, _ = cli(capsys, "export", checkpoint, "-o", out, "--force")
    assert code == 0 and "wrote" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_failed_forced_export_keeps_the_old_artifact(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "export", checkpoint, "-o", out)[0] == 0
    _edit_tensors(checkpoint, lambda t: t.pop("model.norm.weight"))
    code, _, err = cli(capsys, "export", checkpoint, "-o", out, "--force")
    assert code == 2 and "model.norm.weight" in err
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()


def test_prompt_longer_than_the_maximum_length(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "export", checkpoint, "-o", out, "--max-seq-len", "16")[0] == 0
    import gemma_runtime
    from gemma_runtime.errors import RuntimeInputError

    model = gemma_runtime.load(out)
    with pytest.raises(RuntimeInputError, match="17 tokens.*maximum sequence length is 16"):
        model.generate(list(range(2, 19)))
    with pytest.raises(RuntimeInputError, match=r"prompt \(10 tokens\) and max_new_tokens \(50\) exceed .* 16"):
        model.generate(list(range(2, 12)), max_new_tokens=50)
    result = model.generate(list(range(2, 12)))  # the default: what fits
    assert len(result.token_ids) <= 6 and (result.finish_reason == "length" or len(result.token_ids) < 6)


def test_unknown_format_version_is_refused(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "export", checkpoint, "-o", out)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(capsys, "inspect", out)
    assert code == 2 and "format_version 99" in err
