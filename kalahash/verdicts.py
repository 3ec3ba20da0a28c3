""" "What this shows": the reading of a notebook's numbers, generated from its rows, so it stays true when
the numbers move (a new seed, the paper profile, a user's own data and real CLIP weights).

:func:`paired_differences` is the one comparison every reading rests on: arm minus baseline, paired by
seed within a setting, with the spread of those differences and their number. A difference whose mean
is larger than its seed spread (the standard deviation of the paired differences) reads "above" or
"below"; otherwise "within the seed spread"; from one seed there is no spread and nothing to read.
:func:`what_this_shows` builds the notebook's verdict from it: each arm against LB, the zero-shot codes
as a reference, each flag counted and explained, and one sentence per figure on the paper's claim
(:data:`CLAIMS`, from the paper's own statements) saying whether this run supports it, contradicts it
or cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .hashing import METHOD_LABELS
from .history import FLAG_MEANINGS, flag_counts

ZERO_SHOT = METHOD_LABELS["zeroshot"]
SUPPORTS, CONTRADICTS, CANNOT_TELL = "supports it", "contradicts it", "cannot tell"


def arm_names(rows: pd.DataFrame) -> pd.Series:
    """Each row's arm as tables and figures name it: the study's ``variant`` label where there is one,
    else the method's display name (:data:`kalahash.hashing.METHOD_LABELS`) with its knowledge control."""
    if "variant" in rows:
        return rows["variant"].astype(str)
    names = rows["method"].map(lambda m: METHOD_LABELS.get(m, m))
    if "knowledge" in rows:
        control = rows["knowledge"].fillna("true").astype(str)
        names = names.where(control == "true", names + ", " + control + " K")
    return names


def paired_differences(
    rows: pd.DataFrame,
    baseline: str,
    by: Sequence[str] = (),
    value: str = "map_ties_index",
    arms: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Arm minus ``baseline``, paired by seed within each setting ``by``: one line per setting and arm
    with ``mean``, ``spread`` (standard deviation of the paired differences; NaN from one seed), ``n``
    (seeds both ran) and ``reading`` (:func:`reading`). Runs with a NaN value (a diverged arm) pair with
    nothing. ``arms`` limits the arms compared (default: every arm but the baseline)."""
    table = rows.assign(_arm=arm_names(rows))
    by = list(by)
    wide = table.pivot_table(
        index=[*by, "seed"], columns="_arm", values=value, aggfunc="first", sort=False, dropna=False
    )
    if baseline not in wide:
        return pd.DataFrame(columns=[*by, "arm", "baseline", "mean", "spread", "n", "reading"])
    chosen = [a for a in (arms or dict.fromkeys(table["_arm"])) if a != baseline and a in wide]
    lines = []
    for arm in chosen:
        ran = table.loc[table["_arm"] == arm].set_index([*by, "seed"]).index  # diverged runs too
        diff = (wide[arm] - wide[baseline]).loc[wide.index.isin(ran)]
        groups = diff.groupby(level=by, sort=False) if by else [((), diff)]
        for key, part in groups:
            key = key if isinstance(key, tuple) else (key,)
            # a run without mAP pairs with nothing, but its setting is listed
            lines.append(
                {**dict(zip(by, key, strict=True)), "arm": arm, "baseline": baseline, **_stats(part)}
            )
    return pd.DataFrame(lines, columns=[*by, "arm", "baseline", "mean", "spread", "n", "reading"])


def _stats(differences: pd.Series) -> dict[str, Any]:
    """Paired differences (NaN where a run has no value) as mean, spread (NaN from one), n and reading."""
    known = differences.dropna()
    n = len(known)
    mean = float(known.mean()) if n else math.nan
    spread = float(known.std()) if n > 1 else math.nan
    return {"mean": mean, "spread": spread, "n": n, "reading": reading(mean, spread, n)}


def reading(mean: float, spread: float, n: int) -> str:
    """How a paired difference reads: "above" or "below" when its mean exceeds its seed spread, "within
    the seed spread" when not, "one seed, no spread" with a single seed, "no result" with none (the arm
    diverged, or did not run)."""
    if n == 0 or math.isnan(mean):
        return "no result"
    if n < 2:
        return "one seed, no spread"
    if abs(mean) > spread:
        return "above" if mean > 0 else "below"
    return "within the seed spread"


def _verdict(readings: Sequence[str]) -> str:
    """A claim that one arm is better, over several comparisons: supported when every one reads
    "above", contradicted when any reads "below", else it cannot tell."""
    if readings and all(r == "above" for r in readings):
        return SUPPORTS
    if any(r == "below" for r in readings):
        return CONTRADICTS
    return CANNOT_TELL


def _tally(readings: Sequence[str]) -> str:
    counts = pd.Series(list(readings), dtype=object).value_counts()
    return ", ".join(f"{n} {r}" for r, n in counts.items()) if len(counts) else "nothing to compare"


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def difference_text(line: Mapping[str, Any]) -> str:
    """ "+0.015 ± 0.011 (n=3)": a paired difference with its spread and count (no ± from one seed)."""
    if line["n"] == 0:
        return "no result"
    if line["n"] < 2:
        return f"{_signed(line['mean'])} (n=1)"
    return f"{_signed(line['mean'])} ± {line['spread']:.3f} (n={line['n']})"


def knowledge_differences(
    rows: pd.DataFrame, by: Sequence[str] = ("shots",), value: str = "map_ties_index"
) -> pd.DataFrame:
    """Is the knowledge used? KALAHash against LB and against its permuted-K and random-K controls,
    paired by seed within each setting: one line per setting and ``comparison``
    ("KALAHash − permuted K", ...), with :func:`paired_differences`' columns."""
    parts = []
    for control in (LB, f"{KALAHASH}, permuted K", f"{KALAHASH}, random K"):
        lines = paired_differences(rows, control, by, value, arms=[KALAHASH])
        parts.append(lines.assign(comparison=f"{KALAHASH} − {control.removeprefix(KALAHASH + ', ')}"))
    table = pd.concat(parts, ignore_index=True)
    return table[[*by, "comparison", "mean", "spread", "n", "reading"]]


