package e2e

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

const (
	chartNamespace = "smtpfleet-system"
	release        = "smtpfleet"
	mailNamespace  = "mail" // the namespace of examples/
	pool           = "outbound"
)

// TestJourney walks what a platform engineer does: install the chart, apply the examples,
// wait for the pool, get refused for bad specs, scale, add and remove a data centre,
// watch drift repaired, and delete the pool.
func TestJourney(t *testing.T) {
	root := repo(t)
	t.Cleanup(func() {
		_, _ = KubectlErr("delete", "namespace", mailNamespace, "--wait=false")
		_, _ = run("", "helm", "uninstall", release, "-n", chartNamespace, "--wait", "--timeout", "60s")
	})

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("helm install", func(t *testing.T) {
		Helm(t, "install", release, filepath.Join(root, "charts/smtpfleet"),
			"--namespace", chartNamespace, "--create-namespace", "--wait", "--timeout", "3m")
		Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
			"crd/relaypools.smtpfleet.io", "crd/maildomains.smtpfleet.io")
		Kubectl(t, "-n", chartNamespace, "rollout", "status", "deployment/smtpfleet", "--timeout=120s")
		for _, object := range []string{"serviceaccount/smtpfleet", "service/smtpfleet-metrics", "role/smtpfleet-leader-election"} {
			if !exists(chartNamespace, object) {
				t.Errorf("the chart did not create %s", object)
			}
		}
		notes := Helm(t, "get", "notes", release, "-n", chartNamespace)
		if !strings.Contains(notes, "kubectl wait --for=condition=Ready relaypool") {
			t.Errorf("NOTES do not tell the next step:\n%s", notes)
		}
	})

	// The operator runs out of cluster (kwok pods run no containers) as the chart's
	// ServiceAccount, so it has exactly the chart's RBAC.
	kubeconfig := serviceAccountKubeconfig(t, chartNamespace, release)
	StartOperator(t, kubeconfig, "--lease-namespace="+chartNamespace, "--lease-name=smtpfleet-e2e")

	step("apply examples", func(t *testing.T) {
		Kubectl(t, "apply", "-f", filepath.Join(root, "examples"))
		// The examples kept in subdirectories are applied on their own; the API server
		// accepts them as they are.
		Kubectl(t, "apply", "--dry-run=server", "-f", filepath.Join(root, "examples/autoscaling"))
		for _, object := range []string{
			"statefulset/outbound-east", "statefulset/outbound-west",
			"service/outbound", "service/outbound-peers",
			"configmap/outbound-config", "poddisruptionbudget/outbound", "serviceaccount/outbound",
		} {
			Eventually(t, 60*time.Second, object, func() (bool, string) {
				return exists(mailNamespace, object), "not found"
			})
			owner := jsonpath(t, mailNamespace, object, ".metadata.ownerReferences[0].name")
			if owner != pool {
				t.Errorf("%s is owned by %q, want the pool", object, owner)
			}
		}
		if got := jsonpath(t, mailNamespace, "relaypool/"+pool, ".metadata.finalizers[0]"); got == "" {
			t.Errorf("the pool has no finalizer")
		}
		Kubectl(t, "wait", "-n", mailNamespace, "--for=condition=Ready", "relaypool/"+pool, "--timeout=180s")
		eventuallyField(t, 60*time.Second, mailNamespace, "relaypool/"+pool, ".status.readyReplicas", "4")
		gen := jsonpath(t, mailNamespace, "relaypool/"+pool, ".metadata.generation")
		eventuallyField(t, 30*time.Second, mailNamespace, "relaypool/"+pool, ".status.observedGeneration", gen)
		zones := jsonpath(t, mailNamespace, "statefulset/outbound-east", ".spec.template.spec.nodeSelector.topology\\.kubernetes\\.io/zone")
		if zones != "zone-a" {
			t.Errorf("east pods are not pinned to zone-a: %q", zones)
		}
	})

	step("invalid manifests are refused naming the field", func(t *testing.T) {
		ns := Namespace(t, "invalid")
		for _, kind := range []string{"relaypool", "maildomain"} {
			files, err := filepath.Glob(filepath.Join(root, "operator/tests/fixtures", kind, "invalid", "*.yaml"))
			if err != nil || len(files) == 0 {
				t.Fatalf("no invalid %s fixtures: %v", kind, err)
			}
			sort.Strings(files)
			for _, file := range files {
				checkRefused(t, file, ns)
			}
		}
	})

	step("printer columns", func(t *testing.T) {
		out := Kubectl(t, "get", "relaypools,maildomains", "-n", mailNamespace)
		for _, want := range []string{"READY", "REPLICAS", "QUEUE", "DOMAIN", "POOL", "DNS", "DKIM", "example.com", pool} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl get output lacks %q:\n%s", want, out)
			}
		}
		line := lineWith(out, "relaypool.smtpfleet.io/"+pool)
		if f := strings.Fields(line); len(f) < 4 || f[1] != "True" || f[2] != "4" || f[3] != "4" {
			t.Errorf("relay pool row not populated (want Ready True, 4 replicas, 4 ready): %q", line)
		}
		all := Kubectl(t, "get", "smtpfleet", "-n", mailNamespace, "-o", "name")
		if !strings.Contains(all, "relaypool") || !strings.Contains(all, "maildomain") {
			t.Errorf("the smtpfleet category does not list both kinds: %s", all)
		}
	})

	step("scale a data centre", func(t *testing.T) {
		Kubectl(t, "patch", "relaypool/"+pool, "-n", mailNamespace, "--type=json",
			"-p", `[{"op":"replace","path":"/spec/dataCentres/0/replicas","value":3}]`)
		eventuallyField(t, 60*time.Second, mailNamespace, "statefulset/outbound-east", ".spec.replicas", "3")
		eventuallyField(t, 120*time.Second, mailNamespace, "relaypool/"+pool, ".status.readyReplicas", "5")
		Kubectl(t, "wait", "-n", mailNamespace, "--for=condition=Ready", "relaypool/"+pool, "--timeout=120s")
	})

	step("add and remove a data centre", func(t *testing.T) {
		Kubectl(t, "patch", "relaypool/"+pool, "-n", mailNamespace, "--type=json",
			"-p", `[{"op":"add","path":"/spec/dataCentres/-","value":{"name":"north","zone":"zone-a","replicas":1}}]`)
		Eventually(t, 60*time.Second, "statefulset/outbound-north", func() (bool, string) {
			return exists(mailNamespace, "statefulset/outbound-north"), "not found"
		})
		eventuallyField(t, 120*time.Second, mailNamespace, "relaypool/"+pool, ".status.readyReplicas", "6")
		Kubectl(t, "patch", "relaypool/"+pool, "-n", mailNamespace, "--type=json",
			"-p", `[{"op":"remove","path":"/spec/dataCentres/2"}]`)
		// The pods on kwok nodes run no smtp-node: the drain cannot reach the node, so the
		// scale-down is blocked and the data centre kept, never removed with its mail.
		blocked := `.status.conditions[?(@.type=="ScaleDownBlocked")]`
		eventuallyField(t, 60*time.Second, mailNamespace, "relaypool/"+pool, blocked+".reason", "NodeUnreachable")
		eventuallyField(t, 10*time.Second, mailNamespace, "relaypool/"+pool, ".status.scaleDown.pod", "outbound-north-0")
		if !exists(mailNamespace, "statefulset/outbound-north") {
			t.Fatalf("the StatefulSet of a data centre whose node was never drained is gone")
		}
		if label := jsonpath(t, mailNamespace, "pod/outbound-north-0", `.metadata.labels.smtpfleet\.io/leaving`); label != "true" {
			t.Errorf("the node being drained is not labelled leaving: %q", label)
		}
		Eventually(t, 30*time.Second, "a ScaleDownBlocked Warning Event", func() (bool, string) {
			out, _ := KubectlErr("get", "events", "-n", mailNamespace,
				"--field-selector", "reason=ScaleDownBlocked,type=Warning", "-o", "name")
			return strings.TrimSpace(out) != "", "none yet"
		})
		// The node will never answer: let it go without a drain.
		Kubectl(t, "annotate", "relaypool/"+pool, "-n", mailNamespace, "smtpfleet.io/force-scale-down=true")
		Eventually(t, 60*time.Second, "statefulset/outbound-north to be deleted", func() (bool, string) {
			return !exists(mailNamespace, "statefulset/outbound-north"), "still there"
		})
		Kubectl(t, "annotate", "relaypool/"+pool, "-n", mailNamespace, "smtpfleet.io/force-scale-down-")
		eventuallyField(t, 120*time.Second, mailNamespace, "relaypool/"+pool, ".status.replicas", "5")
		eventuallyField(t, 30*time.Second, mailNamespace, "relaypool/"+pool, blocked+".status", "False")
	})

	step("a deleted child is recreated", func(t *testing.T) {
		before := jsonpath(t, mailNamespace, "configmap/outbound-config", ".metadata.uid")
		Kubectl(t, "delete", "configmap/outbound-config", "-n", mailNamespace)
		Eventually(t, 60*time.Second, "the ConfigMap to come back", func() (bool, string) {
			uid := jsonpath(t, mailNamespace, "configmap/outbound-config", ".metadata.uid")
			return uid != "" && uid != before, "uid " + uid
		})
	})

	step("the admission policy refuses deleting a pool with queued mail unless forced", func(t *testing.T) {
		Helm(t, "upgrade", release, filepath.Join(root, "charts/smtpfleet"), "--namespace", chartNamespace,
			"--reuse-values", "--set", "deletionGuard.admissionPolicy=true", "--wait", "--timeout", "2m")
		// The queue controller rewrites status.queue from the (unreachable) nodes every
		// 30 s: set a depth and try at once, a few times if it was overwritten in between.
		var refusal string
		for attempt := 0; attempt < 5 && refusal == ""; attempt++ {
			Kubectl(t, "patch", "relaypool/"+pool, "-n", mailNamespace, "--subresource=status",
				"--type=merge", "-p", `{"status":{"queue":{"depth":3}}}`)
			out, err := KubectlErr("delete", "relaypool/"+pool, "-n", mailNamespace, "--dry-run=server")
			if err != nil {
				refusal = out
			}
			time.Sleep(time.Second) // the policy may take a moment to be enforced after install
		}
		if !strings.Contains(refusal, "still has 3 queued messages") || !strings.Contains(refusal, "smtpfleet.io/force-delete") {
			t.Fatalf("deleting a pool with queued mail was not refused with the count and the way out: %q", refusal)
		}
		Kubectl(t, "annotate", "relaypool/"+pool, "-n", mailNamespace, "smtpfleet.io/force-delete=true")
		Kubectl(t, "patch", "relaypool/"+pool, "-n", mailNamespace, "--subresource=status",
			"--type=merge", "-p", `{"status":{"queue":{"depth":3}}}`)
		if out, err := KubectlErr("delete", "relaypool/"+pool, "-n", mailNamespace, "--dry-run=server"); err != nil {
			t.Fatalf("a forced deletion was refused: %s", out)
		}
		Kubectl(t, "annotate", "relaypool/"+pool, "-n", mailNamespace, "smtpfleet.io/force-delete-")
		Kubectl(t, "patch", "relaypool/"+pool, "-n", mailNamespace, "--subresource=status",
			"--type=merge", "-p", `{"status":{"queue":{"depth":0}}}`)
	})

	step("mail domain status lists the records to publish", func(t *testing.T) {
		eventuallyField(t, 60*time.Second, mailNamespace, "maildomain/example-com", ".status.conditions[?(@.type==\"PoolBound\")].status", "True")
		Eventually(t, 60*time.Second, "DNS records in status", func() (bool, string) {
			types := jsonpath(t, mailNamespace, "maildomain/example-com", ".status.dns.records[*].type")
			return strings.Contains(types, "MX") && strings.Contains(types, "TXT"), types
		})
		if sel := jsonpath(t, mailNamespace, "maildomain/example-com", ".status.dkim.selector"); sel == "" {
			t.Errorf("no DKIM selector in status")
		}
	})

	step("deleting the pool collects its children and releases the finalizer", func(t *testing.T) {
		Kubectl(t, "delete", "relaypool/"+pool, "-n", mailNamespace, "--timeout=90s")
		Eventually(t, 90*time.Second, "children to be garbage-collected", func() (bool, string) {
			left, _ := KubectlErr("get", "statefulsets,services,configmaps,poddisruptionbudgets", "-n", mailNamespace,
				"-l", "app.kubernetes.io/instance="+pool, "-o", "name")
			return strings.TrimSpace(left) == "", left
		})
	})
}

