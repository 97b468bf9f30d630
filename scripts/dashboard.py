#!/usr/bin/env python3
"""Writes the chart's Grafana dashboard, charts/smtpfleet/dashboards/smtpfleet.json.

The panels are listed here once, as data; the JSON is generated so that every panel has
the same layout, data source and variables. Only metrics that smtp-node and the operator
export are used (monitoring/ tests check each name and label against a running node and
operator, and that every query returns data from a real Prometheus).

  scripts/dashboard.py           write the JSON
  scripts/dashboard.py --check   fail if the JSON differs from what this script writes
"""

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "charts/smtpfleet/dashboards/smtpfleet.json"

# The nodes of the selected pools, as the chart's PodMonitor labels them.
N = 'job="smtp-node", namespace=~"$namespace", pool=~"$pool", data_centre=~"$data_centre"'
# The operator, as the chart's ServiceMonitor labels it.
OP = 'job="smtpfleet-operator"'
# The operator's per-pool series, which carry the pool's namespace and name.
OPP = OP + ', namespace=~"$namespace", pool=~"$pool"'
OPPDC = OPP + ', data_centre=~"$data_centre"'
RATE = "$__rate_interval"

# (title, unit, description, [(expr, legend)]) per panel; a string starts a row.
PANELS = [
    "Queue",
    ("Queue depth by data centre", "short",
     "Messages in the spools (smtpnode_spool_messages), summed per data centre.",
     [(f"sum by (namespace, pool, data_centre) (smtpnode_spool_messages{{{N}}})",
       "{{pool}} {{data_centre}}")]),
    ("Queue depth by node", "short",
     "Messages in each node's spool.",
     [(f"sum by (data_centre, pod) (smtpnode_spool_messages{{{N}}})", "{{data_centre}} {{pod}}")]),
    ("Oldest message by data centre", "s",
     "Age of the oldest spooled message: grows while recipients are deferred.",
     [(f"max by (namespace, pool, data_centre) (smtpnode_spool_oldest_message_age_seconds{{{N}}})",
       "{{pool}} {{data_centre}}")]),
    ("Oldest message by node", "s",
     "Age of the oldest message in each node's spool.",
     [(f"max by (data_centre, pod) (smtpnode_spool_oldest_message_age_seconds{{{N}}})",
       "{{data_centre}} {{pod}}")]),
    ("Queued for delivery by node", "short",
     "Messages each node is responsible for delivering (scheduled or in flight).",
     [(f"sum by (data_centre, pod) (smtpnode_outbound_queued_messages{{{N}}})",
       "{{data_centre}} {{pod}}")]),
    ("Nodes answering scrapes", "short",
     "Nodes Prometheus scraped, per data centre; compare with the desired and ready nodes "
     "the operator reports (Nodes and operator).",
     [(f"sum by (namespace, pool, data_centre) (up{{{N}}})", "{{pool}} {{data_centre}}")]),
    ("Spool disk", "percentunit",
     "Free share of each node's spool volume (statvfs on the spool directory), and where the "
     "last 6 hours' trend puts it in 4 hours: SmtpFleetSpoolFillingUp fires when that is below "
     "zero and little is left. A full volume refuses mail (452).",
     [(f"max by (data_centre, pod) (smtpnode_spool_volume_free_bytes{{{N}}})"
       f" / max by (data_centre, pod) (smtpnode_spool_volume_size_bytes{{{N}}})",
       "free {{data_centre}} {{pod}}"),
      (f"max by (data_centre, pod) (predict_linear(smtpnode_spool_volume_free_bytes{{{N}}}[6h], 4 * 3600))"
       f" / max by (data_centre, pod) (smtpnode_spool_volume_size_bytes{{{N}}})",
       "in 4h (predicted) {{data_centre}} {{pod}}")]),
    "Traffic",
    ("Accepted messages", "ops",
     "Messages answered 250 (durable), per second.",
     [(f"sum by (data_centre) (rate(smtpnode_inbound_accepted_messages_total{{{N}}}[{RATE}]))",
       "{{data_centre}}")]),
    ("Recipients by result", "ops",
     "Recipient delivery attempts per second: delivered, deferred (temporary failure), "
     "bounced (permanent failure).",
     [(f"sum by (result) (rate(smtpnode_outbound_recipients_total{{{N}}}[{RATE}]))", "{{result}}")]),
    ("Deferred and bounced ratio", "percentunit",
     "Share of recipient delivery attempts that were deferred or bounced.",
     [(f'sum by (result) (rate(smtpnode_outbound_recipients_total{{{N}, result=~"deferred|bounced"}}[{RATE}]))'
       f" / ignoring (result) group_left sum(rate(smtpnode_outbound_recipients_total{{{N}}}[{RATE}]))",
       "{{result}}")]),
    ("End of DATA to 250", "s",
     "Time from the end of the message data to the 250 reply: the cost of making the "
     "message durable (and replicated).",
     [(f"histogram_quantile(0.5, sum by (le, data_centre) (rate(smtpnode_inbound_accept_latency_seconds_bucket{{{N}}}[{RATE}])))",
       "p50 {{data_centre}}"),
      (f"histogram_quantile(0.99, sum by (le, data_centre) (rate(smtpnode_inbound_accept_latency_seconds_bucket{{{N}}}[{RATE}])))",
       "p99 {{data_centre}}")]),
    ("Refused by reason", "ops",
     "Commands and messages refused, per second, by reason (spool_full, not_replicated, "
     "relay_denied, ...).",
     [(f"sum by (reason) (rate(smtpnode_inbound_rejected_total{{{N}}}[{RATE}]))", "{{reason}}")]),
    ("SMTP sessions", "short",
     "Inbound SMTP sessions in progress.",
     [(f"sum by (data_centre, pod) (smtpnode_inbound_active_sessions{{{N}}})", "{{data_centre}} {{pod}}")]),
    ("Bounce reports", "ops",
     "Delivery status notifications by result.",
     [(f"sum by (result) (rate(smtpnode_outbound_dsn_total{{{N}}}[{RATE}]))", "{{result}}")]),
    ("DKIM signing", "ops",
     "Messages signed at delivery time, by result (no_key: the sender's domain has no key).",
     [(f"sum by (result) (rate(smtpnode_outbound_dkim_signatures_total{{{N}}}[{RATE}]))", "{{result}}")]),
    "TLS",
    ("Outbound connections by TLS state", "ops",
     "Outbound SMTP connections: tls, plaintext, or failed (connect, greeting, or a TLS "
     "handshake the policy required; TLS attempts are counted apart in Outbound TLS).",
     [(f"sum by (result) (rate(smtpnode_outbound_connections_total{{{N}}}[{RATE}]))", "{{result}}")]),
    ("Outbound TLS", "ops",
     "TLS attempts towards receiving servers per second: ok, failed (handshake, certificate "
     "verification, STARTTLS refused; opportunistic delivery then goes on in plaintext) and "
     "not_offered (no STARTTLS). Smarthost tls: none attempts none.",
     [(f"sum by (result) (rate(smtpnode_outbound_tls_total{{{N}}}[{RATE}]))", "{{result}}")]),
    ("Certificate expiry", "s",
     "Time left before the listener certificate each node serves expires (notAfter of the "
     "certificate in use). SmtpFleetCertificateExpiring warns at 14 days, critical at 3.",
     [(f"min by (data_centre, pod) (smtpnode_tls_certificate_not_after_seconds{{{N}}}) - time()",
       "{{data_centre}} {{pod}}")]),
    ("Inbound TLS handshakes", "ops",
     "STARTTLS and implicit-TLS handshakes with clients, by result.",
     [(f"sum by (result) (rate(smtpnode_inbound_tls_handshakes_total{{{N}}}[{RATE}]))", "{{result}}")]),
    "Replication",
    ("Under-replicated messages", "short",
     "Held messages with fewer eligible copies than the replication factor.",
     [(f"sum by (data_centre, pod) (smtpnode_replication_under_replicated_messages{{{N}}})",
       "{{data_centre}} {{pod}}")]),
    ("Takeovers and re-replication", "ops",
     "Messages taken over from a node that left the view, given a new copy, dropped "
     "as never acknowledged (pending copies this node wrote before a restart), and stale "
     "copies dropped.",
     [(f"sum by (data_centre) (rate(smtpnode_replication_takeovers_total{{{N}}}[{RATE}]))",
       "takeovers {{data_centre}}"),
      (f"sum by (data_centre) (rate(smtpnode_replication_rereplicated_total{{{N}}}[{RATE}]))",
       "re-replicated {{data_centre}}"),
      (f"sum by (data_centre) (rate(smtpnode_replication_discarded_total{{{N}}}[{RATE}]))",
       "discarded {{data_centre}}"),
      (f"sum by (data_centre) (rate(smtpnode_replication_stale_dropped_total{{{N}}}[{RATE}]))",
       "stale dropped {{data_centre}}")]),
    ("Fenced nodes", "short",
     "1 while a node cannot renew its Lease: it delivers nothing and answers 451.",
     [(f"max by (data_centre, pod) (smtpnode_replication_fenced{{{N}}})", "{{data_centre}} {{pod}}")]),
    ("Stale and orphaned copies", "short",
     "Stale: copies the node may no longer act on (it left the view since they were "
     "written), dropped once a witness confirms the message done. Orphaned: stale copies "
     "no live holder can vouch for; each may be a message's last copy.",
     [(f"sum by (data_centre, pod) (smtpnode_replication_stale_copies{{{N}}})", "stale {{data_centre}} {{pod}}"),
      (f"sum by (data_centre, pod) (smtpnode_replication_orphaned_copies{{{N}}})",
       "orphaned {{data_centre}} {{pod}}")]),
    ("View epoch", "none",
     "The pool view's epoch as each node last read it: nodes that disagree for long "
     "cannot read the view.",
     [(f"max by (data_centre, pod) (smtpnode_replication_view_epoch{{{N}}})", "{{data_centre}} {{pod}}")]),
    "Nodes and operator",
    ("Desired and ready nodes", "short",
     "Nodes each data centre should run and those ready to accept mail, as the operator "
     "writes them into the RelayPool's status, and the nodes being drained by a scale-down "
     "(also marked by the Drains annotation at the time each drain started).",
     [(f"sum by (namespace, pool, data_centre) (smtpfleet_operator_pool_replicas{{{OPPDC}}})",
       "desired {{pool}} {{data_centre}}"),
      (f"sum by (namespace, pool, data_centre) (smtpfleet_operator_pool_ready_replicas{{{OPPDC}}})",
       "ready {{pool}} {{data_centre}}"),
      (f"count by (namespace, pool, data_centre) (smtpfleet_operator_scale_down_started_timestamp_seconds{{{OPPDC}}})"
       f" or 0 * sum by (namespace, pool, data_centre) (smtpfleet_operator_pool_replicas{{{OPPDC}}})",
       "draining {{pool}} {{data_centre}}")]),
    ("Scale-down conditions", "short",
     "1 while a pool's ScalingDown or ScaleDownBlocked condition is True. "
     "SmtpFleetScaleDownBlocked fires after 15 minutes blocked.",
     [(f'max by (namespace, pool, condition) (smtpfleet_operator_pool_condition{{{OPP}, condition=~"ScalingDown|ScaleDownBlocked"}})',
       "{{pool}} {{condition}}")]),
    ("Task failures", "short",
     "Essential tasks of a node that failed over the dashboard's time range (0: none). The "
     "node exits right after a failure, so a scrape may miss it: pod restarts are the other trace.",
     [(f"sum by (data_centre, pod) (increase(smtpnode_task_failures_total{{{N}}}[$__range]))"
       f" or sum by (data_centre, pod) (0 * smtpnode_spool_messages{{{N}}})",
       "{{data_centre}} {{pod}}")]),
    ("Operator reconciliations", "ops",
     "Reconciliations per second by controller and result.",
     [(f"sum by (controller, result) (rate(smtpfleet_operator_reconcile_total{{{OP}}}[{RATE}]))",
       "{{controller}} {{result}}")]),
    ("Operator reconcile errors", "ops",
     "Failed reconciliations per second by controller and error category (0: none).",
     [(f"sum by (controller, category) (rate(smtpfleet_operator_reconcile_errors_total{{{OP}}}[{RATE}]))"
       f" or sum by (controller) (0 * rate(smtpfleet_operator_reconcile_total{{{OP}}}[{RATE}]))",
       "{{controller}} {{category}}")]),
    ("Operator reconcile duration (p99)", "s",
     "99th percentile of the time one reconciliation takes, per controller.",
     [(f"histogram_quantile(0.99, sum by (le, controller) (rate(smtpfleet_operator_reconcile_duration_seconds_bucket{{{OP}}}[{RATE}])))",
       "{{controller}}")]),
    ("Operator leader", "short",
     "1 for the replica that holds the leader Lease and runs the controllers.",
     [(f"max by (pod, instance) (smtpfleet_operator_leader{{{OP}}})", "{{pod}} {{instance}}")]),
]


