package e2e

import (
	"strings"
	"testing"
	"time"
)

const widgetCRD = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.smtpfleet.io
spec:
  group: smoke.smtpfleet.io
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                replicas: { type: integer }
              x-kubernetes-validations:
                - rule: "self.replicas <= 5"
                  message: "spec.replicas must be at most 5"
`

// The API server enforces CEL rules from a CRD: what smtpfleet's validation relies on.
func TestSmokeCELValidation(t *testing.T) {
	MustApply(t, widgetCRD)
	t.Cleanup(func() { _, _ = KubectlErr("delete", "crd", "widgets.smoke.smtpfleet.io", "--wait=false") })
	Kubectl(t, "wait", "--for=condition=Established", "crd/widgets.smoke.smtpfleet.io", "--timeout=60s")
	ns := Namespace(t, "smoke-cel")

	widget := func(replicas string) string {
		return "apiVersion: smoke.smtpfleet.io/v1\nkind: Widget\nmetadata: {name: w}\nspec: {replicas: " + replicas + "}\n"
	}
	out, err := Apply(widget("9"), "-n", ns)
	if err == nil {
		t.Fatalf("an invalid Widget was accepted: %s", out)
	}
	if !strings.Contains(out, "spec.replicas must be at most 5") {
		t.Fatalf("refusal does not carry the rule's message: %s", out)
	}
	MustApply(t, widget("3"), "-n", ns)
}

// kwok marks StatefulSet pods Running and Ready on fake nodes spread over two zones.
func TestSmokeStatefulSetReady(t *testing.T) {
	ns := Namespace(t, "smoke-sts")
	MustApply(t, `
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: smoke}
spec:
  replicas: 2
  serviceName: smoke
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec:
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: DoNotSchedule
          labelSelector: {matchLabels: {app: smoke}}
      containers:
        - {name: c, image: busybox}
`, "-n", ns)
	Eventually(t, 90*time.Second, "two smoke pods", func() (bool, string) {
		out, err := KubectlErr("get", "pods", "-n", ns, "-l", "app=smoke", "-o", "name")
		return err == nil && len(strings.Fields(out)) == 2, out
	})
	Kubectl(t, "wait", "-n", ns, "--for=condition=Ready", "pod", "-l", "app=smoke", "--timeout=90s")
	nodes := Kubectl(t, "get", "pods", "-n", ns, "-l", "app=smoke", "-o", "jsonpath={.items[*].spec.nodeName}")
	zones := map[string]bool{}
	for _, node := range strings.Fields(nodes) {
		zones[strings.TrimSpace(Kubectl(t, "get", "node", node, "-o", "jsonpath={.metadata.labels.topology\\.kubernetes\\.io/zone}"))] = true
	}
	if len(zones) != 2 {
		t.Fatalf("pods not spread over both zones: nodes %q, zones %v", nodes, zones)
	}
}

// The garbage collector deletes owned objects when the owner goes.
func TestSmokeGarbageCollector(t *testing.T) {
	ns := Namespace(t, "smoke-gc")
	Kubectl(t, "create", "configmap", "owner", "-n", ns)
	uid := strings.TrimSpace(Kubectl(t, "get", "configmap", "owner", "-n", ns, "-o", "jsonpath={.metadata.uid}"))
	MustApply(t, `
apiVersion: v1
kind: ConfigMap
metadata:
  name: owned
  ownerReferences:
    - {apiVersion: v1, kind: ConfigMap, name: owner, uid: `+uid+`}
`, "-n", ns)
	Kubectl(t, "delete", "configmap", "owner", "-n", ns)
	Eventually(t, 60*time.Second, "the owned ConfigMap to be collected", func() (bool, string) {
		out, err := KubectlErr("get", "configmap", "owned", "-n", ns)
		return err != nil && strings.Contains(out, "NotFound"), out
	})
}
