"""The OpenAI Agents SDK against strato: an agent whose function tool must be called,
over OpenAIChatCompletionsModel (and OpenAIResponsesModel when strato serves
/v1/responses: pass "responses" as a fourth argument).

Run by tests/test_client_libraries.py in .venv-clients: python agents_sdk.py URL KEY MODEL [API]
"""

import sys
from typing import Literal

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

url, key, model = sys.argv[1:4]
api = sys.argv[4] if len(sys.argv) > 4 else "chat"
set_tracing_disabled(True)
calls: list[str] = []


@function_tool
def get_weather(city: Literal["Paris", "Rome", "Tokyo"]) -> str:
    """Current weather in a city."""
    calls.append(city)
    return f"21 C in {city}"


client = AsyncOpenAI(base_url=url, api_key=key, max_retries=0)
backend = (OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel)(
    model=model, openai_client=client)
agent = Agent(name="weather", instructions="Answer weather questions with the tool.",
              tools=[get_weather], model=backend, tool_use_behavior="stop_on_first_tool",
              model_settings=ModelSettings(tool_choice="required", temperature=0,
                                           parallel_tool_calls=False, max_tokens=60))
result = Runner.run_sync(agent, "What is the weather like in Tokyo?")
assert len(calls) == 1 and result.final_output == f"21 C in {calls[0]}", \
    (calls, result.final_output)
print(api, result.final_output)
