"""Prompts for the load generator: random common words, or token ids as vLLM's benchmark makes.

Owns ``random_prompts`` and its word list. Sending the prompts is ``bench``'s job; it re-exports
``random_prompts`` as ``nbserve.load.bench.random_prompts``.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["random_prompts"]

# Common English words: a random prompt of N words is about N tokens for most BPE tokenizers
# (some words split in two). Pass a tokenizer for exact lengths.
_WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give "
    "our under name very through just form sentence great think say help low line differ turn "
    "cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such"
).split()


def random_prompts(
    count: int, input_len: int, *, seed: int = 0, tokenizer: str | None = None
) -> list[str]:
    """``count`` random prompts of about ``input_len`` tokens each.

    Without a tokenizer a prompt is ``input_len`` random common English words (``input_len`` to
    ``2 * input_len`` tokens for most BPE tokenizers; ``BenchRun.input_tokens`` says what the
    server counted). With ``tokenizer`` (a folder or file holding a ``tokenizer.json``) prompts
    are made as ``vllm bench serve``'s random dataset makes them: ``input_len`` consecutive
    non-special token ids from a random offset, decoded, re-encoded and cut or padded until the
    text is ``input_len`` tokens (a few tries; rarely one off).

    Example:
        >>> len(random_prompts(2, 8, seed=1)[0].split())
        8
    """
    rng = random.Random(seed)
    if tokenizer is None:
        return [" ".join(rng.choice(_WORDS) for _ in range(input_len)) for _ in range(count)]
    from tokenizers import Tokenizer

    path = Path(tokenizer)
    tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    vocab = tok.get_vocab(with_added_tokens=True)
    allowed = sorted(i for t, i in vocab.items() if t not in specials)
    prompts = []
    for _ in range(count):
        offset = rng.randrange(len(allowed))
        ids = [allowed[(offset + k) % len(allowed)] for k in range(input_len)]
        for _ in range(10):
            text = tok.decode(ids)
            ids = tok.encode(text, add_special_tokens=False).ids
            if len(ids) == input_len:
                break
            ids = (
                ids[:input_len]
                if len(ids) > input_len
                else ids + [rng.choice(allowed) for _ in range(input_len - len(ids))]
            )
        prompts.append(text)
    return prompts
