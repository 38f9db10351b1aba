"""Gemma's relatives in transformers 5.x: VaultGemma (Gemma 2 without the output norms) exports with
parity on every decoder path; the relatives of another architecture are refused by name, saying
what is missing."""

import json

import pytest
import torch

import gemma_runtime
from gemma_export.errors import GemmaExportError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import BASE, randomise

# two sliding layers of window 6, then full ones; Gemma 2's caps and scalar (VaultGemma's defaults are 50 / 30)
VAULTGEMMA = dict(BASE, num_attention_heads=4, num_key_value_heads=2, sliding_window=6, query_pre_attn_scalar=20,
                  attn_logit_softcapping=5.0, final_logit_softcapping=3.0, num_hidden_layers=4)


@pytest.fixture(scope="module")
def vaultgemma(tmp_path_factory):
    import transformers

    cfg = transformers.VaultGemmaConfig(**VAULTGEMMA)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.VaultGemmaForCausalLM(cfg).eval()
    randomise(model)
    folder = tmp_path_factory.mktemp("vaultgemma") / "hf"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("target", ["ort-cpu", "onnx"])
def test_vaultgemma_parity(vaultgemma, target, tmp_path):
    hf, folder = vaultgemma
    export(folder, tmp_path / "out", ExportOptions(target=target))
    model = gemma_runtime.load(tmp_path / "out")
    assert model.manifest.family == "vaultgemma" and model.manifest.config["unnormed_outputs"] is True
    ids = prompt(1, 14)  # beyond the window of 6
    assert_fp32_parity(model.logits(ids), hf_logits(hf, ids))
    assert_fp32_parity(stepwise_logits(model, ids, 5), hf_logits(hf, ids)[4:])  # through the in-place cache


# model_type -> what the refusal says; each one's config as transformers writes it (the real folder's first line)
REFUSED = {
    "t5gemma": "t5gemma is an encoder-decoder model",
    "t5gemma2": "t5gemma2 is an encoder-decoder model",
    "recurrent_gemma": r"recurrent_gemma is a recurrent \(Griffin\) model",
    "paligemma": "paligemma is a vision-language model with prefix-LM attention",
    "diffusion_gemma": "diffusion_gemma is a diffusion language model",
    "shieldgemma2": "shieldgemma2 is an image-safety classifier",
    "gemma4_assistant": "gemma4_assistant is a speculative-decoding draft model",
}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_other_relatives_are_refused_by_name(model_type, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 8}))
    with pytest.raises(GemmaExportError, match=f"{REFUSED[model_type]}.*not supported"):
        export(folder, tmp_path / "out", ExportOptions())
    assert not (tmp_path / "out").exists()
