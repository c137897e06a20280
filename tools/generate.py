"""Print completions of prompts from a trained lmlib run or a Hugging Face directory.

    python tools/generate.py --checkpoint=/tmp/run --prompt="def fib(n):" --max_new_tokens=64
    python tools/generate.py --checkpoint=/path/to/hf_dir --prompts_file=prompts.txt

A single prompt streams its tokens as they are produced; a file of prompts (one per line) is
sampled as one batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging

from lmlib import hf
from lmlib.data.tokenizer import load_tokenizer
from lmlib.errors import ConfigError
from lmlib.generate import Sampler, SamplingConfig
from lmlib.train.checkpoint import load_params

flags.DEFINE_string("checkpoint", None, "a run's workdir, checkpoints/ or step directory, or a "
                    "Hugging Face model directory", required=True)
flags.DEFINE_string("prompt", None, "one prompt")
flags.DEFINE_string("prompts_file", None, "a text file with one prompt per line")
flags.DEFINE_string("tokenizer", None, "tokenizer.model or tokenizer.json; default: the one "
                    "beside the checkpoint")
flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate per prompt")
flags.DEFINE_float("temperature", 0.0, "0 = greedy")
flags.DEFINE_integer("top_k", 0, "0 = no top-k cut")
flags.DEFINE_float("top_p", 1.0, "nucleus sampling threshold")
flags.DEFINE_integer("seed", 0, "sampling seed")
FLAGS = flags.FLAGS


def load(path: str, tokenizer_path: str | None):
    """(model config, params, tokenizer) of an lmlib run or a Hugging Face directory."""
    root = Path(path)
    sharded = ((root / "config.json").exists()
               and (root / "model.safetensors.index.json").exists())
    if sharded or (root / "model.safetensors").exists():
        config, params = hf.load_hf(root)
        default_tokenizer = hf.tokenizer_file(root)
    else:
        config, params = load_params(path)
        # A workdir holds the run's tokenizer; a step directory is two levels below it.
        default_tokenizer = next(filter(None, map(hf.tokenizer_file,
                                                  (root, *root.parents[:3]))), None)
    tokenizer_path = tokenizer_path or default_tokenizer
    if not tokenizer_path:
        raise ConfigError(f"no tokenizer found beside {path}; pass --tokenizer")
    return config, params, load_tokenizer(tokenizer_path)


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # Orbax narrates every restore at INFO
    try:
        if bool(FLAGS.prompt) == bool(FLAGS.prompts_file):
            raise ConfigError("give exactly one of --prompt and --prompts_file")
        prompts = [FLAGS.prompt] if FLAGS.prompt else [
            line for line in Path(FLAGS.prompts_file).read_text().splitlines() if line.strip()]
        config, params, tokenizer = load(FLAGS.checkpoint, FLAGS.tokenizer)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sampler = Sampler(config, params)
    sampling = SamplingConfig(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                              top_k=FLAGS.top_k, top_p=FLAGS.top_p, eos_id=tokenizer.eos_id,
                              seed=FLAGS.seed)
    # BOS first only where the tokenizer has one (Qwen2's has none), as in training.
    encoded = [tokenizer.with_bos(tokenizer.encode(p)) for p in prompts]
    if len(prompts) == 1:  # stream: print each new piece of text as its token arrives
        print(prompts[0], end="", flush=True)
        tokens: list[int] = []
        for token in sampler.stream(encoded, sampling):
            before = tokenizer.decode(tokens)
            tokens.append(int(token[0]))
            print(tokenizer.decode(tokens)[len(before):], end="", flush=True)
        print()
        return
    for prompt, completion in zip(prompts, sampler.generate(encoded, sampling)):
        print(f"{prompt}{tokenizer.decode(completion)}\n---", flush=True)


if __name__ == "__main__":
    app.run(main)
