package monitoring

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// query is one PromQL expression the chart installs: an alert's, or a dashboard panel's,
// annotation's or variable's.
type query struct {
	where  string // for messages
	expr   string // as parseable PromQL (dashboard variables replaced)
	live   string // as sent to the test's Prometheus
	panel  string // the panel's title, for dashboard queries
	unit   string
	legend string
}

// Grafana's variables as a dashboard with "All" selected sends them, and as the test
// sends them: short rate windows, since it scrapes every second for a few seconds.
var (
	parseVars = strings.NewReplacer("$__rate_interval", "5m", "$__range", "6h",
		"$namespace", ".*", "$pool", ".+", "$data_centre", ".+")
	liveVars = strings.NewReplacer("$__rate_interval", "10s", "$__range", "10m",
		"$namespace", ".*", "$pool", ".+", "$data_centre", ".+")
)

// queries lists every alert expression and dashboard query.
func queries(t *testing.T, in Installed) []query {
	t.Helper()
	var out []query
	for _, a := range alerts(t, in.Rules) {
		out = append(out, query{where: "alert " + a.Alert, expr: a.Expr, live: a.Expr})
	}
	panels, _ := in.Dashboard["panels"].([]any)
	for _, p := range panels {
		panel := p.(map[string]any)
		if panel["type"] == "row" {
			continue
		}
		title := fmt.Sprint(panel["title"])
		unit := ""
		if fc, ok := panel["fieldConfig"].(map[string]any); ok {
			unit, _ = fc["defaults"].(map[string]any)["unit"].(string)
		}
		targets, _ := panel["targets"].([]any)
		if len(targets) == 0 {
			t.Errorf("panel %q has no query", title)
		}
		for _, tg := range targets {
			target := tg.(map[string]any)
			expr := fmt.Sprint(target["expr"])
			out = append(out, query{where: fmt.Sprintf("panel %q", title), expr: parseVars.Replace(expr),
				live: liveVars.Replace(expr), panel: title, unit: unit, legend: fmt.Sprint(target["legendFormat"])})
		}
	}
	// Annotation queries are checked by name only: the one there is marks scale-down
	// drains, which a healthy run does not have.
	annotations, _ := in.Dashboard["annotations"].(map[string]any)
	list, _ := annotations["list"].([]any)
	for _, a := range list {
		annotation := a.(map[string]any)
		expr, ok := annotation["expr"].(string)
		if !ok {
			continue
		}
		out = append(out, query{where: fmt.Sprintf("annotation %q", annotation["name"]),
			expr: parseVars.Replace(expr), live: liveVars.Replace(expr)})
	}
	for _, v := range variables(t, in) {
		out = append(out, query{where: "variable " + v.name, expr: v.expr, live: v.live})
	}
	return out
}

type variable struct {
	name, label string
	expr, live  string // the series selector
}

var labelValues = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// variables lists the dashboard's query variables: label_values(selector, label).
func variables(t *testing.T, in Installed) []variable {
	t.Helper()
	var out []variable
	templating, _ := in.Dashboard["templating"].(map[string]any)
	list, _ := templating["list"].([]any)
	for _, item := range list {
		v := item.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		q, _ := v["query"].(map[string]any)
		text, _ := q["query"].(string)
		m := labelValues.FindStringSubmatch(text)
		if m == nil {
			t.Errorf("variable %v: query %q is not label_values(selector, label)", v["name"], text)
			continue
		}
		// The label must be one the selector's series have: count by (label) (selector).
		expr := fmt.Sprintf("count by (%s) (%s)", m[2], parseVars.Replace(m[1]))
		out = append(out, variable{name: fmt.Sprint(v["name"]), label: m[2], expr: expr, live: liveVars.Replace(m[1])})
	}
	return out
}

