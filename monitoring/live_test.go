package monitoring

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// stopTimeout bounds how long a started process gets to exit after SIGTERM.
const stopTimeout = 20 * time.Second

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// eventually polls check until it holds, for at most limit.
func eventually(t *testing.T, limit time.Duration, what string, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, last := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", limit, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func get(rawURL string) (int, string, error) {
	resp, err := httpClient.Get(rawURL)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// killedAtOnce are the peers that need no orderly stop (the sink ignores SIGTERM).
var killedAtOnce = map[string]bool{"sink": true}

// start runs a process with its output in a log file; it is stopped (SIGTERM, then
// SIGKILL after stopTimeout) when the test ends, and its log's tail is shown if the test
// failed.
func start(t *testing.T, name, bin string, args []string, env ...string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		if killedAtOnce[name] {
			_ = cmd.Process.Kill()
		} else {
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-done:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = logFile.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			lines := strings.Split(string(data), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("%s log (tail):\n%s", name, strings.Join(lines, "\n"))
		}
	})
}

func env(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: run monitoring/run.sh, which builds and starts what this test needs", name)
	}
	return value
}

// --- the peers ---------------------------------------------------------------------

// sink starts the project's test destination (aiosmtpd): it defers one recipient and
// bounces another, so that every delivery result occurs. It offers STARTTLS with a
// certificate for 127.0.0.1 from a CA of its own, so that the nodes' deliveries count
// verified TLS attempts; it returns its port and that CA's file.
func sink(t *testing.T) (int, string) {
	t.Helper()
	port := freePort(t)
	dir := t.TempDir()
	must(t, dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
		"-subj", "/CN=monitoring test CA", "-addext", "basicConstraints=critical,CA:TRUE",
		"-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", "ca.key", "-out", "ca.pem")
	must(t, dir, "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
		"-keyout", "sink.key", "-out", "sink.csr")
	ext := "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
	if err := os.WriteFile(filepath.Join(dir, "sink.ext"), []byte(ext), 0o644); err != nil {
		t.Fatal(err)
	}
	must(t, dir, "openssl", "x509", "-req", "-in", "sink.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
		"-CAcreateserial", "-days", "30", "-extfile", "sink.ext", "-out", "sink.pem")
	start(t, "sink", "/usr/bin/python3", []string{
		filepath.Join(repo(t), "smtp-node/tests/common/smtp_server.py"),
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--dir", dir,
		"--tls", filepath.Join(dir, "sink.pem"), filepath.Join(dir, "sink.key"),
		"--refuse", "defer@dest.test=451 4.2.0 try again later",
		"--refuse", "bounce@dest.test=550 5.1.1 no such user",
	})
	eventually(t, 30*time.Second, "the sink", func() (bool, string) {
		_, err := os.Stat(filepath.Join(dir, "ready"))
		return err == nil, fmt.Sprint(err)
	})
	return port, filepath.Join(dir, "ca.pem")
}

// node is a standalone smtp-node, started the way smtp-node/tests/common/node.rs starts
// one: a config in a temp dir, loopback ports, a relay listener with STARTTLS.
type node struct {
	name, dataCentre string
	smtp, http       string
	dir              string
}

