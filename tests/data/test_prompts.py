from transformers import AutoTokenizer

from core.catalog import get_config
from data.prompts import render, stop_sequences
from tests.conftest import TINY_CONFIG_URN


def test_chat_render_splits_the_template_at_the_answer(settings, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    sample = render(record, config, tokenizer)
    assert sample.prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (sample.target, sample.end_text) == ("ok", "<|im_end|>")
    assert sample.prompt + sample.target + sample.end_text + "\n" == tokenizer.apply_chat_template(record["messages"], tokenize=False)
    assert stop_sequences(tokenizer, sample) == ["<|im_end|>"]


def test_prompt_completion_under_a_chat_config_is_one_user_turn(settings, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    as_chat = render({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, config, tokenizer)
    as_completion = render({"prompt": "q", "completion": "a"}, config, tokenizer)
    assert as_chat == as_completion


def test_template_format_uses_the_prompt_template(settings, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings).model_copy(update={"prompt_format": "template", "prompt_template": "Q: {prompt}\nA: {completion}"})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sample = render({"prompt": "2+2?", "completion": "4"}, config, tokenizer)
    assert (sample.prompt, sample.target, sample.end_text) == ("Q: 2+2?\nA: ", "4", tokenizer.eos_token)
