"""langchain-openai against strato, as its docs use it: with_structured_output (JSON
schema and function calling) and bind_tools with a named tool_choice.

Run by tests/test_client_libraries.py in .venv-clients: python langchain_tools.py URL KEY MODEL
"""

import json
import sys
from typing import Literal

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

url, key, model = sys.argv[1:4]
llm = ChatOpenAI(base_url=url, api_key=key, model=model, temperature=0, max_tokens=60,
                 max_retries=0)


class City(BaseModel):
    """A city and its country."""

    name: Literal["Paris", "Rome", "Tokyo"] = Field(description="the city")
    country: Literal["France", "Italy", "Japan"]


for method in ("json_schema", "function_calling"):
    city = llm.with_structured_output(City, method=method).invoke(
        "Which city is the capital of France?")
    assert isinstance(city, City), city
    print(method, city.model_dump_json())


@tool
def get_weather(city: Literal["Paris", "Rome", "Tokyo"]) -> str:
    """Current weather in a city."""
    return f"21 C in {city}"


message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
    "What is the weather like in Rome?")
assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather", message
result = get_weather.invoke(message.tool_calls[0])
assert result.content.startswith("21 C in "), result
print("bind_tools", json.dumps(message.tool_calls[0]["args"]))