func startNode(t *testing.T, name, dataCentre string, sinkPort int, sinkCA string) node {
	t.Helper()
	dir := t.TempDir()
	// Valid for longer than SmtpFleetCertificateExpiring's thresholds.
	must(t, dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
		"-subj", "/CN=relay.test", "-addext", "subjectAltName=DNS:relay.test",
		"-keyout", "key.pem", "-out", "cert.pem")
	must(t, dir, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "dkim.pem")
	n := node{name: name, dataCentre: dataCentre, dir: dir,
		smtp: fmt.Sprintf("127.0.0.1:%d", freePort(t)), http: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	config := fmt.Sprintf(`hostname: relay.test
node: {name: %s}
listeners:
  - {name: relay, address: "%s"}
http: {address: "%s"}
spool: {dir: "%s"}
tls: {certFile: "%s", keyFile: "%s"}
relay: {allowedNetworks: [127.0.0.0/8], domains: [example.com]}
delivery: {smarthost: {host: 127.0.0.1, port: %d, tls: starttls}, tlsCaFile: "%s", retrySchedule: [2s], maxAge: 1h}
dkim: [{domain: example.com, selector: s1, privateKeyFile: "%s"}]
`, name, n.smtp, n.http, filepath.Join(dir, "spool"), filepath.Join(dir, "cert.pem"),
		filepath.Join(dir, "key.pem"), sinkPort, sinkCA, filepath.Join(dir, "dkim.pem"))
	path := filepath.Join(dir, "smtp-node.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, name, env(t, "SMTPFLEET_NODE_BIN"), []string{"run", "--config", path}, "RUST_LOG=warn")
	eventually(t, 30*time.Second, name+" ready", func() (bool, string) {
		code, body, err := get("http://" + n.http + "/readyz")
		return code == 200, fmt.Sprint(code, body, err)
	})
	return n
}

// send delivers one message through the node: three recipients (delivered, deferred,
// bounced), over STARTTLS when asked.
func send(addr string, useTLS bool, i int) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("load.test"); err != nil {
		return err
	}
	if useTLS {
		if err := c.StartTLS(&tls.Config{ServerName: "relay.test", InsecureSkipVerify: true}); err != nil {
			return err
		}
	}
	if err := c.Mail("load@example.com"); err != nil {
		return err
	}
	for _, rcpt := range []string{"ok@dest.test", "defer@dest.test", "bounce@dest.test"} {
		if err := c.Rcpt(rcpt); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: <load@example.com>\r\nTo: <ok@dest.test>\r\nSubject: load %d\r\n\r\n%s",
		i, strings.Repeat("The quick brown fox jumps over the lazy dog.\r\n", 40))
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// refused tries a sender domain the relay does not serve (refused with 5xx).
func refused(addr string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail("someone@elsewhere.test"); err == nil {
		return fmt.Errorf("MAIL FROM a foreign domain was accepted")
	}
	return c.Quit()
}

// load sends to every node for the given time, paced, from two sessions per node.
func load(t *testing.T, nodes []node, duration time.Duration) int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := 0
	var firstErr error
	deadline := time.Now().Add(duration)
	for _, n := range nodes {
		for worker := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(deadline); i++ {
					err := send(n.smtp, (i+worker)%2 == 0, i)
					if err == nil && i%10 == 0 {
						err = refused(n.smtp)
					}
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = fmt.Errorf("%s: %w", n.name, err)
					}
					if err == nil {
						sent++
					}
					mu.Unlock()
					time.Sleep(200 * time.Millisecond)
				}
			}()
		}
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("load: %v", firstErr)
	}
	return sent
}

// --- the operator, against the API server of KUBECONFIG ----------------------------

type pod struct {
	Metadata struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Containers []struct {
			Name  string `json:"name"`
			Ports []struct {
				Name string `json:"name"`
			} `json:"ports"`
		} `json:"containers"`
	} `json:"spec"`
}

// startOperator installs the CRDs, starts the operator out of cluster, creates a pool in
// two data centres and returns the operator's HTTP address, the pool's namespace and the
// pods the operator made for it, as the PodMonitor's selector finds them.
func startOperator(t *testing.T, in Installed) (string, string, []pod) {
	t.Helper()
	env(t, "KUBECONFIG")
	must(t, "", "kubectl", "apply", "--server-side", "-f", filepath.Join(repo(t), "crds"))
	must(t, "", "kubectl", "wait", "--for=condition=Established", "--timeout=60s",
		"crd/relaypools.smtpfleet.io", "crd/maildomains.smtpfleet.io")
	ns := fmt.Sprintf("monitoring-%d", time.Now().UnixNano()%1_000_000)
	must(t, "", "kubectl", "create", "namespace", ns)
	t.Cleanup(func() { _, _ = run("", "kubectl", "delete", "namespace", ns, "--wait=false") })

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, "operator", env(t, "SMTPFLEET_OPERATOR_BIN"), []string{"run", "--log-format=text",
		"--http-addr=" + addr, "--leader-election=false", "--namespace=" + ns,
		"--node-image=smtp-node:monitoring-test"}, "RUST_LOG=info")
	eventually(t, 30*time.Second, "the operator's /readyz", func() (bool, string) {
		code, body, err := get("http://" + addr + "/readyz")
		return code == 200, fmt.Sprint(code, body, err)
	})
	pool := fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata: {name: relay, namespace: %s}
