"""Precision tests: C-Eval 5-shot and BoolQ as the reference runs them, and a logits comparison of two
configurations (dtype, tensor parallelism, quantization, or two checkpoints). Entry point:
`inference.eval.cli.main(argv)` (`qwen-chat eval ...`)."""
