"""The chat rendering of the TRL GRPO engine (:mod:`zoomdx_lib.train.grpo_trl`): a crop returned by the
zoom tool renders as the paper's user image turn, and a generated ``<tool_call>`` block parses as a call of
``zoom``.

TRL builds the turn-2 input as ``prompt ids + turn-1 ids + suffix ids``, the suffix rendered by the chat
template from a ``{"role": "tool"}`` message. Neither the tiny model's template nor Qwen2.5-VL's own renders
tool messages, so :func:`tool_chat_template` extends them; with the zoom tool's return value the suffix is
byte-identical to the explicit rollout's crop turn (what still differs: ``docs/engines.md``, "GRPO through
TRL: the full record").
"""
from __future__ import annotations

import contextlib

from ..model.build import QWEN25_VL_CHAT_TEMPLATE, TINY_CHAT_TEMPLATE
from ..protocol import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

__all__ = ["TOOL_NAME", "ZOOM_RESPONSE_TEMPLATE", "tool_chat_template", "tool_rendering"]

TOOL_NAME = "zoom"   # the zoom tool's name: the method of zoomdx_lib.train.grpo_trl_env.ZoomEnvironment

# An assistant turn's tool calls: a zoom call in the paper's nameless form, any other call Hermes-style.
_TOOL_CALLS = (
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{%- if fn['name'] == '" + TOOL_NAME + "' and fn['arguments'] is mapping and fn['arguments'] | length == 1"
    " and 'bbox_2d' in fn['arguments'] -%}"
    "<tool_call>{\"bbox_2d\": {{ fn['arguments']['bbox_2d'] | tojson }}}</tool_call>"
    "{%- elif fn['arguments'] is string -%}"
    "<tool_call>{\"name\": {{ fn['name'] | tojson }}, \"arguments\": {{ fn['arguments'] }}}</tool_call>"
    "{%- else -%}"
    "<tool_call>{\"name\": {{ fn['name'] | tojson }}, \"arguments\": {{ fn['arguments'] | tojson }}}</tool_call>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)
_ROLE = "<|im_start|>{{ message['role'] }}"
_TOOL_AS_USER = "<|im_start|>{{ 'user' if message['role'] == 'tool' else message['role'] }}"
# Where each known template closes a message (before <|im_end|>), with how often that happens in it.
_TURN_ENDS = {
    TINY_CHAT_TEMPLATE: [("{%- endif -%}<|im_end|>", 1)],
    QWEN25_VL_CHAT_TEMPLATE: [("{{ message['content'] }}<|im_end|>", 1), ("{% endfor %}<|im_end|>", 1)],
}


def tool_chat_template(template: str) -> str:
    """`template` (the tiny model's or Qwen2.5-VL's own) extended for TRL's tool loop.

    A ``tool`` message is rendered as a user turn (so the crop turn is the paper's user image turn)
    and an assistant message's ``tool_calls`` after its content, a zoom call as
    ``<tool_call>{"bbox_2d": [...]}</tool_call>``. Conversations without tools render as before.
    Raises ValueError for any other template.
    """
    if template not in _TURN_ENDS or template.count(_ROLE) != 1:
        raise ValueError("the TRL GRPO engine knows the tiny model's and Qwen2.5-VL's own chat templates; this "
                         "checkpoint carries another one (extend zoomdx_lib.train.grpo_trl_render.tool_chat_template)")
    out = template.replace(_ROLE, _TOOL_AS_USER)
    for anchor, count in _TURN_ENDS[template]:
        if out.count(anchor) != count:
            raise ValueError(f"chat template anchor {anchor!r} found {out.count(anchor)} times, expected {count}")
        out = out.replace(anchor, anchor.replace("<|im_end|>", _TOOL_CALLS + "<|im_end|>"))
    return out


# How TRL reads a generated turn: each <tool_call>{json}</tool_call> block becomes a call of `zoom` with the
# JSON's bbox_2d (the paper's call has no function name); everything else is the content. A block that is not
# JSON, or has no bbox_2d, makes TRL's parser fail as a whole: the turn then holds no call at all.
ZOOM_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": TOOL_CALL_OPEN,
            "close": TOOL_CALL_CLOSE,
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": {"name": TOOL_NAME,
                                                            "arguments": {"bbox_2d": "{content.bbox_2d}"}}},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text", "repeats": True, "join": ""},
    },
}


@contextlib.contextmanager
def tool_rendering(processor):
    """Inside the block the processor renders tool turns (:func:`tool_chat_template`) and its tokenizer
    parses zoom calls (:data:`ZOOM_RESPONSE_TEMPLATE`); both are restored afterwards."""
    tok = processor.tokenizer
    saved = processor.chat_template, getattr(tok, "response_template", None)
    try:
        processor.chat_template = tool_chat_template(saved[0])
        tok.response_template = ZOOM_RESPONSE_TEMPLATE
        yield processor
    finally:
        processor.chat_template = saved[0]
        tok.response_template = saved[1]