spec:
  hostname: relay.example.com
  dataCentres:
    - {name: east, zone: zone-a, replicas: 1}
    - {name: west, zone: zone-b, replicas: 1}
  queue: {replicationFactor: 2, minDataCentres: 2}
  tls: {selfSigned: {}}
  relay: {allowedNetworks: [10.0.0.0/8]}
`, ns)
	// A second pool whose PodDisruptionBudget the API server refuses: the operator's
	// reconcile errors are counted from the start, as they would be for a real fault.
	policy := "monitoring-test-" + ns
	refusal := fmt.Sprintf(`apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: %[1]s}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [policy]
        apiVersions: [v1]
        operations: [CREATE, UPDATE]
        resources: [poddisruptionbudgets]
  validations:
    - expression: "object.metadata.name != 'broken'"
      message: the monitoring test refuses the PodDisruptionBudget of pool broken
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: %[1]s}
spec:
  policyName: %[1]s
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: %[2]s}
`, policy, ns)
	broken := fmt.Sprintf(`apiVersion: smtpfleet.io/v1alpha1
kind: RelayPool
metadata: {name: broken, namespace: %s}
spec:
  hostname: broken.example.com
  tls: {selfSigned: {}}
  relay: {allowedNetworks: [10.0.0.0/8]}
`, ns)
	dir := t.TempDir()
	for file, text := range map[string]string{"pool.yaml": pool, "refusal.yaml": refusal, "broken.yaml": broken} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must(t, "", "kubectl", "apply", "-f", filepath.Join(dir, "pool.yaml"))
	must(t, "", "kubectl", "apply", "-f", filepath.Join(dir, "refusal.yaml"))
	t.Cleanup(func() {
		_, _ = run("", "kubectl", "delete", "--ignore-not-found", "validatingadmissionpolicybinding/"+policy,
			"validatingadmissionpolicy/"+policy)
	})
	// The policy applies once the API server has read it: until the dry run is refused.
	eventually(t, 30*time.Second, "the admission policy", func() (bool, string) {
		out, err := run("", "kubectl", "create", "poddisruptionbudget", "broken", "-n", ns,
			"--selector=app=none", "--min-available=1", "--dry-run=server")
		return err != nil && strings.Contains(out, "refuses"), out
	})
	must(t, "", "kubectl", "apply", "-f", filepath.Join(dir, "broken.yaml"))
	eventually(t, 60*time.Second, "a reconcile error on the operator's /metrics", func() (bool, string) {
		_, page, err := get("http://" + addr + "/metrics")
		return strings.Contains(page, "smtpfleet_operator_reconcile_errors_total{"), fmt.Sprint(err)
	})

	// The pods as the PodMonitor selects them.
	spec := in.PodMonitor["spec"].(map[string]any)
	selector := []string{"smtpfleet.io/pool=relay"}
	for k, v := range spec["selector"].(map[string]any)["matchLabels"].(map[string]any) {
		selector = append(selector, fmt.Sprintf("%s=%s", k, v))
	}
	sort.Strings(selector)
	var pods []pod
	eventually(t, 90*time.Second, "the pool's pods", func() (bool, string) {
		out, err := run("", "kubectl", "get", "pods", "-n", ns, "-l", strings.Join(selector, ","), "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		var list struct {
			Items []pod `json:"items"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return false, err.Error()
		}
		pods = list.Items
		return len(pods) == 2, fmt.Sprintf("%d pods match %v", len(pods), selector)
	})
	return addr, ns, pods
}

// --- Prometheus --------------------------------------------------------------------

var invalidLabelChars = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// metaLabel is the name Kubernetes service discovery gives a pod label.
func metaLabel(label string) string {
	return "__meta_kubernetes_pod_label_" + invalidLabelChars.ReplaceAllString(label, "_")
}

