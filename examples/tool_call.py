"""A tool-calling round trip: the model asks for a tool, the script runs it, and the model answers with its result.

tokenrelay up &
python examples/tool_call.py --question "What's the weather in Paris?"

The model's reasoning (asked for with --reasoning-effort) is printed apart from its answer.  With `tokenrelay up`'s
synthetic engine the call's arguments are placeholders that satisfy the tool's schema, and the answer is its usual
synthetic text.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from tokenrelay.client import ChatMessage, Client, Finished, ReasoningDelta, TextDelta, ToolCall, function_tool

WEATHER = function_tool(
    "get_weather",
    "The weather forecast for a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
)


def get_weather(city: str, unit: str) -> dict[str, Any]:
    """The tool itself (a real one would ask a weather service)."""
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "unit": unit, "sky": "clear"}


def run_tool(call: ToolCall) -> ChatMessage:
    """Run the call the model asked for; its result is the next turn's ``tool`` message."""
    if call.name != "get_weather" or call.id is None:
        raise SystemExit(f"the model called an unknown tool: {call.name}")
    result = get_weather(**call.parsed_arguments())
    return ChatMessage(role="tool", content=orjson.dumps(result).decode(), tool_call_id=call.id)


async def main(args: argparse.Namespace) -> None:
    conversation = [ChatMessage(role="user", content=args.question)]
    async with Client(args.gateway_url) as client:
        for turn in range(args.max_turns):
            stream = await client.start(
                messages=conversation, tools=[WEATHER], reasoning_effort=args.reasoning_effort, max_tokens=200
            )
            reasoned = False
            async for event in stream.events():
                match event:
                    case ReasoningDelta(text=text):
                        print(text, end="", flush=True, file=sys.stderr)  # the reasoning, apart from the answer
                        reasoned = True
                    case TextDelta(text=text):
                        if reasoned:
                            print(file=sys.stderr)  # the answer begins on a line of its own
                            reasoned = False
                        print(text, end="", flush=True)
                    case Finished(finish_reason=reason):
                        print(f"\n[turn {turn + 1}: {reason}, {stream.tokens} tokens]", file=sys.stderr)
            if stream.finish_reason != "tool_calls":
                return
            conversation.append(stream.assistant_message())
            for call in stream.tool_calls:
                print(f"[calling {call.name}({call.arguments})]", file=sys.stderr)
                conversation.append(run_tool(call))
    raise SystemExit(f"no answer after {args.max_turns} turns")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway-url", default="http://127.0.0.1:8080")
    parser.add_argument("--question", default="What's the weather in Paris?")
    parser.add_argument("--reasoning-effort", choices=["none", "minimal", "low", "medium", "high"], default="low")
    parser.add_argument("--max-turns", type=int, default=4, help="give up after this many requests")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