// checkRefused applies an invalid fixture and checks the API server refuses it with the
// fields and messages its `# expect-field:` and `# expect:` lines name. A fixture of two
// documents is an update: the first is created, the second must be refused.
func checkRefused(t *testing.T, file, ns string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var fields, messages []string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "# expect-field: "); ok {
			fields = append(fields, strings.TrimSpace(v))
		}
		if v, ok := strings.CutPrefix(line, "# expect: "); ok {
			messages = append(messages, strings.TrimSpace(v))
		}
	}
	// The fixtures name the examples' namespace; run them in their own.
	text := strings.ReplaceAll(string(data), "  namespace: "+mailNamespace+"\n", "")
	docs := strings.Split(text, "\n---\n")
	manifest := docs[len(docs)-1]
	if len(docs) == 2 {
		MustApply(t, docs[0], "-n", ns)
		defer func() { _, _ = run(docs[0], "kubectl", "delete", "-f", "-", "-n", ns, "--wait=false") }()
	}
	out, err := Apply(manifest, "-n", ns, "--dry-run=server")
	name := filepath.Base(file)
	if err == nil {
		t.Errorf("%s: the API server accepted an invalid manifest: %s", name, out)
		return
	}
	for _, f := range fields {
		if !strings.Contains(out, f) {
			t.Errorf("%s: refusal does not name %s:\n%s", name, f, out)
		}
	}
	for _, m := range messages {
		if schemaWording(m) {
			// OpenAPI refusals are worded by the API server itself; the field check above
			// covers them. Rule messages are ours and must come through verbatim.
			continue
		}
		if !strings.Contains(out, m) {
			t.Errorf("%s: refusal lacks %q:\n%s", name, m, out)
		}
	}
}

// schemaWording tells the fixtures' expectations of OpenAPI constraint errors, which the
// Rust tests word as their JSON Schema validator does, from CEL rule messages.
func schemaWording(m string) bool {
	for _, p := range []string{"does not match", "is not one of", "is a required property", "has less than",
		"has more than", "is less than", "is greater than", "is longer than", "is shorter than", "is not of type",
		"is not a multiple of", "fewer than", "more than", "less than the minimum", "greater than the maximum"} {
		if strings.Contains(m, p) {
			return true
		}
	}
	return false
}

func lineWith(out, prefix string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}
