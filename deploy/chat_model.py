"""The MLflow pyfunc model of a registered version: chat messages in, generated text out.

MLflow logs this file as the model's code ("models from code"): nothing is pickled, and loading a
version needs MLflow, transformers, peft and torch only, never customizer, so this module imports
nothing of the project. What it loads is said by the model's ``model_config``
(``deploy.mlflow_model.chat_model_config``):

- ``artifact``: ``adapter`` (a LoRA adapter applied to ``base_model``) or ``model`` (full weights
  with their tokenizer);
- ``base_model``: for an adapter, the Hub id or local folder its base loads from; ``base_folder``,
  where given, is the folder the base was resolved into when the version was trained, taken instead
  wherever it exists (a machine without the Hub);
- ``prompt_format``: ``chat`` (the tokenizer's chat template, as training and evaluation render a
  conversation) or ``template`` (``prompt_template`` up to ``{completion}``, filled with the last user
  message);
- ``max_new_tokens``: the default length of an answer.

The weights are the model's ``weights`` artifact. ``predict`` takes ``{"messages": [...]}``, a list
of such records or a DataFrame with a ``messages`` column, and returns one generated text per
conversation; ``params`` may set ``max_new_tokens`` and ``temperature`` (0: greedy).
"""

import os
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

WEIGHTS = "weights"  # the name of the artifact holding the trained folder


def conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """The conversations in a pyfunc input: a DataFrame (one per row), a record, or a list of records.

    Raises:
        ValueError: the input carries no ``messages``, or a message is not ``{role, content}``.
    """
    if isinstance(model_input, pd.DataFrame):
        if "messages" not in model_input.columns:
            raise ValueError(f"the input has no `messages` column (columns: {', '.join(map(str, model_input.columns))})")
        rows = [{"messages": value} for value in model_input["messages"]]
    elif isinstance(model_input, dict):
        rows = [model_input]
    elif isinstance(model_input, list) and all(isinstance(row, dict) for row in model_input):
        rows = model_input
    else:
        raise ValueError(f"expected {{\"messages\": [...]}} or a DataFrame with a `messages` column, got {type(model_input).__name__}")
    found = []
    for number, row in enumerate(rows, start=1):
        messages = row.get("messages")
        if messages is None or isinstance(messages, (str, bytes, dict)) or len(messages) == 0:
            raise ValueError(f"input {number}: `messages` must be a non-empty list of {{role, content}}")
        turns = []
        for message in messages:
            if not (hasattr(message, "get") and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
                raise ValueError(f"input {number}: every message needs a `role` and a `content` string, got {message!r}")
            turns.append({"role": message["role"], "content": message["content"]})
        found.append(turns)
    return found


class ChatModel(PythonModel):
    """A fine-tuned causal LM that answers a conversation."""

    def load_context(self, context) -> None:
        # delayed: only loading a model needs them, not importing this file when it is logged
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = dict(context.model_config or {})
        weights = context.artifacts[WEIGHTS]
        if config.get("artifact") == "adapter":
            from peft import PeftModel

            base = config.get("base_model")
            if config.get("base_folder") and os.path.isdir(config["base_folder"]):
                base = config["base_folder"]
            if not base:
                raise ValueError("model_config: an adapter needs `base_model` (the Hub id or folder of its base)")
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), weights)
            tokenizer_dir = base  # training never changes an adapter's vocabulary
        else:
            model, tokenizer_dir = AutoModelForCausalLM.from_pretrained(weights), weights
        self.model = model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.prompt_format = config.get("prompt_format", "chat")
        self.prompt_template = config.get("prompt_template", "{prompt} {completion}")
        self.max_new_tokens = int(config.get("max_new_tokens", 128))

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the model was trained on for this conversation."""
        if self.prompt_format == "template":
            head = self.prompt_template.partition("{completion}")[0]
            last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
            return head.format(prompt=last_user)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        # The hint says what MLflow hands over once the signature is enforced; called directly, a
        # record or a list of records works too (`conversations`).
        import torch  # delayed: loaded with the model

        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or self.max_new_tokens)
        temperature = float(params.get("temperature") or 0.0)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        answers = []
        for messages in conversations(model_input):
            inputs = self.tokenizer(self.prompt(messages), return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                             **sampling)
            answers.append(self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return answers


mlflow.models.set_model(ChatModel())