# ----------------------------------------------------------------------------------------------------------
# The paper's claims, one per figure or table (paper-notes: Setting, and the figures' captions)


@dataclass(frozen=True)
class Claim:
    """A statement of the paper and the comparisons that test it: ``better`` minus ``worse`` for each
    pair, in every setting of ``by`` (a trend for ``backbones``, a shift in shots for ``shots``)."""

    figure: str
    text: str
    pairs: tuple[tuple[str, str], ...] = ()
    value: str | None = None  # the column it reads, where not the notebook's mAP column
    where: tuple[tuple[str, str], ...] = ()  # (column, value): the rows it reads, where not all


KALAHASH, LB = METHOD_LABELS["kalahash"], METHOD_LABELS["lb"]
CLAIMS: dict[str, Claim] = {
    "main": Claim(
        "the main table",
        "KALAHash scores above LB, FFT and plain LoRA in the low-resource settings",
        ((KALAHASH, LB), (KALAHASH, METHOD_LABELS["fft"]), (KALAHASH, METHOD_LABELS["lora"])),
    ),
    "shots": Claim(
        "the shot-scaling figure", "about 4× data efficiency: KALAHash at k shots matches LB at 4k"
    ),
    "backbones": Claim(
        "the backbone-scaling figure", "KALAHash's gain over LB grows with the backbone's size"
    ),
    "embeddings": Claim(
        "Figure 1",
        "KALAHash's hash codes separate the classes better than LB's and FFT's (a higher silhouette)",
        ((KALAHASH, LB), (KALAHASH, METHOD_LABELS["fft"])),
        value="silhouette",
        where=(("space", "codes"),),
    ),
    "components": Claim(
        "the component ablation",
        "CLoRA and KIDDO each add to LB, and together most",
        (("+CLoRA", "LB"), ("+KIDDO", "LB"), ("+CLoRA +KIDDO", "+CLoRA"), ("+CLoRA +KIDDO", "+KIDDO")),
    ),
    "selection": Claim(
        "the selection ablation",
        "CLoRA's Top_r classes beat random and fixed classes",
        (("Top_r (paper)", "random"), ("Top_r (paper)", "fixed")),
    ),
    "knowledge": Claim(
        "the knowledge controls",
        "the class-text knowledge K is what helps: the true K scores above permuted and random K",
        ((KALAHASH, f"{KALAHASH}, permuted K"), (KALAHASH, f"{KALAHASH}, random K")),
    ),
    "plug_and_play": Claim(
        "the plug-and-play table",
        "CLoRA + KIDDO lifts every hashing loss above that loss alone on LB",
        (("+CLoRA +KIDDO", "on LB"),),
    ),
    "efficiency": Claim("the efficiency table", "CLoRA adds little inference cost over the frozen tower"),
}
# "little" inference cost, as we read it (ours: the paper gives no number): at most this much slower
LOW_OVERHEAD = 1.25


