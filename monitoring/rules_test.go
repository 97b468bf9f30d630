package monitoring

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// alertingRule is one alert of the rendered PrometheusRule.
type alertingRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func alerts(t *testing.T, spec map[string]any) []alertingRule {
	t.Helper()
	text, err := yaml.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var groups struct {
		Groups []struct {
			Rules []alertingRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(text, &groups); err != nil {
		t.Fatal(err)
	}
	var out []alertingRule
	for _, g := range groups.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatal("the PrometheusRule has no alerts")
	}
	return out
}

// writeRules writes the PrometheusRule's spec as a Prometheus rule file.
func writeRules(t *testing.T, dir string, spec map[string]any) string {
	t.Helper()
	text, err := yaml.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, text, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// The rules as installed pass promtool's checks and the unit tests in rules_test.yaml,
// which test every alert both firing and not firing.
func TestRules(t *testing.T) {
	in := installed(t)
	dir := t.TempDir()
	writeRules(t, dir, in.Rules)
	tests, err := os.ReadFile("rules_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules_test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log(must(t, dir, "promtool", "check", "rules", "rules.yaml"))
	t.Log(must(t, dir, "promtool", "test", "rules", "rules_test.yaml"))

	var unit struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(tests, &unit); err != nil {
		t.Fatal(err)
	}
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, group := range unit.Tests {
		for _, c := range group.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				firing[c.Alertname] = true
			} else {
				quiet[c.Alertname] = true
			}
		}
	}
	for _, a := range alerts(t, in.Rules) {
		if !firing[a.Alert] {
			t.Errorf("rules_test.yaml has no case where %s fires", a.Alert)
		}
		if !quiet[a.Alert] {
			t.Errorf("rules_test.yaml has no case where %s stays quiet", a.Alert)
		}
	}
}

// Every alert has the project's prefix, a severity (one rule per name and severity), a summary, a description and a
// runbook in docs/runbooks/ that its runbook_url points at.
func TestAlertsHaveRunbooks(t *testing.T) {
	in := installed(t)
	base := "https://github.com/smtpfleet/smtpfleet/blob/main/docs/runbooks/"
	seen := map[string]bool{}
	severities := map[string]bool{}
	for _, a := range alerts(t, in.Rules) {
		if !strings.HasPrefix(a.Alert, "SmtpFleet") {
			t.Errorf("%s: alert names start with SmtpFleet", a.Alert)
		}
		// One name may have one rule per severity (a warning, then a critical threshold).
		if severities[a.Alert+"/"+a.Labels["severity"]] {
			t.Errorf("%s: defined twice with severity %q", a.Alert, a.Labels["severity"])
		}
		severities[a.Alert+"/"+a.Labels["severity"]] = true
		seen[a.Alert] = true
		switch a.Labels["severity"] {
		case "critical", "warning", "info":
		default:
			t.Errorf("%s: severity %q", a.Alert, a.Labels["severity"])
		}
		for _, key := range []string{"summary", "description"} {
			if strings.TrimSpace(a.Annotations[key]) == "" {
				t.Errorf("%s: no %s", a.Alert, key)
			}
		}
		if got, want := a.Annotations["runbook_url"], base+a.Alert+".md"; got != want {
			t.Errorf("%s: runbook_url %q, want %q", a.Alert, got, want)
		}
		page, err := os.ReadFile(filepath.Join(repo(t), "docs/runbooks", a.Alert+".md"))
		if err != nil {
			t.Errorf("%s: %v", a.Alert, err)
			continue
		}
		text := string(page)
		if !strings.HasPrefix(text, "# "+a.Alert+"\n") {
			t.Errorf("docs/runbooks/%s.md does not start with its title", a.Alert)
		}
		for _, section := range []string{"## What it means", "## What to look at", "## What to do"} {
			if !strings.Contains(text, section) {
				t.Errorf("docs/runbooks/%s.md has no %q", a.Alert, section)
			}
		}
	}
	index, err := os.ReadFile(filepath.Join(repo(t), "docs/runbooks/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name := range seen {
		if !strings.Contains(string(index), "("+name+".md)") {
			t.Errorf("docs/runbooks/README.md does not list %s", name)
		}
	}
}
