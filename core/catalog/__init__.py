"""What a model name means: references, manifests, signatures, the registry, the resolver.

`references` parses what a user types (`name:tag`, URLs, paths, `name@blake3:`) before
any I/O; `registry` reads and writes manifests and blobs in any fsspec root; `manifest`
is the manifest's schema and the GGUF summary it carries; `signing` is Ed25519 over
manifests; `resolver` turns a reference into a `Source` (a verified blob plan or a local
file); `bundled` is the packaged default model.
"""