def _pairs_verdict(claim: Claim, rows: pd.DataFrame, by: Sequence[str], value: str) -> tuple[str, str]:
    lines = pd.concat(
        [paired_differences(rows, worse, by, value, arms=[better]) for better, worse in claim.pairs]
    )
    readings = list(lines["reading"])
    return _verdict(readings), f"{len(readings)} paired comparisons: {_tally(readings)}"


def _seed_difference(wide: pd.DataFrame, a: Any, b: Any) -> dict[str, Any]:
    """``a`` minus ``b`` (columns of a seed-indexed table), paired by seed: :func:`_stats`."""
    return _stats(wide[a] - wide[b])


def _shots_verdict(claim: Claim, rows: pd.DataFrame, by: Sequence[str], value: str) -> tuple[str, str]:
    """KALAHash at k shots against LB at 4k shots, paired by seed; testable only where LB itself gains
    from four times the shots beyond its seed spread (else matching it says nothing)."""
    table = rows.assign(_arm=arm_names(rows))
    wide = table.pivot_table(index="seed", columns=["_arm", "shots"], values=value, aggfunc="first")
    verdicts, texts = [], []
    for k in sorted(table["shots"].unique()):
        if (KALAHASH, k) not in wide or (LB, 4 * k) not in wide or (LB, k) not in wide:
            continue
        match = _seed_difference(wide, (KALAHASH, k), (LB, 4 * k))
        gain = _seed_difference(wide, (LB, 4 * k), (LB, k))
        texts.append(
            f"KALAHash at {k} − LB at {4 * k}: {difference_text(match)}; LB at {4 * k} − LB at {k}: "
            f"{difference_text(gain)}"
        )
        if gain["reading"] != "above":
            verdicts.append(CANNOT_TELL)  # LB gains nothing measurable from 4× the shots here
        elif match["reading"] == "below":
            verdicts.append(CONTRADICTS)
        else:
            verdicts.append(SUPPORTS if match["mean"] >= 0 else CANNOT_TELL)
    if not verdicts:
        return CANNOT_TELL, "no shot count here has LB at it and at four times as many shots"
    verdict = (
        CONTRADICTS if CONTRADICTS in verdicts else SUPPORTS if set(verdicts) == {SUPPORTS} else CANNOT_TELL
    )
    return verdict, "; ".join(texts)


def _backbones_verdict(claim: Claim, rows: pd.DataFrame, by: Sequence[str], value: str) -> tuple[str, str]:
    """The gain over LB at the largest backbone against the gain at the smallest (sizes in parameters)."""
    from .backbones import parameter_count

    sized = rows.assign(params=rows["backbone"].map(parameter_count))
    gains = paired_differences(sized, LB, ["backbone", "params"], value, arms=[KALAHASH]).sort_values(
        "params"
    )
    text = "gain over LB by size: " + ", ".join(
        f"{g['backbone']} {difference_text(g)}" for _, g in gains.iterrows()
    )
    measured = gains[gains["n"] >= 2]
    if len(measured) < 2:
        return CANNOT_TELL, f"{text}; it needs two backbones with a gain from at least two seeds each"
    small, large = measured.iloc[0], measured.iloc[-1]
    change = large["mean"] - small["mean"]
    noise = math.hypot(small["spread"], large["spread"])
    verdict = SUPPORTS if change > noise else CONTRADICTS if change < -noise else CANNOT_TELL
    return (
        verdict,
        f"{text}; {large['backbone']} against {small['backbone']}, the largest and smallest measured",
    )


def _efficiency_verdict(claim: Claim, costs: pd.DataFrame) -> tuple[str, str]:
    """CLoRA's encode time against the frozen tower's, with the spread of the timing rounds."""
    table = costs.set_index("method")
    if "clora" not in table.index or pd.isna(table.get("encode_overhead_vs_frozen", {}).get("clora")):
        return CANNOT_TELL, "CLoRA's encode time was not measured beside the frozen tower's"
    ratio = float(table.loc["clora", "encode_overhead_vs_frozen"])
    spread = float(table.loc["clora", "encode_overhead_vs_frozen_spread"])
    if math.isnan(spread):
        return (
            CANNOT_TELL,
            f"CLoRA encodes at {ratio:.2f}× the frozen tower's time, from one round: no spread",
        )
    if ratio + spread <= LOW_OVERHEAD:
        verdict = SUPPORTS
    else:
        verdict = CONTRADICTS if ratio - spread > LOW_OVERHEAD else CANNOT_TELL
    return verdict, (
        f"CLoRA encodes at {ratio:.2f}× ± {spread:.2f} the frozen tower's time (we read 'little' as at most "
        f"{LOW_OVERHEAD}×)"
    )


