"""The re-decision of one sidecar row under new quality thresholds and auditor labels (``idd filter``).

A row the ``quality_filter`` stage scored gets what the stage would have given it with the new
thresholds (its scores from the sidecar's typed columns, else ``meta["scores"]``; the rules in
``models.quality.RULES``); a row an earlier stage dropped keeps that drop (``meta["filter"]["prior_drop"]``,
with the rule failures and auditor verdicts of earlier re-filters taken off); an auditor's newest
accept/reject overrides both ways. :func:`cause` names the rule behind a row's move between splits.
The command (reading, writing generations) is :mod:`.commands.filter`.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("idd.filter")


def _clean() -> dict:
    return {"keep": True, "drop_reason": None, "drop_class": None, "drop_detail": None}


def row_scores(row: dict, meta: dict) -> dict:
    """A row's scores from the sidecar's typed float32 columns (format 2), else from ``meta["scores"]``.
    The typed value is what every other reader of the output sees, so the filter decides on it too."""
    from .schema import scores_from_columns

    typed = scores_from_columns(row)
    return typed if typed is not None else (meta.get("scores") or {})


def _failures(scores: dict, thresholds: dict) -> list[tuple[str, dict]]:
    """``(drop class, details)`` of each rule a row fails: what the quality_filter stage passes to
    ``schema.drop`` (so that a re-filter with the run's thresholds gives the run's bytes)."""
    from .models import quality as q

    if hasattr(q, "failures"):
        return [(f.cls, f.detail()) for f in q.failures(scores, thresholds)]
    return [(c, {}) for c in q.evaluate(scores, thresholds)]


def _prior_state(row: dict, prior: str) -> dict:
    """The drop state of a row an earlier stage dropped, as the quality_filter stage saw it (rule failures
    and auditor verdicts that an earlier re-filter added are taken off again)."""
    detail = [d for d in (row.get("drop_detail") or []) if not _is_rule_class(d)]
    return {"keep": False, "drop_reason": prior if row.get("drop_reason") else None,
            "drop_class": row.get("drop_class"), "drop_detail": detail or row.get("drop_detail")}


def refilter_row(row: dict, sets: dict, audit: dict[str, str]) -> dict:
    """The new state of one sidecar row under thresholds ``sets`` and auditor labels: ``{"keep",
    "drop_reason", "drop_class", "drop_detail", "meta"}``. A row the quality_filter stage scored gets what
    the stage would have given it with these thresholds; an auditor's newest accept/reject wins."""
    from .models.quality import RULES, resolve_threshold
    from .schema import drop

    meta = dict(row.get("meta") or {})
    state = {"keep": bool(row.get("keep")), "drop_reason": row.get("drop_reason"),
             "drop_class": row.get("drop_class"), "drop_detail": row.get("drop_detail")}
    flt = meta.get("filter")
    if isinstance(flt, dict) and "thresholds" in flt:
        flt = dict(flt)
        pct = (flt.get("giqa_reference") or {}).get("percentiles")
        thr = {f: flt["thresholds"].get(f) for f in RULES}
        specs = dict(flt.get("threshold_specs") or {})
        for f, v in sets.items():
            if f.startswith("giqa") and not flt.get("giqa_reference"):
                continue  # no GIQA scores in this row
            thr[f] = resolve_threshold(f, v, pct)
            if isinstance(v, str) and v.strip().lower().startswith("ref:"):
                specs[f] = v
            else:
                specs.pop(f, None)
        failed = _failures(row_scores(row, meta), thr)
        prior = flt.get("prior_drop")
        if prior is not None:
            state = _prior_state(row, prior)  # the stage never keeps, nor re-drops, a row dropped before it
        else:
            state = _clean()
            for cls, detail in failed:
                drop(state, cls, **detail)
        flt.update(thresholds=thr, failed=[c for c, _ in failed])
        if specs:
            flt["threshold_specs"] = specs
        else:
            flt.pop("threshold_specs", None)
        flt.pop("audit", None)
        meta["filter"] = flt
    verdict = audit.get(row["key"])
    if verdict == "accept" and not state["keep"]:
        if row.get("src_offset") is None:
            log.warning("%s: accepted by an auditor but has no images; stays rejected", row["key"])
        else:
            state = _clean()
            meta.setdefault("filter", {})["audit"] = "accept"
    elif verdict == "reject" and state["keep"]:
        state = drop(_clean(), "audit:reject")
        meta.setdefault("filter", {})["audit"] = "reject"
    state["meta"] = meta
    return state


def cause(old_reason: str | None, new_reason: str | None, moved_out: bool) -> list[str]:
    from .models.quality import rule_of_reason

    parts = (new_reason if moved_out else old_reason) or ""
    causes = [rule_of_reason(p) or p for p in parts.split(";") if p]
    return causes or ["(none)"]


def _is_rule_class(entry: str) -> bool:
    from .models.quality import rule_of_reason

    try:
        cls = json.loads(entry).get("class")
    except (ValueError, AttributeError):
        return False
    return isinstance(cls, str) and (rule_of_reason(cls) is not None or cls == "audit:reject")
