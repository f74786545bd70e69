"""Who judges what: handing out comparisons, recording judgments, undoing the last one.

Every comparison goes to `overlap` annotators (k, a project setting); nobody gets the same comparison twice. An
annotator's next task is their own open assignment if they have one (the one they last undid first), else a new
assignment on the comparison with the most assignments still under k (so comparisons fill up and can be compared
between annotators), lowest id first. The left/right (top/bottom) order is drawn per assignment and recorded.

Races: every check-then-write runs in a locked transaction (store.Project.session(lock=True): BEGIN IMMEDIATE on
SQLite; on PostgreSQL the annotator's row and the comparison's row are locked FOR UPDATE and the count re-read after
the lock), and UNIQUE(comparison, annotator) plus the one-live-judgment index are the last line of defence.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ..errors import UserError
from . import store
from .store import Assignment, Comparison, ComparisonResponse, Judgment, Response

CHOICES = ("left", "right", "tie", "both_bad", "skip", "rank")
STRENGTHS = ("slight", "much")
PAIR_CHOICES = ("left", "right", "tie", "both_bad", "skip")
RANK_CHOICES = ("rank", "both_bad", "skip")
MAX_TEXT = 100_000  # characters of a reason or an edit
CANDIDATES = 20  # comparisons read (then locked one by one) per batch


class TaskError(UserError):
    """A judgment the store refuses: not the annotator's assignment, already judged, or a malformed choice."""


@dataclass(frozen=True)
class Shown:
    response_id: int
    text: str


@dataclass(frozen=True)
class Task:
    assignment_id: int
    comparison_id: int
    kind: str  # 'pair' | 'rank'
    prompt_text: Optional[str]
    prompt_messages: Optional[list]  # [{role, content}, ...] for a conversation
    responses: tuple[Shown, ...]  # in display order: left, right (or top to bottom)
    done: int  # the annotator's live judgments
    total: int  # done + what is still open to them


def next_task(project, annotator_id: int) -> Task | None:
    """The annotator's current task, or None when nothing is left for them."""
    overlap = store.overlap(project)
    for _ in range(3):  # an IntegrityError means another writer won a race we could not lock against: look again
        try:
            with project.session(lock=True) as session:
                # the row lock makes one next_task per annotator at a time (SQLite's BEGIN IMMEDIATE: one in all)
                if session.get(store.Annotator, annotator_id, with_for_update=True) is None:
                    return None
                assignment = _open_assignment(session, annotator_id) or _new_assignment(session, annotator_id, overlap)
                if assignment is None:
                    return None
                return _task(session, assignment, annotator_id, overlap)
        except IntegrityError:
            continue
    return None


def _open_assignment(session, annotator_id: int) -> Assignment | None:
    """Their assignment without a live judgment: the most recently undone first, else the oldest."""
    live = select(Judgment.assignment_id).where(Judgment.undone_at.is_(None))
    undone = (select(func.max(Judgment.id)).where(Judgment.assignment_id == Assignment.id)
              .correlate(Assignment).scalar_subquery())
    query = (select(Assignment).where(Assignment.annotator_id == annotator_id, Assignment.id.not_in(live))
             .order_by(undone.desc().nulls_last(), Assignment.id).limit(1))
    return session.scalar(query)


def _available(annotator_id: int, overlap: int):
    """Comparisons the annotator has not had that still have fewer than `overlap` assignments, fullest first."""
    mine = select(Assignment.comparison_id).where(Assignment.annotator_id == annotator_id)
    count = func.count(Assignment.id)
    return (select(Comparison.id, count.label("n")).outerjoin(Assignment, Assignment.comparison_id == Comparison.id)
            .where(Comparison.id.not_in(mine)).group_by(Comparison.id).having(count < overlap))


def _new_assignment(session, annotator_id: int, overlap: int) -> Assignment | None:
    """A new assignment on the fullest comparison still open to them; None only when none is open. Candidates are
    read before their locks, so under many annotators (PostgreSQL) all of a batch may fill meanwhile: then the next
    batch is read, and "all done" is never said while a comparison is left."""
    tried: set[int] = set()
    while True:
        query = _available(annotator_id, overlap)
        if tried:
            query = query.where(Comparison.id.not_in(tried))
        candidates = session.execute(query.order_by(query.selected_columns.n.desc(), Comparison.id)
                                     .limit(CANDIDATES)).all()
        if not candidates:
            return None
        tried.update(comparison_id for comparison_id, _ in candidates)
        assignment = _first_free(session, [comparison_id for comparison_id, _ in candidates], annotator_id, overlap)
        if assignment is not None:
            return assignment


def _first_free(session, comparison_ids: list[int], annotator_id: int, overlap: int) -> Assignment | None:
    for comparison_id in comparison_ids:
        session.execute(select(Comparison.id).where(Comparison.id == comparison_id).with_for_update())
        # re-read after the lock: another annotator may have taken the last place meanwhile
        taken = session.scalar(select(func.count(Assignment.id)).where(Assignment.comparison_id == comparison_id))
        if taken >= overlap:
            continue
        order = list(session.scalars(select(ComparisonResponse.response_id)
                                     .where(ComparisonResponse.comparison_id == comparison_id)
                                     .order_by(ComparisonResponse.position)))
        random.SystemRandom().shuffle(order)
        assignment = Assignment(comparison_id=comparison_id, annotator_id=annotator_id,
                                shown_order_json=json.dumps(order))
        session.add(assignment)
        session.flush()
        return assignment
    return None


