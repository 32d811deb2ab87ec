"""The Jinja2 template of ``RUN_DIR/report.html`` (autoescaped; rendered by
:mod:`fedll.report.html`).

It is a Python module, not a ``.j2`` package-data file, because a Flower app bundle (FAB)
carries only Python, TOML, Markdown, YAML and JSON files: under ``flwr run`` and in deployment
the ServerApp imports fedll from the FAB, where a template file would be missing.
"""

# ruff: noqa: E501  (the page's HTML and CSS lines, as written)

PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedll report: {{ title }}</title>
<style>
  :root { --ink: #1d232a; --muted: #5d6873; --line: #d9dee3; --band: #f4f6f8; --accent: #1f5f99; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: var(--ink); background: #fff; }
  main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
  h1 { font-size: 1.6rem; margin: 0 0 4px; }
  h2 { font-size: 1.2rem; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
  h3 { font-size: 1rem; margin: 18px 0 6px; color: var(--muted); font-weight: 600; }
  .sub { color: var(--muted); margin: 0 0 18px; }
  nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
  dl.brief { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
  dl.brief dt { font-weight: 600; color: var(--muted); }
  dl.brief dd { margin: 0; }
  .scroll { overflow-x: auto; }
  table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
  th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
  th { background: var(--band); position: sticky; top: 0; }
  tbody tr:hover { background: #eef4fa; }
  details { margin: 12px 0; }
  summary { cursor: pointer; color: var(--accent); font-weight: 600; }
  figure { margin: 10px 0 22px; }
  /* at the plot's own size (120 dpi), narrowed only to fit the page */
  figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
  .ok { color: #2b7a3d; }
  .warn { color: #a34a00; }
  .note { color: var(--muted); font-size: 13px; }
  .constant { font-size: 13px; margin: 4px 0; }
  td.na { cursor: help; text-decoration: underline dotted; }
  dl.defs dt { font-weight: 600; margin-top: 8px; }
  dl.defs dd { margin: 2px 0 0 16px; }
</style>
</head>
<body>
<main>
<h1>fedll report: {{ title }}</h1>
<p class="sub">{{ n_trials }} trial{{ "s" if n_trials != 1 }} · {{ run_dir }} · written {{ created }}</p>
<nav>
  <a href="#scenario">Scenario</a><a href="#forgetting">Forgetting</a>
  {% if pairs %}<a href="#pairs">Model pairs</a>{% endif %}
  {% if privacy %}<a href="#privacy">Differential privacy</a>{% endif %}
  {% if detection_table %}<a href="#detection">HD95, detection, surface Dice</a>{% endif %}
  {% for section in sections %}<a href="#fig-{{ loop.index }}">{{ section.title }}</a>{% endfor %}
  <a href="#trials">Trials</a><a href="#provenance">Provenance</a><a href="#definitions">Definitions</a>
</nav>

<h2 id="scenario">Scenario</h2>
{% if brief %}
<dl class="brief">
  {% for label, text in brief %}<dt>{{ label }}</dt><dd>{{ text }}</dd>
  {% endfor %}
</dl>
{% else %}
<p class="note">No scenario.yaml in the run directory.</p>
{% endif %}

<h2 id="forgetting">Forgetting</h2>
<p class="note">Mean over seeds [its 95 % interval: mean ± t(0.975, n − 1) · std / √n over the
  n seeds; the mean alone with one seed, whose rows are not compared]; (n=k) where only k seeds
  have a value. Each column's name links
  to its <a href="#definitions">definition</a> (forgetting after Chaudhry et al. 2018, BWT after
  Lopez-Paz &amp; Ranzato 2017; derived in the docs' definitions page).</p>
{% if left_out %}
<p class="warn">Partial report: {{ left_out | length }} trial(s) of incomplete configurations are left out.</p>
{% endif %}
{% macro render_table(data) %}
{% if data.constant %}
<p class="constant">In every row: {% for name, value in data.constant %}<span><b>{{ name }}</b> {{ value }}</span>{{ " · " if not loop.last }}{% endfor %}</p>
{% endif %}
<div class="scroll"><table>
  <thead><tr>{% for c in data.columns %}{% if c in data.links %}<th><a href="#{{ data.links[c] }}" title="definition">{{ c }}</a></th>{% else %}<th>{{ c }}</th>{% endif %}{% endfor %}</tr></thead>
  <tbody>
  {% for row in data.rows %}<tr>{% for cell in row %}{% set column = data.columns[loop.index0] %}{% if cell == "n/a" and column in data.na %}<td class="na" title="n/a: {{ data.na[column] }}">n/a</td>{% else %}<td>{{ cell }}</td>{% endif %}{% endfor %}</tr>
  {% endfor %}
  </tbody>
</table></div>
{% endmacro %}
{{ render_table(key_table) }}
<details>
  <summary>Every measure ({{ full_table.columns | length }} columns)</summary>
  {{ render_table(full_table) }}
</details>
{% if pairs %}
<h2 id="pairs">Model pairs</h2>
<p class="note">Each pair's paired difference (later − earlier model; paired by seed and test
  case) with its 95 % t interval over seeds and test cases; * where it excludes 0. "No
  difference detected" is not "no difference": the interval says how large a difference the
  run could have missed. Every measure: <code>fedll report RUN_DIR --compare MODEL</code>.</p>
{{ render_table(pairs) }}
{% endif %}

{% if privacy %}
<p class="note">{{ privacy.clause }}.</p>

<h2 id="privacy">Differential privacy</h2>
<p class="note">{{ privacy.caption }}</p>
{{ render_table(privacy.table) }}
{% endif %}

{% if detection_table %}
<h2 id="detection">HD95, detection and surface Dice</h2>
<p class="note">HD95 (mm) is the mean over the test cases with a non-empty prediction (n/a:
  none detected); the detection rate is the share of test cases (each has tumour) with a
  non-empty prediction; surface Dice the share of both surfaces within the scenario's
  tolerance of the other (evaluation.surface_tolerance_mm, 2 mm by default). Mean over seeds [95 % interval]. Every measure of each is in
  tables/forgetting_hd95.*, forgetting_detection_rate.* and forgetting_surface_dice.*;
  BraTS's HD95, which counts a
  missed case at 373.13 mm, in tables/forgetting_hd95_brats.*.</p>
{{ render_table(detection_table) }}
{% endif %}

{% for section in sections %}
<h2 id="fig-{{ loop.index }}">{{ section.title }}</h2>
{% for fig in section.figures %}
<figure>
  <img src="{{ fig.src }}" alt="{{ section.title }}: {{ fig.title }}">
</figure>
{% endfor %}
{% endfor %}

<h2 id="trials">Trials</h2>
<div class="scroll"><table>
  <thead><tr><th>trial</th><th>wall time</th><th>arithmetic</th><th>failed updates</th><th>rejected updates</th></tr></thead>
  <tbody>
  {% for t in trials %}
  <tr>
    <td>{{ t.trial }}</td>
    <td>{{ "%.1f s" | format(t.wall_s) if t.wall_s is not none else "not recorded" }}</td>
    <td>{{ t.arithmetic or "not recorded" }}</td>
    {% for kind in ("failed", "rejected") %}
    {% set events = t[kind] %}
    <td>{% if events is none %}<span class="note">no seal</span>{% elif events %}<span class="warn">{{ events | join("; ") }}</span>{% else %}<span class="ok">none</span>{% endif %}</td>
    {% endfor %}
  </tr>
  {% endfor %}
  </tbody>
</table></div>

<h2 id="provenance">Provenance</h2>
{% if provenance %}
<dl class="brief">
  {% for label, text in provenance %}<dt>{{ label }}</dt><dd>{{ text }}</dd>
  {% endfor %}
</dl>
{% else %}
<p class="note">No provenance.json in the run directory (written by <code>fedll run</code>).</p>
{% endif %}

<h2 id="definitions">Definitions</h2>
<p class="note">Each measure as fedll computes it (fedll/evaluation/metrics/lifelong.py), from a trial's
  matrix R: R[t, m] the mean over modality m's test cases after round t, T the last round; a
  table of another metric (HD95, surface Dice, detection rate) takes the same definitions
  with it in place of Dice, and for HD95, where lower is better, forgetting is its rise. The
  docs' definitions page (docs/definitions.md) derives each. A table cell's n/a says why when
  pointed at.</p>
<dl class="defs">
  {% for d in definitions %}<dt id="{{ d.anchor }}">{{ d.label }}</dt><dd>{{ d.text }}{% if d.na %} <span class="note">n/a where {{ d.na }}.</span>{% endif %}</dd>
  {% endfor %}
</dl>
</main>
</body>
</html>
"""