_SPECIAL: dict[str, Callable[..., tuple[str, str]]] = {
    "shots": _shots_verdict,
    "backbones": _backbones_verdict,
}


def claim_verdict(
    name: str, rows: pd.DataFrame, by: Sequence[str] = (), value: str = "map_ties_index"
) -> tuple[str, str]:
    """(verdict, evidence) of the paper's claim ``name`` (:data:`CLAIMS`) on these rows."""
    claim = CLAIMS[name]
    if name == "efficiency":
        return _efficiency_verdict(claim, rows)
    for column, wanted in claim.where:
        rows = rows[rows[column] == wanted]
    return _SPECIAL.get(name, _pairs_verdict)(claim, rows, by, claim.value or value)


# ----------------------------------------------------------------------------------------------------------
# The verdict


class Verdict(str):
    """The reading as Markdown; a notebook shows it rendered (``display(verdict)``), a terminal as text."""

    def _repr_markdown_(self) -> str:
        return str(self)


def _setting_line(rows: pd.DataFrame, settings: Mapping[str, Any]) -> str:
    """What ran, from the rows and settings: data set, backbone, bits, seeds, and whose setting it is."""

    def values(column: str) -> str:
        return ", ".join(map(str, dict.fromkeys(rows[column]))) if column in rows else "?"

    seeds = sorted({int(s) for s in rows["seed"]}) if "seed" in rows else []
    whose = "the paper's setting" if settings.get("profile") == "paper" else "ours, not the paper's setting"
    return (
        f"*Setting* ({whose}): {values('dataset')} with {values('backbone')}, {values('bits')} bits, "
        f"seeds {', '.join(map(str, seeds)) or '?'}; mAP with ties broken by database index."
    )


