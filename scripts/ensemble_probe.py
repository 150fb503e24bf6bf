"""Probe (docs/experiments.md, issue 18): decode a cv soup's fold with its 3 seed models as
one ensemble, each step's next-token log-probabilities averaged over them, instead of their
weights' mean. Not a feature: the soup did as well at a third of the decoding time.

    python scripts/ensemble_probe.py FOLD [BEAM] [THREADS] [CV_NAME]
    python scripts/ensemble_probe.py 1 5 1 cv-soup   # after kidwhisper cv ... output.name=cv-soup

It reads checkpoints/<CV_NAME>-cv-fold<FOLD>-seed{0,1,2}/final and the fold's held-out
manifest, prints the WER as JSON and writes the predictions to ensemble-f<FOLD>.jsonl.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from kidwhisper.data.dataset import load_utterances
from kidwhisper.inference import decoding
from kidwhisper.inference.decoding import DecodingOptions
from kidwhisper.inference.evaluation import evaluate, save_predictions
from kidwhisper.models.factory import load_model


class EnsembleState:
    """A `decoding.DecoderState` over several models: the same rows in each, their
    log-softmaxed logits averaged (the beam search renormalises them)."""

    def __init__(self, model, features, special, options) -> None:
        self.states = [SingleState(wm.model, features, special, options) for wm in MODELS]

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([s.logits(inputs).log_softmax(-1) for s in self.states]).mean(0)

    def select(self, rows: list[int]) -> None:
        for state in self.states:
            state.select(rows)

    @property
    def clips(self) -> list[int]:
        return self.states[0].clips


SingleState = decoding.DecoderState
MODELS: list = []  # the ensemble's models, loaded by main


def main(argv: list[str]) -> None:
    fold = int(argv[0])
    beam = int(argv[1]) if len(argv) > 1 else 5
    torch.set_num_threads(int(argv[2]) if len(argv) > 2 else 1)
    name = argv[3] if len(argv) > 3 else "cv-soup"
    root = f"checkpoints/{name}-cv-fold{fold}"
    MODELS[:] = [load_model(f"{root}-seed{s}/final") for s in (0, 1, 2)]
    decoding.DecoderState = EnsembleState  # greedy and beam search build their state here
    heldout = f"experiments/{name}-cv/folds/fold_{fold}/heldout.jsonl"
    utterances = load_utterances([heldout], None)
    start = time.perf_counter()
    options = DecodingOptions(max_new_tokens=64, beam_size=beam)  # kids_recommended's
    result = evaluate(MODELS[0], utterances, 16, options)
    summary = result.summary()
    print(json.dumps({"fold": fold, "beam": beam, "wer": summary["wer"],
                      "by_age": summary.get("wer_by_age"),
                      "seconds": time.perf_counter() - start}))  # fmt: skip
    save_predictions(result, f"ensemble-f{fold}.jsonl")


if __name__ == "__main__":
    main(sys.argv[1:])