// checkNames parses expr and returns what it names that the running processes do not
// export: metric names, label names in selectors, and label names in by/without,
// on/ignoring and group_left/right clauses.
func checkNames(expr string, have exported, targets map[string]bool) []string {
	parsed, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return []string{fmt.Sprintf("does not parse: %v", err)}
	}
	var problems []string
	metrics := map[string]bool{}
	known := func(label string) bool {
		if targets[label] {
			return true
		}
		for m := range metrics {
			if have[m][label] {
				return true
			}
		}
		return false
	}
	parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			name := vs.Name
			if name == "" {
				problems = append(problems, "a selector without a metric name")
				return nil
			}
			labelsOf, exists := have[name]
			if !exists {
				problems = append(problems, fmt.Sprintf("metric %s is not exported", name))
				return nil
			}
			metrics[name] = true
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName || targets[m.Name] {
					continue
				}
				if !labelsOf[m.Name] {
					problems = append(problems, fmt.Sprintf("label %s is not on any sample of %s (it has %s)",
						m.Name, name, names(labelsOf)))
				}
			}
		}
		return nil
	})
	parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
		var used []string
		switch n := node.(type) {
		case *parser.AggregateExpr:
			used = n.Grouping
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				used = append(append(used, n.VectorMatching.MatchingLabels...), n.VectorMatching.Include...)
			}
		}
		for _, l := range used {
			if !known(l) {
				problems = append(problems, fmt.Sprintf("groups or matches by %s, which none of %s has", l, names(metrics)))
			}
		}
		return nil
	})
	return problems
}

func names(set map[string]bool) string {
	var out []string
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return "[" + strings.Join(out, " ") + "]"
}

// metricNames lists the metric names expr selects.
func metricNames(expr string) []string {
	parsed, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil
	}
	var out []string
	parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok && vs.Name != "" {
			out = append(out, vs.Name)
		}
		return nil
	})
	return out
}

// registeredInSource tells whether the source registers the metric: smtp-node's under the
// prefix smtpnode (replication's under smtpnode_replication), the operator's under
// smtpfleet_operator; counters get _total, histograms _bucket, _sum and _count.
func registeredInSource(t *testing.T, name string) bool {
	t.Helper()
	dirs := map[string]string{"smtpnode_": "smtp-node/src", "smtpfleet_operator_": "operator/src"}
	for prefix, dir := range dirs {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		var candidates []string
		for _, suffix := range []string{"_total", "_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(rest, suffix); ok {
				candidates = append(candidates, base, strings.TrimSuffix(base, "_seconds"))
			}
		}
		if len(candidates) == 0 {
			candidates = []string{rest}
		}
		for _, c := range append([]string(nil), candidates...) {
			if sub, ok := strings.CutPrefix(c, "replication_"); ok {
				candidates = append(candidates, sub)
			}
		}
		found := false
		_ = filepath.WalkDir(filepath.Join(repo(t), dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".rs") || found {
				return err
			}
			text, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, c := range candidates {
				if regexp.MustCompile(`\.register(_with_unit)?\(\s*"` + regexp.QuoteMeta(c) + `"`).Match(text) {
					found = true
				}
			}
			return nil
		})
		return found
	}
	return false
}

// The name check finds what it is for: unknown metrics, and labels that neither the
// metric's samples nor the scrape carry, in selectors, groupings and vector matching.
func TestCheckNames(t *testing.T) {
	have := exported{}
	have.add(`# TYPE smtpnode_outbound_recipients counter
smtpnode_outbound_recipients_total{result="delivered",route="mx"} 3
# TYPE smtpnode_spool_messages gauge
smtpnode_spool_messages 4
`)
	targets := map[string]bool{"job": true, "pod": true, "data_centre": true}
	for expr, want := range map[string]string{
		`sum by (data_centre, result) (rate(smtpnode_outbound_recipients_total{job="smtp-node", route="mx"}[5m]))`: "",
		`smtpnode_spool_messages{pod="a"} / ignoring (pod) group_left sum(smtpnode_spool_messages)`:                "",
		`smtpnode_spool_message`:                                         "metric smtpnode_spool_message is not exported",
		`smtpnode_spool_messages{reason="x"}`:                            "label reason is not on any sample",
		`sum by (data_center) (smtpnode_spool_messages)`:                 "groups or matches by data_center",
		`sum by (result) (smtpnode_spool_messages)`:                      "groups or matches by result",
		`smtpnode_spool_messages * on (route) smtpnode_spool_messages`:   "groups or matches by route",
		`sum(rate(smtpnode_outbound_recipients_total{result=~"x"}[1m]))`: "",
		`sum(rate(smtpnode_outbound_recipients_total[1m])`:               "does not parse",
	} {
		problems := strings.Join(checkNames(expr, have, targets), "; ")
		if want == "" && problems != "" || !strings.Contains(problems, want) {
			t.Errorf("%s: problems %q, want %q", expr, problems, want)
		}
	}
}
