"""instructor against strato, as its docs use it: JSON_SCHEMA and TOOLS modes.

Run by tests/test_client_libraries.py in .venv-clients: python instructor_modes.py URL KEY MODEL
"""

import sys
from typing import Literal

import instructor
import openai
from pydantic import BaseModel

url, key, model = sys.argv[1:4]


class City(BaseModel):
    name: Literal["Paris", "Rome", "Tokyo"]
    country: Literal["France", "Italy", "Japan"]


for mode in (instructor.Mode.JSON_SCHEMA, instructor.Mode.TOOLS):
    client = instructor.from_openai(openai.OpenAI(base_url=url, api_key=key), mode=mode)
    city = client.chat.completions.create(
        model=model, response_model=City, max_retries=0, temperature=0, max_tokens=60,
        messages=[{"role": "user", "content": "Which city is the capital of France?"}])
    assert isinstance(city, City), city
    print(mode.name, city.model_dump_json())
