"""`dpokit label init`: a new project's prompts, candidate responses and comparisons.

Candidates are imported (rows {prompt, completion, model?} as `dpokit generate` writes them, grouped by prompt, or
{prompt, responses: [...]}) or generated here by one or more local models, K samples each (sample k uses seed + k;
settings, seed and whether EOS was reached are stored per response). Each prompt's distinct responses become pairs
(all of them up to --max-pairs-per-prompt, else a seeded choice that shows every response) or, with --ranking, one
ranking. Bad input fails before anything is written, as one line naming file, line and field.
"""
from __future__ import annotations

import itertools
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..data.io import read_records
from ..errors import DataError, UserError
from ..generate import check_prompt, read_prompts
from . import store
from .config import LabelInitConfig

SHAPES = "rows {prompt, completion, model?} (dpokit generate's output) or {prompt, responses: [...]}"


@dataclass(frozen=True)
class Candidate:
    """One response to a prompt, with where it came from."""

    text: str
    model: str | None = None
    settings: dict | None = None
    seed: int | None = None
    truncated: bool = False
    source: str | None = None


@dataclass
class PromptCandidates:
    prompt: str | list
    source: str  # the file line (or prompts-file line) it was first read from
    responses: list[Candidate] = field(default_factory=list)


# ---- importing ----------------------------------------------------------------------------------------------------

def read_responses(path) -> list[PromptCandidates]:
    """The candidates of an import file, grouped by prompt in first-seen order."""
    groups: dict[str, PromptCandidates] = {}
    for record in read_records(path):
        value, origin = record.value, record.origin
        if not isinstance(value, dict):
            raise DataError(f"{origin}: expected an object; give {SHAPES}")
        prompt = check_prompt(value.get("prompt"), origin)
        model = value.get("model")
        if model is not None and not isinstance(model, str):
            raise DataError(f"{origin}: field 'model' must be a string (the model's name or path), got {_kind(model)}")
        if "responses" in value:
            made = _listed(value["responses"], model, origin)
        elif "completion" in value:
            if not isinstance(value["completion"], str):
                raise DataError(f"{origin}: field 'completion' must be a string, got {_kind(value['completion'])}")
            made = [Candidate(value["completion"], model, source=origin)]
        else:
            raise DataError(f"{origin}: no field 'completion' or 'responses'; give {SHAPES}")
        key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        groups.setdefault(key, PromptCandidates(prompt, origin)).responses.extend(made)
    for group in groups.values():
        if len(group.responses) < 2:
            raise DataError(f"{group.source}: field 'prompt' has only 1 response in the file; a comparison needs at "
                            "least 2 (rows of the same prompt are grouped)")
    return list(groups.values())


def _listed(responses, model: str | None, origin: str) -> list[Candidate]:
    if not isinstance(responses, list) or not responses:
        raise DataError(f"{origin}: field 'responses' must be a non-empty list of strings (or {{\"text\", \"model\"}} "
                        f"objects), got {_kind(responses)}")
    made = []
    for i, item in enumerate(responses):
        where = f"{origin}: field 'responses[{i}]'"
        if isinstance(item, str):
            made.append(Candidate(item, model, source=origin))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            if item.get("model") is not None and not isinstance(item["model"], str):
                raise DataError(f"{where}.model must be a string, got {_kind(item['model'])}")
            made.append(Candidate(item["text"], item.get("model", model), source=origin))
        else:
            raise DataError(f"{where} must be a string or an object with a string 'text', got {_kind(item)}")
    return made


def _kind(value) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


# ---- generating ---------------------------------------------------------------------------------------------------

def generate_candidates(config: LabelInitConfig) -> list[PromptCandidates]:
    """K samples per prompt from each --model, one model in memory at a time."""
    from ..generate import eos_ids, generate
    from ..models import load_for_generation, trained_verbatim

    rows = read_prompts(config.prompts)  # bad prompts fail before any weights load
    groups = [PromptCandidates(prompt, f"{Path(config.prompts).name}:{i + 1}") for i, (_, prompt) in enumerate(rows)]
    prompts = [prompt for _, prompt in rows]
    for spec in config.models:
        template = not trained_verbatim(spec)  # a run that trained text verbatim is sampled so, as generate does
        settings = {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
                    "batch_size": config.batch_size, "chat_template": template}
        model, tokenizer = load_for_generation(spec)
        stops = eos_ids(model, tokenizer)
        for k in range(config.samples_per_model):
            seed = config.seed + k
            print(f"dpokit: {spec}: sample {k + 1}/{config.samples_per_model} of {len(prompts)} prompts (seed {seed})",
                  file=sys.stderr, flush=True)
            sampled = generate(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature, top_p=config.top_p, seed=seed,
                               batch_size=config.batch_size, template=template, progress=True, return_ids=True)
            for group, s in zip(groups, sampled):
                ended = bool(s.completion_ids) and s.completion_ids[-1] in stops
                group.responses.append(Candidate(s.text, spec, settings, seed, truncated=not ended))
        del model, tokenizer
    return groups


