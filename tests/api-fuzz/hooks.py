"""Schemathesis hooks for the admin API run (loaded through SCHEMATHESIS_HOOKS).

The plugin upload route takes a raw component (`application/wasm`); schemathesis has no
serializer for that media type, so generated bodies are sent as raw bytes, like
`application/octet-stream`. The API answers them 400 `invalid_plugin_component`.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")
