"""The report page's stylesheet, inlined into the page (nothing is loaded at view time)."""

CSS = """
:root { --ink: #222; --muted: #666; --line: #e3e3e3; --bg: #fafafa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
header { padding: 20px 32px 8px; border-bottom: 1px solid var(--line); background: var(--bg); position: sticky; top: 0; z-index: 1; }
h1 { margin: 0 0 4px; font-size: 22px; }
h2 { margin: 0 0 12px; font-size: 18px; border-bottom: 2px solid #4e79a7; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
h4 { font-size: 13px; margin: 12px 0 6px; color: var(--muted); }
.meta { color: var(--muted); margin: 0 0 8px; font-size: 12px; }
nav a { margin-right: 14px; font-size: 13px; color: #4e79a7; text-decoration: none; }
main { padding: 8px 32px 48px; max-width: 1300px; }
section { margin: 28px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 170px; background: var(--bg); }
.card .k { color: var(--muted); font-size: 12px; } .card .v { font-size: 17px; font-weight: 600; }
table.data { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
table.data th, table.data td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
table.data th { background: var(--bg); font-weight: 600; }
table.compact td, table.compact th { padding: 3px 8px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-done { color: #3b7d3a; } .state-failed { color: #c0392b; } .state-partial { color: #a07d00; }
.figure { overflow-x: auto; margin: 6px 0; }
.row { display: flex; flex-wrap: wrap; gap: 10px; }
.small .cap { font-size: 12px; color: var(--muted); }
.dist { margin: 6px 0 16px; } .dist .label { font-weight: 600; margin-bottom: 2px; }
.side { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.empty, .note { color: var(--muted); font-style: italic; }
details.examples { margin: 6px 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px 10px; }
details.examples summary { cursor: pointer; font-weight: 600; }
details:target { border-color: #4e79a7; }
.pair { display: flex; gap: 12px; flex-wrap: wrap; }
.chat { border-left: 3px solid var(--line); margin: 8px 0; padding: 2px 10px; max-width: 620px; }
.sid { font-family: ui-monospace, monospace; font-size: 11px; color: var(--muted); }
.msg { white-space: pre-wrap; margin: 4px 0; padding: 4px 8px; border-radius: 6px; background: #f3f5f8; }
.msg.assistant { background: #eef6ee; } .msg.system { background: #f6f1e7; } .msg.none { background: none; color: var(--muted); }
.role { font-weight: 600; margin-right: 6px; font-size: 12px; color: var(--muted); }
svg.chart { max-width: 100%; height: auto; }
.dag svg.chart { max-width: none; }
"""
