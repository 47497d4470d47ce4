"""Solvers for the stance tasks: eval-time conditioning and option-order counterbalancing.

Conditioning goes through `solvers.conditioning.condition_messages`, the same function training
uses, keyed on the item id, so a "training prefix" condition is byte-identical to what the
model saw in training, and both option orders of one item get the same mix-mode rephrasing.
"""

from __future__ import annotations

from typing import Any

from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser
from inspect_ai.solver import Generate, Solver, TaskState, solver

from solvers.conditioning import condition_messages, parse_conditioning

ORDERS = ("pro_first", "anti_first")


def order_letters(order: str) -> dict[str, str]:
    """Which letter is the pro-change option under each order."""
    if order == "pro_first":
        return {"pro_letter": "A", "anti_letter": "B"}
    if order == "anti_first":
        return {"pro_letter": "B", "anti_letter": "A"}
    raise ValueError(f"unknown option order {order!r}; expected one of {ORDERS}")


_ROLE = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}


@solver
def apply_conditioning(conditioning: dict | None = None, key_field: str = "item_id") -> Solver:
    """Set the system prompt / user prefix of every sample from a Conditioning (no-op when None)."""
    cond = parse_conditioning(conditioning)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        if cond is None:
            return state
        msgs: list[dict[str, Any]] = [{"role": m.role, "content": m.text} for m in state.messages]
        key = str(state.metadata[key_field])
        framed = condition_messages(msgs, cond, key=key)
        state.messages = [_ROLE[m["role"]](content=m["content"]) for m in framed]
        state.metadata["conditioning_applied"] = True
        return state

    return solve
