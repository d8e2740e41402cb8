"""Eligibility: the Fisher projection with the cutoff, the consistency test, and the dropped pairs."""

from __future__ import annotations

import numpy as np
import streamlit as st

from saas import annotated, diagnostics, explore, figures
from saas.pipeline import MethodResult
from saas_app.resources import steerability_of
from saas_app.ui import (
    bound,
    instance_card,
    labels,
    model_lock,
    progress_bar,
    require_run,
    result_or_error,
    show_error,
)

AXES = {"fisher": "Fisher direction", "mean_diff": "Mean-difference direction"}
CONSISTENCY = {"mean": "mean local vector (the method)",
               "polarity-balanced": "polarity-balanced: mean of the per-token means"}

st.header("Eligibility")
run = require_run()
p = run.prepared
train = p.instances("train")
texts = [explore.instance_hover(i) for i in train]
has_notes = annotated.is_annotated(train)
token_answers = p.dataset.answer_kind != "sentence"


def shrinkage_setting() -> None:
    ss = st.session_state
    with st.expander("Covariance shrinkage (Fisher axis)"):
        ridge = isinstance(ss["shrinkage"], float)
        kind = st.radio("Estimate", ["Ledoit-Wolf", "ridge lambda x I"], index=int(ridge), horizontal=True,
                        key="elig_shrink_kind", help="S_w is singular when d > N: it is shrunk towards a multiple of I.")
        if kind == "Ledoit-Wolf":
            ss["shrinkage"] = "ledoit-wolf"
        else:
            lam = st.number_input("lambda", min_value=0.0, value=float(ss["shrinkage"]) if ridge else 1.0,
                                  step=0.1, format="%.3f", key="elig_lambda")
            ss["shrinkage"] = float(lam)


def steerability_panel(res: MethodResult) -> np.ndarray | None:
    """Per-pair steerability under the CAA vector next to the selection; returns the slopes (or None)."""
    el = res.eligibility
    st.subheader("Does the selection keep the pairs that steer?")
    steer = steerability_of(run.key, p, res)
    if steer is None:
        st.caption("Steerability of a pair (Tan et al. 2024): the slope of its own preference log p(y+) - log p(y-) "
                   f"against alpha in {list(diagnostics.STEER_ALPHAS)} under the CAA vector of this layer; below 0 "
                   "the pair is anti-steerable. It runs the model on the prompt cache (a few answer-token forwards "
                   "per pair) and is cached on disk.")
        if not st.button("Compute steerability", key="elig_steer_go"):
            return None
        bar = progress_bar()
        try:
            with model_lock():
                steer = steerability_of(run.key, p, res, compute=True, progress=bar)
        except Exception as exc:
            show_error(exc)
            return None
        finally:
            bar.clear()
    slopes = steer.align(el.ids)
    shares = diagnostics.steerability_shares(slopes, el.eligible)
    c1, c2, c3 = st.columns(3)
    c1.metric("Anti-steerable among eligible", f"{100 * shares['anti_steerable_eligible']:.0f}%",
              help=f"{shares['n_eligible']} eligible pairs with a negative slope share")
    dropped_share = shares["anti_steerable_dropped"]
    c2.metric("Anti-steerable among dropped", "none dropped" if shares["n_dropped"] == 0 else f"{100 * dropped_share:.0f}%")
    c3.metric("Median steerability", f"{shares['median_slope']:.3g}", help="slope of log p(y+) - log p(y-) per unit alpha")
    balanced = res.projection.consistency != "mean"
    x_kind = st.radio("Against", ["gap p - n", "cosine of the consistency test"], horizontal=True, key="elig_steer_x",
                      help="cos(v_i, reference): the mean local vector, or with the polarity-balanced option the "
                           "mean of the per-token mean directions")
    use_gap = x_kind.startswith("gap")
    colour = st.session_state.get("elig_colour", "eligibility")
    fig = figures.steerability_scatter(el.gap if use_gap else el.cosine, slopes, el.eligible, el.ids,
                                       x_label="gap p_i − n_i" if use_gap else ("cos(v_i, balanced reference)" if balanced else "cos(v_i, v̄)"), hover=texts,
                                       quality=annotated.qualities(train) if has_notes and colour == "annotation" else None)
    st.plotly_chart(fig, width="stretch", key="elig_steer_scatter")
    st.caption(f"CAA vector at layer {steer.layer} (the same activations and layer as the selection), alpha "
               f"{', '.join(f'{a:g}' for a in steer.alphas)}; steering at the last prompt token and the answer tokens, "
               "as the evaluation does." + (" Read from the disk cache." if steer.from_cache else ""))
    if has_notes:
        with st.expander(f"Steerability by annotated quality ({annotated.NOTE})"):
            st.dataframe(annotated.steerability_by_quality(slopes, el.eligible, train), hide_index=True,
                         key="elig_steer_quality")
    return slopes


