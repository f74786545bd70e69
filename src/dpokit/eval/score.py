"""Rank candidate responses by the implicit reward β · (log π(y|x) − log π_ref(y|x)): a DPO policy read as a reward
model (Rafailov et al. 2023). `dpokit score`.

Candidates are tokenized exactly as training tokenizes a pair's answers (data/tokenize: a text prompt is plain text
and the answer ends with EOS; chat messages go through the chat template) and scored with the same log-prob code.
"""
from __future__ import annotations

from pathlib import Path

from ..data.collate import collate_shared
from ..data.tokenize import tokenize_pairs
from ..errors import DataError, UserError
from ..generate import check_prompt
from ..types import PreferencePair
from .files import load_models, resolve_models, write_jsonl
from .preference import pair_logps, setting, uses_chat_template

CANDIDATE_FIELDS = ("candidate", "response", "completion", "text")


def read_candidates(path: str) -> list[tuple[str, str]]:
    """(origin, text) per candidate: a .txt file has one per non-blank line; JSONL/JSON/CSV rows are strings or
    objects with a candidate, response, completion or text field."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        try:
            lines = p.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: invalid UTF-8; save the file as UTF-8") from None
        out = [(f"{p.name}:{i + 1}", line) for i, line in enumerate(lines) if line.strip()]
    else:
        from ..data.io import read_records

        out = []
        for record in read_records(p):
            value = record.value
            if isinstance(value, dict):
                value = next((value[k] for k in CANDIDATE_FIELDS if k in value), None)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{record.origin}: expected a non-empty string or an object with one of the fields "
                                f"{', '.join(CANDIDATE_FIELDS)}")
            out.append((record.origin, value))
    if not out:
        raise DataError(f"{path}: no candidates")
    return out


def read_candidate_rows(path: str) -> list[tuple[str, object, list[str]]]:
    """(origin, prompt, candidates) per row of a file with `prompt` and `candidates` (a list of strings) fields."""
    from ..data.io import read_records

    rows = []
    for record in read_records(Path(path)):
        value = record.value if isinstance(record.value, dict) else {}
        prompt = check_prompt(value.get("prompt"), record.origin)
        candidates = value.get("candidates")
        if not (isinstance(candidates, list) and candidates and all(isinstance(c, str) and c.strip()
                                                                     for c in candidates)):
            raise DataError(f"{record.origin}: field 'candidates' must be a non-empty list of non-empty strings")
        rows.append((record.origin, prompt, candidates))
    return rows


def rank(policy, reference, tokenizer, prompt, candidates: list[tuple[str, str]], *, beta: float, max_length: int,
         max_prompt_length: int | None, chat: bool, batch_size: int = 8) -> list[dict]:
    """Rows sorted best first: reward, log π, log π_ref, tokens. Each candidate is scored on its own (a pair whose
    chosen and rejected are both the candidate), so its score never depends on the others."""
    prompt = prompt if isinstance(prompt, str) else tuple(dict(m) for m in prompt)
    pairs = [PreferencePair(prompt, text, text, origin) for origin, text in candidates]
    tokenized = tokenize_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length,
                               skip_invalid=False, chat=chat).pairs
    pad = tokenizer.pad_token_id
    policy_lp = pair_logps(policy, tokenized, collate_shared, pad, batch_size)
    reference_lp = policy_lp if reference is policy else pair_logps(reference, tokenized, collate_shared, pad,
                                                                    batch_size)
    rows = [{"origin": origin, "prompt": list(prompt) if not isinstance(prompt, str) else prompt, "candidate": text,
             "reward": beta * float(policy_lp.chosen[i] - reference_lp.chosen[i]),
             "logps": float(policy_lp.chosen[i]), "reference_logps": float(reference_lp.chosen[i]),
             "tokens": int(policy_lp.chosen_tokens[i]), "truncated": tokenized[i].truncated}
            for i, (origin, text) in enumerate(candidates)]
    rows.sort(key=lambda r: -r["reward"])  # stable: equal rewards keep file order
    for i, row in enumerate(rows):
        row["rank"] = i + 1
    return rows


def format_ranking(rows: list[dict]) -> str:
    prompt = rows[0]["prompt"]
    shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    lines = [f"prompt: {' '.join(shown.split())[:90]}", f"  {'rank':>4}  {'reward':>9}  {'Δ log-prob':>10}  candidate"]
    for r in rows:
        text = " ".join(r["candidate"].split())
        lines.append(f"  {r['rank']:>4}  {r['reward']:>9.4f}  {r['logps'] - r['reference_logps']:>10.3f}  "
                     f"{text[:70] + ('…' if len(text) > 70 else '')}")
    return "\n".join(lines)


def score_command(args) -> int:
    if (args.candidates is None) == (args.candidates_jsonl is None):
        raise UserError("give --candidates FILE (with --prompt TEXT) or --candidates-jsonl FILE (rows with prompt and "
                        "candidates)")
    if args.candidates is not None and args.prompt is None:
        raise UserError("--candidates needs --prompt TEXT (or use --candidates-jsonl with a prompt per row)")
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    if args.candidates is not None:
        groups = [(args.prompt, read_candidates(args.candidates))]
    else:
        groups = [(prompt, [(f"{origin} candidates[{i}]", c) for i, c in enumerate(candidates)])
                  for origin, prompt, candidates in read_candidate_rows(args.candidates_jsonl)]
    models = resolve_models(args.model, args.ref, allow_pickle=args.allow_pickle)
    beta = setting(args.beta, models.run_config, "beta", 0.1)
    if beta <= 0:
        raise UserError(f"--beta must be > 0, got {beta}")
    policy, reference, tokenizer = load_models(models, dtype=args.dtype, allow_pickle=args.allow_pickle)
    rows = []
    for prompt, candidates in groups:
        ranked = rank(policy, reference, tokenizer, prompt, candidates, beta=beta, max_length=args.max_length,
                      max_prompt_length=args.max_prompt_length, batch_size=args.batch_size,
                      chat=uses_chat_template(args))
        print(format_ranking(ranked))
        rows += ranked
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    print(f"dpokit score: {len(rows)} candidates ranked by β·(log π − log π_ref), β = {beta}; rows in {out}")
    return 0
