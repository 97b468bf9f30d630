package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestChartLint(t *testing.T) {
	out := Helm(t, "lint", "--strict", filepath.Join(repo(t), "charts/smtpfleet"))
	if !strings.Contains(out, "0 chart(s) failed") {
		t.Fatalf("helm lint: %s", out)
	}
}

// With rbac.scope=namespace the operator gets Roles only in the watched namespaces, no
// ClusterRole, and is told to watch just those.
func TestChartNamespaceScopedRBAC(t *testing.T) {
	out := Helm(t, "template", "smtpfleet", filepath.Join(repo(t), "charts/smtpfleet"),
		"--namespace", "smtpfleet-system", "--kube-version", "1.36.0", "--set", "rbac.scope=namespace",
		"--set", "watchNamespaces={mail,billing}")
	if strings.Contains(out, "kind: ClusterRole") {
		t.Errorf("namespace scope rendered a ClusterRole:\n%s", out)
	}
	for _, want := range []string{"kind: Role\nmetadata:\n  name: smtpfleet\n  namespace: mail",
		"kind: Role\nmetadata:\n  name: smtpfleet\n  namespace: billing",
		"- --namespace=mail", "- --namespace=billing"} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered chart lacks %q", want)
		}
	}
}

// values.schema.json refuses values the operator could not use.
func TestChartValuesSchema(t *testing.T) {
	_, err := run("", "helm", "template", "smtpfleet", filepath.Join(repo(t), "charts/smtpfleet"),
		"--kube-version", "1.36.0", "--set", "logging.format=xml")
	if err == nil || !strings.Contains(err.Error(), "logging") {
		t.Fatalf("an invalid logging.format was accepted: %v", err)
	}
}
