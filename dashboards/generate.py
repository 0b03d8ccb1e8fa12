#!/usr/bin/env python3
"""Writes the checked-in dashboards from one list of panels, so the Graphite
dashboard and the Grafana model never disagree on a metric name.

    python3 dashboards/generate.py          rewrite both files
    python3 dashboards/generate.py --check  exit 1 if either file is stale

Outputs (next to this script):
  graphite-dashboard.json  graphite-web dashboard state (what its dashboard UI
                           saves and loads: POST /dashboard/save/<name> state=...)
  grafana-dashboard.json   Grafana dashboard JSON model, Graphite datasource
                           chosen at import (${DS_GRAPHITE})

Metric paths are the ones statsd (legacyNamespace: false, globalPrefix
"stats") writes to Graphite for the names the Switchboard processes send:
  counter switchboard.<process>.<name>  → stats.counters.switchboard.<process>.<name>.rate  (per second)
                                           stats.counters.switchboard.<process>.<name>.count (per flush)
  gauge   switchboard.<process>.<name>  → stats.gauges.switchboard.<process>.<name>
"""
import json
import os
import sys
from urllib.parse import urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
SLO_MS = 25

C = "stats.counters.switchboard."  # + <process>.<name>.rate|count
G = "stats.gauges.switchboard."    # + <process>.<name>


def rate(path, alias):
    return f"alias({C}{path}.rate,'{alias}')"


# Each panel: title, unit (Grafana), vtitle (Graphite), targets, options.
# The first four are the main panels (scripts/render-dashboard renders them).
PANELS = [
    dict(
        title="Request rate (terminator)",
        unit="reqps", vtitle="requests/s",
        targets=[rate("terminator.requests", "requests/s")],
    ),
    dict(
        title=f"p99 latency vs {SLO_MS} ms target (terminator, all routes)",
        unit="ms", vtitle="ms",
        targets=[
            f"alias({G}terminator.latency.p99,'p99')",
        ],
        slo=SLO_MS,
    ),
    dict(
        title="Errors by class (terminator)",
        unit="reqps", vtitle="responses/s",
        targets=[
            rate("terminator.status.4xx", "4xx"),
            rate("terminator.status.5xx", "5xx"),
            rate("terminator.status.504", "504 deadline"),
            rate("terminator.shed", "503 shed"),
            rate("terminator.no_instance", "503 no instance"),
        ],
    ),
    dict(
        title="In flight",
        unit="short", vtitle="requests",
        targets=[
            f"alias({G}terminator.in_flight,'terminator (HTTP)')",
            f"aliasByNode({G}*.service.in_flight,3)",
        ],
    ),
    # ---- detail panels below the main four
    dict(
        title="Latency percentiles (terminator, all routes)",
        unit="ms", vtitle="ms",
        targets=[
            f"alias({G}terminator.latency.p50,'p50')",
            f"alias({G}terminator.latency.p90,'p90')",
            f"alias({G}terminator.latency.p99,'p99')",
            f"alias({G}terminator.latency.p999,'p99.9')",
            f"alias({G}terminator.latency.max,'max')",
        ],
        slo=SLO_MS,
    ),
    dict(
        title="Bus call p99 by caller, service, method",
        unit="ms", vtitle="ms",
        targets=[f"aliasByNode({G}*.bus.*.*.latency.p99,3,5,6)"],
        slo=SLO_MS,
    ),
    dict(
        title="Bus calls and failures by caller, service",
        unit="reqps", vtitle="per second",
        targets=[
            f"aliasByNode({C}*.bus.*.calls.rate,3,5,6)",
            f"aliasByNode({C}*.bus.*.timeouts.rate,3,5,6)",
            f"aliasByNode({C}*.bus.*.late.rate,3,5,6)",
            f"aliasByNode({C}*.bus.*.no_instance.rate,3,5,6)",
            f"aliasByNode({C}*.bus.*.send_queue_full.rate,3,5,6)",
        ],
    ),
    dict(
        title="Bus pending calls and endpoints by caller, service",
        unit="short", vtitle="",
        targets=[
            f"aliasByNode({G}*.bus.*.pending,3,5,6)",
            f"aliasByNode({G}*.bus.*.endpoints,3,5,6)",
        ],
    ),
    dict(
        title="Services: received and dropped",
        unit="reqps", vtitle="per second",
        targets=[
            f"aliasByNode({C}*.service.received.rate,3,5)",
            f"aliasByNode({C}*.service.expired_on_arrival.rate,3,5)",
            f"aliasByNode({C}*.service.overloaded.rate,3,5)",
        ],
    ),
    dict(
        title="Service p99 by process, method",
        unit="ms", vtitle="ms",
        targets=[f"aliasByNode({G}*.service.*.latency.p99,3,5)"],
        slo=SLO_MS,
    ),
    dict(
        title="Open connections (terminator)",
        unit="short", vtitle="connections",
        targets=[f"alias({G}terminator.connections,'connections')"],
    ),
]
MAIN = 4

