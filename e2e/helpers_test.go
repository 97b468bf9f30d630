package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// commandTimeout bounds every kubectl/helm call so no test can hang.
const commandTimeout = 2 * time.Minute

func TestMain(m *testing.M) {
	if os.Getenv("KUBECONFIG") == "" {
		fmt.Fprintln(os.Stderr, "KUBECONFIG is not set: run e2e/run.sh, which starts a cluster, or point KUBECONFIG at one")
		os.Exit(2)
	}
	for _, tool := range []string{"kubectl", "helm"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "%s is not on PATH: run e2e/run.sh, or install it for your cluster\n", tool)
			os.Exit(2)
		}
	}
	os.Exit(m.Run())
}

// run executes a command with a timeout and returns its combined output.
func run(stdin string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
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

// Kubectl runs kubectl and fails the test on error.
func Kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run("", "kubectl", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// KubectlErr runs kubectl and returns the error instead of failing.
func KubectlErr(args ...string) (string, error) {
	return run("", "kubectl", args...)
}

// Apply pipes a manifest into `kubectl apply -f -` and returns the output and error.
func Apply(manifest string, args ...string) (string, error) {
	return run(manifest, "kubectl", append([]string{"apply", "-f", "-"}, args...)...)
}

// MustApply is Apply that fails the test on error.
func MustApply(t *testing.T, manifest string, args ...string) string {
	t.Helper()
	out, err := Apply(manifest, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Helm runs helm and fails the test on error.
func Helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run("", "helm", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Eventually polls check until it reports true or the timeout passes; the last message
// explains the failure.
func Eventually(t *testing.T, timeout time.Duration, what string, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, msg := check()
		if ok {
			return
		}
		last = msg
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Namespace creates a namespace for one test and deletes it afterwards.
func Namespace(t *testing.T, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1_000_000)
	Kubectl(t, "create", "namespace", name)
	t.Cleanup(func() {
		_, _ = KubectlErr("delete", "namespace", name, "--wait=false")
	})
	return name
}
