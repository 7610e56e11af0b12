"""An OpenAI-compatible chat endpoint: a teacher that writes self-edits, or a judge that grades answers."""

from __future__ import annotations

import os


class EndpointError(RuntimeError):
    pass


class ChatEndpoint:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 retries: int = 3, timeout_s: float = 60):
        self.settings = dict(base_url=base_url, api_key_env=api_key_env, retries=retries, timeout_s=timeout_s)
        self.model = model
        self.client = self._client(**self.settings)

    @staticmethod
    def _client(base_url: str, api_key_env: str, retries: int, timeout_s: float):
        from openai import OpenAI

        # Local servers usually need no key; the client insists on one, so a placeholder is passed.
        key = os.environ.get(api_key_env) or "none"
        return OpenAI(base_url=base_url, api_key=key, max_retries=retries, timeout=timeout_s)

    def __getstate__(self) -> dict:  # a distributed worker gets the settings and makes its own client
        return dict(settings=self.settings, model=self.model)

    def __setstate__(self, state: dict) -> None:
        self.settings, self.model = state["settings"], state["model"]
        self.client = self._client(**self.settings)

    def complete(self, prompt: str, *, temperature: float = 0.0, max_tokens: int = 512) -> str:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}],
                temperature=temperature, max_tokens=max_tokens)
            return reply.choices[0].message.content or ""
        except (openai.OpenAIError, IndexError, AttributeError) as err:
            raise EndpointError(f"{self.model} at {self.client.base_url}: {err}") from err


JUDGE_PROMPT = """You grade answers to questions about a text.
Question: {question}
Gold answer: {gold}
Predicted answer: {prediction}

Does the prediction convey the gold answer without contradicting it? Reply with one word: yes or no."""


class Judge:
    """Yes/no grading of one answer. A failed call returns None: ungraded, never counted as wrong."""

    def __init__(self, endpoint: ChatEndpoint):
        self.endpoint = endpoint
        self.failures = 0

    def grade(self, question: str, golds: list[str], prediction: str) -> tuple[float | None, str | None]:
        prompt = JUDGE_PROMPT.format(question=question, gold=" / ".join(golds), prediction=prediction)
        try:
            reply = self.endpoint.complete(prompt, max_tokens=4).strip().lower()
        except EndpointError as err:
            self.failures += 1
            return None, str(err)
        if reply.startswith("yes"):
            return 1.0, None
        if reply.startswith("no"):
            return 0.0, None
        return None, f"judge reply not yes/no: {reply[:40]!r}"
