"""Train the project's shipped byte-level BPE tokenizer.

    .venv/bin/python scripts/train_tokenizer.py [--vocab-size 4096] [--out PATH]

The corpus is generated here from a seed (sentences over a fixed word list, numbers,
code-like lines and punctuation), so the result is reproducible and owes nothing to a
downloaded data set. Special tokens follow Llama-3's chat markers.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from headway.core.tokenizer import SPECIAL_TOKENS

WORDS = """
the of and to in a is that for it as was with be by on not he this are or his from at
which but have an they you were her she there been one all we their has would when if
so no will more can out up who into do time about than them only other new some could
these two may first then any like now my such make over our even most after also made
many before must through back years where much your way well down should because each
just those people how too little state good very world still own see men work long get
here between both life being under never day same another know while last might us
great old year off come since against go came right used take three states himself few
house use during without again place around however home small found thought went say
part once general high upon school every does got united left number course war until
always away something fact though water less public put think almost hand enough far
took head yet government system better set told nothing night end why called didn't eyes
find going look asked later knew point next program city business give group toward young
days let room president side social given present several order national possible rather
second face per among form important often things looking early white case john become
large big need four within felt along children saw best church ever least power development
light thing seemed family interest want members mind country area others done turned
although open problem hours model engine cache token request latency throughput gateway
router prefix block memory batch decode prefill replica cluster kernel tensor parallel
expert attention layer weight queue stream client server session agent tool answer
question system prompt context window budget capacity metric benchmark percentile
""".split()  # noqa: SIM905 - a word list reads better as text


def generate_corpus(seed: int, num_lines: int) -> list[str]:
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(num_lines):
        kind = i % 10
        if kind < 7:
            n = rng.randint(5, 25)
            words = [rng.choice(WORDS) for _ in range(n)]
            words[0] = words[0].capitalize()
            punct = rng.choice([".", ".", ".", "?", "!", ";", ":"])
            lines.append(" ".join(words) + punct)
        elif kind == 7:
            nums = [str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(rng.randint(3, 10))]
            lines.append(", ".join(nums) + f" ({rng.random():.3f}%)")
        elif kind == 8:
            a, b = rng.choice(WORDS), rng.choice(WORDS)
            lines.append(f"def {a}_{b}(x, y={rng.randint(0, 99)}):\n    return x.{b}[{a!r}]")
        else:
            lines.append(
                '{"' + rng.choice(WORDS) + '": [' + str(rng.randint(0, 999)) + ", null, true]}"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--num-lines", type=int, default=200_000)
    default_out = Path(__file__).resolve().parents[1] / "src/headway/resources/data/tokenizer.json"
    ap.add_argument("--out", type=Path, default=default_out)
    args = ap.parse_args()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(generate_corpus(args.seed, args.num_lines), trainer=trainer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"wrote {args.out} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
