"""Canned `mockllm/model` outputs for Inspect tests (usage always set: no tiktoken download offline).

`text_output("...")` is a plain answer; `judge_output([(token, logprob), ...])` is an answer
whose first token carries that top-logprob list (a grader's EV read-out, or the stance tasks'
letter and word read-outs); `LN` is `math.log`, for writing probabilities as logprobs.
"""

from __future__ import annotations

import math

LN = math.log


def _usage():
    from inspect_ai.model import ModelUsage

    return ModelUsage(input_tokens=3, output_tokens=1, total_tokens=4)


def judge_output(top: list[tuple[str, float]]):
    """A mock answer whose first token is top[0] and carries `top` as its top logprobs."""
    from inspect_ai.model import ChatCompletionChoice, ChatMessageAssistant, Logprob, Logprobs, ModelOutput, TopLogprob

    lp = Logprobs(content=[Logprob(token=top[0][0], logprob=top[0][1], top_logprobs=[TopLogprob(token=t, logprob=v) for t, v in top])])
    return ModelOutput(
        model="mockllm/model",
        choices=[ChatCompletionChoice(message=ChatMessageAssistant(content=top[0][0]), logprobs=lp, stop_reason="stop")],
        completion=top[0][0],
        usage=_usage(),
    )


def text_output(text: str):
    from inspect_ai.model import ModelOutput

    out = ModelOutput.from_content(model="mockllm/model", content=text)
    out.usage = _usage()
    return out


def user_text(messages) -> str:
    """The last user message of a mock's input."""
    return [m for m in messages if m.role == "user"][-1].text


def system_text(messages) -> str:
    return next((m.text for m in messages if m.role == "system"), "")
