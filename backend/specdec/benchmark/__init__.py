"""`specdec bench`: throughput, step times and acceptance of AR / sync / async decoding, with the
bandwidth floor of the target and an HF transformers baseline measured in the same process."""