def _against_table(rows: pd.DataFrame, baseline: str, by: Sequence[str], value: str) -> list[str]:
    lines = paired_differences(rows, baseline, by, value)
    lines = lines[lines["arm"] != ZERO_SHOT]
    if by:  # setting by setting, in the order the rows have them
        seen = list(dict.fromkeys(zip(*(rows[b] for b in by), strict=True)))
        lines = lines.iloc[
            sorted(range(len(lines)), key=lambda i: seen.index(tuple(lines.iloc[i][list(by)])))
        ]
    if lines.empty:
        return [f"No arm here pairs with {baseline} by seed."]
    header = [*by, "arm", f"arm − {baseline}", "reading"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, line in lines.iterrows():
        cells = [*(str(line[b]) for b in by), line["arm"], difference_text(line), line["reading"]]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _reference_line(rows: pd.DataFrame, by: Sequence[str], value: str) -> str | None:
    """The zero-shot codes against the best trained arm of each setting where both ran."""
    setting = (
        rows[list(by)].astype(str).apply(lambda r: ", ".join(f"{b} {v}" for b, v in r.items()), axis=1)
        if by
        else ""
    )
    table = rows.assign(_arm=arm_names(rows), _setting=setting)
    zero = table[table["_arm"] == ZERO_SHOT].groupby("_setting", sort=False)[value].mean()
    trained = table[(table["_arm"] != ZERO_SHOT) & table[value].notna()]
    means = trained.groupby(["_setting", "_arm"], sort=False)[value].mean()
    if zero.nunique() == 1:  # the text alone does not depend on these settings: one level for all of them
        zero = pd.Series(zero.iloc[0], index=list(dict.fromkeys(means.index.get_level_values(0))))
    both = [k for k in zero.index if k in means.index.get_level_values(0)]
    if not both:
        return None
    best = {k: means.loc[k].idxmax() for k in both}
    above = sum(zero[k] > means.loc[k].max() for k in both)
    low, high = zero[both].min(), zero[both].max()
    levels = f"{low:.3f}" if low == high else f"{low:.3f} to {high:.3f}"
    top = max(both, key=lambda k: means.loc[k].max())
    where = f", {top}" if top else ""
    if len(both) == 1:
        side = "above every trained arm" if above else "below the best trained arm"
    else:
        side = "above every trained arm in " + (
            "each setting" if above == len(both) else f"{above} of the {len(both)} settings"
        )
    return (
        f"*Reference*: the zero-shot codes (each image gets its zero-shot class's code: the text alone, "
        f"nothing trained) score {levels}, {side} (best trained: {best[top]}{where}, {means.loc[top].max():.3f})."
    )


def _flag_lines(rows: pd.DataFrame) -> list[str]:
    if "config_id" in rows:  # a run several arms share (a study's paper arm) counts once, by its first name
        rows = rows.assign(_arm=arm_names(rows)).drop_duplicates("config_id")
    counts = flag_counts(rows.assign(_arm=arm_names(rows)), by="_arm")
    if not counts:
        return ["*Flags*: no run raised a flag."]
    out = ["*Flags* (⚑ in the tables):"]
    for flag, by_arm in counts.items():
        where = ", ".join(f"{arm} ×{n}" for arm, n in by_arm.items())
        out.append(
            f"- `{flag}` in {sum(by_arm.values())} of {len(rows)} runs ({where}): {FLAG_MEANINGS[flag]}"
        )
    return out


def _costs_verdict(costs: pd.DataFrame, settings: Mapping[str, Any], claims: Sequence[str]) -> Verdict:
    """The reading of a cost table: each method's time ratios to the frozen tower and plain LoRA with
    their spread over the timing rounds, and what they say (within noise, slower, faster)."""
    parts = ["### What this shows", ""]
    parts.append(
        f"*Measured* on {costs['device'].iloc[0]}, {settings.get('dataset')} with {settings.get('backbone')}, "
        f"methods timed alternately over {int(costs['rounds'].iloc[0])} rounds (median ratio ± its spread)."
    )
    parts += [
        "",
        "| method | training time ÷ LB | encode time ÷ LB | encode time ÷ LoRA |",
        "|---|---|---|---|",
    ]
    for _, line in costs.iterrows():
        cells = [
            f"{line[k]:.2f} ± {line[k + '_spread']:.2f}, {line[k + '_reading']}"
            if line[k] == line[k]
            else "—"
            for k in ("train_ratio_vs_frozen", "encode_overhead_vs_frozen", "encode_overhead_vs_lora")
        ]
        parts.append(f"| {METHOD_LABELS.get(line['method'], line['method'])} | " + " | ".join(cells) + " |")
    if claims:
        parts += ["", "**The paper's claims**:"]
        for name in claims:
            verdict, why = claim_verdict(name, costs)
            claim = CLAIMS[name]
            parts.append(f"- {claim.figure}: the paper claims {claim.text}. This run **{verdict}** ({why}).")
    return Verdict("\n".join(parts).rstrip() + "\n")


def what_this_shows(
    rows: pd.DataFrame,
    settings: Mapping[str, Any],
    claims: Sequence[str] = (),
    *,
    by: Sequence[str] = (),
    value: str = "map_ties_index",
    baseline: str = LB,
    evidence: Mapping[str, pd.DataFrame] | None = None,
) -> Verdict:
    """The notebook's closing reading, from its rows: the setting; every arm against ``baseline``,
    paired by seed within ``by``; the zero-shot codes as a reference; each flag counted and explained;
    and for each of ``claims`` (:data:`CLAIMS`) the paper's statement and whether these numbers support
    it, contradict it or cannot tell. ``evidence`` gives a claim another table than ``rows`` (the
    silhouettes for ``embeddings``, the cost table for ``efficiency``)."""
    evidence = dict(evidence or {})
    if value not in rows:  # a cost table (notebook 08): what each method costs, read against noise
        return _costs_verdict(rows, settings, claims)
    parts = ["### What this shows", "", _setting_line(rows, settings), ""]
    parts += [
        f"**Each arm against {baseline}**, paired by seed:",
        "",
        *_against_table(rows, baseline, by, value),
        "",
    ]
    reference = _reference_line(rows, by, value)
    if reference:
        parts += [reference, ""]
    parts += [*_flag_lines(rows), ""]
    if claims:
        parts.append("**The paper's claims**:")
        for name in claims:
            table = evidence.get(name, rows)
            verdict, why = claim_verdict(name, table, [b for b in by if b in table], value)
            claim = CLAIMS[name]
            parts.append(f"- {claim.figure}: the paper claims {claim.text}. This run **{verdict}** ({why}).")
    return Verdict("\n".join(parts).rstrip() + "\n")