@st.fragment
def eligibility_panel() -> None:
    left, mid, right = st.columns([2, 2, 3])
    with left:
        bound(st.slider, "kappa (cutoff = kappa x D)", "kappa", min_value=0.0, max_value=2.0, step=0.05,
              help="A pair is separable iff its own gap p - n is at least kappa times the mean gap D.")
    with mid:
        bound(st.radio, "Projection axis", "axis", options=list(AXES), format_func=labels(AXES), horizontal=True)
        if token_answers:
            bound(st.radio, "Consistency reference", "consistency", options=list(CONSISTENCY),
                  format_func=labels(CONSISTENCY),
                  help="The method compares each local vector with the mean of all of them. With Yes/No or "
                       "A/B answers that mean is mostly the answer token's identity; the polarity-balanced "
                       "option averages the mean local vector of each positive-answer token instead.")
    with right:
        shrinkage_setting()
    res = result_or_error(run)
    if res is None:
        return
    el = res.eligibility
    cols = st.columns(5)
    cols[0].metric("Eligible", f"{el.counts['n_eligible']} / {el.counts['n_total']}")
    cols[1].metric("Not separable", el.counts["n_not_separable"])
    cols[2].metric("Inconsistent", el.counts["n_inconsistent"])
    cols[3].metric("Mean separation D", f"{el.D:.4g}")
    cols[4].metric("Cutoff kappa x D", f"{el.cutoff:.4g}")
    st.markdown(f"**Rule** (layer {res.layer}): {el.rule}")
    if el.empty:
        st.error(f"No pair is eligible: {el.message}\n\nLower kappa, switch the axis, or choose another layer "
                 "in the sidebar. SAAS has no vector until at least one pair is eligible.")
    if token_answers and not el.empty:
        check = diagnostics.confound_check(train, el.eligible, res.weights)
        if check.flagged:
            st.warning(check.message, icon=":material/warning:")
        with st.expander("Eligible pairs and SAAS weight by positive answer token", expanded=check.flagged):
            st.dataframe(check.split, hide_index=True, key="elig_tokens")
    reasons = ["; ".join(r) for r in el.reasons]
    v1, v2 = st.columns([1, 2])
    view = v1.radio("View", ["Scatter n vs p", "Sorted gaps"], horizontal=True, key="elig_view",
                    label_visibility="collapsed")
    colour = "eligibility"
    if has_notes:
        colour = v2.radio("Colour by", ["eligibility", "annotation"], horizontal=True, key="elig_colour",
                          format_func=labels({"annotation": f"annotated quality ({annotated.NOTE})"})) or colour
    event = None
    if view == "Scatter n vs p":
        fig = figures.eligibility_scatter(el.p, el.n, el.eligible, reasons, el.kappa, el.D, el.ids, hover=texts,
                                          axis_label="Fisher" if el.axis == "fisher" else "mean-difference",
                                          quality=annotated.qualities(train) if colour == "annotation" else None)
        event = st.plotly_chart(fig, width="stretch", key="elig_scatter", on_select="rerun", selection_mode="points")
    else:
        st.plotly_chart(figures.gap_dumbbells(el.p, el.n, el.eligible, el.ids, el.cutoff), width="stretch",
                        key="elig_bells")
    picked = explore.selected_point(event.selection.points if event else None)
    if picked is not None:
        instance_card(train[picked], f"(selected: gap {el.gap[picked]:.3g}, cosine {el.cosine[picked]:.3f}"
                                     f"{'; ' + reasons[picked] if reasons[picked] else ', eligible'})")
    st.plotly_chart(figures.cosine_histogram(el.cosine, el.eligible), width="stretch", key="elig_cos")
    st.caption("Consistency: a pair is kept only if cos(v_i, r) > 0 (the line at 0); r = "
               + ("the mean over positive-answer tokens of their unit mean local vectors." if res.projection.consistency != "mean"
                  else "the mean local vector."))
    if has_notes:
        st.subheader("Annotated quality x kept / dropped")
        st.dataframe(annotated.quality_table(el, train), hide_index=True, key="elig_quality",
                     column_config={"dropped %": st.column_config.NumberColumn(format="%.0f%%")})
        st.caption(f"The dataset's `quality` annotation ({annotated.NOTE}): clean pairs, and pairs written "
                   "with a flaw (swapped = positive and negative reversed; neutral = neither answer shows the "
                   "behaviour; confounded = the answers differ mainly in something else; weak = they barely "
                   "differ). A dropped pair can have both reasons.")
    slopes = steerability_panel(res)
    dropped = explore.dropped_frame(el, train, slopes)
    st.subheader(f"Dropped pairs ({len(dropped)})")
    if dropped.empty:
        st.caption("None: every training pair is eligible at this setting.")
    else:
        st.dataframe(dropped, hide_index=True, key="elig_dropped")


eligibility_panel()
