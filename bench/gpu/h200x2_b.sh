#!/usr/bin/env bash
# Run B: park the first half of the SmolLM2 GGUF and the gguf wheel on the machine for run C.
mkdir -p /tmp/persist && cp .carry/a/* /tmp/persist/ && ls -la /tmp/persist && nvidia-smi --query-gpu=index,memory.used --format=csv,noheader