def variable(name, label, query, all_value):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard():
    panels = []
    y = 0
    x = 0
    next_id = 1
    for item in PANELS:
        if isinstance(item, str):
            if x:
                y += 8
                x = 0
            panels.append({"id": next_id, "type": "row", "title": item, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            next_id += 1
            y += 1
            continue
        title, unit, description, targets = item
        panels.append({
            "id": next_id,
            "type": "timeseries",
            "title": title,
            "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit, "min": 0,
                                         "custom": {"fillOpacity": 10, "showPoints": "never"}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, (expr, legend) in enumerate(targets)],
        })
        next_id += 1
        x += 8
        if x == 24:
            x = 0
            y += 8
    node_metric = 'smtpnode_spool_messages{job="smtp-node"}'
    return {
        "title": "smtpfleet",
        "uid": "smtpfleet",
        "description": "SMTP relay pools managed by smtpfleet: queue, traffic, TLS, replication, nodes and operator.",
        "tags": ["smtpfleet", "smtp"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "links": [],
        "annotations": {"list": [
            # A mark where each scale-down's drain started: the value is the start time.
            {"name": "Drains", "enable": True, "iconColor": "orange",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "expr": f"max by (namespace, pool, pod) (smtpfleet_operator_scale_down_started_timestamp_seconds{{{OPP}}}) * 1000",
             "useValueForTime": True, "step": "60s",
             "titleFormat": "drain {{pod}}", "textFormat": "scale-down of {{namespace}}/{{pool}} drains {{pod}}"},
        ]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "includeAll": False, "multi": False},
            variable("namespace", "Namespace", f"label_values({node_metric}, namespace)", ".*"),
            variable("pool", "Pool",
                     'label_values(smtpnode_spool_messages{job="smtp-node", namespace=~"$namespace"}, pool)', ".+"),
            variable("data_centre", "Data centre",
                     'label_values(smtpnode_spool_messages{job="smtp-node", namespace=~"$namespace", pool=~"$pool"}, data_centre)',
                     ".+"),
        ]},
        "panels": panels,
    }


def main():
    text = json.dumps(dashboard(), indent=2) + "\n"
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is out of date: run scripts/dashboard.py")
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
