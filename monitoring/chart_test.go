// Package monitoring checks what the chart's monitoring options install: the alert rules
// with promtool, the metric names and labels of every alert and dashboard query against
// what a running smtp-node and operator export, and every dashboard query against a real
// Prometheus that scrapes them. monitoring/run.sh builds and starts what these tests need.
package monitoring

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// commandTimeout bounds every helm, promtool and kubectl call.
const commandTimeout = 2 * time.Minute

// The release as the tests render it.
const (
	release          = "smtpfleet"
	releaseNamespace = "smtpfleet-system"
)

// repo is the root of the smtpfleet checkout.
func repo(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("SMTPFLEET_REPO"); dir != "" {
		return dir
	}
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// run executes a command with a timeout and returns its combined output.
func run(dir, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("%s %s: timed out after %s", name, strings.Join(args, " "), commandTimeout)
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

func must(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	out, err := run(dir, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// monitoringAPIs are the --api-versions a cluster with the Prometheus Operator serves.
var monitoringAPIs = []string{
	"--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
	"--api-versions", "monitoring.coreos.com/v1/PodMonitor",
	"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
}

// everythingOn switches on every monitoring option.
var everythingOn = []string{
	"--set", "metrics.serviceMonitor.enabled=true",
	"--set", "monitoring.podMonitor.enabled=true",
	"--set", "monitoring.rules.enabled=true",
	"--set", "monitoring.dashboard.enabled=true",
}

// render runs helm template on the chart and returns its documents.
func render(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	full := append([]string{"template", release, filepath.Join(repo(t), "charts/smtpfleet"),
		"--namespace", releaseNamespace, "--kube-version", "1.36.0"}, args...)
	out := must(t, "", "helm", full...)
	var docs []map[string]any
	dec := yaml.NewDecoder(strings.NewReader(out))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("helm template output: %v", err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs
}

// Installed is what the chart renders with every monitoring option on, on a cluster that
// serves monitoring.coreos.com/v1.
type Installed struct {
	Rules          map[string]any // PrometheusRule .spec
	PodMonitor     map[string]any
	ServiceMonitor map[string]any
	Dashboard      map[string]any // the dashboard JSON
	DashboardMap   map[string]any // its ConfigMap
}

func installed(t *testing.T) Installed {
	t.Helper()
	var in Installed
	for _, doc := range render(t, append(monitoringAPIs, everythingOn...)...) {
		switch doc["kind"] {
		case "PrometheusRule":
			in.Rules = doc["spec"].(map[string]any)
		case "PodMonitor":
			in.PodMonitor = doc
		case "ServiceMonitor":
			in.ServiceMonitor = doc
		case "ConfigMap":
			data, _ := doc["data"].(map[string]any)
			if text, ok := data["smtpfleet.json"].(string); ok {
				in.DashboardMap = doc
				if err := yaml.Unmarshal([]byte(text), &in.Dashboard); err != nil {
					t.Fatalf("dashboard JSON: %v", err)
				}
			}
		}
	}
	if in.Rules == nil || in.PodMonitor == nil || in.ServiceMonitor == nil || in.Dashboard == nil {
		t.Fatalf("the chart did not render a PrometheusRule, PodMonitor, ServiceMonitor and dashboard: %+v", in)
	}
	return in
}

// Nothing is rendered unless asked for, and the Prometheus Operator's kinds only where
// the cluster serves them.
func TestChartMonitoringOptIn(t *testing.T) {
	kinds := func(docs []map[string]any) map[string]int {
		out := map[string]int{}
		for _, d := range docs {
			out[fmt.Sprint(d["kind"])]++
		}
		return out
	}
	byDefault := kinds(render(t, monitoringAPIs...))
	for _, kind := range []string{"PrometheusRule", "PodMonitor", "ServiceMonitor"} {
		if byDefault[kind] != 0 {
			t.Errorf("default values render a %s", kind)
		}
	}
	withoutAPI := kinds(render(t, everythingOn...))
	for _, kind := range []string{"PrometheusRule", "PodMonitor"} {
		if withoutAPI[kind] != 0 {
			t.Errorf("a %s was rendered for a cluster without monitoring.coreos.com/v1", kind)
		}
	}
	in := installed(t)
	labels := in.DashboardMap["metadata"].(map[string]any)["labels"].(map[string]any)
	if labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap lacks the sidecar label grafana_dashboard=1: %v", labels)
	}
	if out, err := run("", "/usr/bin/python3", filepath.Join(repo(t), "scripts/dashboard.py"), "--check"); err != nil {
		t.Errorf("the chart's dashboard is not what scripts/dashboard.py generates: %v %s", err, out)
	}
}
