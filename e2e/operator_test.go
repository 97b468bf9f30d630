package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// repo is the repository root, for the chart, the examples and the CRD fixtures.
func repo(t *testing.T) string {
	t.Helper()
	if r := os.Getenv("SMTPFLEET_REPO"); r != "" {
		return r
	}
	abs, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as the chart's
// ServiceAccount, so the operator runs with exactly the RBAC the chart grants.
func serviceAccountKubeconfig(t *testing.T, namespace, account string) string {
	t.Helper()
	token := strings.TrimSpace(Kubectl(t, "create", "token", account, "-n", namespace, "--duration=2h"))
	server := strings.TrimSpace(Kubectl(t, "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"))
	ca := strings.TrimSpace(Kubectl(t, "config", "view", "--minify", "--raw", "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}"))
	caLine := "insecure-skip-tls-verify: true"
	if ca != "" {
		caLine = "certificate-authority-data: " + ca
	} else if file := strings.TrimSpace(Kubectl(t, "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.certificate-authority}")); file != "" {
		caLine = "certificate-authority: " + file
	}
	path := filepath.Join(t.TempDir(), "operator.kubeconfig")
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
  - name: c
    cluster:
      server: %s
      %s
users:
  - name: operator
    user:
      token: %s
contexts:
  - name: c
    context: {cluster: c, user: operator, namespace: %s}
current-context: c
`, server, caLine, token, namespace)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Operator is the operator process, run out of cluster against the test cluster.
type Operator struct {
	cmd  *exec.Cmd
	log  string
	addr string
}

// StartOperator runs `operator run` with the given kubeconfig and waits for /readyz.
// Its log is printed when the test fails.
func StartOperator(t *testing.T, kubeconfig string, args ...string) *Operator {
	t.Helper()
	bin := os.Getenv("SMTPFLEET_OPERATOR_BIN")
	if bin == "" {
		t.Fatal("SMTPFLEET_OPERATOR_BIN is not set: run e2e/run.sh, which builds the operator")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	logPath := filepath.Join(t.TempDir(), "operator.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	full := append([]string{"run", "--log-format=text", "--http-addr=" + addr}, args...)
	cmd := exec.Command(bin, full...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "RUST_LOG=info")
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	op := &Operator{cmd: cmd, log: logPath, addr: addr}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
		_ = logFile.Close()
		if t.Failed() {
			if data, err := os.ReadFile(logPath); err == nil {
				t.Logf("operator log:\n%s", tail(string(data), 80))
			}
		}
	})
	client := http.Client{Timeout: 2 * time.Second}
	Eventually(t, 60*time.Second, "the operator's /readyz", func() (bool, string) {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return op
}

func tail(s string, lines int) string {
	all := strings.Split(s, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// jsonpath reads one field of an object.
func jsonpath(t *testing.T, ns, object, path string) string {
	t.Helper()
	out, err := KubectlErr("get", object, "-n", ns, "-o", "jsonpath={"+path+"}")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// eventuallyField waits until a field of an object has the wanted value.
func eventuallyField(t *testing.T, timeout time.Duration, ns, object, path, want string) {
	t.Helper()
	Eventually(t, timeout, fmt.Sprintf("%s %s = %q", object, path, want), func() (bool, string) {
		got := jsonpath(t, ns, object, path)
		return got == want, fmt.Sprintf("got %q", got)
	})
}

func exists(ns, object string) bool {
	_, err := KubectlErr("get", object, "-n", ns)
	return err == nil
}
