"""`human:PROJECT`: people judge a round's samples in a `dpokit label` project, and their choices are the pairs.

A round's samples go into PROJECT once (label/batches.py, keyed by the run and the round): two distinct answers of a
prompt make a pair comparison, more make one ranking. The round then waits (iterate stops, exit code 4) until every
one of its comparisons has the project's overlap of judgments; on --resume they become pairs by `dpokit label
export`'s majority policy (export.py, not a copy of it): a pair's chosen answer is the one most annotators picked
(an edit replaces it); ties, both-bad, skips and split votes are dropped and counted. A ranking gives its best vs its
worst (Borda) or, with --pairing all-pairs, every pair the majority decides. People give choices, not scores, so the
pairs come straight from them: no scores, no --min-gap. A cut-off answer (no EOS) that wins is dropped unless
--allow-truncated-chosen, as for any judge.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

KEY_FILE = "label-key"  # in the run folder: this run's part of every batch key


class JudgmentsPending(Exception):
    """The round's comparisons are not all judged yet: iterate stops and says so (not an error)."""

    def __init__(self, line: str, waiting: int):
        super().__init__(line)
        self.line, self.waiting = line, waiting


@dataclass
class HumanJudge:
    folder: str  # the label project
    name: str

    @classmethod
    def open(cls, folder: str, spec: str) -> "HumanJudge":
        """Checked now, so a wrong path fails before any model loads."""
        from ..label.store import open_project

        if not folder:
            raise UserError(f"judge {spec!r}: expected human:PROJECT, a folder made by `dpokit label init`")
        open_project(folder).close()
        return cls(folder, spec)

    def __call__(self, samples):
        raise UserError(f"judge {self.name}: people judge a round at a time, through `dpokit label`; only `dpokit "
                        "iterate` (without --online) takes a human judge")

    def round_pairs(self, rows: list[dict], run_dir: Path, round_index: int, config) -> tuple[list[dict], dict]:
        """The round's pairs and what was dropped by reason; JudgmentsPending until every comparison is judged."""
        from ..label.batches import add_batch, batch_comparisons, waiting
        from ..label.export import DROPS, export_rows
        from ..label.store import open_project, overlap

        key = f"iterate:{run_key(run_dir)}:round-{round_index}"
        project = open_project(self.folder)
        try:
            added = add_batch(project, candidates(rows, config), key, seed=config.seed + round_index)
            comparisons = batch_comparisons(project, key)
            left = waiting(project, comparisons)
            if left:
                raise JudgmentsPending(
                    f"dpokit iterate: round {round_index}: {left} of {len(comparisons)} comparisons wait for "
                    f"{overlap(project)} judgments each in {self.folder}{' (just added)' if added else ''}; judge "
                    f"them with `dpokit label serve {self.folder}`, then run `dpokit iterate ... --resume`", left)
            # --pairing is best-vs-worst or all-pairs here (config), which are export's own names for a ranking
            exported, counts = export_rows(project, policy="majority", ranking=config.pairing, only=set(comparisons))
        finally:
            project.close()
        dropped = {k: counts[k] for k in DROPS if counts.get(k)}
        empty = sum(not r["response"].strip() for r in rows)
        if empty:
            dropped["empty"] = dropped.get("empty", 0) + empty
        pairs = []
        for row in exported:
            cut_off = comparisons[comparison_id(row["origin"])].get(text_of(row["chosen"]), False)
            if cut_off and not config.allow_truncated_chosen:
                dropped["truncated_chosen"] = dropped.get("truncated_chosen", 0) + 1
                continue
            pairs.append({**row, "origin": f"round-{round_index}:{row['origin']}"})
        return pairs, dropped


def candidates(rows: list[dict], config) -> list:
    """The round's samples as label candidates, one group per prompt; empty answers are not shown to anyone."""
    from ..label.candidates import Candidate, PromptCandidates

    settings = {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens}
    groups: dict[int, PromptCandidates] = {}
    for row in rows:
        p = row["prompt_index"]
        group = groups.setdefault(p, PromptCandidates(row["prompt"], f"prompt-{p}"))
        if row["response"].strip():
            group.responses.append(Candidate(row["response"], config.model, settings, row["seed"],
                                             truncated=not row["ended"], source=f"prompt-{p}:sample-{row['sample']}"))
    return list(groups.values())


def run_key(run_dir: Path) -> str:
    """This run's random id, made once (a folder replaced with --overwrite gets a new one, so its rounds are new)."""
    path = Path(run_dir) / KEY_FILE
    if not path.is_file():
        path.write_text(secrets.token_hex(8) + "\n", encoding="utf-8")
    return path.read_text(encoding="utf-8").strip()


def comparison_id(origin: str) -> int:
    """export's origin is 'label:PROJECT:comparison=ID'."""
    return int(origin.rsplit("comparison=", 1)[1].split(":")[0])


def text_of(answer) -> str:
    """An exported answer: text, or (conversational rows) one assistant message."""
    return answer if isinstance(answer, str) else answer[-1]["content"]