// relabelConfigs turns a monitor's relabelings (the Prometheus Operator's camelCase) into
// Prometheus relabel_configs.
func relabelConfigs(t *testing.T, endpoint map[string]any) []map[string]any {
	t.Helper()
	keys := map[string]string{"sourceLabels": "source_labels", "separator": "separator",
		"targetLabel": "target_label", "regex": "regex", "modulus": "modulus",
		"replacement": "replacement", "action": "action"}
	var out []map[string]any
	list, _ := endpoint["relabelings"].([]any)
	for _, item := range list {
		rc := map[string]any{}
		for k, v := range item.(map[string]any) {
			key, ok := keys[k]
			if !ok {
				t.Fatalf("relabeling field %q is not translated", k)
			}
			rc[key] = v
		}
		out = append(out, rc)
	}
	return out
}

// defaultRelabelings are the target labels the Prometheus Operator gives every target of
// a PodMonitor or ServiceMonitor before the monitor's own relabelings.
func defaultRelabelings(service bool) []map[string]any {
	out := []map[string]any{
		{"source_labels": []string{"__meta_kubernetes_namespace"}, "target_label": "namespace"},
		{"source_labels": []string{"__meta_kubernetes_pod_container_name"}, "target_label": "container"},
		{"source_labels": []string{"__meta_kubernetes_pod_name"}, "target_label": "pod"},
		{"source_labels": []string{"__meta_kubernetes_pod_container_port_name"}, "target_label": "endpoint"},
	}
	if service {
		out = append(out,
			map[string]any{"source_labels": []string{"__meta_kubernetes_service_name"}, "target_label": "service"},
			map[string]any{"source_labels": []string{"__meta_kubernetes_service_name"}, "target_label": "job"})
	}
	return out
}

// targetLabels are the labels a scrape through the chart's monitors adds to every
// sample: the Prometheus Operator's, Prometheus' own, and the monitors' relabelings.
func targetLabels(t *testing.T, in Installed) map[string]bool {
	out := map[string]bool{"job": true, "instance": true}
	for _, rc := range defaultRelabelings(true) {
		out[rc["target_label"].(string)] = true
	}
	for _, monitor := range []map[string]any{in.PodMonitor, in.ServiceMonitor} {
		for _, endpoint := range endpoints(monitor) {
			for _, rc := range relabelConfigs(t, endpoint) {
				if label, ok := rc["target_label"].(string); ok {
					out[label] = true
				}
			}
		}
	}
	return out
}

func endpoints(monitor map[string]any) []map[string]any {
	spec := monitor["spec"].(map[string]any)
	list, _ := spec["podMetricsEndpoints"].([]any)
	if list == nil {
		list, _ = spec["endpoints"].([]any)
	}
	var out []map[string]any
	for _, e := range list {
		out = append(out, e.(map[string]any))
	}
	return out
}

// prometheusConfig scrapes the nodes as the chart's PodMonitor would scrape the pods the
// operator made (their real labels), and the operator as its ServiceMonitor would.
func prometheusConfig(t *testing.T, in Installed, nodes []node, pods []pod, operatorAddr, rules string) string {
	t.Helper()
	podEndpoint := endpoints(in.PodMonitor)[0]
	port := podEndpoint["port"].(string)
	selector := in.PodMonitor["spec"].(map[string]any)["selector"].(map[string]any)["matchLabels"].(map[string]any)
	var nodeTargets []map[string]any
	for i, n := range nodes {
		p := pods[i]
		for k, v := range selector {
			if p.Metadata.Labels[k] != v {
				t.Fatalf("the PodMonitor selects %s=%s, but pod %s has %v", k, v, p.Metadata.Name, p.Metadata.Labels)
			}
		}
		container := ""
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == port {
					container = c.Name
				}
			}
		}
		if container == "" {
			t.Fatalf("pod %s has no container port named %q, which the PodMonitor scrapes", p.Metadata.Name, port)
		}
		labels := map[string]string{
			"__meta_kubernetes_namespace":               p.Metadata.Namespace,
			"__meta_kubernetes_pod_name":                p.Metadata.Name,
			"__meta_kubernetes_pod_container_name":      container,
			"__meta_kubernetes_pod_container_port_name": port,
		}
		for k, v := range p.Metadata.Labels {
			labels[metaLabel(k)] = v
		}
		nodeTargets = append(nodeTargets, map[string]any{"targets": []string{n.http}, "labels": labels})
	}
	operatorTarget := map[string]any{"targets": []string{operatorAddr}, "labels": map[string]string{
		"__meta_kubernetes_namespace":               releaseNamespace,
		"__meta_kubernetes_pod_name":                release + "-operator-0",
		"__meta_kubernetes_pod_container_name":      "operator",
		"__meta_kubernetes_pod_container_port_name": "http",
		"__meta_kubernetes_service_name":            release + "-metrics",
	}}
	config := map[string]any{
		"global":     map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"},
		"rule_files": []string{rules},
		"scrape_configs": []map[string]any{
			{
				"job_name":        "podmonitor",
				"metrics_path":    podEndpoint["path"],
				"static_configs":  nodeTargets,
				"relabel_configs": append(defaultRelabelings(false), relabelConfigs(t, podEndpoint)...),
			},
			{
				"job_name":        "servicemonitor",
				"honor_labels":    endpoints(in.ServiceMonitor)[0]["honorLabels"] == true,
				"metrics_path":    "/metrics",
				"static_configs":  []map[string]any{operatorTarget},
				"relabel_configs": append(defaultRelabelings(true), relabelConfigs(t, endpoints(in.ServiceMonitor)[0])...),
			},
		},
	}
	text, err := yaml.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(rules), "prometheus.yaml")
	if err := os.WriteFile(path, text, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type series struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"`
}