def _task(session, assignment: Assignment, annotator_id: int, overlap: int) -> Task:
    comparison = session.get(Comparison, assignment.comparison_id)
    prompt = session.get(store.Prompt, comparison.prompt_id)
    order = json.loads(assignment.shown_order_json)
    texts = dict(session.execute(select(Response.id, Response.text).where(Response.id.in_(order))).all())
    done = session.scalar(select(func.count(Judgment.id)).where(Judgment.annotator_id == annotator_id,
                                                                Judgment.undone_at.is_(None)))
    live = select(Judgment.assignment_id).where(Judgment.undone_at.is_(None))
    still_open = session.scalar(select(func.count(Assignment.id)).where(Assignment.annotator_id == annotator_id,
                                                                         Assignment.id.not_in(live)))
    available = session.scalar(select(func.count()).select_from(_available(annotator_id, overlap).subquery()))
    return Task(assignment.id, comparison.id, comparison.kind, prompt.text,
                None if prompt.messages_json is None else json.loads(prompt.messages_json),
                tuple(Shown(i, texts[i]) for i in order), done, done + still_open + available)


def record_judgment(project, annotator_id: int, assignment_id: int, *, choice: str, ranking=None,
                    strength: str | None = None, reason: str | None = None, edited_text: str | None = None,
                    seconds: float | None = None) -> int:
    """Store one judgment of the annotator's assignment; committed when this returns. Returns its id."""
    try:
        with project.session(lock=True) as session:
            assignment = session.get(Assignment, assignment_id, with_for_update=True)
            if assignment is None or assignment.annotator_id != annotator_id:
                raise TaskError(f"assignment {assignment_id} is not one of yours")
            if session.scalar(select(Judgment.id).where(Judgment.assignment_id == assignment_id,
                                                        Judgment.undone_at.is_(None))) is not None:
                raise TaskError(f"assignment {assignment_id} is already judged; undo it first to change it")
            kind = session.scalar(select(Comparison.kind).where(Comparison.id == assignment.comparison_id))
            order = json.loads(assignment.shown_order_json)
            chosen, ranking = _check_choice(kind, order, choice, ranking, strength, edited_text)
            judgment = Judgment(assignment_id=assignment_id, comparison_id=assignment.comparison_id,
                                annotator_id=annotator_id, choice=choice,
                                ranking_json=None if ranking is None else json.dumps(ranking),
                                chosen_response_id=chosen, strength=strength, reason=_text(reason, "reason"),
                                edited_text=_edit(session, chosen, edited_text), seconds=_seconds(seconds),
                                shown_order_json=assignment.shown_order_json)
            session.add(judgment)
            session.flush()
            return judgment.id
    except IntegrityError:  # the one-live-judgment index caught a double submit
        raise TaskError(f"assignment {assignment_id} is already judged; undo it first to change it") from None


def _check_choice(kind: str, order: list[int], choice: str, ranking, strength, edited_text):
    """(chosen response id, ranking best-first) of a valid choice; TaskError otherwise."""
    allowed = PAIR_CHOICES if kind == "pair" else RANK_CHOICES
    if choice not in allowed:
        raise TaskError(f"choice {choice!r} does not fit a {kind} comparison; choose one of {', '.join(allowed)}")
    if strength is not None and (strength not in STRENGTHS or choice not in ("left", "right")):
        raise TaskError(f"strength {strength!r}: give {' or '.join(STRENGTHS)}, and only with left or right")
    if edited_text is not None and choice not in ("left", "right"):
        raise TaskError("an edit corrects the better answer: pick left or right with it")
    if choice in ("left", "right"):
        if ranking is not None:
            raise TaskError("a ranking goes with choice 'rank' only")
        return order[0 if choice == "left" else 1], None
    if choice != "rank":
        if ranking is not None:
            raise TaskError("a ranking goes with choice 'rank' only")
        return None, None
    try:
        ranking = [int(r) for r in ranking]
    except (TypeError, ValueError):
        raise TaskError("ranking must list the shown response ids, best first") from None
    if sorted(ranking) != sorted(order):
        raise TaskError(f"ranking {ranking} must order exactly the shown responses {sorted(order)}, best first")
    return ranking[0], ranking


def _text(value, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise TaskError(f"{field} must be text of at most {MAX_TEXT} characters")
    return value.strip() or None


def _edit(session, chosen: int | None, edited_text) -> str | None:
    """The annotator's correction, or None when it is empty or the same as the answer it corrects."""
    edited = _text(edited_text, "edited_text")
    if edited is None or chosen is None:
        return None
    return None if edited == session.get(Response, chosen).text.strip() else edited_text


def _seconds(value) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise TaskError(f"seconds must be a number, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise TaskError(f"seconds must be a finite number ≥ 0, got {value!r}")
    return seconds


def undo_last(project, annotator_id: int) -> int | None:
    """Withdraw the annotator's latest live judgment (kept, marked undone); returns its assignment id, their next
    task again. None when they have nothing to undo."""
    with project.session(lock=True) as session:
        judgment = session.scalar(select(Judgment).where(Judgment.annotator_id == annotator_id,
                                                         Judgment.undone_at.is_(None))
                                  .order_by(Judgment.id.desc()).limit(1).with_for_update())
        if judgment is None:
            return None
        judgment.undone_at = store.now()
        return judgment.assignment_id
