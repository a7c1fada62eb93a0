"""The llama.cpp engine: one loaded model, its scheduler and everything a token passes.

`protocol` is the contract (`Engine`, `GenerationRequest`, `TokenEvent`, `ModelInfo`) that
serving and handlers see; `llama` is the only module that imports llama_cpp, owning the
model and context; `scheduler` runs continuous batching on one thread; `sampling` builds
llama.cpp sampler chains; `detokenizer` turns tokens into UTF-8 text with stop strings;
`chat_template` renders a GGUF's Jinja chat template.
"""