// api calls the Prometheus HTTP API and decodes data.
func api(t *testing.T, base, path string, params url.Values, data any) error {
	t.Helper()
	code, body, err := get(base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	var answer struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &answer); err != nil {
		return fmt.Errorf("%d %s", code, body)
	}
	if answer.Status != "success" {
		return fmt.Errorf("%s", answer.Error)
	}
	return json.Unmarshal(answer.Data, data)
}

// --- exported metrics ----------------------------------------------------------------

// exported maps each metric name a /metrics page exports to the label names its samples
// carry.
type exported map[string]map[string]bool

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? `)
var labelName = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)

// add reads an OpenMetrics or Prometheus text page: the names the TYPE lines declare
// (with the suffixes of their type) and every sample's name and labels.
func (e exported) add(page string) {
	sc := bufio.NewScanner(strings.NewReader(page))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) == 4 && fields[0] == "#" && fields[1] == "TYPE" {
			suffixes := map[string][]string{"counter": {"_total"}, "histogram": {"_bucket", "_sum", "_count"},
				"summary": {"_sum", "_count", ""}, "gauge": {""}, "unknown": {""}}[fields[3]]
			for _, s := range suffixes {
				if e[fields[2]+s] == nil {
					e[fields[2]+s] = map[string]bool{}
				}
			}
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(line, "#") {
			continue
		}
		if e[m[1]] == nil {
			e[m[1]] = map[string]bool{}
		}
		for _, l := range labelName.FindAllStringSubmatch(m[3], -1) {
			e[m[1]][l[1]] = true
		}
	}
}

// TestLive starts two standalone smtp-nodes (named and labelled like the pods of a pool
// in two data centres), the operator against a real API server, and a real Prometheus
// that scrapes them through the chart's PodMonitor and ServiceMonitor relabelings and
// evaluates the chart's alert rules; sends SMTP load; then checks every metric and label
// the alerts and the dashboard name against what the processes export, and that every
// dashboard query returns data.
func TestLive(t *testing.T) {
	in := installed(t)
	work := t.TempDir()
	rules := writeRules(t, work, in.Rules)

	sinkPort, sinkCA := sink(t)
	operatorAddr, ns, pods := startOperator(t, in)
	sort.Slice(pods, func(i, j int) bool { return pods[i].Metadata.Name < pods[j].Metadata.Name })
	var nodes []node
	for _, p := range pods {
		dc := p.Metadata.Labels["smtpfleet.io/data-centre"]
		nodes = append(nodes, startNode(t, p.Metadata.Name, dc, sinkPort, sinkCA))
	}
	t.Logf("pool %s/relay: pods %s and %s, served by two standalone nodes", ns, nodes[0].name, nodes[1].name)

	promAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := "http://" + promAddr
	started := time.Now()
	start(t, "prometheus", "prometheus", []string{
		"--config.file=" + prometheusConfig(t, in, nodes, pods, operatorAddr, rules),
		"--storage.tsdb.path=" + filepath.Join(work, "tsdb"),
		"--web.listen-address=" + promAddr,
	})
	eventually(t, 60*time.Second, "Prometheus ready", func() (bool, string) {
		code, body, err := get(base + "/-/ready")
		return code == 200, fmt.Sprint(code, body, err)
	})
	eventually(t, 30*time.Second, "every target up", func() (bool, string) {
		var result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		err := api(t, base, "/api/v1/query", url.Values{"query": {"up"}}, &struct {
			Result any `json:"result"`
		}{&result})
		up := 0
		for _, s := range result {
			if s.Value[1] == "1" {
				up++
			}
		}
		return err == nil && up == 3, fmt.Sprint(result, err)
	})

	// The load, while the operator reconciles the pool again now and then.
	seconds, _ := strconv.Atoi(os.Getenv("SMTPFLEET_MONITORING_LOAD_SECONDS"))
	if seconds <= 0 {
		seconds = 20
	}
	stopTouching := make(chan struct{})
	touched := make(chan struct{})
	go func() {
		defer close(touched)
		for i := 0; ; i++ {
			select {
			case <-stopTouching:
				return
			case <-time.After(5 * time.Second):
				_, _ = run("", "kubectl", "annotate", "--overwrite", "-n", ns, "relaypool/relay",
					fmt.Sprintf("monitoring.smtpfleet.io/touched=%d", i))
			}
		}
	}()
	// Half-way, the first node's certificate file is overwritten with something it cannot
	// load: SmtpFleetCertificateReloadFailing must fire for it, and nothing else.
	corrupt := time.AfterFunc(time.Duration(seconds)*time.Second/2, func() {
		_ = os.WriteFile(filepath.Join(nodes[0].dir, "cert.pem"), []byte("not a certificate\n"), 0o644)
	})
	defer corrupt.Stop()
	sent := load(t, nodes, time.Duration(seconds)*time.Second)
	close(stopTouching)
	<-touched
	t.Logf("sent %d messages of 3 recipients in %ds", sent, seconds)
	time.Sleep(3 * time.Second) // a few more scrapes and rule evaluations
	end := time.Now()

	have := exported{}
	for _, addr := range []string{nodes[0].http, nodes[1].http, operatorAddr} {
		code, page, err := get("http://" + addr + "/metrics")
		if code != 200 || err != nil {
			t.Fatalf("GET %s/metrics: %d %v", addr, code, err)
		}
		have.add(page)
	}
	targets := targetLabels(t, in)
	// up is Prometheus' own: one per target, with the target labels only.
	have["up"] = map[string]bool{}

	exprs := queries(t, in)
	// A family with no sample is not on /metrics at all. Names that a healthy run cannot
	// produce (a failed task ends the node) are looked up where the source registers them;
	// no label of theirs can be checked, so an expression naming one fails.
	for _, q := range exprs {
		for _, name := range metricNames(q.expr) {
			if have[name] == nil && registeredInSource(t, name) {
				t.Logf("%s: had no sample in this run; its name is registered in the source", name)
				have[name] = map[string]bool{}
			}
		}
	}
	t.Run("names", func(t *testing.T) {
		for _, q := range exprs {
			for _, problem := range checkNames(q.expr, have, targets) {
				t.Errorf("%s: %s\n  %s", q.where, problem, q.expr)
			}
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		var panels []map[string]any
		for _, q := range exprs {
			if q.panel == "" {
				continue
			}
			var result []series
			err := api(t, base, "/api/v1/query_range", url.Values{"query": {q.live},
				"start": {fmt.Sprint(started.Unix())}, "end": {fmt.Sprint(end.Unix())}, "step": {"1"}},
				&struct {
					Result *[]series `json:"result"`
				}{&result})
			if err != nil {
				t.Errorf("%s: %v\n  %s", q.where, err, q.live)
				continue
			}
			if !hasNumbers(result) {
				t.Errorf("%s: no series with data\n  %s", q.where, q.live)
			}
			if q.panel == "Recipients by result" {
				for _, want := range []string{"delivered", "deferred", "bounced"} {
					if !anyValue(result, "result", want) {
						t.Errorf("%s: no %s recipients: %v", q.where, want, result)
					}
				}
			}
			for _, l := range legendLabels(q.legend) {
				if !strings.Contains(q.expr, " or ") && !anyHas(result, l) {
					t.Errorf("%s: legend names %q, which no series has\n  %s", q.where, l, q.live)
				}
			}
			panels = append(panels, map[string]any{"panel": q.panel, "unit": q.unit, "legend": q.legend, "series": result})
		}
		for _, v := range variables(t, in) {
			var values []string
			if err := api(t, base, "/api/v1/label/"+v.label+"/values", url.Values{"match[]": {v.live},
				"start": {fmt.Sprint(started.Unix())}, "end": {fmt.Sprint(end.Unix())}}, &values); err != nil || len(values) == 0 {
				t.Errorf("variable %s: no values (%v) for label_values(%s, %s)", v.name, err, v.live, v.label)
			}
		}
		if out := os.Getenv("SMTPFLEET_MONITORING_OUT"); out != "" && !t.Failed() {
			text, _ := json.MarshalIndent(map[string]any{"start": started.Unix(), "end": end.Unix(), "panels": panels}, "", " ")
			if err := os.WriteFile(filepath.Join(out, "panels.json"), text, 0o644); err != nil {
				t.Error(err)
			}
		}
	})

	// The operator's per-pool series keep the pool's namespace through the ServiceMonitor
	// (honorLabels), one per data centre of the pool.
	t.Run("pool metrics", func(t *testing.T) {
		var result []struct {
			Metric map[string]string `json:"metric"`
		}
		query := fmt.Sprintf(`smtpfleet_operator_pool_replicas{job="smtpfleet-operator", namespace=%q, pool="relay"}`, ns)
		if err := api(t, base, "/api/v1/query", url.Values{"query": {query}, "time": {fmt.Sprint(end.Unix())}},
			&struct {
				Result any `json:"result"`
			}{&result}); err != nil {
			t.Fatal(err)
		}
		var dcs []string
		for _, s := range result {
			dcs = append(dcs, s.Metric["data_centre"])
		}
		sort.Strings(dcs)
		if strings.Join(dcs, ",") != "east,west" {
			t.Errorf("%s: data centres %v, want east and west: %v", query, dcs, result)
		}
	})

	t.Run("rules", func(t *testing.T) {
		var groups struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := api(t, base, "/api/v1/rules", url.Values{}, &groups); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health != "ok" {
					t.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
				}
			}
		}
		if want := len(alerts(t, in.Rules)); n != want {
			t.Errorf("Prometheus loaded %d rules, the chart has %d", n, want)
		}
		// The run fires only the alert for the certificate it broke: the deferred and
		// bounced shares (one recipient in three each) and the broken pool's reconcile
		// errors are above their thresholds, but their `for` has not elapsed.
		var firing struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := api(t, base, "/api/v1/alerts", url.Values{}, &firing); err != nil {
			t.Fatal(err)
		}
		certificate := false
		for _, a := range firing.Alerts {
			if a.State != "firing" {
				continue
			}
			if a.Labels["alertname"] == "SmtpFleetCertificateReloadFailing" && a.Labels["pod"] == nodes[0].name &&
				a.Labels["pool"] == "relay" && a.Labels["data_centre"] == nodes[0].dataCentre {
				certificate = true
				continue
			}
			t.Errorf("alert %s fires: %v", a.Labels["alertname"], a.Labels)
		}
		if !certificate {
			t.Errorf("SmtpFleetCertificateReloadFailing does not fire for %s, whose certificate file was broken: %+v",
				nodes[0].name, firing.Alerts)
		}
	})
}

func hasNumbers(result []series) bool {
	for _, s := range result {
		for _, v := range s.Values {
			if text, ok := v[1].(string); ok && text != "NaN" {
				return true
			}
		}
	}
	return false
}

func anyHas(result []series, label string) bool {
	for _, s := range result {
		if s.Metric[label] != "" {
			return true
		}
	}
	return false
}

var legendLabel = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)

func legendLabels(legend string) []string {
	var out []string
	for _, m := range legendLabel.FindAllStringSubmatch(legend, -1) {
		out = append(out, m[1])
	}
	return out
}

func anyValue(result []series, label, value string) bool {
	for _, s := range result {
		if s.Metric[label] == value {
			return true
		}
	}
	return false
}
