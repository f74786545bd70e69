"""One frozen dataclass per `dpokit label` subcommand: help, YAML keys and flags come from the fields, as for every
other command (dpokit.config.add_arguments / config_from_args)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from ..command_config import output, positional
from ..config import opt
from ..errors import UserError

PROJECT_HELP = "project folder (label.db, secret, project.yaml)"
DB_HELP = ("database URL: sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE (default: the one "
           "`init` recorded, else PROJECT/label.db)")
POLICIES = ("majority", "unanimous", "all")


@dataclass(frozen=True)
class LabelInitConfig:
    NOT_FLAGS: ClassVar[tuple[str, ...]] = ("model",)  # --model repeats: added by cli.add_label_parsers

    project: Optional[str] = positional("project folder to create")
    prompts: Optional[str] = opt(None, "prompts to generate candidates for (.jsonl/.json/.csv/.parquet with a `prompt` "
                                       "field, text or chat messages, or .txt one per line); with --model")
    model: Optional[str] = opt(None, "model that writes candidates (HF folder, adapter, run folder or .gguf); repeat "
                                     "--model for several (YAML: a list)", listing=True)
    samples_per_model: int = opt(2, "K: responses each model writes per prompt")
    seed: int = opt(0, "seed of the first sample; sample k of every model uses seed + k")
    temperature: float = opt(0.8, "sampling temperature (0: greedy, so K identical samples)")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    max_new_tokens: int = opt(256, "tokens sampled at most per response")
    batch_size: int = opt(8, "prompts per generate call")
    responses: Optional[str] = opt(None, "import candidates instead: JSONL rows {prompt, completion, model?} (what "
                                         "`dpokit generate` writes; rows of one prompt are grouped) or {prompt, "
                                         "responses: [...]}")
    db: Optional[str] = opt(None, "database URL: sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
                                  "(kept in PROJECT/project.yaml, mode 0600; default: PROJECT/label.db)")
    name: Optional[str] = opt(None, "project name, in exported origins (default: the folder's name)")
    overlap: int = opt(2, "k: annotators who judge each comparison")
    guidelines: Optional[str] = opt(None, "Markdown file of guidelines shown to annotators (the admin can edit them)")
    ranking: bool = opt(False, "one ranking of all of a prompt's responses (default: pairs of them)")
    max_pairs_per_prompt: int = opt(6, "pairs: every pair of a prompt's responses up to this many, else a seeded "
                                       "choice of this many that shows every response")

    def __post_init__(self):
        def bad(key: str, why: str):
            raise UserError(f"config: {key}: {why}")

        if (self.responses is None) == (self.prompts is None):
            bad("responses", "give either --responses FILE (import) or --prompts FILE with --model DIR (generate)")
        if self.prompts is not None and not self.model:
            bad("model", "--prompts needs at least one --model to write the candidates")
        if self.responses is not None and self.model:
            bad("model", "--responses imports candidates; --model generates them: drop one")
        for key in ("samples_per_model", "max_new_tokens", "batch_size", "overlap"):
            if getattr(self, key) < 1:
                bad(key, f"must be at least 1, got {getattr(self, key)}")
        if self.max_pairs_per_prompt < 1:
            bad("max_pairs_per_prompt", f"must be at least 1, got {self.max_pairs_per_prompt}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            bad("temperature", "need temperature ≥ 0 and 0 < top-p ≤ 1")

    @property
    def models(self) -> list[str]:
        return [m for m in (self.model or "").split(",") if m]


@dataclass(frozen=True)
class LabelAddUserConfig:
    project: Optional[str] = positional(PROJECT_HELP)
    name: Optional[str] = positional("annotator name (their log-in)")
    admin: bool = opt(False, "may open the admin page (progress, agreement, export, guidelines)")
    password_file: Optional[str] = opt(None, "read the password from this file's first line (default: typed twice; "
                                             "when stdin is no terminal, one is generated and printed once)")
    db: Optional[str] = opt(None, DB_HELP)


@dataclass(frozen=True)
class LabelServeConfig:
    project: Optional[str] = positional(PROJECT_HELP)
    host: str = opt("127.0.0.1", "address to listen on (default: this machine only; 0.0.0.0 for the network)")
    port: int = opt(8765, "port to listen on")
    db: Optional[str] = opt(None, DB_HELP)


@dataclass(frozen=True)
class LabelExportConfig:
    project: Optional[str] = positional(PROJECT_HELP)
    output: Optional[str] = output("pairs JSONL to write (never overwritten without --overwrite)", required=True)
    policy: str = opt("majority", "majority: the comparison's most-voted answer (a tied vote is dropped); unanimous: "
                                  "only when every annotator agrees; all: every judgment its own row",
                      choices=POLICIES)
    min_annotators: int = opt(1, "drop comparisons with fewer judgments (skips not counted)")
    all_pairs: bool = opt(False, "a ranking gives every pair of its answers (default: best vs worst)")
    overwrite: bool = opt(False, "replace an existing --output")
    db: Optional[str] = opt(None, DB_HELP)

    def __post_init__(self):
        if self.min_annotators < 1:
            raise UserError(f"config: min_annotators: must be at least 1, got {self.min_annotators}")
