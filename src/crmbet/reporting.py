"""Self-contained HTML report of a segmentation model, with plots.

The report shows segment sizes, a heat map of each segment's feature
medians relative to all players, and the k-selection curves. Plots are
PNG images embedded as base64, so the file opens anywhere without a server.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np

from crmbet.models.bundle import SegmentModel

logger = logging.getLogger(__name__)


def _figure_to_img(figure: object, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(figure)  # type: ignore[arg-type]
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _sizes_plot(model: SegmentModel) -> str:
    import matplotlib.pyplot as plt

    names = [p.name for p in model.profiles]
    sizes = [p.size for p in model.profiles]
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    axis.barh(names[::-1], sizes[::-1], color="#3b6ea5")
    axis.set_xlabel("players")
    axis.set_title("Segment sizes")
    for index, size in enumerate(sizes[::-1]):
        axis.text(size, index, f" {size:,}", va="center", fontsize=8)
    return _figure_to_img(figure, "segment sizes")


def profile_matrix(model: SegmentModel) -> tuple[list[str], list[str], np.ndarray]:
    """Return segment names, feature names and log2 of segment over all medians."""
    features = [
        name for name in model.feature_names if name in model.population_medians
    ]
    names = [p.name for p in model.profiles]
    values = np.zeros((len(names), len(features)))
    for row, profile in enumerate(model.profiles):
        for column, feature in enumerate(features):
            segment = profile.medians.get(feature, 0.0)
            population = model.population_medians.get(feature, 0.0)
            values[row, column] = np.log2(
                (abs(segment) + 1e-3) / (abs(population) + 1e-3)
            )
    return names, features, values


def _heatmap_plot(model: SegmentModel) -> str:
    import matplotlib.pyplot as plt

    names, features, values = profile_matrix(model)
    limit = max(float(np.abs(values).max()), 1e-6)
    figure, axis = plt.subplots(
        figsize=(1.0 + 0.7 * len(features), 0.5 * len(names) + 2)
    )
    image = axis.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(len(features)), features, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_title("Segment profile: log2(segment median / all-player median)")
    figure.colorbar(image, ax=axis, shrink=0.8)
    return _figure_to_img(figure, "segment profile heat map")


def _kselection_plot(model: SegmentModel) -> str:
    import matplotlib.pyplot as plt

    selection = model.k_selection
    if selection is None:
        return "<p>k was fixed by the user, so no k-selection curves were computed.</p>"
    figure, axes = plt.subplots(1, 5, figsize=(17, 3.2))
    series = [*selection.scores.items(), ("combined", selection.combined)]
    for axis, (name, values) in zip(axes, series, strict=True):
        axis.plot(selection.ks, values, marker="o")
        axis.axvline(selection.k, color="#c0392b", linestyle="--", linewidth=1)
        axis.set_title(name.replace("_", " "))
        axis.set_xlabel("k")
    figure.suptitle(
        f"k selection on {selection.sample_size:,} players (chosen k={selection.k})",
        y=1.04,
    )
    return _figure_to_img(figure, "k selection curves")


def _segment_table(model: SegmentModel) -> str:
    keys = list(model.profiles[0].key_statistics()) if model.profiles else []
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = []
    for profile in model.profiles:
        stats = profile.key_statistics()
        cells = "".join(f"<td>{stats[k]:,.3f}</td>" for k in keys)
        campaigns = "<br>".join(html.escape(c.title) for c in profile.campaigns)
        rows.append(
            f"<tr><td>{profile.cluster_id}</td><td>{html.escape(profile.name)}</td>"
            f"<td>{profile.size:,}</td><td>{profile.share:.1%}</td>{cells}"
            f"<td>{campaigns}</td></tr>"
        )
    return (
        "<table><tr><th>id</th><th>segment</th><th>players</th><th>share</th>"
        f"{head}<th>campaigns</th></tr>{''.join(rows)}</table>"
    )


def write_report(
    model: SegmentModel, path: str | Path, title: str = "crmbet segments"
) -> Path:
    """Write the HTML report of ``model`` to ``path`` and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:,.4f}</td></tr>"
        for k, v in sorted(model.metrics.items())
    )
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 14px; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Model {html.escape(model.name)} version {html.escape(str(model.version))}, trained
{html.escape(model.trained_at)} on {int(model.metrics.get("n_players", 0)):,} players,
{model.n_segments} segments.</p>
<h2>Segments</h2>{_segment_table(model)}
{_sizes_plot(model)}
<h2>Profiles</h2>{_heatmap_plot(model)}
<h2>Choice of k</h2>{_kselection_plot(model)}
<h2>Metrics</h2><table>{metrics}</table>
</body></html>
"""
    path.write_text(body, encoding="utf-8")
    logger.info("wrote report to %s", path)
    return path
