"""The prompts an EAGLE-3 head's data answers when the user brings none: user messages the real target
writes itself (Magpie), kept on disk so that a second run reads them."""

from __future__ import annotations

import json
import types

import pytest

from specplug.eagle3_prompts import SELF_WRITTEN_TOKENS, self_written, templated, user_turn_prefix
from specplug.errors import SpecplugError
from specplug.prompts import encode_prompt


def test_the_prefix_is_how_the_chat_template_begins_every_user_message(llm):
    prefix = user_turn_prefix(llm.tokenizer)
    for text in ("Hello there", "Write a poem about the sea."):
        assert encode_prompt(llm.tokenizer, [{"role": "user", "content": text}])[: len(prefix)] == prefix
    assert llm.tokenizer.decode(prefix).rstrip().endswith("user")


def test_self_written_prompts_are_distinct_user_turns_the_model_ended(llm, tmp_path):
    prompts = self_written(llm.model, llm.tokenizer, llm.eos_token_ids, 6, tmp_path / "p.jsonl", rows=8)
    texts = [p[0]["content"] for p in prompts]
    assert len(prompts) == 6 and len(set(texts)) == 6
    assert all(p[0]["role"] == "user" and len(p) == 1 for p in prompts)
    shortest, longest = SELF_WRITTEN_TOKENS
    for text in texts:
        assert text == text.strip() and "<|im" not in text
        assert shortest - 2 <= len(llm.tokenizer(text)["input_ids"]) <= longest + 2  # re-tokenized after strip


def test_they_are_kept_read_back_and_made_again_alike(llm, tmp_path):
    path = tmp_path / "p.jsonl"
    first = self_written(llm.model, llm.tokenizer, llm.eos_token_ids, 4, path, rows=8)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept[0]["next_seed"] >= 4 and [k["messages"] for k in kept[1:5]] == first
    assert self_written(None, llm.tokenizer, None, 4, path) == first  # read back: no model needed
    again = self_written(llm.model, llm.tokenizer, llm.eos_token_ids, 4, tmp_path / "again.jsonl", rows=8)
    assert again == first  # every message has a seed of its own


def test_a_tokenizer_without_a_chat_template_is_refused_in_one_line():
    with pytest.raises(SpecplugError, match="--prompts-file") as error:
        user_turn_prefix(types.SimpleNamespace(chat_template=None))
    assert "\n" not in str(error.value)


def test_the_templated_prompts_are_every_task_about_every_topic_once():
    prompts = templated()
    assert len({p[0]["content"] for p in prompts}) == len(prompts) > 1000


def test_a_larger_self_written_run_reuses_a_smaller_one_s_data_but_a_prompts_file_is_keyed_by_content(tmp_path):
    from specplug.eagle3_command import work_dir

    prompts = templated()
    assert work_dir(tmp_path, (2, 15), 192, prompts[:10], "self") == work_dir(tmp_path, (2, 15), 192, prompts, "self")
    assert work_dir(tmp_path, (2, 15), 192, prompts[:10], "file") != work_dir(tmp_path, (2, 15), 192, prompts, "file")
    assert work_dir(tmp_path, (2, 15), 192, prompts, "self") != work_dir(tmp_path, (2, 15), 128, prompts, "self")
