"""The CLI end to end on a tiny checkpoint: export options, generate, chat, validate, inspect."""

import json

import pytest
import torch

import gemma_runtime
from cli_util import cli
from parity import assert_fp32_parity, hf_logits, prompt
from test_chat_tokens import gemma1_like_tokenizer
from tiny import hf_model, write_checkpoint


@pytest.fixture(scope="module")
def chat_artifact(tmp_path_factory):
    """A tiny Gemma 1 checkpoint with a tokenizer, exported once."""
    root = tmp_path_factory.mktemp("cli")
    folder = write_checkpoint("gemma-mqa", root / "ckpt")
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions
    export(folder, root / "out", ExportOptions(target="generic", max_seq_len=64))
    return folder, root / "out"


def test_sharded_bf16_checkpoint_matches_transformers(tmp_path, capsys):
    folder = tmp_path / "sharded"
    hf_model("gemma-mha").to(torch.bfloat16).save_pretrained(folder, max_shard_size="60KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    code, _, _ = cli(capsys, "export", folder, "-o", tmp_path / "out", "--dump-ir", tmp_path / "ir")
    assert code == 0
    dumps = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert dumps[0] == "00-traced.txt" and any("tied_lm_head" in d for d in dumps)
    import transformers
    # the same bf16 values, fp32 compute (a bf16 model cast back to fp32 would carry a bf16 RoPE buffer)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = prompt(11, 25)
    assert_fp32_parity(gemma_runtime.load(tmp_path / "out").logits(ids), hf_logits(reference, ids))


def test_generate_streams_text(chat_artifact, capsys):
    _, out = chat_artifact
    code, stdout, _ = cli(capsys, "generate", out, "--prompt", "abc", "--max-new-tokens", "6")
    model = gemma_runtime.load(out)
    assert code == 0 and stdout == model.generate("abc", max_new_tokens=6).text + "\n"
    code, stdout_chat, _ = cli(capsys, "generate", out, "--prompt", "abc", "--max-new-tokens", "6", "--chat")
    assert code == 0


def test_chat_keeps_turns_and_drops_the_oldest_when_full(chat_artifact, capsys, monkeypatch):
    import io
    _, out = chat_artifact
    long_turn = "abcdefghij " * 3
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([long_turn] * 4) + "\n/exit\n"))
    code, stdout, err = cli(capsys, "chat", out, "--max-new-tokens", "4", "--system", "be brief")
    assert code == 0
    assert stdout.count("> ") == 5
    assert "oldest turn was dropped" in err
    code, _, err = cli(capsys, "chat", out, "--max-new-tokens", "10000")
    assert code == 2 and "leaves no room for a message" in err


def test_validate_passes_against_its_source_and_fails_against_another(chat_artifact, tmp_path, capsys):
    folder, out = chat_artifact
    code, stdout, _ = cli(capsys, "validate", out, "--reference", folder, "--json", tmp_path / "r.json")
    assert code == 0 and "PASS" in stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["top1_agreement_decided"] == 1.0
    assert report["max_abs_diff"] <= 1e-4 * report["max_abs_ref_logit"]
    assert report["greedy_tokens_matched"] == report["greedy_tokens_total"] > 0
    other = write_checkpoint("gemma-mqa", tmp_path / "other", seed=1)
    code, stdout, _ = cli(capsys, "validate", out, "--reference", other)
    assert code == 1 and "FAIL" in stdout


def test_validate_against_another_artifact_and_a_text_file(chat_artifact, tmp_path, capsys):
    folder, out = chat_artifact
    (tmp_path / "t.txt").write_text("abc def ghi\n\njklm nop qrs tuv")
    code, stdout, _ = cli(capsys, "validate", out, "--reference", out, "--text", tmp_path / "t.txt")
    assert code == 0 and "max |diff|             0 " in stdout


def test_inspect_shows_ops_io_and_passes(chat_artifact, capsys):
    _, out = chat_artifact
    code, stdout, _ = cli(capsys, "inspect", out)
    assert code == 0
    for needle in ("gemma_export::GemmaAttention", "input_ids", "tied_lm_head", "model.onnx.data", "target generic"):
        assert needle in stdout


def test_usage_errors_exit_2(chat_artifact, capsys):
    _, out = chat_artifact
    assert cli(capsys, "generate", out)[0] == 2  # --prompt missing
    code, _, err = cli(capsys, "generate", out, "--prompt", "x", "--top-p", "1.5")
    assert code == 2 and "top_p" in err
    code, _, err = cli(capsys, "generate", out, "--prompt", "x", "--backend", "nope")
    assert code == 2 and "unknown backend" in err