# ---- comparisons --------------------------------------------------------------------------------------------------

def plan_comparisons(texts: list[str], *, ranking: bool, max_pairs: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Which of a prompt's responses are compared: tuples of indices into `texts`, identical texts compared once.

    plan_comparisons(["a", "b", "a"], ranking=False, max_pairs=6, rng) → [(0, 1)]
    With more distinct answers than `max_pairs` allows in pairs, a ring (a shuffled order, each next to the next)
    shows every answer (when there are at most `max_pairs` of them), and seeded random pairs fill the rest."""
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    distinct = sorted(first.values())
    if len(distinct) < 2:
        return []
    if ranking and len(distinct) > 2:
        return [tuple(distinct)]
    pairs = list(itertools.combinations(distinct, 2))
    if len(pairs) <= max_pairs:
        return pairs
    ring = distinct[:]
    rng.shuffle(ring)
    chosen = {tuple(sorted((ring[i], ring[(i + 1) % len(ring)]))) for i in range(len(ring))}
    chosen = set(sorted(chosen)[:max_pairs]) if len(chosen) > max_pairs else chosen
    rest = [p for p in pairs if p not in chosen]
    rng.shuffle(rest)
    return sorted(chosen | set(rest[:max_pairs - len(chosen)]))


# ---- the command --------------------------------------------------------------------------------------------------

def init_project(config: LabelInitConfig) -> dict:
    """Create the project and fill it; returns counts for the summary line."""
    folder = Path(config.project)
    if (folder / store.SECRET_FILE).exists():
        raise UserError(f"{folder} already holds a labeling project; choose another folder")
    guidelines = _read_guidelines(config.guidelines)
    groups = read_responses(config.responses) if config.responses else generate_candidates(config)
    project = store.open_project(folder, db=config.db, create=True)
    try:
        counts = fill(project, groups, ranking=config.ranking, max_pairs=config.max_pairs_per_prompt, seed=config.seed)
        for key, value in (("name", config.name or folder.resolve().name), ("overlap", config.overlap),
                           ("guidelines", guidelines)):
            store.set_setting(project, key, value)
    finally:
        project.close()
    return counts


def _read_guidelines(path: str | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--guidelines {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--guidelines {path}: cannot read ({e})") from None


def fill(project, groups: list[PromptCandidates], *, ranking: bool = False, max_pairs: int = 6, seed: int = 0) -> dict:
    """Store prompts, responses and their comparisons in one transaction."""
    with project.session(lock=True) as session:
        return store_candidates(session, groups, ranking=ranking, max_pairs=max_pairs, rng=random.Random(seed))


def store_candidates(session, groups: list[PromptCandidates], *, ranking: bool, max_pairs: int,
                     rng: random.Random) -> dict:
    """Add prompts, responses and their comparisons within the caller's transaction; returns the counts."""
    counts = {"prompts": 0, "responses": 0, "comparisons": 0, "uncompared_prompts": 0, "truncated": 0}
    for group in groups:
        conversation = not isinstance(group.prompt, str)
        prompt = store.Prompt(text=None if conversation else group.prompt, source=group.source,
                              messages_json=json.dumps(group.prompt, ensure_ascii=False) if conversation else None)
        session.add(prompt)
        session.flush()
        rows = [store.Response(prompt_id=prompt.id, text=c.text, model=c.model, seed=c.seed, truncated=c.truncated,
                               settings_json=None if c.settings is None else json.dumps(c.settings),
                               source=c.source) for c in group.responses]
        session.add_all(rows)
        session.flush()
        planned = plan_comparisons([c.text for c in group.responses], ranking=ranking, max_pairs=max_pairs, rng=rng)
        for members in planned:
            comparison = store.Comparison(prompt_id=prompt.id, kind="rank" if len(members) > 2 else "pair")
            session.add(comparison)
            session.flush()
            session.add_all(store.ComparisonResponse(comparison_id=comparison.id, position=i,
                                                     response_id=rows[m].id) for i, m in enumerate(members))
        counts["prompts"] += 1
        counts["responses"] += len(rows)
        counts["comparisons"] += len(planned)
        counts["uncompared_prompts"] += not planned
        counts["truncated"] += sum(c.truncated for c in group.responses)
    return counts
