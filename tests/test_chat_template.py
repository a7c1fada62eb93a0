"""Chat rendering: the fallback formats as pure functions, the GGUF-template path with a
real template string, and the engine's choice for the real (template-less) Gemma GGUF."""

from __future__ import annotations

import pytest

from core.engine import chat_template as chat
from core.errors import BadRequest

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
STRICT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
)


def test_gemma_fallback_folds_system_into_first_user_turn() -> None:
    out = chat.render([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ], template=None, architecture="gemma3")
    assert out == ("<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
                   "<start_of_turn>model\nHello.<end_of_turn>\n"
                   "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
                   "<start_of_turn>model\n")


def test_gemma_fallback_system_only_still_reaches_model() -> None:
    out = chat.render([{"role": "system", "content": "Say yes."}], template=None,
                      architecture="gemma2")
    assert out == "<start_of_turn>user\nSay yes.<end_of_turn>\n<start_of_turn>model\n"


def test_chatml_fallback_for_other_architectures() -> None:
    out = chat.render([{"role": "developer", "content": "S"}, {"role": "user", "content": "U"}],
                      template=None, architecture="llama")
    assert out == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
                   "<|im_start|>assistant\n")


def test_content_parts_are_joined_as_the_http_path_joins_them() -> None:
    out = chat.render([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                     {"type": "text", "text": "b"}]}],
                      template=None, architecture="qwen2")
    assert "<|im_start|>user\na\nb<|im_end|>" in out


def test_gguf_template_is_used_when_present() -> None:
    out = chat.render([{"role": "user", "content": "Hi"}], template=CHATML_TEMPLATE,
                      architecture="gemma3")
    assert out == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_template_raise_exception_is_a_bad_request() -> None:
    msgs = [{"role": "assistant", "content": "x"}]
    with pytest.raises(BadRequest, match="roles must alternate"):
        chat.render(msgs, template=STRICT_TEMPLATE, architecture="llama", bos_token="<s>")
    ok = chat.render([{"role": "user", "content": "x"}], template=STRICT_TEMPLATE,
                     architecture="llama", bos_token="<s>")
    assert ok == "<s>[user]x"


def test_template_is_sandboxed() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(Exception) as info:
        chat.render([{"role": "user", "content": "x"}], template=evil, architecture="llama")
    assert "unsafe" in str(info.value).lower() or isinstance(info.value, BadRequest)


@pytest.mark.parametrize("messages", [
    [],
    "hello",
    [{"role": "wizard", "content": "x"}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    ["not a dict"],
])
def test_invalid_messages_are_bad_requests(messages) -> None:
    with pytest.raises(BadRequest):
        chat.render(messages, template=None, architecture="gemma3")


def test_real_gemma_has_no_template_and_gets_the_gemma_fallback(load_engine) -> None:
    engine = load_engine(ctx=256, parallel=1)
    assert engine.info.chat_template is None
    assert engine.info.architecture == "gemma3"
    prompt = engine.render_chat([{"role": "user", "content": "Hi"}])
    assert prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    tokens = engine.tokenize(prompt)
    # BOS once, and the turn markers are single special tokens, not spelled out.
    assert tokens[0] == engine.tokenize("")[0]
    assert tokens.count(tokens[0]) == 1
    assert len(tokens) < 12
    # A template that writes the BOS itself must not produce a double BOS.
    assert engine.tokenize("<bos>" + prompt) == tokens
