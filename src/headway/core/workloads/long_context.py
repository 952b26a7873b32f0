"""`long-context`: questions about a few large documents shared by many sessions.

Shape: `num_documents` documents of `document_tokens` tokens each (seeded; a length
distribution draws each document's length once). Each session is one call [user:
document + question] with the document picked uniformly by the seed, the question fresh
(`question_tokens`), max_tokens from `output_tokens`. Calls about the same document share
everything up to the question. Lengths are content tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from headway.core.workloads.params import ParamReader
from headway.core.workloads.text import TextFactory, tag_code
from headway.core.workloads.types import Session, Stage


class LongContextWorkload:
    """Many questions over a few long shared documents."""

    name = "long-context"

    def __init__(self, factory: TextFactory, params: Mapping[str, object]) -> None:
        p = ParamReader(self.name, params)
        self.num_documents = p.integer("num_documents", 4, minimum=1)
        self.document_tokens = p.length("document_tokens", 16384)
        self.question_tokens = p.length("question_tokens", 64)
        self.output_tokens = p.length("output_tokens", 128)
        p.finish()
        self.factory = factory

    def params(self) -> Mapping[str, object]:
        return {
            "num_documents": self.num_documents,
            "document_tokens": self.document_tokens.as_dict(),
            "question_tokens": self.question_tokens.as_dict(),
            "output_tokens": self.output_tokens.as_dict(),
        }

    def document(self, doc: int, seed: int) -> tuple[str, int]:
        """Text and token count of document `doc` (its length drawn from its own seed)."""
        n = self.document_tokens.sample(
            np.random.default_rng([seed, tag_code("long-context/length"), doc])
        )
        return self.factory.shared_text(n, seed, "long-context/document", doc), n

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        f = self.factory
        for i in range(num_sessions):
            rng = np.random.default_rng([seed, tag_code(self.name), i])
            doc = int(rng.integers(0, self.num_documents))
            text, n_doc = self.document(doc, seed)
            n_q = self.question_tokens.sample(rng)
            # Pool words concatenate additively, so document + question has n_doc + n_q tokens.
            ctx = f.extend(f.start(), "user", text + f.text(rng, n_q), n_doc + n_q)
            sid = f"s{i}"
            call = f.call(f"{sid}/c0", ctx, self.output_tokens.sample(rng))
            yield Session(sid, (Stage(0.0, (call,)),))
