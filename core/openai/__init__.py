"""OpenAI's wire format, pure: request schemas in, response bodies and SSE chunks out.

Nothing here loads a model or does I/O. `schemas` turns a JSON body into typed requests
(every refusal a 400 naming its `param`), `responses` renders engine events as OpenAI's
JSON and SSE shapes, `grammar` compiles `response_format` JSON schemas to GBNF.
Handlers use these modules directly: `from core.openai import schemas, responses`.
"""