GRAPH_W, GRAPH_H = 600, 300


def graphite_targets(p):
    t = list(p["targets"])
    if "slo" in p:
        t.append(f"alias(dashed(color(constantLine({p['slo']}),'red')),'{p['slo']} ms target')")
    return t


def graphite_params(p):
    params = {
        "target": graphite_targets(p),
        "title": p["title"],
        "vtitle": p["vtitle"],
        "yMin": 0,
        "lineWidth": 2,
    }
    if not p["vtitle"]:
        del params["vtitle"]
    return params


def graphite_state():
    default = {"from": "-10minutes", "until": "now", "width": GRAPH_W, "height": GRAPH_H}
    graphs = []
    for p in PANELS:
        params = graphite_params(p)
        target_string = "&".join("target=" + t for t in params["target"])
        url = "/render?" + urlencode({**default, **params}, doseq=True)
        graphs.append([target_string, params, url])
    return {
        "name": "switchboard",
        "timeConfig": {
            "type": "relative",
            "relativeStartQuantity": "10",
            "relativeStartUnits": "minutes",
            "relativeUntilQuantity": "",
            "relativeUntilUnits": "now",
            "startDate": "2024-01-01T00:00:00.000Z",
            "startTime": "9:00 AM",
            "endDate": "2024-01-01T00:00:00.000Z",
            "endTime": "5:00 PM",
        },
        "refreshConfig": {"enabled": True, "interval": 10000},
        "graphSize": {"width": GRAPH_W, "height": GRAPH_H},
        "defaultGraphParams": default,
        "graphs": graphs,
    }


def grafana_model():
    ds = {"type": "graphite", "uid": "${DS_GRAPHITE}"}
    panels = []
    for i, p in enumerate(PANELS):
        defaults = {
            "unit": p["unit"],
            "min": 0,
            "custom": {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 0,
                       "spanNulls": True, "showPoints": "never"},
            "color": {"mode": "palette-classic"},
        }
        if "slo" in p:
            defaults["thresholds"] = {"mode": "absolute", "steps": [
                {"color": "green", "value": None},
                {"color": "red", "value": p["slo"]},
            ]}
            defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": p["title"],
            "datasource": ds,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}},
            "targets": [{"refId": chr(ord("A") + j), "datasource": ds, "target": t}
                        for j, t in enumerate(p["targets"])],
        })
    return {
        "__inputs": [{"name": "DS_GRAPHITE", "label": "Graphite", "description": "Graphite fed by statsd",
                      "type": "datasource", "pluginId": "graphite", "pluginName": "Graphite"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
            {"type": "datasource", "id": "graphite", "name": "Graphite", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "uid": "switchboard",
        "title": "Switchboard",
        "description": f"Request rate, p99 against the {SLO_MS} ms target, errors by class, in flight. "
                       "Generated by dashboards/generate.py.",
        "tags": ["switchboard", "statsd"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-15m", "to": "now"},
        "refresh": "10s",
        "timepicker": {},
        "timezone": "",
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def render(obj):
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def main():
    outputs = {
        os.path.join(HERE, "graphite-dashboard.json"): render(graphite_state()),
        os.path.join(HERE, "grafana-dashboard.json"): render(grafana_model()),
    }
    if sys.argv[1:] == ["--check"]:
        stale = [p for p, text in outputs.items()
                 if not os.path.exists(p) or open(p).read() != text]
        for p in stale:
            print(f"stale: {os.path.relpath(p)} (run python3 dashboards/generate.py)", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for path, text in outputs.items():
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
