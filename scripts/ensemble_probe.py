"""Probe (docs/experiments.md, issue 18): decode a cv soup's fold with its 3 seed models as
one ensemble, each step's next-token log-probabilities averaged over them, instead of their
weights' mean. Not a feature: the soup did as well at a third of the decoding time (tiny.en,
and base in "Next to try" 21).

    python scripts/ensemble_probe.py FOLD [BEAM] [THREADS] [CV_NAME] [--members RUN ...]
        [--mean probs]
    python scripts/ensemble_probe.py 1 5 1 cv-soup   # after kidwhisper cv ... output.name=cv-soup
    python scripts/ensemble_probe.py 1 5 1 cv-base-lgs0 --mean probs \
        --members cv-base-lgs0-cv-fold{fold} cv-base-lgs1-cv-fold{fold} cv-base-lgs2-cv-fold{fold}

It reads checkpoints/<CV_NAME>-cv-fold<FOLD>-seed{0,1,2}/final (or, with --members, the
named runs' checkpoints/<RUN>/final, `{fold}` filled in) and CV_NAME's held-out manifest of
the fold, prints the WER as JSON and writes the predictions to ensemble-f<FOLD>.jsonl.
`--mean probs` averages the members' probabilities instead of their log-probabilities.
"""

from __future__ import annotations

import argparse
import json
import math
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
        logprobs = torch.stack([s.logits(inputs).log_softmax(-1) for s in self.states])
        if MEAN == "probs":  # log of the mean probability: already normalised
            return torch.logsumexp(logprobs, dim=0) - math.log(len(self.states))
        return logprobs.mean(0)

    def select(self, rows: list[int]) -> None:
        for state in self.states:
            state.select(rows)

    @property
    def clips(self) -> list[int]:
        return self.states[0].clips


SingleState = decoding.DecoderState
MODELS: list = []  # the ensemble's models, loaded by main
MEAN = "logprobs"  # what the ensemble averages: set by main


def main(argv: list[str]) -> None:
    global MEAN
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold", type=int)
    parser.add_argument("beam", type=int, nargs="?", default=5)
    parser.add_argument("threads", type=int, nargs="?", default=1)
    parser.add_argument("name", nargs="?", default="cv-soup")
    parser.add_argument("--members", nargs="+", help="run names with {fold}")
    parser.add_argument("--mean", choices=["logprobs", "probs"], default="logprobs")
    args = parser.parse_args(argv)
    fold, beam, name, MEAN = args.fold, args.beam, args.name, args.mean
    torch.set_num_threads(args.threads)
    runs = args.members or [f"{name}-cv-fold{{fold}}-seed{s}" for s in (0, 1, 2)]
    MODELS[:] = [load_model(f"checkpoints/{run.format(fold=fold)}/final") for run in runs]
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
