"""The CLI's media flags (gemma_export/cli.py): `generate --image` (with and without --chat) and
`chat --image` print Model.generate's text for the same prompt and images; `export --text-only`
writes the decoder alone and says what it exported and skipped; bad media exit 2 in one line."""

import io

import pytest

import gemma_runtime
from cli_util import cli
from gemma_export.cli import _multimodal_note
from gemma_runtime.chat import render
from media_util import PLACEHOLDER, png, shared_artifact, shared_checkpoint

MARK = PLACEHOLDER["gemma3"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return shared_artifact("gemma3", tmp_path_factory)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / "one.png", folder / "two.png"]
    for k, path in enumerate(paths):
        path.write_bytes(png(30 + 10 * k, 40, seed=k))
    return paths


def generated(artifact, prompt: str, images) -> str:
    return gemma_runtime.load(artifact, threads=1).generate(prompt, images=images, max_new_tokens=6).text


def user_turn(artifact, content: str) -> str:
    return render([{"role": "user", "content": content}], gemma_runtime.load(artifact).chat_format())


def test_generate_with_images(artifact, images, capsys):
    args = ["generate", artifact, "--max-new-tokens", "6", "--image", images[0], "--image", images[1]]
    code, stdout, err = cli(capsys, *args, "--prompt", f"a{MARK}b{MARK}c")
    assert code == 0, err
    assert stdout == generated(artifact, f"a{MARK}b{MARK}c", images) + "\n"
    code, stdout, err = cli(capsys, *args, "--prompt", "abc", "--chat")  # no placeholder: in front, in the turn
    assert code == 0, err
    assert stdout == generated(artifact, user_turn(artifact, f"{MARK}{MARK}abc"), images) + "\n"


def test_chat_with_an_image(artifact, images, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n/exit\n"))
    code, stdout, err = cli(capsys, "chat", artifact, "--max-new-tokens", "6", "--image", images[0])
    assert code == 0, err
    assert stdout == "> " + generated(artifact, user_turn(artifact, f"{MARK}abc"), images[:1]) + "\n> "


def test_bad_media_exit_2(artifact, images, tmp_path, capsys):
    code, _, err = cli(capsys, "generate", artifact, "--prompt", "abc", "--image", tmp_path / "missing.png")
    assert code == 2 and "no such file" in err and err.count("\n") == 1
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code, _, err = cli(capsys, "generate", artifact, "--prompt", "abc", "--image", tmp_path / "bad.png")
    assert code == 2 and "not a readable image" in err
    code, _, err = cli(capsys, "generate", artifact, "--prompt", "abc", "--audio", images[0])
    assert code == 2 and "takes no audio" in err
    code, _, err = cli(capsys, "generate", artifact, "--prompt", f"{MARK}", "--image", images[0], "--image", images[1])
    assert code == 2 and "1 <start_of_image> placeholder(s) for 2 image(s)" in err


def test_export_text_only(tmp_path_factory, images, capsys):
    out = tmp_path_factory.mktemp("text-only") / "out"
    code, _, err = cli(capsys, "export", shared_checkpoint("gemma3", tmp_path_factory), "-o", out,
                       "--max-seq-len", "64", "--text-only")
    assert code == 0, err
    assert "note: a gemma3 checkpoint: exported the text decoder; its vision tower(s) skipped (--text-only)" in err
    model = gemma_runtime.load(out)
    assert not model.encoders.has("image_encoder") and "image" not in model.manifest.multimodal
    code, _, err = cli(capsys, "generate", out, "--prompt", "abc", "--image", images[0])
    assert code == 2 and "takes no images (exported with --text-only" in err
    code, _, err = cli(capsys, "generate", out, "--prompt", "abc", "--image", images[0], "--chat")
    assert code == 2 and "takes no images" in err


def test_the_export_note_names_what_was_exported():
    section = {"model_type": "gemma4", "towers": ["vision", "audio"], "skipped": [], "image": {}, "audio": {}}
    assert _multimodal_note(section, False) == ("note: a gemma4 checkpoint: exported the text decoder, the image "
                                                "encoder, the audio encoder")
    section = {"model_type": "gemma4", "towers": ["vision", "audio"], "skipped": ["audio"], "image": {}}
    assert _multimodal_note(section, False).endswith("the image encoder; its audio tower(s) skipped "
                                                     "(no exporter for them)")
