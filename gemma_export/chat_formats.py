"""Gemma's chat formats, by family, written into the manifest (manifest.chat) so that the runtime
holds no table keyed by family. Gemma 1-3 write turns as `<start_of_turn>role\n...<end_of_turn>\n`,
Gemma 3n too; Gemma 4 (and Unified) as `<|turn>role\n...<turn|>\n`; none has a system role."""

from __future__ import annotations

from gemma_runtime.manifest import ChatFormat

_START_OF_TURN = ChatFormat("<start_of_turn>", "<end_of_turn>", model_role="model", system="first_user_turn")
_TURN = ChatFormat("<|turn>", "<turn|>", model_role="model", system="first_user_turn")
CHAT_FORMATS = {"gemma": _START_OF_TURN, "gemma2": _START_OF_TURN, "vaultgemma": _START_OF_TURN, "gemma3": _START_OF_TURN,
                "gemma3n": _START_OF_TURN, "gemma4": _TURN, "gemma4_unified": _TURN}
# pieces besides eos and the turn end that end a model turn
EXTRA_STOP_PIECES = {"gemma4": ("<|tool_response>",), "gemma4_unified": ("<|tool_response>",)}
