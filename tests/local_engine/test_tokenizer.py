"""Tokenizers and chat templates against transformers, and incremental detokenization."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers

from local_engine.detokenizer import IncrementalDetokenizer
from local_engine.loader.gguf import GGUFFile, build_tokenizer
from local_engine.loader.hf import load_tokenizer
from local_engine.models.default import default_model_path
from local_engine.tokenizer import ChatTemplateError, Tokenizer
from tests.support.engine_models import smollm_gguf_dir, write_tokenizer

TEXTS = [
    "Hello world",
    "  leading spaces and trailing  ",
    "The year 2024 had 366 days; pi≈3.14159.",
    "café naïve résumé",
    "東京は日本の首都です。你好，世界！",  # noqa: RUF001 - full-width punctuation on purpose
    "emoji: 😀👍🏽 🇫🇷 family 👨‍👩‍👧",
    "tabs\tand\nnewlines\r\n\n",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "don't won't I'm we'll they've",
    "def f(x):\n    return x ** 2  # square",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me about 東京 😀"},
    ],
]


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    directory, filename = smollm_gguf_dir(tmp_path_factory.mktemp("smollm_tok"))
    reference = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    ours = build_tokenizer(GGUFFile(default_model_path()))
    return ours, reference


@pytest.fixture(scope="module")
def dir_pair(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    model_dir = tmp_path_factory.mktemp("tok")
    write_tokenizer(model_dir)
    return load_tokenizer(model_dir, {}), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_encode_decode_match_transformers(gguf_pair, text: str) -> None:
    ours, reference = gguf_pair
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


def test_gguf_special_tokens_match_transformers(gguf_pair) -> None:
    ours, reference = gguf_pair
    assert ours.vocab_size == len(reference)
    assert ours.bos_token == reference.bos_token
    assert ours.eos_token == reference.eos_token
    assert ours.eos_token_ids == (reference.eos_token_id,)
    assert ours.encode("<|im_end|>") == [reference.eos_token_id]
    assert ours.id_to_token(ours.encode(" world")[0]) == "Ġworld"


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gguf_chat_template_matches_transformers(
    gguf_pair, conversation, add_generation_prompt: bool
) -> None:
    ours, reference = gguf_pair
    expected = reference.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    rendered = ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    assert rendered == expected
    assert ours.encode(rendered) == reference.encode(expected, add_special_tokens=False)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_dir_tokenizer_and_template_match_transformers(dir_pair, conversation) -> None:
    ours, reference = dir_pair
    expected = reference.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(conversation) == expected
    for text in TEXTS:
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False)


def test_template_helpers_like_transformers() -> None:
    backend = HFBackend(models.BPE())
    template = (
        "{% if messages|length > 2 %}{{ raise_exception('too many') }}{% endif %}"
        "{{ messages|tojson }}|{{ strftime_now('%Y') | length }}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}[{{ m.content }}]{% endfor %}"
    )
    tok = Tokenizer(backend=backend, chat_template=template)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "東京"}, {"role": "user", "content": "x"}]
    )
    assert rendered == '[{"role": "user", "content": "東京"}, {"role": "user", "content": "x"}]|4[東京]'
    with pytest.raises(ChatTemplateError, match="too many"):
        tok.apply_chat_template([{"role": "user", "content": "a"}] * 3)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer(backend=backend).apply_chat_template([{"role": "user", "content": "a"}])


def _stream(tok, ids: list[int], **kwargs) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tok, **kwargs)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    return pieces, "".join(pieces)


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_streams_whole_characters_byte_level(dir_pair, text: str) -> None:
    ours, _ = dir_pair  # a 400-token vocabulary: CJK and emoji split into byte tokens
    ids = ours.encode(text)
    pieces, joined = _stream(ours, ids, skip_special_tokens=False)
    assert joined == ours.decode(ids, skip_special_tokens=False)
    assert all("\ufffd" not in p for p in pieces)


def test_detokenizer_skips_special_tokens(gguf_pair) -> None:
    ours, _ = gguf_pair
    ids = ours.encode("<|im_start|>assistant\nHi 😀<|im_end|>")
    _, joined = _stream(ours, ids)
    assert joined == "assistant\nHi 😀"


def _byte_fallback_tokenizer() -> Tokenizer:
    """A sentencepiece-style vocabulary: a few pieces plus <0xNN> byte tokens (Llama 2 / Mistral style)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "▁h", "▁he", "▁hel", "▁hello", "h", "e", "l", "o", "▁w", "w", "r", "d", "▁world"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "h"), ("▁h", "e"), ("▁he", "l"), ("▁hel", "lo"), ("l", "o"), ("▁", "w"), ("▁w", "orld")]
    merges = [m for m in merges if "".join(m) in vocab and m[0] in vocab and m[1] in vocab]
    backend = HFBackend(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return Tokenizer(backend=backend)


@pytest.mark.parametrize("text", ["hello world", "hello 東京 😀 wörld", "é😀", "hello  world 👨‍👩‍👧"])
def test_detokenizer_byte_fallback_and_leading_spaces(text: str) -> None:
    tok = _byte_fallback_tokenizer()
    ids = tok.encode(text)
    assert any(tok.id_to_token(i).startswith("<0x") for i in ids) or text == "hello world"
    pieces, joined = _stream(tok, ids)
    assert joined == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
    # With the prompt as left context, a continuation keeps its leading space.
    prompt = tok.encode("hello")
    _, continued = _stream(tok, tok.encode("hello world")[len(prompt) :], prompt_token_ids=prompt)
    assert continued == " world"


def test_detokenizer_holds_back_incomplete_character(dir_pair) -> None:
    ours, _ = dir_pair
    ids = ours.encode("😀")
    assert len(ids) > 1  # the emoji's four bytes span several tokens
    detok = IncrementalDetokenizer(ours)
    assert [detok.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.push(ids[-1]) == "😀"


def test_missing_tokenizer_file_is_named(tmp_path: Path) -> None:
    # load_tokenizer on a directory with no tokenizer.json names the file
    from local_engine.loader.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path, {})
